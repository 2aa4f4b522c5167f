//! Bind mounts end to end: a host directory shared into one VM over
//! virtio-fs by a `virtiofsd` of its own (real VMs, real virtiofsd).
//!
//! What must hold: the container reads and writes the host's files with
//! the right owners; read-only is enforced by the host (a remount in the
//! guest does not help); no other VM, and no other host path, is reachable
//! (checked in the guests and through /proc of virtiofsd and QEMU); bad
//! sources are clear errors that leave nothing behind; fsynced data
//! survives a killed VM; no virtiofsd outlives its container.
//!
//! Each test has its own instance (and so its own `VESSEL_HOME`) and
//! temporary directories, removed even when it fails.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// A started instance and a host directory (mode 0777, so any guest user
/// may write into it) holding `in.txt`.
fn setup() -> (Instance, tempfile::TempDir, PathBuf) {
    let v = Instance::started();
    let t = tempfile::Builder::new()
        .prefix("vessel-bind-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(data.join("in.txt"), "from-the-host\n").unwrap();
    (v, t, data)
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn inspect(v: &Instance, name: &str) -> Value {
    v.inspect(name)
}

/// `vessel exec NAME sh -c SCRIPT`: its stdout, stderr and exit code.
fn exec(v: &Instance, name: &str, script: &str) -> (String, String, i32) {
    let out = v.vessel(&["exec", name, "sh", "-c", script]);
    (
        text(&out.stdout),
        text(&out.stderr),
        out.status.code().unwrap_or(-1),
    )
}

/// Processes whose command line contains `needle` and `word`: their pids.
fn pids_with(needle: &str, word: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && cmd.contains(word) {
            out.push(pid);
        }
    }
    out
}

/// The virtiofsd processes serving container `id` of `v`.
fn virtiofsds(v: &Instance, id: &str) -> Vec<i32> {
    let run_dir = vessel_api::paths::Home::new(v.path()).run_dir(id);
    pids_with(&run_dir.to_string_lossy(), "virtiofsd")
}

/// Every virtiofsd of instance `v`.
fn all_virtiofsds(v: &Instance) -> Vec<i32> {
    let base = vessel_api::paths::Home::new(v.path()).run_base();
    pids_with(&base.to_string_lossy(), "virtiofsd")
}

fn kill9(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn the_container_reads_and_writes_host_files_with_their_owners() {
    let (v, _t, data) = setup();
    let mount = format!("{}:/data", data.display());
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        "1000:1000",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /data/in.txt && echo by-1000 > /data/out.txt && mkdir /data/dir1000 && \
         mount | grep ' /data '",
    ]);
    assert_ok(&out, "run -u 1000 -v");
    let o = text(&out.stdout);
    assert!(o.contains("from-the-host"), "{o}");
    assert!(o.contains("type virtiofs (rw"), "{o}");
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "by-1000\n"
    );
    assert_eq!(owner(&data.join("out.txt")), (1000, 1000));
    assert_eq!(owner(&data.join("dir1000")), (1000, 1000));

    // As root in the guest: root's on the host. Device nodes cannot be
    // made in a host directory (virtiofsd runs without CAP_MKNOD).
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "rooted",
        "--network",
        "none",
        "-v",
        &format!("{}:/data", data.display()),
        IMAGE,
        "sh",
        "-c",
        "mkdir /data/rootdir && echo r > /data/rootdir/f; \
         mknod /data/null c 1 3 || echo mknod-refused; sleep 600",
    ]);
    assert_ok(&out, "run -d as root");
    assert!(
        v.wait_for(Duration::from_secs(30), || text(
            &v.vessel(&["logs", "rooted"]).stdout
        )
        .contains("mknod-refused")),
        "mknod was not refused: {}",
        text(&v.vessel(&["logs", "rooted"]).stdout)
    );
    assert_eq!(owner(&data.join("rootdir")), (0, 0));
    assert_eq!(owner(&data.join("rootdir/f")), (0, 0));
    assert!(!data.join("null").exists());

    // inspect lists the mount as Docker does: canonical source, rw.
    let info = inspect(&v, "rooted");
    let m = &info["mounts"][0];
    assert_eq!(m["type"], "bind");
    assert_eq!(
        m["source"].as_str().unwrap(),
        std::fs::canonicalize(&data).unwrap().to_str().unwrap()
    );
    assert_eq!(m["destination"], "/data");
    assert_eq!(m["rw"], true);
    assert_ok(&v.vessel(&["rm", "-f", "rooted"]), "rm -f");
}

