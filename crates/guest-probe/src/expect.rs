//! The guest kernel's contract: which probe keys it must offer, and which
//! ones a distribution or host kernel offers that it leaves out on purpose,
//! each with the reason. The file (`guest/kernel/features.list`) reads:
//!
//! ```text
//! # comment
//! [offered]
//! syscall:madvise
//! fcntl:F_NOTIFY
//! [omitted] Linux 6.5 and later: the guest runs Debian's 6.1
//! syscall:cachestat
//! path:/proc/sys/fs/xfs*
//! ```
//!
//! Keys under `[offered]` are exact. Keys under an `[omitted] REASON`
//! section may use `*`, which matches any run of characters (`/` too).
//! A `[varies] REASON` section (patterns too) names keys that depend on
//! the machine rather than the kernel's configuration (a hardware PMU
//! under KVM but not under TCG): no check looks at them.
//!
//! The checks (all pure, over two [`Report`]s):
//! - [`check_guest`]: every offered key is offered by the guest; every key
//!   the guest offers is listed as offered (so a regression of anything the
//!   guest has today fails the test), and none of them is listed as omitted.
//! - [`check_host`]: every key a host kernel offers that the guest does not
//!   is listed as omitted, with its reason.

use crate::report::Report;
use std::collections::BTreeSet;
use std::fmt;

/// An `[omitted] REASON` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omission {
    pub pattern: String,
    pub reason: String,
    pub line: usize,
}

/// A parsed expectation list.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    offered: BTreeSet<String>,
    omitted: Vec<Omission>,
    varies: Vec<Omission>,
}

/// A line of the expectation list that does not parse.
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

/// `*` matches any run of characters, everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Keys that describe the run rather than the kernel.
fn is_info(key: &str) -> bool {
    key.starts_with("info:")
}

impl Expectations {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        enum Section {
            None,
            Offered,
            Omitted(String),
            Varies(String),
        }
        let mut section = Section::None;
        let mut exp = Expectations::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let n = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| ParseError { line: n, message };
            if line == "[offered]" {
                section = Section::Offered;
                continue;
            }
            if let Some(rest) = line.strip_prefix("[omitted]") {
                let reason = rest.trim();
                if reason.is_empty() {
                    return Err(err(
                        "an [omitted] section needs its reason on the same line: [omitted] REASON"
                            .into(),
                    ));
                }
                section = Section::Omitted(reason.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("[varies]") {
                let reason = rest.trim();
                if reason.is_empty() {
                    return Err(err(
                        "a [varies] section needs its reason on the same line: [varies] REASON"
                            .into(),
                    ));
                }
                section = Section::Varies(reason.to_string());
                continue;
            }
            if line.starts_with('[') {
                return Err(err(format!(
                    "unknown section {line:?}: use [offered], [omitted] REASON or [varies] REASON"
                )));
            }
            if line.contains(char::is_whitespace) || !line.contains(':') {
                return Err(err(format!(
                    "expected one key (CATEGORY:NAME) per line, got {line:?}"
                )));
            }
            match &section {
                Section::None => {
                    return Err(err(format!(
                        "key {line:?} before any [offered], [omitted] or [varies] section"
                    )))
                }
                Section::Offered => {
                    if line.contains('*') {
                        return Err(err(format!(
                            "offered keys are exact; {line:?} has a '*' (only omitted keys take patterns)"
                        )));
                    }
                    if !exp.offered.insert(line.to_string()) {
                        return Err(err(format!("{line:?} is listed twice")));
                    }
                }
                Section::Omitted(reason) => exp.omitted.push(Omission {
                    pattern: line.to_string(),
                    reason: reason.clone(),
                    line: n,
                }),
                Section::Varies(reason) => exp.varies.push(Omission {
                    pattern: line.to_string(),
                    reason: reason.clone(),
                    line: n,
                }),
            }
        }
        for key in &exp.offered {
            if let Some(o) = exp.omission(key) {
                return Err(ParseError {
                    line: o.line,
                    message: format!("{key:?} is listed both as offered and as omitted"),
                });
            }
            if let Some(o) = exp.variation(key) {
                return Err(ParseError {
                    line: o.line,
                    message: format!("{key:?} is listed both as offered and as varying"),
                });
            }
        }
        Ok(exp)
    }

