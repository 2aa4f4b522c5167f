//! Printing an attach or logs stream: stdout to stdout, stderr to stderr,
//! optionally only one of them, optionally each line with its time.

use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use std::time::{Duration, UNIX_EPOCH};
use vessel_api::client::Response;
use vessel_api::types::{Stream, StreamEvent};

/// How a stream ended.
pub enum StreamEnd {
    /// The container ended with this code (and maybe an error message).
    Exit(i32, Option<String>),
    /// The server closed the stream without an exit event.
    Eof,
}

/// What to print of a stream.
#[derive(Debug, Clone, Copy)]
pub struct Printing {
    pub stdout: bool,
    pub stderr: bool,
    /// Each line starts with the time it was written (`logs -t`).
    pub timestamps: bool,
}

impl Default for Printing {
    fn default() -> Self {
        Self {
            stdout: true,
            stderr: true,
            timestamps: false,
        }
    }
}

/// `data` with `stamp` at the start of each line; `at_line_start` says
/// whether the previous chunk of this stream ended its line, and is
/// updated.
pub fn stamp_lines(data: &[u8], stamp: &str, at_line_start: &mut bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + stamp.len() + 1);
    for piece in data.split_inclusive(|b| *b == b'\n') {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(piece);
        *at_line_start = piece.ends_with(b"\n");
    }
    out
}

/// Docker's timestamp of `logs -t`: RFC 3339 with nanoseconds, UTC.
pub fn timestamp(time_ms: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_millis(time_ms)).to_string()
}

/// Copy events to our stdout/stderr until the stream ends.
pub fn print_stream(resp: Response, p: Printing) -> Result<StreamEnd> {
    let mut reader = resp.reader;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut line = String::new();
    // Per stream: does the next byte start a line?
    let mut starts = [true, true];
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .context("reading the container's output")?;
        if n == 0 {
            return Ok(StreamEnd::Eof);
        }
        match serde_json::from_str::<StreamEvent>(line.trim_end()) {
            Ok(StreamEvent::Output(rec)) => {
                let (wanted, slot) = match rec.stream {
                    Stream::Stdout => (p.stdout, 0),
                    Stream::Stderr => (p.stderr, 1),
                };
                if !wanted {
                    continue;
                }
                let mut data = rec.data();
                if p.timestamps {
                    data = stamp_lines(&data, &timestamp(rec.time_ms), &mut starts[slot]);
                }
                // A closed stdout (e.g. `| head`) must not stop the stream.
                let _ = match rec.stream {
                    Stream::Stdout => {
                        let mut o = stdout.lock();
                        o.write_all(&data).and_then(|_| o.flush())
                    }
                    Stream::Stderr => {
                        let mut e = stderr.lock();
                        e.write_all(&data).and_then(|_| e.flush())
                    }
                };
            }
            Ok(StreamEvent::Exit { exit_code, error }) => {
                return Ok(StreamEnd::Exit(exit_code, error))
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_start_each_line_across_chunks() {
        let mut start = true;
        assert_eq!(stamp_lines(b"a\nb", "T1", &mut start), b"T1 a\nT1 b");
        assert!(!start, "b's line goes on");
        assert_eq!(
            stamp_lines(b"c\n\nd\n", "T2", &mut start),
            b"c\nT2 \nT2 d\n"
        );
        assert!(start);
        assert_eq!(
            timestamp(1_700_000_000_123),
            "2023-11-14T22:13:20.123000000Z"
        );
    }
}
