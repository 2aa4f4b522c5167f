//! Restart policies at work (`--restart`, `vessel update --restart`), with
//! Docker's semantics:
//!
//! - When a run ends by itself, the bookkeeper ([`Containers::check`])
//!   asks [`decide`]: `always` and `unless-stopped` restart it, `on-failure`
//!   when its exit code is not 0 and fewer than MAX restarts were made.
//!   A restart waits a back-off first: 100 ms, doubled after each run
//!   shorter than 10 s, at most 1 min; a run of 10 s or more starts it
//!   over at 100 ms. Meanwhile the container is `exited` with `restarting`
//!   set (Docker's `Restarting`).
//! - A run a user ended (`stop`, `kill`, `rm -f`, through the API) is not
//!   restarted; the mark stays until a user starts it again (`start`,
//!   `restart`), which also sets `RestartCount` back to 0.
//! - When the apiserver starts (`vessel system start`, a host reboot, a
//!   crash the supervisor recovers from): restarts that were pending are
//!   made, runs that ended while no apiserver watched are decided on now,
//!   and `always` containers start again (even ones a user had stopped,
//!   except after a crash: [`StartKind`]), `unless-stopped` ones unless a
//!   user had stopped them. `system stop` ends every container without
//!   marking it stopped by a user.
//!
//! The bookkeeping of each container is `restart.json` in its directory
//! ([`RestartRecord`]), written atomically before anything is acted on, so
//! an apiserver that dies in a back-off finds the pending restart again.
//! The bookkeeping thread never waits: restarts are made by the restarter
//! thread ([`Containers::start_restarter`]) when their time has come, each
//! boot on a thread of its own.

use super::{run_key, Containers};
use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vessel_api::fsutil::{read_json, write_json_atomic};
use vessel_api::restart::{ContainerUpdate, RestartPolicy, RestartPolicyName};
use vessel_api::types::{now_ms, ContainerInfo, ContainerState, Status};

/// The first back-off (Docker's).
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run at least this long starts the back-off over.
pub const GOOD_RUN: Duration = Duration::from_secs(10);
/// How soon a restart due while the last one still boots is looked at again.
const RETRY_BUSY: Duration = Duration::from_millis(100);
/// The longest wait for a policy boot to be over (a boot's own limit is 180 s).
const BOOT_WAIT: Duration = Duration::from_secs(200);

/// A container's restart bookkeeping (`containers/<id>/restart.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// Restarts made by the policy since a user last started it.
    #[serde(default)]
    pub count: u32,
    /// A user ended it (`stop`, `kill`) and has not started it since.
    #[serde(default)]
    pub manually_stopped: bool,
    /// The run (its [`run_key`]) whose end was decided on last.
    #[serde(default)]
    pub decided_run: Option<u64>,
    /// The back-off of the last decision, in ms.
    #[serde(default)]
    pub backoff_ms: u64,
    /// A restart decided on and not made yet.
    #[serde(default)]
    pub pending: Option<Pending>,
}

/// A restart to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The run that ended (its [`run_key`]); once another run has begun,
    /// the restart is done or stale.
    pub run: u64,
    /// When, in ms since the epoch.
    pub due_ms: u64,
}

/// How a run ended, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub exit_code: i32,
    /// How long it ran.
    pub ran: Duration,
    /// The apiserver is shutting down (`system stop`): nothing restarts now.
    pub shutting_down: bool,
}

