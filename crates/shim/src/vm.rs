//! One task's VM: the `vessel-runtime` process that owns it, and the
//! runtime's control socket (`crates/runtime/src/control.rs`), through which
//! the shim attaches to the main process, runs execs, signals, pauses and
//! reads statistics.

use agent_protocol::{
    read_frame, write_frame, write_message, FrameKind, GuestMessage, HostMessage,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vessel_api::control::ControlRequest;
use vessel_api::paths::Home;
use vessel_api::types::{ContainerConfig, ContainerState};

/// Errors talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Could not write the container record in {}", .0.display())]
    Record(PathBuf, #[source] std::io::Error),
    #[error("Could not start vessel-runtime ({}); install it next to the shim or on PATH", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("The VM did not come up: {0}")]
    NotUp(String),
    #[error("The runtime's control socket failed")]
    Control(#[source] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// The shim's private vessel home for task `id` of `namespace`: no
/// apiserver, only this container's record.
pub fn home_for(namespace: &str, id: &str) -> Home {
    let base = std::env::var_os("VESSEL_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/vessel-shim"));
    Home::new(base.join(namespace).join(id))
}

/// Write the record `vessel-runtime` reads.
pub fn write_record(home: &Home, config: &ContainerConfig) -> Result<(), VmError> {
    let dir = home.container_dir(&config.id);
    let err = |e| VmError::Record(dir.clone(), e);
    std::fs::create_dir_all(&dir).map_err(err)?;
    vessel_api::fsutil::write_json_atomic(&dir.join("config.json"), config).map_err(err)?;
    vessel_api::fsutil::write_json_atomic(&dir.join("state.json"), &ContainerState::created())
        .map_err(err)?;
    Ok(())
}

/// `vessel-runtime`: next to this binary, else on PATH.
fn runtime_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VESSEL_RUNTIME") {
        return p.into();
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join("vessel-runtime");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("vessel-runtime")
}

/// The running `vessel-runtime` of one task.
pub struct Runtime {
    pub child: Child,
    pub control: PathBuf,
    pub state: PathBuf,
}

impl Runtime {
    /// Start `vessel-runtime --home H --id ID`; it dies with the shim
    /// (SIGTERM: it stops the container and its VM, and cleans up).
    pub fn spawn(home: &Home, id: &str) -> Result<Runtime, VmError> {
        let dir = home.container_dir(id);
        let bin = runtime_binary();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runtime.log"))
            .map_err(|e| VmError::Record(dir.clone(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| VmError::Record(dir.clone(), e))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--home")
            .arg(home.root())
            .arg("--id")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| VmError::Spawn(bin, e))?;
        Ok(Runtime {
            child,
            control: home.run_dir(id).join("control.sock"),
            state: dir.join("state.json"),
        })
    }

    /// The runtime's last recorded state.
    pub fn read_state(&self) -> Option<ContainerState> {
        vessel_api::fsutil::read_json(&self.state).ok().flatten()
    }

    /// Wait until the control socket answers (the VM is being set up), up to
    /// `limit`, or the runtime ended.
    pub fn wait_control(&mut self, limit: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + limit;
        loop {
            if UnixStream::connect(&self.control).is_ok() {
                return Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                let why = self
                    .read_state()
                    .and_then(|s| s.error)
                    .unwrap_or_else(|| "vessel-runtime ended".into());
                return Err(VmError::NotUp(why));
            }
            if Instant::now() > deadline {
                return Err(VmError::NotUp("no control socket in time".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Read the answer line byte by byte, so frames after it stay unread.
fn read_line(conn: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match conn.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
        if line.len() > 1 << 20 {
            return Err(std::io::Error::other("answer line too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn refused(v: &serde_json::Value) -> Option<String> {
    (v.get("ok") == Some(&serde_json::Value::Bool(false))).then(|| {
        v.get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("refused")
            .to_string()
    })
}

fn send(control: &Path, req: &ControlRequest) -> Result<UnixStream, VmError> {
    let mut conn = UnixStream::connect(control).map_err(VmError::Control)?;
    let mut line = serde_json::to_string(req).map_err(|e| VmError::Control(e.into()))?;
    line.push('\n');
    conn.write_all(line.as_bytes()).map_err(VmError::Control)?;
    Ok(conn)
}

/// A one-shot request: its JSON answer, or the runtime's refusal.
pub fn ask(control: &Path, req: &ControlRequest) -> Result<serde_json::Value, VmError> {
    answered(control, req).map(|(_, v)| v)
}

/// A streaming request (attach, exec): the connection, after `{"ok":true}`.
pub fn open_stream(control: &Path, req: &ControlRequest) -> Result<UnixStream, VmError> {
    answered(control, req).map(|(conn, _)| conn)
}

/// Send `req` and read the runtime's first answer line: the connection and
/// that answer, or the runtime's refusal.
fn answered(
    control: &Path,
    req: &ControlRequest,
) -> Result<(UnixStream, serde_json::Value), VmError> {
    let mut conn = send(control, req)?;
    let line = read_line(&mut conn).map_err(VmError::Control)?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| VmError::Control(e.into()))?;
    match refused(&v) {
        Some(e) => Err(VmError::Refused(e)),
        None => Ok((conn, v)),
    }
}

/// Where a process's output goes.
pub struct Outputs {
    pub stdout: Option<std::fs::File>,
    pub stderr: Option<std::fs::File>,
}

impl Outputs {
    /// The FIFOs containerd gave; with a terminal, stderr is in stdout.
    pub fn open(stdout: &str, stderr: &str, terminal: bool) -> Self {
        Self {
            stdout: open_output(stdout),
            stderr: if terminal { None } else { open_output(stderr) },
        }
    }
}

/// What a stream said about its process.
#[derive(Debug, Default)]
pub struct Seen {
    pub pid: Option<i32>,
    /// (exit code as a shell reports it, signal)
    pub exit: Option<(i32, Option<i32>)>,
    /// Why it did not start (vminitd's `StartFailed`).
    pub failed: Option<String>,
}

/// Copy a stream's output frames to `out` until its `Exited` (returned) or
/// its end. `started` is called with the pid of an exec's `Started`.
pub fn pump_output(conn: &UnixStream, out: &mut Outputs, mut started: impl FnMut(i32)) -> Seen {
    let mut seen = Seen::default();
    let mut r = std::io::BufReader::new(conn);
    while let Ok(Some(frame)) = read_frame(&mut r) {
        match frame.kind {
            FrameKind::Stdout => {
                if let Some(f) = out.stdout.as_mut() {
                    let _ = f.write_all(&frame.payload);
                }
            }
            FrameKind::Stderr => {
                let f = out.stderr.as_mut().or(out.stdout.as_mut());
                if let Some(f) = f {
                    let _ = f.write_all(&frame.payload);
                }
            }
            FrameKind::Control => match agent_protocol::decode_message::<GuestMessage>(&frame) {
                Ok(GuestMessage::Started { pid, .. }) => {
                    seen.pid = Some(pid);
                    started(pid);
                }
                Ok(GuestMessage::Exited { exit_code, signal }) => {
                    seen.exit = Some((exit_code, signal));
                    break;
                }
                Ok(GuestMessage::StartFailed { exit_code, message }) => {
                    seen.exit = Some((exit_code, None));
                    seen.failed = Some(message);
                    break;
                }
                _ => {}
            },
            _ => {}
        }
    }
    seen
}

/// Open a stdin FIFO containerd gave (empty: none) without waiting for
/// its writer: held from `Create`/`Exec` on, so what the client writes (and
/// closes) before the process starts stays in the pipe, as with runc's shim.
pub fn open_stdin(path: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() {
        return None;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()
}

/// Copy `stdin` (from [`open_stdin`]) to the stream as `Stdin` frames;
/// `CloseStdin` once its writer has come and gone (a FIFO reports hang-up
/// only after a writer was there, so an early read finds no false end).
pub fn pump_stdin(f: std::fs::File, conn: UnixStream) {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let mut f = f;
        let mut w = &conn;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if r == 0 {
                continue;
            }
            match f.read(&mut buf) {
                Ok(0) if pfd.revents & libc::POLLHUP != 0 => break,
                Ok(0) => continue,
                Ok(n) => {
                    if write_frame(&mut w, FrameKind::Stdin, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = write_message(&mut w, &HostMessage::CloseStdin);
    });
}

/// Tell the process on `conn` its terminal's size.
pub fn resize(conn: &UnixStream, rows: u16, cols: u16) -> std::io::Result<()> {
    let mut w = conn;
    write_message(&mut w, &HostMessage::Resize { rows, cols })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// End the stdin of the process on `conn`.
pub fn close_stdin(conn: &UnixStream) -> std::io::Result<()> {
    let mut w = conn;
    write_message(&mut w, &HostMessage::CloseStdin)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Open an output FIFO containerd gave (empty: none).
pub fn open_output(path: &str) -> Option<std::fs::File> {
    if path.is_empty() {
        return None;
    }
    std::fs::OpenOptions::new().write(true).open(path).ok()
}
