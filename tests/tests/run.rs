//! `vessel run` end to end: real VMs from the offline default image.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

#[test]
fn echo_exit_codes_and_separate_streams() {
    let v = Instance::started();
    let out = v.run_rm(&["echo", "hello"]);
    assert_ok(&out, "run echo");
    assert_eq!(text(&out.stdout), "hello\n");

    let out = v.run_rm(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));

    let out = v.run_rm(&["sh", "-c", "echo to-out; echo to-err >&2"]);
    assert_ok(&out, "run with stderr");
    assert_eq!(text(&out.stdout), "to-out\n");
    assert!(
        text(&out.stderr).contains("to-err"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("to-err"));
    assert!(
        v.wait_for(Duration::from_secs(5), || v.container_dirs().is_empty()),
        "--rm leaves nothing"
    );
}

#[test]
fn each_container_has_its_own_kernel_and_boot() {
    let v = Instance::started();
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let host_release = text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    );
    let script = "uname -r; cat /proc/sys/kernel/random/boot_id; sleep 2";
    // Two containers at the same time.
    let a = v.cmd(&["run", "--rm", IMAGE, "sh", "-c", script]).output();
    let handle = {
        let mut c = v.cmd(&["run", "--rm", IMAGE, "sh", "-c", script]);
        std::thread::spawn(move || c.output().unwrap())
    };
    let a = a.unwrap();
    let b = handle.join().unwrap();
    assert_ok(&a, "run a");
    assert_ok(&b, "run b");
    let (la, lb) = (text(&a.stdout), text(&b.stdout));
    let la: Vec<&str> = la.lines().collect();
    let lb: Vec<&str> = lb.lines().collect();
    assert_eq!(la.len(), 2, "{la:?}");
    assert!(la[0].starts_with("6.1."), "guest kernel release: {}", la[0]);
    assert_ne!(la[0], host_release.trim(), "the guest runs its own kernel");
    assert_eq!(la[0], lb[0]);
    assert_ne!(la[1], host_boot.trim(), "boot_id differs from the host's");
    assert_ne!(la[1], lb[1], "boot_id differs between containers");
}

#[test]
fn image_env_user_env_workdir_and_user() {
    let v = Instance::started();
    let out = v.run_rm(&["sh", "-c", "echo $VESSEL_IMAGE"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "busybox",
        "env from the image config"
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi there",
        "-e",
        "VESSEL_IMAGE=overridden",
        "-w",
        "/home",
        "-u",
        "vessel",
        IMAGE,
        "sh",
        "-c",
        "echo \"$GREETING\"; echo $VESSEL_IMAGE; pwd; id -u; id -g",
    ]);
    assert_ok(&out, "run with flags");
    assert_eq!(
        text(&out.stdout),
        "hi there\noverridden\n/home\n1000\n1000\n"
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "-u",
        "1234:5678",
        IMAGE,
        "sh",
        "-c",
        "id -u; id -g",
    ]);
    assert_ok(&out, "numeric user");
    assert_eq!(text(&out.stdout), "1234\n5678\n");
    let out = v.vessel(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        IMAGE,
        "from",
        "entrypoint",
    ]);
    assert_eq!(text(&out.stdout), "from entrypoint\n");
}

#[test]
fn memory_and_cpus_are_what_the_guest_sees() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "--rm",
        "--memory",
        "256M",
        "--cpus",
        "2",
        IMAGE,
        "sh",
        "-c",
        "nproc; grep MemTotal /proc/meminfo",
    ]);
    assert_ok(&out, "run with resources");
    let s = text(&out.stdout);
    let mut lines = s.lines();
    assert_eq!(lines.next(), Some("2"), "nproc: {s}");
    let kb: u64 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (180_000..=262_144).contains(&kb),
        "MemTotal {kb} kB for a 256 MiB VM"
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "--memory",
        "512m",
        IMAGE,
        "grep",
        "MemTotal",
        "/proc/meminfo",
    ]);
    let kb: u64 = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (400_000..=524_288).contains(&kb),
        "MemTotal {kb} kB for a 512 MiB VM"
    );
}

