//! The container's healthcheck, run by the runtime helper (which lives as
//! long as the VM, apiserver restarts included): one thread per run of the
//! container, from the start of its process to its end.
//!
//! Each check is an exec through the guest's agent, on a connection of its
//! own, as `vessel exec` runs one: the check's command with the container's
//! environment, user and working directory, no stdin, stdout and stderr
//! kept together (at most [`MAX_OUTPUT`] bytes). A check still running at
//! its timeout is killed (SIGKILL to its process group) and counts as a
//! failure with exit code -1, as one that could not be started does. Each
//! result goes into `state.json` (`health`: status, failing streak, the last
//! results), from which the apiserver tells `ls`, `inspect` and the
//! `health_status` events. The rules are Docker's (see
//! [`vessel_api::health`]); checks pause while the VM is paused.

use crate::log;
use crate::run::Shared;
use crate::streams::GuestDialer;
use agent_protocol::{
    decode_message, read_frame, write_message, ExecRequest, FrameKind, GuestMessage, HostMessage,
};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use vessel_api::health::{
    cap_output, format_duration, HealthResult, Healthcheck, EXIT_CHECK_FAILED, MAX_OUTPUT,
};
use vessel_api::types::{now_ms, Status};
use vessel_api::ProcessSpec;

/// How long a check may take to start (the exec's `Started`), apart from
/// its timeout, which runs from then on (Docker's rule: a slow start is
/// not the check's time).
const START_LIMIT: Duration = Duration::from_secs(30);
/// How often the waits look at the container's state.
const TICK: Duration = Duration::from_millis(50);

/// What one check runs: the resolved healthcheck and the container's
/// process (for its environment, user and working directory).
#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub check: Healthcheck,
    pub process: ProcessSpec,
}

impl HealthSpec {
    /// The guest's exec request of check number `n`.
    fn request(&self, n: u64) -> ExecRequest {
        ExecRequest {
            exec_id: format!("health-{n}"),
            process: ProcessSpec {
                args: self.check.command(),
                env: self.process.env.clone(),
                cwd: self.process.cwd.clone(),
                user: self.process.user.clone(),
                rlimits: None,
                terminal: false,
                stdin: false,
            },
            tty_size: None,
        }
    }
}

/// Run the checks of the container in `shared` until `done` or until its
/// process no longer runs.
pub fn monitor(shared: Arc<Shared>, spec: HealthSpec, done: Arc<AtomicBool>) {
    let interval = Duration::from_millis(spec.check.interval_ms.max(1));
    let timeout = Duration::from_millis(spec.check.timeout_ms.max(1));
    let mut n = 0u64;
    log(&format!(
        "healthcheck {:?}: every {}, timeout {}, retries {}, start period {}",
        spec.check.command(),
        format_duration(spec.check.interval_ms),
        format_duration(spec.check.timeout_ms),
        spec.check.retries,
        format_duration(spec.check.start_period_ms),
    ));
    loop {
        // An interval after the start, and after the end of each check; a
        // pause starts the wait over once the VM runs again.
        if !wait(&shared, &done, interval) {
            return;
        }
        let dialer = match shared.running_dialer() {
            Ok(d) => d,
            Err(_) => continue,
        };
        n += 1;
        let start_ms = now_ms();
        let (exit_code, output) = run_check(&dialer, spec.request(n), timeout, &done);
        let result = HealthResult {
            start_ms,
            end_ms: now_ms(),
            exit_code,
            output,
        };
        // A result that comes after the end of the process is not kept
        // (Docker drops it too).
        if done.load(Ordering::SeqCst) || shared.snapshot().status != Status::Running {
            if shared.snapshot().status == Status::Paused {
                continue;
            }
            return;
        }
        let mut changed = None;
        shared.update(|s| {
            let started_ms = s.started_ms.unwrap_or(start_ms);
            match s.health.as_mut() {
                Some(h) if s.status == Status::Running => {
                    changed = h.record(&spec.check, started_ms, result)
                }
                _ => {}
            }
        });
        if let Some(status) = changed {
            log(&format!(
                "health: {} (check {n} exited {exit_code})",
                status.as_str()
            ));
        }
    }
}

