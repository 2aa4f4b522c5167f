//! `--tmpfs`, `--mount type=tmpfs` and `--read-only`, checked inside the VM
//! for what Docker does, and against the same busybox under podman with
//! runc on this host (podman's `--read-only-tmpfs=false`: Docker adds no
//! tmpfs of its own). Podman 4.3 parts from Docker on a tmpfs's own
//! options (it leaves out `noexec` and copies the mode of the image's
//! directory), so those lines are checked against Docker's documented
//! defaults only: `noexec,nosuid,nodev` and mode 1777.

#![allow(clippy::unwrap_used)]

use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// What the flags below should give, one fact a line.
const SCRIPT: &str = r#"
touch /x 2>/dev/null; echo "write root: $?"
touch /x 2>&1 | grep -o 'Read-only file system' | head -n1
echo hi > /tmp/f && echo "write tmp: $(cat /tmp/f)"
for m in /tmp /run /scratch; do
  o=$(grep " $m " /proc/mounts | cut -d' ' -f3,4)
  t=${o%% *}; f=",${o#* },"
  line="$m $t"
  for flag in ro noexec nosuid nodev; do
    case $f in *,$flag,*) line="$line $flag";; esac
  done
  echo "$line mode $(stat -c %a $m)"
done
dd if=/dev/zero of=/run/big bs=64k count=64 2>&1 | grep -o 'No space left on device' | head -n1
echo "run holds $(($(stat -c %s /run/big) / 1024)) KiB"
cp /bin/busybox /tmp/true; /tmp/true 2>/dev/null; echo "exec on noexec tmp: $?"
cp /bin/busybox /run/true; /run/true; echo "exec on exec run: $?"
touch /scratch/x 2>/dev/null; echo "write ro tmpfs: $?"
echo ok > /dev/shm/s && echo "write shm: $(cat /dev/shm/s)"
"#;

const FLAGS: [&str; 8] = [
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/run:size=1m,mode=700,exec",
    "--mount",
    "type=tmpfs,destination=/scratch,ro=true",
    "--network=none",
];

fn under_runc(script: &str) -> String {
    let mut flags = vec!["--read-only-tmpfs=false"];
    flags.extend(FLAGS);
    vessel_tests::busybox_under_runc(
        &flags,
        &[
            "sh", "grep", "cut", "stat", "dd", "cp", "touch", "cat", "echo", "head", "true",
        ],
        script,
    )
}

#[test]
fn read_only_root_with_tmpfs_mounts_behaves_as_under_runc() {
    let v = Instance::started();
    let mut args = vec!["run", "--rm"];
    args.extend(FLAGS);
    args.extend([IMAGE, "sh", "-c", SCRIPT]);
    let out = v.vessel(&args);
    assert_ok(&out, "vessel run --read-only --tmpfs");
    let ours = text(&out.stdout);
    // What Docker's flags promise, spelled out (so a change in both
    // runtimes still fails here).
    for want in [
        "write root: 1",
        "Read-only file system",
        "write tmp: hi",
        "/tmp tmpfs noexec nosuid nodev mode 1777",
        "/run tmpfs nosuid nodev mode 700",
        "/scratch tmpfs ro noexec nosuid nodev mode 1777",
        "No space left on device",
        "run holds 1024 KiB",
        "exec on noexec tmp: 126",
        "exec on exec run: 0",
        "write ro tmpfs: 1",
        "write shm: ok",
    ] {
        assert!(ours.contains(want), "missing {want:?} in:\n{ours}");
    }
    let theirs = under_runc(SCRIPT);
    let common = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with('/') && !l.starts_with("exec on noexec"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(
        common(&ours),
        common(&theirs),
        "vessel and podman+runc differ"
    );
}

#[test]
fn bad_tmpfs_and_mount_flags_are_refused_before_anything_is_made() {
    let v = Instance::started();
    let before = v.container_dirs();
    for (args, want) in [
        (vec!["--tmpfs", "/"], "root"),
        (vec!["--tmpfs", "tmp"], "absolute"),
        (vec!["--tmpfs", "/t:size=lots"], "invalid memory size"),
        (vec!["--tmpfs", "/t:uid=5"], "unknown tmpfs option"),
        (
            vec!["--tmpfs", "/t", "--tmpfs", "/t/"],
            "duplicate mount target",
        ),
        (
            vec!["--mount", "type=tmpfs,target=/t,colour=red"],
            "unknown option",
        ),
        (vec!["--mount", "type=nfs,target=/t"], "unknown type"),
        (vec!["--mount", "type=tmpfs"], "target is required"),
        (vec!["-v", "/a:/b:rx"], "unknown option"),
        (vec!["-v", "my/vol:/data"], "invalid volume name"),
        (vec!["-v", "/a:/b/../c"], "'..'"),
    ] {
        let mut a = vec!["run", "--rm"];
        a.extend(&args);
        a.extend([IMAGE, "true"]);
        let out = v.vessel(&a);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
    assert_eq!(v.container_dirs(), before, "a refused run left a container");
}

#[test]
fn a_tmpfs_over_image_content_hides_it_and_leaves_nothing_on_the_disk() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "--name",
        "t1",
        "--tmpfs",
        "/etc",
        IMAGE,
        "sh",
        "-c",
        "ls /etc | wc -l; echo secret > /etc/only-in-memory; ls /etc",
    ]);
    assert_ok(&out, "run --tmpfs /etc");
    let o = text(&out.stdout);
    assert!(o.starts_with("0\n"), "the image's /etc showed through: {o}");
    assert!(o.contains("only-in-memory"), "{o}");
    // The next boot of the same container: the image's /etc is back, the
    // file written to the tmpfs is gone.
    let out = v.vessel(&["start", "-a", "t1"]);
    assert_ok(&out, "start -a t1");
    let o = text(&out.stdout);
    assert!(o.starts_with("0\n"), "{o}");
    let out = v.vessel(&["cp", "t1:/etc/passwd", "-"]);
    assert_ok(&out, "cp of the image's /etc/passwd");
    let out = v.vessel(&["cp", "t1:/etc/only-in-memory", "-"]);
    assert!(!out.status.success(), "the tmpfs file reached the disk");
    assert_ok(&v.vessel(&["rm", "-f", "t1"]), "rm");
}
