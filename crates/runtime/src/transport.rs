//! The host end of the agent transport: the VM's virtio-serial port
//! [`agent_protocol::mux::PORT_NAME`], whose other end QEMU inherits as a connected socket,
//! multiplexed into streams ([`agent_protocol::mux`]) by threads of the
//! runtime itself. Unlike vhost-user vsock, the port survives QEMU's
//! migration (VM templates).
//!
//! The rest of the runtime reaches the guest as it did through the
//! `vhost-device-vsock` backend this replaces, by *hybrid vsock*: connect to
//! the Unix socket `RUN/vsock.sock`, write `CONNECT <port>\n`, read
//! `OK <n>\n`, then a byte stream to that guest port ([`hybrid_connect`]).
//! When the guest answers the mux's `HELLO` (once vminitd accepts
//! sessions), the transport connects to `RUN/vsock.sock_<READY_PORT>` and
//! closes, the guest's "ready" signal ([`ReadyGate`]).

use agent_protocol::mux::{Mux, MuxError};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client of `vsock.sock` has to send its `CONNECT` line.
const CONNECT_LINE_LIMIT: Duration = Duration::from_secs(5);

/// Errors setting up the transport or connecting through it.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("Could not create the agent port's socket pair")]
    Pair(#[source] io::Error),
    #[error("Could not start the agent port's multiplexer")]
    Mux(#[source] MuxError),
    #[error("Hybrid vsock connect failed")]
    Connect(#[source] io::Error),
    #[error("Hybrid vsock handshake failed")]
    Handshake(#[source] agent_protocol::ProtocolError),
    #[error("The guest has not said its agent port is up")]
    GuestNotReady,
    #[error("Could not listen on {}", .0.display())]
    Listen(PathBuf, #[source] io::Error),
}

/// The host side of one VM's agent port: the multiplexer and the
/// `vsock.sock` listener in front of it. Dropping it closes both.
pub struct AgentTransport {
    mux: Arc<Mux>,
    link: UnixStream,
    listener: UnixListener,
    /// QEMU's end until QEMU holds its copy.
    qemu_end: Option<OwnedFd>,
}

impl std::fmt::Debug for AgentTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTransport")
            .field("link", &self.link)
            .field("ready", &self.mux.is_ready())
            .finish()
    }
}

impl AgentTransport {
    /// Greet the guest on a fresh socket pair (QEMU's end: [`Self::qemu_fd`])
    /// and serve `uds`. The guest's answer connects to `ready` and closes.
    pub fn start(uds: &Path, ready: PathBuf) -> Result<Self, TransportError> {
        let (link, qemu_end) = UnixStream::pair().map_err(TransportError::Pair)?;
        let reader = link.try_clone().map_err(TransportError::Pair)?;
        let writer = link.try_clone().map_err(TransportError::Pair)?;
        let on_ready = Box::new(move || {
            if let Err(e) = UnixStream::connect(&ready) {
                crate::log(&format!("signalling the guest's readiness: {e}"));
            }
        });
        let mux = Mux::host(reader, writer, crate::log, on_ready).map_err(TransportError::Mux)?;
        let _ = std::fs::remove_file(uds);
        let listener =
            UnixListener::bind(uds).map_err(|e| TransportError::Listen(uds.to_path_buf(), e))?;
        let accepting = listener
            .try_clone()
            .map_err(|e| TransportError::Listen(uds.to_path_buf(), e))?;
        let m = Arc::clone(&mux);
        std::thread::Builder::new()
            .name("agent-accept".into())
            .spawn(move || serve(accepting, m))
            .map_err(|e| TransportError::Listen(uds.to_path_buf(), e))?;
        Ok(Self {
            mux,
            link,
            listener,
            qemu_end: Some(qemu_end.into()),
        })
    }

    /// The descriptor QEMU inherits for the port's chardev.
    pub fn qemu_fd(&self) -> Option<RawFd> {
        self.qemu_end.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Close the runtime's copy of QEMU's end once QEMU has its own, so the
    /// link ends when QEMU does.
    pub fn release_qemu_end(&mut self) {
        self.qemu_end = None;
    }

    /// Close everything: the listener, the link, every stream.
    pub fn close(&mut self) {
        self.qemu_end = None;
        // SAFETY: shutdown(2) on a descriptor we own; it wakes the accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.link.shutdown(Shutdown::Both);
        self.mux.close();
    }
}

impl Drop for AgentTransport {
    fn drop(&mut self) {
        self.close();
    }
}

/// Accept `vsock.sock` clients; each is a stream to the guest port it names.
fn serve(listener: UnixListener, mux: Arc<Mux>) {
    let n = Arc::new(AtomicU32::new(1 << 30));
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(_) if mux.is_closed() => return,
            Err(e) => {
                crate::log(&format!("agent socket: {e}"));
                return;
            }
        };
        if mux.is_closed() {
            return;
        }
        let (mux, n) = (Arc::clone(&mux), Arc::clone(&n));
        let _ = std::thread::Builder::new()
            .name("agent-connect".into())
            .spawn(move || {
                // A refused or failed connection is closed unanswered, as
                // the vsock backend did; the client retries or reports.
                let _ = relay(conn, &mux, n.fetch_add(1, Ordering::Relaxed));
            });
    }
}

/// Read `CONNECT <port>`, open the stream, answer `OK <n>`.
fn relay(mut conn: UnixStream, mux: &Arc<Mux>, n: u32) -> Result<(), TransportError> {
    conn.set_read_timeout(Some(CONNECT_LINE_LIMIT))
        .map_err(TransportError::Connect)?;
    let line = read_line(&mut conn, 128).map_err(TransportError::Connect)?;
    let port = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| TransportError::Connect(io::ErrorKind::InvalidData.into()))?;
    conn.set_read_timeout(None)
        .map_err(TransportError::Connect)?;
    let greeting = format!("OK {n}\n");
    mux.connect(port, conn, CONNECT_LINE_LIMIT, greeting.as_bytes())
        .map_err(TransportError::Mux)
}

