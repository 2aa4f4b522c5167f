//! `vessel-runtime --maintenance`: a maintenance boot, for `vessel cp` and
//! `vessel export` of a container that is not running (created and never
//! started, or exited).
//!
//! The container's filesystem is untrusted (its writable layer is the
//! container's own doing), so the host never mounts or parses it: the
//! container's VM boots on its disk (the same overlay, kernel and
//! initramfs; one CPU, [`MEMORY_MIB`] of memory, no network, no published
//! ports), vminitd mounts the root filesystem alone and starts nothing
//! (`MountRoot`, see the agent protocol's "A maintenance boot"), and the
//! copies run in the guest as in a running container.
//!
//! 1. The apiserver spawns this helper (only while the container does not
//!    run, and never while another helper owns its disk). The helper
//!    writes `maintenance.json` (its pid), binds its control socket in
//!    [`Home::maintenance_run_dir`], says `ready` on its standard output,
//!    and boots the VM.
//! 2. Copy requests (`copy_out`, `copy_in`) on the control socket wait for
//!    the boot, then relay a guest connection each, as a running
//!    container's runtime does; any number at once share the VM.
//! 3. The VM is powered off [`LINGER`] after the last copy ended (so the
//!    few requests of one `vessel cp` share one boot), at once on SIGTERM
//!    or `stop` (which cut the copies), and when the VM dies. Power-off is
//!    `Shutdown` on the `MountRoot` connection: vminitd ends the copies'
//!    helpers, unmounts the root, syncs, and powers off; a VM that does
//!    not go within [`Timeouts::shutdown`] is killed.
//!
//! `state.json` is never written: the container stays `created` or
//! `exited`, with no `start` or `die`.

use crate::clock::{self, ClockSync, Next};
use crate::control::{self, ControlHandler, ControlRequest, ExecState};
use crate::run::{create_overlay, make_run_dir, RunError, Timeouts};
use crate::streams::GuestDialer;
use crate::transport::{self, AgentTransport, TransportError};
use crate::vmm::{qemu_binary, Qemu, QemuSpec, Vmm};
use crate::{chain, log};
use agent_protocol::{
    decode_message, read_frame, write_message, GuestMessage, HostMessage, WinSize, AGENT_PORT,
    FEATURE_CLOCK, FEATURE_COPY, FEATURE_MAINTENANCE, VERSION,
};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vessel_api::control::{MaintenanceHelper, MAINTENANCE_FAILED, MAINTENANCE_READY};
use vessel_api::fsutil::{pid_alive, pid_start_time, read_json, write_json_atomic};
use vessel_api::paths::Home;
use vessel_api::types::{ContainerConfig, ContainerState, ContainerStats};

/// The VM powers off this long after its last copy ended.
pub const LINGER: Duration = Duration::from_secs(1);
/// A maintenance VM's memory: vminitd and a tar helper need little.
pub const MEMORY_MIB: u64 = 128;
/// How long one answer of the guest may take while it is set up.
const AGENT_REPLY: Duration = Duration::from_secs(10);
/// After the end, how long copies still answering their client may take.
const DRAIN: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the boot is.
#[derive(Debug, Clone)]
enum Boot {
    Booting,
    Ready(GuestDialer),
    Failed(String),
}

/// What the control socket and the lifecycle share.
#[derive(Debug)]
struct Inner {
    boot: Boot,
    /// Copies going on (waiting for the boot, or relaying).
    active: usize,
    /// Since when no copy has gone on (the boot's end, or the last copy's).
    idle_since: Instant,
    /// SIGTERM or `stop`: power off now.
    stop: bool,
    /// The VM went away by itself.
    lost: bool,
    /// Powering off: new copies are refused.
    closing: bool,
}

/// What [`decide`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Look again after this long (or when something changes).
    Wait(Duration),
    PowerOff,
}