/// Decide on the end of a run: the back-off before a restart, or `None`.
/// Updates the record's count and back-off as Docker's restart manager
/// does.
pub fn decide(policy: &RestartPolicy, rec: &mut RestartRecord, end: &End) -> Option<Duration> {
    if policy.is_no() || rec.manually_stopped || end.shutting_down {
        return None;
    }
    let last = if end.ran >= GOOD_RUN {
        0
    } else {
        rec.backoff_ms
    };
    let backoff = if last == 0 {
        FIRST_BACKOFF.as_millis() as u64
    } else {
        last.saturating_mul(2).min(MAX_BACKOFF.as_millis() as u64)
    };
    rec.backoff_ms = backoff;
    let restart = match policy.name {
        RestartPolicyName::No => false,
        RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
        RestartPolicyName::OnFailure => {
            end.exit_code != 0
                && (policy.maximum_retry_count == 0 || rec.count < policy.maximum_retry_count)
        }
    };
    if !restart {
        return None;
    }
    rec.count += 1;
    Some(Duration::from_millis(backoff))
}

/// How an apiserver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// The first since the host booted or since `system stop`: Docker's
    /// daemon start, which starts `always` containers even if a user had
    /// stopped them.
    Fresh,
    /// Again after the last apiserver crashed (the supervisor or the
    /// service manager restarted it): its containers kept running, and one
    /// a user stopped stays stopped whatever its policy.
    AfterCrash,
}

/// Does an ended container start again when the apiserver starts?
pub fn starts_with_apiserver(
    policy: &RestartPolicy,
    rec: &RestartRecord,
    start: StartKind,
) -> bool {
    match policy.name {
        RestartPolicyName::Always => start == StartKind::Fresh || !rec.manually_stopped,
        RestartPolicyName::UnlessStopped => !rec.manually_stopped,
        RestartPolicyName::No | RestartPolicyName::OnFailure => false,
    }
}

/// The restarts of one apiserver: the timers and what is booting.
#[derive(Default)]
pub struct Restarts {
    /// Serializes every read-modify-write of a `restart.json`.
    records: Mutex<()>,
    /// Container ID → when its restart is due (ms since the epoch).
    timers: Mutex<HashMap<String, u64>>,
    wake: Condvar,
    /// Containers a restart is booting now.
    booting: Mutex<HashSet<String>>,
    shutting_down: AtomicBool,
}

/// Takes a container off the booting set when its policy boot is over.
struct Booting<'a>(&'a Restarts, String);

impl Drop for Booting<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.booting.lock() {
            b.remove(&self.1);
        }
    }
}

impl Containers {
    fn restart_record_path(&self, id: &str) -> PathBuf {
        self.home.container_dir(id).join("restart.json")
    }

