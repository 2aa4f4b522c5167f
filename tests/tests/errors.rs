//! Bad input: a clear error, a non-zero exit code, nothing left behind.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

#[test]
fn missing_image_and_missing_command() {
    let v = Instance::started();
    let out = v.vessel(&["run", "--rm", "localhost/does-not-exist:1", "true"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("localhost/does-not-exist:1") && err.contains("not found"),
        "stderr: {err}"
    );

    let out = v.run_rm(&["no-such-command", "arg"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "stderr: {}",
        text(&out.stderr)
    );

    let out = v.vessel(&["run", "-d", IMAGE, "/bin/nope"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "run -d: stderr: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("/bin/nope"));
    // Without --rm the failed container stays, like Docker's, until removed.
    let all = text(&v.vessel(&["ls", "-a"]).stdout);
    assert!(all.contains("Exited (127)"), "{all}");
    let id = text(&v.vessel(&["ls", "-a", "-q"]).stdout)
        .trim()
        .to_string();
    assert_ok(&v.vessel(&["rm", &id]), "rm the failed container");

    let out = v.vessel(&["run", "--rm", "-u", "nosuchuser", IMAGE, "true"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nosuchuser"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        v.wait_for(Duration::from_secs(10), || v.container_dirs().is_empty()),
        "{:?}",
        v.container_dirs()
    );
}

#[test]
fn invalid_flags_are_refused_before_any_work() {
    let v = Instance::started();
    for bad in ["lots", "12q", "-1m", ""] {
        let flag = format!("--memory={bad}");
        let out = v.vessel(&["run", "--rm", &flag, IMAGE, "true"]);
        assert!(!out.status.success(), "--memory {bad:?} accepted");
        assert!(
            text(&out.stderr).contains("memory"),
            "stderr: {}",
            text(&out.stderr)
        );
    }
    let out = v.vessel(&["run", "--rm", "--memory", "1m", IMAGE, "true"]);
    assert!(!out.status.success(), "a 1 MiB VM cannot boot");
    let out = v.vessel(&["run", "--no-such-flag", IMAGE, "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--no-such-flag"));
    let out = v.vessel(&["run", "--cpus", "zero", IMAGE, "true"]);
    assert!(!out.status.success());
    let out = v.vessel(&["kill", "-s", "NOTASIGNAL", "x"]);
    assert!(!out.status.success());
    assert!(v.container_dirs().is_empty(), "{:?}", v.container_dirs());
}

#[test]
fn a_stopped_apiserver_says_how_to_start_it() {
    let v = Instance::new();
    for args in [
        &["ls"][..],
        &["run", "--rm", IMAGE, "true"],
        &["image", "ls"],
    ] {
        let out = v.vessel(args);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("vessel system start"),
            "stderr: {}",
            text(&out.stderr)
        );
    }
    let out = v.vessel(&["system", "status"]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("not running"));
}

#[test]
fn system_status_reports_helpers_kernel_and_accelerator() {
    let v = Instance::started();
    let out = v.vessel(&["system", "status"]);
    assert_ok(&out, "status");
    let s = text(&out.stdout);
    assert!(s.contains("apiserver:    running"), "{s}");
    assert!(
        s.contains("vessel-images:") && s.contains("running (pid"),
        "{s}"
    );
    assert!(
        s.contains("accelerator:  kvm") || s.contains("accelerator:  tcg"),
        "{s}"
    );
    assert!(s.contains(&std::env::var("VESSEL_KERNEL").unwrap()), "{s}");
    let sock = v.path().join("vessel.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "API socket mode");
    assert_ok(&v.vessel(&["system", "stop"]), "stop");
    assert!(!sock.exists());
    assert!(!v.vessel(&["ls"]).status.success());
}
