//! vminitd: PID 1 of every vessel VM.
//!
//! Mounts the basics, listens on vsock port [`agent_protocol::AGENT_PORT`],
//! speaks `vessel.agent.v1` with the runtime helper (see the
//! `agent-protocol` crate for the conversation), runs the container process
//! chrooted into its root filesystem, pumps its output, reports its exit and
//! powers the VM off.

mod clock;
mod mounts;
mod net;
mod process;
mod user;

use agent_protocol::{
    decode_message, write_frame, write_message, Frame, FrameDecoder, FrameKind, GuestMessage,
    HostMessage, StartRequest, AGENT_PORT, MAX_STDIO_CHUNK, READY_PORT, VERSION,
};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use process::StartError;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{ChildStderr, ChildStdout};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// After the main process exits, how long its pipes may stay idle before
/// `Exited` is sent anyway (a daemonized grandchild may hold them open).
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// How long to wait for `Shutdown` after `Exited` or `StartFailed`.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

static CONSOLE: OnceLock<Option<File>> = OnceLock::new();

fn log_line(msg: &str) {
    let line = format!("vminitd: {msg}\n");
    let console = CONSOLE.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/console")
            .ok()
    });
    match console {
        Some(f) => {
            let mut w: &File = f;
            let _ = w.write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

macro_rules! log {
    ($($arg:tt)*) => { log_line(&format!($($arg)*)) };
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

/// Wait until `fd` is readable (or hung up), at most `timeout` (None = forever).
/// Returns false on timeout.
fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: `pfd` is a valid pollfd array of length 1 for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return r != 0;
    }
}

/// The host connection.
struct Conn {
    file: File,
    dec: FrameDecoder,
}

/// What ends a session.
enum Outcome {
    /// The host went away before `Start`: accept another connection.
    Reaccept,
    /// Power off.
    Done,
}

impl Conn {
    fn new(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            dec: FrameDecoder::new(),
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn send(&mut self, msg: &GuestMessage) -> Result<(), String> {
        write_message(&mut self.file, msg).map_err(|e| format!("send to host: {e}"))
    }

    fn send_stdio(&mut self, kind: FrameKind, data: &[u8]) -> Result<(), String> {
        for chunk in data.chunks(MAX_STDIO_CHUNK) {
            write_frame(&mut self.file, kind, chunk).map_err(|e| format!("send to host: {e}"))?;
        }
        Ok(())
    }

    /// A buffered frame, if a complete one is there.
    fn buffered(&mut self) -> Result<Option<Frame>, String> {
        self.dec
            .next_frame()
            .map_err(|e| format!("protocol error: {e}"))
    }

    /// One read from the socket into the decoder. Returns false at EOF.
    fn fill(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.dec.feed(&buf[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read from host: {e}")),
            }
        }
    }

    /// Next frame, blocking up to `timeout`. `Ok(None)` at EOF or timeout.
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>, String> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) || !wait_readable(self.fd(), left) {
                return Ok(None);
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }
}

fn decode_host(frame: &Frame) -> Result<HostMessage, String> {
    decode_message::<HostMessage>(frame).map_err(|e| {
        let src = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!("protocol error: {e}{src}")
    })
}

fn listen_vsock() -> Result<OwnedFd, String> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("vsock socket: {}", e.desc()))?;
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_PORT),
    )
    .map_err(|e| format!("vsock bind port {AGENT_PORT}: {}", e.desc()))?;
    let backlog = Backlog::new(4).map_err(|e| e.desc().to_string())?;
    listen(&fd, backlog).map_err(|e| format!("vsock listen: {}", e.desc()))?;
    Ok(fd)
}

/// Tell the host the vsock device is up and the agent listens: connect to
/// its [`READY_PORT`] and close (see that constant). A host that does not
/// listen there connects after its own delay.
fn signal_ready() {
    let Ok(fd) = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return;
    };
    if let Err(e) = connect(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_HOST, READY_PORT),
    ) {
        log!("vsock ready signal to the host: {}", e.desc());
    }
}

fn accept_conn(listener: &OwnedFd) -> Result<Conn, String> {
    loop {
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            Ok(fd) => return Ok(Conn::new(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => {}
            Err(e) => return Err(format!("vsock accept: {}", e.desc())),
        }
    }
}

fn main() {
    let is_init = std::process::id() == 1;
    let base_errors = if is_init {
        mounts::mount_base()
    } else {
        Vec::new()
    };
    for e in base_errors {
        log!("{e}");
    }
    std::panic::set_hook(Box::new(|info| log!("internal error: {info}")));
    match std::panic::catch_unwind(run) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log!("fatal: {e}"),
        Err(_) => log!("fatal: internal error"),
    }
    power_off(is_init);
}

