//! The cgroups of a pod's containers (the containerd shim runs a pod's
//! containers in one VM): `/sys/fs/cgroup/vessel-pod/ID` in the VM's
//! cgroup2 hierarchy, with the `cpu`, `memory` and `pids` controllers. A
//! container's processes join its group (its first process and its
//! execs); the group gives the container's own statistics
//! (`ReadGroupStats`) and holds its memory limit (`memory.max`).

use crate::stats;
use agent_protocol::StatsSnapshot;
use std::path::PathBuf;

const HIERARCHY: &str = "/sys/fs/cgroup";
const BASE: &str = "/sys/fs/cgroup/vessel-pod";

/// The group of container `group`, if the name is one directory name.
pub fn dir(group: &str) -> Result<PathBuf, String> {
    let plain = !group.is_empty()
        && group != "."
        && group != ".."
        && !group.contains('/')
        && !group.contains('\0');
    if plain {
        Ok(PathBuf::from(BASE).join(group))
    } else {
        Err(format!("not a container name: {group:?}"))
    }
}

/// Make the group of `group` with the limits of `limits` (its
/// `memory_max`, `cpu_max` and `cpu_weight`) and give the file a process
/// writes `0` to, to join it.
pub fn prepare(group: &str, limits: &agent_protocol::ProcessSpec) -> Result<PathBuf, String> {
    let dir = dir(group)?;
    // The controllers for the groups below: the root's may have
    // processes (it is exempt), `vessel-pod` has none.
    for parent in [HIERARCHY, BASE] {
        if parent == BASE {
            match std::fs::create_dir(BASE) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("mkdir {BASE}: {e}")),
            }
        }
        let control = format!("{parent}/cgroup.subtree_control");
        for c in ["+cpu", "+memory", "+pids"] {
            // One at a time: a controller the kernel lacks fails alone.
            let _ = std::fs::write(&control, c);
        }
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
    }
    let mut settings = Vec::new();
    if let Some(max) = limits.memory_max.filter(|m| *m > 0) {
        settings.push(("memory.max", max.to_string()));
    }
    if let Some((quota, period)) = limits.cpu_max.filter(|(q, p)| *q > 0 && *p > 0) {
        settings.push(("cpu.max", format!("{quota} {period}")));
    }
    if let Some(weight) = limits.cpu_weight {
        settings.push(("cpu.weight", weight.clamp(1, 10_000).to_string()));
    }
    for (file, value) in settings {
        std::fs::write(dir.join(file), &value)
            .map_err(|e| format!("{file} of {group} ({value}): {e}"))?;
    }
    Ok(dir.join("cgroup.procs"))
}

/// The file that joins the existing group of `group`.
pub fn procs(group: &str) -> Option<PathBuf> {
    let p = dir(group).ok()?.join("cgroup.procs");
    p.exists().then_some(p)
}

/// `usage_usec` of a `cpu.stat`, in nanoseconds.
pub fn parse_cpu_usage(stat: &str) -> u64 {
    field(stat, "usage_usec").saturating_mul(1000)
}

/// A `KEY VALUE` line's value (`memory.stat`, `cpu.stat`).
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Read and written bytes over the devices of an `io.stat`.
pub fn parse_io(stat: &str) -> (u64, u64) {
    let mut out = (0u64, 0u64);
    for word in stat.split_whitespace() {
        if let Some(v) = word
            .strip_prefix("rbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            out.0 = out.0.saturating_add(v);
        }
        if let Some(v) = word
            .strip_prefix("wbytes=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            out.1 = out.1.saturating_add(v);
        }
    }
    out
}

/// The statistics of container `group`: its group's CPU time, memory (the
/// working set: `memory.current` less inactive file pages, as the kubelet
/// counts it; its limit, or the VM's memory) and processes; the network
/// and the clock are the VM's.
pub fn snapshot(group: &str) -> Result<StatsSnapshot, String> {
    let dir = dir(group)?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let current = read("memory.current")
        .map_err(|e| format!("the statistics of {group}: {e}"))?
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    let vm = stats::snapshot();
    let inactive = field(&read("memory.stat").unwrap_or_default(), "inactive_file");
    let limit = read("memory.max")
        .ok()
        .and_then(|m| m.trim().parse::<u64>().ok())
        .unwrap_or(vm.memory_total_bytes);
    let pids = read("cgroup.procs")
        .map(|p| p.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    let (block_read_bytes, block_write_bytes) = parse_io(&read("io.stat").unwrap_or_default());
    Ok(StatsSnapshot {
        cpu_busy_ns: parse_cpu_usage(&read("cpu.stat").unwrap_or_default()),
        memory_total_bytes: limit,
        memory_used_bytes: current.saturating_sub(inactive),
        pids,
        block_read_bytes,
        block_write_bytes,
        ..vm
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_directory() {
        assert!(dir("abc123").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(dir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_files_parse() {
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(parse_cpu_usage(cpu), 1_500_000);
        assert_eq!(parse_cpu_usage(""), 0);
        let io = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n254:16 rbytes=1 wbytes=2\n";
        assert_eq!(parse_io(io), (4097, 8194));
        let mem = "anon 100\nfile 300\ninactive_file 250\n";
        assert_eq!(field(mem, "inactive_file"), 250);
        assert_eq!(field(mem, "missing"), 0);
    }
}
