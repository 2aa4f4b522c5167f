//! Supervision of the helper processes: the image helper (`vessel-images`)
//! and the network helper (`vessel-network`).
//!
//! Each helper is spawned by one long-lived thread (the parent-death signal
//! of a child is tied to the thread that forked it), dies with the apiserver,
//! and is restarted when it exits. A helper that cannot start (for example
//! `vessel-network` without the right to change the host's network) is
//! retried with a growing pause, and its last error is kept for
//! `vessel system status` and for the error of the request that needed it.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vessel_api::http::Client;
use vessel_api::paths::{sibling_binary, Home};

/// What to run and how to talk to it.
pub struct HelperSpec {
    /// The binary, next to the apiserver's.
    pub binary: &'static str,
    /// How messages name it: "the image helper".
    pub what: &'static str,
    /// Its log file under `VESSEL_HOME/logs`.
    pub log: &'static str,
    /// Its API socket.
    pub socket: PathBuf,
    /// Arguments after `--home DIR`.
    pub args: Vec<OsString>,
}

/// Called on the supervising thread each time the helper has become ready,
/// before any request is let through to it.
pub type OnReady = Box<dyn Fn(&Client) + Send + Sync>;

/// A supervised helper as the apiserver sees it.
pub struct Helper {
    home: Home,
    spec: HelperSpec,
    state: Mutex<HelperState>,
    changed: Condvar,
    on_ready: Mutex<Option<OnReady>>,
}

/// The image helper.
pub type ImagesHelper = Helper;

#[derive(Default)]
struct HelperState {
    pid: Option<i32>,
    ready: bool,
    last_error: Option<String>,
    /// The last attempt ended before the helper was ready.
    start_failed: bool,
    /// `stop` was called: do not restart.
    stopping: bool,
}

impl Helper {
    /// Start the helper and a thread that keeps it running.
    pub fn start(home: Home, spec: HelperSpec) -> Arc<Self> {
        Self::start_with(home, spec, None)
    }

    /// Start the helper; `on_ready` runs each time it (re)starts.
    pub fn start_with(home: Home, spec: HelperSpec, on_ready: Option<OnReady>) -> Arc<Self> {
        let helper = Self::new(home, spec);
        if let Some(f) = on_ready {
            helper.set_on_ready(f);
        }
        helper.launch();
        helper
    }

    /// A helper not started yet: set its hook, then [`Helper::launch`] it.
    pub fn new(home: Home, spec: HelperSpec) -> Arc<Self> {
        Arc::new(Self {
            home,
            spec,
            state: Mutex::new(HelperState::default()),
            changed: Condvar::new(),
            on_ready: Mutex::new(None),
        })
    }

    /// Start the thread that runs the helper and keeps it running.
    pub fn launch(self: &Arc<Self>) {
        let h = self.clone();
        std::thread::Builder::new()
            .name(format!("{}-helper", self.spec.binary))
            .spawn(move || h.keep_running())
            .expect("spawning the helper thread");
    }

    /// The image helper: `vessel-images --home DIR`.
    pub fn images(home: Home) -> Arc<Self> {
        let spec = HelperSpec {
            binary: "vessel-images",
            what: "the image helper",
            log: "images.log",
            socket: home.images_socket(),
            args: Vec::new(),
        };
        Self::start(home, spec)
    }

    /// The network helper, not launched yet: `vessel-network --home DIR`
    /// (it reads `VESSEL_SUBNET` and `VESSEL_DNS_UPSTREAM` itself).
    pub fn network(home: Home) -> Arc<Self> {
        let spec = HelperSpec {
            binary: "vessel-network",
            what: "the network helper",
            log: "network.log",
            socket: vessel_api::network::socket_path(&home),
            args: Vec::new(),
        };
        Self::new(home, spec)
    }

