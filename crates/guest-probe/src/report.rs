//! The probe's report: one line per feature, sorted by key,
//!
//! ```text
//! KEY yes|no [DETAIL]
//! ```
//!
//! `KEY` is `CATEGORY:NAME` without white space (`syscall:madvise`,
//! `path:/proc/self/smaps`, `socket:AF_VSOCK/SOCK_STREAM`); `yes` means the
//! kernel offers it to the container; `DETAIL` is free text on the same line
//! (an errno name, a version, a count). Keys under `info:` describe the run
//! (kernel release, user) and are never compared.

use std::collections::BTreeMap;
use std::fmt;

/// One feature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offered: bool,
    pub detail: String,
}

/// Every result of one probe run, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    entries: BTreeMap<String, Entry>,
}

/// A line of a report that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

impl Report {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a result. White space in the key becomes `_`, line breaks in
    /// the detail become spaces, so every entry stays one line. A key
    /// recorded twice keeps the first `yes` (several ways to test one
    /// feature: any success counts).
    pub fn record(&mut self, key: &str, offered: bool, detail: &str) {
        let key: String = key
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let detail = detail.replace(['\n', '\r'], " ").trim().to_string();
        match self.entries.get_mut(&key) {
            Some(e) if e.offered => {}
            Some(e) => {
                e.offered = offered;
                e.detail = detail;
            }
            None => {
                self.entries.insert(key, Entry { offered, detail });
            }
        }
    }

    pub fn yes(&mut self, key: &str, detail: &str) {
        self.record(key, true, detail);
    }

    pub fn no(&mut self, key: &str, detail: &str) {
        self.record(key, false, detail);
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Whether the key was reported as offered.
    pub fn offers(&self, key: &str) -> bool {
        self.entries.get(key).is_some_and(|e| e.offered)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The report as text, one line per key, sorted.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, e) in &self.entries {
            out.push_str(k);
            out.push_str(if e.offered { " yes" } else { " no" });
            if !e.detail.is_empty() {
                out.push(' ');
                out.push_str(&e.detail);
            }
            out.push('\n');
        }
        out
    }

    /// Parse a rendered report. Blank lines are skipped; anything else
    /// must be `KEY yes|no [DETAIL]`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut r = Report::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            let err = |message: &str| ParseError {
                line: i + 1,
                message: format!("{message}: {line:?}"),
            };
            let mut parts = line.splitn(3, ' ');
            let key = parts.next().unwrap_or_default();
            if key.is_empty() || !key.contains(':') {
                return Err(err("expected KEY (CATEGORY:NAME)"));
            }
            let offered = match parts.next() {
                Some("yes") => true,
                Some("no") => false,
                _ => return Err(err("expected yes or no after the key")),
            };
            let detail = parts.next().unwrap_or_default();
            r.record(key, offered, detail);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip() {
        let mut r = Report::new();
        r.yes("syscall:read", "EBADF");
        r.no("syscall:madvise", "ENOSYS");
        r.yes("info:release", "6.1.0 #1 SMP");
        let text = r.render();
        assert_eq!(
            text,
            "info:release yes 6.1.0 #1 SMP\nsyscall:madvise no ENOSYS\nsyscall:read yes EBADF\n"
        );
        assert_eq!(Report::parse(&text).unwrap(), r);
    }

    #[test]
    fn first_yes_wins_and_lines_stay_single() {
        let mut r = Report::new();
        r.no("fs:x", "first");
        r.yes("fs:x", "second");
        r.no("fs:x", "third");
        r.yes("a key:with space", "two\nlines");
        assert!(r.offers("fs:x"));
        assert_eq!(r.get("fs:x").unwrap().detail, "second");
        assert_eq!(r.get("a_key:with_space").unwrap().detail, "two lines");
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(Report::parse("syscall:read maybe").is_err());
        assert!(Report::parse("nocategory yes").is_err());
        let e = Report::parse("a:b yes\n\nfoo").unwrap_err();
        assert_eq!(e.line, 3);
    }
}
