//! `vessel cp` and `vessel export` of a container that is not running
//! (created and never started, or exited): a maintenance boot of its VM.
//!
//! The host never mounts or parses a container's filesystem (its writable
//! layer is untrusted), so a copy of a stopped container boots the
//! container's VM on its disk with no process, no network and no state
//! change (`vessel-runtime --maintenance`, `crates/runtime/src/
//! maintenance.rs`), and the copy runs in the guest as in a running
//! container. Copies at once share one boot; the helper powers the VM off
//! a moment after the last one.
//!
//! No two VMs ever have one disk: copies of a container that is not
//! running, and what changes its life (`start`, `rm`), pass a per-container
//! [`Gates`]: any number of copies, or one start or removal. A start or a
//! removal waits for the copies going on (at most [`COPY_WAIT_LIMIT`],
//! then it is refused and says why), then ends the maintenance boot and
//! goes on; copies that come meanwhile wait for it, then find the
//! container running (or gone). `rm -f` ends the maintenance boot at once,
//! cutting its copies. The helper's pid is in `maintenance.json`, so an
//! apiserver that restarted still finds it.

use super::{live_runtime, Containers, RUNTIME_EXIT_LIMIT};
use crate::error::{ApiError, ApiResult};
use anyhow::Context;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vessel_api::control::{
    ControlRequest, MaintenanceHelper, MAINTENANCE_FAILED, MAINTENANCE_READY,
};
use vessel_api::error::ErrorKind;
use vessel_api::fsutil::pid_start_time;
use vessel_api::paths::sibling_binary;
use vessel_api::types::{ContainerInfo, Status};

/// How long a start or a removal waits for copies of the stopped container.
pub const COPY_WAIT_LIMIT: Duration = Duration::from_secs(60);
/// How long a copy waits for a start or a removal going on.
const LIFECYCLE_WAIT_LIMIT: Duration = Duration::from_secs(200);
/// How long a maintenance helper may take to say it listens.
const HELPER_READY_LIMIT: Duration = Duration::from_secs(30);
/// How long a maintenance helper may take to power its VM off and end.
const HELPER_EXIT_LIMIT: Duration = Duration::from_secs(20);
/// How long a copy waits for the maintenance VM's answer (its boot; the
/// helper gives up on a boot after about 100 s).
const BOOT_ANSWER_LIMIT: Duration = Duration::from_secs(150);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One container's gate.
#[derive(Debug, Default)]
struct Gate {
    copies: usize,
    lifecycle: bool,
    lifecycle_waiting: usize,
}

/// Copies of stopped containers against starts and removals (see the
/// module's doc): any number of copies, or one lifecycle operation, per
/// container. A lifecycle operation waiting holds new copies back, so a
/// stream of copies cannot starve it.
#[derive(Debug, Default)]
pub struct Gates {
    gates: Mutex<HashMap<String, Gate>>,
    changed: Condvar,
}

/// Held while a copy or a lifecycle operation goes on.
#[derive(Debug)]
pub struct GateGuard {
    gates: Arc<Gates>,
    id: String,
    copy: bool,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut g = lock(&self.gates.gates);
        if let Some(gate) = g.get_mut(&self.id) {
            if self.copy {
                gate.copies = gate.copies.saturating_sub(1);
            } else {
                gate.lifecycle = false;
            }
            if gate.copies == 0 && !gate.lifecycle && gate.lifecycle_waiting == 0 {
                g.remove(&self.id);
            }
        }
        self.gates.changed.notify_all();
    }
}