#[test]
fn read_only_is_enforced_by_the_host_even_after_a_remount() {
    let (v, _t, data) = setup();
    let script = "echo x > /data/in.txt || echo write-refused; \
                  mount -o remount,rw /data && echo remounted; \
                  mount | grep ' /data '; \
                  echo y > /data/in.txt || echo rewrite-refused; \
                  touch /data/new || echo create-refused; \
                  rm /data/in.txt || echo rm-refused; true";
    for flag in [
        vec!["-v".to_string(), format!("{}:/data:ro", data.display())],
        vec![
            "--mount".to_string(),
            format!("type=bind,source={},target=/data,readonly", data.display()),
        ],
    ] {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend(flag.iter().map(String::as_str));
        args.extend([IMAGE, "sh", "-c", script]);
        let out = v.vessel(&args);
        assert_ok(&out, "run with a read-only bind mount");
        let o = text(&out.stdout);
        let e = text(&out.stderr);
        for word in [
            "write-refused",
            "remounted",
            "rewrite-refused",
            "create-refused",
            "rm-refused",
        ] {
            assert!(o.contains(word), "{flag:?}: no {word}: {o} / {e}");
        }
        // The guest did remount it read-write: only the host refused.
        assert!(o.contains("type virtiofs (rw"), "{o}");
        assert!(e.contains("Read-only file system"), "{e}");
        assert_eq!(
            std::fs::read_to_string(data.join("in.txt")).unwrap(),
            "from-the-host\n"
        );
        assert!(!data.join("new").exists());
    }
}

#[test]
fn only_the_mounting_vm_reaches_the_directory_and_nothing_else() {
    let (v, t, data) = setup();
    // A marker inside the shared directory, and a host-only one outside it
    // that links in the directory point at.
    let marker = format!("vessel-marker-{}", std::process::id());
    std::fs::write(data.join(&marker), "inside\n").unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "HOST-ONLY-SECRET\n").unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc", data.join("etclink")).unwrap();

    let mount = format!("{}:/data", data.display());
    v.run_idle("aa", &["-v", &mount], IMAGE);
    v.run_idle("bb", &[], IMAGE);
    let a = inspect(&v, "aa");
    let id = a["config"]["id"].as_str().unwrap().to_string();

    // A sees the marker; B finds it nowhere.
    let (o, _, _) = exec(&v, "aa", &format!("cat /data/{marker}"));
    assert_eq!(o, "inside\n");
    let (o, e, _) = exec(
        &v,
        "bb",
        &format!("find / -name '{marker}' 2>/dev/null; echo end"),
    );
    assert_eq!(o, "end\n", "B reached A's directory: {o} {e}");

    // Links are followed in the guest: never to the host's files.
    let (o, e, _) = exec(
        &v,
        "aa",
        "cat /data/link/secret; cat /data/etclink/hostname",
    );
    assert!(!o.contains("HOST-ONLY-SECRET"), "{o}");
    assert!(!e.contains("HOST-ONLY-SECRET"), "{e}");
    assert_eq!(o.trim(), &id[..12], "the guest's /etc/hostname: {o} {e}");

    // virtiofsd: its root and its only mount are the shared directory.
    let real = std::fs::canonicalize(&data).unwrap();
    let fsds = virtiofsds(&v, &id);
    assert!(!fsds.is_empty(), "no virtiofsd for A");
    for pid in &fsds {
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let lines: Vec<&str> = mountinfo.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "virtiofsd {pid} sees more mounts: {mountinfo}"
        );
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        // root of the mount within its filesystem, and where it is mounted
        assert_eq!(
            (fields[3], fields[4]),
            (real.to_str().unwrap(), "/"),
            "{mountinfo}"
        );
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        assert!(
            root.join(&marker).exists(),
            "virtiofsd {pid}'s root is not the directory"
        );
        assert!(!root.join("etc/passwd").exists());
    }
    // virtiofsd is not the only thing to check: A's QEMU holds no file of
    // the directory, and no host file outside what its VM is made of.
    let qemu = a["state"]["vmm_pid"].as_i64().unwrap();
    let allowed = [
        v.path().to_path_buf(),
        vessel_api::paths::Home::new(v.path()).run_base(),
        vessel_tests::required_env("VESSEL_KERNEL"),
        vessel_tests::required_env("VESSEL_INITRD"),
        PathBuf::from("/dev/"),
    ];
    for fd in std::fs::read_dir(format!("/proc/{qemu}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let s = target.to_string_lossy();
        if !s.starts_with('/') || s.starts_with("/memfd:") {
            continue; // sockets, pipes, anonymous inodes, guest memory
        }
        assert!(
            !target.starts_with(&real) && !target.starts_with(&data),
            "QEMU holds {s}"
        );
        assert!(
            allowed.iter().any(|p| target.starts_with(p)),
            "QEMU holds a host file outside its container: {s}"
        );
    }
    assert_ok(&v.vessel(&["rm", "-f", "aa", "bb"]), "rm -f");
}

