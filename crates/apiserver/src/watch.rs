//! What tells the apiserver that a container changed, instead of polling
//! its files: inotify on `containers/` and on each container's directory
//! (the runtime helper renames a new `state.json` into place and appends to
//! `stdio.log`), and a pidfd per running runtime helper (readable when the
//! helper ends, also when it died without writing its state).
//!
//! Each change bumps a counter in [`Changes`] (one for states, one for
//! logs) that waiters watch, and sends the container's ID to the
//! bookkeeper ([`crate::containers::Containers::check`]), which records
//! exits, gives networks back, emits events and removes `--rm` containers.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Counters that move when containers change.
pub struct Changes {
    state: watch::Sender<u64>,
    log: watch::Sender<u64>,
}

impl Changes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: watch::channel(0).0,
            log: watch::channel(0).0,
        })
    }

    /// A container's state changed (or its runtime helper ended).
    pub fn bump_state(&self) {
        self.state.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A container's output grew.
    pub fn bump_log(&self) {
        self.log.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Watch states, from now on.
    pub fn states(&self) -> watch::Receiver<u64> {
        self.state.subscribe()
    }

    /// Watch outputs, from now on.
    pub fn logs(&self) -> watch::Receiver<u64> {
        self.log.subscribe()
    }
}

/// A watch missed (too many watches, a directory made before its watch)
/// must not leave a waiter stuck: waiters look again after this long
/// without news.
pub const SAFETY_NET: Duration = Duration::from_secs(5);

/// Open a pidfd for `pid`, if it is still the process that started at
/// `start_time` (`None`: any).
pub fn pidfd(pid: i32, start_time: Option<u64>) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Opened after a reuse of the pid: another process.
    if start_time.is_some() && vessel_api::fsutil::pid_start_time(pid) != start_time {
        return None;
    }
    Some(fd)
}

