//! Interactive containers end to end, with real VMs: `run -i/-t`, `exec`,
//! `attach`, `start -a`, `restart`, `cp`, `export`, `stats`, `top`,
//! `pause`, `logs`, events; terminal behaviour driven through tmux.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vessel_tests::tmux::Tmux;
use vessel_tests::{assert_ok, event_names, now_secs, text, Instance, IMAGE};

/// Generous: VMs boot under software emulation on a shared 2-core host.
const BOOT: Duration = Duration::from_secs(90);

/// The events of the container between `since` and now.
fn actions(v: &Instance, since: &str, container: &str) -> Vec<serde_json::Value> {
    v.events_of(since, container)
}

fn names(events: &[serde_json::Value]) -> Vec<String> {
    event_names(events)
}

/// `vessel inspect`'s state status of `c`.
fn status(v: &Instance, c: &str) -> String {
    v.inspect(c)["state"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `vessel exec C ARGS...`, asserted to succeed; its stdout.
fn exec_ok(v: &Instance, c: &str, args: &[&str]) -> String {
    let mut a = vec!["exec", c];
    a.extend_from_slice(args);
    let out = v.vessel(&a);
    assert_ok(&out, &format!("exec {args:?}"));
    text(&out.stdout)
}

#[test]
fn run_it_gives_a_terminal_that_behaves() {
    let v = Instance::started();
    let t = Tmux::start(100, 30, &v.shell_env());
    let dir = tempfile::tempdir().unwrap();
    let (before, after) = (dir.path().join("before"), dir.path().join("after"));
    t.line(&format!(
        "stty -g > {}; vessel run --rm -it {IMAGE} sh; echo EXIT=$?; stty -g > {}",
        before.display(),
        after.display()
    ));
    t.expect_because("/ # ", BOOT, "no prompt");
    t.line("echo typed-$((2+3))");
    t.expect("typed-5", Duration::from_secs(20));
    // The pane's size, then the new one after a resize.
    t.line("stty size");
    t.expect("30 100", Duration::from_secs(20));
    t.resize(120, 40);
    std::thread::sleep(Duration::from_secs(1));
    t.line("stty size");
    t.expect("40 120", Duration::from_secs(20));
    // Ctrl-C reaches the container's foreground process, not vessel.
    t.line("sleep 100");
    std::thread::sleep(Duration::from_secs(2));
    t.keys(&["C-c"]);
    t.line("echo after-interrupt-$((6*7))");
    t.expect_because(
        "after-interrupt-42",
        Duration::from_secs(20),
        "Ctrl-C did not end the sleep",
    );
    t.line("exit 3");
    t.expect("EXIT=3", Duration::from_secs(30));
    // The terminal is as it was.
    assert!(
        t.wait_until(Duration::from_secs(10), |_| after.exists()),
        "{}",
        t.screen()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&before).unwrap(),
        std::fs::read_to_string(&after).unwrap(),
        "the terminal's settings changed"
    );
    assert!(
        v.wait_for(Duration::from_secs(10), || v.container_dirs().is_empty()),
        "--rm"
    );
}

#[test]
fn exec_it_attach_detach_and_an_apiserver_that_dies() {
    let v = Instance::started();
    assert_ok(
        &v.vessel(&["run", "-dit", "--name", "box", IMAGE, "sh"]),
        "run -dit",
    );
    let t = Tmux::start(100, 30, &v.shell_env());
    t.line("vessel exec -it box sh; echo EXEC_EXIT=$?");
    t.expect_because("/ # ", BOOT, "no prompt");
    t.line("echo in-exec-$((3*3)); tty");
    t.expect("in-exec-9", Duration::from_secs(20));
    t.expect("/dev/pts/", Duration::from_secs(5));

    // The apiserver dies while the session is open: the session ends,
    // the container does not.
    let pid: i32 = std::fs::read_to_string(v.path().join("apiserver.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    t.expect("EXEC_EXIT=125", Duration::from_secs(30));
    assert!(t.screen().contains("lost the connection"), "{}", t.screen());
    // The supervisor brings the apiserver back; the container ran on.
    assert!(
        v.wait_for(Duration::from_secs(60), || v
            .vessel(&["exec", "box", "true"])
            .status
            .success()),
        "exec after the apiserver came back"
    );
    assert_eq!(status(&v, "box"), "running");

    // Attach, type, and leave with the detach keys: it runs on.
    t.clear();
    t.line("vessel attach box; echo ATTACH_EXIT=$?");
    std::thread::sleep(Duration::from_secs(2));
    t.line("echo via-attach-$((4*4))");
    t.expect("via-attach-16", Duration::from_secs(20));
    t.keys(&["C-p", "C-q"]);
    t.expect("ATTACH_EXIT=0", Duration::from_secs(20));
    assert_eq!(status(&v, "box"), "running");
    // Other detach keys, as Docker writes them.
    t.clear();
    t.line("vessel attach --detach-keys ctrl-x,x box; echo ATTACH2_EXIT=$?");
    std::thread::sleep(Duration::from_secs(2));
    t.keys(&["C-x", "x"]);
    t.expect("ATTACH2_EXIT=0", Duration::from_secs(20));
    assert_eq!(status(&v, "box"), "running");
    // Attached, the end of the process ends the session with its code.
    t.clear();
    t.line("vessel attach box; echo ATTACH3_EXIT=$?");
    std::thread::sleep(Duration::from_secs(2));
    t.line("exit 5");
    t.expect("ATTACH3_EXIT=5", Duration::from_secs(30));
}

#[test]
fn run_i_passes_bytes_exactly_and_ends_stdin() {
    let v = Instance::started();
    let out = v.vessel_stdin(&["run", "--rm", "-i", IMAGE, "sort", "-r"], b"a\nb\n");
    assert_ok(&out, "run -i sort");
    assert_eq!(text(&out.stdout), "b\na\n");

    // 50 MiB of random bytes through cat, unchanged.
    let mut data = vec![0u8; 50 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .unwrap();
    let started = Instant::now();
    let out = v.vessel_stdin(&["run", "--rm", "-i", IMAGE, "cat"], &data);
    let took = started.elapsed();
    assert_ok(&out, "run -i cat");
    assert_eq!(out.stdout.len(), data.len(), "length");
    assert!(out.stdout == data, "the bytes differ");
    eprintln!(
        "50 MiB through run -i cat in {:.1} s ({:.1} MiB/s with the boot)",
        took.as_secs_f64(),
        50.0 / took.as_secs_f64()
    );

    // -t without a terminal on stdin: a warning, and it still runs.
    let out = v.vessel(&["run", "--rm", "-t", IMAGE, "sh", "-c", "tty; echo hi"]);
    assert_ok(&out, "run -t");
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("hi\r\n"),
        "{:?}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("not a TTY"),
        "{}",
        text(&out.stderr)
    );

    // -a: only the streams asked for.
    let out = v.vessel(&[
        "run",
        "--rm",
        "-a",
        "stdout",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_ok(&out, "run -a stdout");
    assert_eq!(text(&out.stdout), "out\n");
    assert!(!text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    // --env-file, with -e over it.
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("env");
    std::fs::write(&env, "# comment\nA=from-file\nB=2\n").unwrap();
    let out = v.vessel(&[
        "run",
        "--rm",
        "--env-file",
        env.to_str().unwrap(),
        "-e",
        "A=from-flag",
        IMAGE,
        "sh",
        "-c",
        "echo $A $B",
    ]);
    assert_ok(&out, "run --env-file");
    assert_eq!(text(&out.stdout), "from-flag 2\n");

    // Without -t, Ctrl-C (SIGINT to vessel) stops the container.
    let mut child = v
        .cmd(&["run", "--rm", IMAGE, "sh", "-c", "echo up; sleep 100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(&mut so, &mut first).unwrap();
    let t0 = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(st.code(), Some(143), "SIGTERM ended the container's sh");
}

#[test]
fn exec_runs_commands_in_a_running_container() {
    let v = Instance::started();
    let since = now_secs();
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            "web",
            "-e",
            "FROM_RUN=yes",
            "-w",
            "/srv",
            IMAGE,
            "sh",
            "-c",
            "while true; do sleep 1; done",
        ]),
        "run -d",
    );
    let out = exec_ok(&v, "web", &["cat", "/proc/1/cmdline"]);
    assert!(!out.is_empty());
    // The container's environment and working directory, flags over them.
    assert_eq!(
        exec_ok(&v, "web", &["sh", "-c", "echo $FROM_RUN $(pwd)"]),
        "yes /srv\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("env");
    std::fs::write(&env, "FROM_FILE=1\n").unwrap();
    let out = exec_ok(
        &v,
        "web",
        &[
            "-e",
            "FROM_RUN=no",
            "--env-file",
            env.to_str().unwrap(),
            "-w",
            "/tmp",
            "-u",
            "1000",
            "sh",
            "-c",
            "echo $FROM_RUN $FROM_FILE $(pwd) $(id -u)",
        ],
    );
    assert_eq!(out, "no 1 /tmp 1000\n");
    // Exit codes: its own, 127 not found, 126 not executable.
    let out = v.vessel(&["exec", "web", "sh", "-c", "echo o; echo e >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("o\n".into(), "e\n".into())
    );
    let out = v.vessel(&["exec", "web", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
    let out = v.vessel(&["exec", "web", "/etc"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    // -i: our stdin, to its end.
    let out = v.vessel_stdin(&["exec", "-i", "web", "wc", "-c"], &[b'x'; 100_000]);
    assert_ok(&out, "exec -i");
    assert_eq!(text(&out.stdout).trim(), "100000");

    // Ten at once, each with its own output and code.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let mut c = v.cmd(&[
                "exec",
                "web",
                "sh",
                "-c",
                // Codes 20..29: none equals the 7 looked for in the events.
                &format!("sleep 1; echo out-{i}; exit {}", 20 + i),
            ]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(20 + i as i32),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("out-{i}\n"));
    }

    // -d: it runs on its own.
    let out = v.vessel(&["exec", "-d", "web", "sh", "-c", "sleep 1; touch /tmp/done"]);
    assert_ok(&out, "exec -d");
    assert!(
        v.wait_for(Duration::from_secs(30), || v
            .vessel(&["exec", "web", "test", "-f", "/tmp/done"])
            .status
            .success()),
        "exec -d did not run"
    );

    // Its events, in order, with the exit code.
    let evs = actions(&v, &since, "web");
    let sevens: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["attributes"]["exit_code"] == "7")
        .collect();
    assert_eq!(sevens.len(), 1, "{evs:#?}");
    let id = sevens[0]["attributes"]["exec_id"].as_str().unwrap();
    let of_it: Vec<String> = evs
        .iter()
        .filter(|e| e["attributes"]["exec_id"] == id)
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(of_it, ["exec_create", "exec_start", "exec_die"]);
    // An exec's record.
    let out = v.vessel(&["inspect", "web"]);
    let cid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0]["config"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = vessel_api::client::Client::new(v.path().join("vessel.sock")).unwrap();
    let info: vessel_api::types::ExecInfo = c
        .request("GET", &format!("/v1/containers/{cid}/exec/{id}"), None)
        .unwrap()
        .json()
        .unwrap()
        .unwrap();
    assert_eq!((info.running, info.exit_code), (false, Some(7)));

    // A missing container, an empty command, a stopped container.
    let out = v.vessel(&["exec", "nosuch", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no such container"),
        "{}",
        text(&out.stderr)
    );
    let out = v.vessel(&["exec", "web"]);
    assert_eq!(out.status.code(), Some(125), "a usage error");
    assert_ok(&v.vessel(&["stop", "-t", "1", "web"]), "stop");
    let out = v.vessel(&["exec", "web", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn create_start_restart_and_logs() {
    let v = Instance::started();
    let since = now_secs();
    // Each run appends to a file on the container's disk.
    let script = "echo hello; cat /proc/sys/kernel/random/boot_id; echo run >> /root/runs; wc -l < /root/runs; exit 4";
    assert_ok(
        &v.vessel(&["create", "--name", "job", IMAGE, "sh", "-c", script]),
        "create",
    );
    let first = v.vessel(&["start", "-a", "job"]);
    assert_eq!(first.status.code(), Some(4), "{}", text(&first.stderr));
    let l1: Vec<String> = text(&first.stdout).lines().map(String::from).collect();
    assert_eq!(l1.len(), 3, "{l1:?}");
    assert_eq!((l1[0].as_str(), l1[2].trim()), ("hello", "1"));
    // Started again: a fresh VM on the same disk, only this run's output.
    let second = v.vessel(&["start", "-a", "job"]);
    assert_eq!(second.status.code(), Some(4), "{}", text(&second.stderr));
    let l2: Vec<String> = text(&second.stdout).lines().map(String::from).collect();
    assert_eq!(l2.len(), 3, "{l2:?}");
    assert_ne!(l1[1], l2[1], "a new boot_id");
    assert_eq!(l2[2].trim(), "2", "the writable layer is kept");
    // Its log has both runs.
    let out = v.vessel(&["logs", "job"]);
    assert_eq!(text(&out.stdout).matches("hello").count(), 2);
    assert_eq!(
        names(&actions(&v, &since, "job")),
        ["create", "start", "die", "start", "die"]
    );

    // restart of a running container.
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            "svc",
            IMAGE,
            "sh",
            "-c",
            "echo x >> /root/mark; while true; do sleep 1; done",
        ]),
        "run -d",
    );
    let boot = || exec_ok(&v, "svc", &["cat", "/proc/sys/kernel/random/boot_id"]);
    let b1 = boot();
    let lines = || {
        exec_ok(&v, "svc", &["wc", "-l", "/root/mark"])
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    // `run -d` returns once the process runs, which may be before its
    // `echo` (under emulation, an exec can come and go first): the line
    // must be there before the restart can be asked to keep it.
    assert!(
        v.wait_for(Duration::from_secs(30), || lines() == "1"),
        "the first boot's line: {}",
        lines()
    );
    let since = now_secs();
    assert_ok(&v.vessel(&["restart", "-t", "1", "svc"]), "restart");
    assert_eq!(status(&v, "svc"), "running");
    assert_ne!(boot(), b1, "restart boots a fresh VM");
    // The new boot's `echo` may not have run yet when the exec does.
    assert!(
        v.wait_for(Duration::from_secs(30), || lines() == "2"),
        "the first boot's line is kept: {}",
        lines()
    );
    let lifecycle: Vec<String> = names(&actions(&v, &since, "svc"))
        .into_iter()
        .filter(|n| !n.starts_with("exec_"))
        .collect();
    assert_eq!(lifecycle, ["die", "stop", "start", "restart"]);
    // Starting it while it runs is a conflict.
    let out = v.vessel(&["start", "svc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );

    // create -i, then start -a -i: our stdin reaches it.
    assert_ok(
        &v.vessel(&[
            "create",
            "-i",
            "--name",
            "cat1",
            IMAGE,
            "sh",
            "-c",
            "cat; echo done",
        ]),
        "create -i",
    );
    let out = v.vessel_stdin(&["start", "-a", "-i", "cat1"], b"through stdin\n");
    assert_ok(&out, "start -a -i");
    assert_eq!(text(&out.stdout), "through stdin\ndone\n");

    // logs --tail, --since, --timestamps.
    assert_ok(
        &v.vessel(&[
            "run",
            "--name",
            "lg",
            IMAGE,
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line$i; done; sleep 4; echo late",
        ]),
        "run lg",
    );
    let out = v.vessel(&["logs", "--tail", "2", "lg"]);
    assert_eq!(text(&out.stdout), "line5\nlate\n");
    let out = v.vessel(&["logs", "--tail", "0", "lg"]);
    assert_eq!(text(&out.stdout), "");
    // `late` came 4 s after the others, right before the end.
    let out = v.vessel(&["logs", "--since", "2s", "lg"]);
    assert_eq!(text(&out.stdout), "late\n", "the last 2 seconds");
    let out = v.vessel(&["logs", "-t", "lg"]);
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for l in &lines {
        let (stamp, rest) = l.split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{l}");
        assert!(rest.starts_with("line") || rest == "late", "{l}");
    }

    // A run's events, in order.
    let since = now_secs();
    assert_ok(
        &v.vessel(&["run", "--rm", "--name", "evrun", IMAGE, "true"]),
        "run --rm",
    );
    assert_eq!(
        names(&actions(&v, &since, "evrun")),
        ["create", "start", "die", "destroy"]
    );
}

#[test]
fn cp_both_ways_and_export() {
    let v = Instance::started();
    assert_ok(
        &v.vessel(&["run", "-d", "--name", "files", IMAGE, "sleep", "1000"]),
        "run -d",
    );
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    let tree = vessel_tests::cp_host_tree(h);
    use std::os::unix::fs::MetadataExt;
    let t = tree.to_str().unwrap();

    // Into the container: a tree, owned by root; with -a, its owners.
    assert_ok(&v.vessel(&["cp", t, "files:/tmp/"]), "cp in");
    assert_eq!(exec_ok(&v, "files", &["cat", "/tmp/tree/a.txt"]), "alpha\n");
    assert_eq!(exec_ok(&v, "files", &["/tmp/tree/sub/run.sh"]), "ran\n");
    assert_eq!(
        exec_ok(
            &v,
            "files",
            &[
                "stat",
                "-c",
                "%a %u:%g",
                "/tmp/tree/sub/run.sh",
                "/tmp/tree/a.txt"
            ]
        ),
        "750 0:0\n644 0:0\n"
    );
    assert_eq!(
        exec_ok(&v, "files", &["readlink", "/tmp/tree/link"]),
        "a.txt\n"
    );
    assert_ok(&v.vessel(&["cp", "-a", t, "files:/tmp/kept"]), "cp -a in");
    assert_eq!(
        exec_ok(&v, "files", &["stat", "-c", "%u:%g", "/tmp/kept/a.txt"]),
        "1234:5678\n"
    );
    // A file to a new name; a directory's contents with /.
    let a = tree.join("a.txt");
    assert_ok(
        &v.vessel(&["cp", a.to_str().unwrap(), "files:/tmp/renamed"]),
        "cp file",
    );
    assert_eq!(exec_ok(&v, "files", &["cat", "/tmp/renamed"]), "alpha\n");
    assert_ok(
        &v.vessel(&["cp", &format!("{t}/."), "files:/tmp/contents"]),
        "cp dir/.",
    );
    assert_eq!(
        exec_ok(&v, "files", &["ls", "/tmp/contents"]),
        "a.txt\nlink\nsub\n"
    );

    // Out of it: owned by the user running vessel (root here), unless -a.
    exec_ok(&v, "files", &["sh", "-c", "mkdir -p /data/d && echo data > /data/d/f && chown -R 4321:8765 /data && chmod 640 /data/d/f"]);
    let out_dir = h.join("out");
    assert_ok(
        &v.vessel(&["cp", "files:/data", out_dir.to_str().unwrap()]),
        "cp out",
    );
    let f = out_dir.join("d/f");
    assert_eq!(std::fs::read(&f).unwrap(), b"data\n");
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o640, 0));
    let kept = h.join("kept");
    assert_ok(
        &v.vessel(&["cp", "-a", "files:/data", kept.to_str().unwrap()]),
        "cp -a out",
    );
    assert_eq!(std::fs::metadata(kept.join("d/f")).unwrap().uid(), 4321);
    // A single file into an existing directory.
    assert_ok(
        &v.vessel(&["cp", "files:/etc/hostname", h.to_str().unwrap()]),
        "cp file out",
    );
    assert!(h.join("hostname").is_file());

    // `-`: tar streams on stdout and stdin.
    let out = v.vessel(&["cp", "files:/data", "-"]);
    assert_ok(&out, "cp out -");
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let entries: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(entries.contains(&"data/d/f".to_string()), "{entries:?}");
    let out = v.vessel_stdin(&["cp", "-", "files:/tmp"], &out.stdout);
    assert_ok(&out, "cp - in");
    assert_eq!(exec_ok(&v, "files", &["cat", "/tmp/data/d/f"]), "data\n");

    // What tries to escape stays inside the container.
    exec_ok(&v, "files", &["ln", "-s", "/", "/tmp/up"]);
    assert_ok(
        &v.vessel(&["cp", a.to_str().unwrap(), "files:/tmp/up/escaped"]),
        "cp via a link",
    );
    assert_eq!(
        exec_ok(&v, "files", &["cat", "/escaped"]),
        "alpha\n",
        "the link led to the container's /"
    );
    assert_ok(
        &v.vessel(&["cp", a.to_str().unwrap(), "files:../../../../dotdot"]),
        "cp ../",
    );
    assert_eq!(exec_ok(&v, "files", &["cat", "/dotdot"]), "alpha\n");
    // A tar stream that tries to escape: unpacked inside, or refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Regular);
    hd.set_mode(0o644);
    hd.set_size(4);
    let name = b"../../../../escape-attempt";
    hd.as_old_mut().name[..name.len()].copy_from_slice(name);
    hd.set_cksum();
    b.append(&hd, &b"evil"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    let _ = v.vessel_stdin(&["cp", "-", "files:/tmp"], &evil);
    let out = v.vessel(&[
        "exec",
        "files",
        "sh",
        "-c",
        "test ! -e /escape-attempt && test ! -e /tmp/escape-attempt",
    ]);
    assert_ok(&out, "the `..` entry was not unpacked anywhere");
    assert!(!std::path::Path::new("/escape-attempt").exists());
    // A malformed stream is an error, not a crash.
    let out = v.vessel_stdin(&["cp", "-", "files:/tmp"], &[0xffu8; 1500]);
    assert!(!out.status.success());
    assert_eq!(status(&v, "files"), "running");
    // Paths that do not exist.
    let out = v.vessel(&["cp", a.to_str().unwrap(), "files:/no/such/dir/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no such directory"),
        "{}",
        text(&out.stderr)
    );
    let out = v.vessel(&["cp", "files:/no/such", h.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/no/such"),
        "{}",
        text(&out.stderr)
    );

    // export: the root filesystem, without /proc's contents.
    let tarball = h.join("rootfs.tar");
    assert_ok(
        &v.vessel(&["export", "files", "-o", tarball.to_str().unwrap()]),
        "export",
    );
    let mut ar = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    let paths: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("bin/busybox")),
        "{}",
        paths.len()
    );
    assert!(
        paths.iter().any(|p| p.ends_with("tmp/tree/a.txt"))
            || paths.iter().any(|p| p.ends_with("escaped"))
    );
    assert!(
        !paths.iter().any(|p| p.contains("proc/self")),
        "/proc is another filesystem"
    );

    // Stopped, it still has its files: a maintenance boot of its VM copies
    // them (tests/tests/copy_stopped.rs has the rest).
    assert_ok(&v.vessel(&["stop", "-t", "1", "files"]), "stop");
    let after = h.join("after-stop");
    assert_ok(
        &v.vessel(&["cp", "files:/tmp/renamed", after.to_str().unwrap()]),
        "cp out of the stopped container",
    );
    assert_eq!(std::fs::read(&after).unwrap(), b"alpha\n");
    assert_eq!(status(&v, "files"), "exited");
}

/// One `stats --no-stream --format json` row of `c`.
fn stats(v: &Instance, c: &str) -> serde_json::Value {
    let out = v.vessel(&["stats", "--no-stream", "--format", "json", c]);
    assert_ok(&out, "stats");
    serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap()
}

#[test]
fn stats_top_and_pause() {
    let v = Instance::started();
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            "load",
            "--memory",
            "512m",
            IMAGE,
            "sh",
            "-c",
            // Written aside and renamed: a reader never sees it empty.
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; sleep 0.1; done",
        ]),
        "run -d",
    );
    let idle = stats(&v, "load");
    let limit = idle["memory_limit_bytes"].as_u64().unwrap();
    assert!((400 << 20..=512 << 20).contains(&limit), "{idle}");
    assert!(idle["vmm_rss_bytes"].as_u64().unwrap() > 32 << 20, "{idle}");
    assert!(idle["pids"].as_u64().unwrap() >= 1, "{idle}");
    let idle_cpu = idle["cpu_percent"].as_f64().unwrap();
    assert!(idle_cpu < 60.0, "{idle}");
    // Burn CPU, allocate 128 MiB (tmpfs pages cannot be dropped).
    assert_ok(
        &v.vessel(&[
            "exec",
            "-d",
            "load",
            "sh",
            "-c",
            "echo $$ > /tmp/burner; while :; do :; done",
        ]),
        "burn",
    );
    assert_ok(&v.vessel(&["exec", "-d", "load", "sleep", "1000"]), "sleep");
    exec_ok(
        &v,
        "load",
        &[
            "dd",
            "if=/dev/zero",
            "of=/dev/shm/fill",
            "bs=1M",
            "count=128",
        ],
    );
    let busy = stats(&v, "load");
    assert!(busy["cpu_percent"].as_f64().unwrap() > 70.0, "{busy}");
    let grew =
        busy["memory_used_bytes"].as_u64().unwrap() - idle["memory_used_bytes"].as_u64().unwrap();
    assert!(grew > 100 << 20, "{idle}\n{busy}");
    // The main shell, the burner and `sleep 1000` at least (the main
    // shell's own `sleep 0.1` and `mv` come and go).
    assert!(busy["pids"].as_u64().unwrap() >= 3, "{busy}");
    // The table form.
    let out = v.vessel(&["stats", "--no-stream"]);
    assert_ok(&out, "stats table");
    assert!(
        text(&out.stdout).contains("MEM USAGE / LIMIT"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("load"), "{}", text(&out.stdout));
    // top shows the processes.
    let out = v.vessel(&["top", "load"]);
    assert_ok(&out, "top");
    assert!(
        text(&out.stdout).contains("while :; do :; done"),
        "{}",
        text(&out.stdout)
    );
    // The burner goes: the counter below has the VM's one CPU to itself.
    exec_ok(&v, "load", &["sh", "-c", "kill $(cat /tmp/burner)"]);

    // pause: the counter stands still; unpause: it goes on.
    let since = now_secs();
    let count = || -> u64 {
        exec_ok(&v, "load", &["cat", "/tmp/counter"])
            .trim()
            .parse()
            .unwrap()
    };
    assert_ok(&v.vessel(&["pause", "load"]), "pause");
    assert_eq!(status(&v, "load"), "paused");
    let out = v.vessel(&["exec", "load", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("paused"),
        "{}",
        text(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_ok(&v.vessel(&["unpause", "load"]), "unpause");
    let at_resume = count();
    std::thread::sleep(Duration::from_secs(3));
    let later = count();
    assert!(
        later > at_resume,
        "the counter goes on: {at_resume} then {later}"
    );
    assert_eq!(
        names(&actions(&v, &since, "load"))
            .iter()
            .filter(|a| a.ends_with("pause"))
            .count(),
        2
    );
    // While paused, the counter does not move. Reading it takes an exec
    // (the VM runs meanwhile), so compare with a window of the same length
    // while it runs: paused, it counts less than half as much.
    let window = Duration::from_secs(5);
    let before = count();
    std::thread::sleep(window);
    let running = count() - before;
    let before = count();
    assert_ok(&v.vessel(&["pause", "load"]), "pause again");
    std::thread::sleep(window);
    assert_ok(&v.vessel(&["unpause", "load"]), "unpause again");
    let paused = count() - before;
    assert!(
        paused * 2 < running,
        "it counted while paused: {paused} against {running} while running"
    );
    let out = v.vessel(&["unpause", "load"]);
    assert_eq!(out.status.code(), Some(1), "not paused");
}

#[test]
fn rename_port_prune_version_and_generated_docs() {
    let v = Instance::started();
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            "old",
            "-p",
            "127.0.0.1::80",
            IMAGE,
            "sleep",
            "1000",
        ]),
        "run -d -p",
    );
    assert_ok(&v.vessel(&["rename", "old", "new"]), "rename");
    assert_eq!(status(&v, "new"), "running");
    assert!(!v.vessel(&["inspect", "old"]).status.success());
    let out = v.vessel(&["port", "new"]);
    assert_ok(&out, "port");
    assert!(
        text(&out.stdout).starts_with("80/tcp -> 127.0.0.1:"),
        "{}",
        text(&out.stdout)
    );
    let out = v.vessel(&["port", "new", "80"]);
    assert!(
        text(&out.stdout).starts_with("127.0.0.1:"),
        "{}",
        text(&out.stdout)
    );
    assert!(!v.vessel(&["port", "new", "81"]).status.success());
    // prune removes what does not run, and only that.
    assert_ok(
        &v.vessel(&["create", "--name", "idle", IMAGE, "true"]),
        "create",
    );
    assert_ok(
        &v.vessel(&["run", "--name", "done", "--network", "none", IMAGE, "true"]),
        "run",
    );
    let out = v.vessel(&["container", "prune", "-f"]);
    assert_ok(&out, "prune");
    assert!(
        text(&out.stdout).contains("Total reclaimed: 2 containers"),
        "{}",
        text(&out.stdout)
    );
    let out = v.vessel(&["ls", "-a", "-q"]);
    assert_eq!(text(&out.stdout).lines().count(), 1);
    // version: client, server, protocol, kernel.
    let out = v.vessel(&["version"]);
    assert_ok(&out, "version");
    let s = text(&out.stdout);
    for want in [
        "Client:",
        "Server",
        "vessel.agent.v1",
        "Guest kernel:    6.1.",
    ] {
        assert!(s.contains(want), "{want}: {s}");
    }
    // Completion scripts and man pages from the CLI's definition.
    for shell in ["bash", "zsh", "fish"] {
        let out = v.vessel(&["completion", shell]);
        assert_ok(&out, "completion");
        assert!(text(&out.stdout).contains("exec"), "{shell}");
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg("source /dev/stdin && complete -p vessel")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(&v.vessel(&["completion", "bash"]).stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(text(&out.stdout).contains("vessel"), "bash loads it");
    let man = tempfile::tempdir().unwrap();
    assert_ok(&v.vessel(&["man", man.path().to_str().unwrap()]), "man");
    let page = std::fs::read_to_string(man.path().join("vessel-exec.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("detach"), "{page}");
    assert!(man.path().join("vessel-image-pull.1").is_file());
}

/// Open descriptors and threads of process `pid`.
fn load_of(pid: &str) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

#[test]
fn clients_that_go_away_mid_stream_leave_the_container_running_and_nothing_held() {
    let v = Instance::started();
    v.run_idle("web", &[], IMAGE);
    let apiserver = std::fs::read_to_string(v.path().join("apiserver.pid")).unwrap();
    let apiserver = apiserver.trim().to_string();
    let info = v.vessel(&["inspect", "web"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let runtime = info[0]["state"]["runtime_pid"]
        .as_i64()
        .unwrap()
        .to_string();
    // Settle: the first exec starts what later ones reuse.
    exec_ok(&v, "web", &["true"]);
    let (api0, rt0) = (load_of(&apiserver), load_of(&runtime));

    let spawn = |args: &[&str]| {
        v.cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Without a terminal: its stdin ends (EOF), as under Docker.
    let mut eof = spawn(&[
        "exec",
        "-i",
        "web",
        "sh",
        "-c",
        "cat >/dev/null; echo gone > /tmp/eof",
    ]);
    // With a terminal: the terminal hangs up (SIGHUP).
    let mut hup = spawn(&[
        "exec",
        "-t",
        "web",
        "sh",
        "-c",
        "trap 'echo hup > /tmp/hup; exit 0' HUP; while :; do sleep 1; done",
    ]);
    // An attached client.
    let mut attached = spawn(&["attach", "web"]);
    // Each is running (its process is in the container) before it goes.
    assert!(
        v.wait_for(BOOT, || {
            let ps = exec_ok(&v, "web", &["ps", "-o", "args"]);
            ps.contains("cat") && ps.contains("trap")
        }),
        "the exec'd processes did not start"
    );
    for c in [&mut eof, &mut hup, &mut attached] {
        c.kill().unwrap();
        let _ = c.wait();
    }
    assert!(
        v.wait_for(Duration::from_secs(30), || {
            v.vessel(&["exec", "web", "test", "-f", "/tmp/eof"])
                .status
                .success()
        }),
        "the exec'd process without a terminal did not see the end of its stdin"
    );
    assert!(
        v.wait_for(Duration::from_secs(30), || {
            v.vessel(&["exec", "web", "test", "-f", "/tmp/hup"])
                .status
                .success()
        }),
        "the exec'd process with a terminal did not get SIGHUP"
    );
    assert_eq!(status(&v, "web"), "running", "the container goes on");
    // Everything the clients held is given back.
    assert!(
        v.wait_for(Duration::from_secs(20), || {
            let (a, r) = (load_of(&apiserver), load_of(&runtime));
            a.0 <= api0.0 && r.0 <= rt0.0 && r.1 <= rt0.1
        }),
        "apiserver (fds, threads) {:?} then {:?}; runtime {:?} then {:?}",
        api0,
        load_of(&apiserver),
        rt0,
        load_of(&runtime)
    );
    assert_ok(&v.vessel(&["rm", "-f", "web"]), "rm -f");
}
