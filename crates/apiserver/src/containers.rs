//! The apiserver's view of containers: creation, the runtime helpers that own
//! them, and state reconciled from the files each runtime helper writes.

use crate::accel::Accel;
use crate::api::call::Gone;
use crate::error::{helper_answer, helper_failed, ApiError, ApiResult};
use crate::events::Events;
use crate::helpers::Helper;
use crate::volumes::{Users, Volumes};
use crate::watch::{Changes, Watcher, SAFETY_NET};
use anyhow::Context;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::watch;
use vessel_api::control::{ControlAnswer, ControlRequest};
use vessel_api::error::ErrorKind;
use vessel_api::fsutil::{pid_alive, pid_start_time, random_hex, read_json, write_json_atomic};
use vessel_api::health::HealthStatus;
use vessel_api::http::{percent_encode, Client};
use vessel_api::network::{
    Attachment, ConnectRequest, ContainerNetworks, DisconnectRequest, NetworkInfo, ReconcileReport,
    ReconcileRequest, DEFAULT_NETWORK, NO_NETWORK,
};
use vessel_api::paths::{sibling_binary, Home};
use vessel_api::types::{
    now_ms, valid_container_name, AttachStreams, ContainerConfig, ContainerInfo, ContainerState,
    CreateRequest, EventAction, ImageRuntimeConfig, ResolvedImage, Status, WaitResponse,
};
use vessel_api::ProcessSpec;

/// Default resources of a container VM.
pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Smallest memory a guest boots with.
pub const MIN_MEMORY_MIB: u64 = 64;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `rm` waits for the runtime helper of an exited container to go.
const RUNTIME_EXIT_LIMIT: Duration = Duration::from_secs(10);

/// The pid of the runtime helper `state` names, while that very process runs
/// (a pid reused by another process does not count).
fn live_runtime(state: &ContainerState) -> Option<i32> {
    let pid = state.runtime_pid?;
    let same = pid_alive(pid)
        && (state.runtime_start_time.is_none() || pid_start_time(pid) == state.runtime_start_time);
    same.then_some(pid)
}

/// The name prefix of a container directory being made (renamed to the
/// container's ID once whole).
const STAGED: &str = ".new-";
/// The name prefix of a container directory being removed.
const REMOVING: &str = ".gone-";

/// `remove_dir_all` of a directory another thread or process may still
/// write a file into (a state written atomically: a temporary file, then
/// a rename): when it finds the directory not empty at its end, it tries
/// again, a few times.
fn remove_dir_racing(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Ask the runtime helper `state` names to end now and wait up to `limit`
/// for it to go; the pid of a helper still there after `limit`.
///
/// A container's exit is recorded as soon as its process ends, while its VM
/// still powers off; until the helper has reaped the VMM, the VMM holds the
/// container's files open, and a deleted file keeps its space until its
/// last close: an overlay that filled the disk would keep it full after
/// `rm`. SIGTERM is a stop, which after the exit kills the VM at once.
fn end_runtime(state: &ContainerState, limit: Duration) -> Option<i32> {
    let pid = live_runtime(state)?;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if crate::watch::wait_exit(pid, state.runtime_start_time, limit) {
        return None;
    }
    live_runtime(state)
}

/// What tells one run of a container from another: when it started.
fn run_key(state: &ContainerState) -> u64 {
    state.started_ms.or(state.finished_ms).unwrap_or(0)
}

/// A container's run and health status, for [`health_change`].
fn health_key(state: &ContainerState) -> (u64, Option<HealthStatus>) {
    (run_key(state), state.health.as_ref().map(|h| h.status))
}

/// The status to tell after `before` (nothing seen yet: `None`) and
/// `now`: a new `healthy` or `unhealthy`, in a run or at the first sight
/// of one.
fn health_change(
    before: Option<(u64, Option<HealthStatus>)>,
    now: (u64, Option<HealthStatus>),
) -> Option<HealthStatus> {
    let status = now.1?;
    if status == HealthStatus::Starting || before == Some(now) {
        return None;
    }
    Some(status)
}

/// This host's memory in MiB (`MemTotal`), if it can be read.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Check `--memory` against the smallest guest and this host's memory.
pub fn check_memory(memory_mib: u64, host_mib: Option<u64>) -> Result<(), String> {
    if memory_mib < MIN_MEMORY_MIB {
        return Err(format!(
            "invalid --memory: a container VM needs at least {MIN_MEMORY_MIB} MiB"
        ));
    }
    if let Some(host) = host_mib {
        if memory_mib > host {
            return Err(format!(
                "invalid --memory: {memory_mib} MiB is more than this host has ({host} MiB); give at most {host} MiB"
            ));
        }
    }
    Ok(())
}

/// A start failure that points at a console log the VM never wrote (the
/// VMM failed before the guest ran, e.g. QEMU's "Cannot allocate memory"):
/// the error with the VMM's own last words from `vmm.log` instead.
fn explain_start_failure(dir: &std::path::Path, error: &str) -> Option<String> {
    let boot = dir.join("boot.log");
    if !error.contains(&*boot.to_string_lossy()) {
        return None;
    }
    if fs::metadata(&boot).is_ok_and(|m| m.len() > 0) {
        return None;
    }
    let vmm = dir.join("vmm.log");
    let text = fs::read_to_string(&vmm).ok()?;
    let last: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(3)
        .map(|l| l.chars().take(300).collect())
        .collect();
    if last.is_empty() {
        return None;
    }
    let said: Vec<String> = last.into_iter().rev().collect();
    let head = error.split_once("; see ").map(|(h, _)| h).unwrap_or(error);
    Some(format!(
        "{head}; the VMM said: {} (see {})",
        said.join(" / "),
        vmm.display()
    ))
}

/// Can `s` be a host name or a DNS alias (RFC 1123 labels)?
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `--network` as given, made canonical: absent or Docker's `bridge` is the
/// default network.
pub fn network_name(requested: Option<&str>) -> String {
    match requested.map(str::trim) {
        None | Some("") | Some("bridge") => DEFAULT_NETWORK.to_string(),
        Some(n) => n.to_string(),
    }
}

mod execs;
mod lifecycle;
mod maintenance;
mod mounts;
mod restart;

pub use execs::Execs;
pub use maintenance::{CopyStream, Gates};
pub use restart::StartKind;

/// All containers of one instance.
pub struct Containers {
    home: Home,
    create_lock: Mutex<()>,
    attached: Mutex<HashMap<String, usize>>,
    network: Arc<Helper>,
    /// Held for reading from a container's connect until its `network.json`
    /// is written, for writing while reconciling, so a reconcile never
    /// drops an attachment it has not seen yet.
    net_lock: RwLock<()>,
    /// A release the network helper did not take (it was restarting, or
    /// died mid-answer): a reconcile is owed as soon as it answers
    /// ([`Self::start_bookkeeping`]), not only at its next restart.
    network_owed: AtomicBool,
    /// Not root: no vessel-network; each VM gets a passt network
    /// ([`crate::rootless`]).
    rootless: bool,
    /// Where waits happen (from blocking threads).
    rt: Handle,
    events: Arc<Events>,
    changes: Arc<Changes>,
    watcher: OnceLock<Arc<Watcher>>,
    /// Per container, the start time (ms) of the run whose end has been
    /// recorded (`die` sent, network given back), so it is done once.
    ended: Mutex<HashMap<String, u64>>,
    /// Per container, the run (as in `ended`) and health status last seen,
    /// so each change of health is told once (`health_status`).
    health_seen: Mutex<HashMap<String, (u64, Option<HealthStatus>)>>,
    reap_lock: Mutex<()>,
    /// The exec'd processes this apiserver started.
    execs: Execs,
    /// Copies of stopped containers against starts and removals
    /// ([`maintenance`]).
    gates: Arc<Gates>,
    /// Held while a maintenance helper is looked for or started.
    maintenance_spawn: Mutex<()>,
    /// Named and anonymous volumes.
    volumes: Arc<Volumes>,
    /// Restart policies' timers and bookkeeping ([`restart`]).
    restarts: restart::Restarts,
}

/// Holds a container's `--rm` removal back while a client is attached.
pub struct AttachGuard {
    containers: Arc<Containers>,
    id: String,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        let mut last = false;
        if let Ok(mut m) = self.containers.attached.lock() {
            if let Some(n) = m.get_mut(&self.id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.id);
                    last = true;
                }
            }
        }
        // A `--rm` container held back by this client goes now.
        if last {
            self.containers.recheck(&self.id);
        }
    }
}

