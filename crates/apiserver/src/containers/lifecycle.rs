//! What a container's life gains with interactive use: another boot of an
//! ended container (`start` again, `restart`), `pause`/`unpause` of its
//! whole VM, `rename`, `container prune`, and the one-shot questions to its
//! runtime helper (`stats`, `top`, a terminal's `resize`).

use super::{end_runtime, live_runtime, Containers, RUNTIME_EXIT_LIMIT};
use crate::error::{ApiError, ApiResult};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use vessel_api::control::{ControlAnswer, ControlRequest};
use vessel_api::fsutil::write_json_atomic;
use vessel_api::types::{
    valid_container_name, ContainerConfig, ContainerInfo, ContainerState, ContainerStats,
    EventAction, PruneResponse, Status, TopResponse,
};

/// How long a one-shot question to a runtime helper may take.
const ASK_LIMIT: Duration = Duration::from_secs(30);

/// "running", "paused", ... as people read a status.
fn status_word(s: Status) -> String {
    format!("{s:?}").to_lowercase()
}

impl Containers {
    /// Make an ended container ready for another boot: its last runtime
    /// helper gone (it may still be powering the VM off), its end recorded
    /// (the `die` event, its network given back), its state `created`
    /// again. The disk (`overlay.qcow2`) and the log stay.
    pub(super) fn prepare_new_boot(&self, info: &ContainerInfo) -> ApiResult<()> {
        // After the process's end the VM powers itself off, once vminitd
        // has synced and unmounted the disk: wait for that. A stop would
        // kill the VM at once, and the last run's writes would be lost.
        if let Some(pid) = live_runtime(&info.state) {
            crate::watch::wait_exit(pid, info.state.runtime_start_time, RUNTIME_EXIT_LIMIT);
        }
        if let Some(pid) = end_runtime(&info.state, RUNTIME_EXIT_LIMIT) {
            return Err(ApiError::conflict(format!(
                "container {} has ended, but its runtime helper (pid {pid}) did not exit within {} s; see {}, then start it again",
                info.config.name,
                RUNTIME_EXIT_LIMIT.as_secs(),
                self.home.container_dir(&info.config.id).join("runtime.log").display()
            )));
        }
        self.note_exit(info);
        write_json_atomic(
            &self.state_path(&info.config.id),
            &ContainerState::created(),
        )?;
        Ok(())
    }

