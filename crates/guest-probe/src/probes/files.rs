//! /proc, /sys and /dev entries a container sees.
//!
//! Two kinds of keys, both `path:/...`:
//! - a fixed list of entries programs are known to read, each reported
//!   `yes` or `no`;
//! - every entry found while walking these trees (only `yes` lines: an
//!   entry the guest lacks shows up as a host `yes` with no guest line):
//!   `/proc` (not the numbered process directories), `/proc/self`,
//!   `/proc/self/{ns,attr,net}`, `/proc/pressure`, `/proc/fs`,
//!   `/proc/sysvipc`, `/proc/driver`, all of `/proc/sys` (network
//!   interfaces other than `all`, `default` and `lo` skipped), `/sys`,
//!   `/sys/kernel`, `/sys/kernel/mm` (two levels), `/sys/fs`, and
//!   `/sys/devices/system/cpu` (not the per-CPU directories).
//!
//! Device nodes are `dev:/dev/...`, a fixed list.

use std::os::unix::fs::FileTypeExt;
use vessel_probe::Report;

/// Entries programs read: runtimes, JVMs, Go, databases, monitoring agents,
/// systemd, libc, ps/top/free.
const FIXED: &[&str] = &[
    "/proc/self/maps",
    "/proc/self/smaps",
    "/proc/self/smaps_rollup",
    "/proc/self/pagemap",
    "/proc/self/status",
    "/proc/self/stat",
    "/proc/self/statm",
    "/proc/self/limits",
    "/proc/self/io",
    "/proc/self/mountinfo",
    "/proc/self/mounts",
    "/proc/self/cgroup",
    "/proc/self/fd",
    "/proc/self/fdinfo",
    "/proc/self/exe",
    "/proc/self/cmdline",
    "/proc/self/environ",
    "/proc/self/auxv",
    "/proc/self/oom_score",
    "/proc/self/oom_score_adj",
    "/proc/self/coredump_filter",
    "/proc/self/loginuid",
    "/proc/self/sessionid",
    "/proc/self/uid_map",
    "/proc/self/gid_map",
    "/proc/self/setgroups",
    "/proc/self/projid_map",
    "/proc/self/timens_offsets",
    "/proc/self/timerslack_ns",
    "/proc/self/sched",
    "/proc/self/schedstat",
    "/proc/self/autogroup",
    "/proc/self/stack",
    "/proc/self/syscall",
    "/proc/self/wchan",
    "/proc/self/personality",
    "/proc/self/arch_status",
    "/proc/self/map_files",
    "/proc/self/children",
    "/proc/self/task/self",
    "/proc/self/cpuset",
    "/proc/self/numa_maps",
    "/proc/self/ns/cgroup",
    "/proc/self/ns/ipc",
    "/proc/self/ns/mnt",
    "/proc/self/ns/net",
    "/proc/self/ns/pid",
    "/proc/self/ns/pid_for_children",
    "/proc/self/ns/time",
    "/proc/self/ns/time_for_children",
    "/proc/self/ns/user",
    "/proc/self/ns/uts",
    "/proc/self/attr/current",
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/cgroups",
    "/proc/mounts",
    "/proc/swaps",
    "/proc/vmstat",
    "/proc/zoneinfo",
    "/proc/buddyinfo",
    "/proc/pagetypeinfo",
    "/proc/diskstats",
    "/proc/partitions",
    "/proc/interrupts",
    "/proc/softirqs",
    "/proc/locks",
    "/proc/devices",
    "/proc/misc",
    "/proc/cmdline",
    "/proc/consoles",
    "/proc/crypto",
    "/proc/keys",
    "/proc/key-users",
    "/proc/kallsyms",
    "/proc/modules",
    "/proc/config.gz",
    "/proc/kcore",
    "/proc/slabinfo",
    "/proc/schedstat",
    "/proc/sched_debug",
    "/proc/timer_list",
    "/proc/sysrq-trigger",
    "/proc/pressure/cpu",
    "/proc/pressure/memory",
    "/proc/pressure/io",
    "/proc/sysvipc/msg",
    "/proc/sysvipc/sem",
    "/proc/sysvipc/shm",
    "/proc/net/tcp",
    "/proc/net/tcp6",
    "/proc/net/udp",
    "/proc/net/udp6",
    "/proc/net/unix",
    "/proc/net/dev",
    "/proc/net/if_inet6",
    "/proc/net/route",
    "/proc/net/ipv6_route",
    "/proc/net/sockstat",
    "/proc/net/snmp",
    "/proc/net/netstat",
    "/proc/net/packet",
    "/proc/net/netlink",
    "/proc/net/nf_conntrack",
    "/proc/net/ip_tables_names",
    "/proc/sys/fs/file-max",
    "/proc/sys/fs/nr_open",
    "/proc/sys/fs/inotify/max_user_watches",
    "/proc/sys/fs/inotify/max_user_instances",
    "/proc/sys/fs/fanotify/max_user_marks",
    "/proc/sys/fs/epoll/max_user_watches",
    "/proc/sys/fs/mqueue/msg_max",
    "/proc/sys/fs/binfmt_misc",
    "/proc/sys/fs/aio-max-nr",
    "/proc/sys/fs/pipe-max-size",
    "/proc/sys/kernel/pid_max",
    "/proc/sys/kernel/threads-max",
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/random/boot_id",
    "/proc/sys/kernel/random/uuid",
    "/proc/sys/kernel/random/entropy_avail",
    "/proc/sys/kernel/shmmax",
    "/proc/sys/kernel/msgmax",
    "/proc/sys/kernel/sem",
    "/proc/sys/kernel/keys/maxkeys",
    "/proc/sys/kernel/perf_event_paranoid",
    "/proc/sys/kernel/unprivileged_bpf_disabled",
    "/proc/sys/kernel/io_uring_disabled",
    "/proc/sys/kernel/seccomp/actions_avail",
    "/proc/sys/kernel/yama/ptrace_scope",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/kernel/cap_last_cap",
    "/proc/sys/kernel/sched_autogroup_enabled",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/vm/max_map_count",
    "/proc/sys/vm/swappiness",
    "/proc/sys/vm/nr_hugepages",
    "/proc/sys/vm/unprivileged_userfaultfd",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/net/core/somaxconn",
    "/proc/sys/net/core/rmem_max",
    "/proc/sys/net/core/bpf_jit_enable",
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/ip_local_port_range",
    "/proc/sys/net/ipv4/ping_group_range",
    "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    "/proc/sys/net/ipv4/tcp_congestion_control",
    "/proc/sys/net/ipv6/conf/all/disable_ipv6",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/sys/fs/cgroup",
    "/sys/fs/bpf",
    "/sys/fs/fuse/connections",
    "/sys/fs/pstore",
    "/sys/kernel/security",
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
    "/sys/kernel/btf/vmlinux",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/kernel/mm/transparent_hugepage/defrag",
    "/sys/kernel/mm/ksm/run",
    "/sys/kernel/mm/hugepages",
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/cpu/possible",
    "/sys/devices/system/cpu/present",
    "/sys/devices/system/node",
    "/sys/class/net",
    "/sys/class/net/lo",
    "/sys/block",
    "/sys/module",
];

