//! `vessel stats [--no-stream] [--format json] [-a] [CONTAINER...]` and
//! `vessel top CONTAINER`.
//!
//! A snapshot (`GET /v1/containers/{id}/stats`) holds counters; rates
//! (CPU %) come from two of them, a second apart, as Docker's do. Memory
//! is what the guest sees (used of its total, caches it can drop left
//! out) and, beside it, the VM's resident memory on the host.

use crate::api::{error_kind, Api, ErrorKind};
use crate::cli::{StatsArgs, TopArgs};
use crate::format::table;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use vessel_api::http::percent_encode;
use vessel_api::types::{ContainerStats, ContainerSummary, TopResponse};

/// One row of `stats`, also its `--format json` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: String,
    pub name: String,
    /// Of one CPU: 200 is two CPUs busy. `None` until two samples exist.
    pub cpu_percent: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub memory_percent: f64,
    /// The VM's resident memory on the host.
    pub vmm_rss_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub pids: u64,
    /// It does not run (no numbers).
    pub running: bool,
}

/// CPU use between two snapshots, in percent of one CPU (Docker's
/// formula: busy time over all time, times the CPUs).
pub fn cpu_percent(prev: &ContainerStats, cur: &ContainerStats) -> Option<f64> {
    let busy = cur.guest.cpu_busy_ns.checked_sub(prev.guest.cpu_busy_ns)?;
    let total = cur
        .guest
        .cpu_total_ns
        .checked_sub(prev.guest.cpu_total_ns)?;
    if total == 0 {
        return None;
    }
    let cpus = f64::from(cur.guest.online_cpus.max(1));
    Some(busy as f64 / total as f64 * cpus * 100.0)
}

/// A row from a snapshot (and the one before it, for the CPU).
pub fn row(c: &ContainerSummary, prev: Option<&ContainerStats>, cur: &ContainerStats) -> Row {
    let g = &cur.guest;
    let memory_percent = if g.memory_total_bytes > 0 {
        g.memory_used_bytes as f64 / g.memory_total_bytes as f64 * 100.0
    } else {
        0.0
    };
    Row {
        id: c.id.clone(),
        name: c.name.clone(),
        cpu_percent: prev.and_then(|p| cpu_percent(p, cur)),
        memory_used_bytes: g.memory_used_bytes,
        memory_limit_bytes: g.memory_total_bytes,
        memory_percent,
        vmm_rss_bytes: cur.vmm_rss_bytes,
        net_rx_bytes: g.net_rx_bytes,
        net_tx_bytes: g.net_tx_bytes,
        block_read_bytes: g.block_read_bytes,
        block_write_bytes: g.block_write_bytes,
        pids: g.pids,
        running: true,
    }
}

fn idle_row(c: &ContainerSummary) -> Row {
    Row {
        id: c.id.clone(),
        name: c.name.clone(),
        cpu_percent: None,
        memory_used_bytes: 0,
        memory_limit_bytes: 0,
        memory_percent: 0.0,
        vmm_rss_bytes: 0,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
        block_read_bytes: 0,
        block_write_bytes: 0,
        pids: 0,
        running: false,
    }
}

/// Four significant digits, trailing zeros dropped (Go's `%.4g`, which
/// Docker's sizes use).
fn four_digits(v: f64) -> String {
    let decimals = if v >= 1000.0 {
        0
    } else if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn scaled(n: u64, base: f64, units: &[&str]) -> String {
    let mut v = n as f64;
    let mut u = 0;
    while v >= base && u < units.len() - 1 {
        v /= base;
        u += 1;
    }
    format!("{}{}", four_digits(v), units[u])
}

/// Binary units, as Docker shows memory: `1.5MiB`.
pub fn binary(n: u64) -> String {
    scaled(n, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"])
}

/// Decimal units, as Docker shows I/O: `1.23kB`.
pub fn decimal(n: u64) -> String {
    scaled(n, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB"])
}

fn table_of(rows: &[Row]) -> String {
    let mut out = vec![vec![
        "CONTAINER ID".to_string(),
        "NAME".into(),
        "CPU %".into(),
        "MEM USAGE / LIMIT".into(),
        "MEM %".into(),
        "VM MEM".into(),
        "NET I/O".into(),
        "BLOCK I/O".into(),
        "PIDS".into(),
    ]];
    for r in rows {
        let id = r.id[..12.min(r.id.len())].to_string();
        if !r.running {
            let dash = "--".to_string();
            out.push(vec![
                id,
                r.name.clone(),
                dash.clone(),
                "-- / --".into(),
                dash.clone(),
                dash.clone(),
                "-- / --".into(),
                "-- / --".into(),
                dash,
            ]);
            continue;
        }
        out.push(vec![
            id,
            r.name.clone(),
            r.cpu_percent
                .map(|c| format!("{c:.2}%"))
                .unwrap_or_else(|| "--".into()),
            format!(
                "{} / {}",
                binary(r.memory_used_bytes),
                binary(r.memory_limit_bytes)
            ),
            format!("{:.2}%", r.memory_percent),
            binary(r.vmm_rss_bytes),
            format!("{} / {}", decimal(r.net_rx_bytes), decimal(r.net_tx_bytes)),
            format!(
                "{} / {}",
                decimal(r.block_read_bytes),
                decimal(r.block_write_bytes)
            ),
            r.pids.to_string(),
        ]);
    }
    table(&out)
}

/// The containers to show: those named, else the running ones (all with `-a`).
fn targets(api: &Api, a: &StatsArgs) -> Result<Vec<ContainerSummary>> {
    let all: Vec<ContainerSummary> = api.call("GET", "/v1/containers?all=true", None)?;
    if a.containers.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|c| a.all || c.status.is_active())
            .collect());
    }
    let mut out = Vec::new();
    for key in &a.containers {
        let found = all
            .iter()
            .find(|c| c.id == *key || c.name == *key)
            .or_else(|| {
                let mut m = all.iter().filter(|c| c.id.starts_with(key.as_str()));
                match (m.next(), m.next()) {
                    (Some(c), None) => Some(c),
                    _ => None,
                }
            });
        match found {
            Some(c) => out.push(c.clone()),
            None => bail!("no such container: {key}; list containers with `vessel ls -a`"),
        }
    }
    Ok(out)
}

