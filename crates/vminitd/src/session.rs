//! One host connection, from `Hello` to its end: the container's main
//! process, an exec'd one, a copy, or statistics (see the agent protocol's
//! "Connections").

use crate::conn::{decode_host, Conn};
use crate::process::{self, RootSetup, StartError, StdioSetup};
use crate::reaper::{ExitSlot, ExitStatus, Reaper};
use crate::{clock, copy, log_line, mounts, net, pty, stats, user};
use agent_protocol::{
    ExecRequest, FrameKind, GuestMessage, HostMessage, ProcessSpec, Rlimit, StartRequest, WinSize,
    MAX_STDIO_CHUNK, STDIN_WINDOW, VERSION,
};
use nix::errno::Errno;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

macro_rules! log {
    ($($arg:tt)*) => { log_line(&format!($($arg)*)) };
}

/// After a process exits, how long its output may stay idle before `Exited`
/// is sent anyway (a daemonized grandchild may hold it open).
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// How long the main connection waits for `Shutdown` after `Exited`.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// Stdin bytes buffered for a process that does not read them before the
/// host's frames are left unread (back-pressure).
const MAX_PENDING_STDIN: usize = 1 << 20;
/// ASCII EOT: what `CloseStdin` types into a terminal (Ctrl-D).
const EOT: u8 = 4;

/// What every session shares: the reaper and the started container.
pub struct Guest {
    pub reaper: Arc<Reaper>,
    container: Mutex<Option<Container>>,
    /// A pod's containers in this VM (the containerd shim): root directory
    /// → the first process, whose mount namespace later ones join.
    pods: Mutex<HashMap<String, (i32, Arc<ExitSlot>)>>,
}

/// What an exec'd process inherits from the container.
#[derive(Debug, Clone)]
struct Container {
    hostname: String,
    rlimits: Vec<Rlimit>,
}

impl Guest {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Self {
            reaper,
            container: Mutex::new(None),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// How a process given `root` (a pod container's directory) enters it:
    /// a new mount namespace for its first process, else that process's.
    fn pod_root(&self, p: &ProcessSpec, root: &str) -> Result<RootSetup, StartError> {
        let rel = Path::new(root);
        if !crate::process::is_plain_absolute(rel) {
            return Err(StartError::new(
                125,
                format!("a container's root must be a plain absolute path: {root:?}"),
            ));
        }
        let dir = mounts::root().join(root.trim_start_matches('/'));
        if !dir.is_dir() {
            return Err(StartError::new(
                125,
                format!("the container's root {root} is not in the VM"),
            ));
        }
        // Its cgroup is named after its directory (the container's id).
        let group = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        match pods.get(root) {
            None => Ok(RootSetup::NewNamespace {
                cgroup: crate::podcg::prepare(&group, p)
                    .map_err(|e| log!("the cgroup of {root}: {e}"))
                    .ok(),
                dir,
                own_pids: p.own_pids,
                binds: p
                    .binds
                    .iter()
                    .map(|b| process::BindSource {
                        source: mounts::root().join(b.source.trim_start_matches('/')),
                        target: b.target.clone(),
                        readonly: b.readonly,
                    })
                    .collect(),
            }),
            Some((_, exit)) if exit.ended() => Err(StartError::new(
                125,
                format!("the container of {root} is not running"),
            )),
            Some((pid, _)) => {
                let open = |p: String, flags: i32| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(flags | libc::O_CLOEXEC)
                        .open(&p)
                        .map(OwnedFd::from)
                        .map_err(|e| StartError::new(125, format!("{p}: {e}")))
                };
                Ok(RootSetup::Join {
                    cgroup: crate::podcg::procs(&group),
                    ns: open(format!("/proc/{pid}/ns/mnt"), 0)?,
                    pids: open(format!("/proc/{pid}/ns/pid"), 0)?,
                    root: open(format!("/proc/{pid}/root"), libc::O_DIRECTORY)?,
                })
            }
        }
    }

