//! The lifecycle of one container, from `config.json` to the exit status.
//!
//! 1. `state.json` says `starting` with this process's pid.
//! 2. The run directory (sockets), the qcow2 overlay, the agent transport
//!    and the VMM are set up by [`run`]; a failure there ends the container with
//!    exit code 125 and a reason in `state.error`.
//! 3. [`supervise`] connects to vminitd (retrying while the guest boots),
//!    says `Hello`, sends `Start`, pumps output into `stdio.log`, and records
//!    `running` and then `exited`. It asks the guest to power off and waits
//!    for the VMM to go.
//! 4. The control socket ([`crate::control`]) and SIGTERM/SIGINT act on the
//!    [`Shared`] state concurrently: signal, stop, state. A stop that comes
//!    after the exit (while the VM powers off) kills the VMM at once.
//!
//! Only this process writes `state.json` once it runs, always atomically.

use crate::agent::{self, AgentSender, Incoming};
use crate::clock::{self, ClockSync, HostClockWatch};
use crate::control::{self, AttachRequest, ControlHandler, ControlRequest, ExecState};
use crate::logs::StdioLog;
use crate::passt::{passt_binary, Passt, PasstError, PasstSpec};
use crate::streams::{Attachers, GuestDialer};
use crate::transport::{self, AgentTransport, TransportError};
use crate::virtiofs::{self, IdMapping, VirtiofsError, Virtiofsd};
use crate::vmm::{qemu_binary, FsDevice, Nic, NicBackend, Qemu, QemuSpec, Vmm, VmmError};
use crate::{chain, log};
use agent_protocol::{
    decode_message, read_frame, write_frame, write_message, AdoptRequest, FrameKind, GuestMessage,
    HostMessage, StartRequest, WinSize, AGENT_PORT, FEATURE_ADOPT, FEATURE_CLOCK, FEATURE_MOUNTS,
    FEATURE_NETWORK, FEATURE_RLIMITS, FEATURE_STDIN_CREDIT, VERSION,
};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use vessel_api::fsutil::{pid_start_time, read_json, write_json_atomic};
use vessel_api::network::{AttachmentMode, ContainerNetworks};
use vessel_api::paths::Home;
use vessel_api::types::{now_ms, ContainerConfig, ContainerState, ContainerStats, Status};

/// Exit code of a container that could not be started.
pub const EXIT_START_FAILED: i32 = 125;
/// Exit code of a container whose VM died under it.
pub const EXIT_VM_LOST: i32 = 255;
/// Exit code of a container killed by `stop` (128 + SIGKILL).
pub const EXIT_KILLED: i32 = 137;

