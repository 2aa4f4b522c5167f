//! `vessel cp` and `vessel export` of containers that are not running
//! (created and never started, or exited), end to end with real VMs: a
//! maintenance boot of the container's VM on its disk does the copy, and
//! leaves the container as it was.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, event_names, now_secs, text, Instance, IMAGE};

/// A maintenance VM powers off a second after its last copy; under
/// software emulation on a loaded host, give it ample time.
const GONE: Duration = Duration::from_secs(30);
/// A boot under software emulation on a shared 2-core host.
const BOOT: Duration = Duration::from_secs(120);

/// The processes that make up a VM of this instance: QEMU, runtime
/// helpers (normal or maintenance). Their command lines
/// name the instance's home or its run directory.
fn vm_processes(v: &Instance) -> Vec<String> {
    let home = v.path().to_string_lossy().into_owned();
    let run = vessel_api::paths::Home::new(v.path())
        .run_base()
        .to_string_lossy()
        .into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let exe = cmd.split(' ').next().unwrap_or("");
        let vm_part = ["qemu-system", "vessel-runtime"]
            .iter()
            .any(|n| exe.ends_with(n) || exe.contains(&format!("/{n}")));
        if vm_part && (cmd.contains(&home) || cmd.contains(&run)) {
            found.push(format!(
                "{pid}: {}",
                cmd.chars().take(160).collect::<String>()
            ));
        }
    }
    found
}

/// Assert that no VM process of this instance is left (waiting up to
/// [`GONE`] for the maintenance VM to power off); how long that took.
fn assert_no_vm_left(v: &Instance, after: &str) -> Duration {
    let t = Instant::now();
    let gone = v.wait_for(GONE, || vm_processes(v).is_empty());
    assert!(
        gone,
        "after {after}, VM processes are left: {:#?}",
        vm_processes(v)
    );
    t.elapsed()
}

/// The event actions of container `c` from `since` until now.
fn actions(v: &Instance, since: &str, c: &str) -> Vec<String> {
    event_names(&v.events_of(since, c))
}

/// `vessel inspect`'s state of `c`.
fn state(v: &Instance, c: &str) -> serde_json::Value {
    v.inspect(c)["state"].clone()
}

/// The full ID of container `c`.
fn container_id(v: &Instance, c: &str) -> String {
    v.inspect(c)["config"]["id"].as_str().unwrap().to_string()
}

/// `vessel ARGS`, asserted to succeed; how long it took.
fn timed_ok(v: &Instance, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = v.vessel(args);
    assert_ok(&out, &format!("{args:?}"));
    t.elapsed()
}