#[test]
fn bad_bind_sources_are_clear_errors_and_leave_nothing() {
    let v = Instance::started();
    let t = tempfile::Builder::new()
        .prefix("vessel-bind-")
        .tempdir_in("/tmp")
        .unwrap();
    let fails = |args: &[&str], want: &str| {
        let mut a = vec!["run", "--rm", "--network", "none"];
        a.extend_from_slice(args);
        a.extend([IMAGE, "true"]);
        let out = v.vessel(&a);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let e = text(&out.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
    };
    let missing = t.path().join("missing/sub");
    fails(
        &[
            "--mount",
            &format!("type=bind,source={},target=/x", missing.display()),
        ],
        &format!("bind source path does not exist: {}", missing.display()),
    );
    assert!(
        !t.path().join("missing").exists(),
        "--mount created its source"
    );

    // A socket, a device, a file.
    let sock = t.path().join("s.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fails(&["-v", &format!("{}:/x", sock.display())], "is a socket");
    fails(&["-v", "/dev/null:/x"], "is a device");
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    fails(
        &["-v", &format!("{}:/x", file.display())],
        "bind-mounting a single file is not supported yet",
    );
    // A relative source: an error for --mount; `a/b` is no volume name.
    fails(
        &["--mount", "type=bind,source=rel,target=/x"],
        "a host path must be absolute",
    );
    fails(&["-v", "rel/dir:/x"], "invalid volume name");
    // Two mounts, the second bad: the first's new directory is not made.
    let new = t.path().join("new/dir");
    fails(
        &[
            "-v",
            &format!("{}:/a", new.display()),
            "-v",
            &format!("{}:/b", file.display()),
        ],
        "single file",
    );
    assert!(
        !t.path().join("new").exists(),
        "a refused run created {}",
        new.display()
    );
    let left = text(&v.vessel(&["ls", "-a", "-q"]).stdout);
    assert!(
        left.trim().is_empty(),
        "refused runs left containers: {left}"
    );

    // -v creates a missing source (0755, root's), and `./dir` is taken
    // from the client's working directory.
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/x", missing.display()),
        IMAGE,
        "sh",
        "-c",
        "echo made > /x/f",
    ]);
    assert_ok(&out, "run -v with a missing source");
    assert_eq!(
        std::fs::read_to_string(missing.join("f")).unwrap(),
        "made\n"
    );
    let mode = std::fs::metadata(&missing).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o755, 0o755, "{mode:o}");
    let out = v
        .cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "./rel:/x",
            IMAGE,
            "sh",
            "-c",
            "echo here > /x/f",
        ])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert_ok(&out, "run -v ./rel:/x");
    assert_eq!(
        std::fs::read_to_string(t.path().join("rel/f")).unwrap(),
        "here\n"
    );
}

