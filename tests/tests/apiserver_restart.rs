//! The supervisor restarts a killed apiserver; running containers and their
//! logs survive it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

#[test]
fn sigkill_of_the_apiserver_loses_nothing() {
    let v = Instance::started();
    let script = "for i in $(seq 1 30); do echo line$i; sleep 0.2; done; sleep 120";
    let out = v.vessel(&["run", "-d", "--name", "survivor", IMAGE, "sh", "-c", script]);
    assert_ok(&out, "run -d");
    let id = text(&out.stdout).trim().to_string();
    assert!(v.wait_for(Duration::from_secs(20), || text(
        &v.vessel(&["logs", "survivor"]).stdout
    )
    .contains("line2\n")));

    let pid_file = v.path().join("apiserver.pid");
    let old: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);

    // The supervisor brings a new apiserver up.
    assert!(
        v.wait_for(Duration::from_secs(20), || {
            let new = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            new.is_some() && new != Some(old) && v.vessel(&["ls"]).status.success()
        }),
        "apiserver was not restarted"
    );
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(
        ls.contains(&id[..12]) && ls.contains("Up "),
        "still running after the restart: {ls}"
    );

    // Every line arrives, in order, none twice.
    let expected: String = (1..=30).map(|i| format!("line{i}\n")).collect();
    assert!(
        v.wait_for(Duration::from_secs(30), || text(
            &v.vessel(&["logs", &id]).stdout
        ) == expected),
        "logs: {}",
        text(&v.vessel(&["logs", &id]).stdout)
    );
    let status = text(&v.vessel(&["system", "status"]).stdout);
    assert!(
        status.contains("vessel-images:") && status.contains("running (pid"),
        "status: {status}"
    );
    assert_ok(&v.vessel(&["stop", "-t", "1", &id]), "stop after restart");
}
