//! Printing an attach or logs stream: stdout to stdout, stderr to stderr.

use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use vessel_api::client::Response;
use vessel_api::types::{Stream, StreamEvent};

/// How a stream ended.
pub enum StreamEnd {
    /// The container ended with this code (and maybe an error message).
    Exit(i32, Option<String>),
    /// The server closed the stream without an exit event.
    Eof,
}

/// Copy events to our stdout/stderr until the stream ends.
pub fn print_stream(resp: Response) -> Result<StreamEnd> {
    let mut reader = resp.reader;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut line = String::new();
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
                let data = rec.data();
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