/// Merge the image's configuration with the user's flags, as Docker does:
/// `--entrypoint` replaces the image's entrypoint and drops its CMD; words
/// after IMAGE replace CMD; `-e` overrides image variables by name.
pub fn build_process(
    req: &CreateRequest,
    image: &ImageRuntimeConfig,
    hostname: &str,
) -> Result<ProcessSpec, String> {
    let (entrypoint, image_cmd): (Vec<String>, Vec<String>) = match &req.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let cmd = if req.cmd.is_empty() {
        image_cmd
    } else {
        req.cmd.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err("no command specified: the image has no CMD or ENTRYPOINT; give one after the image name".into());
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        env.retain(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) != key);
        env.push(kv.to_string());
    };
    set(DEFAULT_PATH);
    set(&format!("HOSTNAME={hostname}"));
    for kv in &image.env {
        set(kv);
    }
    for kv in &req.env {
        if !kv.contains('=') {
            return Err(format!(
                "invalid environment variable {kv:?}: expected KEY=VALUE"
            ));
        }
        if kv.starts_with('=') {
            return Err(format!("invalid environment variable {kv:?}: empty name"));
        }
        set(kv);
    }
    let cwd = req
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| {
            if image.working_dir.is_empty() {
                "/".into()
            } else {
                image.working_dir.clone()
            }
        });
    if !cwd.starts_with('/') {
        return Err(format!(
            "the working directory {cwd:?} is invalid: it must be an absolute path"
        ));
    }
    let user = req.user.clone().unwrap_or_else(|| image.user.clone());
    let rlimits = vessel_api::ulimit::effective_rlimits(&req.ulimits)?;
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        user,
        rlimits,
        terminal: req.tty,
        stdin: req.stdin,
        root: None,
        binds: Vec::new(),
        memory_max: None,
        cpu_max: None,
        cpu_weight: None,
        own_pids: false,
    })
}

