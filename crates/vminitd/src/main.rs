//! vminitd: PID 1 of every vessel VM.
//!
//! Mounts the basics, serves the host's streams to port
//! [`agent_protocol::AGENT_PORT`] on the virtio-serial port
//! [`agent_protocol::mux::PORT_NAME`] (multiplexed, see [`agent_protocol::mux`];
//! an `AF_VSOCK` listener on that port only where the VM has no such
//! serial port), and serves each connection on a thread of its own
//! ([`session::serve`]): the container's main process, exec'd processes,
//! copies, statistics (see the `agent-protocol` crate). One reaper thread
//! collects every child ([`reaper`]). When the main process has ended and
//! the host says so, it powers the VM off.

mod adopt;
mod clock;
mod conn;
mod copy;
mod maintenance;
mod mounts;
mod net;
mod podcg;
mod populate;
mod process;
mod pty;
mod reaper;
mod session;
mod stats;
mod user;
mod volumes;

use agent_protocol::mux::{Mux, PORT_NAME};
use agent_protocol::{GuestMessage, AGENT_PORT, READY_PORT};
use conn::Conn;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    accept4, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use session::{Guest, Outcome};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

static CONSOLE: OnceLock<Option<File>> = OnceLock::new();

pub(crate) fn log_line(msg: &str) {
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
    // Several execs, copies and statistics may connect at once.
    let backlog = Backlog::new(128).map_err(|e| e.desc().to_string())?;
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
    // The copy helpers are vminitd started again (see `copy`).
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3
        && [copy::COPY_OUT_FLAG, copy::EXPORT_FLAG, copy::COPY_IN_FLAG].contains(&args[1].as_str())
    {
        let r = match args[1].as_str() {
            copy::COPY_IN_FLAG => copy::helper_in(&args[2]),
            flag => copy::helper_out(&args[2], flag == copy::EXPORT_FLAG),
        };
        if let Err(e) = r {
            eprintln!("{e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
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

/// The device of the virtio-serial port named [`PORT_NAME`]: its ports
/// appear shortly after boot, so look for `wait` at most.
fn find_agent_port(wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    return Some(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Done = Sender<Result<(), String>>;

/// Serve one host connection on a thread of its own.
fn spawn_session(mut conn: Conn, guest: &Arc<Guest>, done_tx: &Done) {
    let (guest, done_tx) = (Arc::clone(guest), done_tx.clone());
    let spawned = std::thread::Builder::new()
        .name("session".into())
        .spawn(move || match session::serve(&mut conn, &guest) {
            Ok(Outcome::Closed) => {}
            Ok(Outcome::PowerOff) => {
                let _ = done_tx.send(Ok(()));
            }
            Err(e) => {
                let _ = conn.send(&GuestMessage::Error { message: e.clone() });
                let _ = done_tx.send(Err(e));
            }
        });
    if let Err(e) = spawned {
        log!("session thread: {e}");
    }
}

/// The host's streams over the agent port at `dev`: each stream to
/// [`AGENT_PORT`] becomes a session on one end of a socket pair, whose
/// other end the multiplexer pumps. The answer to the host's `HELLO` is
/// the readiness signal.
fn serve_port(dev: &Path, guest: &Arc<Guest>, done_tx: &Done) -> Result<Arc<Mux>, String> {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("open {}: {e}", dev.display()))?;
    let writer = port
        .try_clone()
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    let (guest, done_tx) = (Arc::clone(guest), Mutex::new(done_tx.clone()));
    let acceptor = Box::new(move |p: u32| {
        if p != AGENT_PORT {
            return None;
        }
        let (mine, theirs) = UnixStream::pair().ok()?;
        let done_tx = done_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        spawn_session(Conn::new(OwnedFd::from(mine)), &guest, &done_tx);
        Some(theirs)
    });
    Mux::guest(port, writer, log_line, acceptor).map_err(|e| format!("agent port: {e}"))
}

fn run() -> Result<(), String> {
    // SIGCHLD goes to the reaper's signalfd: blocked before any thread
    // exists, so every thread inherits the mask. A process vminitd starts
    // gets an empty mask back (process::reset_process_state).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("block SIGCHLD: {}", e.desc()))?;
    let guest = Arc::new(Guest::new(reaper::Reaper::start()?));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    // Held for the VM's life.
    let _mux = match find_agent_port(Duration::from_secs(10)) {
        Some(dev) => Some(serve_port(&dev, &guest, &done_tx)?),
        None => {
            log!("no virtio-serial port {PORT_NAME}; listening on vsock");
            serve_vsock(&guest, &done_tx)?;
            None
        }
    };
    // The first session that ends the VM decides.
    done_rx
        .recv()
        .unwrap_or_else(|_| Err("every session thread is gone".into()))
}

/// The fallback: an `AF_VSOCK` listener on [`AGENT_PORT`].
fn serve_vsock(guest: &Arc<Guest>, done_tx: &Done) -> Result<(), String> {
    let listener = listen_vsock()?;
    // In a thread: a host that does not listen answers at once, but a
    // connect can wait up to the kernel's vsock connect timeout.
    let _ = std::thread::Builder::new()
        .name("ready".into())
        .spawn(signal_ready);
    let (guest, done_tx) = (Arc::clone(guest), done_tx.clone());
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || loop {
            match accept_conn(&listener) {
                Ok(conn) => spawn_session(conn, &guest, &done_tx),
                Err(e) => {
                    let _ = done_tx.send(Err(e));
                    return;
                }
            }
        })
        .map_err(|e| format!("accept thread: {e}"))?;
    Ok(())
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