    /// Run `vessel-network --home DIR --cleanup` (after [`Helper::stop`]):
    /// takes this instance's bridges, TAPs and nftables table off the host;
    /// the network records stay.
    pub fn network_cleanup(home: &Home) -> Result<()> {
        let bin = sibling_binary("vessel-network");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.logs_dir().join("network.log"))?;
        let status = Command::new(&bin)
            .arg("--home")
            .arg(home.root())
            .arg("--cleanup")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running {} --cleanup", bin.display()))?;
        if !status.success() {
            bail!("{} --cleanup failed ({status})", bin.display());
        }
        Ok(())
    }

    /// Replace the hook run when the helper becomes ready.
    pub fn set_on_ready(&self, f: OnReady) {
        if let Ok(mut g) = self.on_ready.lock() {
            *g = Some(f);
        }
    }

    /// The helper's pid, if it runs.
    pub fn pid(&self) -> Option<i32> {
        self.state
            .lock()
            .ok()
            .and_then(|s| if s.ready { s.pid } else { None })
    }

    /// Why the helper is not running, if it is not.
    pub fn error(&self) -> Option<String> {
        let st = self.state.lock().ok()?;
        if st.ready {
            return None;
        }
        Some(
            st.last_error
                .clone()
                .unwrap_or_else(|| "starting".to_string()),
        )
    }

    /// The log file of the helper.
    pub fn log_path(&self) -> PathBuf {
        self.home.logs_dir().join(self.spec.log)
    }

    /// A client for the helper, waiting (bounded) until it is ready. A
    /// helper whose last start failed is waited for only briefly.
    pub fn client(&self) -> Result<Client> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("helper state poisoned"))?;
        let limit = if st.start_failed || st.stopping {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(15)
        };
        let deadline = Instant::now() + limit;
        while !st.ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} ({}) is not running{}; see {}",
                    self.spec.what,
                    self.spec.binary,
                    st.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                    self.log_path().display()
                );
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .map_err(|_| anyhow::anyhow!("helper state poisoned"))?
                .0;
        }
        Ok(Client::new(&self.spec.socket))
    }

    /// A client if the helper is ready now; never waits.
    pub fn try_client(&self) -> Option<Client> {
        let st = self.state.lock().ok()?;
        st.ready.then(|| Client::new(&self.spec.socket))
    }

    /// Stop the helper for good (system shutdown): SIGTERM, SIGKILL after
    /// `grace`; returns once it has exited.
    pub fn stop(&self, grace: Duration) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.stopping = true;
        st.ready = false;
        if let Some(pid) = st.pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + grace;
        let mut killed = false;
        while st.pid.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if killed {
                    return;
                }
                if let Some(pid) = st.pid {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                killed = true;
                continue;
            }
            st = match self
                .changed
                .wait_timeout(st, left.min(Duration::from_secs(2)))
            {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }

    fn set(&self, pid: Option<i32>, ready: bool, err: Option<String>) {
        if let Ok(mut st) = self.state.lock() {
            st.pid = pid;
            st.ready = ready && !st.stopping;
            if ready {
                st.start_failed = false;
            }
            if err.is_some() {
                st.last_error = err;
            }
        }
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.state.lock().map(|s| s.stopping).unwrap_or(true)
    }

    fn keep_running(&self) {
        let mut failures: Vec<Instant> = Vec::new();
        let (binary, what) = (self.spec.binary, self.spec.what);
        while !self.stopping() {
            let log_start = std::fs::metadata(self.log_path())
                .map(|m| m.len())
                .unwrap_or(0);
            match self.spawn() {
                Ok(mut child) => {
                    let pid = child.id() as i32;
                    if let Ok(mut st) = self.state.lock() {
                        st.pid = Some(pid);
                    }
                    let ready = self.wait_ready(&mut child);
                    if ready {
                        if let Ok(hook) = self.on_ready.lock() {
                            if let Some(f) = hook.as_ref() {
                                f(&Client::new(&self.spec.socket)
                                    .with_timeout(Duration::from_secs(30)));
                            }
                        }
                        self.set(Some(pid), true, None);
                    } else {
                        let _ = child.kill();
                    }
                    let status = child.wait();
                    let why = if ready {
                        format!("exited: {status:?}")
                    } else {
                        self.log_error(log_start)
                            .unwrap_or_else(|| format!("it exited before it was ready: {status:?}"))
                    };
                    if let Ok(mut st) = self.state.lock() {
                        st.start_failed = !ready;
                    }
                    self.set(None, false, Some(why.clone()));
                    if !self.stopping() {
                        eprintln!(
                            "vessel-apiserver: {what} (pid {pid}) exited ({why}); restarting"
                        );
                    }
                }
                Err(e) => {
                    eprintln!("vessel-apiserver: cannot start {binary}: {e:#}");
                    if let Ok(mut st) = self.state.lock() {
                        st.start_failed = true;
                    }
                    self.set(None, false, Some(format!("{e:#}")));
                }
            }
            failures.retain(|t| t.elapsed() < Duration::from_secs(60));
            failures.push(Instant::now());
            let backoff = match failures.len() {
                0..=5 => 100,
                6..=10 => 2000,
                _ => 10_000,
            };
            let until = Instant::now() + Duration::from_millis(backoff);
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The last `error` line the helper wrote to its log since `from`.
    fn log_error(&self, from: u64) -> Option<String> {
        let mut f = std::fs::File::open(self.log_path()).ok()?;
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        f.take(64 * 1024).read_to_string(&mut text).ok()?;
        text.lines().rev().find(|l| l.contains("error")).map(|l| {
            l.trim()
                .trim_start_matches(&format!("{}: ", self.spec.binary))
                .trim_start_matches("error: ")
                .to_string()
        })
    }

    fn spawn(&self) -> Result<Child> {
        let logs = self.home.logs_dir();
        std::fs::create_dir_all(&logs)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(self.spec.log))?;
        let bin = sibling_binary(self.spec.binary);
        let mut cmd = Command::new(&bin);
        cmd.arg("--home")
            .arg(self.home.root())
            .args(&self.spec.args)
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
        let client = Client::new(&self.spec.socket).with_timeout(Duration::from_secs(2));
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
