//! `stdio.log`: the container's output, one JSON [`LogRecord`] per line.
//!
//! Each record is written with a single `write` to a file opened for append,
//! so a reader tailing the file sees only whole lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use vessel_api::types::{LogRecord, Stream};

/// The writer of one container's `stdio.log`.
#[derive(Debug)]
pub struct StdioLog {
    file: File,
}

impl StdioLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file })
    }

    /// Append one record for `data` from `stream`.
    pub fn append(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let mut line = serde_json::to_string(&LogRecord::new(stream, data))
            .map_err(io::Error::other)?
            .into_bytes();
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// Make everything written so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdio.log");
        let mut log = StdioLog::open(&p).unwrap();
        log.append(Stream::Stdout, b"hello\n").unwrap();
        log.append(Stream::Stderr, b"\xffbin").unwrap();
        log.sync().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let a: LogRecord = serde_json::from_str(lines[0]).unwrap();
        let b: LogRecord = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(a.stream, Stream::Stdout);
        assert_eq!(a.data(), b"hello\n");
        assert_eq!(b.stream, Stream::Stderr);
        assert_eq!(b.data(), b"\xffbin");
    }
}