#[test]
fn cp_and_export_of_containers_that_do_not_run() {
    let v = Instance::started();
    let host = tempfile::tempdir().unwrap();
    let h = host.path();
    let tree = vessel_tests::cp_host_tree(h);
    let t = tree.to_str().unwrap();
    let a = tree.join("a.txt");
    let a = a.to_str().unwrap();

    // A container created and never started. What its process will show.
    let show = "cat /tmp/tree/a.txt /escaped /dotdot /etc/marker; \
                stat -c '%a %u:%g' /tmp/tree/sub/run.sh /tmp/tree/a.txt /tmp/kept/a.txt; \
                readlink /tmp/tree/link; /tmp/tree/sub/run.sh; exit 7";
    assert_ok(
        &v.vessel(&[
            "create",
            "--name",
            "fresh",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            show,
        ]),
        "create",
    );
    let since = now_secs();
    let before = state(&v, "fresh");
    assert_eq!(before["status"], "created");

    // In: a tree, owned by root; with -a, its owners.
    let took = timed_ok(&v, &["cp", t, "fresh:/tmp/"]);
    let off = assert_no_vm_left(&v, "cp into a created container");
    eprintln!("cp of a tree into a created container: {took:.2?}; its VM gone {off:.2?} later");
    timed_ok(&v, &["cp", "-a", t, "fresh:/tmp/kept"]);
    // Paths that try to lead out stay inside: `..`, and a link to `/`
    // (copied in as a link, not followed).
    timed_ok(&v, &["cp", a, "fresh:../../../../dotdot"]);
    timed_ok(&v, &["cp", h.join("up").to_str().unwrap(), "fresh:/tmp/"]);
    timed_ok(&v, &["cp", a, "fresh:/tmp/up/escaped"]);
    assert!(!Path::new("/escaped").exists(), "the host's / was written");
    let marker = h.join("marker");
    std::fs::write(&marker, b"inside\n").unwrap();
    timed_ok(&v, &["cp", marker.to_str().unwrap(), "fresh:/tmp/up/etc/"]);
    assert!(
        !Path::new("/etc/marker").exists(),
        "the host's /etc was written"
    );
    // Out, through the link: the container's /etc, not the host's.
    let back = h.join("marker.back");
    let took = timed_ok(
        &v,
        &["cp", "fresh:/tmp/up/etc/marker", back.to_str().unwrap()],
    );
    eprintln!("cp of a file out of a created container (its VM still up): {took:.2?}");
    assert_eq!(std::fs::read(&back).unwrap(), b"inside\n");
    assert_no_vm_left(&v, "the copies into a created container");

    // Missing paths: said clearly, nothing left running.
    let out = v.vessel(&["cp", "fresh:/no/such", h.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/no/such"),
        "{}",
        text(&out.stderr)
    );
    let out = v.vessel(&["cp", a, "fresh:/no/such/dir/x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no such directory"),
        "{}",
        text(&out.stderr)
    );
    assert_no_vm_left(&v, "copies of missing paths");

    // Unchanged: its state, and no start or die.
    assert_eq!(state(&v, "fresh"), before);
    assert_eq!(actions(&v, &since, "fresh"), Vec::<String>::new());

    // Started, it finds what was copied in, modes and owners as copied.
    let out = v.vessel(&["start", "-a", "fresh"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "alpha\nalpha\nalpha\ninside\n750 0:0\n644 0:0\n644 1234:5678\na.txt\nran\n"
    );

    // An exited container: the files it wrote, its state kept.
    let out = v.vessel(&[
        "run",
        "--name",
        "done",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /data/d && echo data > /data/d/f && chown -R 4321:8765 /data && chmod 640 /data/d/f; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let before = state(&v, "done");
    assert_eq!(
        (before["status"].as_str(), before["exit_code"].as_i64()),
        (Some("exited"), Some(3))
    );
    let since = now_secs();

    let tarball = h.join("done.tar");
    let took = timed_ok(&v, &["export", "done", "-o", tarball.to_str().unwrap()]);
    let off = assert_no_vm_left(&v, "export of an exited container");
    eprintln!("export of an exited container: {took:.2?}; its VM gone {off:.2?} later");
    let mut ar = tar::Archive::new(std::fs::File::open(&tarball).unwrap());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        if p.ends_with("data/d/f") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            let hd = e.header();
            seen.push(format!(
                "{s}{:o} {}:{}",
                hd.mode().unwrap() & 0o777,
                hd.uid().unwrap(),
                hd.gid().unwrap()
            ));
        }
        if p.ends_with("bin/busybox") {
            seen.push("busybox".into());
        }
    }
    seen.sort();
    assert_eq!(seen, ["busybox", "data\n640 4321:8765"]);

    // Out: owned by the user running vessel (root here), unless -a.
    let out_dir = h.join("out");
    timed_ok(&v, &["cp", "done:/data", out_dir.to_str().unwrap()]);
    let m = std::fs::metadata(out_dir.join("d/f")).unwrap();
    assert_eq!(std::fs::read(out_dir.join("d/f")).unwrap(), b"data\n");
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o640, 0, 0));
    let kept = h.join("kept");
    timed_ok(&v, &["cp", "-a", "done:/data", kept.to_str().unwrap()]);
    let m = std::fs::metadata(kept.join("d/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4321, 8765));
    // In, then out again: there.
    timed_ok(&v, &["cp", a, "done:/data/d/"]);
    let again = h.join("again.txt");
    timed_ok(&v, &["cp", "done:/data/d/a.txt", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(&again).unwrap(), b"alpha\n");
    // A tar stream that tries to escape: inside, or refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Regular);
    hd.set_mode(0o644);
    hd.set_size(4);
    let name = b"../../../../escape-attempt";
    hd.as_old_mut().name[..name.len()].copy_from_slice(name);
    hd.set_cksum();
    b.append(&hd, &b"evil"[..]).unwrap();
    let _ = v.vessel_stdin(&["cp", "-", "done:/tmp"], &b.into_inner().unwrap());
    assert!(!Path::new("/escape-attempt").exists());
    let out = v.vessel(&["cp", "done:/escape-attempt", h.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not unpacked at the container's root either"
    );
    assert_no_vm_left(&v, "the copies of an exited container");

    // Copies at once share one maintenance boot.
    let id = container_id(&v, "done");
    let log = v.path().join("containers").join(id).join("runtime.log");
    let boots = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("maintenance boot of container") && l.ends_with("(done)"))
            .count()
    };
    let boots_before = boots();
    let t0 = Instant::now();
    let copies: Vec<_> = (0..3)
        .map(|i| {
            let dest = h.join(format!("at-once-{i}"));
            let child = v
                .cmd(&["cp", "done:/data/d/f", dest.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (Running(Some(child)), dest)
        })
        .collect();
    for (c, dest) in copies {
        assert_ok(&c.output(), "a copy at once with others");
        assert_eq!(std::fs::read(dest).unwrap(), b"data\n");
    }
    eprintln!("3 copies out at once: {:.2?}", t0.elapsed());
    assert_eq!(boots() - boots_before, 1, "one boot for the copies at once");
    assert_no_vm_left(&v, "copies at once");
    assert_eq!(
        state(&v, "done"),
        before,
        "the state and exit code are kept"
    );
    assert_eq!(actions(&v, &since, "done"), Vec::<String>::new());
}

/// A `vessel` child process killed (and reaped) when dropped, so a failed
/// test leaves none behind.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Wait for its end; what it wrote.
    fn output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `vessel cp - C:/tmp` fed by the test: the first `part` bytes of a tar
/// holding `slow.txt` (`size` bytes of `x`) are written at once; the rest
/// when the test says.
fn slow_copy_in(v: &Instance, c: &str, size: usize) -> (Running, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_path("slow.txt").unwrap();
    hd.set_mode(0o644);
    hd.set_size(size as u64);
    hd.set_cksum();
    b.append(&hd, &vec![b'x'; size][..]).unwrap();
    let archive = b.into_inner().unwrap();
    let child = v
        .cmd(&["cp", "-", &format!("{c}:/tmp")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (Running(Some(child)), archive)
}

/// Wait until the maintenance VM of `c` is up and a copy had a moment to
/// begin on it.
fn wait_maintenance_ready(v: &Instance, c: &str) {
    let id = container_id(v, c);
    let log = v.path().join("containers").join(id).join("runtime.log");
    let ready = v.wait_for(BOOT, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("maintenance VM ready"))
    });
    assert!(
        ready,
        "the maintenance VM never came up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The probe of `cp -` ends, the copy itself begins.
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn a_start_waits_for_a_copy_and_a_copy_cut_short_leaves_nothing() {
    let v = Instance::started();

    // A copy in going on: `start` waits for it, then runs the container,
    // which sees the whole file.
    assert_ok(
        &v.vessel(&[
            "create",
            "--name",
            "busy",
            "--network",
            "none",
            IMAGE,
            "wc",
            "-c",
            "/tmp/slow.txt",
        ]),
        "create",
    );
    let size = 300_000;
    let (mut cp, archive) = slow_copy_in(&v, "busy", size);
    let mut stdin = cp.child().stdin.take().unwrap();
    stdin.write_all(&archive[..100_000]).unwrap();
    stdin.flush().unwrap();
    wait_maintenance_ready(&v, "busy");
    let mut start = Running(Some(
        v.cmd(&["start", "busy"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        start.child().try_wait().unwrap().is_none(),
        "start did not wait for the copy"
    );
    assert_eq!(state(&v, "busy")["status"], "created");
    let asked = Instant::now();
    stdin.write_all(&archive[100_000..]).unwrap();
    drop(stdin);
    let cp_out = cp.output();
    assert_ok(&cp_out, "cp - while a start waits");
    let started = start.output();
    assert_ok(&started, "start after the copy");
    eprintln!(
        "start returned {:.2?} after the copy's end",
        asked.elapsed()
    );
    assert_ok(&v.vessel(&["wait", "busy"]), "wait");
    let logs = v.vessel(&["logs", "busy"]);
    assert_eq!(text(&logs.stdout).trim(), format!("{size} /tmp/slow.txt"));
    assert_no_vm_left(&v, "the container's run");

    // A client that goes away in the middle of a copy: the maintenance VM
    // powers off, the container stays `created`, its disk consistent.
    assert_ok(
        &v.vessel(&[
            "create",
            "--name",
            "cut",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "ls /tmp; echo fine",
        ]),
        "create",
    );
    let (mut cp, archive) = slow_copy_in(&v, "cut", size);
    let mut stdin = cp.child().stdin.take().unwrap();
    stdin.write_all(&archive[..100_000]).unwrap();
    stdin.flush().unwrap();
    wait_maintenance_ready(&v, "cut");
    cp.child().kill().unwrap();
    let _ = cp.child().wait();
    drop(stdin);
    let off = assert_no_vm_left(&v, "a copy cut short");
    eprintln!("a copy cut short: its VM gone {off:.2?} after the client");
    assert_eq!(state(&v, "cut")["status"], "created");
    let out = v.vessel(&["start", "-a", "cut"]);
    assert_ok(&out, "start -a after a cut copy");
    assert!(
        text(&out.stdout).ends_with("fine\n"),
        "{}",
        text(&out.stdout)
    );

    // `rm -f` in the middle of a copy: the copy is cut, the container gone.
    assert_ok(
        &v.vessel(&[
            "create",
            "--name",
            "gone",
            "--network",
            "none",
            IMAGE,
            "true",
        ]),
        "create",
    );
    let (mut cp, archive) = slow_copy_in(&v, "gone", size);
    let mut stdin = cp.child().stdin.take().unwrap();
    stdin.write_all(&archive[..100_000]).unwrap();
    stdin.flush().unwrap();
    wait_maintenance_ready(&v, "gone");
    let t = Instant::now();
    assert_ok(&v.vessel(&["rm", "-f", "gone"]), "rm -f during a copy");
    eprintln!("rm -f during a copy: {:.2?}", t.elapsed());
    drop(stdin);
    let cut = cp.output();
    assert!(!cut.status.success(), "the cut copy reports a failure");
    assert!(
        vm_processes(&v).is_empty(),
        "rm -f returns once the VM is gone: {:#?}",
        vm_processes(&v)
    );
    let out = v.vessel(&["inspect", "gone"]);
    assert!(!out.status.success());
}