#[test]
fn writes_stay_in_their_container() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "writer",
        IMAGE,
        "sh",
        "-c",
        "echo secret > /root/file; sync; echo written; sleep 60",
    ]);
    assert_ok(&out, "run writer");
    assert!(v.wait_for(Duration::from_secs(20), || text(
        &v.vessel(&["logs", "writer"]).stdout
    )
    .contains("written")));
    // The other container of the same image does not see it...
    let out = v.run_rm(&["sh", "-c", "cat /root/file || echo absent"]);
    assert_eq!(text(&out.stdout).trim(), "absent");
    // A container reads back its own writes (its own overlay).
    let out = v.run_rm(&["sh", "-c", "echo mine > /root/file; cat /root/file"]);
    assert_eq!(text(&out.stdout).trim(), "mine");
    // Nor the next run.
    let out = v.run_rm(&["sh", "-c", "cat /root/file || echo absent"]);
    assert_eq!(text(&out.stdout).trim(), "absent");
    assert_ok(&v.vessel(&["rm", "-f", "writer"]), "rm -f");
}

#[test]
fn detached_lifecycle_ls_logs_stop_rm() {
    let v = Instance::started();
    let t0 = Instant::now();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "bg",
        IMAGE,
        "sh",
        "-c",
        "echo started; echo oops >&2; while true; do sleep 1; done",
    ]);
    assert_ok(&out, "run -d");
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full ID: {id:?}");
    assert!(t0.elapsed() < Duration::from_secs(60));

    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(
        ls.contains(&id[..12]) && ls.contains("Up ") && ls.contains("bg"),
        "ls: {ls}"
    );
    let q = text(&v.vessel(&["ls", "-q"]).stdout);
    assert_eq!(q.trim(), &id[..12]);
    let json = text(&v.vessel(&["ls", "--format", "json"]).stdout);
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["status"], "running");

    assert!(v.wait_for(Duration::from_secs(10), || text(
        &v.vessel(&["logs", "bg"]).stdout
    ) == "started\n"));
    let logs = v.vessel(&["logs", &id[..8]]);
    assert!(
        text(&logs.stderr).contains("oops"),
        "stderr in logs: {}",
        text(&logs.stderr)
    );

    let t = Instant::now();
    assert_ok(&v.vessel(&["stop", "-t", "5", "bg"]), "stop");
    assert!(
        t.elapsed() < Duration::from_secs(5 + 10),
        "stop took {:?}",
        t.elapsed()
    );
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(!ls.contains(&id[..12]), "stopped container not in ls: {ls}");
    let all = text(&v.vessel(&["ls", "-a"]).stdout);
    assert!(all.contains("Exited (143)"), "ls -a: {all}");
    assert!(v.container_dirs().contains(&id));
    assert_ok(&v.vessel(&["rm", "bg"]), "rm");
    assert!(
        !v.container_dirs().contains(&id),
        "rm removes the container's files"
    );
}

#[test]
fn stop_kills_after_the_timeout_when_sigterm_is_ignored() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        IMAGE,
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do sleep 1; done",
    ]);
    assert_ok(&out, "run -d");
    let id = text(&out.stdout).trim().to_string();
    assert!(v.wait_for(Duration::from_secs(10), || text(
        &v.vessel(&["logs", &id]).stdout
    )
    .contains("ready")));
    let t = Instant::now();
    assert_ok(&v.vessel(&["stop", "-t", "2", &id]), "stop");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "SIGTERM was ignored, so stop waits the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "then SIGKILL: {took:?}");
    let w = v.vessel(&["wait", &id]);
    assert_eq!(text(&w.stdout).trim(), "137");
    let inspect: serde_json::Value =
        serde_json::from_slice(&v.vessel(&["inspect", &id]).stdout).unwrap();
    assert_eq!(inspect[0]["state"]["exit_code"], 137);
}

#[test]
fn rm_flag_leaves_nothing_behind() {
    let v = Instance::started();
    assert_ok(&v.run_rm(&["true"]), "run --rm");
    let out = v.vessel(&["run", "-d", "--rm", IMAGE, "sh", "-c", "sleep 1"]);
    assert_ok(&out, "run -d --rm");
    assert!(
        v.wait_for(Duration::from_secs(20), || v.container_dirs().is_empty()),
        "left: {:?}",
        v.container_dirs()
    );
}

#[test]
fn ctrl_c_stops_a_foreground_container() {
    let v = Instance::started();
    let mut child = v
        .cmd(&[
            "run",
            "--name",
            "fg",
            IMAGE,
            "sh",
            "-c",
            "echo up; sleep 300",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(v.wait_for(Duration::from_secs(30), || text(
        &v.vessel(&["logs", "fg"]).stdout
    )
    .contains("up")));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vessel run did not end after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(!ls.contains("fg"), "container still running: {ls}");
}
