//! The control socket (`RUN/control.sock`, mode 0600) through which the
//! apiserver talks to a running container.
//!
//! A connection starts with one JSON request line. Most requests get one
//! JSON answer line and the connection ends:
//!
//! | request                                    | answer                                   |
//! |--------------------------------------------|------------------------------------------|
//! | `{"op":"signal","signal":N[,"group":B]}`   | `{"ok":true}` once sent to the guest     |
//! | `{"op":"stop","timeout":T}`                | `{"ok":true}` once the container exited  |
//! | `{"op":"state"}`                           | the current `ContainerState`             |
//! | `{"op":"stats"}`                           | a `ContainerStats`                       |
//! | `{"op":"pause"}`, `{"op":"unpause"}`       | `{"ok":true}` once the VM is (un)paused  |
//! | `{"op":"resize","rows":R,"cols":C}`        | `{"ok":true}`: the main process's terminal |
//! | `{"op":"exec_state","exec_id":ID}`         | `{"running":B,"exit_code":N?}`           |
//! | `{"op":"top"}`                             | `{"processes":[ProcessInfo...]}`         |
//! | `{"op":"exec_detached",...exec...}`        | `{"ok":true,"pid":N}` once it started    |
//!
//! Streaming requests answer `{"ok":true}` and then carry
//! `vessel.agent.v1` frames both ways (see [`crate::streams`]):
//!
//! | request | the stream |
//! |---|---|
//! | `{"op":"attach","stdin":B,"stdout":B,"stderr":B,"logs":B}` | the main process's output (only the streams asked for, both when neither is; with `logs`, what it wrote so far first), `Exited` at its end; `Stdin`/`CloseStdin`/`Resize` to it when `stdin` |
//! | `{"op":"exec","exec_id":..,"process":..,"tty_size":..}` | one more process (`Started`, output, `Exited`) |
//! | `{"op":"copy_out","path":P[,"one_file_system":true]}` | `Data` frames of a tar of `P`, then `CopyDone` |
//! | `{"op":"copy_in","path":D}` | the client's `Data` frames and `CloseStdin`, then `CopyDone` |
//!
//! Failures answer `{"ok":false,"error":"..."}`. `stop` sends SIGTERM, then
//! SIGKILL after `T` seconds (default 10), then kills the VM 5 s later; once
//! the container has exited, it kills the VM at once rather than wait for
//! its power-off. SIGTERM to the runtime helper is a `stop` with `T` 10.

use agent_protocol::WinSize;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vessel_api::types::ContainerState;

/// Longest request line accepted (an exec carries its environment).
const MAX_REQUEST: usize = 1 << 20;