/// When does the VM power off? A pure function of the shared state.
fn decide(s: &Inner, now: Instant, linger: Duration) -> Decision {
    if s.stop || s.lost {
        return Decision::PowerOff;
    }
    if s.active > 0 || matches!(s.boot, Boot::Booting) {
        return Decision::Wait(Duration::from_secs(3600));
    }
    let idle = now.saturating_duration_since(s.idle_since);
    if idle >= linger {
        Decision::PowerOff
    } else {
        Decision::Wait(linger - idle)
    }
}

/// The maintenance boot as the control socket sees it.
pub struct Maintenance {
    inner: Mutex<Inner>,
    changed: Condvar,
    state_path: PathBuf,
    /// How long a copy waits for the boot.
    boot_limit: Duration,
}

/// A copy in progress; its end is counted when dropped.
struct CopyTicket<'a>(&'a Maintenance);

impl Drop for CopyTicket<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.inner);
        s.active = s.active.saturating_sub(1);
        s.idle_since = Instant::now();
        self.0.changed.notify_all();
    }
}

impl Maintenance {
    pub fn new(state_path: PathBuf, boot_limit: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                boot: Boot::Booting,
                active: 0,
                idle_since: Instant::now(),
                stop: false,
                lost: false,
                closing: false,
            }),
            changed: Condvar::new(),
            state_path,
            boot_limit,
        }
    }

    /// Count a copy in, unless the VM is powering off.
    fn begin_copy(&self) -> Result<CopyTicket<'_>, String> {
        let mut s = lock(&self.inner);
        if s.closing {
            return Err("the container's maintenance VM is powering off; try again".into());
        }
        s.active += 1;
        Ok(CopyTicket(self))
    }

    /// The guest, once booted (up to the boot limit).
    fn wait_ready(&self) -> Result<GuestDialer, String> {
        let s = lock(&self.inner);
        let (s, _) = self
            .changed
            .wait_timeout_while(s, self.boot_limit, |s| {
                matches!(s.boot, Boot::Booting) && !s.stop
            })
            .unwrap_or_else(PoisonError::into_inner);
        match &s.boot {
            Boot::Ready(d) if !(s.stop || s.lost) => Ok(d.clone()),
            Boot::Ready(_) => Err("the container's maintenance VM is powering off".into()),
            Boot::Failed(e) => Err(e.clone()),
            Boot::Booting if s.stop => Err("the maintenance boot was stopped".into()),
            Boot::Booting => Err(format!(
                "the container's maintenance VM did not boot within {} s",
                self.boot_limit.as_secs()
            )),
        }
    }

    fn set_boot(&self, boot: Boot) {
        let mut s = lock(&self.inner);
        s.boot = boot;
        s.idle_since = Instant::now();
        self.changed.notify_all();
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut s = lock(&self.inner);
        f(&mut s);
        self.changed.notify_all();
    }

    /// Power off now (SIGTERM, `stop`).
    pub fn request_stop(&self) {
        self.update(|s| s.stop = true);
    }

    fn stopping(&self) -> bool {
        lock(&self.inner).stop
    }

    /// Block until it is time to power off ([`decide`]); from then on new
    /// copies are refused.
    fn wait_end(&self, linger: Duration) {
        let mut s = lock(&self.inner);
        loop {
            match decide(&s, Instant::now(), linger) {
                Decision::PowerOff => {
                    s.closing = true;
                    return;
                }
                Decision::Wait(d) => {
                    s = self
                        .changed
                        .wait_timeout(s, d)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Wait (up to `limit`) for copies to finish answering their clients.
    fn drain(&self, limit: Duration) {
        let s = lock(&self.inner);
        let _ = self
            .changed
            .wait_timeout_while(s, limit, |s| s.active > 0)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn copy(&self, request: ControlRequest, conn: UnixStream) {
        let ticket = match self.begin_copy() {
            Ok(t) => t,
            Err(e) => return refuse(&conn, &e, Some("unavailable")),
        };
        let dialer = match self.wait_ready() {
            Ok(d) => d,
            Err(e) => {
                refuse(&conn, &e, Some("internal"));
                drop(ticket);
                return;
            }
        };
        let r = match request {
            ControlRequest::CopyOut {
                path,
                one_file_system,
            } => crate::streams::copy_out(&dialer, path, one_file_system, conn),
            ControlRequest::CopyIn { path } => crate::streams::copy_in(&dialer, path, conn),
            _ => Ok(Default::default()),
        };
        if let Err(e) = r {
            log(&format!("maintenance copy: {e}"));
        }
        drop(ticket);
    }
}

/// Answer a request with a refusal (`kind`: an `ErrorKind` name).
fn refuse(conn: &UnixStream, error: &str, kind: Option<&str>) {
    let mut v = serde_json::json!({"ok": false, "error": error});
    if let Some(k) = kind {
        v["kind"] = k.into();
    }
    let mut w = conn;
    let _ = w.write_all(format!("{v}\n").as_bytes());
}

const NOT_RUNNING: &str = "the container is not running";

impl ControlHandler for Maintenance {
    fn signal(&self, _: i32, _: bool) -> Result<(), String> {
        Err(NOT_RUNNING.into())
    }
    fn stop(&self, _: Duration) -> Result<(), String> {
        self.request_stop();
        Ok(())
    }
    fn state(&self) -> ContainerState {
        read_json(&self.state_path)
            .ok()
            .flatten()
            .unwrap_or_else(ContainerState::created)
    }
    fn stats(&self) -> Result<ContainerStats, String> {
        Err(NOT_RUNNING.into())
    }
    fn pause(&self, _: bool) -> Result<(), String> {
        Err(NOT_RUNNING.into())
    }
    fn resize(&self, _: WinSize) -> Result<(), String> {
        Err(NOT_RUNNING.into())
    }
    fn exec_state(&self, _: &str) -> Option<ExecState> {
        None
    }
    fn top(&self) -> Result<Vec<agent_protocol::ProcessInfo>, String> {
        Err(NOT_RUNNING.into())
    }
    fn exec_detached(&self, _: agent_protocol::ExecRequest) -> Result<i32, String> {
        Err(NOT_RUNNING.into())
    }
    fn stream(&self, request: ControlRequest, conn: UnixStream) {
        match request {
            ControlRequest::CopyOut { .. } | ControlRequest::CopyIn { .. } => {
                self.copy(request, conn)
            }
            _ => refuse(
                &conn,
                &format!("{NOT_RUNNING}: a maintenance boot serves only copies"),
                None,
            ),
        }
    }
}

/// Hello, the clock, `MountRoot`: the guest then has the container's root
/// mounted and waits for copies. `s` is the connection that stays open for
/// the power-off.
fn greet(s: &mut UnixStream) -> Result<(), String> {
    s.set_read_timeout(Some(AGENT_REPLY))
        .map_err(|e| e.to_string())?;
    let send = |s: &mut UnixStream, m: &HostMessage| {
        write_message(s, m).map_err(|e| format!("talking to the guest: {}", chain(&e)))
    };
    let recv = |s: &mut UnixStream| -> Result<GuestMessage, String> {
        let frame = read_frame(s)
            .map_err(|e| format!("reading from the guest: {}", chain(&e)))?
            .ok_or("the guest closed the connection")?;
        decode_message(&frame).map_err(|e| format!("the guest's answer: {}", chain(&e)))
    };
    send(s, &HostMessage::Hello { version: VERSION })?;
    let features = match recv(s)? {
        GuestMessage::Hello {
            version, features, ..
        } if version == VERSION => features,
        GuestMessage::Hello { version, .. } => {
            return Err(format!(
                "the guest agent speaks protocol version {version}, this runtime {VERSION}"
            ))
        }
        other => return Err(format!("the guest answered {other:?} to Hello")),
    };
    let has = |f: &str| features.iter().any(|x| x == f);
    if !has(FEATURE_MAINTENANCE) || !has(FEATURE_COPY) {
        return Err(
            "the guest's vminitd cannot copy files of a container that is not running: the \
             container's initramfs is older than this vessel-runtime; start the container and \
             copy then, or install the guest assets built with it (scripts/setup.sh) and \
             create the container again"
                .into(),
        );
    }
    // Set the clock, so what the copies create gets today's times.
    if has(FEATURE_CLOCK) {
        let mut sync = ClockSync::new();
        let mut probe = sync.begin_round();
        'round: while let Some(p) = probe.take() {
            send(s, &p)?;
            loop {
                let reply = recv(s)?;
                let t4 = clock::host_realtime_ns();
                let GuestMessage::Clock { id, realtime_ns } = reply else {
                    return Err(format!("the guest answered {reply:?} to ReadClock"));
                };
                match sync.on_reply(id, realtime_ns, t4, false) {
                    Next::Ignore => {}
                    Next::Probe(p) => {
                        probe = Some(p);
                        continue 'round;
                    }
                    Next::Adjust { adjust, best } => {
                        send(s, &adjust)?;
                        log(&format!(
                            "guest clock set by {:.6} s (round trip {} µs)",
                            -best.offset_ns as f64 / 1e9,
                            best.rtt_ns / 1000
                        ));
                        break 'round;
                    }
                }
            }
        }
    }
    send(
        s,
        &HostMessage::MountRoot {
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
        },
    )?;
    match recv(s)? {
        GuestMessage::RootMounted => {}
        GuestMessage::Error { message } => {
            return Err(format!(
                "the guest could not mount the container's root filesystem: {message}"
            ))
        }
        other => return Err(format!("the guest answered {other:?} to MountRoot")),
    }
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(())
}

/// A booted maintenance VM.
struct Vm {
    qemu: Qemu,
    _transport: AgentTransport,
    /// The `MountRoot` connection.
    conn: UnixStream,
}

/// Where a maintenance boot keeps its files.
struct Files {
    dir: PathBuf,
    run_dir: PathBuf,
}

impl Files {
    fn boot_log(&self) -> PathBuf {
        self.dir.join("maintenance.boot.log")
    }
}

/// One boot: the agent transport, QEMU, the agent. `Err(BootAttempt)` when
/// the agent did not answer within `limit` (the VM is killed; boot again).
fn boot_once(
    config: &ContainerConfig,
    files: &Files,
    m: &Maintenance,
    t: &Timeouts,
    limit: Duration,
) -> Result<Vm, RunError> {
    let uds = files.run_dir.join("vsock.sock");
    let mut gate = transport::ReadyGate::bind(&uds, t.ready_fallback)?;
    let mut agent = AgentTransport::start(&uds, gate.path.clone())?;
    let agent_fd = agent
        .qemu_fd()
        .ok_or_else(|| TransportError::Pair(std::io::Error::other("closed")))?;
    let spec = QemuSpec {
        accel: config.accel.clone(),
        cpus: 1,
        memory_mib: MEMORY_MIB,
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        disk: Some(files.dir.join("overlay.qcow2")),
        agent_fd,
        boot_log: files.boot_log(),
        qmp_socket: files.run_dir.join("qmp.sock"),
        tsc_khz: crate::vmm::host_tsc_khz(),
        nics: Vec::new(),
        // Its mounts are not attached: a copy of a stopped container
        // reaches its own filesystem only (a path under a bind mount or a
        // volume is the directory or disk image on the host).
        volumes: Vec::new(),
        fs_devices: Vec::new(),
        // QEMU's seccomp filter; the rest of the jail (own user, mount
        // namespace, cgroup) is for container VMs only.
        sandbox: vessel_api::confine::enabled(),
        memory: crate::vmm::GuestMemory::Memfd,
    };
    let mut qemu = Qemu::new(qemu_binary(), spec, files.dir.join("maintenance.vmm.log"));
    let launched = Instant::now();
    let started = qemu.start();
    agent.release_qemu_end();
    started?;
    log(&format!(
        "maintenance VM started (pid {})",
        qemu.pid().unwrap_or(-1)
    ));
    let see = format!(
        "see {} and {}",
        files.boot_log().display(),
        files.dir.join("maintenance.vmm.log").display()
    );
    let fail = |qemu: &mut Qemu, e: RunError| {
        let _ = qemu.kill();
        Err(e)
    };
    let mut conn = loop {
        if m.stopping() {
            return fail(
                &mut qemu,
                RunError::Maintenance("stopped while booting".into()),
            );
        }
        if matches!(qemu.try_wait(), Ok(Some(_))) {
            return fail(
                &mut qemu,
                RunError::NoAgent(format!("the VM exited before its agent answered; {see}")),
            );
        }
        let attempt = if gate.open() {
            transport::hybrid_connect(&uds, AGENT_PORT, t.connect_reply)
        } else {
            Err(TransportError::GuestNotReady)
        };
        match attempt {
            Ok(s) => break s,
            Err(e) if launched.elapsed() >= limit => {
                return fail(
                    &mut qemu,
                    RunError::BootAttempt(format!(
                        "the VM's agent did not answer within {} s ({}); {see}",
                        limit.as_secs(),
                        chain(&e)
                    )),
                );
            }
            Err(_) => std::thread::sleep(t.retry),
        }
    };
    match gate.signalled_after() {
        Some(d) => log(&format!("guest agent port up after {} ms", d.as_millis())),
        None => log("no answer on the guest's agent port yet; connected anyway"),
    }
    if let Err(e) = greet(&mut conn) {
        return fail(&mut qemu, RunError::Maintenance(e));
    }
    log(&format!(
        "maintenance VM ready after {} ms: the root filesystem is mounted",
        launched.elapsed().as_millis()
    ));
    Ok(Vm {
        qemu,
        _transport: agent,
        conn,
    })
}

/// Boot (again after a stalled boot, as a container's boot is), serve
/// copies until [`Maintenance::wait_end`] says so, and power off.
fn boot_and_serve(
    config: &ContainerConfig,
    files: &Files,
    m: &Arc<Maintenance>,
    t: &Timeouts,
) -> Result<(), RunError> {
    create_overlay(&config.rootfs_base, &files.dir.join("overlay.qcow2"))?;
    let mut attempt = 1;
    let vm = loop {
        let limit = if attempt >= t.boot_attempts.max(1) {
            t.connect
        } else {
            t.boot_attempt
        };
        match boot_once(config, files, m, t, limit) {
            Ok(vm) => break vm,
            Err(RunError::BootAttempt(why)) if !m.stopping() && attempt < t.boot_attempts => {
                log(&format!(
                    "maintenance boot attempt {attempt}: {why}; booting again"
                ));
                attempt += 1;
            }
            Err(e) => {
                m.set_boot(Boot::Failed(format!(
                    "the container's maintenance VM did not boot: {}",
                    chain(&e)
                )));
                return Err(e);
            }
        }
    };
    let Vm {
        mut qemu,
        _transport,
        conn,
    } = vm;
    m.set_boot(Boot::Ready(GuestDialer {
        uds: files.run_dir.join("vsock.sock"),
        timeout: AGENT_REPLY,
    }));
    // The VM going away by itself ends the `MountRoot` connection.
    {
        let m = Arc::clone(m);
        let mut r = conn
            .try_clone()
            .map_err(|e| RunError::Maintenance(format!("the guest connection: {e}")))?;
        std::thread::spawn(move || {
            while let Ok(Some(_)) = read_frame(&mut r) {}
            m.update(|s| s.lost = true);
        });
    }
    m.wait_end(LINGER);
    let lost = lock(&m.inner).lost;
    if lost {
        log("the maintenance VM went away by itself");
    } else {
        log("maintenance boot done; powering the VM off");
        let mut w = &conn;
        let _ = write_message(&mut w, &HostMessage::Shutdown);
    }
    match qemu.wait_timeout(t.shutdown) {
        Ok(Some(_)) => {}
        _ => {
            log("the maintenance VM did not power off; killing it");
            let _ = qemu.kill();
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// Refuse to boot while the container's own runtime helper, or another
/// maintenance boot, still has its disk.
fn check_disk_free(dir: &Path) -> Result<(), RunError> {
    let busy = |what: String| Err(RunError::Maintenance(what));
    let state: ContainerState = read_json(&dir.join("state.json"))
        .map_err(|e| RunError::Config(dir.join("state.json"), e))?
        .unwrap_or_else(ContainerState::created);
    if let Some(pid) = state.runtime_pid {
        let same =
            state.runtime_start_time.is_none() || pid_start_time(pid) == state.runtime_start_time;
        if pid_alive(pid) && same {
            return busy(format!(
                "the container's runtime helper (pid {pid}) still runs its VM"
            ));
        }
    }
    if let Some(other) = MaintenanceHelper::read(dir) {
        if other.pid != std::process::id() as i32 && other.is_live() {
            return busy(format!(
                "another maintenance boot (pid {}) has the container's disk",
                other.pid
            ));
        }
    }
    Ok(())
}

/// The line that tells the apiserver the control socket listens, or why
/// not; then stdout is `/dev/null` (nobody reads it any more).
fn tell_parent(result: Result<(), String>) {
    let line = match result {
        Ok(()) => format!("{MAINTENANCE_READY}\n"),
        Err(e) => format!("{MAINTENANCE_FAILED}{}\n", e.replace('\n', " ")),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto descriptor 1, which this process owns; `null`
        // stays open for the call.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Run a maintenance boot of container `id`: see the module's doc.
pub fn run(home: &Home, id: &str) -> Result<(), RunError> {
    let dir = home.container_dir(id);
    let config_path = dir.join("config.json");
    let t = Timeouts::default();
    let files = Files {
        dir: dir.clone(),
        run_dir: home.maintenance_run_dir(id),
    };
    let me = std::process::id() as i32;
    let record = MaintenanceHelper {
        pid: me,
        start_time: pid_start_time(me),
    };
    let m = Arc::new(Maintenance::new(dir.join("state.json"), t.connect * 2));
    // Before any thread exists, so all of them inherit the mask.
    let signals = crate::proc::block_stop_signals().map_err(RunError::Signals);
    let prepared = signals.and_then(|()| {
        let config: ContainerConfig = read_json(&config_path)
            .map_err(|e| RunError::Config(config_path.clone(), e))?
            .ok_or_else(|| RunError::NoConfig(config_path.clone()))?;
        check_disk_free(&dir)?;
        write_json_atomic(&MaintenanceHelper::path(&dir), &record)
            .map_err(|e| RunError::Config(MaintenanceHelper::path(&dir), e))?;
        make_run_dir(&files.run_dir)?;
        let listener = control::bind(&files.run_dir.join("control.sock"))?;
        control::serve(listener, Arc::clone(&m) as Arc<dyn ControlHandler>);
        Ok(config)
    });
    tell_parent(prepared.as_ref().map(|_| ()).map_err(|e| chain(e)));
    let result = prepared.and_then(|config| {
        log(&format!(
            "maintenance boot of container {id} ({})",
            config.name
        ));
        {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                if let Ok(sig) = crate::proc::wait_stop_signal() {
                    log(&format!(
                        "received signal {sig}; ending the maintenance boot"
                    ));
                    m.request_stop();
                }
            });
        }
        boot_and_serve(&config, &files, &m, &t)
    });
    if let Err(e) = &result {
        log(&format!("maintenance boot: {}", chain(e)));
    }
    // Copies still telling their clients how it went get a moment.
    m.drain(DRAIN);
    if MaintenanceHelper::read(&dir).is_some_and(|r| r.pid == me) {
        let _ = std::fs::remove_file(MaintenanceHelper::path(&dir));
    }
    let _ = std::fs::remove_dir_all(&files.run_dir);
    log(&format!("maintenance boot of container {id} ended"));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::write_frame;
    use std::io::{BufRead, BufReader};

    fn inner() -> Inner {
        Inner {
            boot: Boot::Ready(GuestDialer {
                uds: "/nope".into(),
                timeout: Duration::from_secs(1),
            }),
            active: 0,
            idle_since: Instant::now(),
            stop: false,
            lost: false,
            closing: false,
        }
    }

    #[test]
    fn the_vm_powers_off_a_linger_after_the_last_copy_or_at_once_when_told() {
        let linger = Duration::from_secs(1);
        let mut s = inner();
        let t0 = s.idle_since;
        assert_eq!(
            decide(&s, t0 + Duration::from_millis(400), linger),
            Decision::Wait(Duration::from_millis(600))
        );
        assert_eq!(decide(&s, t0 + linger, linger), Decision::PowerOff);
        // A copy going on, or a boot not done: no end in sight.
        s.active = 1;
        assert!(matches!(
            decide(&s, t0 + linger * 10, linger),
            Decision::Wait(d) if d > linger
        ));
        s.active = 0;
        s.boot = Boot::Booting;
        assert!(matches!(
            decide(&s, t0 + linger * 10, linger),
            Decision::Wait(d) if d > linger
        ));
        // A stop or a lost VM ends it, copies or not.
        s.active = 3;
        s.stop = true;
        assert_eq!(decide(&s, t0, linger), Decision::PowerOff);
        s.stop = false;
        s.lost = true;
        assert_eq!(decide(&s, t0, linger), Decision::PowerOff);
    }

    #[test]
    fn copies_wait_for_the_boot_and_none_begin_once_it_powers_off() {
        let m = Arc::new(Maintenance::new(
            "/nope/state.json".into(),
            Duration::from_secs(5),
        ));
        let ticket = m.begin_copy().unwrap();
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.wait_ready().map(|d| d.uds))
        };
        std::thread::sleep(Duration::from_millis(50));
        m.set_boot(Boot::Ready(GuestDialer {
            uds: "/guest".into(),
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(waiter.join().unwrap(), Ok(PathBuf::from("/guest")));
        // The end waits for the copy, then a linger.
        // Timed from before the spawn: a thread that starts late must
        // not shorten the measured wait.
        let t = Instant::now();
        let ender = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                m.wait_end(Duration::from_millis(100));
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        drop(ticket);
        let waited = ender.join().unwrap();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        let e = m.begin_copy().err().unwrap();
        assert!(e.contains("powering off"), "{e}");
    }

    #[test]
    fn a_failed_boot_is_what_waiting_copies_hear() {
        let m = Maintenance::new("/nope/state.json".into(), Duration::from_secs(5));
        let _t = m.begin_copy().unwrap();
        m.set_boot(Boot::Failed("no kernel".into()));
        assert_eq!(m.wait_ready().err().unwrap(), "no kernel");
        let m = Maintenance::new("/nope/state.json".into(), Duration::from_millis(50));
        assert!(m
            .wait_ready()
            .err()
            .unwrap()
            .contains("did not boot within"));
    }

    #[test]
    fn only_copies_are_served_and_the_state_is_the_container_s() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut s = ContainerState::created();
        s.status = vessel_api::types::Status::Exited;
        s.exit_code = Some(3);
        write_json_atomic(&state, &s).unwrap();
        let m = Maintenance::new(state, Duration::from_secs(1));
        assert_eq!(m.state().exit_code, Some(3));
        assert!(m.signal(9, false).is_err());
        assert!(m.top().is_err());
        let (a, b) = UnixStream::pair().unwrap();
        m.stream(
            ControlRequest::Attach(vessel_api::control::AttachRequest::default()),
            a,
        );
        let mut line = String::new();
        BufReader::new(b).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("not running"));
        // `stop` ends the boot.
        m.stop(Duration::from_secs(1)).unwrap();
        assert!(m.stopping());
    }

    /// A guest as vminitd answers a maintenance host.
    fn fake_guest(
        features: Vec<String>,
        mount: Option<String>,
    ) -> (UnixStream, std::thread::JoinHandle<Vec<HostMessage>>) {
        let (host, mut g) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut r = BufReader::new(g.try_clone().unwrap());
            while let Ok(Some(f)) = read_frame(&mut r) {
                let m: HostMessage = decode_message(&f).unwrap();
                seen.push(m.clone());
                let answer = match m {
                    HostMessage::Hello { .. } => GuestMessage::Hello {
                        version: VERSION,
                        uptime_ms: 1,
                        features: features.clone(),
                    },
                    HostMessage::ReadClock { id } => GuestMessage::Clock { id, realtime_ns: 0 },
                    HostMessage::AdjustClock { .. } => continue,
                    HostMessage::MountRoot { .. } => match &mount {
                        None => GuestMessage::RootMounted,
                        Some(e) => GuestMessage::Error { message: e.clone() },
                    },
                    _ => break,
                };
                write_message(&mut g, &answer).unwrap();
            }
            seen
        });
        (host, h)
    }

    #[test]
    fn the_guest_is_greeted_its_clock_set_and_its_root_mounted() {
        let all = vec![
            FEATURE_CLOCK.to_string(),
            FEATURE_COPY.to_string(),
            FEATURE_MAINTENANCE.to_string(),
        ];
        let (mut host, g) = fake_guest(all.clone(), None);
        greet(&mut host).unwrap();
        drop(host);
        let seen = g.join().unwrap();
        assert!(matches!(seen[0], HostMessage::Hello { .. }));
        let probes = seen
            .iter()
            .filter(|m| matches!(m, HostMessage::ReadClock { .. }))
            .count();
        assert_eq!(probes, clock::ROUND_SAMPLES);
        // The guest is at 1970: stepped by about the host's time.
        let step = seen.iter().find_map(|m| match m {
            HostMessage::AdjustClock {
                offset_ns, mode, ..
            } => Some((*offset_ns, *mode)),
            _ => None,
        });
        let (offset, mode) = step.unwrap();
        assert_eq!(mode, agent_protocol::AdjustMode::Step);
        assert!(offset > 1_700_000_000_000_000_000, "{offset}");
        assert!(matches!(seen.last(), Some(HostMessage::MountRoot { .. })));

        // An older guest: refused with what to do.
        let (mut host, g) = fake_guest(vec![FEATURE_COPY.to_string()], None);
        let e = greet(&mut host).unwrap_err();
        drop(host);
        assert!(e.contains("older than this vessel-runtime"), "{e}");
        assert!(!g
            .join()
            .unwrap()
            .iter()
            .any(|m| matches!(m, HostMessage::MountRoot { .. })));

        // A root that does not mount: the guest's words.
        let (mut host, g) = fake_guest(
            all,
            Some("cannot mount root filesystem /dev/vda: EUCLEAN".into()),
        );
        let e = greet(&mut host).unwrap_err();
        drop(host);
        g.join().unwrap();
        assert!(e.contains("EUCLEAN"), "{e}");
    }

    #[test]
    fn garbage_from_the_guest_is_an_error_not_a_panic() {
        let (mut host, mut g) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut r = BufReader::new(g.try_clone().unwrap());
            let _ = read_frame(&mut r);
            let _ = write_frame(
                &mut g,
                agent_protocol::FrameKind::Control,
                b"{\"type\":\"zzz\"}",
            );
            let _ = g.write_all(&[0xff, 0xff, 0xff, 0xff, 9]);
        });
        assert!(greet(&mut host).is_err());
        h.join().unwrap();
    }
}
