//! Supervision of the image helper (`vessel-images`).
//!
//! The helper is spawned by one long-lived thread (the parent-death signal
//! of a child is tied to the thread that forked it), dies with the apiserver,
//! and is restarted when it exits.

use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vessel_api::http::Client;
use vessel_api::paths::{sibling_binary, Home};

/// The image helper as the apiserver sees it.
pub struct ImagesHelper {
    home: Home,
    state: Mutex<HelperState>,
    changed: Condvar,
}

#[derive(Default)]
struct HelperState {
    pid: Option<i32>,
    ready: bool,
    last_error: Option<String>,
}

impl ImagesHelper {
    /// Start the helper and a thread that keeps it running.
    pub fn start(home: Home) -> Arc<Self> {
        let helper = Arc::new(Self {
            home,
            state: Mutex::new(HelperState::default()),
            changed: Condvar::new(),
        });
        let h = helper.clone();
        std::thread::Builder::new()
            .name("images-helper".into())
            .spawn(move || h.keep_running())
            .expect("spawning the helper thread");
        helper
    }

    /// The helper's pid, if it runs.
    pub fn pid(&self) -> Option<i32> {
        self.state
            .lock()
            .ok()
            .and_then(|s| if s.ready { s.pid } else { None })
    }

    /// A client for the helper, waiting (bounded) until it is ready.
    pub fn client(&self) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("helper state poisoned"))?;
        while !st.ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the image helper is not running{}; see {}",
                    st.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                    self.home.logs_dir().join("images.log").display()
                );
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .map_err(|_| anyhow::anyhow!("helper state poisoned"))?
                .0;
        }
        Ok(Client::new(self.home.images_socket()))
    }

    fn set(&self, pid: Option<i32>, ready: bool, err: Option<String>) {
        if let Ok(mut st) = self.state.lock() {
            st.pid = pid;
            st.ready = ready;
            if err.is_some() {
                st.last_error = err;
            }
        }
        self.changed.notify_all();
    }

    fn keep_running(&self) {
        let mut failures: Vec<Instant> = Vec::new();
        loop {
            match self.spawn() {
                Ok(mut child) => {
                    let pid = child.id() as i32;
                    if self.wait_ready(&mut child) {
                        self.set(Some(pid), true, None);
                    } else {
                        let _ = child.kill();
                    }
                    let status = child.wait();
                    self.set(None, false, Some(format!("exited: {status:?}")));
                    eprintln!("vessel-apiserver: image helper (pid {pid}) exited ({status:?}); restarting");
                }
                Err(e) => {
                    eprintln!("vessel-apiserver: cannot start the image helper: {e:#}");
                    self.set(None, false, Some(format!("{e:#}")));
                }
            }
            failures.retain(|t| t.elapsed() < Duration::from_secs(30));
            failures.push(Instant::now());
            let backoff = if failures.len() > 5 { 2000 } else { 100 };
            std::thread::sleep(Duration::from_millis(backoff));
        }
    }

    fn spawn(&self) -> Result<Child> {
        let logs = self.home.logs_dir();
        std::fs::create_dir_all(&logs)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("images.log"))?;
        let bin = sibling_binary("vessel-images");
        let mut cmd = Command::new(&bin);
        cmd.arg("--home")
            .arg(self.home.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))
    }

    fn wait_ready(&self, child: &mut Child) -> bool {
        let client = Client::new(self.home.images_socket()).with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if let Ok(r) = client.request("GET", "/health", None) {
                if r.status == 200 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
