//! VM templates end to end: containers start by restoring a saved VM, and
//! no two clones share their secrets, disk, addresses or clock.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// The container's `state.template` (`None`: its VM booted its kernel).
fn template_of(v: &Instance, name: &str) -> Option<String> {
    v.inspect(name)["state"]["template"]
        .as_str()
        .map(str::to_string)
}

fn exec(v: &Instance, name: &str, script: &str) -> String {
    let out = v.vessel(&["exec", name, "sh", "-c", script]);
    assert_ok(&out, &format!("exec {script}"));
    text(&out.stdout).trim().to_string()
}

fn status_json(v: &Instance) -> serde_json::Value {
    let out = v.vessel(&["system", "status", "--format", "json"]);
    assert_ok(&out, "system status");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn clones_of_one_template_share_no_secrets() {
    let v = Instance::started();
    // The first container builds the template, the second restores it too.
    for name in ["clone-a", "clone-b"] {
        let out = v.vessel(&["run", "-d", "--name", name, IMAGE, "sleep", "1000"]);
        assert_ok(&out, &format!("run -d {name}"));
    }
    let (ta, tb) = (template_of(&v, "clone-a"), template_of(&v, "clone-b"));
    assert!(ta.is_some(), "a was restored from a template");
    assert_eq!(ta, tb, "both from the same template");
    let status = status_json(&v);
    assert_eq!(status["templates_enabled"], true);
    let templates = status["templates"].as_array().unwrap();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert_eq!(templates[0]["key"].as_str(), ta.as_deref());
    assert_eq!(templates[0]["nic"], true);

    let probe = "cat /proc/sys/kernel/random/boot_id; \
                 head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                 cat /proc/sys/kernel/random/uuid; \
                 cat /sys/class/net/eth0/address; \
                 ip -4 -o addr show eth0 | awk '{print $4}'; \
                 date +%s";
    let (pa, pb) = (exec(&v, "clone-a", probe), exec(&v, "clone-b", probe));
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (la, lb): (Vec<&str>, Vec<&str>) = (pa.lines().collect(), pb.lines().collect());
    assert_eq!(la.len(), 6, "{pa}");
    assert_eq!(lb.len(), 6, "{pb}");
    for (i, what) in ["boot_id", "urandom bytes", "uuid", "MAC", "IP"]
        .iter()
        .enumerate()
    {
        assert!(!la[i].is_empty(), "{what} of a: {pa}");
        assert_ne!(la[i], lb[i], "the two clones share their {what}");
    }
    assert_ne!(
        la[3], "02:76:ff:ff:ff:fe",
        "the template's MAC was replaced"
    );
    // Each clone's MAC and address are the ones its network gave it.
    for (name, lines) in [("clone-a", &la), ("clone-b", &lb)] {
        let s = v.inspect(name).to_string();
        assert!(
            s.contains(lines[3]),
            "{name}'s MAC {} is not in inspect",
            lines[3]
        );
        let ip = lines[4].split('/').next().unwrap();
        assert!(s.contains(ip), "{name}'s IP {ip} is not in inspect");
    }
    // The clone's clock is the host's, not the template's.
    for lines in [&la, &lb] {
        let t: i64 = lines[5].parse().unwrap();
        assert!((t - host_now).abs() <= 3, "guest time {t}, host {host_now}");
    }
    // They talk to each other over the network.
    let ip_b = lb[4].split('/').next().unwrap();
    exec(
        &v,
        "clone-a",
        &format!("ping -c 1 -W 5 {ip_b} >/dev/null && echo ok"),
    );
    assert_ok(&v.vessel(&["rm", "-f", "clone-a", "clone-b"]), "rm");
}

#[test]
fn a_clone_has_its_own_disk_and_exit_code() {
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "test ! -e /marker && echo one > /marker && cat /marker && df -k / | tail -1 && exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("one\n"),
        "{}",
        text(&out.stdout)
    );
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "disk-c",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ok(&out, "run -d");
    assert!(template_of(&v, "disk-c").is_some());
    // Its own root filesystem, the image's, at its full size.
    assert_eq!(
        exec(&v, "disk-c", "test -e /marker && echo yes || echo no"),
        "no"
    );
    exec(&v, "disk-c", "echo two > /srv-marker && sync");
    let size_kib: u64 = exec(&v, "disk-c", "df -k / | tail -1 | awk '{print $2}'")
        .parse()
        .unwrap();
    assert!(
        size_kib > 1024,
        "the root disk is the image's, not the placeholder: {size_kib} KiB"
    );
    // No network device with --network none.
    let nets = exec(&v, "disk-c", "ls /sys/class/net");
    assert!(!nets.contains("eth"), "{nets}");
    assert_ok(&v.vessel(&["rm", "-f", "disk-c"]), "rm");
}