/// Wait up to `limit` for the process `pid` (started at `start_time`) to
/// end; true when it has (or was already gone).
pub fn wait_exit(pid: i32, start_time: Option<u64>, limit: Duration) -> bool {
    let Some(fd) = pidfd(pid, start_time) else {
        return true;
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up: a wait never ends before its limit.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            if left.is_zero() {
                return false;
            }
            continue;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Register `fd` (readable interest) with the current runtime's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd`, which stays open and the same file
    // until the AsyncFd is dropped; OwnedFd::as_raw_fd always returns it.
    Ok(unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?)
}

const WATCH_DIR: u32 = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR;
const WATCH_CONTAINER: u32 =
    libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_MODIFY | libc::IN_CREATE;

/// The watcher: inotify, pidfds, and the channel to the bookkeeper.
pub struct Watcher {
    inotify: AsyncFd<OwnedFd>,
    dirs: Mutex<HashMap<i32, String>>,
    containers_dir: PathBuf,
    changes: Arc<Changes>,
    to_bookkeeper: Mutex<std::sync::mpsc::Sender<String>>,
    pids: Mutex<HashSet<(String, i32)>>,
    rt: Handle,
}

impl Watcher {
    /// Start watching `containers_dir`; IDs whose state may have changed go
    /// to `to_bookkeeper`. Must be called within the runtime `rt`.
    pub fn start(
        containers_dir: &Path,
        changes: Arc<Changes>,
        to_bookkeeper: std::sync::mpsc::Sender<String>,
        rt: Handle,
    ) -> io::Result<Arc<Self>> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let inotify = {
            let _g = rt.enter();
            register(fd)?
        };
        let me = Arc::new(Self {
            inotify,
            dirs: Mutex::new(HashMap::new()),
            containers_dir: containers_dir.to_path_buf(),
            changes,
            to_bookkeeper: Mutex::new(to_bookkeeper),
            pids: Mutex::new(HashSet::new()),
            rt: rt.clone(),
        });
        me.add_watch(containers_dir, WATCH_DIR, String::new())?;
        // Directories made before the watch.
        if let Ok(rd) = std::fs::read_dir(containers_dir) {
            for e in rd.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = me.add_watch(&e.path(), WATCH_CONTAINER, id.to_string());
                }
            }
        }
        let w = me.clone();
        rt.spawn(async move { w.run().await });
        Ok(me)
    }

    fn add_watch(&self, path: &Path, mask: u32, id: String) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: the fd is our inotify instance and c a valid C string.
        let wd = unsafe {
            libc::inotify_add_watch(self.inotify.get_ref().as_raw_fd(), c.as_ptr(), mask)
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Ok(mut d) = self.dirs.lock() {
            d.insert(wd, id);
        }
        Ok(())
    }

    /// Have the bookkeeper look at container `id`.
    pub fn notify(&self, id: &str) {
        if let Ok(tx) = self.to_bookkeeper.lock() {
            let _ = tx.send(id.to_string());
        }
    }

    async fn run(self: Arc<Self>) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut guard) = self.inotify.readable().await else {
                return;
            };
            let n = match guard.try_io(|fd| {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe {
                    libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    eprintln!("vessel-apiserver: reading inotify events: {e}");
                    return;
                }
                Err(_would_block) => continue,
            };
            self.handle(&buf[..n]);
        }
    }

    /// Act on a buffer of inotify events.
    fn handle(&self, mut b: &[u8]) {
        let mut state_ids = HashSet::new();
        let mut log = false;
        while b.len() >= 16 {
            let wd = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            let mask = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            let len = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]) as usize;
            let Some(name) = b.get(16..16 + len) else {
                break;
            };
            let name = String::from_utf8_lossy(name.split(|c| *c == 0).next().unwrap_or_default())
                .into_owned();
            b = &b[(16 + len).min(b.len())..];
            if mask & libc::IN_IGNORED != 0 {
                if let Ok(mut d) = self.dirs.lock() {
                    d.remove(&wd);
                }
                continue;
            }
            let dir = self.dirs.lock().ok().and_then(|d| d.get(&wd).cloned());
            match dir.as_deref() {
                // containers/: a new container directory.
                Some("") if mask & libc::IN_ISDIR != 0 => {
                    let _ = self.add_watch(
                        &self.containers_dir.join(&name),
                        WATCH_CONTAINER,
                        name.clone(),
                    );
                    state_ids.insert(name);
                }
                Some(id) if !id.is_empty() => {
                    if name == "state.json" {
                        state_ids.insert(id.to_string());
                    } else if name == "stdio.log" {
                        log = true;
                    }
                }
                _ => {}
            }
        }
        if log {
            self.changes.bump_log();
        }
        if !state_ids.is_empty() {
            self.changes.bump_state();
            for id in state_ids {
                self.notify(&id);
            }
        }
    }

    /// Watch the runtime helper `pid` of container `id` until it ends.
    pub fn watch_pid(self: &Arc<Self>, id: &str, pid: i32, start_time: Option<u64>) {
        let key = (id.to_string(), pid);
        let fresh = self
            .pids
            .lock()
            .map(|mut p| p.insert(key.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let me = self.clone();
        let id = id.to_string();
        let fd = pidfd(pid, start_time);
        self.rt.spawn(async move {
            if let Some(fd) = fd {
                if let Ok(afd) = register(fd) {
                    let _ = afd.readable().await;
                }
            }
            if let Ok(mut p) = me.pids.lock() {
                p.remove(&key);
            }
            me.changes.bump_state();
            me.notify(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wait_exit_follows_the_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = vessel_api::fsutil::pid_start_time(pid);
        assert!(!wait_exit(pid, start, Duration::from_millis(50)));
        let t = Instant::now();
        assert!(wait_exit(pid, start, Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(2));
        child.wait().unwrap();
        // Gone (reaped): nothing to wait for.
        assert!(wait_exit(pid, start, Duration::from_secs(5)));
    }

    #[test]
    fn state_files_and_new_directories_are_seen() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let changes = Changes::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = Watcher::start(dir.path(), changes.clone(), tx, rt.handle().clone()).unwrap();
        let mut logs = changes.logs();
        // The next ID told, past repeats of `last` (a rename and the close
        // of the renamed file are two events).
        let next = |last: &str| loop {
            let id = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if id != last {
                return id;
            }
        };
        // A state written atomically into a directory that existed before.
        vessel_api::fsutil::write_atomic(&dir.path().join("old/state.json"), b"{}").unwrap();
        assert_eq!(next(""), "old");
        // A new container directory, then its state.
        std::fs::create_dir(dir.path().join("new")).unwrap();
        assert_eq!(next("old"), "new");
        while rx.try_recv().is_ok() {}
        vessel_api::fsutil::write_atomic(&dir.path().join("new/state.json"), b"{}").unwrap();
        // A late repeat of `old` (the close of its renamed file) may come
        // first.
        assert_eq!(next("old"), "new");
        // Output: the log counter moves.
        logs.borrow_and_update();
        std::fs::write(dir.path().join("new/stdio.log"), b"x\n").unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), logs.changed())
                .await
                .unwrap()
                .unwrap()
        });
    }
}