    fn restart_record(&self, id: &str) -> RestartRecord {
        read_json(&self.restart_record_path(id))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Change a container's record (written only when it changed, and only
    /// while the container exists); what `f` returned.
    fn change_restart_record<R>(&self, id: &str, f: impl FnOnce(&mut RestartRecord) -> R) -> R {
        let _one = self.restarts.records.lock();
        let before = self.restart_record(id);
        let mut rec = before.clone();
        let r = f(&mut rec);
        if rec != before && self.home.container_dir(id).join("config.json").exists() {
            if let Err(e) = write_json_atomic(&self.restart_record_path(id), &rec) {
                eprintln!("vessel-apiserver: writing the restart record of {id}: {e}");
            }
        }
        r
    }

    /// Fill in what the restart bookkeeping says about a container's state.
    pub(super) fn restart_view(&self, id: &str, state: &mut ContainerState) {
        let rec = self.restart_record(id);
        state.restart_count = rec.count;
        state.restarting =
            state.status == Status::Exited && rec.pending.is_some_and(|p| p.run == run_key(state));
    }

    /// A run has ended: decide once whether its policy restarts it, and
    /// set the timer if so.
    pub(super) fn policy_on_end(&self, info: &ContainerInfo) {
        let policy = info.config.restart;
        if policy.is_no() || info.config.auto_remove || info.state.status != Status::Exited {
            return;
        }
        let id = &info.config.id;
        let key = run_key(&info.state);
        let ran = match (info.state.started_ms, info.state.finished_ms) {
            (Some(s), Some(f)) => Duration::from_millis(f.saturating_sub(s)),
            _ => Duration::ZERO,
        };
        let end = End {
            exit_code: info.state.exit_code.unwrap_or(255),
            ran,
            shutting_down: self.restarts.shutting_down.load(Ordering::SeqCst),
        };
        let due = self.change_restart_record(id, |rec| {
            if rec.decided_run == Some(key) {
                return None;
            }
            rec.decided_run = Some(key);
            let delay = decide(&policy, rec, &end)?;
            let due_ms = now_ms() + delay.as_millis() as u64;
            rec.pending = Some(Pending { run: key, due_ms });
            Some(due_ms)
        });
        if let Some(due_ms) = due {
            eprintln!(
                "vessel-apiserver: {} ended (exit code {}); its restart policy {policy} starts it again in {} ms",
                info.config.name,
                end.exit_code,
                due_ms.saturating_sub(now_ms())
            );
            self.set_restart_timer(id, due_ms);
        }
    }

    /// A user ends the container (`stop`, `kill`, `rm -f`): its policy
    /// does not restart this run, and a pending restart is called off.
    /// Not while the apiserver shuts down (that is no user's stop).
    pub(super) fn note_manual_stop(&self, id: &str) {
        if self.restarts.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        self.cancel_restart_timer(id);
        self.change_restart_record(id, |rec| {
            rec.manually_stopped = true;
            rec.pending = None;
        });
    }

    /// A user starts the container: the policy counts from 0 again.
    pub(super) fn note_manual_start(&self, id: &str) {
        self.cancel_restart_timer(id);
        if !self.restart_record_path(id).exists() {
            return;
        }
        self.change_restart_record(id, |rec| {
            rec.count = 0;
            rec.manually_stopped = false;
            rec.backoff_ms = 0;
            rec.pending = None;
        });
    }

    /// Is a policy restart of `id` booting now?
    pub(super) fn policy_booting(&self, id: &str) -> bool {
        self.restarts
            .booting
            .lock()
            .map(|b| b.contains(id))
            .unwrap_or(false)
    }

    /// Wait (at most [`BOOT_WAIT`]) until no policy boot of `id` runs, or
    /// of any container with `None`; true when none runs.
    pub(super) fn wait_policy_boots(&self, id: Option<&str>) -> bool {
        let deadline = std::time::Instant::now() + BOOT_WAIT;
        loop {
            let busy = self
                .restarts
                .booting
                .lock()
                .map(|b| match id {
                    Some(id) => b.contains(id),
                    None => !b.is_empty(),
                })
                .unwrap_or(false);
            if !busy {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_restart_timer(&self, id: &str, due_ms: u64) {
        if let Ok(mut t) = self.restarts.timers.lock() {
            t.insert(id.to_string(), due_ms);
        }
        self.restarts.wake.notify_all();
    }

    fn cancel_restart_timer(&self, id: &str) {
        if let Ok(mut t) = self.restarts.timers.lock() {
            t.remove(id);
        }
        self.restarts.wake.notify_all();
    }

    /// `system stop`: no restart from now on (pending ones stay recorded
    /// for the next apiserver).
    pub(super) fn stop_restarts(&self) {
        self.restarts.shutting_down.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.restarts.timers.lock() {
            t.clear();
        }
        self.restarts.wake.notify_all();
    }

    /// The restarter thread: waits for the next due restart and boots it
    /// on a thread of its own.
    pub(super) fn start_restarter(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("restarter".into())
            .spawn(move || loop {
                let Some(id) = me.next_due_restart() else {
                    return;
                };
                let one = me.clone();
                let spawned = std::thread::Builder::new()
                    .name("restart".into())
                    .spawn(move || one.restart_by_policy(&id));
                if let Err(e) = spawned {
                    eprintln!("vessel-apiserver: cannot start a restart thread: {e}");
                }
            })?;
        Ok(())
    }

    /// Wait for the next restart whose time has come; `None` once the
    /// apiserver shuts down.
    fn next_due_restart(&self) -> Option<String> {
        let r = &self.restarts;
        let mut timers = r.timers.lock().ok()?;
        loop {
            if r.shutting_down.load(Ordering::SeqCst) {
                return None;
            }
            let now = now_ms();
            let next = timers
                .iter()
                .min_by_key(|(_, due)| **due)
                .map(|(id, due)| (id.clone(), *due));
            timers = match next {
                Some((id, due)) if due <= now => {
                    timers.remove(&id);
                    return Some(id);
                }
                Some((_, due)) => {
                    r.wake
                        .wait_timeout(timers, Duration::from_millis(due - now))
                        .ok()?
                        .0
                }
                None => r.wake.wait(timers).ok()?,
            };
        }
    }

    /// Make a pending restart of `id`, if it is still wanted: the container
    /// still ended in the run it was decided for. A boot that fails counts
    /// as a run that failed (exit code 125, the reason in its state), which
    /// the policy decides on in turn.
    fn restart_by_policy(&self, id: &str) {
        if self.restarts.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        {
            let Ok(mut b) = self.restarts.booting.lock() else {
                return;
            };
            if !b.insert(id.to_string()) {
                // The boot of its last restart is not over yet (the run it
                // began may have ended already): look again soon.
                drop(b);
                self.set_restart_timer(id, now_ms() + RETRY_BUSY.as_millis() as u64);
                return;
            }
        }
        let _booting = Booting(&self.restarts, id.to_string());
        let Ok(info) = self.load(id) else {
            return;
        };
        let rec = self.restart_record(id);
        let Some(pending) = rec.pending else {
            return;
        };
        if info.state.status != Status::Exited || run_key(&info.state) != pending.run {
            return;
        }
        let result = self.boot(id);
        // Done (or failed, below): no longer pending.
        self.change_restart_record(id, |rec| {
            if rec.pending == Some(pending) {
                rec.pending = None;
            }
        });
        if let Err(e) = result {
            let why = match &e {
                ApiError::Answer(b) => b.message.clone(),
                other => format!("{other:#}"),
            };
            eprintln!(
                "vessel-apiserver: restarting {} by its restart policy failed: {why}",
                info.config.name
            );
            let Ok(now) = self.load(id) else {
                return;
            };
            if now.state.status.is_active() {
                return;
            }
            let mut failed = ContainerState::created();
            failed.status = Status::Exited;
            failed.exit_code = Some(125);
            failed.finished_ms = Some(now_ms());
            failed.error = Some(format!(
                "its restart policy could not start it again: {why}"
            ));
            if let Err(e) = write_json_atomic(&self.state_path(id), &failed) {
                eprintln!("vessel-apiserver: writing the state of {id}: {e}");
            }
        }
    }

    /// When the apiserver starts (after the first look at every
    /// container): the restarts that were pending, and the `always` and
    /// `unless-stopped` containers that ended, start again (see
    /// [`starts_with_apiserver`] for which).
    pub(super) fn restarts_at_startup(&self, start: StartKind) {
        for info in self.list() {
            let policy = info.config.restart;
            if policy.is_no() || info.config.auto_remove || info.state.status != Status::Exited {
                continue;
            }
            let id = &info.config.id;
            let key = run_key(&info.state);
            let due = self.change_restart_record(id, |rec| {
                if let Some(p) = rec.pending {
                    if p.run == key {
                        return Some(p.due_ms);
                    }
                    rec.pending = None;
                }
                if !starts_with_apiserver(&policy, rec, start) {
                    return None;
                }
                // As a user's start: counting from 0 again.
                let due_ms = now_ms();
                *rec = RestartRecord {
                    decided_run: Some(key),
                    pending: Some(Pending { run: key, due_ms }),
                    ..Default::default()
                };
                Some(due_ms)
            });
            if let Some(due_ms) = due {
                eprintln!(
                    "vessel-apiserver: starting {} again (restart policy {policy})",
                    info.config.name
                );
                self.set_restart_timer(id, due_ms);
            }
        }
    }

    /// `vessel update`: change settings of an existing container.
    pub fn update(&self, key: &str, update: &ContainerUpdate) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        let id = info.config.id.clone();
        if let Some(policy) = update.restart {
            policy.validate().map_err(ApiError::invalid)?;
            if info.config.auto_remove && !policy.is_no() {
                return Err(ApiError::invalid(format!(
                    "the restart policy of container {} cannot be changed: it was created with --rm (conflicting options: --restart and --rm)",
                    info.config.name
                )));
            }
            let _guard = self
                .create_lock
                .lock()
                .map_err(|_| anyhow::anyhow!("create lock poisoned"))?;
            let now = self.load(&id)?;
            let config = vessel_api::types::ContainerConfig {
                restart: policy,
                ..now.config.clone()
            };
            write_json_atomic(&self.home.container_dir(&id).join("config.json"), &config)?;
            let ended = now.state.status == Status::Exited;
            let key = run_key(&now.state);
            if policy.is_no() {
                self.cancel_restart_timer(&id);
            }
            self.change_restart_record(&id, |rec| {
                // An end already seen was decided under the old policy.
                if ended && rec.decided_run.is_none() {
                    rec.decided_run = Some(key);
                }
                if policy.is_no() {
                    rec.pending = None;
                }
            });
        }
        self.load(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::restart::parse_restart_flag;

    fn end(exit_code: i32, ran_ms: u64) -> End {
        End {
            exit_code,
            ran: Duration::from_millis(ran_ms),
            shutting_down: false,
        }
    }

    fn policy(s: &str) -> RestartPolicy {
        parse_restart_flag(s).unwrap()
    }

    #[test]
    fn on_failure_restarts_failures_up_to_its_maximum() {
        let p = policy("on-failure:3");
        let mut rec = RestartRecord::default();
        let mut runs = 1;
        while decide(&p, &mut rec, &end(1, 50)).is_some() {
            runs += 1;
            assert!(runs < 10, "never stops");
        }
        assert_eq!(runs, 4, "the first run and 3 restarts");
        assert_eq!(rec.count, 3);
        // A success is not restarted, whatever the count.
        let mut rec = RestartRecord::default();
        assert_eq!(decide(&p, &mut rec, &end(0, 50)), None);
        assert_eq!(rec.count, 0);
        // on-failure without a maximum: no limit.
        let p = policy("on-failure");
        let mut rec = RestartRecord {
            count: 1000,
            ..Default::default()
        };
        assert!(decide(&p, &mut rec, &end(2, 50)).is_some());
        assert_eq!(rec.count, 1001);
    }

    #[test]
    fn always_and_unless_stopped_restart_any_end_but_a_user_s() {
        for p in [policy("always"), policy("unless-stopped")] {
            let mut rec = RestartRecord::default();
            assert!(decide(&p, &mut rec, &end(0, 50)).is_some(), "{p}");
            assert!(decide(&p, &mut rec, &end(137, 50)).is_some(), "{p}");
            assert_eq!(rec.count, 2);
            rec.manually_stopped = true;
            assert_eq!(decide(&p, &mut rec, &end(143, 50)), None, "{p}");
            assert_eq!(rec.count, 2);
        }
        let mut rec = RestartRecord::default();
        assert_eq!(decide(&RestartPolicy::NO, &mut rec, &end(1, 50)), None);
        // Shutting down: nothing restarts, and nothing is counted.
        let mut rec = RestartRecord::default();
        let down = End {
            shutting_down: true,
            ..end(143, 50)
        };
        assert_eq!(decide(&policy("always"), &mut rec, &down), None);
        assert_eq!(rec, RestartRecord::default());
    }

    #[test]
    fn the_back_off_doubles_to_a_minute_and_starts_over_after_a_good_run() {
        let p = policy("always");
        let mut rec = RestartRecord::default();
        let delays: Vec<u64> = (0..12)
            .map(|_| decide(&p, &mut rec, &end(1, 20)).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]
        );
        // 10 s of good run: 100 ms again.
        assert_eq!(
            decide(&p, &mut rec, &end(1, 10_000)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            decide(&p, &mut rec, &end(1, 9_999)),
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn what_starts_with_the_apiserver() {
        let stopped = RestartRecord {
            manually_stopped: true,
            ..Default::default()
        };
        let ended = RestartRecord::default();
        use StartKind::{AfterCrash, Fresh};
        assert!(starts_with_apiserver(&policy("always"), &stopped, Fresh));
        assert!(starts_with_apiserver(&policy("always"), &ended, Fresh));
        assert!(!starts_with_apiserver(
            &policy("unless-stopped"),
            &stopped,
            Fresh
        ));
        assert!(starts_with_apiserver(
            &policy("unless-stopped"),
            &ended,
            Fresh
        ));
        assert!(!starts_with_apiserver(&policy("on-failure"), &ended, Fresh));
        assert!(!starts_with_apiserver(&policy("no"), &ended, Fresh));
        // After a crash, a user's stop holds for `always` too.
        assert!(!starts_with_apiserver(
            &policy("always"),
            &stopped,
            AfterCrash
        ));
        assert!(starts_with_apiserver(&policy("always"), &ended, AfterCrash));
        assert!(!starts_with_apiserver(
            &policy("unless-stopped"),
            &stopped,
            AfterCrash
        ));
        assert!(starts_with_apiserver(
            &policy("unless-stopped"),
            &ended,
            AfterCrash
        ));
    }

    /// An instance with one ended container (no VM: its files only).
    fn ended_container(
        policy: &str,
        exit_code: i32,
    ) -> (tempfile::TempDir, Arc<Containers>, String) {
        let dir = tempfile::tempdir().unwrap();
        let home = vessel_api::paths::Home::new(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let network = crate::helpers::Helper::network(home.clone());
        let containers = Containers::new(home.clone(), network, rt.handle().clone());
        // Nothing here waits on it; it only has to outlive `containers`.
        std::mem::forget(rt);
        let id = "c0ffee".repeat(10) + "abcd";
        let cdir = home.container_dir(&id);
        std::fs::create_dir_all(&cdir).unwrap();
        let config: vessel_api::types::ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": id, "name": "svc", "image": "i", "image_id": "sha256:x",
            "created_ms": 0, "process": {"args": ["true"], "env": [], "cwd": "/", "user": "0:0"},
            "hostname": "h", "cpus": 1, "memory_mib": 256, "auto_remove": false,
            "rootfs_base": "/r", "kernel": "/k", "initrd": "/i", "accel": "tcg",
            "network": "none", "restart": policy_json(policy)
        }))
        .unwrap();
        write_json_atomic(&cdir.join("config.json"), &config).unwrap();
        let mut state = ContainerState::created();
        state.status = Status::Exited;
        state.started_ms = Some(1_000);
        state.finished_ms = Some(1_500);
        state.exit_code = Some(exit_code);
        write_json_atomic(&cdir.join("state.json"), &state).unwrap();
        (dir, containers, id)
    }

    /// Not a policy's, but this module has the container without a VM: the
    /// run directory a killed runtime helper left (found by the
    /// fault-injection suite) goes when the end is recorded, and only for
    /// the run that ended.
    #[test]
    fn a_killed_runtime_s_run_directory_goes_with_the_recorded_end() {
        let (_dir, c, id) = ended_container("no", 255);
        let run_dir = c.home.run_dir(&id);
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("control.sock"), b"").unwrap();
        let mut info = c.load(&id).unwrap();
        // A helper that is gone (no such pid).
        info.state.runtime_pid = Some(i32::MAX - 7);
        c.note_exit(&info);
        assert!(!run_dir.exists(), "the run directory stays");
        let _ = std::fs::remove_dir_all(c.home.run_base());

        // A new run has begun since (its helper made the directory): kept.
        let (_dir, c, id) = ended_container("no", 255);
        let run_dir = c.home.run_dir(&id);
        std::fs::create_dir_all(&run_dir).unwrap();
        let old = c.load(&id).unwrap();
        let mut now = old.state.clone();
        now.status = Status::Running;
        now.started_ms = Some(2_000);
        now.finished_ms = None;
        write_json_atomic(&c.home.container_dir(&id).join("state.json"), &now).unwrap();
        c.note_exit(&old);
        assert!(run_dir.exists(), "the new run's directory was removed");
        let _ = std::fs::remove_dir_all(c.home.run_base());
    }

    /// Not a policy's either: what an apiserver killed while it created or
    /// removed containers left is finished by the next one, and is never
    /// listed meanwhile (found by the fault-injection suite).
    #[test]
    fn a_killed_apiserver_s_half_made_and_half_removed_containers_go() {
        let (_dir, c, id) = ended_container("no", 0);
        let base = c.home.containers_dir();
        let other = "d00d".repeat(16);
        let staged = base.join(format!(".new-{other}"));
        let removing = base.join(format!(".gone-{other}"));
        let bare = base.join("e".repeat(64));
        for d in [&staged, &removing, &bare] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("state.json"), b"{}").unwrap();
        }
        // A staged directory is whole but not yet a container.
        std::fs::copy(
            c.home.container_dir(&id).join("config.json"),
            staged.join("config.json"),
        )
        .unwrap();
        let ids = |c: &Containers| {
            c.list()
                .into_iter()
                .map(|i| i.config.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&c), vec![id.clone()]);
        assert!(c.find(&format!(".new-{other}")).is_err());
        c.sweep_unfinished();
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec![id.clone()],
            "the sweep left the wrong directories"
        );
        // A removal goes through the rename: nothing of it stays.
        c.remove_files(&id).unwrap();
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0);
    }