/// Errors setting up the control socket or parsing a request.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("Could not create the control socket {}", .0.display())]
    Bind(std::path::PathBuf, #[source] io::Error),
    #[error("Invalid control request")]
    BadRequest(#[source] serde_json::Error),
}

pub use vessel_api::control::{AttachRequest, ControlRequest};

/// Parse one request line.
pub fn parse_request(line: &str) -> Result<ControlRequest, ControlError> {
    serde_json::from_str(line.trim()).map_err(ControlError::BadRequest)
}

/// An exec'd process as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecState {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// What the control socket acts on.
pub trait ControlHandler: Send + Sync {
    /// Deliver `signal` to the container's process (or its group).
    fn signal(&self, signal: i32, group: bool) -> Result<(), String>;
    /// Stop the container; return once it has exited.
    fn stop(&self, timeout: Duration) -> Result<(), String>;
    /// The current state.
    fn state(&self) -> ContainerState;
    /// Resource usage now.
    fn stats(&self) -> Result<vessel_api::types::ContainerStats, String>;
    /// A pod container's share of the VM (`ReadGroupStats`).
    fn group_stats(&self, group: &str) -> Result<vessel_api::types::ContainerStats, String> {
        Err(format!("no container {group} runs in this VM"))
    }
    /// Pause or resume the whole VM.
    fn pause(&self, paused: bool) -> Result<(), String>;
    /// The main process's terminal changed size.
    fn resize(&self, size: WinSize) -> Result<(), String>;
    /// What became of an exec'd process.
    fn exec_state(&self, exec_id: &str) -> Option<ExecState>;
    /// The container's processes.
    fn top(&self) -> Result<Vec<agent_protocol::ProcessInfo>, String>;
    /// Start a process that runs on its own; its pid in the guest.
    fn exec_detached(&self, request: agent_protocol::ExecRequest) -> Result<i32, String>;
    /// A streaming request: write the answer line to `conn`, then serve the
    /// stream until it ends.
    fn stream(&self, request: ControlRequest, conn: UnixStream);
}

/// The answer line for a one-shot `request`.
pub fn answer(
    handler: &dyn ControlHandler,
    request: Result<ControlRequest, ControlError>,
) -> String {
    let done = |r: Result<(), String>| match r {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    let json = |r: Result<serde_json::Value, String>| {
        r.unwrap_or_else(|e| serde_json::json!({"ok": false, "error": e}))
    };
    let value = match request {
        Ok(ControlRequest::Signal { signal, group }) => done(handler.signal(signal, group)),
        Ok(ControlRequest::Stop { timeout }) => done(handler.stop(Duration::from_secs(timeout))),
        Ok(ControlRequest::State) => {
            json(serde_json::to_value(handler.state()).map_err(|e| e.to_string()))
        }
        Ok(ControlRequest::Stats) => json(
            handler
                .stats()
                .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
        ),
        Ok(ControlRequest::GroupStats { group }) => json(
            handler
                .group_stats(&group)
                .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
        ),
        Ok(ControlRequest::Pause) => done(handler.pause(true)),
        Ok(ControlRequest::Unpause) => done(handler.pause(false)),
        Ok(ControlRequest::Resize { rows, cols }) => done(handler.resize(WinSize { rows, cols })),
        Ok(ControlRequest::Top) => json(
            handler
                .top()
                .map(|processes| serde_json::json!({ "processes": processes })),
        ),
        Ok(ControlRequest::ExecDetached(req)) => match handler.exec_detached(req) {
            Ok(pid) => serde_json::json!({"ok": true, "pid": pid}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        },
        Ok(ControlRequest::ExecState { exec_id }) => match handler.exec_state(&exec_id) {
            Some(s) => json(serde_json::to_value(s).map_err(|e| e.to_string())),
            None => serde_json::json!({"ok": false, "error": format!("no such exec: {exec_id}")}),
        },
        Ok(stream) => serde_json::json!({
            "ok": false,
            "error": format!("{stream:?} is a streaming request")
        }),
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

/// Read the request line byte by byte, so the frames a client may send
/// right after it stay in the socket for the stream.
fn read_line(conn: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*conn).read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_REQUEST {
                    return Err(io::Error::other("request line too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn handle(conn: UnixStream, handler: &dyn ControlHandler) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let line = read_line(&conn)?;
    conn.set_read_timeout(None)?;
    match parse_request(&line) {
        Ok(req) if req.is_stream() => {
            handler.stream(req, conn);
            Ok(())
        }
        req => {
            let reply = answer(handler, req);
            (&conn).write_all(reply.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::sync::Mutex;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request("{\"op\":\"signal\",\"signal\":9}\n").unwrap(),
            ControlRequest::Signal {
                signal: 9,
                group: false
            }
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
        assert_eq!(
            parse_request("{\"op\":\"attach\",\"stdin\":true}").unwrap(),
            ControlRequest::Attach(AttachRequest {
                stdin: true,
                ..Default::default()
            })
        );
        let exec = parse_request(
            r#"{"op":"exec","exec_id":"e1","process":{"args":["ls"],"env":[],"cwd":"/","user":"","terminal":true}}"#,
        )
        .unwrap();
        assert!(exec.is_stream());
        match exec {
            ControlRequest::Exec(r) => {
                assert_eq!(r.exec_id, "e1");
                assert!(r.process.terminal);
            }
            other => panic!("{other:?}"),
        }
        assert!(!ControlRequest::Stats.is_stream());
        for bad in [
            "",
            "{}",
            "{\"op\":\"reboot\"}",
            "{\"op\":\"signal\"}",
            "{\"op\":\"stop\",\"timeout\":-1}",
            "{\"op\":\"resize\",\"rows\":70000,\"cols\":1}",
            "not json",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    struct Recorder(Mutex<Vec<String>>);

    impl ControlHandler for Recorder {
        fn signal(&self, signal: i32, group: bool) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("signal {signal} {group}"));
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
        fn stats(&self) -> Result<vessel_api::types::ContainerStats, String> {
            Ok(vessel_api::types::ContainerStats {
                vmm_rss_bytes: 7,
                ..Default::default()
            })
        }
        fn pause(&self, paused: bool) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("pause {paused}"));
            Ok(())
        }
        fn resize(&self, size: WinSize) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("resize {}x{}", size.rows, size.cols));
            Ok(())
        }
        fn top(&self) -> Result<Vec<agent_protocol::ProcessInfo>, String> {
            Ok(vec![agent_protocol::ProcessInfo {
                pid: 9,
                ..Default::default()
            }])
        }
        fn exec_detached(&self, _: agent_protocol::ExecRequest) -> Result<i32, String> {
            Ok(77)
        }
        fn exec_state(&self, exec_id: &str) -> Option<ExecState> {
            (exec_id == "e1").then_some(ExecState {
                running: false,
                exit_code: Some(3),
            })
        }
        fn stream(&self, request: ControlRequest, conn: UnixStream) {
            self.0.lock().unwrap().push(format!("stream {request:?}"));
            // Echo what follows the request line, to show nothing of it
            // was consumed with the line.
            let mut w = &conn;
            w.write_all(b"{\"ok\":true}\n").unwrap();
            let mut rest = Vec::new();
            (&conn).read_to_end(&mut rest).unwrap();
            w.write_all(&rest).unwrap();
        }
    }

    #[test]
    fn serves_one_request_per_connection_and_hands_streams_over() {
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
        let v = ask("{\"op\":\"signal\",\"signal\":0,\"group\":true}\n");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "not running");
        assert_eq!(ask("{\"op\":\"stop\",\"timeout\":1}\n")["ok"], true);
        assert_eq!(ask("{\"op\":\"state\"}\n")["status"], "created");
        assert_eq!(ask("{\"op\":\"stats\"}\n")["vmm_rss_bytes"], 7);
        assert_eq!(ask("{\"op\":\"top\"}\n")["processes"][0]["pid"], 9);
        assert_eq!(ask("{\"op\":\"pause\"}\n")["ok"], true);
        assert_eq!(
            ask("{\"op\":\"resize\",\"rows\":5,\"cols\":6}\n")["ok"],
            true
        );
        assert_eq!(
            ask("{\"op\":\"exec_state\",\"exec_id\":\"e1\"}\n")["exit_code"],
            3
        );
        assert_eq!(
            ask("{\"op\":\"exec_state\",\"exec_id\":\"x\"}\n")["ok"],
            false
        );
        assert_eq!(ask("{\"op\":\"nope\"}\n")["ok"], false);
        // A stream: the bytes right after the request line reach it.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"copy_out\",\"path\":\"/etc\"}\nFRAMES")
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert_eq!(all, "{\"ok\":true}\nFRAMES");
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "signal 2 false",
                "signal 0 true",
                "stop 1s",
                "pause true",
                "resize 5x6",
                "stream CopyOut { path: \"/etc\", one_file_system: false }"
            ]
        );
    }
}
