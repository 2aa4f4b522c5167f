//! An interactive stream with a process in a container (`run -i/-t`,
//! `attach`, `exec`): the `vessel.agent.v1` frames the runtime relays (see
//! `crates/runtime/src/streams.rs`) against our stdin, stdout, stderr and
//! terminal.
//!
//! - The output (`Stdout`/`Stderr` frames) goes to our stdout and stderr.
//! - With `stdin`, what we read is sent as `Stdin` frames, then
//!   `CloseStdin` at EOF; under a terminal the detach keys end the session
//!   and leave the process running.
//! - With `tty`, our terminal's size is sent at once and on every SIGWINCH.
//! - The session ends with the process (`Exited`), when it cannot start
//!   (`StartFailed`), on detach, or when the connection is lost.

use crate::terminal::{DetachWatch, Input};
use agent_protocol::{
    decode_message, read_frame, write_frame, write_message, FrameKind, GuestMessage, HostMessage,
};
use anyhow::Result;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Tells the process's terminal our size (rows, columns) some other way
/// than in the stream (a stream that carries no stdin: the `resize` route).
pub type ResizeFn = Arc<dyn Fn(u16, u16) + Send + Sync>;

/// How a session is run.
#[derive(Clone, Default)]
pub struct Options {
    /// Send our stdin to the process.
    pub stdin: bool,
    /// The process has a terminal: send our size, watch the detach keys.
    pub tty: bool,
    /// The detach sequence (empty: none).
    pub detach_keys: Vec<u8>,
    /// Resizes go here instead of into the stream.
    pub resize: Option<ResizeFn>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("stdin", &self.stdin)
            .field("tty", &self.tty)
            .field("detach_keys", &self.detach_keys)
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The process ended with this code.
    Exited(i32),
    /// It could not start: Docker's code (125/126/127) and why.
    Failed(i32, String),
    /// The user typed the detach keys; the process runs on.
    Detached,
    /// The connection ended without an exit.
    Lost,
}

/// The write half, shared by the stdin and resize threads.
type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

fn send_frame(w: &Writer, kind: FrameKind, data: &[u8]) -> bool {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut *w, kind, data).is_ok()
}

fn send_message(w: &Writer, m: &HostMessage) -> bool {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    write_message(&mut *w, m).is_ok()
}

/// Our terminal's size as a `Resize`.
fn resize_message(fd: RawFd) -> Option<HostMessage> {
    crate::terminal::size(fd).map(|(rows, cols)| HostMessage::Resize { rows, cols })
}

/// The write end of the SIGWINCH self-pipe (-1: none).
static WINCH_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a one-byte static buffer.
        unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
}

/// Send our size now and whenever the terminal is resized: in the stream,
/// or through `out_of_band`.
fn watch_resizes(w: Writer, done: Arc<AtomicBool>, out_of_band: Option<ResizeFn>) {
    let tty_fd = libc::STDOUT_FILENO;
    let send = move |m: HostMessage| -> bool {
        match (&out_of_band, &m) {
            (Some(f), HostMessage::Resize { rows, cols }) => {
                f(*rows, *cols);
                true
            }
            _ => send_message(&w, &m),
        }
    };
    if let Some(m) = resize_message(tty_fd).or_else(|| resize_message(libc::STDIN_FILENO)) {
        send(m);
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    WINCH_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: installing an async-signal-safe handler for SIGWINCH.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_winch as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while !done.load(Ordering::SeqCst) {
            // SAFETY: reading into a valid buffer from our pipe.
            let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), b.len()) };
            if n <= 0 {
                break;
            }
            if let Some(m) = resize_message(tty_fd).or_else(|| resize_message(libc::STDIN_FILENO)) {
                if !send(m) {
                    break;
                }
            }
        }
    });
}

/// Copy our stdin to the process until EOF (then `CloseStdin`) or the
/// detach keys (then `shutdown`).
fn pump_stdin(
    mut input: impl Read + Send + 'static,
    w: Writer,
    opts: &Options,
    detached: Arc<AtomicBool>,
    shutdown: Arc<dyn Fn() + Send + Sync>,
) {
    let mut watch = DetachWatch::new(if opts.tty {
        opts.detach_keys.clone()
    } else {
        Vec::new()
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => {
                    send_message(&w, &HostMessage::CloseStdin);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    send_message(&w, &HostMessage::CloseStdin);
                    return;
                }
            };
            match watch.feed(&buf[..n]) {
                Input::Forward(data) => {
                    if !data.is_empty() && !send_frame(&w, FrameKind::Stdin, &data) {
                        return;
                    }
                }
                Input::Detach(data) => {
                    if !data.is_empty() {
                        send_frame(&w, FrameKind::Stdin, &data);
                    }
                    detached.store(true, Ordering::SeqCst);
                    shutdown();
                    return;
                }
            }
        }
    });
}