impl Containers {
    pub fn new(home: Home, network: Arc<Helper>, rt: Handle) -> Arc<Self> {
        let events = Arc::new(Events::new(&home.root().join("events.log")));
        let volumes = Arc::new(Volumes::new(home.clone(), events.clone()));
        Arc::new(Self {
            volumes,
            home,
            create_lock: Mutex::new(()),
            attached: Mutex::new(HashMap::new()),
            network,
            net_lock: RwLock::new(()),
            network_owed: AtomicBool::new(false),
            rootless: crate::rootless::is_rootless(),
            rt,
            events,
            changes: Changes::new(),
            watcher: OnceLock::new(),
            ended: Mutex::new(HashMap::new()),
            health_seen: Mutex::new(HashMap::new()),
            reap_lock: Mutex::new(()),
            execs: Execs::default(),
            gates: Arc::default(),
            maintenance_spawn: Mutex::new(()),
            restarts: restart::Restarts::default(),
        })
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The volume store.
    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// Which containers use which volume, from their configurations.
    pub fn volume_users(&self) -> Users {
        let mut users = Users::default();
        for info in self.list() {
            for m in &info.config.mounts {
                if m.kind != vessel_api::mounts::MountType::Volume {
                    continue;
                }
                let id = &info.config.id;
                users.names.insert(id.clone(), info.config.name.clone());
                users
                    .all
                    .entry(m.source.clone())
                    .or_default()
                    .push(id.clone());
                if info.state.status.is_active() {
                    users
                        .running
                        .entry(m.source.clone())
                        .or_default()
                        .push(id.clone());
                }
            }
        }
        users
    }

    /// Remove the anonymous volumes of a removed container (those that no
    /// other container uses).
    fn remove_anonymous_volumes(&self, config: &ContainerConfig) {
        let anonymous: Vec<&str> = config
            .mounts
            .iter()
            .filter(|m| m.kind == vessel_api::mounts::MountType::Volume && m.anonymous)
            .map(|m| m.source.as_str())
            .collect();
        if anonymous.is_empty() {
            return;
        }
        let Ok(g) = self.volumes.lock() else {
            return;
        };
        let users = self.volume_users();
        for name in anonymous {
            if let Err(e) = self.volumes.remove_locked(&g, name, true, &users) {
                eprintln!("vessel-apiserver: keeping the anonymous volume {name}: {e}");
            }
        }
    }

    /// The change counters.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// The runtime waits run on.
    pub fn rt(&self) -> &Handle {
        &self.rt
    }

    /// Start the bookkeeping: a watcher of `containers/` and of the
    /// runtime helpers, and the thread that acts on what it sees. The runs
    /// that ended before are taken as recorded (no `die` for them now).
    pub fn start_bookkeeping(self: &Arc<Self>, start: restart::StartKind) -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let watcher = Watcher::start(
            &self.home.containers_dir(),
            self.changes.clone(),
            tx,
            self.rt.clone(),
        )
        .context("watching the containers directory")?;
        let _ = self.watcher.set(watcher);
        let list = self.list();
        if let Ok(mut ended) = self.ended.lock() {
            for info in &list {
                if info.state.status == Status::Exited {
                    ended.insert(info.config.id.clone(), run_key(&info.state));
                }
            }
        }
        // Health seen before this apiserver started is not told again.
        if let Ok(mut seen) = self.health_seen.lock() {
            for info in &list {
                seen.insert(info.config.id.clone(), health_key(&info.state));
            }
        }
        self.start_restarter()?;
        if !self.rootless {
            let me = self.clone();
            std::thread::Builder::new()
                .name("network-owed".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(1));
                    if me.network_owed.load(Ordering::SeqCst) {
                        if let Some(client) = me.network.try_client() {
                            me.reconcile_network(&client);
                        }
                    }
                })?;
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("bookkeeper".into())
            .spawn(move || {
                for info in me.list() {
                    me.check(&info.config.id);
                }
                // What restart policies owe since the last apiserver.
                me.restarts_at_startup(start);
                while let Ok(id) = rx.recv() {
                    me.check(&id);
                }
            })?;
        Ok(())
    }

    /// Act on what container `id` is now: watch its runtime helper while it
    /// runs; once it has ended, record that once (`die`, its network given
    /// back) and remove it if it was `--rm` and nobody is attached.
    pub fn check(&self, id: &str) {
        let Ok(info) = self.load(id) else {
            return;
        };
        if let (Some(pid), Some(w)) = (live_runtime(&info.state), self.watcher.get()) {
            w.watch_pid(id, pid, info.state.runtime_start_time);
        }
        self.note_health(&info);
        if info.state.status.is_active() {
            return;
        }
        if info.state.status == Status::Exited {
            self.note_exit(&info);
            self.policy_on_end(&info);
            if info.config.auto_remove {
                self.reap_auto_remove_one(&info, Duration::ZERO);
            }
        }
    }

    /// Tell a change of the container's health once: `health_status`
    /// with `healthy` or `unhealthy` (Docker tells no `starting`).
    fn note_health(&self, info: &ContainerInfo) {
        let now = health_key(&info.state);
        let before = self
            .health_seen
            .lock()
            .ok()
            .and_then(|mut m| m.insert(info.config.id.clone(), now));
        if let Some(status) = health_change(before, now) {
            self.events.emit(
                EventAction::HealthStatus,
                &info.config,
                &[("health_status", status.as_str().to_string())],
            );
        }
    }

    /// Record the end of a run once: `die` and the network given back.
    pub fn note_exit(&self, info: &ContainerInfo) {
        let key = run_key(&info.state);
        let first = self
            .ended
            .lock()
            .map(|mut e| e.insert(info.config.id.clone(), key) != Some(key))
            .unwrap_or(false);
        if first {
            let code = info.state.exit_code.unwrap_or(255);
            self.events.emit(
                EventAction::Die,
                &info.config,
                &[("exit_code", code.to_string())],
            );
        }
        if !info.networks.is_empty() {
            self.release_network(&info.config.id, true);
        }
        if first {
            self.remove_orphaned_run_dir(info);
        }
    }

    /// A runtime helper removes its run directory (the VM's sockets) when
    /// it ends; one that was killed leaves it. Removed here once the end
    /// is recorded, if the helper is gone and no new run has begun since
    /// (a new one makes the directory afresh).
    fn remove_orphaned_run_dir(&self, info: &ContainerInfo) {
        let id = &info.config.id;
        if live_runtime(&info.state).is_some() {
            return;
        }
        let dir = self.home.run_dir(id);
        if !dir.exists() {
            return;
        }
        let now: Option<ContainerState> = read_json(&self.state_path(id)).ok().flatten();
        let same_run = now.is_some_and(|s| {
            !s.status.is_active()
                && run_key(&s) == run_key(&info.state)
                && live_runtime(&s).is_none()
        });
        if same_run {
            eprintln!(
                "vessel-apiserver: removing the run directory of {} (its runtime helper was killed)",
                &id[..12.min(id.len())]
            );
            let _ = fs::remove_dir_all(dir);
        }
    }

    /// Wait until the state counter moves past what `rx` has seen, the
    /// client goes, or `deadline`; false if the client has gone.
    fn wait_change(
        &self,
        rx: &mut watch::Receiver<u64>,
        gone: Option<&Gone>,
        deadline: Instant,
    ) -> bool {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(SAFETY_NET);
        self.rt.block_on(async {
            let change = tokio::time::timeout(left, rx.changed());
            match gone {
                Some(g) => tokio::select! {
                    _ = g.wait() => false,
                    _ = change => true,
                },
                None => {
                    let _ = change.await;
                    true
                }
            }
        })
    }

    /// Rootless mode: user-mode networks (passt), no vessel-network.
    pub fn rootless(&self) -> bool {
        self.rootless
    }

    /// The network helper.
    pub fn network(&self) -> &Arc<Helper> {
        &self.network
    }

    /// A client for vessel-network, or why networking is unavailable.
    pub fn network_client(&self) -> ApiResult<Client> {
        if self.rootless {
            return Err(ApiError::unavailable(
                crate::rootless::networks_unavailable(),
            ));
        }
        match self.network.client() {
            Ok(c) => Ok(c.with_timeout(Duration::from_secs(60))),
            Err(e) => Err(ApiError::unavailable(format!(
                "networking is unavailable: {e:#}; run the container with `--network none` to start it without a network"
            ))),
        }
    }

    /// Join the container to its network: the connect call, then
    /// `network.json` for the runtime helper. Nothing is left behind on
    /// failure.
    fn connect(&self, config: &ContainerConfig) -> ApiResult<Vec<Attachment>> {
        if self.rootless {
            return self.connect_user_mode(config);
        }
        let client = self.network_client()?;
        let _g = self
            .net_lock
            .read()
            .map_err(|_| anyhow::anyhow!("network lock poisoned"))?;
        let body = ConnectRequest {
            container_id: config.id.clone(),
            name: config.name.clone(),
            hostname: config.hostname.clone(),
            aliases: config.aliases.clone(),
            ports: config.ports.clone(),
        };
        let path = format!("/networks/{}/connect", percent_encode(&config.network));
        let resp = client
            .request_json("POST", &path, &body)
            .map_err(helper_failed("vessel-network"))?;
        let att: Attachment = helper_answer("vessel-network", resp)
            .map_err(|e| e.naming(ErrorKind::NetworkNotFound, &config.network))?;
        let nets = ContainerNetworks {
            attachments: vec![att],
        };
        if let Err(e) = nets.write(&self.home.container_dir(&config.id)) {
            let _ = self.disconnect(&client, &config.id);
            return Err(ApiError::Internal(
                anyhow::Error::new(e).context("writing network.json"),
            ));
        }
        Ok(nets.attachments)
    }

    /// Rootless mode: a user-mode attachment whose published ports have
    /// free host ports; the runtime helper starts passt with it.
    fn connect_user_mode(&self, config: &ContainerConfig) -> ApiResult<Vec<Attachment>> {
        let ports = crate::rootless::resolve_ports(&config.ports).map_err(ApiError::conflict)?;
        let nets = ContainerNetworks {
            attachments: vec![crate::rootless::attachment(&config.network, ports)],
        };
        nets.write(&self.home.container_dir(&config.id))
            .map_err(|e| {
                ApiError::Internal(anyhow::Error::new(e).context("writing network.json"))
            })?;
        Ok(nets.attachments)
    }

    fn disconnect(&self, client: &Client, id: &str) -> anyhow::Result<()> {
        let resp = client
            .request_json(
                "POST",
                "/disconnect",
                &DisconnectRequest {
                    container_id: id.to_string(),
                },
            )
            .map_err(|e| anyhow::Error::new(e).context("talking to vessel-network"))?;
        let _: serde_json::Value = helper_answer("vessel-network", resp)?;
        Ok(())
    }

    /// Give back what the container holds on its networks (TAP, lease,
    /// published ports, DNS names) once it has ended. `wait`: wait for the
    /// network helper if it is restarting; otherwise skip when it is not
    /// ready (the next reconcile cleans). True when nothing is held anymore.
    pub fn release_network(&self, id: &str, wait: bool) -> bool {
        let path = ContainerNetworks::path(&self.home.container_dir(id));
        if !path.exists() {
            return true;
        }
        if self.rootless {
            // passt holds the published ports until the runtime helper,
            // just after the VM ended, kills it and exits itself: wait for
            // that, so the ports are closed when `stop` returns.
            if wait {
                self.wait_runtime_gone(id, Duration::from_secs(10));
            }
            let _ = fs::remove_file(&path);
            return true;
        }
        let client = if wait {
            self.network.client().ok()
        } else {
            self.network.try_client()
        };
        let Some(client) = client else {
            self.network_owed.store(true, Ordering::SeqCst);
            return false;
        };
        match self.disconnect(&client.with_timeout(Duration::from_secs(30)), id) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                true
            }
            Err(e) => {
                eprintln!("vessel-apiserver: releasing the network of {id}: {e:#}");
                self.network_owed.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// A container being removed whose start asked for a network but never
    /// recorded the answer (`network.json`): vessel-network may have
    /// leased it an address before it died mid-answer, and a reconcile made
    /// while the container still counted as live kept that lease. Ask the
    /// helper to drop whatever it holds for the container; a helper that
    /// does not answer now drops it at its next reconcile.
    fn release_unrecorded_network(&self, id: &str) {
        let dir = self.home.container_dir(id);
        if self.rootless || ContainerNetworks::path(&dir).exists() {
            return;
        }
        let wants_network = read_json::<ContainerConfig>(&dir.join("config.json"))
            .ok()
            .flatten()
            .is_some_and(|c| c.network != "none");
        if !wants_network {
            return;
        }
        let released = self.network.try_client().map(|client| {
            self.disconnect(&client.with_timeout(Duration::from_secs(10)), id)
                .map_err(|e| eprintln!("vessel-apiserver: releasing the network of {id}: {e:#}"))
        });
        if !matches!(released, Some(Ok(()))) {
            self.network_owed.store(true, Ordering::SeqCst);
        }
    }

    /// Wait (at most `limit`) until the runtime helper of `id` has exited.
    fn wait_runtime_gone(&self, id: &str, limit: Duration) {
        let Ok(Some(state)) = read_json::<ContainerState>(&self.state_path(id)) else {
            return;
        };
        if let Some(pid) = live_runtime(&state) {
            crate::watch::wait_exit(pid, state.runtime_start_time, limit);
        }
    }

    /// Release the networks of every container that has ended (its VM
    /// exited, was killed, or was found dead).
    pub fn release_ended_networks(&self, list: &[ContainerInfo]) {
        for info in list {
            if info.state.status == Status::Exited && !info.networks.is_empty() {
                self.release_network(&info.config.id, false);
            }
        }
    }

    /// After vessel-network (re)starts: drop every attachment of a
    /// container that is not alive, and TAPs nobody claims.
    pub fn reconcile_network(&self, client: &Client) {
        let Ok(_g) = self.net_lock.write() else {
            return;
        };
        // Whatever is released from here on is seen by this reconcile.
        self.network_owed.store(false, Ordering::SeqCst);
        let live: Vec<String> = self
            .list()
            .into_iter()
            .filter(|i| i.state.status != Status::Exited)
            .map(|i| i.config.id)
            .collect();
        let res = client
            .request_json("POST", "/reconcile", &ReconcileRequest { live })
            .map_err(helper_failed("vessel-network"))
            .and_then(|r| helper_answer::<ReconcileReport>("vessel-network", r));
        match res {
            Ok(r) => {
                for x in r.removed.iter().chain(&r.removed_devices) {
                    eprintln!("vessel-apiserver: network reconcile removed {x}");
                }
            }
            Err(e) => {
                eprintln!("vessel-apiserver: network reconcile failed: {e:#}");
                self.network_owed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The networks, if vessel-network answers now.
    pub fn networks(&self) -> Option<Vec<NetworkInfo>> {
        let client = self
            .network
            .try_client()?
            .with_timeout(Duration::from_secs(5));
        let resp = client.request("GET", "/networks", None).ok()?;
        helper_answer("vessel-network", resp).ok()
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.home.container_dir(id).join("state.json")
    }

    /// Finish what an apiserver that died left half done in the containers
    /// directory: a container it was creating (staged, never listed) is
    /// dropped, one it was removing is removed, with its run directories
    /// and cgroups (the network helper's reconcile gives its leases back).
    /// A directory without `config.json` is no container either. Runs
    /// before anything else reads the directory.
    pub fn sweep_unfinished(&self) {
        let Ok(rd) = fs::read_dir(self.home.containers_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(STAGED)
                .or_else(|| name.strip_prefix(REMOVING))
                .unwrap_or(&name);
            let unfinished = id.len() != name.len() || !e.path().join("config.json").exists();
            if !unfinished || id.is_empty() || id.contains('/') {
                continue;
            }
            eprintln!(
                "vessel-apiserver: removing {} (a container an earlier apiserver did not finish creating or removing)",
                e.path().display()
            );
            if id.len() == name.len() || name.starts_with(REMOVING) {
                let _ = fs::remove_dir_all(self.home.run_dir(id));
                let _ = fs::remove_dir_all(self.home.maintenance_run_dir(id));
                vessel_api::confine::remove_cgroups(id);
            }
            if let Err(err) = remove_dir_racing(&e.path()) {
                eprintln!(
                    "vessel-apiserver: cannot remove {}: {err}",
                    e.path().display()
                );
            }
        }
    }

    /// Load one container by its full ID, reconciling a state whose runtime
    /// helper has died.
    pub fn load(&self, id: &str) -> ApiResult<ContainerInfo> {
        if id.starts_with('.') {
            return Err(ApiError::container_not_found(id));
        }
        let dir = self.home.container_dir(id);
        let config: ContainerConfig = read_json(&dir.join("config.json"))?
            .ok_or_else(|| ApiError::container_not_found(id))?;
        let mut state: ContainerState =
            read_json(&dir.join("state.json"))?.unwrap_or_else(ContainerState::created);
        if state.status.is_active() {
            if let Some(pid) = state.runtime_pid {
                if live_runtime(&state).is_none() {
                    // Re-read: the helper may have finished between the two reads.
                    let fresh: Option<ContainerState> = read_json(&dir.join("state.json"))?;
                    match fresh {
                        Some(s) if !s.status.is_active() => state = s,
                        _ => {
                            state.status = Status::Exited;
                            state.exit_code = Some(state.exit_code.unwrap_or(255));
                            state.finished_ms = Some(now_ms());
                            state.error = Some(format!(
                                "the runtime helper (pid {pid}) is gone; see {}",
                                dir.join("runtime.log").display()
                            ));
                            write_json_atomic(&dir.join("state.json"), &state)?;
                            // Its VM died with it (parent-death signal);
                            // the VM's cgroup stayed.
                            vessel_api::confine::remove_cgroups(id);
                        }
                    }
                }
            }
        }
        if state.status == Status::Exited {
            if let Some(e) = state
                .error
                .as_deref()
                .and_then(|e| explain_start_failure(&dir, e))
            {
                state.error = Some(e);
            }
        }
        self.restart_view(id, &mut state);
        let networks = ContainerNetworks::read(&dir)
            .ok()
            .flatten()
            .map(|n| n.attachments)
            .unwrap_or_default();
        Ok(ContainerInfo {
            mounts: vessel_api::mounts::mount_points(&config.mounts),
            config,
            state,
            networks,
        })
    }

    /// Every container, newest first.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.home.containers_dir()) {
            for e in rd.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    if let Ok(info) = self.load(id) {
                        out.push(info);
                    }
                }
            }
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.config.created_ms));
        out
    }

    /// Find a container by full ID, name, or unique ID prefix.
    pub fn find(&self, key: &str) -> ApiResult<ContainerInfo> {
        let key = key.trim();
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(ApiError::container_not_found(key));
        }
        if let Ok(info) = self.load(key) {
            return Ok(info);
        }
        let all = self.list();
        if let Some(info) = all.iter().find(|i| i.config.name == key) {
            return Ok(info.clone());
        }
        let matches: Vec<&ContainerInfo> = all
            .iter()
            .filter(|i| i.config.id.starts_with(key))
            .collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(ApiError::container_not_found(key)),
            _ => Err(ApiError::invalid(format!(
                "{key} matches more than one container; give more of its ID"
            ))),
        }
    }

    /// Create a container (not started): its directory, config and state.
    pub fn create(
        &self,
        req: &CreateRequest,
        image: &ResolvedImage,
        accel: &Accel,
    ) -> ApiResult<ContainerConfig> {
        let memory_mib = req.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        check_memory(memory_mib, host_memory_mib()).map_err(ApiError::invalid)?;
        let cpus = req.cpus.unwrap_or(DEFAULT_CPUS);
        if cpus == 0 || cpus > 64 {
            return Err(ApiError::invalid(
                "invalid --cpus: must be between 1 and 64",
            ));
        }
        req.restart.validate().map_err(ApiError::invalid)?;
        if req.auto_remove && !req.restart.is_no() {
            return Err(ApiError::invalid(
                "conflicting options: --restart and --rm (a container removed when it ends cannot be restarted)",
            ));
        }
        let network = network_name(req.network.as_deref());
        if network == NO_NETWORK {
            if !req.ports.is_empty() {
                return Err(ApiError::invalid(
                    "conflicting options: port publishing and --network none",
                ));
            }
            if !req.aliases.is_empty() {
                return Err(ApiError::invalid(
                    "conflicting options: --network-alias and --network none",
                ));
            }
        }
        if let Some(h) = &req.hostname {
            if !valid_hostname(h) {
                return Err(ApiError::invalid(format!(
                    "invalid hostname {h:?}: use letters, digits, '-' and '.' (RFC 1123)"
                )));
            }
        }
        for a in &req.aliases {
            if !valid_hostname(a) {
                return Err(ApiError::invalid(format!(
                    "invalid --network-alias {a:?}: use letters, digits, '-' and '.'"
                )));
            }
        }
        if network != NO_NETWORK && self.rootless {
            crate::rootless::check_create(
                &network,
                &req.aliases,
                &req.ports,
                crate::rootless::unprivileged_port_start(),
            )
            .map_err(ApiError::invalid)?;
            if !crate::rootless::passt_available() {
                return Err(ApiError::unavailable(
                    "networking in rootless mode needs passt (Debian: `apt install passt`, or set VESSEL_PASST); run the container with `--network none` to start it without a network",
                ));
            }
        } else if network != NO_NETWORK {
            // Fail before anything exists when there is no way to join it.
            let client = self.network_client()?;
            if network != DEFAULT_NETWORK {
                let resp = client
                    .request(
                        "GET",
                        &format!("/networks/{}", percent_encode(&network)),
                        None,
                    )
                    .map_err(helper_failed("vessel-network"))?;
                let _: NetworkInfo = helper_answer("vessel-network", resp)
                    .map_err(|e| e.naming(ErrorKind::NetworkNotFound, &network))?;
            }
        }
        vessel_api::mounts::validate(&req.mounts).map_err(|e| ApiError::invalid(e.0))?;
        if let Some(h) = &req.healthcheck {
            h.validate().map_err(ApiError::invalid)?;
        }
        // Held until the configuration is written: no volume it names is
        // removed meanwhile.
        let volumes = self.volumes.lock()?;
        let kernel = crate::assets::kernel();
        let initrd = crate::assets::initrd();
        for (what, p) in [("guest kernel", &kernel), ("guest initramfs", &initrd)] {
            if !p.is_file() {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the {what} is missing at {}; build it with `scripts/setup.sh` or point VESSEL_KERNEL / VESSEL_INITRD at it",
                    p.display()
                )));
            }
        }
        let _guard = self
            .create_lock
            .lock()
            .map_err(|_| anyhow::anyhow!("create lock poisoned"))?;
        let existing = self.list();
        let name = match &req.name {
            Some(n) => {
                if !valid_container_name(n) {
                    return Err(ApiError::invalid(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed"
                    )));
                }
                if let Some(other) = existing.iter().find(|i| &i.config.name == n) {
                    return Err(ApiError::conflict(format!(
                        "the container name {n:?} is already in use by container {}; remove it or choose another name",
                        &other.config.id[..12.min(other.config.id.len())]
                    )));
                }
                n.clone()
            }
            None => loop {
                let n = crate::names::generate();
                if !existing.iter().any(|i| i.config.name == n) {
                    break n;
                }
            },
        };
        let id = random_hex(32);
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        let process = build_process(req, &image.config, &hostname).map_err(ApiError::invalid)?;
        // Last of the checks: it makes volumes, and missing `-v` sources.
        let resolved =
            mounts::resolve(&req.mounts, &image.config.volumes, &self.volumes, &volumes)?;
        let mounts = resolved.mounts;
        let config = ContainerConfig {
            id: id.clone(),
            name,
            image: image.reference.clone(),
            image_id: image.id.clone(),
            created_ms: now_ms(),
            process,
            hostname,
            cpus,
            memory_mib,
            auto_remove: req.auto_remove,
            rootfs_base: image.rootfs.clone(),
            rootfs_dir: None,
            kernel,
            initrd,
            accel: accel.name.clone(),
            network,
            ports: req.ports.clone(),
            aliases: req.aliases.clone(),
            attach: req
                .attach
                .unwrap_or_else(|| AttachStreams::default_for(req.stdin)),
            healthcheck: vessel_api::health::Healthcheck::resolve(
                req.healthcheck.as_ref(),
                image.config.healthcheck.as_ref(),
            ),
            mounts,
            read_only: req.read_only,
            restart: req.restart,
            no_template: req.no_template,
        };
        // Made whole under a staging name, then renamed: a container
        // directory is complete or absent, whenever the apiserver dies.
        let dir = self.home.container_dir(&id);
        let staged = self.home.containers_dir().join(format!("{STAGED}{id}"));
        let written = (|| -> ApiResult<()> {
            fs::create_dir_all(&staged).context("creating the container directory")?;
            write_json_atomic(&staged.join("state.json"), &ContainerState::created())?;
            write_json_atomic(&staged.join("config.json"), &config)?;
            fs::rename(&staged, &dir).context("creating the container directory")?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staged);
            mounts::forget_anonymous(&resolved.anonymous, &self.volumes, &volumes);
            return Err(e);
        }
        drop(volumes);
        self.events.emit(EventAction::Create, &config, &[]);
        Ok(config)
    }

    /// A user's start (`start`, `run`, `restart`): as [`Self::boot`], and
    /// its restart policy counts from 0 again.
    pub fn start(&self, id: &str) -> ApiResult<ContainerInfo> {
        let info = self.load(id)?;
        if self.policy_booting(id) {
            return Err(ApiError::conflict(format!(
                "container {} is being started again by its restart policy; wait for it, or stop it first",
                info.config.name
            )));
        }
        if !info.state.status.is_active() {
            self.note_manual_start(id);
        }
        self.boot(id)
    }

    /// Start a created container: spawn its runtime helper and wait until the
    /// process runs (or has already ended, or failed to start).
    /// A container that has ended boots a fresh VM on the same disk (its
    /// writable layer kept), as Docker starts a stopped container again.
    fn boot(&self, id: &str) -> ApiResult<ContainerInfo> {
        let info = self.load(id)?;
        // Copies of it while it does not run (a maintenance boot on its
        // disk) end first; new ones wait until it runs.
        let _gate = if info.state.status.is_active() {
            None
        } else {
            Some(self.end_maintenance(&info, false)?)
        };
        let info = self.load(id)?;
        match info.state.status {
            Status::Created => {}
            // Its removal is on its way (a restart holds it back).
            Status::Exited if info.config.auto_remove && !self.is_attached(id) => {
                return Err(ApiError::conflict(format!(
                    "container {} was run with --rm and has ended: it is being removed",
                    info.config.name
                )))
            }
            Status::Exited => {
                // The previous boot's runtime may still be powering its VM
                // off with the disk open: a second VMM on that disk would
                // read it before the first has written everything back
                // (a file written just before a `restart` was lost so).
                self.wait_runtime_gone(id, Duration::from_secs(30));
                if let Some(pid) = live_runtime(&info.state) {
                    return Err(ApiError::conflict(format!(
                        "the previous VM of container {} (runtime pid {pid}) is still shutting down; try again",
                        info.config.name
                    )));
                }
                self.prepare_new_boot(&info)?
            }
            other => {
                return Err(ApiError::conflict(format!(
                "container {} is already running ({}); stop it first, or use `vessel restart {}`",
                info.config.name,
                format!("{other:?}").to_lowercase(),
                info.config.name
            )))
            }
        }
        let dir = self.home.container_dir(id);
        mounts::check_exclusive(
            id,
            &info.config.mounts,
            &self.volumes,
            &self.volume_users(),
            &|other| {
                self.load(other)
                    .map(|i| i.config.name)
                    .unwrap_or_else(|_| other.to_string())
            },
        )?;
        if info.config.network != NO_NETWORK {
            self.connect(&info.config)?;
        }
        let spawned = self.spawn_runtime(id);
        if spawned.is_err() {
            self.release_network(id, true);
        }
        let mut child = spawned?;
        let helper_pid = child.id() as i32;
        // Reap the helper whenever it ends (it outlives us if we restart);
        // its end is a change waiters hear of.
        let reaped: Arc<Mutex<Option<std::process::ExitStatus>>> = Arc::default();
        {
            let reaped = reaped.clone();
            let changes = self.changes.clone();
            std::thread::spawn(move || {
                if let Ok(status) = child.wait() {
                    if let Ok(mut r) = reaped.lock() {
                        *r = Some(status);
                    }
                }
                changes.bump_state();
            });
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut changes = self.changes.states();
        loop {
            changes.borrow_and_update();
            let state: Option<ContainerState> = read_json(&self.state_path(id)).unwrap_or(None);
            if let Some(s) = &state {
                if matches!(
                    s.status,
                    Status::Running | Status::Paused | Status::Exited | Status::Stopping
                ) {
                    break;
                }
            }
            let ended = reaped.lock().ok().and_then(|r| *r);
            if let Some(status) = ended {
                let mut s = state.unwrap_or_else(ContainerState::created);
                if s.status != Status::Exited {
                    s.status = Status::Exited;
                    s.exit_code = Some(125);
                    s.finished_ms = Some(now_ms());
                    s.error = Some(format!(
                        "the runtime helper exited ({status}) before the container started; see {}",
                        dir.join("runtime.log").display()
                    ));
                    write_json_atomic(&self.state_path(id), &s)?;
                }
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill has no memory-safety preconditions; the
                // helper is our child, not reaped until its reaper has it.
                unsafe { libc::kill(helper_pid, libc::SIGKILL) };
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the container did not start within 180 s; see {} and {}",
                    dir.join("runtime.log").display(),
                    dir.join("boot.log").display()
                )));
            }
            self.wait_change(&mut changes, None, deadline);
        }
        let info = self.load(id)?;
        self.events.emit(EventAction::Start, &info.config, &[]);
        if info.state.status == Status::Exited {
            self.note_exit(&info);
        }
        Ok(info)
    }

    /// Spawn the container's runtime helper in its own session.
    fn spawn_runtime(&self, id: &str) -> ApiResult<std::process::Child> {
        let dir = self.home.container_dir(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runtime.log"))?;
        let bin = sibling_binary("vessel-runtime");
        let mut cmd = Command::new(&bin);
        cmd.arg("--home")
            .arg(self.home.root())
            .arg("--id")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        Ok(cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?)
    }

    fn control_socket(&self, id: &str) -> PathBuf {
        self.home.run_dir(id).join("control.sock")
    }

    /// One request to the runtime helper's control socket; its answer.
    fn control(
        &self,
        id: &str,
        request: &ControlRequest,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let sock = self.control_socket(id);
        let mut s = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&request.line()?)?;
        let mut resp = String::new();
        BufReader::new(s).read_line(&mut resp)?;
        let v: serde_json::Value =
            serde_json::from_str(&resp).context("reading the runtime helper's answer")?;
        if let Some(e) = ControlAnswer::refusal(&v) {
            anyhow::bail!("{}", e.message);
        }
        Ok(v)
    }

    /// Open a stream to the runtime helper of a running container: send
    /// `request` (one JSON line) to its control socket and read its answer
    /// line; on `{"ok":true}` the connection then carries the stream, and
    /// is returned with the bytes that came after the answer.
    pub fn control_stream(
        &self,
        key: &str,
        request: &ControlRequest,
    ) -> ApiResult<(ContainerInfo, UnixStream, Vec<u8>)> {
        let info = self.find(key)?;
        if !info.state.status.is_active() {
            return Err(ApiError::conflict(format!(
                "container {} is not running; start it with `vessel start {}`",
                info.config.name, info.config.name
            )));
        }
        let sock = self.control_socket(&info.config.id);
        let (s, first) =
            self.open_control_stream(&info, &sock, request, Duration::from_secs(30))?;
        Ok((info, s, first))
    }

    /// Send `request` to the control socket `sock` of a runtime helper of
    /// `info` and read its answer line (waiting up to `limit`); on
    /// `{"ok":true}` the connection then carries the stream, and is
    /// returned with the bytes that came after the answer.
    fn open_control_stream(
        &self,
        info: &ContainerInfo,
        sock: &std::path::Path,
        request: &ControlRequest,
        limit: Duration,
    ) -> ApiResult<(UnixStream, Vec<u8>)> {
        let mut s = UnixStream::connect(sock).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context(format!(
                "connecting to the runtime helper of container {} ({})",
                info.config.name,
                sock.display()
            )))
        })?;
        s.write_all(&request.line().map_err(|e| anyhow::anyhow!(e))?)?;
        // The answer, byte by byte up to its newline: what follows it is
        // the stream's, and stays in the socket for the splice.
        s.set_read_timeout(Some(limit))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            if line.len() > 64 * 1024 {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the runtime helper of container {} answered a line too long",
                    info.config.name
                )));
            }
            match s.read(&mut byte) {
                Ok(0) => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "the runtime helper of container {} closed the connection without an answer; see {}",
                        info.config.name,
                        self.home.container_dir(&info.config.id).join("runtime.log").display()
                    )))
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ApiError::Internal(anyhow::Error::new(e).context(format!(
                        "waiting for the answer of the runtime helper of container {}",
                        info.config.name
                    ))))
                }
            }
        }
        s.set_read_timeout(None)?;
        let v: serde_json::Value = serde_json::from_slice(&line).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context("reading the runtime helper's answer"))
        })?;
        if let Some(refusal) = ControlAnswer::refusal(&v) {
            return Err(ApiError::Answer(refusal));
        }
        Ok((s, Vec::new()))
    }

    /// Send a signal to the container's process.
    pub fn kill(&self, key: &str, signal: i32) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        if info.state.restarting {
            // Docker's: a kill of a restarting container calls its restart off.
            self.note_manual_stop(&info.config.id);
            return self.load(&info.config.id);
        }
        if !info.state.status.is_active() {
            return Err(ApiError::conflict(format!(
                "container {} is not running",
                info.config.name
            )));
        }
        // Docker's: any signal sent through the API counts as a user's
        // stop for the restart policy (before it can end the container).
        self.note_manual_stop(&info.config.id);
        self.control(
            &info.config.id,
            &ControlRequest::Signal {
                signal,
                group: false,
            },
            Duration::from_secs(10),
        )?;
        self.events.emit(
            EventAction::Kill,
            &info.config,
            &[("signal", signal.to_string())],
        );
        Ok(info)
    }

    /// Stop: SIGTERM, then SIGKILL after `timeout` seconds. Returns when the
    /// container has ended (its `die`, then `stop`).
    pub fn stop(&self, key: &str, timeout: u64) -> ApiResult<ContainerInfo> {
        let mut info = self.find(key)?;
        let id = info.config.id.clone();
        if self.policy_booting(&id) {
            // Its restart policy is booting it: no further restart, and
            // this boot is stopped once it is up.
            self.note_manual_stop(&id);
            self.wait_policy_boots(Some(&id));
            info = self.load(&id)?;
        }
        if info.state.restarting {
            self.note_manual_stop(&id);
            info = self.load(&id)?;
        }
        if !info.state.status.is_active() {
            if info.state.status == Status::Exited && !info.networks.is_empty() {
                self.release_network(&id, true);
                return self.load(&id);
            }
            return Ok(info);
        }
        // Before it ends: its restart policy must see a user's stop.
        self.note_manual_stop(&id);
        let req = ControlRequest::Stop { timeout };
        if let Err(e) = self.control(&id, &req, Duration::from_secs(timeout + 30)) {
            // No control socket: ask the helper itself to stop.
            eprintln!("vessel-apiserver: stop {id}: {e:#}; signalling the runtime helper");
            if let Some(pid) = live_runtime(&info.state) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let ended = self.wait_until_ended(&id, Duration::from_secs(timeout + 30), None)?;
        if let Some(ended) = &ended {
            if !ended.state.status.is_active() {
                // Docker's habit: once `stop` returns, the ports are free
                // again; `die` comes before `stop`.
                self.note_exit(ended);
                // Decided now, not left to the bookkeeper: at `system
                // stop` the apiserver may be gone before it looks.
                self.policy_on_end(ended);
                self.events.emit(EventAction::Stop, &ended.config, &[]);
            }
        }
        self.load(&id)
    }

    /// The container once it has ended, or as it is after `limit`; `None`
    /// if the client has gone meanwhile.
    fn wait_until_ended(
        &self,
        id: &str,
        limit: Duration,
        gone: Option<&Gone>,
    ) -> ApiResult<Option<ContainerInfo>> {
        let deadline = Instant::now()
            .checked_add(limit)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400));
        let mut changes = self.changes.states();
        loop {
            changes.borrow_and_update();
            let info = self.load(id)?;
            if !info.state.status.is_active() || Instant::now() > deadline {
                return Ok(Some(info));
            }
            if !self.wait_change(&mut changes, gone, deadline) {
                return Ok(None);
            }
        }
    }

    /// Block until the container ends, or the client goes; its exit code.
    pub fn wait(&self, key: &str, gone: &Gone) -> ApiResult<Option<WaitResponse>> {
        let id = self.find(key)?.config.id;
        let Some(info) = self.wait_until_ended(&id, Duration::MAX, Some(gone))? else {
            return Ok(None);
        };
        self.note_exit(&info);
        Ok(Some(WaitResponse {
            exit_code: info.state.exit_code.unwrap_or(0),
            error: info.state.error,
        }))
    }

    /// Remove a container's files; `force` kills it first if it runs;
    /// `volumes`: its anonymous volumes go too (`rm -v`).
    pub fn remove(&self, key: &str, force: bool, volumes: bool) -> ApiResult<ContainerInfo> {
        let info = self.find(key)?;
        let id = info.config.id.clone();
        if self.policy_booting(&id) {
            return Err(ApiError::conflict(format!(
                "container {} is being started again by its restart policy: stop it first, then remove it",
                info.config.name
            )));
        }
        if info.state.restarting {
            if !force {
                return Err(ApiError::conflict(format!(
                    "container {} is restarting (its restart policy starts it again): stop it first, or remove it with `vessel rm -f`",
                    info.config.name
                )));
            }
            self.note_manual_stop(&id);
        }
        if info.state.status.is_active() {
            if !force {
                return Err(ApiError::conflict(format!(
                    "container {} is running: stop it first, or remove it with `vessel rm -f`",
                    info.config.name
                )));
            }
            self.stop(&id, 0)?;
        }
        // Copies of it while it does not run end first (with `force`: at
        // once); no new one begins.
        let _gate = self.end_maintenance(&info, force)?;
        let now = self.load(&id)?;
        if let Some(pid) = end_runtime(&now.state, RUNTIME_EXIT_LIMIT) {
            return Err(ApiError::conflict(format!(
                "container {} has ended, but its runtime helper (pid {pid}) did not exit within {} s and still holds the container's files; see {}, then run `vessel rm` again",
                info.config.name,
                RUNTIME_EXIT_LIMIT.as_secs(),
                self.home.container_dir(&id).join("runtime.log").display()
            )));
        }
        if now.state.status == Status::Exited {
            self.note_exit(&now);
        }
        self.remove_files(&id)?;
        self.events.emit(EventAction::Destroy, &info.config, &[]);
        if volumes {
            self.remove_anonymous_volumes(&info.config);
        }
        Ok(info)
    }

    fn remove_files(&self, id: &str) -> std::io::Result<()> {
        // If the helper cannot be reached, its next reconcile drops what a
        // removed container held.
        self.release_network(id, true);
        self.release_unrecorded_network(id);
        // Then renamed out of the list: a removal the apiserver dies in
        // leaves a directory the next apiserver finishes removing
        // ([`Self::sweep_unfinished`]), never half a container.
        let gone = self.home.containers_dir().join(format!("{REMOVING}{id}"));
        let renamed = match fs::rename(self.home.container_dir(id), &gone) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            r => r.is_ok(),
        };
        let _ = fs::remove_dir_all(self.home.run_dir(id));
        let _ = fs::remove_dir_all(self.home.maintenance_run_dir(id));
        vessel_api::confine::remove_cgroups(id);
        let res = match renamed.then(|| remove_dir_racing(&gone)) {
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if let Ok(mut e) = self.ended.lock() {
            e.remove(id);
        }
        if let Ok(mut h) = self.health_seen.lock() {
            h.remove(id);
        }
        self.execs.forget_container(id);
        res
    }

    /// Register an attached client (holds `--rm` removal back).
    pub fn attach(self: &Arc<Self>, id: &str) -> AttachGuard {
        if let Ok(mut m) = self.attached.lock() {
            *m.entry(id.to_string()).or_insert(0) += 1;
        }
        AttachGuard {
            containers: self.clone(),
            id: id.to_string(),
        }
    }

    /// Is a client attached to `id` (holding a `--rm` removal back)?
    fn is_attached(&self, id: &str) -> bool {
        self.attached
            .lock()
            .map(|m| m.contains_key(id))
            .unwrap_or(true)
    }

    /// Look at container `id` again soon (the bookkeeper's turn).
    fn recheck(&self, id: &str) {
        if let Some(w) = self.watcher.get() {
            w.notify(id);
        }
    }

    /// Remove an ended `--rm` container that no client is attached to. One
    /// whose runtime helper is still there is told to end (waiting up to
    /// `limit`), and removed when it has (its files go only when nothing
    /// holds them): its end is watched and brings it back here.
    fn reap_auto_remove_one(&self, info: &ContainerInfo, limit: Duration) {
        let id = &info.config.id;
        // One removal at a time: the bookkeeper and an attached client's
        // end may both get here; only the first finds the container.
        let Ok(_one) = self.reap_lock.lock() else {
            return;
        };
        if !self.home.container_dir(id).join("config.json").exists() {
            return;
        }
        let attached = self
            .attached
            .lock()
            .map(|m| m.contains_key(id))
            .unwrap_or(true);
        if attached {
            return;
        }
        if let Some(pid) = end_runtime(&info.state, limit) {
            if let Some(w) = self.watcher.get() {
                w.watch_pid(id, pid, info.state.runtime_start_time);
            }
            return;
        }
        match self.remove_files(id) {
            Ok(()) => {
                self.events.emit(EventAction::Destroy, &info.config, &[]);
                // `run --rm`: its anonymous volumes go with it (Docker's).
                self.remove_anonymous_volumes(&info.config);
            }
            Err(e) => eprintln!("vessel-apiserver: removing {id}: {e}"),
        }
    }

    /// Remove an ended `--rm` container now (no client attached), waiting
    /// for its runtime helper to end.
    pub fn reap_auto_remove_now(&self, info: &ContainerInfo) {
        if info.config.auto_remove && info.state.status == Status::Exited {
            self.reap_auto_remove_one(info, RUNTIME_EXIT_LIMIT);
        }
    }

    /// Remove every ended `--rm` container no client is attached to,
    /// waiting up to `limit` for each runtime helper to end.
    fn reap_auto_remove_within(&self, limit: Duration) {
        for info in self.list() {
            if info.config.auto_remove && info.state.status == Status::Exited {
                self.reap_auto_remove_one(&info, limit);
            }
        }
    }

    /// Stop every running container and maintenance boot (system
    /// shutdown), in parallel.
    pub fn stop_all(self: &Arc<Self>, timeout: u64) {
        // Nothing restarts while everything stops; what was pending stays
        // recorded for the next apiserver. A boot under way is stopped
        // once it is up.
        self.stop_restarts();
        self.wait_policy_boots(None);
        let handles: Vec<_> = self
            .list()
            .into_iter()
            .map(|i| {
                let me = self.clone();
                std::thread::spawn(move || {
                    if i.state.status.is_active() {
                        let _ = me.stop(&i.config.id, timeout);
                    } else {
                        let _ = me.stop_maintenance(&i);
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        self.reap_auto_remove_within(RUNTIME_EXIT_LIMIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRuntimeConfig {
        ImageRuntimeConfig {
            env: vec!["PATH=/bin".into(), "FROM_IMAGE=1".into()],
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            working_dir: "/srv".into(),
            user: "".into(),
            volumes: vec![],
            healthcheck: None,
        }
    }

    #[test]
    fn each_change_of_health_is_told_once() {
        use HealthStatus::*;
        // Starting is not told; healthy and unhealthy are, once each.
        assert_eq!(health_change(None, (1, Some(Starting))), None);
        assert_eq!(
            health_change(Some((1, Some(Starting))), (1, Some(Healthy))),
            Some(Healthy)
        );
        assert_eq!(
            health_change(Some((1, Some(Healthy))), (1, Some(Healthy))),
            None
        );
        assert_eq!(
            health_change(Some((1, Some(Healthy))), (1, Some(Unhealthy))),
            Some(Unhealthy)
        );
        // A new run that is already healthy when first seen.
        assert_eq!(
            health_change(Some((1, Some(Healthy))), (2, Some(Healthy))),
            Some(Healthy)
        );
        // No healthcheck: nothing.
        assert_eq!(health_change(None, (1, None)), None);
    }

    #[test]
    fn user_flags_override_image() {
        let req = CreateRequest {
            cmd: vec!["echo".into(), "hi".into()],
            env: vec!["FROM_IMAGE=2".into(), "X=y".into()],
            workdir: Some("/tmp".into()),
            user: Some("1000".into()),
            ..Default::default()
        };
        let p = build_process(&req, &image(), "abc").unwrap();
        assert_eq!(p.args, vec!["echo", "hi"]);
        assert!(p.env.contains(&"FROM_IMAGE=2".to_string()));
        assert!(!p.env.contains(&"FROM_IMAGE=1".to_string()));
        assert!(p.env.contains(&"PATH=/bin".to_string()));
        assert!(p.env.contains(&"HOSTNAME=abc".to_string()));
        assert_eq!(p.cwd, "/tmp");
        assert_eq!(p.user, "1000");
    }

    #[test]
    fn image_defaults_and_entrypoint() {
        let p = build_process(&CreateRequest::default(), &image(), "h").unwrap();
        assert_eq!(p.args, vec!["sh"]);
        assert_eq!(p.cwd, "/srv");
        let mut img = image();
        img.entrypoint = vec!["/entry".into()];
        let p = build_process(
            &CreateRequest {
                cmd: vec!["a".into()],
                ..Default::default()
            },
            &img,
            "h",
        )
        .unwrap();
        assert_eq!(p.args, vec!["/entry", "a"]);
        // --entrypoint drops the image's CMD.
        let req = CreateRequest {
            entrypoint: Some("env".into()),
            ..Default::default()
        };
        assert_eq!(
            build_process(&req, &image(), "h").unwrap().args,
            vec!["env"]
        );
        let req = CreateRequest {
            entrypoint: Some("".into()),
            ..Default::default()
        };
        assert!(build_process(&req, &image(), "h").is_err());
    }

    #[test]
    fn hostnames_and_network_names() {
        for ok in ["web", "a-b.example", "x1", "A9"] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad}");
        }
        assert_eq!(network_name(None), "default");
        assert_eq!(network_name(Some("bridge")), "default");
        assert_eq!(network_name(Some(" none ")), "none");
        assert_eq!(network_name(Some("mynet")), "mynet");
    }

    #[test]
    fn bad_flags_are_rejected() {
        let req = CreateRequest {
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert!(build_process(&req, &image(), "h").is_err());
        let req = CreateRequest {
            workdir: Some("relative".into()),
            ..Default::default()
        };
        assert!(build_process(&req, &image(), "h").is_err());
    }

    /// A stand-in runtime helper: a real process (a zombie counts as gone,
    /// so nobody needs to reap it for the wait); `ignore_term` makes it
    /// ignore SIGTERM, as a helper that does not end when asked. Killed
    /// when dropped, also when the test fails.
    struct FakeHelper(std::process::Child);

    impl FakeHelper {
        fn start(ignore_term: bool) -> (Self, ContainerState) {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            if ignore_term {
                // SAFETY: signal is async-signal-safe; the closure allocates nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::signal(libc::SIGTERM, libc::SIG_IGN);
                        Ok(())
                    });
                }
            }
            let child = cmd.spawn().unwrap();
            let pid = child.id() as i32;
            let mut state = ContainerState::created();
            state.status = Status::Exited;
            state.runtime_pid = Some(pid);
            state.runtime_start_time = pid_start_time(pid);
            (Self(child), state)
        }
    }

    impl Drop for FakeHelper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn removal_ends_the_runtime_helper_first_and_waits_for_it() {
        let (_helper, state) = FakeHelper::start(false);
        let pid = state.runtime_pid.unwrap();
        assert_eq!(live_runtime(&state), Some(pid));
        let started = Instant::now();
        assert_eq!(end_runtime(&state, Duration::from_secs(5)), None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "asked, not waited out"
        );
        assert_eq!(live_runtime(&state), None, "gone when end_runtime returns");

        // A helper that stays: its pid, once the limit is over.
        let (helper, state) = FakeHelper::start(true);
        let pid = state.runtime_pid.unwrap();
        let started = Instant::now();
        assert_eq!(end_runtime(&state, Duration::from_millis(300)), Some(pid));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(live_runtime(&state), Some(pid));

        // The same pid, now another process (another start time): not ours
        // to signal, and no reason to wait.
        let mut reused = state.clone();
        reused.runtime_start_time = state.runtime_start_time.map(|t| t + 1);
        assert_eq!(live_runtime(&reused), None);
        assert_eq!(end_runtime(&reused, Duration::from_secs(5)), None);
        drop(helper);
        assert_eq!(end_runtime(&state, Duration::from_secs(5)), None);

        // Never started: nothing to end.
        assert_eq!(
            end_runtime(&ContainerState::created(), Duration::from_secs(5)),
            None
        );
    }

    #[test]
    fn memory_is_checked_against_the_host() {
        assert!(check_memory(512, Some(24_000)).is_ok());
        assert!(check_memory(24_000, Some(24_000)).is_ok());
        let e = check_memory(100_000, Some(24_000)).unwrap_err();
        assert!(
            e.contains("100000 MiB is more than this host has (24000 MiB)"),
            "{e}"
        );
        assert!(check_memory(32, Some(24_000))
            .unwrap_err()
            .contains("at least 64 MiB"));
        // Unknown host memory: only the guest's minimum.
        assert!(check_memory(1 << 40, None).is_ok());
        assert!(host_memory_mib().is_some_and(|m| m > 0));
    }

    #[test]
    fn a_start_failure_before_the_guest_ran_names_the_vmm_s_words() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot.log");
        let error = format!(
            "the VM exited before its agent answered; see {}",
            boot.display()
        );
        // No vmm.log: nothing better to say.
        assert_eq!(explain_start_failure(dir.path(), &error), None);
        std::fs::write(
            dir.path().join("vmm.log"),
            "starting\nqemu-system-x86_64: cannot set up guest memory 'mem': Cannot allocate memory\n\n",
        )
        .unwrap();
        let better = explain_start_failure(dir.path(), &error).unwrap();
        assert!(
            better.starts_with("the VM exited before its agent answered; the VMM said: "),
            "{better}"
        );
        assert!(better.contains("Cannot allocate memory"), "{better}");
        assert!(better.contains("vmm.log"), "{better}");
        assert!(!better.contains("boot.log"), "{better}");
        // A console that has something: the error stands.
        std::fs::write(&boot, "Linux version 6.1\n").unwrap();
        assert_eq!(explain_start_failure(dir.path(), &error), None);
        // Other errors are left alone.
        assert_eq!(explain_start_failure(dir.path(), "exit 3"), None);
    }
}
