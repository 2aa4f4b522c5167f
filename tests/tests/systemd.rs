//! systemd integration: the units `vessel system install` writes pass
//! `systemd-analyze verify`; `uninstall` removes them and nothing else;
//! install refuses, writing nothing, where systemd is not the service
//! manager; and the apiserver started by `systemd-socket-activate` serves,
//! on the socket passed to it, the request that woke it.
//!
//! None of these boot a VM. systemd does not need to be PID 1 for them
//! (it is not on this project's machines).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vessel_tests::{assert_ok, bin_dir, text, Instance};

/// Every file and link under `dir`, with its contents or link target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let meta = p.symlink_metadata().unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(p, format!("-> {}", t.display()));
            } else if meta.is_dir() {
                out.insert(p.clone(), "dir".into());
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// The unit files (not the links) written into `dir`.
fn unit_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "socket" || e == "service")
                && !p.symlink_metadata().unwrap().file_type().is_symlink()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn installed_units_verify_and_uninstall_removes_only_them() {
    let v = Instance::new();
    let units = tempfile::tempdir().unwrap();
    let dir = units.path();
    // Somebody else's unit and link in the same directory.
    std::fs::write(
        dir.join("other.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("multi-user.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "../other.service",
        dir.join("multi-user.target.wants/other.service"),
    )
    .unwrap();
    let before = snapshot(dir);

    // --print shows the units and writes nothing.
    let printed = v.vessel(&[
        "system",
        "install",
        "--print",
        "--group",
        "root",
        "--unit-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&printed, "system install --print");
    assert_eq!(snapshot(dir), before, "--print wrote something");
    let printed = text(&printed.stdout);

    let out = v.vessel(&[
        "system",
        "install",
        "--group",
        "root",
        "--unit-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&out, "system install --unit-dir");
    let files = unit_files(dir);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let socket = files
        .iter()
        .find(|p| p.extension().unwrap() == "socket")
        .unwrap();
    let service = files
        .iter()
        .find(|p| p.extension().unwrap() == "service" && !p.ends_with("other.service"))
        .unwrap();
    let socket_text = std::fs::read_to_string(socket).unwrap();
    let service_text = std::fs::read_to_string(service).unwrap();
    // What --print showed is what was written.
    assert!(printed.contains(&socket_text) && printed.contains(&service_text));
    let api_socket = v.path().join("vessel.sock");
    assert!(
        socket_text.contains(&format!("\nListenStream={}\n", api_socket.display()))
            && socket_text.contains("\nSocketGroup=root\nSocketMode=0660\n"),
        "{socket_text}"
    );
    let apiserver = bin_dir().join("vessel-apiserver");
    assert!(
        service_text.contains(&format!(
            "\nExecStart={} serve --home {} ",
            apiserver.display(),
            v.path().display()
        )) && service_text.contains("\nRestart=on-failure\n"),
        "{service_text}"
    );
    // Enabled: the socket by sockets.target, the service at boot.
    let link = |wants: &str, p: &Path| {
        std::fs::read_link(dir.join(wants).join(p.file_name().unwrap())).ok()
    };
    assert_eq!(
        link("sockets.target.wants", socket),
        Some(Path::new("..").join(socket.file_name().unwrap()))
    );
    assert!(link("multi-user.target.wants", service).is_some());

    // systemd's own check: no error, no warning.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(socket)
        .arg(service)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/install-deps.sh installs it)");
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}\n{}{}",
        verify.status,
        text(&verify.stdout),
        text(&verify.stderr)
    );

    // Per-user units (rootless mode), checked by the user manager's rules.
    let user_units = tempfile::tempdir().unwrap();
    let runtime_dir = tempfile::tempdir().unwrap();
    assert_ok(
        &v.vessel(&[
            "system",
            "install",
            "--user",
            "--on-demand",
            "--unit-dir",
            user_units.path().to_str().unwrap(),
        ]),
        "install --user --on-demand",
    );
    let files = unit_files(user_units.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let service_text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        !service_text.contains("WantedBy="),
        "--on-demand: {service_text}"
    );
    assert!(!user_units.path().join("default.target.wants").exists());
    let verify = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .args(&files)
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze --user verify: {}\n{}",
        verify.status,
        text(&verify.stderr)
    );

    // A second install is the same install.
    let again = snapshot(dir);
    assert_ok(
        &v.vessel(&[
            "system",
            "install",
            "--group",
            "root",
            "--unit-dir",
            dir.to_str().unwrap(),
        ]),
        "install again",
    );
    assert_eq!(snapshot(dir), again);

    // Uninstall: exactly what install wrote goes.
    let out = v.vessel(&["system", "uninstall", "--unit-dir", dir.to_str().unwrap()]);
    assert_ok(&out, "system uninstall --unit-dir");
    let mut expected = before.clone();
    // The wants directory install made stays (empty), as systemctl leaves it.
    expected.insert(dir.join("sockets.target.wants"), "dir".into());
    assert_eq!(snapshot(dir), expected, "uninstall: {}", text(&out.stdout));
    let out = v.vessel(&["system", "uninstall", "--unit-dir", dir.to_str().unwrap()]);
    assert_ok(&out, "uninstall again");
    assert!(
        text(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn install_leaves_files_it_did_not_write() {
    let v = Instance::new();
    let units = tempfile::tempdir().unwrap();
    let dir = units.path();
    let name = "vessel-mine";
    std::fs::write(
        dir.join(format!("{name}.service")),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let before = snapshot(dir);
    let out = v.vessel(&[
        "system",
        "install",
        "--name",
        name,
        "--unit-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "install over a foreign unit succeeded"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("was not written by `vessel system install`") && err.contains("--name"),
        "{err}"
    );
    assert_eq!(snapshot(dir), before);
    // Nor does uninstall touch it.
    let out = v.vessel(&[
        "system",
        "uninstall",
        "--name",
        name,
        "--unit-dir",
        dir.to_str().unwrap(),
    ]);
    assert_ok(&out, "uninstall with a foreign unit");
    assert_eq!(snapshot(dir), before);
    // A bad name is refused before anything else.
    let out = v.vessel(&[
        "system",
        "install",
        "--name",
        "a/b",
        "--unit-dir",
        "/nonexistent",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid unit name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn install_where_systemd_is_not_the_service_manager_writes_nothing() {
    if Path::new("/run/systemd/system").exists() {
        eprintln!(
            "SKIPPED: systemd is the service manager here; this test needs a host without it"
        );
        return;
    }
    let mut v = Instance::new();
    // The per-user unit directory of a user whose HOME is a temp dir.
    let user_home = tempfile::tempdir().unwrap();
    v.set_env("HOME", user_home.path());
    v.set_env("XDG_CONFIG_HOME", user_home.path().join(".config"));
    let system_dir = Path::new("/etc/systemd/system");
    let before = snapshot(system_dir);
    for args in [
        vec!["system", "install"],
        vec!["system", "install", "--user"],
        vec!["system", "install", "--on-demand", "--no-start"],
    ] {
        let out = v.vessel(&args);
        assert!(!out.status.success(), "{args:?} succeeded without systemd");
        let err = text(&out.stderr);
        assert!(
            err.contains("systemd is not the service manager")
                && err.contains("nothing was written")
                && err.contains("vessel system start"),
            "{args:?}: {err}"
        );
        assert_eq!(
            snapshot(system_dir),
            before,
            "{args:?} wrote into {system_dir:?}"
        );
        assert!(
            snapshot(user_home.path()).is_empty(),
            "{args:?} wrote into the user's directory: {:?}",
            snapshot(user_home.path())
        );
    }
    // Nothing of the instance either.
    assert!(!v.path().join("vessel.sock").exists());
}

/// The `systemd-socket-activate` process (then the apiserver it became),
/// killed when the test ends.
struct Activator(Child);

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn socket_activated_apiserver_serves_the_request_that_started_it() {
    let v = Instance::new();
    let sock = v.path().join("vessel.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg(bin_dir().join("vessel-apiserver"))
        .args(["serve", "--home"])
        .arg(v.path())
        .env("VESSEL_HOME", v.path())
        .env("VESSEL_KERNEL", vessel_tests::required_env("VESSEL_KERNEL"))
        .env("VESSEL_INITRD", vessel_tests::required_env("VESSEL_INITRD"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(v.path().join("activate.log")).unwrap());
    let activator = Activator(cmd.spawn().expect(
        "systemd-socket-activate (Debian package systemd; scripts/install-deps.sh installs it)",
    ));
    let log = || std::fs::read_to_string(v.path().join("activate.log")).unwrap_or_default();
    assert!(
        v.wait_for(Duration::from_secs(10), || sock.exists()),
        "no socket: {}",
        log()
    );
    let (inode, mode) = {
        let m = std::fs::metadata(&sock).unwrap();
        (m.st_ino(), m.st_mode())
    };
    // Nothing runs yet: the apiserver starts on the first connection.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!v.path().join("apiserver.pid").exists(), "started early");

    // Connect and send the request at once, before anything serves it.
    let mut conn = UnixStream::connect(&sock).unwrap();
    conn.write_all(b"GET /v1/system/info HTTP/1.1\r\nHost: vessel\r\nConnection: close\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "answer: {answer}\nlog: {}",
        log()
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    // The body may be chunked: take the JSON object in it.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let info: vessel_api::types::SystemInfo = serde_json::from_str(json).unwrap();
    // systemd-socket-activate execs the program: same pid.
    assert_eq!(info.apiserver_pid, activator.0.id() as i32);
    assert!(
        info.supervisor.contains("socket-activated"),
        "{}",
        info.supervisor
    );

    // The CLI reaches it on the same socket, which nobody re-bound.
    let status = v.vessel(&["system", "status"]);
    assert_ok(&status, "system status");
    assert!(
        text(&status.stdout).contains("socket-activated"),
        "{}",
        text(&status.stdout)
    );
    assert_ok(&v.vessel(&["ls"]), "ls");
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (m.st_ino(), m.st_mode()),
        (inode, mode),
        "the socket was changed"
    );

    // It stops like any apiserver.
    let out = v.vessel(&["system", "stop"]);
    assert_ok(&out, "system stop");
    let mut activator = activator;
    let status = activator.0.wait().unwrap();
    assert!(status.success(), "apiserver exit: {status}\n{}", log());
}

#[test]
fn a_passed_socket_elsewhere_is_refused_with_the_setting_to_change() {
    let v = Instance::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let sock = elsewhere.path().join("other.sock");
    let log_path = elsewhere.path().join("activate.log");
    let activator = Activator(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&sock)
            .arg(bin_dir().join("vessel-apiserver"))
            .args(["serve", "--home"])
            .arg(v.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("systemd-socket-activate"),
    );
    assert!(v.wait_for(Duration::from_secs(10), || sock.exists()));
    let _conn = UnixStream::connect(&sock).unwrap();
    let mut activator = activator;
    let mut status = None;
    assert!(
        v.wait_for(Duration::from_secs(30), || {
            status = activator.0.try_wait().unwrap();
            status.is_some()
        }),
        "the apiserver kept running on a socket the CLI cannot reach"
    );
    assert!(!status.unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(&format!(
            "set ListenStream={}",
            v.path().join("vessel.sock").display()
        )),
        "{log}"
    );
    // Nothing of an apiserver was started.
    assert!(!v.path().join("apiserver.pid").exists());
}