impl Gates {
    /// Wait on `g` until `done` says so or `deadline`; false on the deadline.
    fn wait_until<'a>(
        &self,
        mut g: MutexGuard<'a, HashMap<String, Gate>>,
        deadline: Instant,
        mut ready: impl FnMut(&mut HashMap<String, Gate>) -> bool,
    ) -> (MutexGuard<'a, HashMap<String, Gate>>, bool) {
        loop {
            if ready(&mut g) {
                return (g, true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (g, false);
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Enter as a copy of container `id`: waits (up to `limit`) while a
    /// start or a removal goes on or waits. `None` on the limit.
    pub fn copy(self: &Arc<Self>, id: &str, limit: Duration) -> Option<GateGuard> {
        let deadline = Instant::now() + limit;
        let g = lock(&self.gates);
        let (_g, entered) = self.wait_until(g, deadline, |g| {
            let gate = g.entry(id.to_string()).or_default();
            if gate.lifecycle || gate.lifecycle_waiting > 0 {
                return false;
            }
            gate.copies += 1;
            true
        });
        entered.then(|| GateGuard {
            gates: Arc::clone(self),
            id: id.to_string(),
            copy: true,
        })
    }

    /// Enter as a start or a removal of container `id`: waits (up to
    /// `limit`) for the copies and any other such operation. `Err` with
    /// the number of copies still going on at the limit.
    pub fn lifecycle(self: &Arc<Self>, id: &str, limit: Duration) -> Result<GateGuard, usize> {
        let deadline = Instant::now() + limit;
        let mut g = lock(&self.gates);
        g.entry(id.to_string()).or_default().lifecycle_waiting += 1;
        let (mut g, entered) = self.wait_until(g, deadline, |g| {
            let gate = g.entry(id.to_string()).or_default();
            if gate.copies > 0 || gate.lifecycle {
                return false;
            }
            gate.lifecycle = true;
            true
        });
        let gate = g.entry(id.to_string()).or_default();
        gate.lifecycle_waiting = gate.lifecycle_waiting.saturating_sub(1);
        let copies = gate.copies;
        if !entered {
            if copies == 0 && !gate.lifecycle && gate.lifecycle_waiting == 0 {
                g.remove(id);
            }
            // Copies held back by this wait may go now.
            self.changed.notify_all();
            return Err(copies);
        }
        Ok(GateGuard {
            gates: Arc::clone(self),
            id: id.to_string(),
            copy: false,
        })
    }
}

/// A copy's stream to a runtime helper (the container's own, or a
/// maintenance boot's).
pub struct CopyStream {
    pub info: ContainerInfo,
    pub runtime: UnixStream,
    /// Bytes the runtime sent after its answer line.
    pub first: Vec<u8>,
    /// Held until the copy ends (a stopped container's copies).
    pub gate: Option<GateGuard>,
}

impl Containers {
    /// Open a copy (`copy_out`, `copy_in`) of container `key`: through its
    /// runtime helper when it runs, through a maintenance boot otherwise.
    pub fn copy_stream(&self, key: &str, request: &ControlRequest) -> ApiResult<CopyStream> {
        let info = self.find(key)?;
        let id = info.config.id.clone();
        let running = |me: &Self| -> ApiResult<CopyStream> {
            let (info, runtime, first) = me.control_stream(&id, request)?;
            Ok(CopyStream {
                info,
                runtime,
                first,
                gate: None,
            })
        };
        if info.state.status.is_active() {
            return running(self);
        }
        if info.config.auto_remove && info.state.status == Status::Exited {
            return Err(ApiError::conflict(format!(
                "container {} was run with --rm and has ended: it is being removed",
                info.config.name
            )));
        }
        let gate = self.gates.copy(&id, LIFECYCLE_WAIT_LIMIT).ok_or_else(|| {
            ApiError::conflict(format!(
                "container {} is being started or removed, for over {} s; try again",
                info.config.name,
                LIFECYCLE_WAIT_LIMIT.as_secs()
            ))
        })?;
        // A start may have gone on meanwhile.
        let info = self.load(&id)?;
        if info.state.status.is_active() {
            drop(gate);
            return running(self);
        }
        // The VM of its last run may still be powering off (vminitd syncs
        // and unmounts its disk first): the disk is ours once it is gone.
        if let Some(pid) = live_runtime(&info.state) {
            if !crate::watch::wait_exit(pid, info.state.runtime_start_time, RUNTIME_EXIT_LIMIT) {
                return Err(ApiError::conflict(format!(
                    "container {} has ended, but its runtime helper (pid {pid}) still runs its VM after {} s; see {}, then try again",
                    info.config.name,
                    RUNTIME_EXIT_LIMIT.as_secs(),
                    self.home.container_dir(&id).join("runtime.log").display()
                )));
            }
        }
        let sock = self.home.maintenance_run_dir(&id).join("control.sock");
        // A helper powering off (its last copy ended a moment ago) refuses
        // with `unavailable`: wait for its end and boot again.
        for _ in 0..3 {
            let helper = self.maintenance_helper(&info)?;
            match self.open_control_stream(&info, &sock, request, BOOT_ANSWER_LIMIT) {
                Ok((runtime, first)) => {
                    return Ok(CopyStream {
                        info,
                        runtime,
                        first,
                        gate: Some(gate),
                    })
                }
                Err(ApiError::Answer(b)) if b.kind == ErrorKind::Unavailable => {
                    crate::watch::wait_exit(helper.pid, helper.start_time, HELPER_EXIT_LIMIT);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Internal(anyhow::anyhow!(
            "the maintenance boot of container {} kept powering off; see {}",
            info.config.name,
            self.home.container_dir(&id).join("runtime.log").display()
        )))
    }

    /// The live maintenance helper of a container that is not running, or
    /// a new one (which then boots the VM).
    fn maintenance_helper(&self, info: &ContainerInfo) -> ApiResult<MaintenanceHelper> {
        let id = &info.config.id;
        let dir = self.home.container_dir(id);
        let _one = lock(&self.maintenance_spawn);
        if let Some(h) = MaintenanceHelper::read(&dir).filter(MaintenanceHelper::is_live) {
            return Ok(h);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runtime.log"))
            .context("opening runtime.log")?;
        let bin = sibling_binary("vessel-runtime");
        let mut cmd = Command::new(&bin);
        cmd.arg("--home")
            .arg(self.home.root())
            .arg("--id")
            .arg(id)
            .arg("--maintenance")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id() as i32;
        let see = dir.join("runtime.log");
        // Its first line: ready, or why not.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(out.take(64 * 1024)).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let line = rx.recv_timeout(HELPER_READY_LIMIT).unwrap_or_default();
        let line = line.trim();
        if line != MAINTENANCE_READY {
            let _ = child.kill();
            let _ = child.wait();
            let why = match line.strip_prefix(MAINTENANCE_FAILED) {
                Some(why) => why.to_string(),
                None => "it ended without saying why".to_string(),
            };
            return Err(ApiError::Internal(anyhow::anyhow!(
                "could not start the maintenance boot of container {} (to copy its files while it does not run): {why}; see {}",
                info.config.name,
                see.display()
            )));
        }
        // Reaped when it ends (it outlives us if we restart).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(MaintenanceHelper {
            pid,
            start_time: pid_start_time(pid),
        })
    }

    /// Before a start or a removal of a container that may have a
    /// maintenance boot: wait for its copies (with `force`, cut them), and
    /// end the boot. The guard holds new copies back until dropped.
    pub(super) fn end_maintenance(
        &self,
        info: &ContainerInfo,
        force: bool,
    ) -> ApiResult<GateGuard> {
        let id = &info.config.id;
        if force {
            self.stop_maintenance(info)?;
        }
        let guard = self
            .gates
            .lifecycle(id, COPY_WAIT_LIMIT)
            .map_err(|copies| {
                ApiError::conflict(format!(
                    "container {} is busy: {copies} cop{} of its files (`vessel cp`, `vessel export`) still going on after {} s; try again once {} ended{}",
                    info.config.name,
                    if copies == 1 { "y" } else { "ies" },
                    COPY_WAIT_LIMIT.as_secs(),
                    if copies == 1 { "it has" } else { "they have" },
                    if force { "" } else { ", or remove it with `vessel rm -f`" }
                ))
            })?;
        self.stop_maintenance(info)?;
        Ok(guard)
    }

    /// End the container's maintenance boot, if one runs: the helper powers
    /// the VM off (its copies are cut) and exits.
    pub(super) fn stop_maintenance(&self, info: &ContainerInfo) -> ApiResult<()> {
        let dir = self.home.container_dir(&info.config.id);
        let Some(h) = MaintenanceHelper::read(&dir).filter(MaintenanceHelper::is_live) else {
            return Ok(());
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(h.pid, libc::SIGTERM) };
        if crate::watch::wait_exit(h.pid, h.start_time, HELPER_EXIT_LIMIT) {
            return Ok(());
        }
        Err(ApiError::conflict(format!(
            "the maintenance boot (pid {}) of container {} did not end within {} s; see {}, then try again",
            h.pid,
            info.config.name,
            HELPER_EXIT_LIMIT.as_secs(),
            dir.join("runtime.log").display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_a_gate_and_a_lifecycle_operation_waits_for_them() {
        let gates = Arc::new(Gates::default());
        let a = gates.copy("c", Duration::from_secs(1)).unwrap();
        let b = gates.copy("c", Duration::from_secs(1)).unwrap();
        // Another container is not held back.
        drop(gates.lifecycle("other", Duration::from_millis(10)).unwrap());
        // A start waits for both copies.
        assert_eq!(
            gates.lifecycle("c", Duration::from_millis(50)).unwrap_err(),
            2
        );
        let waiter = {
            let gates = Arc::clone(&gates);
            std::thread::spawn(move || {
                let t = Instant::now();
                let g = gates.lifecycle("c", Duration::from_secs(5));
                (g.is_ok(), t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        // While it waits, new copies wait too (no starvation).
        assert!(gates.copy("c", Duration::from_millis(50)).is_none());
        drop(a);
        std::thread::sleep(Duration::from_millis(50));
        drop(b);
        let (entered, waited) = waiter.join().unwrap();
        assert!(entered);
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        // All released: the table is empty again.
        assert!(lock(&gates.gates).is_empty());
    }

    #[test]
    fn a_copy_waits_for_a_start_and_one_start_at_a_time() {
        let gates = Arc::new(Gates::default());
        let start = gates.lifecycle("c", Duration::from_secs(1)).unwrap();
        assert!(gates.lifecycle("c", Duration::from_millis(30)).is_err());
        let copier = {
            let gates = Arc::clone(&gates);
            std::thread::spawn(move || gates.copy("c", Duration::from_secs(5)).is_some())
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(start);
        assert!(copier.join().unwrap());
        assert!(lock(&gates.gates).is_empty());
    }
}
