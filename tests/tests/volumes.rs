//! Volumes end to end, with real VMs: named volumes (ext4 disks on
//! virtio-blk) that keep data from one container to the next, survive
//! `system stop`/`start` and a killed VM; Docker's copy-in of the image's
//! content; anonymous volumes (`-v /path`, the image's `VOLUME`s) and their
//! removal; one running container per block volume; the volume commands.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;
use vessel_tests::small_disk::{output_within, SmallDisk};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// `vessel volume ls -q`.
fn volume_names(v: &Instance) -> Vec<String> {
    let out = v.vessel(&["volume", "ls", "-q"]);
    assert_ok(&out, "volume ls -q");
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// `vessel volume inspect NAME`, the one object.
fn inspect_volume(v: &Instance, name: &str) -> serde_json::Value {
    let out = v.vessel(&["volume", "inspect", name]);
    assert_ok(&out, "volume inspect");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list[0].clone()
}

/// A run that must succeed; its standard output.
fn run_ok(v: &Instance, args: &[&str]) -> String {
    let mut a = vec!["run", "--rm", "--network", "none"];
    a.extend_from_slice(args);
    let out = v.vessel(&a);
    assert_ok(&out, &format!("run {args:?}"));
    text(&out.stdout)
}

/// What `vessel` said on stderr, for a command that must fail.
fn fails(v: &Instance, args: &[&str]) -> String {
    let out = v.vessel(args);
    assert!(
        !out.status.success(),
        "{args:?} should have failed; it printed {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

#[test]
fn named_volumes_keep_data_and_are_refused_removal_while_used() {
    let v = Instance::started();
    // Made on first use; the data is there for the next container.
    run_ok(
        &v,
        &["-v", "data:/data", IMAGE, "sh", "-c", "echo kept > /data/f"],
    );
    assert_eq!(volume_names(&v), ["data"]);
    assert_eq!(
        run_ok(&v, &["-v", "data:/data", IMAGE, "cat", "/data/f"]),
        "kept\n"
    );
    let info = inspect_volume(&v, "data");
    assert_eq!(info["backing"], "block");
    assert_eq!(info["driver"], "local");
    assert_eq!(info["size_bytes"], 16u64 << 30);
    let img = PathBuf::from(info["mountpoint"].as_str().unwrap());
    assert_eq!(img, v.path().join("volumes/data/disk.img"));
    // Sparse: what was written and the metadata, not 16 GiB.
    let usage = info["usage_bytes"].as_u64().unwrap();
    assert!(usage > 0 && usage < 64 << 20, "{usage}");

    // A container that uses it, never started: removal refused, with or
    // without -f (Docker's rule), naming the container.
    let out = v.vessel(&[
        "create",
        "--name",
        "user",
        "-v",
        "data:/data",
        IMAGE,
        "true",
    ]);
    assert_ok(&out, "create");
    for args in [
        &["volume", "rm", "data"][..],
        &["volume", "rm", "-f", "data"][..],
    ] {
        let e = fails(&v, args);
        assert!(e.contains("volume data is in use by container user"), "{e}");
    }
    assert_eq!(
        inspect_volume(&v, "data")["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // `volume prune -a` leaves a used volume alone.
    assert_ok(&v.vessel(&["volume", "prune", "-a", "-f"]), "prune");
    assert_eq!(volume_names(&v), ["data"]);
    // `rm` of the container leaves its named volume.
    assert_ok(&v.vessel(&["rm", "-v", "user"]), "rm -v");
    assert_eq!(volume_names(&v), ["data"]);
    let out = v.vessel(&["volume", "rm", "data"]);
    assert_ok(&out, "volume rm");
    assert_eq!(text(&out.stdout), "data\n");
    assert!(!v.path().join("volumes/data").exists());
    let e = fails(&v, &["volume", "rm", "data"]);
    assert!(e.contains("no such volume: data"), "{e}");
    assert_ok(
        &v.vessel(&["volume", "rm", "-f", "data"]),
        "rm -f of nothing",
    );

    // Bad input: a clear error each, and nothing half-made.
    for (args, says) in [
        (&["volume", "create", "a/b"][..], "invalid volume name"),
        (&["volume", "create", ".."][..], "invalid volume name"),
        (
            &["volume", "create", "--opt", "colour=red", "x"][..],
            "unknown volume option \"colour\"",
        ),
        (
            &["volume", "create", "--opt", "size=lots", "x"][..],
            "expected a size",
        ),
        (
            &["volume", "create", "--opt", "size=1m", "x"][..],
            "at least 16m",
        ),
        (&["volume", "create", "--opt", "size", "x"][..], "KEY=VALUE"),
        (
            &["run", "--rm", "-v", "my/vol:/x", IMAGE, "true"][..],
            "invalid volume name",
        ),
        (
            &[
                "run", "--rm", "-v", "/anon", "-v", "twice:/a", "-v", "twice:/b", IMAGE, "true",
            ][..],
            "volume twice is mounted twice (/a and /b)",
        ),
    ] {
        let e = fails(&v, args);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert!(volume_names(&v).is_empty());
    let left: Vec<_> = std::fs::read_dir(v.path().join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Made by hand: options, labels, a name taken.
    let out = v.vessel(&[
        "volume", "create", "--opt", "size=64m", "--label", "team=db", "small",
    ]);
    assert_ok(&out, "volume create");
    assert_eq!(text(&out.stdout), "small\n");
    let info = inspect_volume(&v, "small");
    assert_eq!(info["size_bytes"], 64u64 << 20);
    assert_eq!(info["labels"]["team"], "db");
    let e = fails(&v, &["volume", "create", "small"]);
    assert!(e.contains("already exists"), "{e}");
    // Generated names are 64 hex digits; `ls` is Docker's table.
    let out = v.vessel(&["volume", "create"]);
    assert_ok(&out, "volume create (no name)");
    let generated = text(&out.stdout).trim().to_string();
    assert!(
        generated.len() == 64 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated}"
    );
    let out = v.vessel(&["volume", "ls"]);
    let ls = text(&out.stdout);
    assert!(ls.starts_with("DRIVER   VOLUME NAME\n"), "{ls}");
    assert!(ls.contains("local    small\n"), "{ls}");
    // A shared volume can be made, and mounted at two paths of one
    // container (a block volume cannot: above).
    assert_ok(
        &v.vessel(&["volume", "create", "--opt", "shared=true", "sh"]),
        "shared volume",
    );
    assert!(v.path().join("volumes/sh/data").is_dir());
    assert_eq!(
        run_ok(
            &v,
            &[
                "-v",
                "sh:/a",
                "-v",
                "sh:/b:ro",
                IMAGE,
                "sh",
                "-c",
                "echo both > /a/f && cat /b/f"
            ]
        ),
        "both\n"
    );
    // prune -a: every unused volume.
    let out = v.vessel(&["volume", "prune", "-a", "-f"]);
    assert_ok(&out, "prune -a");
    assert!(
        text(&out.stdout).contains("Deleted Volumes:"),
        "{}",
        text(&out.stdout)
    );
    assert!(volume_names(&v).is_empty());
}

#[test]
fn an_empty_volume_gets_the_image_s_content_unless_nocopy() {
    let v = Instance::started();
    let out = run_ok(
        &v,
        &[
            "-v",
            "etc:/etc",
            IMAGE,
            "sh",
            "-c",
            "grep -c ^root: /etc/passwd; stat -c '%a %u' /etc/passwd; mount | grep -c ' /etc '",
        ],
    );
    assert_eq!(out, "1\n644 0\n1\n");
    // Its data wins from now on: a change stays, nothing is copied again.
    run_ok(
        &v,
        &[
            "-v",
            "etc:/etc",
            IMAGE,
            "sh",
            "-c",
            "echo mine > /etc/passwd",
        ],
    );
    assert_eq!(
        run_ok(&v, &["-v", "etc:/etc", IMAGE, "cat", "/etc/passwd"]),
        "mine\n"
    );
    // nocopy (-v and --mount): empty.
    assert_eq!(
        run_ok(&v, &["-v", "bare:/etc:nocopy", IMAGE, "ls", "-A", "/etc"]),
        ""
    );
    assert_eq!(
        run_ok(
            &v,
            &[
                "--mount",
                "type=volume,src=bare2,dst=/etc,volume-nocopy",
                IMAGE,
                "ls",
                "-A",
                "/etc"
            ]
        ),
        ""
    );
    // A volume where the image has nothing: empty, no lost+found, root's 0755.
    assert_eq!(
        run_ok(
            &v,
            &[
                "-v",
                "fresh:/srv/new",
                IMAGE,
                "sh",
                "-c",
                "ls -A /srv/new; stat -c '%a %u %g' /srv/new"
            ]
        ),
        "755 0 0\n"
    );
}

#[test]
fn anonymous_volumes_go_with_run_rm_and_rm_v() {
    let v = Instance::started();
    let out = run_ok(
        &v,
        &[
            "--tmpfs",
            "/scratch/tmp",
            "-v",
            "/scratch",
            IMAGE,
            "sh",
            "-c",
            "mount | grep -o -e ' /scratch type ext4' -e ' /scratch/tmp type tmpfs'",
        ],
    );
    // A tmpfs inside an anonymous volume: parent mounted first, both seen.
    assert_eq!(out, " /scratch type ext4\n /scratch/tmp type tmpfs\n");
    assert!(volume_names(&v).is_empty(), "run --rm left a volume");

    let out = v.vessel(&[
        "run",
        "--name",
        "keep",
        "--network",
        "none",
        "-v",
        "/anon",
        "-v",
        "named:/n",
        IMAGE,
        "true",
    ]);
    assert_ok(&out, "run");
    let names = volume_names(&v);
    assert_eq!(names.len(), 2, "{names:?}");
    let anon = names.iter().find(|n| *n != "named").unwrap().clone();
    assert!(inspect_volume(&v, &anon)["anonymous"].as_bool().unwrap());
    // inspect of the container shows its mounts, the anonymous one named.
    let out = v.vessel(&["inspect", "keep"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mounts = info[0]["config"]["mounts"].as_array().unwrap().clone();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    assert!(mounts
        .iter()
        .any(|m| m["source"] == anon.as_str() && m["anonymous"] == true && m["target"] == "/anon"));
    assert_ok(&v.vessel(&["rm", "-v", "keep"]), "rm -v");
    assert_eq!(volume_names(&v), ["named"]);

    // Without -v the anonymous volume stays; `volume prune` takes it, and
    // not the named one; `system df` counts them.
    let out = v.vessel(&[
        "run",
        "--name",
        "k2",
        "--network",
        "none",
        "-v",
        "/anon",
        IMAGE,
        "true",
    ]);
    assert_ok(&out, "run");
    assert_ok(&v.vessel(&["rm", "k2"]), "rm");
    assert_eq!(volume_names(&v).len(), 2);
    let out = v.vessel(&["system", "df"]);
    assert_ok(&out, "system df");
    let df = text(&out.stdout);
    let row = df.lines().find(|l| l.starts_with("Local Volumes")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[2..4], ["2", "0"], "{df}");
    let out = v.vessel(&["volume", "prune", "-f"]);
    assert_ok(&out, "prune");
    assert!(
        text(&out.stdout).contains("Total reclaimed space:"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(volume_names(&v), ["named"]);
}

/// An image like the default one whose config has `VOLUME /data` and
/// `VOLUME /cache`, with a file in `/data`.
fn image_with_volumes(dir: &Path) -> PathBuf {
    vessel_tests::busybox_image(
        dir,
        "volimg",
        &["sh", "cat", "mount", "grep", "ls"],
        &["--volume", "/data", "--volume", "/cache"],
        |root| {
            std::fs::create_dir_all(root.join("data")).unwrap();
            std::fs::write(root.join("data/seed"), "from the image\n").unwrap();
        },
    )
}

#[test]
fn an_image_volume_gets_an_anonymous_volume_unless_a_mount_covers_it() {
    let v = Instance::started();
    let dir = tempfile::tempdir().unwrap();
    let tar = image_with_volumes(dir.path());
    assert_ok(
        &v.vessel(&["image", "load", "-i", tar.to_str().unwrap()]),
        "load",
    );
    let img = "localhost/volimg:latest";
    let out = run_ok(
        &v,
        &[
            img,
            "sh",
            "-c",
            "cat /data/seed; mount | grep -c -e ' /data ' -e ' /cache '",
        ],
    );
    assert_eq!(out, "from the image\n2\n");
    assert!(
        volume_names(&v).is_empty(),
        "run --rm keeps no anonymous volume"
    );
    // A named volume at /data replaces that one (and is filled from the image).
    let out = run_ok(&v, &["-v", "mine:/data", img, "cat", "/data/seed"]);
    assert_eq!(out, "from the image\n");
    assert_eq!(volume_names(&v), ["mine"]);
}

#[test]
fn one_running_container_per_block_volume_and_synced_data_survives_a_killed_vm() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "none",
        "-v",
        "db:/db",
        IMAGE,
        "sh",
        "-c",
        "echo committed > /db/row; sync /db/row /db; echo synced; sleep 600",
    ]);
    assert_ok(&out, "run -d");
    assert!(
        v.wait_for(Duration::from_secs(60), || text(
            &v.vessel(&["logs", "holder"]).stdout
        )
        .contains("synced")),
        "the writer did not sync"
    );
    // A second VM on the same disk is refused, with the way out.
    let e = fails(
        &v,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "db:/db",
            IMAGE,
            "true",
        ],
    );
    assert!(
        e.contains("volume db is mounted by the running container holder")
            && e.contains("backing=shared"),
        "{e}"
    );
    // Kill the VM itself (no shutdown, no unmount): what was synced is there.
    let out = v.vessel(&["inspect", "holder"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let qemu = info[0]["state"]["vmm_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions; the pid is this
    // test's VM, running (checked just above).
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGKILL) }, 0);
    assert!(
        v.wait_for(Duration::from_secs(30), || text(
            &v.vessel(&["ls", "-q"]).stdout
        )
        .trim()
        .is_empty()),
        "the container did not end with its VM"
    );
    assert_eq!(
        run_ok(&v, &["-v", "db:/db", IMAGE, "cat", "/db/row"]),
        "committed\n"
    );
}

#[test]
fn volumes_survive_system_stop_and_start() {
    let mut v = Instance::started();
    run_ok(
        &v,
        &["-v", "state:/s", IMAGE, "sh", "-c", "echo before > /s/f"],
    );
    assert_ok(&v.vessel(&["system", "stop"]), "system stop");
    v.start();
    assert_eq!(volume_names(&v), ["state"]);
    assert_eq!(
        run_ok(&v, &["-v", "state:/s", IMAGE, "cat", "/s/f"]),
        "before\n"
    );
    // The events of a volume's life.
    let out = v.vessel(&["volume", "rm", "state"]);
    assert_ok(&out, "volume rm");
    let out = v.vessel(&[
        "events",
        "--since",
        "10m",
        "--until",
        &vessel_tests::now_secs(),
        "--filter",
        "type=volume",
        "--format",
        "json",
    ]);
    assert_ok(&out, "events");
    let actions: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(e["name"], "state");
            e["action"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(actions, ["create", "destroy"]);
}

/// `vessel exec NAME sh -c SCRIPT`, which must succeed; its output.
fn exec_sh(v: &Instance, name: &str, script: &str) -> String {
    let out = v.vessel(&["exec", name, "sh", "-c", script]);
    assert_ok(&out, &format!("exec {name} {script}"));
    text(&out.stdout)
}

#[test]
fn a_shared_volume_is_read_and_written_by_two_running_containers() {
    let v = Instance::started();
    assert_ok(
        &v.vessel(&["volume", "create", "--opt", "backing=shared", "team"]),
        "volume create shared",
    );
    assert_eq!(inspect_volume(&v, "team")["backing"], "shared");
    // va mounts it first at /etc: the image's /etc is copied in, as into
    // a block volume; vb sees it at /data.
    // (The Debian image: busybox has no `flock`.)
    vessel_tests::debian::import(&v);
    for (name, at) in [("va", "team:/etc"), ("vb", "team:/data")] {
        v.run_idle(name, &["-v", at], vessel_tests::debian::IMAGE);
    }
    assert!(
        exec_sh(&v, "vb", "cat /data/passwd").contains("root:"),
        "copy-in"
    );

    // A file one writes, the other reads within a second.
    exec_sh(&v, "va", "echo from-a > /etc/note");
    let t = std::time::Instant::now();
    let seen = v.wait_for(Duration::from_secs(5), || {
        text(&v.vessel(&["exec", "vb", "cat", "/data/note"]).stdout) == "from-a\n"
    });
    assert!(seen, "vb never saw va's file");
    eprintln!("seen by the other VM after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Both append to one file under flock at once: no line is lost or torn.
    // (virtiofsd 1.14 does not pass locks on: each flock excludes within
    // its own VM only; the lines survive because each append is one
    // O_APPEND write on the host. docs/ARCHITECTURE.md says so.)
    let script = |who: &str, dir: &str| {
        format!(
            "i=0; while [ $i -lt 300 ]; do flock {dir}/log.lock sh -c 'echo {who}-'$i' >> {dir}/log'; i=$((i+1)); done"
        )
    };
    let (sa, sb) = (script("a", "/etc"), script("b", "/data"));
    let a = v.cmd(&["exec", "va", "sh", "-c", &sa]).spawn().unwrap();
    let b = v.cmd(&["exec", "vb", "sh", "-c", &sb]).spawn().unwrap();
    for (who, c) in [("a", a), ("b", b)] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "appends from {who}");
    }
    let log = exec_sh(&v, "va", "cat /etc/log");
    let lines: std::collections::BTreeSet<&str> = log.lines().collect();
    assert_eq!(log.lines().count(), 600, "lines lost or torn");
    assert_eq!(lines.len(), 600, "a line twice");
    for who in ["a", "b"] {
        for i in [0, 150, 299] {
            assert!(lines.contains(format!("{who}-{i}").as_str()));
        }
    }
    // The host has it in the volume's directory, and the volume is in use.
    let mountpoint = inspect_volume(&v, "team")["mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let host_log = std::fs::read_to_string(Path::new(&mountpoint).join("log")).unwrap();
    assert_eq!(host_log.lines().count(), 600);
    let err = fails(&v, &["volume", "rm", "team"]);
    assert!(err.contains("in use") || err.contains("va"), "{err}");
    // Each VM has a virtiofsd of its own for it.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("virtiofsd.*{mountpoint}")])
        .output()
        .unwrap();
    let own = text(&ps.stdout).lines().count();
    assert!(own >= 2, "{own} virtiofsd processes serve {mountpoint}");

    assert_ok(&v.vessel(&["rm", "-f", "va", "vb"]), "rm -f");
    assert_ok(&v.vessel(&["volume", "rm", "team"]), "volume rm after");
    assert!(!Path::new(&mountpoint).exists());
}

#[test]
fn a_full_volume_is_enospc_in_the_container_and_stays_usable() {
    let v = Instance::started();
    let out = v.vessel(&["volume", "create", "--opt", "size=16m", "small"]);
    assert_ok(&out, "volume create size=16m");
    // 32 MiB into a 16 MiB volume: the write fails with ENOSPC in the
    // container; what was there stays readable, the root filesystem
    // writable.
    let o = run_ok(
        &v,
        &[
            "-v",
            "small:/data",
            IMAGE,
            "sh",
            "-c",
            "echo before > /data/keep; \
             dd if=/dev/zero of=/data/big bs=1M count=32 2>/tmp/dd.err; echo \"dd exit $?\"; \
             grep -o 'No space left on device' /tmp/dd.err | head -n1; \
             cat /data/keep; echo other > /tmp/other && cat /tmp/other; sync; echo synced",
        ],
    );
    assert!(o.contains("No space left on device\n"), "{o}");
    assert!(!o.contains("dd exit 0\n"), "{o}");
    assert!(o.ends_with("before\nother\nsynced\n"), "{o}");
    // The next container reads what fit, deletes it and writes again.
    let o = run_ok(
        &v,
        &[
            "-v",
            "small:/data",
            IMAGE,
            "sh",
            "-c",
            "cat /data/keep; echo \"fit $(stat -c %s /data/big)\"; rm /data/big && \
             dd if=/dev/zero of=/data/again bs=1M count=8 2>/dev/null && \
             echo \"again $(stat -c %s /data/again)\"",
        ],
    );
    let fit: u64 = o
        .lines()
        .find_map(|l| l.strip_prefix("fit "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{o}"));
    eprintln!("a 16 MiB volume took {} KiB of the 32 MiB", fit >> 10);
    assert!((8 << 20..16 << 20).contains(&fit), "{o}");
    assert!(
        o.starts_with("before\n") && o.ends_with("again 8388608\n"),
        "{o}"
    );
    let info = inspect_volume(&v, "small");
    assert_eq!(info["size_bytes"], 16u64 << 20);
    assert_ok(&v.vessel(&["volume", "rm", "small"]), "volume rm");
}

#[test]
fn a_full_host_disk_is_an_error_in_the_container_never_a_paused_vm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a small tmpfs VESSEL_HOME needs root to mount");
        return;
    }
    // VESSEL_HOME on a 48 MiB disk; each container writes 80 MiB. What it
    // sees goes to a tmpfs of its own and is printed once the space is
    // back: the container's log is on the full disk too.
    let disk = SmallDisk::new(48);
    let v = disk.v();
    v.load_test_image();
    assert_ok(
        &v.vessel(&["volume", "create", "--opt", "backing=shared", "sh"]),
        "volume create shared",
    );
    assert_ok(
        &v.vessel(&["volume", "create", "blk"]),
        "volume create block",
    );
    // The image's ext4 base is made at its first run: before measuring.
    assert_ok(
        &v.vessel(&["run", "--rm", "--network", "none", IMAGE, "true"]),
        "a first run",
    );
    let before = disk.free();
    let run = |mount: &str, script: &str| {
        let mut cmd = v.cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--tmpfs",
            "/out",
            "-v",
            mount,
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
        let t = std::time::Instant::now();
        let out = output_within(&mut cmd, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("a container filling the host's disk through {mount} hung"));
        eprintln!("{mount}: ended after {:?}", t.elapsed());
        out
    };

    // A shared volume has no size of its own: the host's disk is its
    // limit, and a full one is ENOSPC in the container at once.
    let out = run(
        "sh:/s",
        "dd if=/dev/zero of=/s/big bs=1M count=80 2>/out/err; echo \"dd exit $?\" > /out/log; \
         rm /s/big && echo again > /s/after; cat /out/err /out/log",
    );
    assert_ok(&out, "filling the host's disk through a shared volume");
    let o = text(&out.stdout);
    assert!(o.contains("No space left on device"), "{o}");
    assert!(o.contains("dd exit 1\n"), "{o}");

    // A block volume (16 GiB, sparse) on a full host disk: QEMU reports
    // the failed write to the guest (`werror=report`), which sees an I/O
    // error; QEMU's default would pause the VM and the container would
    // hang.
    let out = run(
        "blk:/data",
        "echo before > /data/keep; sync; \
         dd if=/dev/zero of=/data/big bs=1M count=80 conv=fsync 2>/out/err; \
         echo \"dd exit $?\" > /out/log; rm /data/big; sync; cat /out/err /out/log; exit 3",
    );
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{o}\n{}", text(&out.stderr));
    assert!(o.contains("Input/output error"), "{o}");
    assert!(!o.contains("dd exit 0\n"), "{o}");

    // The space is back (the block volume gives deleted blocks back with
    // discard), and both volumes are usable, with what was written before.
    disk.assert_given_back(before, "the two containers");
    let o = run("sh:/s", "cat /s/after; ls /s");
    assert_eq!(text(&o.stdout), "again\nafter\n");
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "blk:/data",
        IMAGE,
        "sh",
        "-c",
        "cat /data/keep; ls /data; echo new > /data/new && cat /data/new",
    ]);
    assert_ok(&out, "the block volume after the host's disk was full");
    assert_eq!(text(&out.stdout), "before\nkeep\nnew\n");
}

#[test]
fn runs_one_after_another_on_a_block_volume_wait_for_the_last_vm_to_go() {
    // Without --rm the exit is told while the VM still powers off, with
    // the volume's disk: the next start waits for it (it failed with
    // "mounted by another running container" every time before).
    let v = Instance::started();
    for i in 0..3 {
        let out = v.vessel(&[
            "run",
            "--network",
            "none",
            "-v",
            "seq:/d",
            IMAGE,
            "sh",
            "-c",
            &format!("echo {i} >> /d/log"),
        ]);
        assert_ok(&out, &format!("run {i} on the volume"));
    }
    assert_eq!(
        run_ok(&v, &["-v", "seq:/d", IMAGE, "cat", "/d/log"]),
        "0\n1\n2\n"
    );
}