    fn policy_json(s: &str) -> serde_json::Value {
        serde_json::to_value(policy(s)).unwrap()
    }

    fn due(c: &Containers, id: &str) -> Option<u64> {
        c.restarts.timers.lock().unwrap().get(id).copied()
    }

    #[test]
    fn an_end_is_decided_once_and_shows_as_restarting() {
        let (_dir, c, id) = ended_container("on-failure:3", 1);
        let info = c.load(&id).unwrap();
        assert!(!info.state.restarting);
        c.policy_on_end(&info);
        let info = c.load(&id).unwrap();
        assert!(info.state.restarting, "{:?}", info.state);
        assert_eq!(info.state.restart_count, 1);
        assert!(due(&c, &id).is_some(), "a timer is set");
        // The same end again (another look of the bookkeeper): no second
        // decision.
        c.policy_on_end(&info);
        assert_eq!(c.load(&id).unwrap().state.restart_count, 1);
        // A user's stop calls it off; their start counts from 0.
        c.note_manual_stop(&id);
        let info = c.load(&id).unwrap();
        assert!(!info.state.restarting);
        assert_eq!(due(&c, &id), None);
        assert!(c.restart_record(&id).manually_stopped);
        c.note_manual_start(&id);
        // The back-off starts over too (Docker's new restart manager).
        let expected = RestartRecord {
            decided_run: Some(1_000),
            ..Default::default()
        };
        assert_eq!(c.restart_record(&id), expected);
    }