/// Errors that end the runtime before the container ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Could not read {}", .0.display())]
    Config(PathBuf, #[source] std::io::Error),
    #[error("{} does not exist; the apiserver writes it before starting vessel-runtime", .0.display())]
    NoConfig(PathBuf),
    #[error("Could not create the run directory {}", .0.display())]
    RunDir(PathBuf, #[source] std::io::Error),
    #[error("The image's root filesystem {} is missing; pull or rebuild the image", .0.display())]
    NoRootfs(PathBuf),
    #[error("Could not run qemu-img; install it (Debian: `apt install qemu-utils`) or set VESSEL_QEMU_IMG")]
    QemuImgSpawn(#[source] std::io::Error),
    #[error("qemu-img could not create the overlay {}: {1}", .0.display())]
    QemuImg(PathBuf, String),
    #[error("Could not open {}", .0.display())]
    StdioLog(PathBuf, #[source] std::io::Error),
    #[error("Could not set up the agent's port")]
    Transport(#[from] TransportError),
    #[error("Could not share a host directory with the VM (virtiofsd)")]
    Virtiofs(#[from] VirtiofsError),
    #[error("Could not start the user-mode network (passt)")]
    Passt(#[from] PasstError),
    #[error("Could not start the VM")]
    Vmm(#[from] VmmError),
    #[error("Could not open the control socket")]
    Control(#[from] control::ControlError),
    #[error("Could not talk to the guest agent")]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    Volume(#[from] crate::mounts::VolumeError),
    #[error(
        "Could not confine the VMM (set VESSEL_VMM_CONFINE=0 to run it unconfined while debugging)"
    )]
    Jail(#[from] crate::jail::JailError),
    #[error("Could not block SIGTERM/SIGINT")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    NoAgent(String),
    /// One boot attempt ran out of time; the VM is booted again.
    #[error("{0}")]
    BootAttempt(String),
    /// A maintenance boot could not go on (see [`crate::maintenance`]).
    #[error("{0}")]
    Maintenance(String),
}

/// How long things may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From VMM launch until vminitd answers a connect.
    pub connect: Duration,
    /// Pause between connect attempts.
    pub retry: Duration,
    /// Wait for the transport's `OK` line on one attempt.
    pub connect_reply: Duration,
    /// For a helper's socket to appear (virtiofsd), and for passt to be ready.
    pub backend_socket: Duration,
    /// For the VM to power off after `Shutdown`.
    pub shutdown: Duration,
    /// After SIGKILL before the VM itself is killed.
    pub kill_grace: Duration,
    /// One boot attempt: a VM whose agent has not answered by then is
    /// killed and booted again, up to `boot_attempts` boots in all (within
    /// `connect`). Under software emulation on a loaded host a guest kernel
    /// now and then stalls for good early in boot; a fresh boot does not.
    pub boot_attempt: Duration,
    pub boot_attempts: u32,
    /// Connect without the guest's readiness signal after this long (an
    /// initramfs built before the signal existed never sends it).
    pub ready_fallback: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(60),
            retry: Duration::from_millis(20),
            connect_reply: Duration::from_secs(1),
            backend_socket: Duration::from_secs(5),
            shutdown: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            boot_attempt: Duration::from_secs(20),
            boot_attempts: 3,
            ready_fallback: Duration::from_secs(5),
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the lifecycle, the control socket and the signal thread share.
pub struct Shared {
    state_path: PathBuf,
    state: Mutex<ContainerState>,
    changed: Condvar,
    /// Set once the process runs; signals go through it.
    agent: Mutex<Option<AgentSender>>,
    vmm: Mutex<Option<Box<dyn Vmm>>>,
    stop_requested: AtomicBool,
    kill_grace: Duration,
    /// Opens more connections to the guest (exec, copies, statistics).
    dialer: Mutex<Option<GuestDialer>>,
    /// Clients attached to the main process.
    attachers: Attachers,
    /// Stdin sent to the main process and not yet credited by the guest.
    stdin_window: crate::streams::StdinWindow,
    /// The main process's output log, replayed to clients that attach,
    /// and where this run's output begins in it (a container started
    /// again appends to the log of its earlier runs).
    stdio_path: Mutex<Option<(PathBuf, u64)>>,
    /// Exec'd processes by id.
    execs: Arc<Mutex<HashMap<String, ExecState>>>,
    /// Set to have the clock thread set the guest's clock again at once
    /// (after the VM was paused).
    clock_resync: Arc<AtomicBool>,
    /// The healthcheck, run from the process's start (see [`crate::health`]).
    health: Mutex<Option<crate::health::HealthSpec>>,
}

impl Shared {
    pub fn new(state_path: PathBuf, initial: ContainerState, kill_grace: Duration) -> Self {
        Self {
            state_path,
            state: Mutex::new(initial),
            changed: Condvar::new(),
            agent: Mutex::new(None),
            vmm: Mutex::new(None),
            stop_requested: AtomicBool::new(false),
            kill_grace,
            dialer: Mutex::new(None),
            attachers: Attachers::new(),
            stdin_window: crate::streams::StdinWindow::default(),
            stdio_path: Mutex::new(None),
            execs: Arc::new(Mutex::new(HashMap::new())),
            clock_resync: Arc::new(AtomicBool::new(false)),
            health: Mutex::new(None),
        }
    }

    /// Run this healthcheck while the process runs.
    pub fn set_health(&self, spec: crate::health::HealthSpec) {
        *lock(&self.health) = Some(spec);
    }

    /// Where the guest's agent is reached for more connections.
    pub fn set_dialer(&self, d: GuestDialer) {
        *lock(&self.dialer) = Some(d);
    }

    /// Where the main process's output is logged (this run's from its
    /// current end on).
    pub fn set_stdio_path(&self, p: PathBuf) {
        let start = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        *lock(&self.stdio_path) = Some((p, start));
    }

    /// Wait until the container runs (or ended), up to `limit`.
    fn wait_started(&self, limit: Duration) -> Status {
        let s = lock(&self.state);
        let (s, _) = self
            .changed
            .wait_timeout_while(s, limit, |s| {
                matches!(s.status, Status::Created | Status::Starting)
            })
            .unwrap_or_else(PoisonError::into_inner);
        s.status
    }

    /// The dialer, when the container's process runs.
    pub(crate) fn running_dialer(&self) -> Result<GuestDialer, String> {
        let status = lock(&self.state).status;
        match status {
            Status::Running => {}
            Status::Paused => return Err("the container is paused; unpause it first".into()),
            other => {
                return Err(format!(
                    "the container is not running ({})",
                    format!("{other:?}").to_lowercase()
                ))
            }
        }
        lock(&self.dialer)
            .clone()
            .ok_or_else(|| "the container is not running".to_string())
    }

    /// What this run logged so far, for a client attaching with `logs`.
    fn logged_output(&self) -> Vec<(vessel_api::types::Stream, Vec<u8>)> {
        use std::io::{Read, Seek};
        let Some((path, start)) = lock(&self.stdio_path).clone() else {
            return Vec::new();
        };
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            if f.seek(std::io::SeekFrom::Start(start)).is_ok() {
                let _ = f.read_to_string(&mut text);
            }
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<vessel_api::types::LogRecord>(l).ok())
            .map(|r| (r.stream, r.data()))
            .collect()
    }

    /// Serve an attached client: output (and the log so far with `logs`)
    /// to it, its stdin to the main process when `stdin`.
    fn attach(&self, conn: UnixStream, req: AttachRequest) {
        // Neither stream asked for: both (Docker's `attach` without `-a`).
        let both = !req.stdout && !req.stderr;
        let wanted = (req.stdout || both, req.stderr || both);
        let (stdin, logs) = (req.stdin, req.logs);
        let status = self.wait_started(Duration::from_secs(120));
        let mut w = &conn;
        if status == Status::Exited {
            let _ = w.write_all(crate::streams::answer_line(&Ok(())).as_bytes());
            if logs {
                for (stream, data) in self.logged_output() {
                    if !crate::streams::wants(wanted, stream) {
                        continue;
                    }
                    let kind = match stream {
                        vessel_api::types::Stream::Stdout => FrameKind::Stdout,
                        vessel_api::types::Stream::Stderr => FrameKind::Stderr,
                    };
                    if write_frame(&mut w, kind, &data).is_err() {
                        return;
                    }
                }
            }
            let s = self.snapshot();
            let _ = write_message(
                &mut w,
                &GuestMessage::Exited {
                    exit_code: s.exit_code.unwrap_or(0),
                    signal: None,
                },
            );
            return;
        }
        if w.write_all(crate::streams::answer_line(&Ok(())).as_bytes())
            .is_err()
        {
            return;
        }
        let Ok(out) = conn.try_clone() else { return };
        let client = self.attachers.attach(out, wanted, || {
            if logs {
                self.logged_output()
            } else {
                Vec::new()
            }
        });
        // The client's stdin (when it asked) and resizes to the main
        // process; then, after the end of its input, wait for it to hang up
        // and let it go (a client that only reads would otherwise be held
        // until the container next writes something).
        let mut r = std::io::BufReader::new(&conn);
        while let Ok(Some(frame)) = read_frame(&mut r) {
            let Some(agent) = lock(&self.agent).clone() else {
                break;
            };
            let sent = match frame.kind {
                FrameKind::Stdin if !stdin => Ok(()),
                FrameKind::Control
                    if !stdin
                        && matches!(
                            decode_message::<HostMessage>(&frame),
                            Ok(HostMessage::CloseStdin)
                        ) =>
                {
                    Ok(())
                }
                FrameKind::Stdin => {
                    let sent =
                        crate::streams::send_stdin(&self.stdin_window, &frame.payload, |chunk| {
                            agent.send_frame(FrameKind::Stdin, chunk).is_ok()
                        });
                    if !sent {
                        break;
                    }
                    Ok(())
                }
                FrameKind::Control => match decode_message::<HostMessage>(&frame) {
                    Ok(m @ (HostMessage::CloseStdin | HostMessage::Resize { .. })) => {
                        agent.send(&m)
                    }
                    _ => break,
                },
                _ => break,
            };
            if sent.is_err() {
                break;
            }
        }
        crate::streams::wait_hangup(&conn);
        self.attachers.detach(client);
    }

    /// Change the state and write `state.json`.
    pub fn update(&self, f: impl FnOnce(&mut ContainerState)) {
        let mut s = lock(&self.state);
        f(&mut s);
        if let Err(e) = write_json_atomic(&self.state_path, &*s) {
            log(&format!(
                "could not write {}: {e}",
                self.state_path.display()
            ));
        }
        self.changed.notify_all();
    }

    /// Record the end of the container, once: the first outcome wins.
    /// With `keep_code`, an exit code recorded earlier is kept.
    fn finish(&self, exit_code: i32, error: Option<String>, keep_code: bool) {
        if lock(&self.state).status == Status::Exited {
            return;
        }
        self.update(|s| {
            s.status = Status::Exited;
            if !(keep_code && s.exit_code.is_some()) {
                s.exit_code = Some(exit_code);
            }
            s.finished_ms = Some(now_ms());
            if error.is_some() {
                s.error = error;
            }
        });
    }

    pub fn snapshot(&self) -> ContainerState {
        lock(&self.state).clone()
    }

    /// Wait until the container has exited, up to `limit`.
    fn wait_exited(&self, limit: Duration) -> bool {
        let s = lock(&self.state);
        let (s, _) = self
            .changed
            .wait_timeout_while(s, limit, |s| s.status != Status::Exited)
            .unwrap_or_else(PoisonError::into_inner);
        s.status == Status::Exited
    }

    pub fn set_vmm(&self, vmm: Box<dyn Vmm>) {
        *lock(&self.vmm) = Some(vmm);
    }

    fn vmm_exited(&self) -> bool {
        match lock(&self.vmm).as_mut() {
            Some(v) => matches!(v.try_wait(), Ok(Some(_))),
            None => false,
        }
    }

    /// Why the jail killed the VMM, once it has exited (see
    /// [`Vmm::end_reason`]).
    fn vmm_end_reason(&self) -> Option<crate::vmm::JailKill> {
        let mut vmm = lock(&self.vmm);
        let v = vmm.as_mut()?;
        v.try_wait().ok()??;
        v.end_reason()
    }

    fn kill_vmm(&self) {
        if let Some(v) = lock(&self.vmm).as_mut() {
            if let Err(e) = v.kill() {
                log(&format!("killing the VMM: {}", chain(&e)));
            }
        }
    }

    /// Wait up to `limit` for the VMM to exit by itself.
    fn wait_vmm(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.vmm_exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.vmm_exited()
    }

    fn stopping(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst)
    }
}

impl Shared {
    /// The guest's statistics (or a pod container's, `group`) and the
    /// VMM's resident memory.
    fn stats_of(&self, group: Option<&str>) -> Result<ContainerStats, String> {
        let dialer = self.running_dialer()?;
        let guest = match group {
            None => crate::streams::read_stats(&dialer)?,
            Some(g) => crate::streams::read_group_stats(&dialer, g)?,
        };
        let vmm_rss_bytes = lock(&self.state)
            .vmm_pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        Ok(ContainerStats {
            guest,
            vmm_rss_bytes,
            read_ms: now_ms(),
        })
    }
}

impl ControlHandler for Shared {
    fn signal(&self, signal: i32, group: bool) -> Result<(), String> {
        let status = lock(&self.state).status;
        let agent = lock(&self.agent).clone();
        match agent {
            Some(a) if matches!(status, Status::Running | Status::Stopping) => a
                .send(&HostMessage::Signal { signal, group })
                .map_err(|e| format!("could not signal the container: {}", chain(&e))),
            _ => Err(format!(
                "the container is not running ({})",
                format!("{status:?}").to_lowercase()
            )),
        }
    }

    fn stop(&self, timeout: Duration) -> Result<(), String> {
        if lock(&self.state).status == Status::Paused {
            // A paused VM cannot hear SIGTERM: resume it first (Docker too).
            let _ = self.pause(false);
        }
        if lock(&self.state).status == Status::Exited {
            // The process has ended and only the VM's power-off is left:
            // nothing in it matters any more, and until the VMM is gone it
            // holds the container's files (its overlay disk) open. `vessel
            // rm` asks for this, so the space is free when it returns.
            self.kill_vmm();
            return Ok(());
        }
        self.stop_requested.store(true, Ordering::SeqCst);
        let agent = lock(&self.agent).clone();
        match agent {
            Some(a) => {
                self.update(|s| {
                    if s.status == Status::Running {
                        s.status = Status::Stopping;
                    }
                });
                let _ = a.send(&HostMessage::Signal {
                    signal: libc::SIGTERM,
                    group: false,
                });
                if !self.wait_exited(timeout) {
                    log("the container ignored SIGTERM; sending SIGKILL");
                    let _ = a.send(&HostMessage::Signal {
                        signal: libc::SIGKILL,
                        group: false,
                    });
                    if !self.wait_exited(self.kill_grace) {
                        log("the container survived SIGKILL; killing the VM");
                        self.kill_vmm();
                    }
                }
            }
            // Not started yet: no process to signal, stop the VM.
            None => self.kill_vmm(),
        }
        if self.wait_exited(self.kill_grace * 3) {
            Ok(())
        } else {
            Err("the container did not stop".into())
        }
    }

    fn state(&self) -> ContainerState {
        self.snapshot()
    }

    fn stats(&self) -> Result<ContainerStats, String> {
        self.stats_of(None)
    }

    fn group_stats(&self, group: &str) -> Result<ContainerStats, String> {
        self.stats_of(Some(group))
    }

    fn pause(&self, paused: bool) -> Result<(), String> {
        let status = lock(&self.state).status;
        match (paused, status) {
            (true, Status::Running) | (false, Status::Paused) => {}
            (true, Status::Paused) | (false, Status::Running) => return Ok(()),
            (_, other) => {
                return Err(format!(
                    "the container is not running ({})",
                    format!("{other:?}").to_lowercase()
                ))
            }
        }
        match lock(&self.vmm).as_mut() {
            Some(v) => v.pause(paused).map_err(|e| chain(&e))?,
            None => return Err("the container has no VM".into()),
        }
        self.update(|s| {
            if matches!(s.status, Status::Running | Status::Paused) {
                s.status = if paused {
                    Status::Paused
                } else {
                    Status::Running
                };
            }
        });
        if !paused {
            // Its clock stood still while paused.
            self.clock_resync.store(true, Ordering::SeqCst);
        }
        log(if paused { "paused" } else { "resumed" });
        Ok(())
    }

    fn resize(&self, size: WinSize) -> Result<(), String> {
        let agent = lock(&self.agent).clone();
        match agent {
            Some(a) => a
                .send(&HostMessage::Resize {
                    rows: size.rows,
                    cols: size.cols,
                })
                .map_err(|e| chain(&e)),
            None => Err("the container is not running".into()),
        }
    }

    fn exec_state(&self, exec_id: &str) -> Option<ExecState> {
        lock(&self.execs).get(exec_id).cloned()
    }

    fn top(&self) -> Result<Vec<agent_protocol::ProcessInfo>, String> {
        crate::streams::read_processes(&self.running_dialer()?)
    }

    fn exec_detached(&self, req: agent_protocol::ExecRequest) -> Result<i32, String> {
        let dialer = self.running_dialer()?;
        let id = req.exec_id.clone();
        log(&format!("exec {id} (detached): {:?}", req.process.args));
        let execs = Arc::clone(&self.execs);
        let done_id = id.clone();
        let pid = crate::streams::exec_detached(&dialer, req, move |exit_code| {
            log(&format!("exec {done_id} ended: {exit_code:?}"));
            lock(&execs).insert(
                done_id,
                ExecState {
                    running: false,
                    exit_code,
                },
            );
        })?;
        lock(&self.execs).entry(id).or_insert(ExecState {
            running: true,
            exit_code: None,
        });
        Ok(pid)
    }

    fn stream(&self, request: ControlRequest, conn: UnixStream) {
        let refuse = |conn: &UnixStream, e: String| {
            let mut w = conn;
            let _ = w.write_all(crate::streams::answer_line(&Err(e)).as_bytes());
        };
        match request {
            ControlRequest::Attach(a) => self.attach(conn, a),
            ControlRequest::Exec(req) => {
                let dialer = match self.running_dialer() {
                    Ok(d) => d,
                    Err(e) => return refuse(&conn, e),
                };
                let id = req.exec_id.clone();
                lock(&self.execs).insert(
                    id.clone(),
                    ExecState {
                        running: true,
                        exit_code: None,
                    },
                );
                log(&format!("exec {id}: {:?}", req.process.args));
                let seen = crate::streams::exec(&dialer, req, conn);
                let exit_code = seen.ok().and_then(|s| s.exit).map(|(code, _)| code);
                log(&format!("exec {id} ended: {exit_code:?}"));
                lock(&self.execs).insert(
                    id,
                    ExecState {
                        running: false,
                        exit_code,
                    },
                );
            }
            ControlRequest::CopyOut {
                path,
                one_file_system,
            } => match self.running_dialer() {
                Ok(d) => {
                    let _ = crate::streams::copy_out(&d, path, one_file_system, conn);
                }
                Err(e) => refuse(&conn, e),
            },
            ControlRequest::CopyIn { path } => match self.running_dialer() {
                Ok(d) => {
                    let _ = crate::streams::copy_in(&d, path, conn);
                }
                Err(e) => refuse(&conn, e),
            },
            other => refuse(&conn, format!("{other:?} is not a streaming request")),
        }
    }
}

/// How the conversation with the guest ended.
#[derive(Debug)]
enum End {
    Exited(i32),
    StartFailed(i32, String),
    /// The guest refused to start (version, agent error).
    Refused(String),
    /// The connection dropped, the VMM died, or the guest broke the protocol.
    Lost(Option<String>),
    /// A VM restored from a template could not become the container's own:
    /// nothing ran; the next boot attempt boots the kernel.
    Retry(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    /// A VM restored from a template becoming the container's own.
    Adopting,
    /// Setting the guest's clock before the start (see [`crate::clock`]).
    Clock,
    Starting,
    Running,
}

/// Start rounds of clock probes while the container runs: every
/// [`clock::SYNC_INTERVAL`], and at once when the host's clock jumps.
fn keep_clock_in_step(
    clock: Arc<Mutex<ClockSync>>,
    tx: AgentSender,
    done: Arc<AtomicBool>,
    resync: Arc<AtomicBool>,
) {
    let mut watch = HostClockWatch::new();
    watch.jumped();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let jumped = watch.jumped();
        if jumped {
            log("the host's clock jumped; setting the guest's clock again");
        }
        let forced = jumped || resync.swap(false, Ordering::SeqCst);
        let probe = {
            let mut c = lock(&clock);
            if c.due(Instant::now(), forced) {
                c.begin_round()
            } else {
                None
            }
        };
        if let Some(p) = probe {
            if tx.send(&p).is_err() {
                break;
            }
        }
    }
}

/// Steps 6-10: connect to vminitd, run the process, record its end, power
/// the VM off. The VMM must already be in `shared`. `Err` only when the
/// container never started (the state then says why, with exit code 125).
#[allow(clippy::too_many_arguments)]
pub fn supervise(
    shared: &Arc<Shared>,
    request: StartRequest,
    mut adopt: Option<agent_protocol::AdoptRequest>,
    connect: &mut dyn FnMut() -> Result<UnixStream, TransportError>,
    stdio: &mut StdioLog,
    launched: Instant,
    boot_log: &Path,
    t: &Timeouts,
) -> Result<(), RunError> {
    let see_boot_log = format!("see {}", boot_log.display());
    // Connect, retrying while the guest boots.
    let deadline = launched + t.connect;
    let attempt_deadline = launched + t.boot_attempt;
    let stream = loop {
        if shared.stopping() {
            shared.kill_vmm();
            shared.finish(EXIT_KILLED, None, true);
            return Ok(());
        }
        if shared.vmm_exited() {
            if let Some((code, tag, why)) = shared.vmm_end_reason() {
                let msg = format!("{why}; {see_boot_log}");
                shared.update(|s| s.killed_by = Some(tag.to_string()));
                shared.finish(code, Some(msg.clone()), false);
                return Err(RunError::NoAgent(msg));
            }
            let msg = format!("the VM exited before its agent answered; {see_boot_log}");
            shared.finish(EXIT_START_FAILED, Some(msg.clone()), false);
            return Err(RunError::NoAgent(msg));
        }
        match connect() {
            Ok(s) => break s,
            Err(e) if t.boot_attempt < t.connect && Instant::now() >= attempt_deadline => {
                shared.kill_vmm();
                return Err(RunError::BootAttempt(format!(
                    "the VM's agent did not answer within {} s ({})",
                    t.boot_attempt.as_secs(),
                    chain(&e)
                )));
            }
            Err(e) if Instant::now() >= deadline => {
                shared.kill_vmm();
                let msg = format!(
                    "the VM's agent did not answer within {} s ({}); {see_boot_log}",
                    t.connect.as_secs(),
                    chain(&e)
                );
                shared.finish(EXIT_START_FAILED, Some(msg.clone()), false);
                return Err(RunError::NoAgent(msg));
            }
            Err(_) => std::thread::sleep(t.retry),
        }
    };
    log(&format!(
        "connected to the guest agent after {} ms",
        launched.elapsed().as_millis()
    ));
    let (tx, mut rx) = match agent::split(stream) {
        Ok(pair) => pair,
        Err(e) => {
            shared.kill_vmm();
            shared.finish(EXIT_START_FAILED, Some(chain(&e)), false);
            return Err(e.into());
        }
    };

    // Close the connection when the VMM dies, which wakes the reader.
    let done = Arc::new(AtomicBool::new(false));
    {
        let (shared, tx, done) = (Arc::clone(shared), tx.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if shared.vmm_exited() {
                    tx.shutdown();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    let mut phase = Phase::Hello;
    let mut request = Some(request);
    let clock = Arc::new(Mutex::new(ClockSync::new()));
    let mut clock_feature = false;
    let end = match tx.send(&HostMessage::Hello { version: VERSION }) {
        Err(e) => End::Lost(Some(chain(&e))),
        Ok(()) => loop {
            let received = rx.recv();
            // A clock answer's receive time, taken before anything else.
            let t4 = clock::host_realtime_ns();
            let msg = match received {
                Ok(None) => break End::Lost(None),
                Err(e) => break End::Lost(Some(chain(&e))),
                Ok(Some(Incoming::Output(stream, data))) => {
                    shared.attachers.output(stream, &data, || {
                        if let Err(e) = stdio.append(stream, &data) {
                            log(&format!("writing stdio.log: {e}"));
                        }
                    });
                    continue;
                }
                Ok(Some(Incoming::Message(m))) => m,
            };
            match (phase, msg) {
                (
                    Phase::Hello,
                    GuestMessage::Hello {
                        version,
                        uptime_ms,
                        features,
                    },
                ) => {
                    if version != VERSION {
                        break End::Refused(format!(
                            "the guest agent speaks protocol version {version}, this runtime {VERSION}"
                        ));
                    }
                    let wants_network = request.as_ref().is_some_and(|r| r.network.is_some());
                    if wants_network && !features.iter().any(|f| f == FEATURE_NETWORK) {
                        break End::Refused(
                            "the guest's vminitd cannot configure networks: its initramfs is \
                             older than this vessel-runtime; install the guest assets built \
                             with it (scripts/setup.sh), or run with --network none"
                                .into(),
                        );
                    }
                    let wants_rlimits = request
                        .as_ref()
                        .is_some_and(|r| r.process.rlimits.is_some());
                    if wants_rlimits && !features.iter().any(|f| f == FEATURE_RLIMITS) {
                        break End::Refused(
                            "the guest's vminitd cannot set resource limits: its initramfs is \
                             older than this vessel-runtime; install the guest assets built \
                             with it (scripts/setup.sh)"
                                .into(),
                        );
                    }
                    let wants_mounts = request
                        .as_ref()
                        .is_some_and(|r| !r.mounts.is_empty() || r.read_only_root);
                    if wants_mounts && !features.iter().any(|f| f == FEATURE_MOUNTS) {
                        break End::Refused(
                            "the guest's vminitd cannot mount volumes, bind mounts or tmpfs: \
                             its initramfs is older than this vessel-runtime; install the guest \
                             assets built with it (scripts/setup.sh)"
                                .into(),
                        );
                    }
                    log(&format!("guest agent ready at guest uptime {uptime_ms} ms"));
                    if features.iter().any(|f| f == FEATURE_STDIN_CREDIT) {
                        shared.stdin_window.enable();
                    }
                    clock_feature = features.iter().any(|f| f == FEATURE_CLOCK);
                    if let Some(a) = adopt.take() {
                        if !features.iter().any(|f| f == FEATURE_ADOPT) {
                            break End::Refused(
                                "the VM template's vminitd cannot adopt a restored VM: its \
                                 initramfs is older than this vessel-runtime"
                                    .into(),
                            );
                        }
                        phase = Phase::Adopting;
                        if let Err(e) = tx.send(&HostMessage::Adopt(a)) {
                            break End::Lost(Some(chain(&e)));
                        }
                        continue;
                    }
                    if let Err(e) = begin(&tx, &clock, clock_feature, &mut request, &mut phase) {
                        break End::Lost(Some(e));
                    }
                }
                (Phase::Adopting, GuestMessage::Adopted { uptime_ms }) => {
                    log(&format!(
                        "the restored VM is the container's own (entropy, MAC, disk) at guest uptime {uptime_ms} ms"
                    ));
                    if let Err(e) = begin(&tx, &clock, clock_feature, &mut request, &mut phase) {
                        break End::Lost(Some(e));
                    }
                }
                (Phase::Clock | Phase::Running, GuestMessage::Clock { id, realtime_ns }) => {
                    let started = phase == Phase::Running;
                    let next = lock(&clock).on_reply(id, realtime_ns, t4, started);
                    let sent = match next {
                        clock::Next::Ignore => Ok(()),
                        clock::Next::Probe(p) => tx.send(&p).map_err(|e| chain(&e)),
                        clock::Next::Adjust { adjust, best } => {
                            // Slews of more than a millisecond are worth a line: they
                            // show the guest's drift.
                            let big = best.offset_ns.abs() >= 1_000_000;
                            if !started || big {
                                let verb = match &adjust {
                                    _ if !started => "set",
                                    HostMessage::AdjustClock {
                                        mode: agent_protocol::AdjustMode::Step,
                                        ..
                                    } => "stepped",
                                    _ => "slewed",
                                };
                                log(&format!(
                                    "guest clock {verb} by {:.6} s (round trip {} µs)",
                                    -best.offset_ns as f64 / 1e9,
                                    best.rtt_ns / 1000
                                ));
                            }
                            let r = tx.send(&adjust).map_err(|e| chain(&e));
                            if started {
                                r
                            } else {
                                phase = Phase::Starting;
                                r.and_then(|()| send_start(&tx, &mut request))
                            }
                        }
                    };
                    if let Err(e) = sent {
                        break End::Lost(Some(e));
                    }
                }
                (Phase::Starting, GuestMessage::Clock { .. }) => {}
                (Phase::Starting, GuestMessage::Started { pid, uptime_ms }) => {
                    let boot_ms = launched.elapsed().as_millis() as u64;
                    log(&format!(
                        "process started: guest pid {pid}, guest uptime {uptime_ms} ms, {boot_ms} ms after launch"
                    ));
                    let health = lock(&shared.health).clone();
                    // The sender first: whoever sees `Running` (a `kill`
                    // right after `run -d`) must be able to signal.
                    *lock(&shared.agent) = Some(tx.clone());
                    shared.update(|s| {
                        s.status = Status::Running;
                        s.started_ms = Some(now_ms());
                        s.guest_uptime_at_start_ms = Some(uptime_ms);
                        s.boot_ms = Some(boot_ms);
                        s.health = health
                            .as_ref()
                            .map(|_| vessel_api::health::Health::starting());
                    });
                    phase = Phase::Running;
                    if let Some(spec) = health {
                        let (shared, done) = (Arc::clone(shared), Arc::clone(&done));
                        std::thread::spawn(move || crate::health::monitor(shared, spec, done));
                    }
                    if clock_feature {
                        let (clock, tx, done) = (Arc::clone(&clock), tx.clone(), Arc::clone(&done));
                        let resync = Arc::clone(&shared.clock_resync);
                        std::thread::spawn(move || keep_clock_in_step(clock, tx, done, resync));
                    }
                }
                (Phase::Starting, GuestMessage::StartFailed { exit_code, message }) => {
                    break End::StartFailed(exit_code, message);
                }
                (Phase::Starting | Phase::Running, GuestMessage::Exited { exit_code, signal }) => {
                    log(&format!(
                        "process exited: code {exit_code}, signal {signal:?}"
                    ));
                    break End::Exited(exit_code);
                }
                (Phase::Starting | Phase::Running, GuestMessage::StdinCredit { bytes }) => {
                    shared.stdin_window.release(bytes);
                }
                (Phase::Running, GuestMessage::Error { message }) => {
                    log(&format!("guest agent error: {message}"));
                }
                (Phase::Adopting, GuestMessage::Error { message }) => {
                    break End::Retry(format!("the restored VM could not be adopted: {message}"));
                }
                (_, GuestMessage::Error { message }) => {
                    break End::Refused(format!("the guest agent failed: {message}"));
                }
                (p, m) => {
                    break End::Lost(Some(format!("the guest agent sent {m:?} while {p:?}")));
                }
            }
        },
    };
    let end = match end {
        End::Lost(why) if phase == Phase::Adopting && !shared.stopping() => End::Retry(format!(
            "the restored VM was lost while being adopted ({})",
            why.unwrap_or_else(|| "connection closed".into())
        )),
        other => other,
    };
    if let End::Retry(why) = end {
        // Attached clients wait for the next boot.
        shared.kill_vmm();
        done.store(true, Ordering::SeqCst);
        tx.shutdown();
        return Err(RunError::BootAttempt(why));
    }
    *lock(&shared.agent) = None;
    shared.stdin_window.close();
    // Attached clients hear how it ended.
    match &end {
        End::Exited(code) | End::StartFailed(code, _) => shared.attachers.close(*code, None),
        End::Refused(_) => shared.attachers.close(EXIT_START_FAILED, None),
        End::Lost(_) | End::Retry(_) => shared.attachers.close(EXIT_VM_LOST, None),
    }

    let mut result = Ok(());
    let orderly = match end {
        End::Retry(_) => unreachable!("returned above"),
        End::Exited(code) => {
            if let Err(e) = stdio.sync() {
                log(&format!("syncing stdio.log: {e}"));
            }
            shared.finish(code, None, false);
            true
        }
        End::StartFailed(code, message) => {
            log(&format!("the guest could not start the process: {message}"));
            shared.finish(code, Some(message), false);
            true
        }
        End::Refused(message) => {
            log(&message);
            shared.finish(EXIT_START_FAILED, Some(message.clone()), false);
            result = Err(RunError::NoAgent(message));
            false
        }
        End::Lost(detail) => {
            if let Some(d) = &detail {
                log(&format!("agent connection lost: {d}"));
            }
            let _ = stdio.sync();
            // The agent's link is a socket QEMU holds: it closes as QEMU
            // dies, a moment before QEMU can be reaped. How QEMU ended
            // (its jail's seccomp filter or memory ceiling) decides what
            // is recorded.
            if !shared.stopping() {
                shared.wait_vmm(Duration::from_secs(1));
            }
            let jailed = shared.vmm_end_reason();
            if shared.stopping() {
                shared.finish(EXIT_KILLED, None, true);
            } else if let Some((code, tag, why)) = jailed {
                log(&format!("the VMM was killed: {why}"));
                let msg = format!("{why}; {see_boot_log}");
                shared.update(|s| s.killed_by = Some(tag.to_string()));
                shared.finish(code, Some(msg.clone()), false);
                if phase != Phase::Running {
                    result = Err(RunError::NoAgent(msg));
                }
            } else if phase == Phase::Running {
                shared.finish(
                    EXIT_VM_LOST,
                    Some(format!("the VM stopped unexpectedly; {see_boot_log}")),
                    true,
                );
            } else {
                let msg = format!("the VM stopped before the container started; {see_boot_log}");
                shared.finish(EXIT_START_FAILED, Some(msg.clone()), false);
                result = Err(RunError::NoAgent(msg));
            }
            false
        }
    };

    // Power off: ask the guest, give it time, then kill the VMM.
    let grace = if orderly {
        let _ = tx.send(&HostMessage::Shutdown);
        t.shutdown
    } else {
        Duration::from_secs(1)
    };
    if !shared.wait_vmm(grace) {
        log("the VM did not power off; killing it");
        shared.kill_vmm();
    }
    done.store(true, Ordering::SeqCst);
    tx.shutdown();
    result
}

/// After the greeting (and a restored VM's adoption): the clock first when
/// the guest can set it, then the start.
fn begin(
    tx: &AgentSender,
    clock: &Mutex<ClockSync>,
    clock_feature: bool,
    request: &mut Option<StartRequest>,
    phase: &mut Phase,
) -> Result<(), String> {
    let first_probe = if clock_feature {
        lock(clock).begin_round()
    } else {
        log(
            "the guest's vminitd cannot set its clock (an older initramfs?); \
             the container's clock starts at 1970",
        );
        None
    };
    match first_probe {
        Some(probe) => {
            *phase = Phase::Clock;
            tx.send(&probe).map_err(|e| chain(&e))
        }
        None => {
            *phase = Phase::Starting;
            send_start(tx, request)
        }
    }
}

/// Send `Start` with the request (once).
fn send_start(tx: &AgentSender, request: &mut Option<StartRequest>) -> Result<(), String> {
    let req = request.take().ok_or_else(|| "second Hello".to_string())?;
    tx.send(&HostMessage::Start(req)).map_err(|e| chain(&e))
}

/// `VESSEL_QEMU_IMG`, else `qemu-img` from `PATH`.
pub(crate) fn qemu_img_binary() -> PathBuf {
    std::env::var_os("VESSEL_QEMU_IMG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

/// Create `overlay` as a qcow2 backed by the read-only `base`, unless it exists.
pub(crate) fn create_overlay(base: &Path, overlay: &Path) -> Result<(), RunError> {
    if overlay.exists() {
        return Ok(());
    }
    if !base.is_file() {
        return Err(RunError::NoRootfs(base.to_path_buf()));
    }
    let qemu_img = qemu_img_binary();
    let tmp = overlay.with_extension("qcow2.tmp");
    let _ = std::fs::remove_file(&tmp);
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(&tmp)
        .output()
        .map_err(RunError::QemuImgSpawn)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RunError::QemuImg(
            overlay.to_path_buf(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    std::fs::rename(&tmp, overlay)
        .map_err(|e| RunError::QemuImg(overlay.to_path_buf(), e.to_string()))
}

/// The container id a container directory is named after.
fn id_of(dir: &Path) -> &str {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unknown")
}

/// Let the VM's user create its sockets in the run directory (group
/// `uid`, `rwx`), sticky so it cannot remove or replace the runtime's.
fn hand_over_dir(dir: &Path, uid: u32) -> Result<(), RunError> {
    let err = |e| RunError::RunDir(dir.to_path_buf(), e);
    std::os::unix::fs::chown(dir, Some(0), Some(uid)).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1770)).map_err(err)
}

pub(crate) fn make_run_dir(dir: &Path) -> Result<(), RunError> {
    let err = |e| RunError::RunDir(dir.to_path_buf(), e);
    // A stale directory from a crashed runtime holds only dead sockets.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Run container `id` of `home` to its end. `Err` when it could not be
/// started (state.json then says why).
pub fn run(home: &Home, id: &str) -> Result<(), RunError> {
    let dir = home.container_dir(id);
    let config_path = dir.join("config.json");
    let state_path = dir.join("state.json");
    let config: ContainerConfig = read_json(&config_path)
        .map_err(|e| RunError::Config(config_path.clone(), e))?
        .ok_or_else(|| RunError::NoConfig(config_path.clone()))?;
    let t = Timeouts::default();
    let me = std::process::id() as i32;
    let mut initial = ContainerState::created();
    initial.status = Status::Starting;
    initial.runtime_pid = Some(me);
    initial.runtime_start_time = pid_start_time(me);
    let shared = Arc::new(Shared::new(state_path, initial, t.kill_grace));
    if let Some(check) = config.healthcheck.clone() {
        shared.set_health(crate::health::HealthSpec {
            check,
            process: config.process.clone(),
        });
    }
    shared.update(|_| {});
    log(&format!("starting container {id} ({})", config.name));

    // Before any thread exists, so all of them inherit the mask.
    let signals = crate::proc::block_stop_signals().map_err(RunError::Signals);
    if signals.is_ok() {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            while let Ok(sig) = crate::proc::wait_stop_signal() {
                log(&format!("received signal {sig}; stopping the container"));
                if let Err(e) = shared.stop(Duration::from_secs(10)) {
                    log(&format!("stop: {e}"));
                }
            }
        });
    }

    let run_dir = home.run_dir(id);
    let mut jail = None;
    let mut transport = None;
    let mut passts = Vec::new();
    let mut shares = Vec::new();
    let networks = ContainerNetworks::read(&dir);
    if let Ok(Some(n)) = &networks {
        for a in &n.attachments {
            let via = match a.mode {
                AttachmentMode::Bridge => a.tap.clone(),
                AttachmentMode::User => "passt".to_string(),
            };
            log(&format!(
                "network {}: {} ({}) on {via}",
                a.network, a.ip, a.mac
            ));
        }
    }
    let networks_path = ContainerNetworks::path(&dir);
    let result = signals.and_then(|()| networks.map_err(|e| RunError::Config(networks_path, e)));
    // Held until this helper ends (after the VM): one VM per block volume.
    let volumes = crate::mounts::volume_disks(home, &config);
    let mut _volume_locks = crate::mounts::VolumeLocks::default();
    let result = result.and_then(|networks| {
        jail = crate::jail::VmJail::prepare(id)?;
        if let Some(j) = &jail {
            log(&format!(
                "VMM confinement: seccomp, {}, ceilings by {}",
                match j.uid() {
                    Some(uid) => format!("user {uid}, own mount namespace"),
                    None if j.userns =>
                        "rootless (runs as this user), own user and mount namespace".to_string(),
                    None => "rootless (runs as this user)".to_string(),
                },
                j.ceilings.name()
            ));
        }
        Ok(networks)
    });
    let result = result.and_then(|networks| {
        // A container that has just ended on the same volume may still be
        // powering off: up to its shutdown grace and the kill after it.
        _volume_locks = crate::mounts::VolumeLocks::take(&volumes, t.shutdown + t.kill_grace)?;
        Ok(networks)
    });
    let result = result.and_then(|networks| {
        let request = StartRequest {
            process: config.process.clone(),
            hostname: config.hostname.clone(),
            root_device: root_device(&config).into(),
            root_fstype: root_fstype(&config).into(),
            network: networks
                .as_ref()
                .and_then(|n| n.guest_config(&config.hostname, &config.name)),
            tty_size: None,
            mounts: crate::mounts::guest_mounts(&config),
            read_only_root: config.read_only,
        };
        let mut attempt = 1;
        loop {
            // The last boot may take all of `connect`.
            let mut ta = t.clone();
            if attempt >= t.boot_attempts.max(1) {
                ta.boot_attempt = ta.connect;
            }
            let r = launch(
                home,
                &config,
                &volumes,
                networks.as_ref(),
                &dir,
                &run_dir,
                &shared,
                &mut transport,
                &mut passts,
                &mut shares,
                jail.as_mut(),
                // A VM that did not come up from a template boots its kernel.
                attempt == 1,
                &t,
            )
            .and_then(|(mut stdio, launched, mut gate, adopt)| {
                let uds = run_dir.join("vsock.sock");
                let mut logged = false;
                let mut connect = || {
                    if !gate.open() {
                        return Err(TransportError::GuestNotReady);
                    }
                    if !logged {
                        logged = true;
                        match gate.signalled_after() {
                            Some(d) => {
                                log(&format!("guest agent port up after {} ms", d.as_millis()))
                            }
                            None => {
                                log("no answer on the guest's agent port yet; connecting anyway")
                            }
                        }
                    }
                    transport::hybrid_connect(&uds, AGENT_PORT, t.connect_reply)
                };
                supervise(
                    &shared,
                    request.clone(),
                    adopt,
                    &mut connect,
                    &mut stdio,
                    launched,
                    &dir.join("boot.log"),
                    &ta,
                )
            });
            match r {
                Err(RunError::BootAttempt(why)) if !shared.stopping() => {
                    // Nothing ran in the guest: boot a fresh VM on the same
                    // disk. The stalled boot's console is kept for diagnosis.
                    log(&format!("boot attempt {attempt}: {why}; booting again"));
                    shared.kill_vmm();
                    // The next VM gets a new port.
                    transport = None;
                    // Its published ports are bound again by the next one.
                    kill_passts(&mut passts);
                    // Each serves one connection: the next VM gets new ones.
                    shares.clear();
                    let _ = std::fs::rename(
                        dir.join("boot.log"),
                        dir.join(format!("boot.{attempt}.log")),
                    );
                    attempt += 1;
                }
                other => break other,
            }
        }
    });
    if let Err(e) = &result {
        log(&format!("error: {}", chain(e)));
        shared.finish(EXIT_START_FAILED, Some(chain(e)), false);
    }
    shared.kill_vmm();
    drop(transport.take());
    kill_passts(&mut passts);
    shares.clear();
    if let Some(j) = jail.as_mut() {
        if let Some(peak) = j.cgroup.as_ref().and_then(|c| c.peak_bytes()) {
            log(&format!(
                "the VM's peak memory: {} MiB (ceiling {} MiB)",
                peak / (1024 * 1024),
                crate::jail::memory_ceiling_mib(config.memory_mib, &config.accel)
            ));
        }
        j.finish();
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    log(&format!(
        "container {id} ended with exit code {}",
        shared.snapshot().exit_code.unwrap_or(-1)
    ));
    result
}

fn kill_passts(passts: &mut Vec<Passt>) {
    for mut p in passts.drain(..) {
        p.kill();
    }
}

/// One NIC per attachment: its TAP device, or a passt started for it.
fn start_nics(
    networks: Option<&ContainerNetworks>,
    dir: &Path,
    run_dir: &Path,
    passts: &mut Vec<Passt>,
    taps: &mut Vec<std::os::fd::OwnedFd>,
    confined: bool,
    t: &Timeouts,
) -> Result<Vec<Nic>, RunError> {
    let mut nics = Vec::new();
    let attachments = networks.map(|n| &n.attachments[..]).unwrap_or(&[]);
    for (i, a) in attachments.iter().enumerate() {
        let backend = match a.mode {
            // A confined QEMU cannot attach to a TAP by name, nor any QEMU
            // to one in another network namespace: the runtime attaches.
            AttachmentMode::Bridge if confined || a.netns.is_some() => {
                use std::os::fd::AsRawFd;
                let fd = match &a.netns {
                    Some(ns) => crate::jail::open_tap_in(ns, &a.tap)?,
                    None => crate::jail::open_tap(&a.tap)?,
                };
                let n = fd.as_raw_fd();
                taps.push(fd);
                NicBackend::TapFd(n)
            }
            AttachmentMode::Bridge => NicBackend::Tap(a.tap.clone()),
            AttachmentMode::User => {
                let spec = PasstSpec::from_attachment(a)?;
                let name = if i == 0 {
                    "passt".to_string()
                } else {
                    format!("passt-{i}")
                };
                let passt = Passt::start(
                    &passt_binary()?,
                    &spec,
                    &run_dir.join(format!("{name}.pid")),
                    &dir.join(format!("{name}.log")),
                    t.backend_socket,
                )?;
                log(&format!(
                    "passt started (pid {}) for network {}",
                    passt.pid(),
                    a.network
                ));
                let fd = passt
                    .qemu_fd()
                    .ok_or_else(|| PasstError::Socket(std::io::ErrorKind::NotConnected.into()))?;
                passts.push(passt);
                NicBackend::Stream(fd)
            }
        };
        nics.push(Nic {
            backend,
            mac: a.mac.clone(),
        });
    }
    Ok(nics)
}

/// The virtio-fs tag of a root filesystem shared from a host directory.
pub const ROOT_TAG: &str = "root";

/// Where vminitd finds the container's root: the first disk, or the
/// virtio-fs share tagged [`ROOT_TAG`] (a virtiofs mount's source is its tag).
fn root_device(config: &ContainerConfig) -> &'static str {
    if config.rootfs_dir.is_some() {
        ROOT_TAG
    } else {
        "/dev/vda"
    }
}

fn root_fstype(config: &ContainerConfig) -> &'static str {
    if config.rootfs_dir.is_some() {
        "virtiofs"
    } else {
        "ext4"
    }
}

/// One `virtiofsd` per host directory the container mounts; the VM's
/// devices for them. A directory root is the first share.
fn start_shares(
    home: &Home,
    config: &ContainerConfig,
    dir: &Path,
    run_dir: &Path,
    shares: &mut Vec<Virtiofsd>,
    t: &Timeouts,
) -> Result<Vec<FsDevice>, RunError> {
    let ids = IdMapping::for_this_process(virtiofs::numeric_user(&config.process.user));
    let mut specs = crate::mounts::shares(home, config, run_dir, ids);
    if let Some(root) = &config.rootfs_dir {
        specs.insert(
            0,
            virtiofs::ShareSpec {
                tag: ROOT_TAG.to_string(),
                dir: root.clone(),
                readonly: false,
                socket: run_dir.join(format!("fs-{ROOT_TAG}.sock")),
                ids,
            },
        );
    }
    *shares = virtiofs::start_all(&specs, dir, t.backend_socket)?;
    for s in shares.iter() {
        log(&format!(
            "virtiofsd (pid {}) serves {}{} as {}",
            s.pid(),
            s.spec().dir.display(),
            if s.spec().readonly { " read-only" } else { "" },
            s.spec().tag
        ));
    }
    Ok(specs
        .into_iter()
        .map(|s| FsDevice {
            tag: s.tag,
            socket: s.socket,
        })
        .collect())
}

/// Steps 2-5: run dir, overlay, agent transport, passt for user-mode
/// attachments, virtiofsd for shared directories, control socket, VMM.
#[allow(clippy::too_many_arguments)]
fn launch(
    home: &Home,
    config: &ContainerConfig,
    volumes: &[crate::mounts::VolumeDisk],
    networks: Option<&ContainerNetworks>,
    dir: &Path,
    run_dir: &Path,
    shared: &Arc<Shared>,
    transport: &mut Option<AgentTransport>,
    passts: &mut Vec<Passt>,
    shares: &mut Vec<Virtiofsd>,
    mut jail: Option<&mut crate::jail::VmJail>,
    allow_template: bool,
    t: &Timeouts,
) -> Result<
    (
        StdioLog,
        Instant,
        transport::ReadyGate,
        Option<AdoptRequest>,
    ),
    RunError,
> {
    use crate::jail::hand_over;
    make_run_dir(run_dir)?;
    // A virtio-fs root (a containerd bundle's rootfs) has no disk.
    let overlay = match &config.rootfs_dir {
        Some(_) => None,
        None => {
            let overlay = dir.join("overlay.qcow2");
            create_overlay(&config.rootfs_base, &overlay)?;
            Some(overlay)
        }
    };
    let boot_log = dir.join("boot.log");
    // The empty directory each jail's root is mounted on (in its own mount
    // namespace only).
    let mountpoint = run_dir.join(".jail");
    let vm_uid = jail.as_ref().and_then(|j| j.uid());
    if let Some(j) = jail.as_mut() {
        j.check_kvm(&config.accel)?;
        j.make_cgroup(id_of(dir), config.memory_mib, &config.accel)?;
    }
    if jail.as_ref().is_some_and(|j| j.mount_ns()) {
        std::fs::create_dir(&mountpoint).map_err(|e| RunError::RunDir(mountpoint.clone(), e))?;
        // Bound into the jail, whose own root is read-only: it must exist.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&boot_log)
            .map_err(|e| RunError::StdioLog(boot_log.clone(), e))?;
    }
    if let Some(uid) = vm_uid {
        // The VM's processes create their sockets here; the sticky bit
        // keeps them from removing or replacing the runtime's own
        // (control.sock).
        hand_over_dir(run_dir, uid)?;
        if let Some(overlay) = &overlay {
            hand_over(overlay, uid)?;
            // Only this VM's user (and root): qemu-img makes it world-readable.
            std::fs::set_permissions(overlay, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| crate::jail::JailError::HandOver(overlay.clone(), e))?;
        }
        hand_over(&boot_log, uid)?;
        for v in volumes {
            hand_over(&v.path, uid)?;
        }
    }
    let stdio_path = dir.join("stdio.log");
    shared.set_stdio_path(stdio_path.clone());
    let stdio = StdioLog::open(&stdio_path).map_err(|e| RunError::StdioLog(stdio_path, e))?;

    let uds = run_dir.join("vsock.sock");
    // Held until QEMU has its copies.
    let mut taps = Vec::new();
    let nics = start_nics(
        networks,
        dir,
        run_dir,
        passts,
        &mut taps,
        vm_uid.is_some(),
        t,
    )?;
    let fs_devices = start_shares(home, config, dir, run_dir, shares, t)?;
    // Built first if need be (the first container of its size).
    let tsc_khz = crate::vmm::host_tsc_khz();
    let template = if allow_template && overlay.is_some() {
        restorable(home, config, volumes, &nics, &fs_devices, tsc_khz, run_dir)
    } else {
        None
    };
    // Before the VM starts, so the guest's signal finds it.
    let gate = transport::ReadyGate::bind(&uds, t.ready_fallback)?;
    let agent = transport.insert(AgentTransport::start(&uds, gate.path.clone())?);
    let agent_fd = agent
        .qemu_fd()
        .ok_or_else(|| TransportError::Pair(std::io::Error::other("closed")))?;
    if let Some(uid) = vm_uid {
        // Sockets virtiofsd made that the VM connects to.
        for fs in &fs_devices {
            hand_over(&fs.socket, uid)?;
        }
    }
    shared.set_dialer(GuestDialer {
        uds: uds.clone(),
        timeout: Duration::from_secs(10),
    });

    let listener = control::bind(&run_dir.join("control.sock"))?;
    control::serve(listener, Arc::clone(shared) as Arc<dyn ControlHandler>);

    let adopt = template.as_ref().map(|(inputs, ready)| {
        let disk_bytes = std::fs::metadata(&config.rootfs_base).map_or(0, |m| m.len());
        (
            AdoptRequest {
                entropy: crate::template::entropy(),
                root_device: "/dev/vda".into(),
                root_sectors: disk_bytes / 512,
                macs: nics
                    .iter()
                    .map(|n| agent_protocol::MacChange {
                        from: ready.meta.mac.clone(),
                        to: n.mac.clone(),
                    })
                    .collect(),
            },
            disk_bytes,
            inputs.clone(),
        )
    });
    let spec = match &template {
        Some((inputs, ready)) => {
            use std::os::fd::AsRawFd;
            crate::template::layout(
                inputs,
                overlay.unwrap_or_default(),
                agent_fd,
                dir.join("boot.log"),
                run_dir.join("qmp.sock"),
                nics.into_iter().next().map(|n| n.backend),
                jail.is_some(),
                crate::vmm::GuestMemory::Clone {
                    memory: ready.memory.clone(),
                    state_fd: ready.state.as_raw_fd(),
                },
            )
        }
        None => QemuSpec {
            accel: config.accel.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            disk: overlay,
            agent_fd,
            boot_log: dir.join("boot.log"),
            qmp_socket: run_dir.join("qmp.sock"),
            tsc_khz,
            nics,
            volumes: volumes.to_vec(),
            fs_devices,
            sandbox: jail.is_some(),
            memory: crate::vmm::GuestMemory::Memfd,
        },
    };
    let qmp_socket = spec.qmp_socket.clone();
    let binary = qemu_binary();
    let mut qemu = match jail.as_ref() {
        Some(j) => {
            let plan = crate::jail::qemu_plan(
                &spec,
                &crate::jail::resolve_binary(&binary),
                &config.rootfs_base,
                run_dir,
            );
            let qemu_jail = j.jail(&plan, &mountpoint, spec.accel == "kvm")?;
            Qemu::new(binary, spec, dir.join("vmm.log")).confined(qemu_jail, j.cgroup.clone())
        }
        None => Qemu::new(binary, spec, dir.join("vmm.log")),
    };
    let launched = Instant::now();
    let started = qemu.start();
    drop(taps);
    // QEMU holds its ends now (or failed): passt sees EOF when QEMU ends.
    for p in passts.iter_mut() {
        p.release_qemu_end();
    }
    if let Some(a) = transport.as_mut() {
        a.release_qemu_end();
    }
    // QEMU has its copy of the saved state, under the same number.
    let state_fd = template.as_ref().map_or(-1, |(_, ready)| {
        use std::os::fd::AsRawFd;
        ready.state.as_raw_fd()
    });
    let template_key = template.map(|(_, ready)| ready.meta.key);
    started?;
    let pid = qemu.pid();
    shared.set_vmm(Box::new(qemu));
    shared.update(|s| {
        s.vmm_pid = pid;
        s.vmm_uid = vm_uid;
        s.template = template_key.clone();
    });
    log(&format!(
        "VMM started (pid {}){}",
        pid.unwrap_or(-1),
        match &template_key {
            Some(k) => format!(", restoring the VM template {k}"),
            None => String::new(),
        }
    ));
    let adopt = match adopt {
        Some((request, disk_bytes, _)) => {
            let mut alive = || !shared.vmm_exited();
            crate::template::finish_restore(&qmp_socket, state_fd, disk_bytes, &mut alive)
                .map_err(|e| {
                    RunError::BootAttempt(format!(
                        "restoring the VM template failed: {}",
                        chain(&e)
                    ))
                })?;
            log(&format!(
                "VM restored and its disk swapped in {} ms after launch",
                launched.elapsed().as_millis()
            ));
            Some(request)
        }
        None => None,
    };
    Ok((stdio, launched, gate, adopt))
}

/// The template a container's VM can be restored from, built first if
/// need be; `None` (the VM boots its kernel) when templates are off for it,
/// when it has devices a saved VM cannot have (virtio-fs shares, block
/// volumes, more than one network), or when the template cannot be built.
fn restorable(
    home: &Home,
    config: &ContainerConfig,
    volumes: &[crate::mounts::VolumeDisk],
    nics: &[Nic],
    fs_devices: &[FsDevice],
    tsc_khz: Option<u64>,
    run_dir: &Path,
) -> Option<(crate::template::Inputs, crate::template::Ready)> {
    if config.no_template || !vessel_api::template::enabled() {
        return None;
    }
    let why_not = if !fs_devices.is_empty() {
        Some("it shares host directories (virtio-fs cannot be saved)")
    } else if !volumes.is_empty() {
        Some("it has block volumes")
    } else if nics.len() > 1 {
        Some("it has more than one network")
    } else if !crate::memfile::supported() {
        Some("this kernel cannot hand a clone its template's memory read-only (Linux 5.9 or later)")
    } else {
        None
    };
    if let Some(why) = why_not {
        log(&format!("booting the kernel, not a VM template: {why}"));
        return None;
    }
    let inputs = crate::template::Inputs {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        accel: config.accel.clone(),
        cpus: config.cpus.max(1),
        memory_mib: config.memory_mib,
        nic: nics.len() == 1,
        tsc_khz,
    };
    match crate::template::ensure(home, &inputs, &run_dir.join("template")) {
        Ok(ready) => Some((inputs, ready)),
        Err(e) => {
            log(&format!(
                "no VM template ({}); booting the kernel",
                chain(&e)
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{
        decode_message, read_frame, write_frame, write_message, FrameKind, ProcessSpec,
    };
    use std::io::Write;
    use vessel_api::types::{LogRecord, Stream};

    /// A VMM that "runs" until killed or told it powered off.
    struct FakeVmm {
        exited: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    }

    impl Vmm for FakeVmm {
        fn start(&mut self) -> Result<(), VmmError> {
            Ok(())
        }
        fn pid(&self) -> Option<i32> {
            Some(4242)
        }
        fn try_wait(&mut self) -> Result<Option<i32>, VmmError> {
            Ok(self.exited.load(Ordering::SeqCst).then_some(0))
        }
        fn kill(&mut self) -> Result<(), VmmError> {
            self.killed.store(true, Ordering::SeqCst);
            self.exited.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn pause(&mut self, _paused: bool) -> Result<(), VmmError> {
            Ok(())
        }
    }

    struct Harness {
        _dir: tempfile::TempDir,
        shared: Arc<Shared>,
        stdio_path: PathBuf,
        exited: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut initial = ContainerState::created();
        initial.status = Status::Starting;
        let shared = Arc::new(Shared::new(
            dir.path().join("state.json"),
            initial,
            Duration::from_millis(200),
        ));
        let exited = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        shared.set_vmm(Box::new(FakeVmm {
            exited: exited.clone(),
            killed: killed.clone(),
        }));
        Harness {
            stdio_path: dir.path().join("stdio.log"),
            _dir: dir,
            shared,
            exited,
            killed,
        }
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            retry: Duration::from_millis(5),
            connect_reply: Duration::from_millis(100),
            backend_socket: Duration::from_secs(1),
            shutdown: Duration::from_secs(2),
            kill_grace: Duration::from_millis(200),
            boot_attempt: Duration::from_secs(2),
            boot_attempts: 1,
            ready_fallback: Duration::from_millis(100),
        }
    }

    fn request() -> StartRequest {
        StartRequest {
            process: ProcessSpec {
                args: vec!["sh".into()],
                env: vec![],
                cwd: "/".into(),
                user: String::new(),
                rlimits: None,
                terminal: false,
                stdin: false,
                root: None,
                binds: Vec::new(),
                memory_max: None,
                cpu_max: None,
                cpu_weight: None,
                own_pids: false,
            },
            hostname: "box".into(),
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            network: None,
            tty_size: None,
            mounts: vec![],
            read_only_root: false,
        }
    }

    fn recv(g: &mut UnixStream) -> Option<HostMessage> {
        let f = read_frame(g).ok()??;
        decode_message(&f).ok()
    }

    fn send(g: &mut UnixStream, m: GuestMessage) {
        write_message(g, &m).unwrap();
    }

    /// The host's Hello, answered with the guest's (with `features`).
    fn hello(g: &mut UnixStream, uptime_ms: u64, features: &[&str]) {
        assert_eq!(recv(g), Some(HostMessage::Hello { version: VERSION }));
        send(
            g,
            GuestMessage::Hello {
                version: VERSION,
                uptime_ms,
                features: features.iter().map(|f| f.to_string()).collect(),
            },
        );
    }

    /// Hello and Start, answered with Started.
    fn boot(g: &mut UnixStream) {
        hello(g, 400, &[]);
        match recv(g) {
            Some(HostMessage::Start(r)) => assert_eq!(r, request()),
            other => panic!("expected Start, got {other:?}"),
        }
        send(
            g,
            GuestMessage::Started {
                pid: 2,
                uptime_ms: 450,
            },
        );
    }

    /// Run `supervise` against a fake guest; the first two connects fail.
    fn run_with_guest(
        h: &Harness,
        guest: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (Result<(), RunError>, std::thread::JoinHandle<()>) {
        run_request_with_guest(h, request(), guest)
    }

    fn run_request_with_guest(
        h: &Harness,
        req: StartRequest,
        guest: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (Result<(), RunError>, std::thread::JoinHandle<()>) {
        run_adopted_with_guest(h, req, None, guest)
    }

    fn run_adopted_with_guest(
        h: &Harness,
        req: StartRequest,
        adopt: Option<agent_protocol::AdoptRequest>,
        guest: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (Result<(), RunError>, std::thread::JoinHandle<()>) {
        let (host, g) = UnixStream::pair().unwrap();
        let guest = std::thread::spawn(move || guest(g));
        let mut host = Some(host);
        let mut attempts = 0;
        let mut connect = || {
            attempts += 1;
            match host.take() {
                Some(s) if attempts >= 3 => Ok(s),
                other => {
                    host = other;
                    Err(TransportError::Connect(std::io::Error::other("not yet")))
                }
            }
        };
        let mut stdio = StdioLog::open(&h.stdio_path).unwrap();
        let r = supervise(
            &h.shared,
            req,
            adopt,
            &mut connect,
            &mut stdio,
            Instant::now(),
            Path::new("/c/boot.log"),
            &timeouts(),
        );
        (r, guest)
    }

    fn adopt_request() -> agent_protocol::AdoptRequest {
        agent_protocol::AdoptRequest {
            entropy: "ab".repeat(32),
            root_device: "/dev/vda".into(),
            root_sectors: 4096,
            macs: vec![],
        }
    }

    #[test]
    fn a_restored_vm_is_adopted_before_its_process_starts() {
        let h = harness();
        let (r, guest) = run_adopted_with_guest(&h, request(), Some(adopt_request()), |mut g| {
            hello(&mut g, 1, &[FEATURE_ADOPT]);
            assert_eq!(recv(&mut g), Some(HostMessage::Adopt(adopt_request())));
            send(&mut g, GuestMessage::Adopted { uptime_ms: 2 });
            assert!(matches!(recv(&mut g), Some(HostMessage::Start(_))));
            send(
                &mut g,
                GuestMessage::Started {
                    pid: 2,
                    uptime_ms: 3,
                },
            );
            send(
                &mut g,
                GuestMessage::Exited {
                    exit_code: 0,
                    signal: None,
                },
            );
            while recv(&mut g).is_some() {}
        });
        guest.join().unwrap();
        r.unwrap();
        assert_eq!(h.shared.snapshot().exit_code, Some(0));
    }

    #[test]
    fn a_guest_that_cannot_adopt_is_not_started() {
        let h = harness();
        let (r, guest) = run_adopted_with_guest(&h, request(), Some(adopt_request()), |mut g| {
            hello(&mut g, 1, &[]);
            while let Some(m) = recv(&mut g) {
                assert!(!matches!(m, HostMessage::Start(_)), "{m:?}");
            }
        });
        guest.join().unwrap();
        assert!(r.is_err());
        let st = h.shared.snapshot();
        assert_eq!(st.exit_code, Some(EXIT_START_FAILED));
        assert!(st.error.unwrap().contains("adopt"));
    }

    #[test]
    fn a_guest_without_network_support_is_refused_a_network() {
        let h = harness();
        let mut req = request();
        req.network = Some(agent_protocol::NetworkConfig::default());
        let (r, guest) = run_request_with_guest(&h, req, move |mut g| {
            hello(&mut g, 1, &[]);
            // Refused: the host sends no Start and shuts the guest down.
            while let Some(m) = recv(&mut g) {
                assert!(!matches!(m, HostMessage::Start(_)), "{m:?}");
            }
        });
        guest.join().unwrap();
        assert!(
            r.is_err() || h.shared.snapshot().exit_code == Some(125),
            "{r:?}"
        );
        let s = h.shared.snapshot();
        assert!(
            s.error
                .as_deref()
                .unwrap_or("")
                .contains("cannot configure networks"),
            "{s:?}"
        );
    }

    #[test]
    fn the_guest_clock_is_set_before_the_process_starts() {
        let h = harness();
        let mut req = request();
        req.process.rlimits = Some(agent_protocol::default_rlimits());
        let (r, guest) = run_request_with_guest(&h, req, move |mut g| {
            hello(&mut g, 1, &[FEATURE_CLOCK, FEATURE_RLIMITS]);
            // A guest one hour behind the host answers three probes.
            let behind = 3_600_000_000_000i64;
            let mut probes = 0;
            let adjust = loop {
                match recv(&mut g) {
                    Some(HostMessage::ReadClock { id }) => {
                        probes += 1;
                        send(
                            &mut g,
                            GuestMessage::Clock {
                                id,
                                realtime_ns: crate::clock::host_realtime_ns() - behind,
                            },
                        );
                    }
                    Some(m) => break m,
                    None => panic!("the host hung up"),
                }
            };
            assert_eq!(probes, crate::clock::ROUND_SAMPLES);
            match adjust {
                HostMessage::AdjustClock {
                    offset_ns, mode, ..
                } => {
                    assert_eq!(mode, agent_protocol::AdjustMode::Step);
                    // Within a tenth of a second (the probes' round trips).
                    assert!((offset_ns - behind).abs() < 100_000_000, "{offset_ns}");
                }
                other => panic!("expected AdjustClock before Start, got {other:?}"),
            }
            assert!(matches!(recv(&mut g), Some(HostMessage::Start(_))));
            send(
                &mut g,
                GuestMessage::Exited {
                    exit_code: 0,
                    signal: None,
                },
            );
            assert_eq!(recv(&mut g), Some(HostMessage::Shutdown));
        });
        r.unwrap();
        guest.join().unwrap();
    }

    #[test]
    fn a_guest_without_rlimits_support_is_refused_rlimits() {
        let h = harness();
        let mut req = request();
        req.process.rlimits = Some(agent_protocol::default_rlimits());
        let (r, guest) = run_request_with_guest(&h, req, move |mut g| {
            hello(&mut g, 1, &[]);
            while let Some(m) = recv(&mut g) {
                assert!(!matches!(m, HostMessage::Start(_)), "{m:?}");
            }
        });
        guest.join().unwrap();
        assert!(r.is_err(), "{r:?}");
        let s = h.shared.snapshot();
        assert!(
            s.error.as_deref().unwrap_or("").contains("resource limits"),
            "{s:?}"
        );
    }

    #[test]
    fn runs_to_exit_and_logs_output() {
        let h = harness();
        let exited = h.exited.clone();
        let (r, guest) = run_with_guest(&h, move |mut g| {
            boot(&mut g);
            write_frame(&mut g, FrameKind::Stdout, b"hello\n").unwrap();
            write_frame(&mut g, FrameKind::Stderr, b"err\n").unwrap();
            send(
                &mut g,
                GuestMessage::Exited {
                    exit_code: 3,
                    signal: None,
                },
            );
            assert_eq!(recv(&mut g), Some(HostMessage::Shutdown));
            exited.store(true, Ordering::SeqCst);
        });
        r.unwrap();
        guest.join().unwrap();
        let s: ContainerState = read_json(&h.shared.state_path).unwrap().unwrap();
        assert_eq!(s.status, Status::Exited);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.error, None);
        assert_eq!(s.guest_uptime_at_start_ms, Some(450));
        assert!(s.started_ms.is_some() && s.finished_ms.is_some() && s.boot_ms.is_some());
        assert!(
            !h.killed.load(Ordering::SeqCst),
            "the VM powered off by itself"
        );
        let log = std::fs::read_to_string(&h.stdio_path).unwrap();
        let recs: Vec<LogRecord> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].stream, recs[0].data()),
            (Stream::Stdout, b"hello\n".to_vec())
        );
        assert_eq!(
            (recs[1].stream, recs[1].data()),
            (Stream::Stderr, b"err\n".to_vec())
        );
    }

    #[test]
    fn start_failure_is_recorded() {
        let h = harness();
        let exited = h.exited.clone();
        let (r, guest) = run_with_guest(&h, move |mut g| {
            hello(&mut g, 1, &[]);
            assert!(matches!(recv(&mut g), Some(HostMessage::Start(_))));
            send(
                &mut g,
                GuestMessage::StartFailed {
                    exit_code: 127,
                    message: "nope: command not found".into(),
                },
            );
            assert_eq!(recv(&mut g), Some(HostMessage::Shutdown));
            exited.store(true, Ordering::SeqCst);
        });
        r.unwrap();
        guest.join().unwrap();
        let s = h.shared.snapshot();
        assert_eq!(s.status, Status::Exited);
        assert_eq!(s.exit_code, Some(127));
        assert_eq!(s.error.as_deref(), Some("nope: command not found"));
    }

    #[test]
    fn a_stalled_boot_that_may_be_retried_is_not_final() {
        let h = harness();
        let mut connect = || Err(TransportError::Connect(std::io::Error::other("no")));
        let mut stdio = StdioLog::open(&h.stdio_path).unwrap();
        let t = Timeouts {
            boot_attempt: Duration::from_millis(100),
            ..timeouts()
        };
        let started = Instant::now();
        let r = supervise(
            &h.shared,
            request(),
            None,
            &mut connect,
            &mut stdio,
            Instant::now(),
            Path::new("/c/boot.log"),
            &t,
        );
        assert!(matches!(r, Err(RunError::BootAttempt(_))), "{r:?}");
        assert!(
            started.elapsed() < t.connect,
            "gave up on the attempt, not the whole boot"
        );
        assert!(h.killed.load(Ordering::SeqCst), "the stalled VM is killed");
        let s = h.shared.snapshot();
        assert_eq!(s.exit_code, None, "not recorded as failed: {s:?}");
    }

    #[test]
    fn vm_exit_before_agent_is_125() {
        let h = harness();
        h.exited.store(true, Ordering::SeqCst);
        let mut connect = || Err(TransportError::Connect(std::io::Error::other("no")));
        let mut stdio = StdioLog::open(&h.stdio_path).unwrap();
        let r = supervise(
            &h.shared,
            request(),
            None,
            &mut connect,
            &mut stdio,
            Instant::now(),
            Path::new("/c/boot.log"),
            &timeouts(),
        );
        assert!(r.is_err());
        let s = h.shared.snapshot();
        assert_eq!(s.exit_code, Some(125));
        assert_eq!(
            s.error.as_deref(),
            Some("the VM exited before its agent answered; see /c/boot.log")
        );
    }

    #[test]
    fn garbage_from_guest_is_a_lost_vm_not_a_panic() {
        let h = harness();
        let (r, guest) = run_with_guest(&h, move |mut g| {
            boot(&mut g);
            g.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
            while recv(&mut g).is_some() {}
        });
        r.unwrap();
        guest.join().unwrap();
        let s = h.shared.snapshot();
        assert_eq!(s.exit_code, Some(EXIT_VM_LOST));
        assert!(s.error.unwrap().starts_with("the VM stopped unexpectedly"));
        assert!(h.killed.load(Ordering::SeqCst));
    }

    fn wait_running(shared: &Shared) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.snapshot().status != Status::Running {
            assert!(Instant::now() < deadline, "never running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stop_sends_sigterm_and_waits_for_exit() {
        let h = Arc::new(harness());
        let exited = h.exited.clone();
        let stopper = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                wait_running(&h.shared);
                assert_eq!(h.shared.signal(10, false), Ok(()));
                h.shared.stop(Duration::from_secs(5))
            })
        };
        let (r, guest) = run_with_guest(&h, move |mut g| {
            boot(&mut g);
            assert_eq!(
                recv(&mut g),
                Some(HostMessage::Signal {
                    signal: 10,
                    group: false
                })
            );
            assert_eq!(
                recv(&mut g),
                Some(HostMessage::Signal {
                    signal: 15,
                    group: false
                })
            );
            send(
                &mut g,
                GuestMessage::Exited {
                    exit_code: 143,
                    signal: Some(15),
                },
            );
            assert_eq!(recv(&mut g), Some(HostMessage::Shutdown));
            exited.store(true, Ordering::SeqCst);
        });
        r.unwrap();
        guest.join().unwrap();
        assert_eq!(stopper.join().unwrap(), Ok(()));
        let s = h.shared.snapshot();
        assert_eq!(s.exit_code, Some(143));
        assert!(h.shared.signal(9, false).is_err(), "not running any more");
    }

    #[test]
    fn stop_kills_an_unresponsive_vm() {
        let h = Arc::new(harness());
        let stopper = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                wait_running(&h.shared);
                h.shared.stop(Duration::from_millis(100))
            })
        };
        let (r, guest) = run_with_guest(&h, move |mut g| {
            boot(&mut g);
            while recv(&mut g).is_some() {}
        });
        r.unwrap();
        guest.join().unwrap();
        assert_eq!(stopper.join().unwrap(), Ok(()));
        let s = h.shared.snapshot();
        assert_eq!(s.exit_code, Some(EXIT_KILLED));
        assert_eq!(s.error, None);
        assert!(h.killed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_stop_after_the_exit_kills_the_vm_without_waiting_for_its_power_off() {
        let h = Arc::new(harness());
        let stopper = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                assert!(h.shared.wait_exited(Duration::from_secs(5)), "never exited");
                let asked = Instant::now();
                (h.shared.stop(Duration::from_secs(10)), asked)
            })
        };
        // The guest reports the exit, then never powers off.
        let (r, guest) = run_with_guest(&h, move |mut g| {
            boot(&mut g);
            send(
                &mut g,
                GuestMessage::Exited {
                    exit_code: 3,
                    signal: None,
                },
            );
            while recv(&mut g).is_some() {}
        });
        let ended = Instant::now();
        r.unwrap();
        guest.join().unwrap();
        let (stopped, asked) = stopper.join().unwrap();
        assert_eq!(stopped, Ok(()));
        assert!(h.killed.load(Ordering::SeqCst), "the VMM is killed");
        // Well within the power-off grace (2 s here, 10 s for real).
        assert!(
            ended.saturating_duration_since(asked) < Duration::from_secs(1),
            "the runtime waited {:?} for a power-off after the stop",
            ended.saturating_duration_since(asked)
        );
        let s = h.shared.snapshot();
        assert_eq!((s.exit_code, s.error), (Some(3), None), "the exit stays");
    }

    #[test]
    fn an_attach_replays_this_run_s_output_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdio.log");
        // An earlier run of the container wrote to the same log.
        let mut earlier = StdioLog::open(&path).unwrap();
        earlier.append(Stream::Stdout, b"first boot\n").unwrap();
        let shared = Shared::new(
            dir.path().join("state.json"),
            ContainerState::created(),
            Duration::from_secs(1),
        );
        shared.set_stdio_path(path.clone());
        let mut now = StdioLog::open(&path).unwrap();
        now.append(Stream::Stderr, b"second boot\n").unwrap();
        assert_eq!(
            shared.logged_output(),
            vec![(Stream::Stderr, b"second boot\n".to_vec())]
        );
    }

    #[test]
    fn overlay_needs_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let r = create_overlay(
            &dir.path().join("missing.ext4"),
            &dir.path().join("o.qcow2"),
        );
        assert!(matches!(r, Err(RunError::NoRootfs(_))));
    }
}
