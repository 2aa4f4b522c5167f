//! The confined VMM (issue 11, part 4) with real VMs: each container's QEMU
//! (the VM's only process outside it) runs as a user of its own, with seccomp and no
//! new privileges, in a mount namespace holding only that VM's files, and
//! under a memory and pids ceiling; a forbidden system call kills only that
//! VM, which is recorded with the reason.
//!
//! Run as root (the per-VM user and the mount namespace need it), as
//! scripts/test.sh does.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vessel_api::confine::Ceilings;
use vessel_tests::{assert_ok, text, Instance, IMAGE};

fn inspect(v: &Instance, c: &str) -> serde_json::Value {
    v.inspect(c)
}

fn run_d(v: &Instance, name: &str) -> String {
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ok(&out, "run -d");
    text(&out.stdout).trim().to_string()
}

/// (QEMU pid, VM uid) of a running container.
fn vmm(v: &Instance, c: &str) -> (i32, u32) {
    let i = inspect(v, c);
    let pid = i["state"]["vmm_pid"].as_i64().expect("vmm_pid") as i32;
    let uid = i["state"]["vmm_uid"].as_u64().expect("vmm_uid in inspect") as u32;
    (pid, uid)
}

/// `Name:\tvalue` lines of `/proc/PID/status`.
fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn pids_with(needle: &str, program: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && cmd.contains(program) {
            out.push(pid);
        }
    }
    out
}

/// Run `cat PATH` as `uid` inside the mount namespace of process `pid`,
/// as a process of that VM would: `Ok(contents)` or `Err(stderr)`.
fn cat_as_vm(pid: i32, uid: u32, path: &Path) -> Result<String, String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    let nsfd = std::os::fd::AsRawFd::as_raw_fd(&ns);
    let mut cmd = Command::new("/usr/bin/cat");
    cmd.arg(path);
    // SAFETY: only raw system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(nsfd, libc::CLONE_NEWNS) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// The cgroup directories vessel makes for container `id` on this host.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    match Ceilings::detect(Path::new("/sys/fs/cgroup")) {
        Ceilings::CgroupV2(root) => vec![root.join("vessel").join(id)],
        Ceilings::CgroupV1 { memory, pids } => {
            vec![memory.join("vessel").join(id), pids.join("vessel").join(id)]
        }
        Ceilings::Rlimits => vec![],
    }
}

fn system_status(v: &Instance) -> String {
    let out = v.vessel(&["system", "status"]);
    assert_ok(&out, "system status");
    text(&out.stdout)
}

#[test]
fn each_vmm_runs_as_its_own_user_and_sees_only_its_own_files() {
    let v = Instance::started();
    // Confinement is on by default.
    let status = system_status(&v);
    assert!(
        status.contains("vmm jail:     seccomp, per-VM user, mount namespace"),
        "{status}"
    );
    let a = run_d(&v, "jail-a");
    let b = run_d(&v, "jail-b");
    let home = vessel_api::paths::Home::new(v.path());
    let (qa, ua) = vmm(&v, &a);
    let (qb, ub) = vmm(&v, &b);
    assert_ne!(ua, ub, "two VMs, two users");
    // QEMU is the only process of a VM outside it: the agent's port is
    // served by the runtime itself.
    for dir in [home.run_dir(&a), home.run_dir(&b)] {
        let needle = dir.to_string_lossy().into_owned();
        assert!(pids_with(&needle, "vhost-device-vsock").is_empty());
    }
    for (pid, uid) in [(qa, ua), (qb, ub)] {
        assert_ne!(uid, 0);
        assert_eq!(
            status_field(pid, "Uid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}")
        );
        assert_eq!(
            status_field(pid, "Gid"),
            format!("{uid}\t{uid}\t{uid}\t{uid}")
        );
        assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, "Seccomp"), "2", "QEMU's -sandbox filter");
    }

    let overlay_a = home.container_dir(&a).join("overlay.qcow2");
    let overlay_b = home.container_dir(&b).join("overlay.qcow2");
    for (pid, own, other, other_id) in [
        (qa, &overlay_a, &overlay_b, &b),
        (qb, &overlay_b, &overlay_a, &a),
    ] {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
        assert!(!inside(Path::new("/etc/shadow")).exists());
        assert!(!inside(other).exists(), "{pid} sees {}", other.display());
        assert!(!inside(&home.container_dir(other_id)).exists());
        assert!(!inside(&home.container_dir(other_id).join("config.json")).exists());
        assert!(
            !inside(&v.path().join("images")).exists(),
            "the image store"
        );
        assert!(
            !inside(&v.path().join("vessel.sock")).exists(),
            "the API socket"
        );
        assert!(inside(own).exists(), "QEMU sees its own disk");
    }
    // Opening them as the VM would: as its user, in its mount namespace.
    let own_log = home.container_dir(&a).join("boot.log");
    cat_as_vm(qa, ua, &own_log).expect("the helper can read A's own console log");
    for p in [
        PathBuf::from("/etc/shadow"),
        overlay_b.clone(),
        home.container_dir(&b).join("config.json"),
        home.container_dir(&a).join("config.json"),
    ] {
        let r = cat_as_vm(qa, ua, &p);
        assert!(r.is_err(), "A's VMM could open {}", p.display());
    }
    // Even B's disk through A's view of the host is not B's user's.
    assert!(cat_as_vm(qa, ua, &overlay_a).is_ok());
    assert!(cat_as_vm(qb, ub, &overlay_a).is_err());
    assert_ok(&v.vessel(&["rm", "-f", &a, &b]), "rm");
}

