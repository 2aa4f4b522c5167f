//! Healthchecks end to end, with real VMs: a check run through the guest's
//! agent turns a container `healthy` and then `unhealthy` within interval ×
//! retries once what it tests is gone, with `health_status` events in
//! order and `ls`/`inspect` telling the state; a check that hangs past its
//! timeout is killed and counts as failed; `--no-healthcheck` turns an
//! image's `HEALTHCHECK` off; bad flags create nothing.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, now_secs, text, Instance, IMAGE};

fn inspect(v: &Instance, name: &str) -> Value {
    v.inspect(name)
}

/// The container's health status as `inspect` tells it (`None`: no health).
fn health_status(v: &Instance, name: &str) -> Option<String> {
    inspect(v, name)["state"]["health"]["status"]
        .as_str()
        .map(str::to_string)
}

/// The STATUS column of `ls` for `name`.
fn ls_status(v: &Instance, name: &str) -> String {
    let out = v.vessel(&["ls", "-a"]);
    assert_ok(&out, "ls");
    text(&out.stdout)
        .lines()
        .find(|l| l.trim_end().ends_with(name))
        .unwrap_or_else(|| panic!("{name} not in ls:\n{}", text(&out.stdout)))
        .to_string()
}

/// Wait up to `limit` for the health status `want`; how long it took.
fn wait_health(v: &Instance, name: &str, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < limit {
        last = health_status(v, name);
        if last.as_deref() == Some(want) {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{name} not {want} within {limit:?} (last {last:?}); inspect: {}",
        inspect(v, name)
    );
}

fn exec_ok(v: &Instance, name: &str, script: &str) -> String {
    let out = v.vessel(&["exec", name, "sh", "-c", script]);
    assert_ok(&out, &format!("exec {script:?}"));
    text(&out.stdout)
}

/// `run -d --network none --name NAME FLAGS... IMAGE sleep 1000`.
fn run_detached(v: &Instance, name: &str, flags: &[&str], image: &str) {
    let mut a = vec!["run", "-d", "--network", "none", "--name", name];
    a.extend_from_slice(flags);
    a.extend_from_slice(&[image, "sleep", "1000"]);
    assert_ok(&v.vessel(&a), &format!("run {flags:?}"));
}

#[test]
fn a_check_turns_healthy_then_unhealthy_once_its_file_is_gone() {
    let v = Instance::started();
    let since = now_secs();
    // A long start period: the failures before the file exists do not
    // count, so the container stays `starting` until it does.
    run_detached(
        &v,
        "hc",
        &[
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "--health-start-period",
            "5m",
        ],
        IMAGE,
    );
    let info = inspect(&v, "hc");
    assert_eq!(
        info["config"]["healthcheck"]["test"],
        serde_json::json!(["CMD-SHELL", "test -f /tmp/ok"])
    );
    assert_eq!(
        info["config"]["healthcheck"]["timeout_ms"], 30_000,
        "default"
    );
    assert_eq!(health_status(&v, "hc").as_deref(), Some("starting"));
    assert!(
        ls_status(&v, "hc").contains("(health: starting)"),
        "{}",
        ls_status(&v, "hc")
    );
    // Failures within the start period: still starting after a few checks.
    std::thread::sleep(Duration::from_secs(3));
    let h = &inspect(&v, "hc")["state"]["health"];
    assert_eq!(h["status"], "starting", "{h}");
    assert_eq!(h["failing_streak"], 0, "{h}");
    assert!(
        h["log"].as_array().is_some_and(|l| !l.is_empty()),
        "checks ran: {h}"
    );
    assert_eq!(h["log"][0]["exit_code"], 1, "{h}");

    exec_ok(&v, "hc", "touch /tmp/ok");
    let took = wait_health(&v, "hc", "healthy", Duration::from_secs(30));
    eprintln!("healthy {took:?} after the file was made");
    assert!(
        ls_status(&v, "hc").contains("(healthy)"),
        "{}",
        ls_status(&v, "hc")
    );

    exec_ok(&v, "hc", "rm /tmp/ok");
    let took = wait_health(&v, "hc", "unhealthy", Duration::from_secs(30));
    eprintln!("unhealthy {took:?} after the file was removed");
    // Interval × retries, plus the checks' own run time under emulation.
    assert!(
        took < Duration::from_secs(2 + 6),
        "unhealthy only after {took:?}"
    );
    assert!(
        ls_status(&v, "hc").contains("(unhealthy)"),
        "{}",
        ls_status(&v, "hc")
    );
    let h = &inspect(&v, "hc")["state"]["health"];
    assert!(h["failing_streak"].as_u64().unwrap() >= 2, "{h}");
    let log = h["log"].as_array().unwrap();
    assert!(log.len() <= 5, "{h}");
    let took_ms: Vec<u64> = log
        .iter()
        .map(|r| r["end_ms"].as_u64().unwrap() - r["start_ms"].as_u64().unwrap())
        .collect();
    eprintln!("the last checks took {took_ms:?} ms each");
    let last = log.last().unwrap();
    assert_eq!(last["exit_code"], 1, "{h}");
    assert!(last["start_ms"].as_u64() <= last["end_ms"].as_u64(), "{h}");

    // The events: healthy, then unhealthy, each once.
    let events = v.events_of(&since, "hc");
    let health: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "health_status")
        .map(|e| e["attributes"]["health_status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(health, ["healthy", "unhealthy"], "{events:?}");
    let out = v.vessel(&["events", "--since", &since, "--until", &now_secs()]);
    assert!(
        text(&out.stdout).contains("container health_status: unhealthy"),
        "{}",
        text(&out.stdout)
    );
    assert_ok(&v.vessel(&["rm", "-f", "hc"]), "rm -f");
}

#[test]
fn a_check_that_hangs_past_its_timeout_is_killed_and_fails() {
    let v = Instance::started();
    run_detached(
        &v,
        "hang",
        &[
            "--health-cmd",
            "sleep 30",
            "--health-timeout",
            "1s",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        IMAGE,
    );
    let took = wait_health(&v, "hang", "unhealthy", Duration::from_secs(30));
    eprintln!("unhealthy {took:?} after the start");
    let h = &inspect(&v, "hang")["state"]["health"];
    let first = &h["log"][0];
    assert_eq!(first["exit_code"], -1, "{h}");
    assert_eq!(first["output"], "Health check exceeded timeout (1s)", "{h}");
    let ran = first["end_ms"].as_u64().unwrap() - first["start_ms"].as_u64().unwrap();
    assert!(
        ran < 10_000,
        "the check was not cut at its timeout: {ran} ms"
    );
    // Killed in the guest, not left behind: after several more checks
    // (one a second, each cut at 1 s) at most the current one runs.
    std::thread::sleep(Duration::from_secs(4));
    let ps = exec_ok(&v, "hang", "ps");
    let sleeps = ps.lines().filter(|l| l.contains("sleep 30")).count();
    assert!(sleeps <= 1, "checks left running:\n{ps}");
    assert_ok(&v.vessel(&["rm", "-f", "hang"]), "rm -f");
}

/// An image like the default one with `HEALTHCHECK --interval=1s
/// --retries=1 CMD-SHELL exit 1`.
fn image_with_healthcheck(dir: &Path) -> PathBuf {
    vessel_tests::busybox_image(
        dir,
        "hcimg",
        &["sh", "sleep", "cat", "test"],
        &[
            "--healthcheck",
            "CMD-SHELL exit 1",
            "--health-interval-ns",
            "1000000000",
            "--health-retries",
            "1",
        ],
        |_| {},
    )
}

#[test]
fn no_healthcheck_turns_the_image_s_check_off() {
    let v = Instance::started();
    let dir = tempfile::tempdir().unwrap();
    let tar = image_with_healthcheck(dir.path());
    assert_ok(
        &v.vessel(&["image", "load", "-i", tar.to_str().unwrap()]),
        "load",
    );
    let img = "localhost/hcimg:latest";
    // The image's check runs when nothing is said.
    run_detached(&v, "inherits", &[], img);
    let c = &inspect(&v, "inherits")["config"]["healthcheck"];
    assert_eq!(c["test"], serde_json::json!(["CMD-SHELL", "exit 1"]), "{c}");
    assert_eq!(
        (c["interval_ms"].as_u64(), c["retries"].as_u64()),
        (Some(1000), Some(1))
    );
    wait_health(&v, "inherits", "unhealthy", Duration::from_secs(30));
    // A flag changes one field and keeps the image's command.
    let out = v.vessel(&["create", "--name", "tuned", "--health-retries", "4", img]);
    assert_ok(&out, "create --health-retries");
    let c = &inspect(&v, "tuned")["config"]["healthcheck"];
    assert_eq!(c["test"], serde_json::json!(["CMD-SHELL", "exit 1"]), "{c}");
    assert_eq!(
        (c["interval_ms"].as_u64(), c["retries"].as_u64()),
        (Some(1000), Some(4))
    );
    // --no-healthcheck: no check at all, however long it runs.
    run_detached(&v, "off", &["--no-healthcheck"], img);
    std::thread::sleep(Duration::from_secs(3));
    let info = inspect(&v, "off");
    assert!(info["config"]["healthcheck"].is_null(), "{info}");
    assert!(info["state"]["health"].is_null(), "{info}");
    assert_eq!(info["state"]["status"], "running");
    let status = ls_status(&v, "off");
    assert!(
        status.contains("Up ") && !status.contains("health"),
        "{status}"
    );
    assert_ok(
        &v.vessel(&["rm", "-f", "inherits", "tuned", "off"]),
        "rm -f",
    );
}

#[test]
fn bad_health_flags_create_nothing() {
    let v = Instance::started();
    for (flags, says) in [
        (&["--health-interval=soon"][..], "invalid duration \"soon\""),
        (&["--health-timeout", "-1s"][..], "cannot be negative"),
        (&["--health-start-period=-5m"][..], "cannot be negative"),
        (
            &["--health-retries", "-1"][..],
            "--health-retries cannot be negative",
        ),
        (
            &["--no-healthcheck", "--health-cmd", "true"][..],
            "--no-healthcheck conflicts with --health-* options",
        ),
    ] {
        for verb in ["run", "create"] {
            let mut a = vec![verb];
            a.extend_from_slice(flags);
            a.extend_from_slice(&[IMAGE, "true"]);
            let out = v.vessel(&a);
            assert_eq!(out.status.code(), Some(125), "{a:?}: {}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains(says),
                "{a:?}: {}",
                text(&out.stderr)
            );
        }
    }
    // The API checks the request's shape itself (for clients other than
    // the CLI): an unknown kind, a shell check without its command.
    let c = vessel_api::client::Client::new(v.path().join("vessel.sock")).unwrap();
    for (test, says) in [
        (
            serde_json::json!(["HTTP", "/health"]),
            "unknown healthcheck test kind",
        ),
        (
            serde_json::json!(["CMD-SHELL"]),
            "takes exactly one non-empty command",
        ),
    ] {
        let body = serde_json::json!({"image": IMAGE, "healthcheck": {"test": test}});
        let resp = c.request_json("POST", "/v1/containers", &body).unwrap();
        let status = resp.status;
        let e = resp.json::<Value>().unwrap().unwrap_err();
        assert_eq!(
            (status, e.kind),
            (400, vessel_api::error::ErrorKind::InvalidArgument)
        );
        assert!(e.message.contains(says), "{}", e.message);
    }
    let out = v.vessel(&["ls", "-a", "-q"]);
    assert_ok(&out, "ls");
    assert_eq!(text(&out.stdout), "", "nothing was created");
}
