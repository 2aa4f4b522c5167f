//! The host end of the guest's vsock: a `vhost-device-vsock` backend process
//! per VM, and hybrid-vsock connections through its Unix socket.

use crate::proc::die_with_parent;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's context id. Each VM has its own backend, so it never clashes.
pub const GUEST_CID: u32 = 3;

/// Errors starting the backend or connecting through it.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "vhost-device-vsock not found; install it with `cargo install --locked vhost-device-vsock`"
    )]
    NotFound,
    #[error("Could not open the vsock backend log {}", .0.display())]
    Log(PathBuf, #[source] io::Error),
    #[error("Could not start {}", .0.display())]
    Spawn(PathBuf, #[source] io::Error),
    #[error("The vsock backend exited ({0}) before creating its socket; see {}", .1.display())]
    Exited(String, PathBuf),
    #[error("The vsock backend did not create {} within {1:?}; see {}", .0.display(), .2.display())]
    NoSocket(PathBuf, Duration, PathBuf),
    #[error("Hybrid vsock connect failed")]
    Connect(#[source] io::Error),
    #[error("Hybrid vsock handshake failed")]
    Handshake(#[source] agent_protocol::ProtocolError),
    #[error("The guest has not said its vsock device is up")]
    GuestNotReady,
    #[error("Could not listen on {}", .0.display())]
    Listen(PathBuf, #[source] io::Error),
}

/// The guest's "vsock is up" signal: vminitd connects to host port
/// [`agent_protocol::READY_PORT`], which the backend forwards to the Unix
/// socket `<uds>_<port>` bound here before the VM starts. Until then (or
/// until `fallback` has passed, for an initramfs from before the signal)
/// the host does not connect.
pub struct ReadyGate {
    /// The socket's path (`<uds>_<READY_PORT>`).
    pub path: PathBuf,
    listener: UnixListener,
    since: Instant,
    fallback: Duration,
    signalled: Option<Duration>,
}

impl ReadyGate {
    pub fn bind(uds: &Path, fallback: Duration) -> Result<Self, VsockError> {
        let mut name = uds.as_os_str().to_owned();
        name.push(format!("_{}", agent_protocol::READY_PORT));
        let path = PathBuf::from(name);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| VsockError::Listen(path.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Listen(path.clone(), e))?;
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

/// `VESSEL_VHOST_VSOCK`, else `vhost-device-vsock` from `PATH`, else
/// `/usr/local/bin/vhost-device-vsock`.
pub fn backend_binary() -> Result<PathBuf, VsockError> {
    if let Some(p) = std::env::var_os("VESSEL_VHOST_VSOCK").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VsockError::NotFound)
        };
    }
    if let Some(p) = vessel_api::paths::find_in_path("vhost-device-vsock") {
        return Ok(p);
    }
    let p = PathBuf::from("/usr/local/bin/vhost-device-vsock");
    if p.is_file() {
        Ok(p)
    } else {
        Err(VsockError::NotFound)
    }
}

/// A running `vhost-device-vsock` serving one VM.
#[derive(Debug)]
pub struct VsockBackend {
    child: Child,
}

impl VsockBackend {
    /// Start the backend and wait (up to `limit`) for its vhost-user socket.
    pub fn start(
        binary: &Path,
        vhost_socket: &Path,
        uds: &Path,
        log: &Path,
        limit: Duration,
        jail: Option<crate::jail::Jail>,
    ) -> Result<Self, VsockError> {
        let open = || OpenOptions::new().create(true).append(true).open(log);
        let out = open().map_err(|e| VsockError::Log(log.to_path_buf(), e))?;
        let err = open().map_err(|e| VsockError::Log(log.to_path_buf(), e))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                vhost_socket.display(),
                uds.display()
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        if let Some(jail) = jail {
            jail.apply_to(&mut cmd);
        }
        let child = cmd
            .spawn()
            .map_err(|e| VsockError::Spawn(binary.to_path_buf(), e))?;
        let mut backend = Self { child };
        let deadline = Instant::now() + limit;
        loop {
            if vhost_socket.exists() {
                return Ok(backend);
            }
            if let Ok(Some(status)) = backend.child.try_wait() {
                return Err(VsockError::Exited(status.to_string(), log.to_path_buf()));
            }
            if Instant::now() >= deadline {
                backend.kill();
                return Err(VsockError::NoSocket(
                    vhost_socket.to_path_buf(),
                    limit,
                    log.to_path_buf(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill and reap the backend.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VsockBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connect to guest `port` through the backend's hybrid socket `uds`:
/// `CONNECT <port>\n`, then `OK <n>\n`. `reply_limit` bounds the wait for the
/// answer (the guest may not listen yet; the caller retries).
pub fn hybrid_connect(
    uds: &Path,
    port: u32,
    reply_limit: Duration,
) -> Result<UnixStream, VsockError> {
    let mut s = UnixStream::connect(uds).map_err(VsockError::Connect)?;
    s.set_read_timeout(Some(reply_limit))
        .map_err(VsockError::Connect)?;
    s.write_all(agent_protocol::hybrid_connect_line(port).as_bytes())
        .map_err(VsockError::Connect)?;
    let line = read_line(&mut s, 128).map_err(VsockError::Connect)?;
    agent_protocol::parse_hybrid_ok(&line).map_err(VsockError::Handshake)?;
    s.set_read_timeout(None).map_err(VsockError::Connect)?;
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
        // What the backend does for the guest's connect to READY_PORT.
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
