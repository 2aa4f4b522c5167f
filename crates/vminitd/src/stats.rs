//! `ReadStats`: the guest's resource usage at one moment, from /proc and
//! /sys (the parsers are pure functions over the files' text).

use agent_protocol::{ProcessInfo, StatsSnapshot};

/// Jiffies (USER_HZ) per second, as /proc/stat counts.
const USER_HZ: u64 = 100;

/// Busy and total CPU time from /proc/stat's `cpu` line, in ns.
pub fn parse_cpu(stat: &str) -> (u64, u64) {
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let to_ns = |j: u64| j.saturating_mul(1_000_000_000 / USER_HZ);
    (to_ns(total.saturating_sub(idle)), to_ns(total))
}

/// `MemTotal` and `MemTotal - MemAvailable`, in bytes.
pub fn parse_memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(1024)
    };
    let total = field("MemTotal:");
    (total, total.saturating_sub(field("MemAvailable:")))
}

/// Received and sent bytes over every interface but `lo`, from
/// /proc/net/dev.
pub fn parse_net(dev: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        rx = rx.saturating_add(v.first().copied().unwrap_or(0));
        tx = tx.saturating_add(v.get(8).copied().unwrap_or(0));
    }
    (rx, tx)
}

/// Read and written bytes from a /sys/block/DEV/stat line.
pub fn parse_block(stat: &str) -> (u64, u64) {
    let v: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let sectors = |i: usize| v.get(i).copied().unwrap_or(0).saturating_mul(512);
    (sectors(2), sectors(6))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// User processes (kernel threads have an empty cmdline), vminitd excluded.
fn count_pids() -> u64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .count() as u64
}

/// The snapshot now.
pub fn snapshot() -> StatsSnapshot {
    let (cpu_busy_ns, cpu_total_ns) = parse_cpu(&read("/proc/stat"));
    let (memory_total_bytes, memory_used_bytes) = parse_memory(&read("/proc/meminfo"));
    let (net_rx_bytes, net_tx_bytes) = parse_net(&read("/proc/net/dev"));
    let mut block = (0u64, 0u64);
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("vd") {
                let (r, w) = parse_block(&read(&format!("/sys/block/{name}/stat")));
                block = (block.0.saturating_add(r), block.1.saturating_add(w));
            }
        }
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    StatsSnapshot {
        monotonic_ns: (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64),
        cpu_busy_ns,
        cpu_total_ns,
        // SAFETY: sysconf has no memory-safety preconditions.
        online_cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32,
        memory_total_bytes,
        memory_used_bytes,
        pids: count_pids(),
        net_rx_bytes,
        net_tx_bytes,
        block_read_bytes: block.0,
        block_write_bytes: block.1,
    }
}

/// Parse /proc/PID/stat: (ppid, cpu ms, start ms after boot, rss pages).
pub fn parse_pid_stat(stat: &str) -> Option<(i32, u64, u64, u64)> {
    // The command name may hold spaces and parentheses: fields start
    // after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = f.get(1)?.parse::<i32>().ok()?;
    let ticks = num(11)? + num(12)?;
    let to_ms = |t: u64| t.saturating_mul(1000 / USER_HZ);
    Some((ppid, to_ms(ticks), to_ms(num(19)?), num(21)?))
}

/// The container's processes: every user process but vminitd (pid 1) and
/// its copy helpers.
pub fn processes() -> Vec<ProcessInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let mut out: Vec<ProcessInfo> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 1)
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (ppid, cpu_ms, start_ms, rss) = parse_pid_stat(&stat)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            if cmdline.is_empty() {
                return None; // a kernel thread
            }
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().map(String::as_str) == Some("/proc/self/exe") {
                return None; // vminitd's copy helper
            }
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0);
            Some(ProcessInfo {
                pid,
                ppid,
                uid,
                cpu_ms,
                rss_bytes: rss.saturating_mul(page),
                start_ms,
                command: args.join(" "),
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 800 20 1 2 0 0 0\ncpu0 100 5 50 800 20 1 2 0 0 0\n";
        let (busy, total) = parse_cpu(stat);
        assert_eq!(total, 978 * 10_000_000);
        assert_eq!(busy, 158 * 10_000_000);
        assert_eq!(parse_cpu("garbage"), (0, 0));
        let mem = "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  600 kB\n";
        assert_eq!(parse_memory(mem), (1_024_000, 409_600));
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 1500 10 0 0 0 0 0 0 700 7 0 0 0 0 0 0\n";
        assert_eq!(parse_net(dev), (1500, 700));
        assert_eq!(
            parse_block("  10 0 16 0 5 0 8 0 0 0 0"),
            (16 * 512, 8 * 512)
        );
        assert_eq!(parse_block(""), (0, 0));
    }

    #[test]
    fn pid_stat_with_a_hostile_name() {
        let stat = "42 (a b) c)) S 7 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 1234 999 55 18446744073709551615";
        assert_eq!(parse_pid_stat(stat), Some((7, 3000, 12340, 55)));
        assert_eq!(parse_pid_stat("garbage"), None);
        assert!(processes()
            .iter()
            .any(|p| p.pid == std::process::id() as i32));
    }

    #[test]
    fn a_snapshot_of_this_machine_is_plausible() {
        let s = snapshot();
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        assert!(s.cpu_total_ns >= s.cpu_busy_ns && s.online_cpus >= 1);
        assert!(s.pids >= 1);
    }
}
