//! End-to-end test harness: each [`Instance`] is a real vessel instance with
//! its own `VESSEL_HOME`, started through the CLI like a user would, booting
//! real VMs. Dropping it stops the instance and kills anything it left
//! (VMs, runtime helpers), even when the test failed.
//!
//! Inputs, set by `scripts/test.sh`:
//! - `VESSEL_KERNEL`, `VESSEL_INITRD`: the guest kernel and initramfs;
//! - `VESSEL_TEST_IMAGE`: the offline default image (OCI archive);
//! - `VESSEL_PROBE`: the static `vessel-probe` (scripts/build-probe.sh), for
//!   tests/kernel_features.rs;
//! - `VESSEL_DEBIAN_IMAGE` (optional): the Debian root filesystem of the
//!   real-software tests ([`debian`]); made on first use when not set;
//! - `VESSEL_BIN_DIR` (optional): where the vessel binaries are; default the
//!   target directory these tests were built into.

#![allow(clippy::unwrap_used)]

pub mod debian;
pub mod registry;
pub mod small_disk;
pub mod tmux;
pub mod token;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The default image's reference, as its archive names it.
pub const IMAGE: &str = "localhost/busybox:latest";

/// A required environment variable; a missing one fails the test loudly.
pub fn required_env(name: &str) -> PathBuf {
    let v = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the tests through scripts/test.sh, which builds the guest and sets it")
    });
    let p = PathBuf::from(v);
    assert!(p.exists(), "{name}={} does not exist", p.display());
    p
}

/// Directory of the vessel binaries under test.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VESSEL_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/debug/deps/<test> → target/debug
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A vessel instance for one test.
pub struct Instance {
    pub home: tempfile::TempDir,
    started: bool,
    /// The CLI's own config (`VESSEL_CONFIG`: credentials) and an empty
    /// `DOCKER_CONFIG`, so the user's Docker config is never read.
    cli_config: tempfile::TempDir,
    extra_env: Vec<(OsString, OsString)>,
}

