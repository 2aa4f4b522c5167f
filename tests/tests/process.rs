//! The state a container's process starts in, checked from inside the VM
//! and against the same busybox under podman with runc on this host.
//!
//! vminitd blocks SIGCHLD for its own signalfd; before the fix that mask
//! leaked into the container's process, and a shell waiting for its
//! children through SIGCHLD waited forever.

#![allow(clippy::unwrap_used)]

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, text, Instance};

/// Signal state, umask and open descriptors, as lines.
const STATE: &str = r#"grep -E '^(SigPnd|ShdPnd|SigBlk|SigIgn|SigCgt):' /proc/self/status
echo "umask $(umask)"
echo "fds $(ls /proc/self/fd | tr '\n' ' ')"
"#;

/// The output of `script` in the same busybox under podman + runc (no VM).
fn under_runc(script: &str) -> String {
    vessel_tests::busybox_under_runc(
        &["--network", "none"],
        &["sh", "grep", "ls", "tr", "cat", "echo"],
        script,
    )
}

#[test]
fn signal_mask_dispositions_umask_and_descriptors_are_those_runc_gives() {
    let v = Instance::started();
    let out = v.run_rm(&["sh", "-c", STATE]);
    assert_ok(&out, "run");
    let ours = text(&out.stdout);
    for field in ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"] {
        let line = ours
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {ours}"));
        assert!(
            line.ends_with("0000000000000000"),
            "{line}: the container's process must start with no signal blocked, \
             ignored, caught or pending"
        );
    }
    assert!(ours.contains("umask 0022"), "{ours}");
    // 0-2 and the descriptor `ls` reads the directory with.
    assert!(ours.contains("fds 0 1 2 3 \n"), "{ours}");
    // runc passes on the signals its caller ignores (here the test
    // harness's environment ignores signal 32); everything else must match.
    let comparable = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("SigIgn:"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let peer = under_runc(STATE);
    assert_eq!(
        comparable(&ours),
        comparable(&peer),
        "vessel (left) differs from podman + runc (right)"
    );
}

/// `vessel ARGS`, killed after `limit`: `None` if it did not end.
fn within(v: &Instance, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = v
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn a_shell_sees_its_children_end() {
    let v = Instance::started();
    // With SIGCHLD blocked the trap never runs and `wait` never returns.
    let script = "trap 'echo child-ended' CHLD; sleep 0.2 & wait; echo waited; \
                  timeout 1 sleep 30; echo timeout=$?";
    let out = within(
        &v,
        &["run", "--rm", vessel_tests::IMAGE, "sh", "-c", script],
        Duration::from_secs(90),
    )
    .expect("the shell never saw its child end (SIGCHLD blocked?)");
    assert_ok(&out, "run");
    let s = text(&out.stdout);
    assert!(s.starts_with("child-ended\nwaited\n"), "{s}");
    assert!(
        s.contains("timeout=143"),
        "timeout(1) could not end its child: {s}"
    );
}

#[test]
fn resource_limits_are_dockers() {
    let v = Instance::started();
    let out = v.run_rm(&["cat", "/proc/self/limits"]);
    assert_ok(&out, "run");
    let limits = text(&out.stdout);
    let row = |name: &str| -> (String, String) {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} in {limits}"));
        let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
        (f[0].to_string(), f[1].to_string())
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    // What a Docker container gets on a systemd host (docs/CLI.md).
    assert_eq!(row("Max open files"), pair("1048576", "1048576"));
    assert_eq!(row("Max processes"), pair("unlimited", "unlimited"));
    assert_eq!(row("Max core file size"), pair("unlimited", "unlimited"));
    assert_eq!(row("Max stack size"), pair("8388608", "unlimited"));
    assert_eq!(row("Max locked memory"), pair("8388608", "8388608"));
    assert_eq!(row("Max cpu time"), pair("unlimited", "unlimited"));
}

#[test]
fn ulimit_sets_a_limit_and_bad_ones_are_refused() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:2048",
        "--ulimit",
        "core=0",
        vessel_tests::IMAGE,
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; ulimit -c; ulimit -Hu",
    ]);
    assert_ok(&out, "run --ulimit");
    assert_eq!(text(&out.stdout), "1024\n2048\n0\nunlimited\n");
    for bad in ["nofile=10:5", "files=1", "nofile"] {
        let out = v.vessel(&["run", "--rm", "--ulimit", bad, vessel_tests::IMAGE, "true"]);
        assert_eq!(out.status.code(), Some(125), "--ulimit {bad}");
        assert!(
            text(&out.stderr).contains("invalid --ulimit"),
            "{}",
            text(&out.stderr)
        );
    }
}