/// Wait `d` while the process runs (a pause starts the wait over); false
/// once it does not run any more or `done` is set.
fn wait(shared: &Shared, done: &AtomicBool, d: Duration) -> bool {
    let mut until = Instant::now() + d;
    loop {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        match shared.snapshot().status {
            Status::Running => {}
            Status::Paused => until = Instant::now() + d,
            _ => return false,
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(TICK.min(until - now));
    }
}

/// Run one check: its exit code and output. A check that does not end
/// within `timeout` is killed: -1 and Docker's message.
pub fn run_check(
    dialer: &GuestDialer,
    req: ExecRequest,
    timeout: Duration,
    done: &AtomicBool,
) -> (i32, String) {
    let failed = |e: String| (EXIT_CHECK_FAILED, cap_output(e.as_bytes()));
    let (mut conn, _) = match dialer.open() {
        Ok(c) => c,
        Err(e) => return failed(format!("could not run the healthcheck: {e}")),
    };
    if let Err(e) = write_message(&mut conn, &HostMessage::Exec(req)) {
        return failed(format!("could not run the healthcheck: {e}"));
    }
    // Frames are read whole on a thread of their own (a read timeout could
    // cut one in two); it ends when the connection is shut down.
    let reader = match conn.try_clone() {
        Ok(r) => r,
        Err(e) => return failed(format!("could not run the healthcheck: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(reader);
        loop {
            let f = read_frame(&mut r);
            let end = !matches!(f, Ok(Some(_)));
            if tx.send(f).is_err() || end {
                return;
            }
        }
    });
    let mut output = Vec::new();
    let mut deadline = Instant::now() + START_LIMIT;
    let mut started = false;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || done.load(Ordering::SeqCst) {
            if !started {
                break failed("the healthcheck did not start within 30 s".into());
            }
            kill(&mut conn);
            break (
                EXIT_CHECK_FAILED,
                format!(
                    "Health check exceeded timeout ({})",
                    format_duration(timeout.as_millis() as u64)
                ),
            );
        }
        // Wake now and then to notice the end of the container.
        let frame = match rx.recv_timeout(left.min(Duration::from_millis(250))) {
            Ok(Ok(Some(f))) => f,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(Ok(None)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break failed("the guest closed the healthcheck's connection".into())
            }
            Ok(Err(e)) => break failed(format!("reading the healthcheck's output: {e}")),
        };
        match frame.kind {
            FrameKind::Stdout | FrameKind::Stderr => {
                // One byte past the limit is enough to show the cut.
                let room = (MAX_OUTPUT + 1).saturating_sub(output.len());
                output.extend_from_slice(&frame.payload[..frame.payload.len().min(room)]);
            }
            FrameKind::Control => match decode_message::<GuestMessage>(&frame) {
                Ok(GuestMessage::Started { .. }) => {
                    started = true;
                    deadline = Instant::now() + timeout;
                }
                Ok(GuestMessage::StartFailed { exit_code, message }) => {
                    let code = if exit_code == 0 {
                        EXIT_CHECK_FAILED
                    } else {
                        exit_code
                    };
                    break (code, cap_output(message.as_bytes()));
                }
                Ok(GuestMessage::Exited { exit_code, .. }) => {
                    break (exit_code, cap_output(&output))
                }
                Ok(GuestMessage::Error { message }) => break failed(message),
                _ => {}
            },
            _ => {}
        }
    };
    let _ = conn.shutdown(Shutdown::Both);
    result
}

/// Kill a check's whole process group, then hang up.
fn kill(conn: &mut UnixStream) {
    let _ = write_message(
        conn,
        &HostMessage::Signal {
            signal: libc::SIGKILL,
            group: true,
        },
    );
    let _ = conn.shutdown(Shutdown::Both);
}