    #[test]
    fn the_apiserver_s_start_makes_what_is_owed() {
        // A pending restart the last apiserver did not make.
        let (_dir, c, id) = ended_container("on-failure", 1);
        c.policy_on_end(&c.load(&id).unwrap());
        c.cancel_restart_timer(&id);
        c.restarts_at_startup(StartKind::Fresh);
        assert!(due(&c, &id).is_some());
        assert_eq!(
            c.restart_record(&id).count,
            1,
            "a pending restart keeps its count"
        );

        // `always`, stopped by a user: started again, counting from 0.
        let (_dir, c, id) = ended_container("always", 137);
        c.note_manual_stop(&id);
        c.policy_on_end(&c.load(&id).unwrap());
        assert_eq!(due(&c, &id), None);
        c.restarts_at_startup(StartKind::Fresh);
        assert!(due(&c, &id).is_some());
        let rec = c.restart_record(&id);
        assert_eq!((rec.count, rec.manually_stopped), (0, false));
        assert!(c.load(&id).unwrap().state.restarting);

        // The same after a crash of the last apiserver: it stays stopped.
        let (_dir, c, id) = ended_container("always", 137);
        c.note_manual_stop(&id);
        c.policy_on_end(&c.load(&id).unwrap());
        c.restarts_at_startup(StartKind::AfterCrash);
        assert_eq!(due(&c, &id), None);
        assert!(c.restart_record(&id).manually_stopped);
        assert!(!c.load(&id).unwrap().state.restarting);

        // `unless-stopped`, stopped by a user: stays.
        let (_dir, c, id) = ended_container("unless-stopped", 137);
        c.note_manual_stop(&id);
        c.restarts_at_startup(StartKind::Fresh);
        assert_eq!(due(&c, &id), None);
        assert!(!c.load(&id).unwrap().state.restarting);

        // `on-failure` that succeeded: stays.
        let (_dir, c, id) = ended_container("on-failure", 0);
        c.policy_on_end(&c.load(&id).unwrap());
        c.restarts_at_startup(StartKind::Fresh);
        assert_eq!(due(&c, &id), None);

        // `system stop`: nothing restarts, `always` comes back next time.
        let (_dir, c, id) = ended_container("always", 143);
        c.stop_restarts();
        c.policy_on_end(&c.load(&id).unwrap());
        assert_eq!(due(&c, &id), None);
        assert!(!c.restart_record(&id).manually_stopped);
    }

