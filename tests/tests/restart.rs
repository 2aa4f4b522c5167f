//! Restart policies (`--restart`, `vessel update --restart`) with real VMs:
//! what restarts, how often, what stays stopped, and what comes back when
//! the apiserver starts (after `system stop` + `system start`, or after it
//! was killed while a container ended).

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use vessel_tests::{assert_ok, event_names, now_secs, text, Instance, IMAGE};

fn inspect(v: &Instance, c: &str) -> serde_json::Value {
    let out = v.vessel(&["inspect", c]);
    assert_ok(&out, "inspect");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

fn status(v: &Instance, c: &str) -> (String, bool, u64) {
    let i = inspect(v, c);
    (
        i["state"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        i["state"]["restarting"].as_bool().unwrap_or(false),
        i["state"]["restart_count"].as_u64().unwrap_or(0),
    )
}

fn logs(v: &Instance, c: &str) -> String {
    text(&v.vessel(&["logs", c]).stdout)
}

fn kill9(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

/// The boot IDs a container printed, one per run.
fn boot_ids(v: &Instance, c: &str) -> Vec<String> {
    logs(v, c)
        .lines()
        .filter(|l| l.starts_with("boot "))
        .map(str::to_string)
        .collect()
}

const BOOT_ID_THEN_SLEEP: &str = "echo boot $(cat /proc/sys/kernel/random/boot_id); sleep 1000";

#[test]
fn on_failure_3_runs_four_times_then_stays_exited() {
    let v = Instance::started();
    let since = now_secs();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--network",
        "none",
        "--restart",
        "on-failure:3",
        IMAGE,
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    assert_ok(&out, "run -d --restart on-failure:3");
    assert!(
        v.wait_for(Duration::from_secs(180), || {
            let (s, restarting, count) = status(&v, "flaky");
            s == "exited" && !restarting && count == 3
        }),
        "not settled at 3 restarts: {:?}; logs: {}",
        status(&v, "flaky"),
        logs(&v, "flaky")
    );
    // Nothing more comes: the policy gave up.
    std::thread::sleep(Duration::from_secs(3));
    let (s, restarting, count) = status(&v, "flaky");
    assert_eq!((s.as_str(), restarting, count), ("exited", false, 3));
    assert_eq!(logs(&v, "flaky"), "run\n".repeat(4), "four runs");
    let info = inspect(&v, "flaky");
    assert_eq!(info["state"]["exit_code"], 1);
    assert_eq!(info["config"]["restart"]["name"], "on-failure");
    assert_eq!(info["config"]["restart"]["maximum_retry_count"], 3);
    // Docker's events: each run a start and a die, no restart event.
    let names = event_names(&v.events_of(&since, "flaky"));
    let starts = names.iter().filter(|n| *n == "start").count();
    let dies = names.iter().filter(|n| *n == "die").count();
    assert_eq!((starts, dies), (4, 4), "events: {names:?}");
    assert!(!names.contains(&"restart".to_string()), "{names:?}");

    // A user's start counts from 0 again.
    assert_ok(&v.vessel(&["start", "flaky"]), "start");
    assert!(
        v.wait_for(Duration::from_secs(180), || {
            let (s, restarting, count) = status(&v, "flaky");
            s == "exited" && !restarting && count == 3 && logs(&v, "flaky").lines().count() == 8
        }),
        "a second round: {:?}; logs: {}",
        status(&v, "flaky"),
        logs(&v, "flaky")
    );
}

#[test]
fn always_survives_a_killed_qemu_and_a_killed_apiserver_but_not_a_stop() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "keeper",
        "--network",
        "none",
        "--restart",
        "always",
        IMAGE,
        "sh",
        "-c",
        BOOT_ID_THEN_SLEEP,
    ]);
    assert_ok(&out, "run -d --restart always");
    assert!(
        v.wait_for(Duration::from_secs(60), || boot_ids(&v, "keeper").len()
            == 1)
    );

    // Its QEMU dies: a new VM, a new boot.
    let qemu = inspect(&v, "keeper")["state"]["vmm_pid"].as_i64().unwrap() as i32;
    kill9(qemu);
    assert!(
        v.wait_for(Duration::from_secs(90), || boot_ids(&v, "keeper").len()
            == 2
            && status(&v, "keeper").0 == "running"),
        "not back after its QEMU was killed: {:?}; logs: {}",
        status(&v, "keeper"),
        logs(&v, "keeper")
    );
    let ids = boot_ids(&v, "keeper");
    assert_ne!(ids[0], ids[1], "a fresh boot has a new boot_id");
    assert_eq!(status(&v, "keeper").2, 1, "restart_count");

    // It ends while no apiserver watches (the supervisor held, the
    // apiserver killed): the next apiserver makes the restart it owes.
    let supervisor: i32 = std::fs::read_to_string(v.path().join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let apiserver: i32 = std::fs::read_to_string(v.path().join("apiserver.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGSTOP) }, 0);
    kill9(apiserver);
    let qemu = inspect_state_file(&v, "keeper");
    kill9(qemu);
    // The runtime helper records the end; nobody acts on it yet.
    let id = container_id(&v, "keeper");
    let state_path = v.path().join("containers").join(&id).join("state.json");
    let ended = v.wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&state_path).is_ok_and(|s| s.contains("\"exited\""))
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGCONT) }, 0);
    assert!(ended, "the runtime helper did not record the end");
    assert!(
        v.wait_for(Duration::from_secs(90), || boot_ids(&v, "keeper").len()
            == 3
            && status(&v, "keeper").0 == "running"),
        "not back after an end the apiserver missed: {:?}; logs: {}",
        status(&v, "keeper"),
        logs(&v, "keeper")
    );
    assert_eq!(status(&v, "keeper").2, 2, "restart_count");

    // A user's stop: it stays stopped.
    assert_ok(&v.vessel(&["stop", "-t", "1", "keeper"]), "stop");
    std::thread::sleep(Duration::from_secs(4));
    let (s, restarting, _) = status(&v, "keeper");
    assert_eq!((s.as_str(), restarting), ("exited", false));
    assert_eq!(boot_ids(&v, "keeper").len(), 3, "no boot after the stop");
}