/// Ask QEMU, over its QMP socket, for a bridge network device: QEMU forks
/// its bridge helper, which its seccomp filter forbids (`spawn=deny`).
/// (`migrate` to `exec:` would fork too.)
fn qmp_forbidden_fork(qmp: &Path) {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(qmp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("QMP"), "{line}");
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    writeln!(
        w,
        r#"{{"execute":"netdev_add","arguments":{{"type":"bridge","id":"x","br":"br0","helper":"/usr/bin/true"}}}}"#
    )
    .unwrap();
    line.clear();
    // QEMU dies instead of answering.
    let _ = r.read_line(&mut line);
    assert!(!line.contains("\"return\""), "QEMU answered: {line}");
}

#[test]
fn a_forbidden_system_call_kills_only_that_vm_and_says_why() {
    let v = Instance::started();
    let a = run_d(&v, "sys-a");
    let b = run_d(&v, "sys-b");
    let home = vessel_api::paths::Home::new(v.path());
    let (qa, _) = vmm(&v, &a);
    let run_a = home.run_dir(&a);
    assert!(cgroup_dirs(&a).iter().all(|d| d.is_dir()));
    qmp_forbidden_fork(&run_a.join("qmp.sock"));

    assert!(
        v.wait_for(Duration::from_secs(20), || inspect(&v, &a)["state"]
            ["status"]
            == "exited"),
        "A is recorded as exited"
    );
    let state = inspect(&v, &a)["state"].clone();
    assert_eq!(state["exit_code"], 159, "128 + SIGSYS: {state}");
    let error = state["error"].as_str().unwrap_or_default();
    assert!(error.contains("seccomp"), "{error}");
    let ls = text(&v.vessel(&["ls", "-a"]).stdout);
    assert!(ls.contains("Exited (159, seccomp)"), "{ls}");
    assert_eq!(state["killed_by"], "seccomp");

    // B runs on.
    assert_eq!(inspect(&v, &b)["state"]["status"], "running");
    let out = v.vessel(&["exec", &b, "echo", "still here"]);
    assert_ok(&out, "exec into B");
    assert_eq!(text(&out.stdout).trim(), "still here");

    // Nothing of A is left.
    assert!(
        v.wait_for(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{qa}")).exists()
                && cgroup_dirs(&a).iter().all(|d| !d.exists())
        }),
        "A's QEMU or cgroup left behind"
    );
    assert_ok(&v.vessel(&["rm", "-f", &b]), "rm");
    assert!(v.wait_for(Duration::from_secs(10), || cgroup_dirs(&b)
        .iter()
        .all(|d| !d.exists())));
}

#[test]
fn ceilings_are_a_cgroup_where_the_host_has_one_and_rlimits_otherwise() {
    let v = Instance::started();
    let host = Ceilings::detect(Path::new("/sys/fs/cgroup"));
    let status = system_status(&v);
    assert!(
        status.contains(&format!("ceilings: {}", host.name())),
        "{status}"
    );
    let a = run_d(&v, "ceil-a");
    let config = &inspect(&v, &a)["config"];
    let mem = config["memory_mib"].as_u64().unwrap();
    // Guest RAM + the translation cache (TCG: an eighth of the guest's RAM,
    // 16 to 256 MiB) + the VMM's own overhead.
    let tb = if config["accel"] == "kvm" {
        0
    } else {
        (mem / 8).clamp(16, 256)
    };
    let want = (mem + tb + 256) * 1024 * 1024;
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    match &host {
        Ceilings::CgroupV1 { memory, pids } => {
            let m = memory.join("vessel").join(&a);
            assert_eq!(read(m.join("memory.limit_in_bytes")), want.to_string());
            assert_eq!(read(pids.join("vessel").join(&a).join("pids.max")), "512");
            let (qemu, _) = vmm(&v, &a);
            assert!(read(m.join("cgroup.procs"))
                .lines()
                .any(|l| l == qemu.to_string()));
        }
        Ceilings::CgroupV2(root) => {
            let d = root.join("vessel").join(&a);
            assert_eq!(read(d.join("memory.max")), want.to_string());
            assert_eq!(read(d.join("pids.max")), "512");
        }
        Ceilings::Rlimits => {}
    }
    assert_ok(&v.vessel(&["rm", "-f", &a]), "rm");
    assert!(
        v.wait_for(Duration::from_secs(10), || cgroup_dirs(&a)
            .iter()
            .all(|d| !d.exists())),
        "the cgroup is removed with the VM"
    );
    drop(v);

    // No usable cgroup (the root pointed at an empty directory): rlimits.
    let empty = tempfile::tempdir().unwrap();
    let mut v = Instance::new();
    v.set_env("VESSEL_CGROUP_ROOT", empty.path());
    v.start();
    v.load_test_image();
    let status = system_status(&v);
    assert!(status.contains("ceilings: rlimits"), "{status}");
    let a = run_d(&v, "ceil-r");
    let (qemu, _) = vmm(&v, &a);
    let limits = std::fs::read_to_string(format!("/proc/{qemu}/limits")).unwrap();
    let line = |what: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("Max processes"), "Max processes 512 512 processes");
    assert_eq!(line("Max open files"), "Max open files 4096 4096 files");
    assert!(cgroup_dirs(&a).iter().all(|d| !d.exists()));
    assert_ok(&v.vessel(&["rm", "-f", &a]), "rm");
}

