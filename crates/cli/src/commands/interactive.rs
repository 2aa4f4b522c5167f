//! An interactive stream over an upgraded connection (`run -i/-t`, `start
//! -a`, `attach`, `exec`), against our terminal: raw mode while we type
//! into a process's terminal (restored on every way out), the session
//! ([`crate::session`]), and what the user's Ctrl-C does when it is not
//! just a byte for that terminal.
//!
//! Under raw mode the terminal sends Ctrl-C to the process as a byte; a
//! SIGINT or SIGTERM from elsewhere still comes here. Without a terminal,
//! Ctrl-C is a signal to us, and [`Interrupt`] says what it does.

use crate::api::Api;
use crate::session::{self, End, ResizeFn};
use crate::terminal::RawMode;
use agent_protocol::HostMessage;
use anyhow::Result;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use vessel_api::client::{Upgraded, UpgradedWriter};
use vessel_api::http::percent_encode;

/// What SIGINT and SIGTERM do during a session.
#[derive(Debug, Clone)]
pub enum Interrupt {
    /// Stop the container (`run`, `start -a`): SIGTERM, SIGKILL after 10
    /// s; a second one kills it at once. The stream then ends with its exit.
    StopContainer(String),
    /// Pass the signal to the process in the stream (`exec`); a second
    /// one leaves, the process keeps what it got.
    SignalProcess,
    /// Pass the signal to the container's process through the API
    /// (`attach`, Docker's `--sig-proxy`).
    SignalContainer(String),
}

/// How to run a session.
pub struct Spec {
    /// Send our stdin.
    pub stdin: bool,
    /// The process has a terminal.
    pub tty: bool,
    pub detach_keys: Vec<u8>,
    /// Resizes through the API rather than in the stream.
    pub resize: Option<ResizeFn>,
    pub interrupt: Interrupt,
}

/// The writing half, shared by the session and the signal thread so each
/// frame goes out whole.
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<UpgradedWriter>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Warn, as Docker does, when a terminal is asked for and our stdin is
/// not one; the process still gets its terminal.
pub fn warn_if_not_a_terminal(tty: bool) {
    if tty && !crate::terminal::stdin_is_terminal() {
        eprintln!("vessel: warning: the input device is not a TTY; the container's process gets a terminal, but nothing typed reaches it as from one");
    }
}

/// The detach keys of `--detach-keys`, or Docker's default.
pub fn detach_keys(spec: Option<&str>) -> Result<Vec<u8>> {
    match spec {
        Some(s) => crate::terminal::parse_detach_keys(s),
        None => Ok(crate::terminal::DEFAULT_DETACH_KEYS.to_vec()),
    }
}

/// A resize of container `key`'s main terminal through the API.
pub fn resize_by_api(api: &Api, key: &str) -> ResizeFn {
    let api = api.clone();
    let path = format!("/v1/containers/{}/resize", percent_encode(key));
    Arc::new(move |rows, cols| {
        let _ = api.send("POST", &format!("{path}?h={rows}&w={cols}"), None);
    })
}

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Block SIGINT and SIGTERM in this thread (so in every thread spawned
/// after it) and handle them on a thread of their own as `what` says.
pub fn handle_interrupts(api: &Api, what: Interrupt, writer: Option<SharedWriterHandle>) {
    // SAFETY: the mask is a valid local; blocking signals in this thread is
    // inherited by threads spawned later, so only the waiter below sees them.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let api = api.clone();
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set and sig are valid for the call.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        let name = if sig == libc::SIGTERM { "TERM" } else { "INT" };
        match &what {
            Interrupt::StopContainer(key) => {
                let key = percent_encode(key);
                let path = if n == 0 {
                    format!("/v1/containers/{key}/stop?t=10")
                } else {
                    format!("/v1/containers/{key}/kill?signal=KILL")
                };
                let api2 = api.clone();
                std::thread::spawn(move || {
                    let _ = api2.send("POST", &path, None);
                });
            }
            Interrupt::SignalContainer(key) => {
                let path = format!("/v1/containers/{}/kill?signal={name}", percent_encode(key));
                let api2 = api.clone();
                std::thread::spawn(move || {
                    let _ = api2.send("POST", &path, None);
                });
            }
            Interrupt::SignalProcess => {
                let sent = n == 0
                    && writer.as_ref().is_some_and(|w| {
                        let mut w = w.0.clone();
                        agent_protocol::write_message(
                            &mut w,
                            &HostMessage::Signal {
                                signal: sig,
                                group: false,
                            },
                        )
                        .is_ok()
                    });
                if !sent {
                    crate::terminal::restore();
                    std::process::exit(128 + sig);
                }
            }
        }
    });
}

/// A handle on a session's writer, for the signal thread.
#[derive(Clone)]
pub struct SharedWriterHandle(SharedWriter);

/// Run a session over `conn` as `spec` says; how it ended.
pub fn run(api: &Api, conn: Upgraded, spec: Spec) -> Result<End> {
    warn_if_not_a_terminal(spec.tty);
    let (reader, writer) = conn.split()?;
    let closer = writer.try_clone()?;
    let shared = SharedWriter(Arc::new(Mutex::new(writer)));
    handle_interrupts(
        api,
        spec.interrupt.clone(),
        Some(SharedWriterHandle(shared.clone())),
    );
    // Raw only when what we type goes to a terminal in the container.
    let raw = if spec.tty && spec.stdin {
        RawMode::enable(libc::STDIN_FILENO)?
    } else {
        None
    };
    let opts = session::Options {
        stdin: spec.stdin,
        tty: spec.tty,
        detach_keys: if raw.is_some() {
            spec.detach_keys
        } else {
            Vec::new()
        },
        resize: spec.resize,
    };
    let end = session::run(
        reader,
        Box::new(shared),
        std::io::stdin(),
        std::io::stdout(),
        std::io::stderr(),
        &opts,
        Arc::new(move || {
            let _ = closer.close();
        }),
    );
    // The prompt of the process's terminal has no line end: what we say
    // next starts on a line of its own.
    if raw.is_some() && matches!(end, Ok(End::Lost | End::Detached)) {
        eprintln!();
    }
    drop(raw);
    end
}
