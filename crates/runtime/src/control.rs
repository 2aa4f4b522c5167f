//! The control socket (`RUN/control.sock`, mode 0600) through which the
//! apiserver talks to a running container.
//!
//! One connection carries one request line and one answer line, both JSON:
//!
//! | request                              | answer                                   |
//! |--------------------------------------|------------------------------------------|
//! | `{"op":"signal","signal":N}`         | `{"ok":true}` once sent to the guest     |
//! | `{"op":"stop","timeout":T}`          | `{"ok":true}` once the container exited  |
//! | `{"op":"state"}`                     | the current `ContainerState`             |
//!
//! Failures answer `{"ok":false,"error":"..."}`. `stop` sends SIGTERM, then
//! SIGKILL after `T` seconds (default 10), then kills the VM 5 s later; once
//! the container has exited, it kills the VM at once rather than wait for
//! its power-off. SIGTERM to the runtime helper is a `stop` with `T` 10.

use serde::Deserialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vessel_api::types::ContainerState;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// Errors setting up the control socket or parsing a request.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Could not create the control socket {}", .0.display())]
    Bind(std::path::PathBuf, #[source] io::Error),
    #[error("Invalid control request")]
    BadRequest(#[source] serde_json::Error),
}

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ControlRequest {
    Signal {
        signal: i32,
    },
    Stop {
        #[serde(default = "default_stop_timeout")]
        timeout: u64,
    },
    State,
}

fn default_stop_timeout() -> u64 {
    10
}

/// Parse one request line.
pub fn parse_request(line: &str) -> Result<ControlRequest, ControlError> {
    serde_json::from_str(line.trim()).map_err(ControlError::BadRequest)
}

/// What the control socket acts on.
pub trait ControlHandler: Send + Sync {
    /// Deliver `signal` to the container's process.
    fn signal(&self, signal: i32) -> Result<(), String>;
    /// Stop the container; return once it has exited.
    fn stop(&self, timeout: Duration) -> Result<(), String>;
    /// The current state.
    fn state(&self) -> ContainerState;
}

/// The answer line for `request`.
pub fn answer(
    handler: &dyn ControlHandler,
    request: Result<ControlRequest, ControlError>,
) -> String {
    let done = |r: Result<(), String>| match r {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    let value = match request {
        Ok(ControlRequest::Signal { signal }) => done(handler.signal(signal)),
        Ok(ControlRequest::Stop { timeout }) => done(handler.stop(Duration::from_secs(timeout))),
        Ok(ControlRequest::State) => serde_json::to_value(handler.state())
            .unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e.to_string()})),
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            serde_json::json!({"ok": false, "error": format!("{e}{cause}")})
        }
    };
    let mut line = value.to_string();
    line.push('\n');
    line
}

/// Bind `path` (replacing a stale socket) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
    Ok(l)
}

/// Serve `listener` on a background thread, one thread per connection.
pub fn serve(listener: UnixListener, handler: Arc<dyn ControlHandler>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || {
                if let Err(e) = handle(conn, &*handler) {
                    crate::log(&format!("control connection: {e}"));
                }
            });
        }
    });
}

fn handle(conn: UnixStream, handler: &dyn ControlHandler) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = answer(handler, parse_request(&line));
    (&conn).write_all(reply.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request("{\"op\":\"signal\",\"signal\":9}\n").unwrap(),
            ControlRequest::Signal { signal: 9 }
        );
        assert_eq!(
            parse_request("{\"op\":\"stop\",\"timeout\":3}").unwrap(),
            ControlRequest::Stop { timeout: 3 }
        );
        assert_eq!(
            parse_request("{\"op\":\"stop\"}").unwrap(),
            ControlRequest::Stop { timeout: 10 }
        );
        assert_eq!(
            parse_request("{\"op\":\"state\"}").unwrap(),
            ControlRequest::State
        );
        for bad in [
            "",
            "{}",
            "{\"op\":\"reboot\"}",
            "{\"op\":\"signal\"}",
            "{\"op\":\"stop\",\"timeout\":-1}",
            "not json",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    struct Recorder(Mutex<Vec<String>>);

    impl ControlHandler for Recorder {
        fn signal(&self, signal: i32) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("signal {signal}"));
            if signal == 0 {
                Err("not running".into())
            } else {
                Ok(())
            }
        }
        fn stop(&self, timeout: Duration) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("stop {timeout:?}"));
            Ok(())
        }
        fn state(&self) -> ContainerState {
            ContainerState::created()
        }
    }

    #[test]
    fn serves_one_request_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        serve(l, rec.clone());
        let ask = |req: &str| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        };
        assert_eq!(ask("{\"op\":\"signal\",\"signal\":2}\n")["ok"], true);
        let v = ask("{\"op\":\"signal\",\"signal\":0}\n");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "not running");
        assert_eq!(ask("{\"op\":\"stop\",\"timeout\":1}\n")["ok"], true);
        assert_eq!(ask("{\"op\":\"state\"}\n")["status"], "created");
        assert_eq!(ask("{\"op\":\"nope\"}\n")["ok"], false);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec!["signal 2", "signal 0", "stop 1s"]
        );
    }
}