/// The VMM pid from `state.json` itself (the apiserver is down).
fn inspect_state_file(v: &Instance, name: &str) -> i32 {
    let id = container_id(v, name);
    let s: serde_json::Value = serde_json::from_slice(
        &std::fs::read(v.path().join("containers").join(id).join("state.json")).unwrap(),
    )
    .unwrap();
    s["vmm_pid"].as_i64().unwrap() as i32
}

/// A container's full ID from the files (works while the apiserver is down).
fn container_id(v: &Instance, name: &str) -> String {
    for id in v.container_dirs() {
        let config = v.path().join("containers").join(&id).join("config.json");
        if let Ok(c) = std::fs::read(&config) {
            let c: serde_json::Value = serde_json::from_slice(&c).unwrap();
            if c["name"] == name {
                return id;
            }
        }
    }
    panic!("no container named {name}");
}

#[test]
fn always_and_unless_stopped_come_back_with_system_start() {
    let mut v = Instance::started();
    let run = |name: &str, policy: &str| {
        let out = v.vessel(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--restart",
            policy,
            IMAGE,
            "sh",
            "-c",
            BOOT_ID_THEN_SLEEP,
        ]);
        assert_ok(&out, "run -d");
    };
    run("up-always", "always");
    run("stopped-always", "always");
    run("stopped-unless", "unless-stopped");
    for c in ["up-always", "stopped-always", "stopped-unless"] {
        assert!(
            v.wait_for(Duration::from_secs(90), || boot_ids(&v, c).len() == 1),
            "{c} did not run: {}",
            logs(&v, c)
        );
    }
    assert_ok(
        &v.vessel(&["stop", "-t", "1", "stopped-always", "stopped-unless"]),
        "stop",
    );
    assert_ok(&v.vessel(&["system", "stop"]), "system stop");
    v.start();
    // Docker's: `always` comes back even after a user's stop;
    // `unless-stopped` only when no user stopped it.
    for c in ["up-always", "stopped-always"] {
        assert!(
            v.wait_for(Duration::from_secs(120), || boot_ids(&v, c).len() == 2
                && status(&v, c).0 == "running"),
            "{c} is not running again: {:?}; logs: {}",
            status(&v, c),
            logs(&v, c)
        );
        assert_eq!(status(&v, c).2, 0, "{c}: started as by a user, count 0");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (s, restarting, _) = status(&v, "stopped-unless");
    assert_eq!((s.as_str(), restarting), ("exited", false));
    assert_eq!(boot_ids(&v, "stopped-unless").len(), 1);
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(
        ls.contains("up-always") && !ls.contains("stopped-unless"),
        "{ls}"
    );
}

