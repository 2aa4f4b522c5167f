//! PID 1's reaper: one thread collects every child's end (SIGCHLD through a
//! signalfd) and hands the statuses of the processes vminitd started to the
//! sessions that wait for them; orphans that end are reaped and forgotten.
//!
//! A session registers its process while holding the reaper's lock across
//! the spawn ([`Reaper::spawn`]), so an exit that is reaped before the
//! registration cannot be lost: the reaper waits for the lock to dispatch.

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Exit code as a shell reports it, and the signal if one ended the process.
pub type ExitStatus = (i32, Option<i32>);

/// Where one process's end is delivered: a status and a pipe that becomes
/// readable when it is set (for `poll`).
#[derive(Debug)]
pub struct ExitSlot {
    status: Mutex<Option<ExitStatus>>,
    notify_r: File,
    notify_w: File,
}

impl ExitSlot {
    fn new() -> Result<Arc<Self>, String> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(format!("pipe: {}", Errno::last().desc()));
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        Ok(Arc::new(Self {
            status: Mutex::new(None),
            notify_r: r,
            notify_w: w,
        }))
    }

    /// Readable once the process has ended.
    pub fn fd(&self) -> RawFd {
        self.notify_r.as_raw_fd()
    }

    /// Whether the process has ended, leaving the notification to
    /// [`Self::status`]'s caller.
    pub fn ended(&self) -> bool {
        lock(&self.status).is_some()
    }

    /// The process's end, if it came.
    pub fn status(&self) -> Option<ExitStatus> {
        let s = *lock(&self.status);
        if s.is_some() {
            let mut buf = [0u8; 8];
            let _ = (&self.notify_r).read(&mut buf);
        }
        s
    }

    fn set(&self, status: ExitStatus) {
        *lock(&self.status) = Some(status);
        let _ = (&self.notify_w).write(&[1]);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registry of processes whose ends someone waits for.
#[derive(Debug, Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, Arc<ExitSlot>>>,
}

impl Reaper {
    /// Start the reaper thread. SIGCHLD must already be blocked in every
    /// thread (block it before any thread is started).
    pub fn start() -> Result<Arc<Self>, String> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {}", e.desc()))?;
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                // Blocks until a SIGCHLD is pending; several coalesce.
                let _ = sigfd.read_signal();
                r.reap();
            })
            .map_err(|e| format!("reaper thread: {e}"))?;
        Ok(reaper)
    }

    /// Run `spawn` (which starts a process and returns it with its pid) and
    /// register the pid, atomically with respect to the reaper.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32), crate::process::StartError>,
    ) -> Result<(T, Arc<ExitSlot>), crate::process::StartError> {
        let slot = ExitSlot::new().map_err(|e| crate::process::StartError::new(125, e))?;
        let mut waiting = lock(&self.waiting);
        let (t, pid) = spawn()?;
        waiting.insert(pid, Arc::clone(&slot));
        Ok((t, slot))
    }

    /// Stop waiting for `pid` (its session is gone); it is still reaped.
    pub fn forget(&self, pid: i32) {
        lock(&self.waiting).remove(&pid);
    }

    /// Reap every child that ended; deliver the statuses someone waits for.
    ///
    /// Under the lock [`Reaper::spawn`] holds: a spawn whose `exec` fails
    /// reaps its own child inside std's `Command::spawn`, and a `waitpid`
    /// of ours in between took that child from it (std then panics: "wait()
    /// should either return Ok or panic"), so `exec` of a missing command
    /// in a busy container lost its 127.
    fn reap(&self) {
        let mut waiting = lock(&self.waiting);
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(st) => {
                    let (Some(pid), Some(status)) = (st.pid(), crate::process::exit_status(st))
                    else {
                        continue;
                    };
                    if let Some(slot) = waiting.remove(&pid.as_raw()) {
                        slot.set(status);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::wait_readable;
    use std::time::Duration;

    #[test]
    fn slots_signal_once_set() {
        let s = ExitSlot::new().unwrap();
        assert!(!wait_readable(s.fd(), Some(Duration::from_millis(10))));
        assert_eq!(s.status(), None);
        s.set((3, None));
        assert!(wait_readable(s.fd(), Some(Duration::from_millis(10))));
        assert_eq!(s.status(), Some((3, None)));
    }
}