/// Device nodes (a character or block device at that path).
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/console",
    "/dev/ptmx",
    "/dev/kmsg",
    "/dev/fuse",
    "/dev/net/tun",
    "/dev/userfaultfd",
    "/dev/loop-control",
    "/dev/kvm",
    "/dev/vsock",
    "/dev/hwrng",
    "/dev/rtc0",
    "/dev/mem",
    "/dev/port",
    "/dev/autofs",
    "/dev/btrfs-control",
    "/dev/cpu_dma_latency",
    "/dev/vhost-vsock",
    "/dev/vhost-net",
    "/dev/snapshot",
    "/dev/uinput",
];

fn exists(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Names in a directory, sorted.
fn names(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn is_dir(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Network interface names that are not the same everywhere.
fn skip_interface(parent: &str, name: &str) -> bool {
    let per_if = parent.ends_with("/conf") || parent.ends_with("/neigh");
    per_if && !matches!(name, "all" | "default" | "lo")
}

/// Walk a tree under /proc/sys: every file and directory.
fn walk_sysctl(dir: &str, r: &mut Report, depth: usize) {
    if depth > 8 {
        return;
    }
    for n in names(dir) {
        if skip_interface(dir, &n) {
            continue;
        }
        let p = format!("{dir}/{n}");
        r.yes(&format!("path:{p}"), "");
        // binfmt_misc's contents are the formats someone registered.
        if is_dir(&p) && !p.ends_with("/binfmt_misc") {
            walk_sysctl(&p, r, depth + 1);
        }
    }
}

/// One level of `dir`; `keep` filters names.
fn list(dir: &str, r: &mut Report, keep: impl Fn(&str) -> bool) {
    for n in names(dir) {
        if keep(&n) {
            r.yes(&format!("path:{dir}/{n}"), "");
        }
    }
}

fn numbered(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
}

pub fn probe(r: &mut Report) {
    for p in FIXED {
        r.record(&format!("path:{p}"), exists(p), "");
    }
    for d in DEVICES {
        let dev = std::fs::metadata(d)
            .map(|m| m.file_type().is_char_device() || m.file_type().is_block_device())
            .unwrap_or(false);
        r.record(&format!("dev:{d}"), dev, "");
    }

    list("/proc", r, |n| !numbered(n));
    list("/proc/self", r, |_| true);
    for sub in ["ns", "attr", "net"] {
        list(&format!("/proc/self/{sub}"), r, |_| true);
    }
    for sub in ["pressure", "fs", "sysvipc", "driver"] {
        list(&format!("/proc/{sub}"), r, |_| true);
    }
    walk_sysctl("/proc/sys", r, 0);

    list("/sys", r, |_| true);
    list("/sys/kernel", r, |_| true);
    list("/sys/fs", r, |_| true);
    list("/sys/kernel/mm", r, |_| true);
    for n in names("/sys/kernel/mm") {
        let d = format!("/sys/kernel/mm/{n}");
        // hugepages/ holds one directory per page size.
        if is_dir(&d) && n != "hugepages" {
            list(&d, r, |_| true);
        }
    }
    list("/sys/devices/system/cpu", r, |n| {
        !(n.starts_with("cpu") && numbered(&n[3..]))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_skipped_except_the_usual() {
        assert!(skip_interface("/proc/sys/net/ipv4/conf", "eth0"));
        assert!(!skip_interface("/proc/sys/net/ipv4/conf", "all"));
        assert!(!skip_interface("/proc/sys/net/ipv6/neigh", "default"));
        assert!(!skip_interface("/proc/sys/net/ipv4", "eth0"));
    }

    #[test]
    fn numbered_names() {
        assert!(numbered("123"));
        assert!(!numbered("self"));
        assert!(!numbered(""));
    }
}