#[test]
fn templates_can_be_turned_off() {
    let mut v = Instance::new();
    v.set_env("VESSEL_TEMPLATES", "0");
    v.start();
    v.load_test_image();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "off",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ok(&out, "run -d");
    assert_eq!(template_of(&v, "off"), None, "booted its kernel");
    let status = status_json(&v);
    assert_eq!(status["templates_enabled"], false);
    assert!(status["templates"].as_array().unwrap().is_empty());
    let out = v.vessel(&["system", "status"]);
    assert!(
        text(&out.stdout).contains("templates:    off"),
        "{}",
        text(&out.stdout)
    );
    assert_ok(&v.vessel(&["rm", "-f", "off"]), "rm");

    // And per container.
    let v = Instance::started();
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "cold",
        "--no-template",
        "--network",
        "none",
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ok(&out, "run -d --no-template");
    assert_eq!(template_of(&v, "cold"), None);
    assert!(status_json(&v)["templates"].as_array().unwrap().is_empty());
    // A bind mount cannot be restored (virtio-fs is not migratable): the
    // VM boots its kernel, and the mount works.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "shared").unwrap();
    let bind = format!("{}:/mnt", dir.path().display());
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "bound",
        "--network",
        "none",
        "-v",
        &bind,
        IMAGE,
        "sleep",
        "1000",
    ]);
    assert_ok(&out, "run -d -v");
    assert_eq!(template_of(&v, "bound"), None);
    assert_eq!(exec(&v, "bound", "cat /mnt/f"), "shared");
    assert_ok(&v.vessel(&["rm", "-f", "cold", "bound"]), "rm");
}

#[test]
fn a_template_is_rebuilt_when_an_input_changes() {
    // A copy of the initramfs this instance alone uses.
    let initrd_dir = tempfile::tempdir().unwrap();
    let initrd = initrd_dir.path().join("initramfs.img");
    std::fs::copy(vessel_tests::required_env("VESSEL_INITRD"), &initrd).unwrap();
    let mut v = Instance::new();
    v.set_env("VESSEL_INITRD", &initrd);
    v.start();
    v.load_test_image();
    let run = |v: &Instance| {
        let out = v.vessel(&["run", "--rm", "--network", "none", IMAGE, "true"]);
        assert_ok(&out, "run");
    };
    run(&v);
    let keys = |v: &Instance| -> Vec<String> {
        status_json(v)["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_string())
            .collect()
    };
    let first = keys(&v);
    assert_eq!(first.len(), 1);
    // A rebuilt initramfs: same bytes here, but a new file.
    std::thread::sleep(Duration::from_millis(20));
    let copy = initrd_dir.path().join("new.img");
    std::fs::copy(&initrd, &copy).unwrap();
    std::fs::rename(&copy, &initrd).unwrap();
    run(&v);
    let second = keys(&v);
    assert_eq!(second.len(), 1, "the outdated template is gone: {second:?}");
    assert_ne!(first, second, "a new template for the new initramfs");
}

/// Several idle 128 MiB clones at once (`VESSEL_DENSITY`, default 8; the
/// 50 of the issue run in `bench/templates.py --density 50`): every one
/// answers `exec`, and over the network from the host (an HTTP request to
/// its address).
#[test]
fn idle_clones_at_once_all_answer() {
    use std::io::{Read, Write};
    let n: usize = std::env::var("VESSEL_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let v = Instance::started();
    let names: Vec<String> = (0..n).map(|i| format!("idle-{i}")).collect();
    let serve = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w";
    for name in &names {
        let out = v.vessel(&[
            "run", "-d", "--name", name, "--memory", "128m", IMAGE, "sh", "-c", serve,
        ]);
        assert_ok(&out, &format!("run -d {name}"));
    }
    for name in &names {
        assert!(template_of(&v, name).is_some(), "{name} from a template");
        let hostname = exec(&v, name, "hostname");
        let ip = exec(&v, name, "ip -4 -o addr show eth0 | awk '{print $4}'");
        let ip = ip.split('/').next().unwrap().to_string();
        let addr: std::net::SocketAddr = format!("{ip}:80").parse().unwrap();
        let mut body = String::new();
        let answered = v.wait_for(Duration::from_secs(10), || {
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            body.clear();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() && s.read_to_string(&mut body).is_ok()
        });
        assert!(answered, "{name} ({ip}) answers the host");
        assert!(body.ends_with(&format!("{hostname}\n")), "{name}: {body}");
    }
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    assert_ok(&v.vessel(&args), "rm");
}