#[test]
fn confinement_can_be_turned_off_for_debugging() {
    let mut v = Instance::new();
    v.set_env("VESSEL_VMM_CONFINE", "0");
    // A VM that boots: a template's clone keeps the seccomp filter of its
    // memory file's supervisor (crates/runtime/src/memfile.rs), which
    // protects the template, not the host, even with the jail off.
    v.set_env("VESSEL_TEMPLATES", "0");
    v.start();
    v.load_test_image();
    let status = system_status(&v);
    assert!(status.contains("vmm jail:     off"), "{status}");
    let a = run_d(&v, "free-a");
    let i = inspect(&v, &a);
    assert!(i["state"]["vmm_uid"].is_null(), "{i}");
    let qemu = i["state"]["vmm_pid"].as_i64().unwrap() as i32;
    assert_eq!(status_field(qemu, "Uid").split('\t').next(), Some("0"));
    assert_eq!(status_field(qemu, "Seccomp"), "0");
    assert!(cgroup_dirs(&a).iter().all(|d| !d.exists()));
    assert_ok(&v.vessel(&["rm", "-f", &a]), "rm");
}

#[test]
fn a_killed_runtime_helper_leaves_no_cgroup() {
    let v = Instance::started();
    let a = run_d(&v, "orphan-a");
    let dirs = cgroup_dirs(&a);
    assert!(dirs.iter().all(|d| d.is_dir()));
    let runtime = inspect(&v, &a)["state"]["runtime_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(runtime, libc::SIGKILL) }, 0);
    assert!(
        v.wait_for(Duration::from_secs(20), || {
            inspect(&v, &a)["state"]["status"] == "exited" && dirs.iter().all(|d| !d.exists())
        }),
        "the apiserver finds the runtime gone and removes the VM's cgroup"
    );
    assert_ok(&v.vessel(&["rm", "-f", &a]), "rm");
}

#[test]
fn a_vm_over_its_memory_ceiling_is_killed_alone_and_recorded_as_oom() {
    if Ceilings::detect(Path::new("/sys/fs/cgroup")) == Ceilings::Rlimits {
        eprintln!("no usable cgroup on this host: no memory ceiling to test");
        return;
    }
    let mut v = Instance::new();
    // A ceiling below the guest's RAM, so filling the guest's memory
    // crosses it.
    v.set_env("VESSEL_VMM_MEMORY_CEILING_MIB", "200");
    v.start();
    v.load_test_image();
    let out = v.vessel(&[
        "run",
        "--name",
        "oom-a",
        "--network",
        "none",
        // 512 MiB: the guest's /dev/shm (half its RAM) holds the 230 MiB.
        // A clone's untouched memory is the template's page cache, not
        // the VM's, so only what the guest writes counts.
        "--memory",
        "512m",
        IMAGE,
        "sh",
        "-c",
        "echo booted; dd if=/dev/zero of=/dev/shm/fill bs=1M count=230; echo filled",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("booted"));
    assert!(!text(&out.stdout).contains("filled"));
    let state = inspect(&v, "oom-a")["state"].clone();
    assert_eq!(state["exit_code"], 137);
    assert_eq!(state["killed_by"], "OOM");
    assert!(
        state["error"]
            .as_str()
            .unwrap_or_default()
            .contains("memory ceiling"),
        "{state}"
    );
    let ls = text(&v.vessel(&["ls", "-a"]).stdout);
    assert!(ls.contains("Exited (137, OOM)"), "{ls}");
    let id = inspect(&v, "oom-a")["config"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(v.wait_for(Duration::from_secs(10), || cgroup_dirs(&id)
        .iter()
        .all(|d| !d.exists())));
}