    pub fn offered(&self) -> impl Iterator<Item = &str> {
        self.offered.iter().map(String::as_str)
    }

    pub fn omitted(&self) -> &[Omission] {
        &self.omitted
    }

    pub fn is_offered(&self, key: &str) -> bool {
        self.offered.contains(key)
    }

    /// The first omitted entry matching `key`.
    pub fn omission(&self, key: &str) -> Option<&Omission> {
        self.omitted.iter().find(|o| glob_match(&o.pattern, key))
    }

    /// The first `[varies]` entry matching `key`.
    pub fn variation(&self, key: &str) -> Option<&Omission> {
        self.varies.iter().find(|o| glob_match(&o.pattern, key))
    }
}

/// A difference between the list and a probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Listed as offered; the guest does not offer it (a regression).
    Missing { key: String, detail: String },
    /// The guest offers it; the list does not say so.
    Unlisted { key: String, detail: String },
    /// The guest offers it; the list says it is omitted.
    OmittedButOffered { key: String, reason: String },
    /// The host offers it, the guest does not, and no decision is listed.
    Undecided {
        key: String,
        host_detail: String,
        guest_detail: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Missing { key, detail } => write!(
                f,
                "missing: the guest no longer offers {key} ({detail}); it is listed under [offered]: \
                 restore it in guest/kernel/vessel.config, or move it to an [omitted] section with the reason"
            ),
            Finding::Unlisted { key, detail } => write!(
                f,
                "unlisted: the guest offers {key} ({detail}); add it under [offered] so a regression is caught"
            ),
            Finding::OmittedButOffered { key, reason } => write!(
                f,
                "stale: the guest offers {key}, listed as omitted ({reason}); move it under [offered]"
            ),
            Finding::Undecided {
                key,
                host_detail,
                guest_detail,
            } => write!(
                f,
                "undecided: the host offers {key} ({host_detail}), the guest does not ({guest_detail}); \
                 add it to guest/kernel/vessel.config or list it under [omitted] with the reason"
            ),
        }
    }
}

fn detail_of(r: &Report, key: &str) -> String {
    match r.get(key) {
        Some(e) if e.detail.is_empty() => (if e.offered { "yes" } else { "no" }).to_string(),
        Some(e) => e.detail.clone(),
        None => "not reported".to_string(),
    }
}

/// The guest against the list.
pub fn check_guest(exp: &Expectations, guest: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    for key in exp.offered() {
        if !guest.offers(key) {
            out.push(Finding::Missing {
                key: key.to_string(),
                detail: detail_of(guest, key),
            });
        }
    }
    for (key, e) in guest.iter() {
        if !e.offered || is_info(key) || exp.variation(key).is_some() {
            continue;
        }
        if let Some(o) = exp.omission(key) {
            out.push(Finding::OmittedButOffered {
                key: key.to_string(),
                reason: o.reason.clone(),
            });
        } else if !exp.is_offered(key) {
            out.push(Finding::Unlisted {
                key: key.to_string(),
                detail: detail_of(guest, key),
            });
        }
    }
    out
}

