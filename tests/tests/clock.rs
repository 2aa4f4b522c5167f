//! The guest's wall clock is the host's: at the process's first instruction,
//! and after minutes of a busy guest, across a frozen VMM.
//!
//! The container (tests/fixtures/clockprobe.c) reads its clock, asks a time
//! server on the host for the host's clock over the network, and reads its
//! clock again: the host's answer must fall between the two readings, give
//! or take [`TOLERANCE_NS`]. `VESSEL_CLOCK_SECS` makes the busy run longer
//! (bench/clock.sh runs it for half an hour).
//!
//! Before the fix the guest booted at 1970 (no RTC), and under emulation
//! one boot in three fell back to the jiffies clock and lagged.

#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vessel_tests::{assert_ok, text, Instance};

/// How far the guest's clock may be from the host's.
const TOLERANCE_NS: i64 = 5_000_000;

fn host_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Answers every datagram with the host's `CLOCK_REALTIME` in ns.
struct TimeServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl TimeServer {
    fn start() -> Self {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(host_ns().to_string().as_bytes(), peer);
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for TimeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The image `localhost/clockprobe:latest`: tests/fixtures/clockprobe.c,
/// built static, alone in its root filesystem.
fn import_probe(v: &Instance) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/clockprobe\n").unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clockprobe.c");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(root.join("clockprobe"))
        .arg(&src)
        .output()
        .expect("gcc (build-essential)");
    assert_ok(&out, "gcc -static clockprobe.c");
    let tar = dir.path().join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert_ok(&out, "tar");
    let image = "localhost/clockprobe:latest";
    assert_ok(
        &v.vessel(&["image", "import", tar.to_str().unwrap(), image]),
        "image import",
    );
    image
}

struct Samples {
    first: i64,
    samples: Vec<(i64, i64, i64)>,
    synced: bool,
}

fn parse(out: &str) -> Samples {
    let mut first = None;
    let mut samples = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["first", t] => first = t.parse().ok(),
            ["clocksource", cs] => eprintln!("guest clocksource: {cs}"),
            ["sample", a, h, b] => {
                let n = |s: &str| {
                    s.parse::<i64>()
                        .unwrap_or_else(|_| panic!("bad sample {line:?}"))
                };
                samples.push((n(a), n(h), n(b)));
            }
            _ => {}
        }
    }
    Samples {
        first: first.unwrap_or_else(|| panic!("no first reading in {out}")),
        samples,
        synced: out.lines().any(|l| l == "synced"),
    }
}

/// How far outside the guest's window `[a, b]` the host's reading `h` is
/// (0 inside it).
fn miss(a: i64, h: i64, b: i64) -> i64 {
    if h < a {
        a - h
    } else if h > b {
        h - b
    } else {
        0
    }
}

fn check(s: &Samples, before_run: i64) {
    assert!(
        s.first >= before_run - TOLERANCE_NS,
        "the process's first reading {} is before `vessel run` began ({before_run}): \
         the guest did not start with the host's time",
        s.first
    );
    assert!(s.samples.len() >= 3, "too few samples");
    let mut worst = 0;
    for &(a, h, b) in &s.samples {
        let m = miss(a, h, b);
        worst = worst.max(m);
        assert!(
            m <= TOLERANCE_NS,
            "host time {h} is {:.3} ms outside the guest's [{a}, {b}] (window {:.3} ms)",
            m as f64 / 1e6,
            (b - a) as f64 / 1e6
        );
    }
    let mut windows: Vec<i64> = s.samples.iter().map(|(a, _, b)| b - a).collect();
    windows.sort_unstable();
    // The host's reading against the middle of the guest's window.
    let worst_mid = s
        .samples
        .iter()
        .map(|&(a, h, b)| (h - (a + b) / 2).abs())
        .max()
        .unwrap_or(0);
    // The same among the samples whose window is at most 5 ms (the others
    // waited for a CPU between the readings).
    let tight: Vec<i64> = s
        .samples
        .iter()
        .filter(|(a, _, b)| b - a <= 5_000_000)
        .map(|&(a, h, b)| (h - (a + b) / 2).abs())
        .collect();
    eprintln!(
        "{} samples; host reading outside the guest's window by at most {:.3} ms; \
         from its middle by at most {:.3} ms ({:.3} ms over the {} samples with a window \
         of at most 5 ms); window median {:.3} ms, widest {:.3} ms",
        s.samples.len(),
        worst as f64 / 1e6,
        worst_mid as f64 / 1e6,
        tight.iter().max().copied().unwrap_or(0) as f64 / 1e6,
        tight.len(),
        windows[windows.len() / 2] as f64 / 1e6,
        windows[windows.len() - 1] as f64 / 1e6
    );
    assert!(
        s.synced,
        "the guest kernel does not say its clock is synchronized"
    );
}

#[test]
fn the_guest_starts_with_the_hosts_time() {
    let v = Instance::started();
    let image = import_probe(&v);
    let server = TimeServer::start();
    let before = host_ns();
    let port = server.port.to_string();
    let out = v.vessel(&["run", "--rm", image, "/clockprobe", &port, "0", "0"]);
    assert_ok(&out, "run");
    let s = parse(&text(&out.stdout));
    check(&s, before);
    assert!(
        s.first <= s.samples[0].1,
        "the first reading is after the host's first answer"
    );
}

/// The QEMU process of this instance's one running container.
fn qemu_pid(v: &Instance) -> Option<i32> {
    let home = v.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("qemu-system") || cmd.contains("/qemu-system"))
            .then_some(())
            .filter(|_| cmd.contains(&home))
            .map(|_| pid)
    })
}

#[test]
fn a_busy_guest_stays_in_step_also_after_its_vmm_was_frozen() {
    let secs: u64 = std::env::var("VESSEL_CLOCK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let v = Instance::started();
    let image = import_probe(&v);
    let server = TimeServer::start();
    let before = host_ns();
    let name = "clock";
    let (port, duration) = (server.port.to_string(), secs.to_string());
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        name,
        image,
        "/clockprobe",
        &port,
        &duration,
        "2",
    ]);
    assert_ok(&out, "run -d");
    // Freeze the whole VMM for 3 s a third of the way in (a stopped VM, a
    // host that could not schedule it): the guest's clock must catch up.
    std::thread::sleep(Duration::from_secs(secs / 3 + 5));
    let pid = qemu_pid(&v).expect("the container's QEMU");
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = v.vessel(&["wait", name]);
    assert_ok(&out, "wait");
    let logs = v.vessel(&["logs", name]);
    assert_ok(&logs, "logs");
    let s = parse(&text(&logs.stdout));
    check(&s, before);
    assert!(
        s.samples.len() as u64 >= secs / 10,
        "{} samples in {secs} s",
        s.samples.len()
    );
}
