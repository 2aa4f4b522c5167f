//! A minimal client of QEMU's machine protocol (QMP): one command per
//! connection. Every VM has its QMP socket (`RUN/qmp.sock`), for a person
//! diagnosing it and for the runtime. `vessel pause` does not use QMP's
//! `stop`/`cont`, it stops the VMM process (see `Qemu::pause` in
//! `vmm.rs`).
//!
//! QMP is line-delimited JSON: QEMU greets with `{"QMP": ...}`, the client
//! sends `{"execute":"qmp_capabilities"}`, then commands; each answer is
//! `{"return": ...}` or `{"error": {"class", "desc"}}`, and asynchronous
//! `{"event": ...}` lines may come in between.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("Could not reach QEMU's control socket {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP I/O error")]
    Io(#[from] std::io::Error),
    #[error("QEMU refused {0}: {1}")]
    Refused(String, String),
    #[error("Malformed QMP line: {0:?}")]
    Malformed(String),
    #[error("QEMU closed its control socket")]
    Closed,
}

/// The answer to a command: `Ok` for `return`, the `desc` of an `error`.
/// `None` for lines that are not answers (greetings, events).
pub fn parse_answer(line: &str) -> Result<Option<Result<(), String>>, QmpError> {
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|_| QmpError::Malformed(line.chars().take(200).collect()))?;
    if v.get("return").is_some() {
        return Ok(Some(Ok(())));
    }
    if let Some(e) = v.get("error") {
        let desc = e
            .get("desc")
            .and_then(|d| d.as_str())
            .unwrap_or("unknown error")
            .to_string();
        return Ok(Some(Err(desc)));
    }
    Ok(None)
}

fn read_answer(r: &mut impl BufRead, what: &str) -> Result<(), QmpError> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        match parse_answer(&line)? {
            Some(Ok(())) => return Ok(()),
            Some(Err(desc)) => return Err(QmpError::Refused(what.to_string(), desc)),
            None => {}
        }
    }
}

/// Run `command` (no arguments) on the QMP socket at `path`.
pub fn execute(path: &Path, command: &str) -> Result<(), QmpError> {
    let s =
        UnixStream::connect(path).map_err(|e| QmpError::Connect(path.display().to_string(), e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(&s);
    let mut greeting = String::new();
    if r.read_line(&mut greeting)? == 0 {
        return Err(QmpError::Closed);
    }
    let mut w = &s;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    read_answer(&mut r, "qmp_capabilities")?;
    let cmd = serde_json::json!({ "execute": command }).to_string();
    w.write_all(format!("{cmd}\n").as_bytes())?;
    read_answer(&mut r, command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers_events_and_errors() {
        assert_eq!(parse_answer("{\"return\": {}}").unwrap(), Some(Ok(())));
        assert_eq!(
            parse_answer("{\"event\":\"STOP\",\"timestamp\":{}}").unwrap(),
            None
        );
        assert_eq!(
            parse_answer("{\"error\":{\"class\":\"GenericError\",\"desc\":\"no\"}}").unwrap(),
            Some(Err("no".into()))
        );
        assert!(parse_answer("nonsense").is_err());
    }

    #[test]
    fn a_command_against_a_fake_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = &s;
            let mut r = BufReader::new(&s);
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"stop\""), "{line}");
            w.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {}}\n")
                .unwrap();
        });
        execute(&path, "stop").unwrap();
        server.join().unwrap();
        assert!(matches!(
            execute(&dir.path().join("none.sock"), "stop"),
            Err(QmpError::Connect(..))
        ));
    }
}