/// A host kernel against the guest and the list: whatever the host offers
/// and the guest does not must be a listed omission.
pub fn check_host(exp: &Expectations, guest: &Report, host: &Report) -> Vec<Finding> {
    let mut out = Vec::new();
    for (key, e) in host.iter() {
        if !e.offered
            || is_info(key)
            || guest.offers(key)
            || exp.omission(key).is_some()
            || exp.variation(key).is_some()
        {
            continue;
        }
        out.push(Finding::Undecided {
            key: key.to_string(),
            host_detail: detail_of(host, key),
            guest_detail: detail_of(guest, key),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
# the guest's contract
[offered]
syscall:read
fcntl:F_NOTIFY

[omitted] Linux 6.5 and later
syscall:cachestat
[omitted] no netfilter logging
path:/proc/sys/net/netfilter/nf_log*
[varies] needs a hardware PMU
perf:hardware.*
";

    fn report(lines: &str) -> Report {
        Report::parse(lines).unwrap()
    }

    #[test]
    fn glob() {
        assert!(glob_match("a*", "a"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("path:/proc/*/x", "path:/proc/a/b/x"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*c", "abd"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn parses_sections() {
        let e = Expectations::parse(LIST).unwrap();
        assert_eq!(
            e.offered().collect::<Vec<_>>(),
            ["fcntl:F_NOTIFY", "syscall:read"]
        );
        assert_eq!(e.omitted().len(), 2);
        assert_eq!(
            e.omission("path:/proc/sys/net/netfilter/nf_log/2")
                .unwrap()
                .reason,
            "no netfilter logging"
        );
        assert!(e.omission("syscall:read").is_none());
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, line, needle) in [
            ("syscall:read\n", 1, "before any"),
            ("[offered]\nsyscall:*\n", 2, "exact"),
            ("[omitted]\nsyscall:x\n", 1, "reason"),
            ("[offered]\nsyscall:read\nsyscall:read\n", 3, "twice"),
            ("[offered]\nsyscall read\n", 2, "one key"),
            ("[maybe]\n", 1, "unknown section"),
            (
                "[offered]\nsyscall:x\n[omitted] why\nsyscall:*\n",
                4,
                "both",
            ),
            ("[varies]\nperf:x\n", 1, "reason"),
            ("[offered]\nperf:x\n[varies] pmu\nperf:*\n", 4, "varying"),
        ] {
            let e = Expectations::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn guest_regressions_and_gaps_in_the_list() {
        let e = Expectations::parse(LIST).unwrap();
        let ok = report("syscall:read yes EBADF\nfcntl:F_NOTIFY yes\nsyscall:cachestat no ENOSYS\ninfo:release yes 6.1\nperf:hardware.cycles yes\n");
        assert_eq!(check_guest(&e, &ok), vec![]);

        let bad = report("syscall:read yes\nfcntl:F_NOTIFY no EINVAL\nsyscall:cachestat yes\nsocket:AF_ALG yes\n");
        let f = check_guest(&e, &bad);
        assert_eq!(
            f,
            vec![
                Finding::Missing {
                    key: "fcntl:F_NOTIFY".into(),
                    detail: "EINVAL".into()
                },
                Finding::Unlisted {
                    key: "socket:AF_ALG".into(),
                    detail: "yes".into()
                },
                Finding::OmittedButOffered {
                    key: "syscall:cachestat".into(),
                    reason: "Linux 6.5 and later".into()
                },
            ]
        );
        // A key the probe did not report at all is missing too.
        let f = check_guest(&e, &report("syscall:read yes\n"));
        assert_eq!(
            f,
            vec![Finding::Missing {
                key: "fcntl:F_NOTIFY".into(),
                detail: "not reported".into()
            }]
        );
        assert!(f[0].to_string().contains("guest/kernel/vessel.config"));
    }

    #[test]
    fn host_offers_need_a_decision() {
        let e = Expectations::parse(LIST).unwrap();
        let guest = report("syscall:read yes\nfcntl:F_NOTIFY yes\nsyscall:cachestat no ENOSYS\n");
        let host = report(
            "syscall:read yes\nsyscall:cachestat yes EBADF\npath:/proc/sys/net/netfilter/nf_log/2 yes\n\
             syscall:bpf yes EINVAL\nsocket:AF_ALG no EAFNOSUPPORT\ninfo:release yes 6.18\nperf:hardware.cycles yes\n",
        );
        let f = check_host(&e, &guest, &host);
        assert_eq!(
            f,
            vec![Finding::Undecided {
                key: "syscall:bpf".into(),
                host_detail: "EINVAL".into(),
                guest_detail: "not reported".into()
            }]
        );
        assert!(f[0].to_string().contains("[omitted]"));
    }
}