    /// `restart`: stop it if it runs (SIGTERM, SIGKILL after `timeout`
    /// seconds), then boot it again. A `--rm` container is kept for the
    /// new boot (Docker does the same).
    pub fn restart(self: &Arc<Self>, key: &str, timeout: u64) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        let id = info.config.id.clone();
        // Holds a `--rm` removal back between the stop and the start.
        let _guard = self.attach(&id);
        if info.state.status.is_active() {
            self.stop(&id, timeout)?;
        }
        let started = self.start(&id)?;
        self.events.emit(EventAction::Restart, &started.config, &[]);
        Ok(started)
    }

    /// One request to the runtime helper of a running container; its
    /// answer. A refusal keeps the helper's kind (`conflict` when it gives
    /// none); a container that has ended meanwhile is a `conflict` too.
    pub(super) fn ask(
        &self,
        info: &ContainerInfo,
        request: &ControlRequest,
        limit: Duration,
    ) -> ApiResult<serde_json::Value> {
        let not_running = |info: &ContainerInfo| {
            ApiError::conflict(format!(
                "container {} is not running; start it with `vessel start {}`",
                info.config.name, info.config.name
            ))
        };
        if !info.state.status.is_active() {
            return Err(not_running(info));
        }
        let sock = self.control_socket(&info.config.id);
        let answer = (|| -> std::io::Result<String> {
            let mut s = UnixStream::connect(&sock)?;
            s.set_read_timeout(Some(limit))?;
            s.write_all(&request.line().map_err(std::io::Error::other)?)?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line)
        })();
        let line = match answer {
            Ok(l) if !l.trim().is_empty() => l,
            other => {
                // Ended meanwhile: say so rather than how the socket failed.
                let now = self.load(&info.config.id)?;
                if !now.state.status.is_active() {
                    return Err(not_running(&now));
                }
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "it closed the connection without an answer".into(),
                };
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "asking the runtime helper of container {} ({}): {why}; see {}",
                    info.config.name,
                    sock.display(),
                    self.home
                        .container_dir(&info.config.id)
                        .join("runtime.log")
                        .display()
                )));
            }
        };
        let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("reading the runtime helper's answer"))
        })?;
        if let Some(refusal) = ControlAnswer::refusal(&v) {
            return Err(ApiError::Answer(refusal));
        }
        Ok(v)
    }

    /// `pause` (`paused`) or `unpause`: the whole VM stops or runs again.
    pub fn pause(&self, key: &str, paused: bool) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        let wanted = if paused {
            Status::Running
        } else {
            Status::Paused
        };
        if info.state.status != wanted {
            let verb = if paused { "pause" } else { "unpause" };
            return Err(ApiError::conflict(match info.state.status {
                Status::Paused => format!("container {} is already paused", info.config.name),
                Status::Running => format!("container {} is not paused", info.config.name),
                other => format!(
                    "cannot {verb} container {}: it is not running ({})",
                    info.config.name,
                    status_word(other)
                ),
            }));
        }
        let request = if paused {
            ControlRequest::Pause
        } else {
            ControlRequest::Unpause
        };
        self.ask(&info, &request, ASK_LIMIT)?;
        let action = if paused {
            EventAction::Pause
        } else {
            EventAction::Unpause
        };
        self.events.emit(action, &info.config, &[]);
        self.load(&info.config.id)
    }

    /// Resource usage now (`stats`).
    pub fn stats(&self, key: &str) -> ApiResult<ContainerStats> {
        let info = self.find(key)?;
        let v = self.ask(&info, &ControlRequest::Stats, ASK_LIMIT)?;
        serde_json::from_value(v).map_err(|e| {
            ApiError::Internal(
                anyhow::Error::new(e).context("reading the runtime helper's statistics"),
            )
        })
    }

    /// The container's processes (`top`).
    pub fn top(&self, key: &str) -> ApiResult<TopResponse> {
        let info = self.find(key)?;
        let v = self.ask(&info, &ControlRequest::Top, ASK_LIMIT)?;
        let processes = serde_json::from_value(v["processes"].clone()).map_err(|e| {
            ApiError::Internal(
                anyhow::Error::new(e).context("reading the runtime helper's process list"),
            )
        })?;
        let boot_time_ms = match (info.state.started_ms, info.state.guest_uptime_at_start_ms) {
            (Some(started), Some(uptime)) => started.checked_sub(uptime),
            _ => None,
        };
        Ok(TopResponse {
            processes,
            boot_time_ms,
        })
    }

    /// The main process's terminal changed size.
    pub fn resize(&self, key: &str, rows: u16, cols: u16) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        if !info.config.process.terminal {
            return Err(ApiError::conflict(format!(
                "container {} has no terminal (it was not created with -t)",
                info.config.name
            )));
        }
        self.ask(&info, &ControlRequest::Resize { rows, cols }, ASK_LIMIT)?;
        Ok(info)
    }

    /// `rename`: a new name, checked like a new container's. The network's
    /// DNS answers the new name from the container's next start on.
    pub fn rename(&self, key: &str, name: &str) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        if !valid_container_name(name) {
            return Err(ApiError::invalid(format!(
                "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed"
            )));
        }
        let _guard = self
            .create_lock
            .lock()
            .map_err(|_| anyhow::anyhow!("create lock poisoned"))?;
        if info.config.name == name {
            return Err(ApiError::conflict(format!(
                "container {} is already named {name:?}",
                info.config.name
            )));
        }
        if let Some(other) = self.list().iter().find(|i| i.config.name == name) {
            return Err(ApiError::conflict(format!(
                "the container name {name:?} is already in use by container {}; remove it or choose another name",
                &other.config.id[..12.min(other.config.id.len())]
            )));
        }
        let old = info.config.name.clone();
        let config = ContainerConfig {
            name: name.to_string(),
            ..info.config.clone()
        };
        write_json_atomic(
            &self.home.container_dir(&config.id).join("config.json"),
            &config,
        )?;
        self.events
            .emit(EventAction::Rename, &config, &[("old_name", old)]);
        self.load(&config.id)
    }

    /// `container prune`: remove every container that does not run (ended,
    /// or created and never started).
    pub fn prune(&self) -> ApiResult<PruneResponse> {
        let mut removed = Vec::new();
        for info in self.list() {
            if info.state.status.is_active() {
                continue;
            }
            match self.remove(&info.config.id, false, false) {
                Ok(_) => removed.push(info.config.id),
                // Started meanwhile, or removed by someone else: not ours.
                Err(ApiError::Answer(b)) => {
                    eprintln!(
                        "vessel-apiserver: prune: {}: {}",
                        info.config.name, b.message
                    )
                }
                Err(e) => return Err(e),
            }
        }
        Ok(PruneResponse { removed })
    }
}