#[test]
fn fsynced_data_is_on_the_host_after_the_vm_is_killed() {
    let (v, _t, data) = setup();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "writer",
        "--network",
        "none",
        "-v",
        &format!("{}:/data", data.display()),
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/tmp/src bs=64k count=64 2>/dev/null && \
         dd if=/tmp/src of=/data/blob bs=64k conv=fsync 2>/dev/null && \
         echo \"written $(sha256sum /tmp/src | cut -c1-64)\" && sleep 600",
    ]);
    assert_ok(&out, "run -d");
    let mut line = String::new();
    assert!(
        v.wait_for(Duration::from_secs(60), || {
            line = text(&v.vessel(&["logs", "writer"]).stdout);
            line.contains("written ")
        }),
        "the guest did not write: {line}"
    );
    let sum = line.split_whitespace().nth(1).unwrap().to_string();
    let qemu = inspect(&v, "writer")["state"]["vmm_pid"].as_i64().unwrap() as i32;
    kill9(qemu);
    assert!(
        v.wait_for(Duration::from_secs(20), || inspect(&v, "writer")["state"]
            ["status"]
            == "exited"),
        "the container did not end with its VM"
    );
    let blob = std::fs::read(data.join("blob")).unwrap();
    assert_eq!(blob.len(), 64 * 64 * 1024);
    let out = std::process::Command::new("sha256sum")
        .arg(data.join("blob"))
        .output()
        .unwrap();
    assert_eq!(
        &text(&out.stdout)[..64],
        sum,
        "the data on the host is not whole"
    );
}

#[test]
fn no_virtiofsd_outlives_its_container() {
    let (v, _t, data) = setup();
    let mount = format!("{}:/data", data.display());
    let ro = format!("{}:/ro:ro", data.display());
    let start = |name: &str| -> (String, Value) {
        v.run_idle(name, &["-v", &mount, "-v", &ro], IMAGE);
        let info = inspect(&v, name);
        let id = info["config"]["id"].as_str().unwrap().to_string();
        // Two mounts: two virtiofsd, each an outer process and its
        // sandboxed child.
        let n = virtiofsds(&v, &id).len();
        assert_eq!(n, 4, "virtiofsd processes for {name}: {n}");
        (id, info)
    };
    let gone = |what: &str| {
        assert!(
            v.wait_for(Duration::from_secs(15), || all_virtiofsds(&v).is_empty()),
            "virtiofsd left after {what}: {:?}",
            all_virtiofsds(&v)
        );
    };

    start("one");
    assert_ok(&v.vessel(&["rm", "-f", "one"]), "rm -f");
    gone("rm -f");

    let (_, info) = start("two");
    kill9(info["state"]["vmm_pid"].as_i64().unwrap() as i32);
    gone("the VM was killed");

    let (_, info) = start("three");
    let runtime = info["state"]["runtime_pid"].as_i64().unwrap() as i32;
    let qemu = info["state"]["vmm_pid"].as_i64().unwrap() as i32;
    kill9(runtime);
    gone("the runtime was killed");
    assert!(
        v.wait_for(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{qemu}"
        ))
        .exists()),
        "QEMU outlived its runtime"
    );
}

#[test]
fn two_vms_append_to_one_file_without_losing_a_line() {
    let (v, _t, data) = setup();
    let mount = format!("{}:/data", data.display());
    for name in ["app1", "app2"] {
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do echo {name}-$i-0123456789abcdef0123456789abcdef >> /data/log; \
             i=$((i+1)); done; echo done; sleep 600"
        );
        assert_ok(
            &v.vessel(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                "-v",
                &mount,
                IMAGE,
                "sh",
                "-c",
                &script,
            ]),
            "run -d",
        );
    }
    for name in ["app1", "app2"] {
        assert!(
            v.wait_for(Duration::from_secs(90), || text(
                &v.vessel(&["logs", name]).stdout
            )
            .contains("done")),
            "{name} did not finish"
        );
    }
    let log = std::fs::read_to_string(data.join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 600, "lines lost or torn");
    for name in ["app1", "app2"] {
        for i in 0..300 {
            let want = format!("{name}-{i}-0123456789abcdef0123456789abcdef");
            assert!(lines.contains(&want.as_str()), "missing {want}");
        }
    }
    assert_ok(&v.vessel(&["rm", "-f", "app1", "app2"]), "rm -f");
}