fn run() -> Result<(), String> {
    // SIGCHLD is consumed through a signalfd; the container's process gets
    // an empty mask back (process::reset_process_state).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("block SIGCHLD: {}", e.desc()))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {}", e.desc()))?;
    let listener = listen_vsock()?;
    // In a thread: a host that does not listen answers at once, but a
    // connect can wait up to the kernel's vsock connect timeout.
    let _ = std::thread::Builder::new()
        .name("ready".into())
        .spawn(signal_ready);
    loop {
        let mut conn = accept_conn(&listener)?;
        match session(&mut conn, &sigfd) {
            Ok(Outcome::Reaccept) => log!("host disconnected before start; waiting again"),
            Ok(Outcome::Done) => return Ok(()),
            Err(e) => {
                let _ = conn.send(&GuestMessage::Error { message: e.clone() });
                return Err(e);
            }
        }
    }
}

/// One host connection. `Err` is a protocol or I/O error (power off).
fn session(conn: &mut Conn, sigfd: &SignalFd) -> Result<Outcome, String> {
    let Some(frame) = conn.recv(None)? else {
        return Ok(Outcome::Reaccept);
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
        features: [
            agent_protocol::FEATURE_NETWORK,
            agent_protocol::FEATURE_CLOCK,
            agent_protocol::FEATURE_RLIMITS,
        ]
        .map(String::from)
        .to_vec(),
    })?;

    let req = loop {
        let Some(frame) = conn.recv(None)? else {
            return Ok(Outcome::Reaccept);
        };
        if frame.kind == FrameKind::Stdin {
            continue;
        }
        match decode_host(&frame)? {
            HostMessage::Start(req) => break req,
            HostMessage::Shutdown => return Ok(Outcome::Done),
            HostMessage::CloseStdin => {}
            m @ (HostMessage::ReadClock { .. } | HostMessage::AdjustClock { .. }) => {
                clock_request(conn, m)?
            }
            other => return Err(format!("protocol error: expected start, got {other:?}")),
        }
    };

    match start(&req) {
        Ok(child) => {
            let pid = child.id() as i32;
            log!("started pid {pid}");
            conn.send(&GuestMessage::Started {
                pid,
                uptime_ms: uptime_ms(),
            })?;
            if supervise(conn, sigfd, child)? {
                return Ok(Outcome::Done);
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
    Ok(Outcome::Done)
}

/// Answer `ReadClock`, apply `AdjustClock` (see the `clock` module).
fn clock_request(conn: &mut Conn, msg: HostMessage) -> Result<(), String> {
    match msg {
        HostMessage::ReadClock { id } => conn.send(&GuestMessage::Clock {
            id,
            realtime_ns: clock::realtime_ns(),
        }),
        HostMessage::AdjustClock {
            offset_ns,
            mode,
            max_error_ns,
        } => {
            if let Err(e) = clock::adjust(offset_ns, mode, max_error_ns) {
                log!("{e}");
            }
            Ok(())
        }
        other => Err(format!("protocol error: {other:?} is not a clock request")),
    }
}

fn start(req: &StartRequest) -> Result<std::process::Child, StartError> {
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
    mounts::switch_root().map_err(|e| StartError::new(125, e))?;
    let root = mounts::root();
    let user = user::resolve_in_root(root, &p.user).map_err(|m| StartError::new(125, m))?;
    let env = process::build_env(&p.env, &user.home, &req.hostname);
    let rlimits = p
        .rlimits
        .clone()
        .unwrap_or_else(agent_protocol::default_rlimits);
    process::spawn(root, &p.args, &env, &p.cwd, &user, &rlimits)
}

/// Reap every zombie; returns the main process's status if it was reaped.
fn reap(main_pid: Option<Pid>) -> Option<(i32, Option<i32>)> {
    let mut main_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(st) => {
                if st.pid().is_some() && st.pid() == main_pid {
                    if let Some(s) = process::exit_status(st) {
                        main_status = Some(s);
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    main_status
}

enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

impl Pipe {
    fn fd(&self) -> RawFd {
        match self {
            Pipe::Out(p) => p.as_raw_fd(),
            Pipe::Err(p) => p.as_raw_fd(),
        }
    }
    fn kind(&self) -> FrameKind {
        match self {
            Pipe::Out(_) => FrameKind::Stdout,
            Pipe::Err(_) => FrameKind::Stderr,
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Pipe::Out(p) => p.read(buf),
            Pipe::Err(p) => p.read(buf),
        }
    }
}

/// Pump output and host messages until the process has exited and its
/// output is drained, then send `Exited`. Returns true when the host asked
/// for shutdown already.
fn supervise(
    conn: &mut Conn,
    sigfd: &SignalFd,
    mut child: std::process::Child,
) -> Result<bool, String> {
    let pid = Pid::from_raw(child.id() as i32);
    let mut pipes: Vec<Pipe> = Vec::new();
    if let Some(p) = child.stdout.take() {
        pipes.push(Pipe::Out(p));
    }
    if let Some(p) = child.stderr.take() {
        pipes.push(Pipe::Err(p));
    }
    drop(child); // reaped by `reap`, never by std
    let mut status: Option<(i32, Option<i32>)> = None;
    let mut exit_at = Instant::now();
    let mut last_io = Instant::now();
    let mut buf = vec![0u8; MAX_STDIO_CHUNK];

    loop {
        if status.is_none() {
            if let Some(s) = reap(Some(pid)) {
                status = Some(s);
                exit_at = Instant::now();
            }
        } else {
            reap(None);
        }
        let mut timeout_ms: i32 = -1;
        if status.is_some() {
            let idle = Instant::now().duration_since(exit_at.max(last_io));
            if pipes.is_empty() || idle >= DRAIN_IDLE {
                break;
            }
            timeout_ms = (DRAIN_IDLE - idle).as_millis() as i32 + 1;
        }

        let mut fds = vec![
            libc::pollfd {
                fd: conn.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for p in &pipes {
            fds.push(libc::pollfd {
                fd: p.fd(),
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
        if fds[1].revents != 0 {
            while let Ok(Some(_)) = sigfd.read_signal() {}
        }

        // Child output.
        let mut closed = Vec::new();
        for (i, p) in pipes.iter_mut().enumerate() {
            if fds[2 + i].revents == 0 {
                continue;
            }
            match p.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    last_io = Instant::now();
                    conn.send_stdio(p.kind(), &buf[..n])?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }

        // Host messages.
        if fds[0].revents != 0 {
            if !conn.fill()? {
                return Err("host connection closed while the process runs".into());
            }
            while let Some(frame) = conn.buffered()? {
                if frame.kind != FrameKind::Control {
                    continue; // stdin is /dev/null for now; stray stdio ignored
                }
                match decode_host(&frame)? {
                    HostMessage::Signal { signal } => {
                        if status.is_none() {
                            // SAFETY: kill(2) has no memory-safety preconditions.
                            if unsafe { libc::kill(pid.as_raw(), signal) } != 0 {
                                log!("signal {signal}: {}", Errno::last().desc());
                            }
                        }
                    }
                    HostMessage::CloseStdin => {}
                    HostMessage::Shutdown => return Ok(true),
                    m @ (HostMessage::ReadClock { .. } | HostMessage::AdjustClock { .. }) => {
                        clock_request(conn, m)?
                    }
                    other => return Err(format!("protocol error: unexpected {other:?}")),
                }
            }
        }
    }

    let (exit_code, signal) = status.unwrap_or((255, None));
    log!("process exited: {exit_code}");
    conn.send(&GuestMessage::Exited { exit_code, signal })?;
    Ok(false)
}

/// After `Exited`/`StartFailed`: wait for `Shutdown`, EOF or a timeout.
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
                    Ok(HostMessage::Signal { .. }) | Ok(HostMessage::CloseStdin) => {}
                    Ok(m @ (HostMessage::ReadClock { .. } | HostMessage::AdjustClock { .. })) => {
                        if let Err(e) = clock_request(conn, m) {
                            log!("{e}");
                            return;
                        }
                    }
                    Ok(other) => {
                        log!("protocol error: unexpected {other:?}");
                        return;
                    }
                    Err(e) => {
                        log!("{e}");
                        return;
                    }
                }
            }
        }
    }
}

fn power_off(is_init: bool) -> ! {
    if !is_init {
        std::process::exit(0);
    }
    log!("power off");
    // SAFETY: kill(2) has no memory-safety preconditions; as PID 1,
    // pid -1 reaches every process but ourselves.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => break,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            _ => {}
        }
    }
    nix::unistd::sync();
    mounts::unmount_all();
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log!("reboot failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