    #[test]
    fn update_changes_the_policy_from_the_next_end_on() {
        let (_dir, c, id) = ended_container("no", 1);
        let info = c
            .update(
                "svc",
                &ContainerUpdate {
                    restart: Some(policy("always")),
                },
            )
            .unwrap();
        assert_eq!(info.config.restart, policy("always"));
        // The end already seen was decided under `no`.
        c.policy_on_end(&c.load(&id).unwrap());
        assert_eq!(due(&c, &id), None);
        // A bad policy over the API.
        let bad = RestartPolicy {
            name: RestartPolicyName::UnlessStopped,
            maximum_retry_count: 1,
        };
        assert!(c
            .update("svc", &ContainerUpdate { restart: Some(bad) })
            .is_err());
        assert_eq!(c.load(&id).unwrap().config.restart, policy("always"));
        // `no` calls a pending restart off.
        let (_dir, c, id) = ended_container("always", 1);
        c.policy_on_end(&c.load(&id).unwrap());
        assert!(due(&c, &id).is_some());
        c.update(
            "svc",
            &ContainerUpdate {
                restart: Some(RestartPolicy::NO),
            },
        )
        .unwrap();
        assert_eq!(due(&c, &id), None);
        assert!(!c.load(&id).unwrap().state.restarting);
    }

    #[test]
    fn the_record_reads_back_and_old_files_read_as_empty() {
        let rec = RestartRecord {
            count: 2,
            manually_stopped: true,
            decided_run: Some(7),
            backoff_ms: 400,
            pending: Some(Pending { run: 7, due_ms: 9 }),
        };
        let back: RestartRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        let empty: RestartRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RestartRecord::default());
    }
}