impl Instance {
    /// A new, not yet started instance.
    pub fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("vessel-e2e-")
            .tempdir_in("/tmp")
            .expect("temp home");
        let cli_config = tempfile::Builder::new()
            .prefix("vessel-e2e-cfg-")
            .tempdir_in("/tmp")
            .expect("temp config");
        std::fs::create_dir(cli_config.path().join("docker")).expect("docker config dir");
        Self {
            home,
            started: false,
            cli_config,
            extra_env: Vec::new(),
        }
    }

    /// A started instance with the default image loaded.
    pub fn started() -> Self {
        let mut me = Self::new();
        me.start();
        let out = me.vessel(&[
            "image",
            "load",
            "-i",
            required_env("VESSEL_TEST_IMAGE").to_str().unwrap(),
        ]);
        assert_ok(&out, "image load");
        me
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// `vessel system start EXTRA...` (e.g. `--subnet CIDR`).
    pub fn start_with(&mut self, extra: &[&str]) {
        let mut args = vec!["system", "start"];
        args.extend_from_slice(extra);
        let out = self.vessel(&args);
        assert_ok(&out, "system start");
        self.started = true;
    }

    /// Load the offline default image.
    pub fn load_test_image(&self) {
        let out = self.vessel(&[
            "image",
            "load",
            "-i",
            required_env("VESSEL_TEST_IMAGE").to_str().unwrap(),
        ]);
        assert_ok(&out, "image load");
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// A `vessel` command for this instance.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin_dir().join("vessel"));
        c.args(args)
            .env("VESSEL_HOME", self.home.path())
            .env("VESSEL_KERNEL", required_env("VESSEL_KERNEL"))
            .env("VESSEL_INITRD", required_env("VESSEL_INITRD"))
            .env("VESSEL_CONFIG", self.vessel_config_dir())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// The environment a `vessel` command of this instance runs with, for
    /// a shell that runs it (a terminal test), `vessel` first in `PATH`.
    pub fn shell_env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut env = vec![
            ("VESSEL_HOME".to_string(), s(self.home.path())),
            ("VESSEL_KERNEL".into(), s(&required_env("VESSEL_KERNEL"))),
            ("VESSEL_INITRD".into(), s(&required_env("VESSEL_INITRD"))),
            ("VESSEL_CONFIG".into(), s(&self.vessel_config_dir())),
            ("DOCKER_CONFIG".into(), s(&self.docker_config_dir())),
            (
                "PATH".into(),
                format!(
                    "{}:{}",
                    s(&bin_dir()),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
        ];
        for (k, v) in &self.extra_env {
            env.push((
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            ));
        }
        env
    }

    /// Set an environment variable for every later `vessel` command of this
    /// instance (and so for the services `system start` launches).
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.extra_env.push((key.into(), value.into()));
    }

    /// `VESSEL_CONFIG` of this instance's CLI (where `registry login`
    /// stores `config.json`); not created by the harness.
    pub fn vessel_config_dir(&self) -> PathBuf {
        self.cli_config.path().join("vessel")
    }

    /// `DOCKER_CONFIG` of this instance's CLI: an empty directory.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.cli_config.path().join("docker")
    }

    /// Run `vessel ARGS` with `input` on its standard input.
    pub fn vessel_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running vessel");
        let mut stdin = child.stdin.take().expect("stdin");
        // Fed from a thread while the output is read: a large input would
        // otherwise wait for an output nobody reads.
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("vessel output");
        let _ = feeder.join();
        out
    }

    /// `vessel image ls --format json`, parsed.
    pub fn images(&self) -> Vec<vessel_api::types::ImageSummary> {
        let out = self.vessel(&["image", "ls", "--format", "json"]);
        assert_ok(&out, "image ls --format json");
        text(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("image ls JSON line"))
            .collect()
    }

    /// Whether the store holds a blob with this digest.
    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.path().join("content/blobs/sha256").join(hex).exists()
    }

    /// Run `vessel ARGS` to completion.
    pub fn vessel(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running vessel")
    }

    /// `vessel inspect NAME`, asserted to succeed: the container's record
    /// (`config`, `state`...).
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.vessel(&["inspect", name]);
        assert_ok(&out, &format!("inspect {name}"));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "inspect {name} printed no JSON ({e}): {}",
                text(&out.stdout)
            )
        });
        match all {
            serde_json::Value::Array(mut v) if !v.is_empty() => v.swap_remove(0),
            other => other,
        }
    }

    /// `vessel run --rm IMAGE ARGS...`; its output.
    pub fn run_rm(&self, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", IMAGE];
        a.extend_from_slice(args);
        self.vessel(&a)
    }

    /// `vessel run -d --name NAME --network none FLAGS... IMAGE sleep 1000`:
    /// a container that stays up while a test looks at it. Asserts that it
    /// started; its id.
    pub fn run_idle(&self, name: &str, flags: &[&str], image: &str) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend_from_slice(flags);
        args.extend([image, "sleep", "1000"]);
        let out = self.vessel(&args);
        assert_ok(&out, &format!("run -d --name {name} {}", flags.join(" ")));
        text(&out.stdout).trim().to_string()
    }

    /// Poll `f` every 100 ms until it holds or `limit` passes.
    pub fn wait_for(&self, limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Names of the entries under `VESSEL_HOME/containers`.
    pub fn container_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.path().join("containers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for Instance {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.started {
            let _ = self.cmd(&["system", "stop"]).output();
        }
        // Whatever is left (a failed test, a stuck VM): kill every process
        // whose command line names this instance's home or run directory.
        let home = self.home.path().to_string_lossy().into_owned();
        let run_base = vessel_api::paths::Home::new(self.home.path()).run_base();
        let run = run_base.to_string_lossy().into_owned();
        kill_matching(&[&home, &run]);
        // The VM cgroups of runtime helpers killed just now.
        for id in self.container_dirs() {
            vessel_api::confine::remove_cgroups(&id);
        }
        let _ = std::fs::remove_dir_all(&run_base);
        // Bridges, TAPs and the nftables table of this instance, if a
        // failed test left any (`system stop` removes them otherwise).
        if self.home.path().join("networks").is_dir() {
            let _ = Command::new(bin_dir().join("vessel-network"))
                .arg("--home")
                .arg(self.home.path())
                .arg("--cleanup")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// SIGKILL every process whose command line contains one of `needles`.
pub fn kill_matching(needles: &[&str]) -> usize {
    let me = std::process::id();
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().any(|n| cmdline.contains(n)) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// Text of a byte buffer.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Assert a command succeeded, showing its output if not.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Now, as `vessel events --since/--until` take it: Unix seconds with
/// nanoseconds.
pub fn now_secs() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The `action` of each event.
pub fn event_names(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

impl Instance {
    /// The events of container `c` from `since` until now (`vessel events
    /// --format json`, parsed).
    pub fn events_of(&self, since: &str, c: &str) -> Vec<serde_json::Value> {
        let filter = format!("container={c}");
        let out = self.vessel(&[
            "events",
            "--since",
            since,
            "--until",
            &now_secs(),
            "--filter",
            &filter,
            "--format",
            "json",
        ]);
        assert_ok(&out, "events");
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event as JSON"))
            .collect()
    }
}

/// A host tree: `a.txt` owned 1234:5678, `sub/run.sh` mode 750, `link`
/// to `a.txt`, and `up`, a link to `/`.
pub fn cp_host_tree(root: &Path) -> PathBuf {
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::chown(tree.join("a.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/", root.join("up")).unwrap();
    tree
}

/// The output of `sh -c SCRIPT` in the host's static busybox under podman
/// and runc (no VM), `podman run --rm FLAGS`: a root folder with the usual
/// directories and `applets` linked to busybox. For side-by-side checks
/// against the same busybox in a vessel VM.
pub fn busybox_under_runc(flags: &[&str], applets: &[&str], script: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet)).unwrap();
    }
    let out = Command::new("podman")
        .args([
            "--runtime",
            "/usr/sbin/runc",
            "--cgroup-manager",
            "cgroupfs",
            "run",
            "--rm",
            // podman's own defaults (1048576) are above what this host
            // allows it.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(flags)
        .arg("--rootfs")
        .arg(root.path())
        .args(["/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("podman (scripts/install-deps.sh installs it)");
    assert_ok(&out, "podman run");
    text(&out.stdout)
}

/// An OCI archive `DIR/NAME.tar` of a root with the host's static busybox
/// and `applets` linked to it, made by `images/busybox/make_oci.py` with
/// `--name NAME` and `args` (`--volume`, `--healthcheck`...); `prepare`
/// adds files to the root first.
pub fn busybox_image(
    dir: &Path,
    name: &str,
    applets: &[&str],
    args: &[&str],
    prepare: impl FnOnce(&Path),
) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    prepare(&root);
    let out = dir.join(format!("{name}.tar"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/busybox/make_oci.py");
    let made = Command::new("python3")
        .arg(script)
        .arg(&root)
        .arg(&out)
        .args(["--name", name])
        .args(args)
        .output()
        .unwrap();
    assert_ok(&made, "make_oci.py");
    out
}