/// A snapshot of `c`, or `None` when it does not run.
fn sample(api: &Api, c: &ContainerSummary) -> Result<Option<ContainerStats>> {
    let path = format!("/v1/containers/{}/stats", percent_encode(&c.id));
    match api.call::<ContainerStats>("GET", &path, None) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                error_kind(&e),
                Some(ErrorKind::Conflict | ErrorKind::ContainerNotFound)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn stats(api: &Api, a: StatsArgs) -> Result<i32> {
    let json = match a.format.as_deref() {
        None | Some("table") => false,
        Some("json") => true,
        Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
    };
    let mut prev: HashMap<String, ContainerStats> = HashMap::new();
    let clear = !json && !a.no_stream && std::io::stdout().is_terminal();
    // --no-stream: one row each, from two samples a second apart.
    let rounds = if a.no_stream { Some(2) } else { None };
    let mut round = 0;
    loop {
        let list = targets(api, &a)?;
        let mut rows = Vec::new();
        for c in &list {
            match sample(api, c)? {
                Some(cur) => {
                    rows.push(row(c, prev.get(&c.id), &cur));
                    prev.insert(c.id.clone(), cur);
                }
                None => rows.push(idle_row(c)),
            }
        }
        round += 1;
        let last = rounds.is_some_and(|n| round >= n);
        if rounds.is_none() || last {
            let mut out = std::io::stdout().lock();
            if json {
                for r in &rows {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else {
                if clear {
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                write!(out, "{}", table_of(&rows))?;
            }
            out.flush()?;
        }
        if last {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `[h:]mm:ss` of a CPU time.
fn cpu_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

pub fn top(api: &Api, a: TopArgs) -> Result<i32> {
    let path = format!("/v1/containers/{}/top", percent_encode(&a.container));
    let top: TopResponse = api.call("GET", &path, None)?;
    let mut rows = vec![vec![
        "UID".to_string(),
        "PID".into(),
        "PPID".into(),
        "STIME".into(),
        "TIME".into(),
        "RSS".into(),
        "CMD".into(),
    ]];
    for p in &top.processes {
        let stime = top
            .boot_time_ms
            .map(|b| {
                let t = std::time::UNIX_EPOCH + Duration::from_millis(b + p.start_ms);
                humantime::format_rfc3339_seconds(t).to_string()
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            p.uid.to_string(),
            p.pid.to_string(),
            p.ppid.to_string(),
            stime,
            cpu_time(p.cpu_ms),
            binary(p.rss_bytes),
            p.command.clone(),
        ]);
    }
    crate::out!("{}", table(&rows));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::StatsSnapshot;

    fn snap(busy: u64, total: u64) -> ContainerStats {
        ContainerStats {
            guest: StatsSnapshot {
                cpu_busy_ns: busy,
                cpu_total_ns: total,
                online_cpus: 2,
                memory_total_bytes: 512 << 20,
                memory_used_bytes: 64 << 20,
                ..Default::default()
            },
            vmm_rss_bytes: 100 << 20,
            read_ms: 0,
        }
    }

    #[test]
    fn cpu_from_two_snapshots_as_docker_computes_it() {
        // Half of all CPU time busy on 2 CPUs: one CPU's worth, 100 %.
        let p = cpu_percent(&snap(1_000, 10_000), &snap(6_000, 20_000)).unwrap();
        assert!((p - 100.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(&snap(5, 10), &snap(5, 10)), None);
        assert_eq!(cpu_percent(&snap(5, 10), &snap(4, 20)), None, "a reboot");
        let c = ContainerSummary {
            id: "abc".into(),
            name: "web".into(),
            image: String::new(),
            command: String::new(),
            created_ms: 0,
            status: vessel_api::types::Status::Running,
            exit_code: None,
            started_ms: None,
            finished_ms: None,
            ports: vec![],
            health: None,
            restarting: false,
            killed_by: None,
        };
        let r = row(&c, None, &snap(1, 2));
        assert_eq!(r.cpu_percent, None, "one sample: no rate yet");
        assert!((r.memory_percent - 12.5).abs() < 1e-9);
    }

    #[test]
    fn units_as_docker_prints_them() {
        assert_eq!(binary(512), "512B");
        assert_eq!(binary(1536 << 10), "1.5MiB");
        assert_eq!(binary(512 << 20), "512MiB");
        assert_eq!(decimal(1234), "1.234kB");
        assert_eq!(binary(21_557_248), "20.56MiB");
        assert_eq!(binary(515_870_720), "492MiB");
        assert_eq!(decimal(1_852_416), "1.852MB");
        assert_eq!(decimal(0), "0B");
        assert_eq!(cpu_time(3_723_000), "01:02:03");
    }
}