/// Run the session over `reader`/`writer` (one connection, split);
/// `shutdown` closes that connection (used to detach).
pub fn run(
    reader: impl Read,
    writer: Box<dyn Write + Send>,
    input: impl Read + Send + 'static,
    mut out: impl Write,
    mut err: impl Write,
    opts: &Options,
    shutdown: Arc<dyn Fn() + Send + Sync>,
) -> Result<End> {
    let w: Writer = Arc::new(Mutex::new(writer));
    let detached = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    if opts.tty {
        watch_resizes(Arc::clone(&w), Arc::clone(&done), opts.resize.clone());
    }
    if opts.stdin {
        pump_stdin(input, Arc::clone(&w), opts, Arc::clone(&detached), shutdown);
    }
    let mut r = std::io::BufReader::new(reader);
    let end = loop {
        let frame = match read_frame(&mut r) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break End::Lost,
        };
        match frame.kind {
            // A closed stdout (`| head`) must not end the session.
            FrameKind::Stdout => {
                let _ = out.write_all(&frame.payload).and_then(|()| out.flush());
            }
            FrameKind::Stderr => {
                let _ = err.write_all(&frame.payload).and_then(|()| err.flush());
            }
            FrameKind::Control => match decode_message::<GuestMessage>(&frame) {
                Ok(GuestMessage::Exited { exit_code, .. }) => break End::Exited(exit_code),
                Ok(GuestMessage::StartFailed { exit_code, message }) => {
                    break End::Failed(exit_code, message)
                }
                Ok(GuestMessage::Error { message }) => break End::Failed(125, message),
                _ => {}
            },
            _ => {}
        }
    };
    done.store(true, Ordering::SeqCst);
    if end == End::Lost && detached.load(Ordering::SeqCst) {
        return Ok(End::Detached);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    type Frames = Vec<(FrameKind, Vec<u8>)>;

    /// The far end: reads what the session sends, answers with `script`.
    fn peer(script: Frames) -> (UnixStream, std::thread::JoinHandle<Frames>) {
        let (a, b) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut r = std::io::BufReader::new(b.try_clone().unwrap());
            // Wait for stdin to end before answering.
            while let Ok(Some(f)) = read_frame(&mut r) {
                let close = f.kind == FrameKind::Control;
                got.push((f.kind, f.payload));
                if close {
                    break;
                }
            }
            let mut w = &b;
            for (k, p) in script {
                write_frame(&mut w, k, &p).unwrap();
            }
            got
        });
        (a, h)
    }

    #[test]
    fn stdin_out_and_the_exit_code() {
        let exited = serde_json::to_vec(&GuestMessage::Exited {
            exit_code: 3,
            signal: None,
        })
        .unwrap();
        let (conn, far) = peer(vec![
            (FrameKind::Stdout, b"out".to_vec()),
            (FrameKind::Stderr, b"err".to_vec()),
            (FrameKind::Control, exited),
        ]);
        let w: Box<dyn Write + Send> = Box::new(conn.try_clone().unwrap());
        let c2 = conn.try_clone().unwrap();
        let mut out = Vec::new();
        let mut err = Vec::new();
        let opts = Options {
            stdin: true,
            ..Default::default()
        };
        let end = run(
            &conn,
            w,
            &b"typed"[..],
            &mut out,
            &mut err,
            &opts,
            Arc::new(move || {
                let _ = c2.shutdown(std::net::Shutdown::Both);
            }),
        )
        .unwrap();
        assert_eq!(end, End::Exited(3));
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
        let got = far.join().unwrap();
        assert_eq!(got[0], (FrameKind::Stdin, b"typed".to_vec()));
        assert_eq!(
            decode_message::<HostMessage>(&agent_protocol::Frame {
                kind: got[1].0,
                payload: got[1].1.clone()
            })
            .unwrap(),
            HostMessage::CloseStdin
        );
    }

    #[test]
    fn a_failed_start_and_a_lost_connection() {
        let failed = serde_json::to_vec(&GuestMessage::StartFailed {
            exit_code: 127,
            message: "exec: \"nope\": executable file not found in $PATH".into(),
        })
        .unwrap();
        let (conn, _far) = peer(vec![(FrameKind::Control, failed)]);
        let w: Box<dyn Write + Send> = Box::new(conn.try_clone().unwrap());
        let opts = Options {
            stdin: true,
            ..Default::default()
        };
        let end = run(
            &conn,
            w,
            &b""[..],
            Vec::new(),
            Vec::new(),
            &opts,
            Arc::new(|| {}),
        )
        .unwrap();
        assert!(matches!(end, End::Failed(127, m) if m.contains("not found")));
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let w: Box<dyn Write + Send> = Box::new(a.try_clone().unwrap());
        let end = run(
            &a,
            w,
            &b""[..],
            Vec::new(),
            Vec::new(),
            &Options::default(),
            Arc::new(|| {}),
        )
        .unwrap();
        assert_eq!(end, End::Lost);
    }

    #[test]
    fn detach_keys_leave_the_process_running() {
        let (a, b) = UnixStream::pair().unwrap();
        let w: Box<dyn Write + Send> = Box::new(a.try_clone().unwrap());
        let a2 = a.try_clone().unwrap();
        let opts = Options {
            stdin: true,
            tty: true,
            detach_keys: crate::terminal::DEFAULT_DETACH_KEYS.to_vec(),
            resize: None,
        };
        let end = run(
            &a,
            w,
            &[b'l', b's', 16, 17, b'x'][..],
            Vec::new(),
            Vec::new(),
            &opts,
            Arc::new(move || {
                let _ = a2.shutdown(std::net::Shutdown::Both);
            }),
        )
        .unwrap();
        assert_eq!(end, End::Detached);
        let mut r = std::io::BufReader::new(&b);
        let mut stdin = Vec::new();
        while let Ok(Some(f)) = read_frame(&mut r) {
            if f.kind == FrameKind::Stdin {
                stdin.extend_from_slice(&f.payload);
            }
        }
        assert_eq!(stdin, b"ls", "nothing after the detach keys is sent");
    }
}
