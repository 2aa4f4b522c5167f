//! What the guest kernel offers a container, end to end: `vessel-probe`
//! (crates/guest-probe) runs in a real VM and its report is checked against
//! the contract in `guest/kernel/features.list`; the same probe under
//! podman + runc on this host shows what a host kernel offers, and every key
//! the host offers and the guest lacks must be a listed, reasoned omission.
//!
//! Inputs (scripts/test.sh sets them): `VESSEL_PROBE`, the static probe
//! binary (scripts/build-probe.sh), plus the usual `VESSEL_KERNEL` and
//! `VESSEL_INITRD`. Both reports are kept in `target/tmp/kernel-features/`
//! for updating the list after a kernel change.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use vessel_probe::{check_guest, check_host, Expectations, Report};
use vessel_tests::{assert_ok, required_env, text, Instance};

const PROBE_IMAGE: &str = "localhost/vessel-probe:latest";

fn list_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("guest/kernel/features.list")
}

fn expectations() -> Expectations {
    let path = list_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Expectations::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-features");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A root filesystem: busybox (for a shell) and the probe at /probe.
fn probe_rootfs(dir: &Path) {
    let probe = required_env("VESSEL_PROBE");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy /bin/busybox");
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    std::fs::copy(&probe, dir.join("probe"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", probe.display()));
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

fn parse_report(what: &str, stdout: &[u8], keep: &str) -> Report {
    let path = out_dir().join(keep);
    std::fs::write(&path, stdout).unwrap();
    let r = Report::parse(&text(stdout)).unwrap_or_else(|e| {
        panic!(
            "{what}: the probe's report does not parse ({e}); see {}",
            path.display()
        )
    });
    assert!(
        r.len() > 500,
        "{what}: only {} lines in the probe's report; see {}",
        r.len(),
        path.display()
    );
    r
}

/// The probe's report from a vessel VM (run once per test process).
fn guest_report() -> &'static Report {
    static GUEST: OnceLock<Report> = OnceLock::new();
    GUEST.get_or_init(|| {
        let mut v = Instance::new();
        v.start();
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("rootfs");
        probe_rootfs(&root);
        let tar = work.path().join("probe.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the probe's rootfs failed");
        let out = v.vessel(&["image", "import", tar.to_str().unwrap(), PROBE_IMAGE]);
        assert_ok(&out, "image import");
        let out = v.vessel(&["run", "--rm", "--network", "none", PROBE_IMAGE, "/probe"]);
        assert_ok(&out, "vessel run the probe");
        let r = parse_report("guest", &out.stdout, "guest.txt");
        let kernel = r
            .get("info:kernel")
            .map(|e| e.detail.clone())
            .unwrap_or_default();
        assert!(
            kernel.starts_with("6.1."),
            "the probe ran on {kernel:?}, not the guest kernel"
        );
        r
    })
}

#[test]
fn guest_offers_what_programs_use() {
    let guest = guest_report();
    // The three the issue named, and the madvise values databases, JVMs and
    // allocators use, spelled out.
    for key in [
        "syscall:madvise",
        "madvise:MADV_DONTNEED",
        "madvise:MADV_FREE",
        "madvise:MADV_HUGEPAGE",
        "madvise:MADV_MERGEABLE",
        "madvise:MADV_WILLNEED",
        "madvise:MADV_DONTFORK",
        "syscall:fadvise64",
        "fadvise:POSIX_FADV_DONTNEED",
        "fadvise:POSIX_FADV_SEQUENTIAL",
        "fadvise:POSIX_FADV_WILLNEED",
        "fcntl:F_NOTIFY",
    ] {
        let e = guest.get(key);
        assert!(
            e.is_some_and(|e| e.offered),
            "the guest kernel does not offer {key}: {e:?}"
        );
    }
    let findings = check_guest(&expectations(), guest);
    assert!(
        findings.is_empty(),
        "the guest kernel does not match {} ({} findings; full report in {}):\n{}",
        list_path().display(),
        findings.len(),
        out_dir().join("guest.txt").display(),
        findings
            .iter()
            .map(|f| format!("  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Removes podman's state directories of this test, and the container if
/// the run was interrupted.
struct PodmanDirs {
    root: tempfile::TempDir,
    runroot: tempfile::TempDir,
}

impl PodmanDirs {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.root.path())
            .arg("--runroot")
            .arg(self.runroot.path())
            .args([
                "--runtime",
                "/usr/sbin/runc",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .stdin(Stdio::null());
        c
    }
}

impl Drop for PodmanDirs {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Overlay or tmpfs mounts podman may have left under its root.
        for dir in [self.root.path(), self.runroot.path()] {
            let _ = Command::new("umount")
                .arg("-R")
                .arg(dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn host_kernel_offers_nothing_undecided() {
    // The host side first: a privileged container (all capabilities, no
    // seccomp filter, the host's network namespace) sees what this host's
    // kernel offers, as a vessel container sees all of its VM's kernel.
    let dirs = PodmanDirs {
        root: tempfile::Builder::new()
            .prefix("vessel-e2e-podman-")
            .tempdir_in("/tmp")
            .unwrap(),
        runroot: tempfile::Builder::new()
            .prefix("vessel-e2e-podman-run-")
            .tempdir_in("/tmp")
            .unwrap(),
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    probe_rootfs(&root);
    let out = dirs
        .cmd()
        .args([
            "run",
            "--rm",
            "--privileged",
            "--network",
            "host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
        ])
        .arg(&root)
        .arg("/probe")
        .output()
        .expect("podman is needed for this test: scripts/install-deps.sh installs it");
    assert_ok(&out, "podman run the probe");
    let host = parse_report("host", &out.stdout, "host.txt");

    let guest = guest_report();
    let findings = check_host(&expectations(), guest, &host);
    assert!(
        findings.is_empty(),
        "this host's kernel ({}) offers what the guest does not and {} does not decide \
         ({} findings; reports in {}):\n{}",
        host.get("info:kernel")
            .map(|e| e.detail.as_str())
            .unwrap_or("?"),
        list_path().display(),
        findings.len(),
        out_dir().display(),
        findings
            .iter()
            .map(|f| format!("  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
