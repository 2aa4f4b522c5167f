//! Bad input: a clear error, a non-zero exit code, nothing left behind.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::http::Client;
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
    // A reader that went away (`vessel system status | head -1`): the CLI
    // ends by SIGPIPE, as `ls` or `docker` do, without a panic.
    for args in [
        &["system", "status"][..],
        &["ls", "-a"],
        &["image", "ls"],
        &["completion", "bash"],
    ] {
        assert_closed_pipe_is_quiet(&v, args);
    }
    let run_base = vessel_api::paths::Home::new(v.path()).run_base();
    assert!(run_base.is_dir(), "{}", run_base.display());
    assert_ok(&v.vessel(&["system", "stop"]), "stop");
    assert!(!sock.exists());
    // The instance's run base goes with it (nothing of it runs).
    assert!(!run_base.exists(), "{} left", run_base.display());
    assert!(!v.vessel(&["ls"]).status.success());
}

/// `vessel ARGS` with a standard output whose reader is already gone.
fn assert_closed_pipe_is_quiet(v: &Instance, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    // The reader is closed before the child exists: dropping it after
    // `spawn` raced a fast child, whose few lines fitted in the pipe's
    // buffer and ended with status 0.
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we own after.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    let (reader, writer) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let out = v
        .cmd(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "vessel {args:?} into a closed pipe: {:?}, stderr: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "vessel {args:?}: {}",
        text(&out.stderr)
    );
}

/// `vessel ARGS` failed with `code`, and its stderr names every `want`.
fn fails_with(v: &Instance, args: &[&str], code: i32, want: &[&str]) -> String {
    let out = v.vessel(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: {w:?} not in stderr: {err}");
    }
    err
}

/// The apiserver's error answer to a request: status and body.
fn api_error(v: &Instance, method: &str, path: &str, body: Option<serde_json::Value>) -> ErrorBody {
    let client = Client::new(v.path().join("vessel.sock"));
    let resp = match &body {
        Some(b) => client.request_json(method, path, b),
        None => client.request(method, path, None),
    }
    .unwrap();
    let status = resp.status;
    let e = resp.json::<serde_json::Value>().unwrap().unwrap_err();
    assert_eq!(status, e.kind.status(), "{method} {path}: {e:?}");
    e
}

#[test]
fn every_not_found_names_what_is_missing_with_its_kind() {
    let v = Instance::started();

    // Issue 8: an unknown network is not a missing image; nothing is pulled.
    for verb in ["run", "create"] {
        let mut args = vec![verb];
        if verb == "run" {
            args.push("--rm");
        }
        args.extend(["--network", "nosuchnet", IMAGE, "true"]);
        let err = fails_with(&v, &args, 125, &["network nosuchnet not found"]);
        assert!(
            !err.contains("Unable to find image") && !err.contains("pull"),
            "{verb}: {err}"
        );
        assert!(
            err.contains("vessel network ls"),
            "{verb}: says what to do: {err}"
        );
    }
    let e = api_error(
        &v,
        "POST",
        "/v1/containers",
        Some(serde_json::json!({"image": IMAGE, "network": "nosuchnet"})),
    );
    assert_eq!(e.kind, ErrorKind::NetworkNotFound, "{e:?}");
    assert_eq!(e.name.as_deref(), Some("nosuchnet"));

    // A missing image with --pull never: named, with what to do, no pull.
    for verb in ["run", "create"] {
        let args = [verb, "--pull", "never", "localhost/nosuch:1", "true"];
        let err = fails_with(
            &v,
            &args,
            125,
            &["localhost/nosuch:1", "not found", "vessel pull"],
        );
        assert!(!err.contains("Unable to find image"), "{verb}: {err}");
    }
    let e = api_error(
        &v,
        "POST",
        "/v1/containers",
        Some(serde_json::json!({"image": "nosuch", "network": "nosuchnet"})),
    );
    assert_eq!(e.kind, ErrorKind::ImageNotFound, "{e:?}");
    // Named as the request named it, which the CLI compares with its own.
    assert_eq!(e.name.as_deref(), Some("nosuch"));
    assert!(
        e.message.contains("docker.io/library/nosuch:latest"),
        "{e:?}"
    );

    // A missing container, for every command that names one: exit 1 like
    // Docker, except `start -a`, whose code would be the container's.
    for args in [
        &["start", "nosuchctr"][..],
        &["stop", "nosuchctr"],
        &["kill", "nosuchctr"],
        &["rm", "nosuchctr"],
        &["rm", "-f", "nosuchctr"],
        &["logs", "nosuchctr"],
        &["inspect", "nosuchctr"],
        &["wait", "nosuchctr"],
    ] {
        fails_with(
            &v,
            args,
            1,
            &["no such container: nosuchctr", "vessel ls -a"],
        );
    }
    fails_with(
        &v,
        &["start", "-a", "nosuchctr"],
        125,
        &["no such container: nosuchctr"],
    );
    for (method, path) in [
        ("GET", "/v1/containers/nosuchctr"),
        ("POST", "/v1/containers/nosuchctr/start"),
        ("POST", "/v1/containers/nosuchctr/stop"),
        ("POST", "/v1/containers/nosuchctr/kill"),
        ("POST", "/v1/containers/nosuchctr/wait"),
        ("GET", "/v1/containers/nosuchctr/logs"),
        ("DELETE", "/v1/containers/nosuchctr"),
    ] {
        let e = api_error(&v, method, path, None);
        assert_eq!(e.kind, ErrorKind::ContainerNotFound, "{method} {path}");
        assert_eq!(e.name.as_deref(), Some("nosuchctr"), "{method} {path}");
    }

    // Images and networks by themselves.
    let e = api_error(
        &v,
        "GET",
        "/v1/images/inspect?ref=localhost%2Fnosuch%3A1",
        None,
    );
    assert_eq!(e.kind, ErrorKind::ImageNotFound);
    assert_eq!(e.name.as_deref(), Some("localhost/nosuch:1"));
    let e = api_error(&v, "GET", "/v1/networks/nosuchnet", None);
    assert_eq!(e.kind, ErrorKind::NetworkNotFound);
    assert_eq!(e.name.as_deref(), Some("nosuchnet"));
    fails_with(
        &v,
        &["network", "rm", "nosuchnet"],
        1,
        &["network nosuchnet not found"],
    );
    fails_with(
        &v,
        &["image", "rm", "localhost/nosuch:1"],
        1,
        &["localhost/nosuch:1", "not found"],
    );
    // No such endpoint is a not-found too, of the general kind.
    let e = api_error(&v, "GET", "/v1/nothing/here", None);
    assert_eq!(e.kind, ErrorKind::NotFound);

    assert!(v.container_dirs().is_empty(), "{:?}", v.container_dirs());
}

