//! The supervisor: keeps one apiserver running, restarting it when it
//! crashes, and reaps the runtime helpers that outlive an apiserver.
//!
//! `vessel system start` runs `vessel-apiserver supervise` in its own session.
//! The supervisor is a child subreaper, so runtime helpers orphaned by a
//! crashed apiserver are re-parented to it and reaped here. SIGTERM ends it:
//! the apiserver gets SIGTERM too; containers keep running.

use anyhow::{Context, Result};
use std::fs::OpenOptions;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vessel_api::fsutil::write_atomic;
use vessel_api::paths::{sibling_binary, Home};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Run the supervision loop until SIGTERM or a clean apiserver shutdown.
pub fn run(home: &Home, group: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(home.logs_dir())?;
    write_atomic(
        &home.supervisor_pid(),
        std::process::id().to_string().as_bytes(),
    )?;
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes this process's attributes.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // no SA_RESTART, so waitpid returns EINTR on a signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    let mut crashes: Vec<Instant> = Vec::new();
    loop {
        let pid = spawn_apiserver(home, group)?;
        eprintln!("vessel-supervisor: apiserver started (pid {pid})");
        let status = wait_for(pid);
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        match status {
            Some(0) => {
                eprintln!("vessel-supervisor: apiserver exited cleanly; stopping");
                break;
            }
            other => {
                eprintln!("vessel-supervisor: apiserver (pid {pid}) ended ({other:?}); restarting")
            }
        }
        crashes.retain(|t| t.elapsed() < Duration::from_secs(60));
        crashes.push(Instant::now());
        if crashes.len() > 10 {
            eprintln!("vessel-supervisor: the apiserver crashed more than 10 times in a minute; giving up");
            break;
        }
        std::thread::sleep(Duration::from_millis(100 * crashes.len() as u64));
    }
    let _ = std::fs::remove_file(home.supervisor_pid());
    Ok(())
}

fn spawn_apiserver(home: &Home, group: Option<&str>) -> Result<i32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.logs_dir().join("apiserver.log"))?;
    let bin = sibling_binary("vessel-apiserver");
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg("--home")
        .arg(home.root())
        .arg("--supervisor")
        .arg("vessel-supervisor");
    if let Some(g) = group {
        cmd.arg("--group").arg(g);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(child.id() as i32)
}

/// Reap children until `pid` ends; its exit code (None if killed by a
/// signal). On SIGTERM, pass it on to the apiserver and wait for it.
fn wait_for(pid: i32) -> Option<i32> {
    let mut forwarded = false;
    loop {
        if STOP.load(Ordering::SeqCst) && !forwarded {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            forwarded = true;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a valid local.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return if libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status))
            } else {
                None
            };
        }
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ECHILD) {
                return None;
            }
        }
    }
}
