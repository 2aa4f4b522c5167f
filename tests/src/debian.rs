//! Real Debian software, run the same way in vessel and under podman with
//! runc on this host: a bookworm root filesystem that
//! `tests/fixtures/debian-image.sh` makes with `debootstrap` (python3 and its
//! regression tests, sqlite3, openssl, curl, zip), imported into vessel as
//! [`IMAGE`] and given to podman as the same folder (`--rootfs DIR:O`, an
//! overlay, so neither runtime writes into the cache).
//!
//! Both runtimes get the same settings: no network (loopback only), the
//! limits podman can set on this host (`nofile` and `nproc` 1024), the same
//! environment and working directory, and a time limit after which the
//! container is killed (a process that waits forever for a signal it never
//! gets must fail the test, not hang it).
//!
//! Input: `VESSEL_DEBIAN_IMAGE`, the folder the script printed (set by
//! `scripts/test.sh`); when it is not set, the script is run here (it reuses
//! its cache, and concurrent runs wait for each other).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{assert_ok, text, Instance};

/// The reference the Debian root filesystem is imported as.
pub const IMAGE: &str = "localhost/debian:bookworm";

/// The limits both runtimes get: podman refuses its own defaults
/// (1048576) on this host.
const ULIMITS: [&str; 2] = ["nofile=1024:1024", "nproc=1024:1024"];

/// The folder made by `tests/fixtures/debian-image.sh` (`rootfs/` and
/// `rootfs.tar` inside).
pub fn image_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("VESSEL_DEBIAN_IMAGE") {
            let d = PathBuf::from(d);
            assert!(
                d.join("rootfs.tar").is_file() && d.join("rootfs").is_dir(),
                "VESSEL_DEBIAN_IMAGE={} holds no rootfs/ and rootfs.tar: \
                 make it with tests/fixtures/debian-image.sh",
                d.display()
            );
            return d;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/debian-image.sh");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/fixtures/debian-image.sh");
        assert_ok(&out, "tests/fixtures/debian-image.sh (debootstrap)");
        let dir = text(&out.stdout);
        PathBuf::from(dir.lines().last().expect("the script prints its folder"))
    })
    .clone()
}

/// Import the Debian root filesystem into `v` as [`IMAGE`].
pub fn import(v: &Instance) {
    let tar = image_dir().join("rootfs.tar");
    let out = v.vessel(&["image", "import", tar.to_str().unwrap(), IMAGE]);
    assert_ok(&out, "image import of the Debian root filesystem");
}

/// Where a command runs.
#[derive(Clone, Copy)]
pub enum Runtime<'a> {
    /// A VM of this vessel instance (which has [`IMAGE`] imported).
    Vessel(&'a Instance),
    /// podman + runc on the host's kernel.
    Podman,
}

impl Runtime<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Vessel(_) => "vessel",
            Runtime::Podman => "podman+runc",
        }
    }
}

/// What a container run gave.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    /// Exit code (`None`: ended by a signal, or killed at the limit).
    pub code: Option<i32>,
    /// Killed because it had not ended within its time limit.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Run {
    /// Panic with the output unless the command exited 0.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.code == Some(0),
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            if self.timed_out {
                format!(
                    "killed at its time limit ({:.0} s)",
                    self.elapsed.as_secs_f64()
                )
            } else {
                format!("exit code {:?}", self.code)
            },
            self.stdout,
            self.stderr
        );
    }
}

/// Run `args` in a container of the Debian image, with `env` set, in
/// `workdir`, killed after `limit`.
pub fn run(
    rt: Runtime,
    env: &[(&str, &str)],
    workdir: &str,
    args: &[&str],
    limit: Duration,
) -> Run {
    let name = format!(
        "realsw-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut opts: Vec<String> = vec!["--rm".into(), "--name".into(), name.clone()];
    opts.extend(["--network".into(), "none".into()]);
    for u in ULIMITS {
        opts.extend(["--ulimit".into(), u.into()]);
    }
    for (k, v) in env {
        opts.extend(["-e".into(), format!("{k}={v}")]);
    }
    opts.extend(["-w".into(), workdir.into()]);
    let mut cmd = match rt {
        Runtime::Vessel(v) => {
            let mut c = v.cmd(&["run"]);
            c.args(&opts).arg(IMAGE);
            c
        }
        Runtime::Podman => {
            let mut c = podman();
            c.arg("run")
                .args(&opts)
                // conmon kills it at the limit; the deadline below is the
                // backstop.
                .arg("--timeout")
                .arg(limit.as_secs().max(1).to_string())
                .arg("--rootfs")
                .arg(format!("{}:O", image_dir().join("rootfs").display()));
            c
        }
    };
    cmd.args(args);
    let start = Instant::now();
    let out = output_within(cmd, limit + Duration::from_secs(5));
    let elapsed = start.elapsed();
    if out.status.is_none() {
        // The CLI was killed; remove the container it left.
        let _ = match rt {
            Runtime::Vessel(v) => v.vessel(&["rm", "-f", &name]),
            Runtime::Podman => podman().args(["rm", "-f", &name]).output().unwrap(),
        };
    }
    Run {
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
        code: out.status.and_then(|s| s.code()),
        // podman's --timeout kills the container (podman then exits 255).
        timed_out: out.status.is_none()
            || (matches!(rt, Runtime::Podman)
                && !out.status.is_some_and(|s| s.success())
                && elapsed >= limit),
        elapsed,
    }
}

/// `run FLAGS IMAGE ARGS` of the Debian image in `rt` as a shell command
/// line (for a terminal), with the settings [`run`] gives both runtimes:
/// no network, the same limits.
pub fn run_line(rt: Runtime, flags: &str, args: &str) -> String {
    let limits: String = ULIMITS.iter().map(|u| format!(" --ulimit {u}")).collect();
    match rt {
        Runtime::Vessel(_) => format!("vessel run --network none{limits} {flags} {IMAGE} {args}"),
        Runtime::Podman => format!(
            "podman --runtime /usr/sbin/runc --cgroup-manager cgroupfs run --network none{limits} {flags} --rootfs {}:O {args}",
            image_dir().join("rootfs").display()
        ),
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "/usr/sbin/runc",
        "--cgroup-manager",
        "cgroupfs",
    ]);
    c
}

/// What a command printed, and its status (`None`: killed at the limit).
struct Finished {
    status: Option<std::process::ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Run `cmd`, killed if it has not ended after `limit`. What it printed
/// until then is kept, so a hung run shows how far it got.
fn output_within(mut cmd: Command, limit: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the container runtime");
    // Read both pipes while waiting, so a chatty container cannot fill them.
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, reader)
    };
    let (stdout, ro) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, re) = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The pipes end with the command, unless something it started still
    // holds them (after a kill): then take what came so far.
    let until = Instant::now() + Duration::from_secs(5);
    while !(ro.is_finished() && re.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let take = |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap());
    Finished {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    }
}
