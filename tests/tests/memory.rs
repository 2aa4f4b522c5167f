//! Memory a container frees goes back to the host (issue 12, part 3): the
//! guest reports its free pages through virtio-balloon's free page
//! reporting, and QEMU drops them from its guest memory (a hole punched in
//! the memfd). `--memory` stays what the guest sees.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

const MIB: u64 = 1024;

/// The memory the VMM process holds (KiB): its anonymous memory, the guest
/// memory it maps (shmem) and its mapped files.
fn vmm_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["RssAnon:", "RssShmem:", "RssFile:"]
        .iter()
        .map(|field| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        })
        .sum()
}

/// `MemTotal` of the guest, in KiB.
fn guest_mem_total(v: &Instance, c: &str) -> u64 {
    let out = v.vessel(&["exec", c, "grep", "MemTotal:", "/proc/meminfo"]);
    assert_ok(&out, "exec grep MemTotal");
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {}", text(&out.stdout)))
}

/// Wait up to `limit` for `f` to hold; how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn memory_a_container_frees_goes_back_to_the_host() {
    let v = Instance::started();
    let c = v.run_idle(
        "mem",
        &["--memory", "512m", "--tmpfs", "/fill:size=460m"],
        IMAGE,
    );
    let qemu = v.inspect(&c)["state"]["vmm_pid"].as_i64().expect("vmm_pid") as i32;
    let total = guest_mem_total(&v, &c);
    // The kernel keeps a few MiB for itself; the ceiling is the guest's.
    assert!(
        (480 * MIB..=512 * MIB).contains(&total),
        "MemTotal {total} KiB for --memory 512m"
    );

    let before = vmm_kib(qemu);
    let out = v.vessel(&[
        "exec",
        &c,
        "dd",
        "if=/dev/zero",
        "of=/fill/x",
        "bs=1M",
        "count=400",
    ]);
    assert_ok(&out, "exec dd 400 MiB into a tmpfs");
    let full = vmm_kib(qemu);
    assert!(
        full >= before + 350 * MIB,
        "the VMM holds {} MiB after the guest filled 400 MiB (before: {} MiB): \
         the measure does not see guest memory",
        full / MIB,
        before / MIB
    );

    let out = v.vessel(&["exec", &c, "rm", "/fill/x"]);
    assert_ok(&out, "exec rm");
    let mut now = full;
    let took = within(Duration::from_secs(10), || {
        now = vmm_kib(qemu);
        now + 300 * MIB <= full
    });
    assert!(
        took.is_some(),
        "the VMM still holds {} MiB 10 s after the guest freed 400 MiB (full: {} MiB, \
         before: {} MiB)",
        now / MIB,
        full / MIB,
        before / MIB
    );
    eprintln!(
        "VMM memory: {} MiB idle, {} MiB with 400 MiB filled, {} MiB {:.1} s after the free",
        before / MIB,
        full / MIB,
        now / MIB,
        took.unwrap().as_secs_f64()
    );
    // What the guest sees does not shrink.
    assert_eq!(guest_mem_total(&v, &c), total);
    // And the guest can take the memory again.
    let out = v.vessel(&[
        "exec",
        &c,
        "dd",
        "if=/dev/zero",
        "of=/fill/y",
        "bs=1M",
        "count=400",
    ]);
    assert_ok(&out, "exec dd again after the memory went back");
    assert!(vmm_kib(qemu) >= now + 300 * MIB);
    assert_ok(&v.vessel(&["rm", "-f", &c]), "rm -f");
}
