//! Requests the apiserver sends to a runtime helper's control socket
//! (`RUN/control.sock`, served by `crates/runtime/src/control.rs`), and how
//! it reads the answers.
//!
//! Every connection starts with one JSON request line and one JSON answer
//! line. A refusal is `{"ok":false,"error":"...","kind":"..."}` (`kind`, an
//! [`ErrorKind`], is optional: `conflict` when absent). For the one-shot
//! ops (`signal`, `stop`, `state`, `stats`, ...) the connection then ends.
//! For a streaming op (`attach`, `exec`, `copy_out`, `copy_in`) the answer
//! is `{"ok":true}` and the connection then carries `vessel.agent.v1`
//! frames both ways until either side closes: the apiserver splices it
//! with the client's upgraded HTTP connection (docs/ARCHITECTURE.md,
//! "Streams"). The table of requests and answers is in
//! `crates/runtime/src/control.rs`, which serves them.

use crate::error::{ErrorBody, ErrorKind};
use serde::{Deserialize, Serialize};

/// One request line (the runtime's parser refuses unknown fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Deliver a signal to the container's process (or its group).
    Signal {
        signal: i32,
        #[serde(default, skip_serializing_if = "is_false")]
        group: bool,
    },
    /// SIGTERM, then SIGKILL after `timeout` seconds; answered once ended.
    Stop {
        #[serde(default = "default_stop_timeout")]
        timeout: u64,
    },
    /// The current `ContainerState`.
    State,
    /// A `ContainerStats`.
    Stats,
    /// Stop the whole VM.
    Pause,
    /// Resume it.
    Unpause,
    /// The main process's terminal changed size.
    Resize { rows: u16, cols: u16 },
    /// What became of an exec'd process: `{"running":B,"exit_code":N?}`.
    ExecState { exec_id: String },
    /// A `ContainerStats` of one pod container in this VM (its cgroup in
    /// the guest; the containerd shim's pods).
    GroupStats { group: String },
    /// The container's processes: `{"processes":[ProcessInfo...]}`.
    Top,
    /// Stream: the main process's output, and stdin to it.
    Attach(AttachRequest),
    /// Stream: one more process in the container.
    Exec(agent_protocol::ExecRequest),
    /// One more process that runs on its own (`exec -d`): answered
    /// `{"ok":true,"pid":N}` once started; its output is dropped, its end
    /// recorded (`exec_state`).
    ExecDetached(agent_protocol::ExecRequest),
    /// Stream: a tar of `path` in the container.
    CopyOut {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        one_file_system: bool,
    },
    /// Stream: a tar unpacked into the directory `path`.
    CopyIn { path: String },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_stop_timeout() -> u64 {
    10
}

/// What an attach asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// Send the client's stdin to the process.
    #[serde(default)]
    pub stdin: bool,
    /// Pass the process's stdout (and stderr) on; when neither is asked
    /// for, both are (Docker's `attach` without `-a`).
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
    /// First what the process wrote so far (from its log).
    #[serde(default)]
    pub logs: bool,
}

impl ControlRequest {
    /// Does the connection go on as a stream after the answer?
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            Self::Attach(_) | Self::Exec(_) | Self::CopyOut { .. } | Self::CopyIn { .. }
        )
    }

    /// The request as its line on the socket.
    pub fn line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Reading answer lines.
pub struct ControlAnswer;

impl ControlAnswer {
    /// The refusal an answer carries (`"ok": false`), as an error of the
    /// request it answers; `None` for any other answer.
    pub fn refusal(answer: &serde_json::Value) -> Option<ErrorBody> {
        if answer.get("ok").and_then(|o| o.as_bool()) != Some(false) {
            return None;
        }
        let message = answer
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the runtime helper refused, without saying why")
            .to_string();
        let kind = answer
            .get("kind")
            .cloned()
            .and_then(|k| serde_json::from_value::<ErrorKind>(k).ok())
            .filter(|k| *k != ErrorKind::Unknown)
            .unwrap_or(ErrorKind::Conflict);
        Some(ErrorBody::new(kind, message))
    }
}

/// A maintenance boot's runtime helper (`vessel-runtime --maintenance`):
/// the VM of a container that is not running, booted on its disk with no
/// process started, for `vessel cp` and `vessel export`. The helper writes
/// this record to `containers/<id>/maintenance.json` while it runs (and
/// removes it at its end), so an apiserver, also a restarted one, finds it
/// before it starts or removes the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceHelper {
    pub pid: i32,
    /// The helper's start time (`/proc/PID/stat`), so a reused pid is not
    /// taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

impl MaintenanceHelper {
    /// The record's file in a container's directory.
    pub fn path(container_dir: &std::path::Path) -> std::path::PathBuf {
        container_dir.join("maintenance.json")
    }

    /// The record in `container_dir`, if there is one and it reads.
    pub fn read(container_dir: &std::path::Path) -> Option<Self> {
        crate::fsutil::read_json(&Self::path(container_dir))
            .ok()
            .flatten()
    }

    /// Is the process this record names still that helper?
    pub fn is_live(&self) -> bool {
        crate::fsutil::pid_alive(self.pid)
            && (self.start_time.is_none()
                || crate::fsutil::pid_start_time(self.pid) == self.start_time)
    }
}

/// The first line a maintenance helper writes on its standard output once
/// its control socket listens (the VM then boots); otherwise it writes
/// [`MAINTENANCE_FAILED`] and the reason, and exits.
pub const MAINTENANCE_READY: &str = "ready";
/// The prefix of a maintenance helper's line when it cannot serve.
pub const MAINTENANCE_FAILED: &str = "error: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_runtime_s() {
        assert_eq!(
            ControlRequest::Signal {
                signal: 9,
                group: false
            }
            .line()
            .unwrap(),
            b"{\"op\":\"signal\",\"signal\":9}\n"
        );
        assert_eq!(
            ControlRequest::Stop { timeout: 3 }.line().unwrap(),
            b"{\"op\":\"stop\",\"timeout\":3}\n"
        );
        assert_eq!(
            ControlRequest::State.line().unwrap(),
            b"{\"op\":\"state\"}\n"
        );
        let a = ControlRequest::Attach(AttachRequest {
            stdin: true,
            stdout: true,
            stderr: false,
            logs: false,
        });
        assert_eq!(
            a.line().unwrap(),
            b"{\"op\":\"attach\",\"stdin\":true,\"stdout\":true,\"stderr\":false,\"logs\":false}\n"
        );
        let back: ControlRequest = serde_json::from_slice(&a.line().unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn refusals() {
        let v = serde_json::json!({"ok": false, "error": "not running", "kind": "conflict"});
        let e = ControlAnswer::refusal(&v).unwrap();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Conflict, "not running")
        );
        let v = serde_json::json!({"ok": false, "error": "no such process", "kind": "not_found"});
        assert_eq!(
            ControlAnswer::refusal(&v).unwrap().kind,
            ErrorKind::NotFound
        );
        // An older runtime: no kind; a newer one: a kind we do not know.
        let v = serde_json::json!({"ok": false, "error": "Invalid control request"});
        assert_eq!(
            ControlAnswer::refusal(&v).unwrap().kind,
            ErrorKind::Conflict
        );
        let v = serde_json::json!({"ok": false, "error": "x", "kind": "brand_new"});
        assert_eq!(
            ControlAnswer::refusal(&v).unwrap().kind,
            ErrorKind::Conflict
        );
        assert!(ControlAnswer::refusal(&serde_json::json!({"ok": true})).is_none());
        assert!(ControlAnswer::refusal(&serde_json::json!({"status": "running"})).is_none());
    }
}