/// A crash of the apiserver is not a daemon start: an `always` container a
/// user stopped stays stopped when the supervisor brings a new apiserver
/// (found by the fault-injection suite, tests/faults.rs).
#[test]
fn a_stopped_always_container_stays_stopped_when_the_apiserver_crashes() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "parked",
        "--network",
        "none",
        "--restart",
        "always",
        IMAGE,
        "sh",
        "-c",
        BOOT_ID_THEN_SLEEP,
    ]);
    assert_ok(&out, "run -d --restart always");
    assert!(
        v.wait_for(Duration::from_secs(90), || boot_ids(&v, "parked").len()
            == 1)
    );
    assert_ok(&v.vessel(&["stop", "-t", "1", "parked"]), "stop");
    let pid_file = v.path().join("apiserver.pid");
    let old: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill9(old);
    assert!(
        v.wait_for(Duration::from_secs(30), || {
            let new = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            new.is_some() && new != Some(old) && v.vessel(&["ls"]).status.success()
        }),
        "the apiserver was not restarted"
    );
    std::thread::sleep(Duration::from_secs(4));
    let (s, restarting, _) = status(&v, "parked");
    assert_eq!((s.as_str(), restarting), ("exited", false), "started again");
    assert_eq!(boot_ids(&v, "parked").len(), 1, "no boot after the crash");
}

#[test]
fn update_changes_the_policy_of_an_existing_container() {
    let v = Instance::started();
    let out = v.vessel(&[
        "create",
        "--name",
        "job",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    assert_ok(&out, "create");
    assert!(inspect(&v, "job")["config"].get("restart").is_none());
    let out = v.vessel(&["update", "--restart", "on-failure:1", "job"]);
    assert_ok(&out, "update --restart");
    assert_eq!(text(&out.stdout), "job\n");
    assert_eq!(
        inspect(&v, "job")["config"]["restart"]["name"],
        "on-failure"
    );
    assert_ok(&v.vessel(&["start", "job"]), "start");
    assert!(
        v.wait_for(Duration::from_secs(120), || {
            let (s, restarting, count) = status(&v, "job");
            s == "exited" && !restarting && count == 1
        }),
        "{:?}",
        status(&v, "job")
    );
    assert_eq!(logs(&v, "job"), "run\nrun\n");
    // Back to `no`; bad input changes nothing.
    assert_ok(&v.vessel(&["update", "--restart", "no", "job"]), "update");
    assert!(inspect(&v, "job")["config"].get("restart").is_none());
    let out = v.vessel(&["update", "--restart", "sometimes", "job"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let out = v.vessel(&["update", "--restart", "always", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_policies_are_refused_and_nothing_is_created() {
    let v = Instance::started();
    for (policy, says) in [
        ("on-failure:-1", "whole number"),
        ("sometimes", "invalid restart policy \"sometimes\""),
        ("always:3", "only be given with on-failure"),
    ] {
        for verb in ["run", "create"] {
            let out = v.vessel(&[verb, "--restart", policy, IMAGE, "true"]);
            assert_eq!(out.status.code(), Some(125), "{verb} --restart {policy}");
            assert!(
                text(&out.stderr).contains(says),
                "{verb} --restart {policy}: {}",
                text(&out.stderr)
            );
        }
    }
    let out = v.vessel(&["run", "--rm", "--restart", "always", IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("conflicting options: --restart and --rm"),
        "{}",
        text(&out.stderr)
    );
    // `--rm` with `no` is fine (and nothing is left of it).
    assert_ok(
        &v.vessel(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--restart",
            "no",
            IMAGE,
            "true",
        ]),
        "run --rm --restart no",
    );
    assert!(
        v.wait_for(Duration::from_secs(20), || v.container_dirs().is_empty()),
        "left: {:?}",
        v.container_dirs()
    );
}