#[test]
fn exit_codes_are_docker_s() {
    let v = Instance::started();
    // Usage errors: 125 for every command; --help is not an error.
    for args in [
        &["run", "--no-such-flag", IMAGE, "true"][..],
        &["create", "--no-such-flag", IMAGE],
        &["run", "--pull", "sometimes", IMAGE],
        &["run"],
        &["create"],
        &["stop", "--no-such-flag", "x"],
        &["ls", "--no-such-flag"],
        &["no-such-command"],
    ] {
        let out = v.vessel(args);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).is_empty(), "{args:?} says why");
    }
    let out = v.vessel(&["run", "--no-such-flag", IMAGE, "true"]);
    assert!(text(&out.stderr).contains("--no-such-flag"));
    for args in [&["--help"][..], &["run", "--help"], &["create", "--help"]] {
        let out = v.vessel(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
    // vessel's own error after parsing: 125 for run/create, 1 elsewhere.
    fails_with(
        &v,
        &["run", "--rm", "--memory", "lots", IMAGE, "true"],
        125,
        &["memory"],
    );
    fails_with(&v, &["ls", "--format", "yaml"], 1, &["yaml"]);

    // The container's own codes; 127 not found, 126 not executable.
    let out = v.run_rm(&["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    fails_with(
        &v,
        &["run", "--rm", IMAGE, "/no/such/cmd"],
        127,
        &["/no/such/cmd"],
    );
    fails_with(
        &v,
        &["run", "--rm", IMAGE, "/etc/passwd"],
        126,
        &["/etc/passwd", "permission denied"],
    );
    assert!(
        v.wait_for(Duration::from_secs(10), || v.container_dirs().is_empty()),
        "{:?}",
        v.container_dirs()
    );
}

#[test]
fn create_then_start_attached_returns_the_container_s_code() {
    let v = Instance::started();
    let out = v.vessel(&[
        "create",
        "--name",
        "later",
        IMAGE,
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    assert_ok(&out, "create");
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let out = v.vessel(&["start", "-a", "later"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    // Once ended, `start` boots it again (as Docker): a fresh VM on its disk.
    let out = v.vessel(&["start", "later"]);
    assert_ok(&out, "start of an ended container");
    assert_eq!(text(&out.stdout).trim(), "later");
    let out = v.vessel(&["wait", "later"]);
    assert_eq!(text(&out.stdout).trim(), "4", "its code again");
    assert_ok(&v.vessel(&["rm", "later"]), "rm");

    // Without -a: started in the background, its name printed.
    let out = v.vessel(&["create", "--name", "bg", IMAGE, "sleep", "30"]);
    assert_ok(&out, "create bg");
    let out = v.vessel(&["start", "bg"]);
    assert_ok(&out, "start bg");
    assert_eq!(text(&out.stdout), "bg\n");
    let out = v.vessel(&["rm", "bg"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a running container is not removed"
    );
    assert_ok(&v.vessel(&["rm", "-f", "bg"]), "rm -f");
    assert!(v.container_dirs().is_empty(), "{:?}", v.container_dirs());
}