/// The guest's "agent is up" signal: the transport connects to the Unix
/// socket `<uds>_<READY_PORT>` bound here when the guest answers its
/// `HELLO`. Until then (or until `fallback` has passed) the host does not
/// connect.
pub struct ReadyGate {
    /// The socket's path (`<uds>_<READY_PORT>`).
    pub path: PathBuf,
    listener: UnixListener,
    since: Instant,
    fallback: Duration,
    signalled: Option<Duration>,
}

impl ReadyGate {
    pub fn bind(uds: &Path, fallback: Duration) -> Result<Self, TransportError> {
        let mut name = uds.as_os_str().to_owned();
        name.push(format!("_{}", agent_protocol::READY_PORT));
        let path = PathBuf::from(name);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| TransportError::Listen(path.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TransportError::Listen(path.clone(), e))?;
        Ok(Self {
            path,
            listener,
            since: Instant::now(),
            fallback,
            signalled: None,
        })
    }

    /// Whether the host may connect now.
    pub fn open(&mut self) -> bool {
        if self.signalled.is_none() && self.listener.accept().is_ok() {
            self.signalled = Some(self.since.elapsed());
        }
        self.signalled.is_some() || self.since.elapsed() >= self.fallback
    }

    /// When the guest signalled, if it did.
    pub fn signalled_after(&self) -> Option<Duration> {
        self.signalled
    }
}

/// Connect to guest `port` through the transport's hybrid socket `uds`:
/// `CONNECT <port>\n`, then `OK <n>\n`. `reply_limit` bounds the wait for the
/// answer (the guest may not listen yet; the caller retries).
pub fn hybrid_connect(
    uds: &Path,
    port: u32,
    reply_limit: Duration,
) -> Result<UnixStream, TransportError> {
    let mut s = UnixStream::connect(uds).map_err(TransportError::Connect)?;
    s.set_read_timeout(Some(reply_limit))
        .map_err(TransportError::Connect)?;
    s.write_all(agent_protocol::hybrid_connect_line(port).as_bytes())
        .map_err(TransportError::Connect)?;
    let line = read_line(&mut s, 128).map_err(TransportError::Connect)?;
    agent_protocol::parse_hybrid_ok(&line).map_err(TransportError::Handshake)?;
    s.set_read_timeout(None).map_err(TransportError::Connect)?;
    Ok(s)
}

/// Read one `\n`-terminated line byte by byte, so nothing after it is
/// consumed. At most `max` bytes.
fn read_line(r: &mut impl Read, max: usize) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while buf.len() < max {
        match r.read(&mut b) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(_) => buf.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "reply line too long",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    #[test]
    fn ready_gate_opens_on_the_guest_signal_or_after_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut gate = ReadyGate::bind(&uds, Duration::from_secs(60)).unwrap();
        assert!(!gate.open(), "closed before the guest says anything");
        // What the transport does when the guest answers.
        let port_path = dir
            .path()
            .join(format!("vsock.sock_{}", agent_protocol::READY_PORT));
        let _guest = UnixStream::connect(&port_path).unwrap();
        assert!(gate.open());
        assert!(gate.open(), "stays open");
        assert!(gate.signalled_after().is_some());

        let mut old_guest = ReadyGate::bind(&uds, Duration::from_millis(50)).unwrap();
        assert!(!old_guest.open());
        std::thread::sleep(Duration::from_millis(60));
        assert!(old_guest.open(), "open after the fallback");
        assert_eq!(old_guest.signalled_after(), None);
    }

    #[test]
    fn clients_reach_the_guest_port_through_the_multiplexer() {
        use agent_protocol::mux::Mux;
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut gate = ReadyGate::bind(&uds, Duration::from_secs(60)).unwrap();
        let mut t = AgentTransport::start(&uds, gate.path.clone()).unwrap();
        // Refused while the guest has not answered.
        assert!(hybrid_connect(&uds, 1024, Duration::from_secs(5)).is_err());
        // What QEMU would hold: the guest's end of the link.
        let fd = t.qemu_fd().unwrap();
        // SAFETY: a duplicate of the transport's descriptor, owned here.
        let g = unsafe { UnixStream::from_raw_fd(libc::dup(fd)) };
        t.release_qemu_end();
        let acceptor = Box::new(|port: u32| {
            let (mine, theirs) = UnixStream::pair().ok()?;
            if port != 1024 {
                return None;
            }
            std::thread::spawn(move || {
                let mut r = mine.try_clone().unwrap();
                let mut w = mine;
                let _ = io::copy(&mut r, &mut w);
            });
            Some(theirs)
        });
        let _guest = Mux::guest(g.try_clone().unwrap(), g, |_| {}, acceptor).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gate.open() {
            assert!(
                Instant::now() < deadline,
                "the guest's answer opens the gate"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gate.signalled_after().is_some());
        let mut s = hybrid_connect(&uds, 1024, Duration::from_secs(5)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(hybrid_connect(&uds, 1025, Duration::from_secs(5)).is_err());
        t.close();
        assert!(hybrid_connect(&uds, 1024, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn hybrid_handshake_leaves_stream_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nrest").unwrap();
        });
        let mut s = hybrid_connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
        t.join().unwrap();
    }

    #[test]
    fn closed_connection_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            drop(s);
        });
        assert!(hybrid_connect(&path, 1024, Duration::from_secs(5)).is_err());
        t.join().unwrap();
    }
}
