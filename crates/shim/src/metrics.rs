//! `Stats` as containerd's cgroup v1 metrics (what `ctr task metrics` and
//! the kubelet read), from the guest's own counters: the whole VM is the
//! container's cgroup.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;
use vessel_api::types::ContainerStats;

pub fn cgroup_v1(s: &ContainerStats) -> Metrics {
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.guest.pids,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: s.guest.cpu_busy_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: MessageField::some(MemoryEntry {
                usage: s.guest.memory_used_bytes,
                limit: s.guest.memory_total_bytes,
                ..Default::default()
            }),
            rss: s.vmm_rss_bytes,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_counters_become_cgroup_metrics() {
        let mut s = ContainerStats::default();
        s.guest.pids = 3;
        s.guest.cpu_busy_ns = 42;
        s.guest.memory_used_bytes = 10 << 20;
        s.guest.memory_total_bytes = 512 << 20;
        let m = cgroup_v1(&s);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage.total, 42);
        assert_eq!(m.memory.usage.usage, 10 << 20);
        assert_eq!(m.memory.usage.limit, 512 << 20);
    }
}
