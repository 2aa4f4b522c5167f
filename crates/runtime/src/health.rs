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
                root: None,
                binds: Vec::new(),
                memory_max: None,
                cpu_max: None,
                cpu_weight: None,
                own_pids: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{write_frame, VERSION};
    use std::io::{BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use vessel_api::health::{Health, HealthStatus};
    use vessel_api::types::ContainerState;

    /// How the fake guest answers each check.
    #[derive(Clone, Copy)]
    enum Answer {
        Exit(i32),
        /// Never ends; records whether it was killed.
        Hang,
        Flood,
    }

    /// A guest agent at `uds` that answers each exec as `answer(n)` says;
    /// the signals it got.
    fn fake_guest(
        uds: &Path,
        answer: impl Fn(u64) -> Answer + Send + 'static,
    ) -> Arc<std::sync::Mutex<Vec<(i32, bool)>>> {
        let l = UnixListener::bind(uds).unwrap();
        let signals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&signals);
        std::thread::spawn(move || {
            let mut n = 0;
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                n += 1;
                let a = answer(n);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    // CONNECT line, then the agent's conversation.
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while c.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    c.write_all(b"OK 1\n").unwrap();
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let f = read_frame(&mut r).unwrap().unwrap();
                    assert!(matches!(
                        decode_message::<HostMessage>(&f),
                        Ok(HostMessage::Hello { .. })
                    ));
                    let hello = GuestMessage::Hello {
                        version: VERSION,
                        uptime_ms: 1,
                        features: vec![agent_protocol::FEATURE_EXEC.into()],
                    };
                    write_message(&mut c, &hello).unwrap();
                    let f = read_frame(&mut r).unwrap().unwrap();
                    let Ok(HostMessage::Exec(req)) = decode_message::<HostMessage>(&f) else {
                        panic!("expected an exec");
                    };
                    assert!(!req.process.stdin && !req.process.terminal);
                    write_message(
                        &mut c,
                        &GuestMessage::Started {
                            pid: 5,
                            uptime_ms: 2,
                        },
                    )
                    .unwrap();
                    match a {
                        Answer::Exit(code) => {
                            write_frame(&mut c, FrameKind::Stdout, b"out ").unwrap();
                            write_frame(&mut c, FrameKind::Stderr, b"err").unwrap();
                            let exited = GuestMessage::Exited {
                                exit_code: code,
                                signal: None,
                            };
                            write_message(&mut c, &exited).unwrap();
                        }
                        Answer::Flood => {
                            for _ in 0..10 {
                                write_frame(&mut c, FrameKind::Stdout, &[b'x'; 1000]).unwrap();
                            }
                            let exited = GuestMessage::Exited {
                                exit_code: 0,
                                signal: None,
                            };
                            write_message(&mut c, &exited).unwrap();
                        }
                        Answer::Hang => {
                            while let Ok(Some(f)) = read_frame(&mut r) {
                                if let Ok(HostMessage::Signal { signal, group }) =
                                    decode_message::<HostMessage>(&f)
                                {
                                    seen.lock().unwrap().push((signal, group));
                                }
                            }
                        }
                    }
                });
            }
        });
        signals
    }

    fn dialer(uds: &Path) -> GuestDialer {
        GuestDialer {
            uds: uds.to_path_buf(),
            timeout: Duration::from_secs(5),
        }
    }

    fn req() -> ExecRequest {
        HealthSpec {
            check: Healthcheck {
                test: vec!["CMD".into(), "check".into()],
                ..Default::default()
            },
            process: ProcessSpec::default(),
        }
        .request(1)
    }

    #[test]
    fn a_check_gives_its_exit_code_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        fake_guest(&uds, |n| {
            if n == 1 {
                Answer::Exit(0)
            } else {
                Answer::Flood
            }
        });
        let done = AtomicBool::new(false);
        let d = dialer(&uds);
        assert_eq!(
            run_check(&d, req(), Duration::from_secs(5), &done),
            (0, "out err".to_string())
        );
        let (code, out) = run_check(&d, req(), Duration::from_secs(5), &done);
        assert_eq!(code, 0);
        assert_eq!(out.len(), MAX_OUTPUT + 3, "capped, with `...`");
        assert!(out.ends_with("x..."));
    }

    #[test]
    fn a_check_past_its_timeout_is_killed_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let signals = fake_guest(&uds, |_| Answer::Hang);
        let done = AtomicBool::new(false);
        let t = Instant::now();
        let (code, out) = run_check(&dialer(&uds), req(), Duration::from_millis(300), &done);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(code, EXIT_CHECK_FAILED);
        assert_eq!(out, "Health check exceeded timeout (300ms)");
        let deadline = Instant::now() + Duration::from_secs(3);
        while signals.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*signals.lock().unwrap(), vec![(libc::SIGKILL, true)]);
    }

    #[test]
    fn a_guest_that_cannot_be_reached_is_a_failed_check() {
        let dir = tempfile::tempdir().unwrap();
        let done = AtomicBool::new(false);
        let (code, out) = run_check(
            &dialer(&dir.path().join("nothing")),
            req(),
            Duration::from_secs(1),
            &done,
        );
        assert_eq!(code, EXIT_CHECK_FAILED);
        assert!(out.starts_with("could not run the healthcheck"), "{out}");
    }

    #[test]
    fn the_monitor_records_results_until_the_process_ends() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        // Two successes, then failures.
        fake_guest(&uds, |n| Answer::Exit(if n <= 2 { 0 } else { 1 }));
        let mut running = ContainerState::created();
        running.status = Status::Running;
        running.started_ms = Some(now_ms());
        running.health = Some(Health::starting());
        let shared = Arc::new(Shared::new(
            dir.path().join("state.json"),
            running,
            Duration::from_secs(1),
        ));
        shared.set_dialer(dialer(&uds));
        let spec = HealthSpec {
            check: Healthcheck {
                test: vec!["CMD".into(), "check".into()],
                interval_ms: 50,
                timeout_ms: 1000,
                start_period_ms: 0,
                retries: 2,
            },
            process: ProcessSpec::default(),
        };
        let done = Arc::new(AtomicBool::new(false));
        let h = {
            let (shared, done) = (Arc::clone(&shared), Arc::clone(&done));
            std::thread::spawn(move || monitor(shared, spec, done))
        };
        let status = || shared.snapshot().health.map(|h| h.status);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = vec![status()];
        while seen.last() != Some(&Some(HealthStatus::Unhealthy)) {
            assert!(Instant::now() < deadline, "seen {seen:?}");
            let s = status();
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            seen,
            vec![
                Some(HealthStatus::Starting),
                Some(HealthStatus::Healthy),
                Some(HealthStatus::Unhealthy)
            ]
        );
        let on_disk: ContainerState = vessel_api::fsutil::read_json(&dir.path().join("state.json"))
            .unwrap()
            .unwrap();
        let health = on_disk.health.unwrap();
        assert!(health.failing_streak >= 2);
        assert_eq!(health.log[0].exit_code, 0);
        assert_eq!(health.log[0].output, "out err");
        // The end of the process ends the monitor.
        shared.update(|s| s.status = Status::Exited);
        h.join().unwrap();
    }
}