    /// Remember a pod container's first process; forget those that ended.
    fn pod_started(&self, root: &str, pid: i32, exit: Arc<ExitSlot>) {
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.retain(|_, (_, e)| !e.ended());
        pods.insert(root.to_string(), (pid, exit));
    }

    fn container(&self) -> Option<Container> {
        self.container
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What ends a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection is done; the VM goes on.
    Closed,
    /// Power the VM off.
    PowerOff,
}

/// The features this vminitd implements (see the agent protocol).
pub fn features() -> Vec<String> {
    [
        agent_protocol::FEATURE_NETWORK,
        agent_protocol::FEATURE_CLOCK,
        agent_protocol::FEATURE_RLIMITS,
        agent_protocol::FEATURE_EXEC,
        agent_protocol::FEATURE_STATS,
        agent_protocol::FEATURE_COPY,
        agent_protocol::FEATURE_TOP,
        agent_protocol::FEATURE_MAINTENANCE,
        agent_protocol::FEATURE_STDIN_CREDIT,
        agent_protocol::FEATURE_MOUNTS,
        agent_protocol::FEATURE_ADOPT,
    ]
    .map(String::from)
    .to_vec()
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

/// Serve one connection. `Err` is a protocol or I/O error on the main
/// connection (the VM powers off); such errors on any other connection end
/// only that connection (the host hears of them in an `Error` message).
pub fn serve(conn: &mut Conn, guest: &Guest) -> Result<Outcome, String> {
    let mut main = false;
    match serve_inner(conn, guest, &mut main) {
        Err(e) if !main => {
            log!("{e}");
            let _ = conn.send(&GuestMessage::Error { message: e });
            Ok(Outcome::Closed)
        }
        other => other,
    }
}

fn serve_inner(conn: &mut Conn, guest: &Guest, main: &mut bool) -> Result<Outcome, String> {
    let Some(frame) = conn.recv(None)? else {
        return Ok(Outcome::Closed);
    };
    match decode_host(&frame)? {
        HostMessage::Hello { version } if version == VERSION => {}
        HostMessage::Hello { version } => {
            return Err(format!(
                "host speaks protocol version {version}, this guest speaks {VERSION}"
            ))
        }
        other => return Err(format!("protocol error: expected hello, got {other:?}")),
    }
    conn.send(&GuestMessage::Hello {
        version: VERSION,
        uptime_ms: uptime_ms(),
        features: features(),
    })?;
    loop {
        let Some(frame) = conn.recv(None)? else {
            return Ok(Outcome::Closed);
        };
        if frame.kind != FrameKind::Control {
            // Stdin for a process not started yet: dropped, and credited.
            if frame.kind == FrameKind::Stdin {
                send_credit(conn, frame.payload.len())?;
            }
            continue;
        }
        match decode_host(&frame)? {
            HostMessage::Start(req) => {
                *main = true;
                return main_session(conn, guest, req);
            }
            HostMessage::Exec(req) => return exec_session(conn, guest, req),
            HostMessage::MountRoot {
                root_device,
                root_fstype,
            } => {
                *main = true;
                return crate::maintenance::serve(conn, &root_device, &root_fstype);
            }
            HostMessage::CopyOut {
                path,
                one_file_system,
            } => {
                copy::copy_out(conn, &guest.reaper, &path, one_file_system)?;
                return Ok(Outcome::Closed);
            }
            HostMessage::CopyIn { path } => {
                copy::copy_in(conn, &guest.reaper, &path)?;
                return Ok(Outcome::Closed);
            }
            HostMessage::Shutdown => return Ok(Outcome::PowerOff),
            HostMessage::CloseStdin => {}
            HostMessage::Adopt(req) => {
                crate::adopt::adopt(&req)?;
                conn.send(&GuestMessage::Adopted {
                    uptime_ms: uptime_ms(),
                })?;
            }
            m => {
                if !common_request(conn, &m)? {
                    return Err(format!("protocol error: {m:?} before a start"));
                }
            }
        }
    }
}

/// Requests any connection may make at any time: the clock and
/// statistics. Returns false for anything else.
pub(crate) fn common_request(conn: &mut Conn, msg: &HostMessage) -> Result<bool, String> {
    match *msg {
        HostMessage::ReadClock { id } => conn.send(&GuestMessage::Clock {
            id,
            realtime_ns: clock::realtime_ns(),
        })?,
        HostMessage::AdjustClock {
            offset_ns,
            mode,
            max_error_ns,
        } => {
            if let Err(e) = clock::adjust(offset_ns, mode, max_error_ns) {
                log!("{e}");
            }
        }
        HostMessage::ReadStats => conn.send(&GuestMessage::Stats(stats::snapshot()))?,
        HostMessage::ReadGroupStats { ref group } => match crate::podcg::snapshot(group) {
            Ok(s) => conn.send(&GuestMessage::Stats(s))?,
            Err(message) => conn.send(&GuestMessage::Error { message })?,
        },
        HostMessage::ReadProcesses => conn.send(&GuestMessage::Processes {
            processes: stats::processes(),
        })?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// The container: mounts, network, the main process; then power off.
fn main_session(conn: &mut Conn, guest: &Guest, req: StartRequest) -> Result<Outcome, String> {
    let started = {
        let mut c = guest
            .container
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.is_some() {
            Err(StartError::new(125, "the container is already started"))
        } else {
            let r = start_container(&req, &guest.reaper);
            if r.is_ok() {
                *c = Some(Container {
                    hostname: req.hostname.clone(),
                    rlimits: req
                        .process
                        .rlimits
                        .clone()
                        .unwrap_or_else(agent_protocol::default_rlimits),
                });
            }
            r
        }
    };
    match started {
        Ok(proc) => {
            log!("started pid {}", proc.pid);
            conn.send(&GuestMessage::Started {
                pid: proc.pid,
                uptime_ms: uptime_ms(),
            })?;
            match pump(conn, proc, &guest.reaper, true)? {
                End::ShutdownAsked => return Ok(Outcome::PowerOff),
                End::ConnectionLost => {
                    return Err("host connection closed while the process runs".into())
                }
                End::Exited((exit_code, signal)) => {
                    log!("process exited: {exit_code}");
                    crate::volumes::sync_disks();
                    conn.send(&GuestMessage::Exited { exit_code, signal })?;
                }
            }
        }
        Err(e) => {
            log!("start failed: {}", e.message);
            conn.send(&GuestMessage::StartFailed {
                exit_code: e.exit_code,
                message: e.message,
            })?;
        }
    }
    wait_shutdown(conn);
    Ok(Outcome::PowerOff)
}

/// Mount the root, set up the network, start the main process.
fn start_container(req: &StartRequest, reaper: &Reaper) -> Result<Proc, StartError> {
    let p = &req.process;
    if p.args.first().map(String::as_str).unwrap_or("").is_empty() {
        return Err(StartError::new(125, "no command specified"));
    }
    let warnings = mounts::mount_rootfs(&req.root_device, &req.root_fstype)
        .map_err(|e| StartError::new(125, e))?;
    for w in warnings {
        log!("{w}");
    }
    if !req.hostname.is_empty() {
        if let Err(e) = nix::unistd::sethostname(&req.hostname) {
            log!("sethostname: {}", e.desc());
        }
    }
    if let Some(cfg) = &req.network {
        let configured =
            net::configure(cfg).map_err(|e| StartError::new(125, format!("network: {e}")))?;
        log!("network: {}", configured.join(", "));
        net::write_files(mounts::root(), cfg, &req.hostname)
            .map_err(|e| StartError::new(125, format!("network: {e}")))?;
    } else {
        net::configure_none(mounts::root(), &req.hostname)
            .map_err(|e| StartError::new(125, format!("network: {e}")))?;
    }
    crate::volumes::mount_all(&req.mounts, req.read_only_root)
        .map_err(|e| StartError::new(125, e))?;
    mounts::switch_root().map_err(|e| StartError::new(125, e))?;
    let rlimits = p
        .rlimits
        .clone()
        .unwrap_or_else(agent_protocol::default_rlimits);
    let root = RootSetup::Chroot(mounts::root().to_path_buf());
    start_process(p, &req.hostname, &rlimits, req.tty_size, reaper, root)
}

/// One more process in the started container; the connection ends with it.
fn exec_session(conn: &mut Conn, guest: &Guest, req: ExecRequest) -> Result<Outcome, String> {
    let started = match guest.container() {
        None => Err(StartError::new(125, "the container is not running")),
        Some(c) => {
            let rlimits = req.process.rlimits.clone().unwrap_or(c.rlimits);
            let setup = match &req.process.root {
                None => Ok(RootSetup::Chroot(mounts::root().to_path_buf())),
                Some(root) => guest.pod_root(&req.process, root),
            };
            setup.and_then(|setup| {
                let first = matches!(setup, RootSetup::NewNamespace { .. });
                let p = start_process(
                    &req.process,
                    &c.hostname,
                    &rlimits,
                    req.tty_size,
                    &guest.reaper,
                    setup,
                )?;
                if let (true, Some(root)) = (first, &req.process.root) {
                    guest.pod_started(root, p.pid, Arc::clone(&p.exit));
                }
                Ok(p)
            })
        }
    };
    let proc = match started {
        Ok(p) => p,
        Err(e) => {
            log!("exec {} failed: {}", req.exec_id, e.message);
            conn.send(&GuestMessage::StartFailed {
                exit_code: e.exit_code,
                message: e.message,
            })?;
            return Ok(Outcome::Closed);
        }
    };
    let pid = proc.pid;
    conn.send(&GuestMessage::Started {
        pid,
        uptime_ms: uptime_ms(),
    })?;
    match pump(conn, proc, &guest.reaper, false)? {
        End::Exited((exit_code, signal)) => {
            conn.send(&GuestMessage::Exited { exit_code, signal })?;
        }
        End::ConnectionLost | End::ShutdownAsked => {
            // Its terminal or pipes are closed now: SIGHUP or EOF, as when
            // a Docker exec client goes away.
            log!("exec {}: the host went away", req.exec_id);
        }
    }
    Ok(Outcome::Closed)
}

/// A running process and its streams, as vminitd holds them.
struct Proc {
    pid: i32,
    exit: Arc<ExitSlot>,
    /// Where `Stdin` frames go (a pipe, or the terminal's master).
    stdin: Option<File>,
    /// What to read and send: pipes, or the terminal's master as `Stdout`.
    outputs: Vec<(FrameKind, File)>,
    /// The terminal's master, for `Resize`.
    terminal: Option<File>,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn file_of<T: Into<std::os::fd::OwnedFd>>(x: T) -> File {
    File::from(x.into())
}

/// Start `p` in the container's root with a terminal or pipes.
fn start_process(
    p: &ProcessSpec,
    hostname: &str,
    rlimits: &[Rlimit],
    tty_size: Option<WinSize>,
    reaper: &Reaper,
    setup: RootSetup,
) -> Result<Proc, StartError> {
    // Where its users are read from (a joined pod container: through its
    // first process's root); terminals are the VM's, which a pod
    // container's `/dev` also has.
    let root = mounts::root();
    let users: PathBuf = match &setup {
        RootSetup::Chroot(d) | RootSetup::NewNamespace { dir: d, .. } => d.clone(),
        RootSetup::Join { root, .. } => {
            PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()))
        }
    };
    let user = user::resolve_in_root(&users, &p.user).map_err(|m| StartError::new(125, m))?;
    let env = process::build_env(&p.env, &user.home, hostname, p.terminal);
    let mut master = None;
    let stdio = if p.terminal {
        let t = pty::open(
            &root.join("dev/pts"),
            tty_size.unwrap_or(pty::DEFAULT_SIZE),
            user.uid,
        )
        .map_err(|e| StartError::new(125, format!("terminal: {e}")))?;
        master = Some(t.master);
        StdioSetup::Terminal(t.slave)
    } else {
        StdioSetup::Pipes { stdin: p.stdin }
    };
    let (mut child, exit) = reaper.spawn(|| {
        let child = process::spawn(setup, &p.args, &env, &p.cwd, &user, rlimits, stdio)?;
        let pid = child.id() as i32;
        Ok((child, pid))
    })?;
    let pid = child.id() as i32;
    let mut proc = Proc {
        pid,
        exit,
        stdin: None,
        outputs: Vec::new(),
        terminal: None,
    };
    match master {
        Some(m) => {
            set_nonblocking(m.as_raw_fd());
            let dup = |f: &File| {
                f.try_clone()
                    .map_err(|e| StartError::new(125, format!("terminal: {e}")))
            };
            proc.outputs.push((FrameKind::Stdout, dup(&m)?));
            if p.stdin {
                proc.stdin = Some(dup(&m)?);
            }
            proc.terminal = Some(m);
        }
        None => {
            if let Some(s) = child.stdin.take() {
                set_nonblocking(s.as_raw_fd());
                proc.stdin = Some(file_of(s));
            }
            if let Some(s) = child.stdout.take() {
                proc.outputs.push((FrameKind::Stdout, file_of(s)));
            }
            if let Some(s) = child.stderr.take() {
                proc.outputs.push((FrameKind::Stderr, file_of(s)));
            }
        }
    }
    // Reaped by the reaper, never by std.
    drop(child);
    Ok(proc)
}

/// How a pump ended.
enum End {
    Exited(ExitStatus),
    /// `Shutdown` on the main connection before the process ended.
    ShutdownAsked,
    ConnectionLost,
}

/// Move a process's streams and the host's requests until the process has
/// exited and its output is drained.
fn pump(conn: &mut Conn, mut p: Proc, reaper: &Reaper, main: bool) -> Result<End, String> {
    let mut status: Option<ExitStatus> = None;
    let mut exit_at = Instant::now();
    let mut last_io = Instant::now();
    let mut buf = vec![0u8; MAX_STDIO_CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    // Stdin bytes passed on (or dropped) and not yet credited to the host.
    let mut consumed: usize = 0;
    let mut close_stdin = false;
    let end = loop {
        if consumed >= STDIN_WINDOW / 4 || (consumed > 0 && pending.is_empty()) {
            send_credit(conn, consumed)?;
            consumed = 0;
        }
        if status.is_none() {
            if let Some(s) = p.exit.status() {
                status = Some(s);
                exit_at = Instant::now();
            }
        }
        let mut timeout_ms: i32 = -1;
        if let Some(s) = status {
            let idle = Instant::now().duration_since(exit_at.max(last_io));
            if p.outputs.is_empty() || idle >= DRAIN_IDLE {
                break End::Exited(s);
            }
            timeout_ms = (DRAIN_IDLE - idle).as_millis() as i32 + 1;
        }
        // 0: host, 1: exit, 2: stdin, 3..: outputs
        let mut fds = vec![
            libc::pollfd {
                fd: conn.fd(),
                events: if pending.len() < MAX_PENDING_STDIN {
                    libc::POLLIN
                } else {
                    0
                },
                revents: 0,
            },
            libc::pollfd {
                fd: if status.is_none() { p.exit.fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: match &p.stdin {
                    Some(s) if !pending.is_empty() => s.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        for (_, f) in &p.outputs {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid, initialised pollfd array of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(format!("poll: {}", Errno::last().desc()));
        }

        // The process's output.
        let mut closed = Vec::new();
        for (i, (kind, f)) in p.outputs.iter_mut().enumerate() {
            if fds[3 + i].revents == 0 {
                continue;
            }
            match f.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    last_io = Instant::now();
                    conn.send_data(*kind, &buf[..n])?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // EIO: a terminal whose every slave is closed.
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            p.outputs.remove(i);
        }

        // Its input.
        if fds[2].revents != 0 {
            if let Some(s) = p.stdin.as_mut() {
                match s.write(&pending) {
                    Ok(n) => {
                        pending.drain(..n);
                        consumed += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The process closed its stdin: drop what it will never read.
                    Err(_) => {
                        consumed += pending.len();
                        pending.clear();
                        p.stdin = None;
                    }
                }
            }
        }
        if close_stdin && pending.is_empty() && p.stdin.is_some() {
            end_stdin(&mut p);
        }

        // The host.
        if fds[0].revents != 0 {
            if !conn.fill()? {
                break End::ConnectionLost;
            }
            let mut shutdown = false;
            while let Some(frame) = conn.buffered()? {
                match frame.kind {
                    FrameKind::Stdin => {
                        if p.stdin.is_some() && !close_stdin {
                            pending.extend_from_slice(&frame.payload);
                        } else {
                            consumed += frame.payload.len();
                        }
                        continue;
                    }
                    FrameKind::Control => {}
                    kind => return Err(format!("protocol error: a {kind:?} frame from the host")),
                }
                match decode_host(&frame)? {
                    HostMessage::Signal { signal, group } => {
                        if status.is_none() {
                            let target = if group { -p.pid } else { p.pid };
                            // SAFETY: kill(2) has no memory-safety preconditions.
                            if unsafe { libc::kill(target, signal) } != 0 {
                                log!("signal {signal}: {}", Errno::last().desc());
                            }
                        }
                    }
                    HostMessage::CloseStdin => {
                        close_stdin = true;
                        if pending.is_empty() && p.stdin.is_some() {
                            end_stdin(&mut p);
                        }
                    }
                    HostMessage::Resize { rows, cols } => {
                        if let Some(t) = &p.terminal {
                            if let Err(e) = pty::resize(t, WinSize { rows, cols }) {
                                log!("{e}");
                            }
                        }
                    }
                    HostMessage::Shutdown if main => shutdown = true,
                    m => {
                        if !common_request(conn, &m)? {
                            return Err(format!("protocol error: unexpected {m:?}"));
                        }
                    }
                }
            }
            if shutdown {
                break End::ShutdownAsked;
            }
        }
    };
    if matches!(end, End::ConnectionLost | End::ShutdownAsked) && status.is_none() {
        reaper.forget(p.pid);
    }
    Ok(end)
}

/// Tell the host that `bytes` more of its stdin are passed on or dropped.
fn send_credit(conn: &mut Conn, bytes: usize) -> Result<(), String> {
    conn.send(&GuestMessage::StdinCredit {
        bytes: bytes as u64,
    })
}

/// The host closed the process's stdin: EOF on a pipe; Ctrl-D typed into a
/// terminal (the terminal itself stays, it is also the output).
fn end_stdin(p: &mut Proc) {
    match (&p.terminal, p.stdin.as_mut()) {
        (Some(_), Some(s)) => {
            let _ = s.write(&[EOT]);
        }
        _ => p.stdin = None,
    }
    if p.terminal.is_some() {
        p.stdin = None;
    }
}

/// After `Exited`/`StartFailed` on the main connection: wait for
/// `Shutdown`, EOF or a timeout.
fn wait_shutdown(conn: &mut Conn) {
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv(Some(left)) {
            Ok(None) => return,
            Err(e) => {
                log!("{e}");
                return;
            }
            Ok(Some(frame)) => {
                if frame.kind != FrameKind::Control {
                    continue;
                }
                match decode_host(&frame) {
                    Ok(HostMessage::Shutdown) => return,
                    Ok(HostMessage::Signal { .. })
                    | Ok(HostMessage::CloseStdin)
                    | Ok(HostMessage::Resize { .. }) => {}
                    Ok(m) => match common_request(conn, &m) {
                        Ok(true) => {}
                        Ok(false) => {
                            log!("protocol error: unexpected {m:?}");
                            return;
                        }
                        Err(e) => {
                            log!("{e}");
                            return;
                        }
                    },
                    Err(e) => {
                        log!("{e}");
                        return;
                    }
                }
            }
        }
    }
}
