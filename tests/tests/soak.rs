//! Soak: many containers, one after another and eight at a time, on one
//! instance. None may fail, nothing may be left behind, and the services'
//! resident memory and open descriptors must not grow with the number of
//! containers run.
//!
//! Sized for CI by default (a short bounded round); `bench/soak.py` runs the
//! same test long (issue 11: 1,000 sequential and 100 rounds of 8):
//! - `VESSEL_SOAK_SEQUENTIAL`: sequential `run --rm` (default 30);
//! - `VESSEL_SOAK_ROUNDS`: rounds of parallel `run --rm` (default 3);
//! - `VESSEL_SOAK_WIDTH`: containers per round (default 8).
//!
//! Every other container runs on the default bridge network (a TAP, an
//! address lease, nftables rules each), the rest with `--network none`.
//! The test prints one line `SOAK_REPORT {json}` with the counts, the
//! failures, the run times and each service's RSS and descriptor count at
//! the first and the last sample.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a count"))
        })
        .unwrap_or(default)
}

/// One of the instance's long-lived processes.
#[derive(Debug, Clone, PartialEq)]
struct Service {
    name: &'static str,
    pid: i32,
}

/// The instance's services, found by their command lines (`--home HOME`):
/// the supervisor, the apiserver and its two helpers.
fn services(home: &Path) -> Vec<Service> {
    let home = home.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.windows(2).any(|w| w[0] == "--home" && w[1] == home) {
            continue;
        }
        let prog = Path::new(&args[0])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match (prog.as_str(), args.get(1).map(String::as_str)) {
            ("vessel-apiserver", Some("supervise")) => "supervisor",
            ("vessel-apiserver", Some("serve")) => "apiserver",
            ("vessel-images", _) => "vessel-images",
            ("vessel-network", _) => "vessel-network",
            _ => continue,
        };
        found.push(Service { name, pid });
    }
    found.sort_by_key(|s| s.name);
    found
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn usage(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

fn sample(home: &Path) -> Vec<(Service, u64, usize)> {
    services(home)
        .into_iter()
        .map(|s| {
            let (rss, fds) = usage(s.pid);
            (s, rss, fds)
        })
        .collect()
}

/// `run --rm IMAGE true`, on the bridge network or none; (ok, seconds,
/// what went wrong).
fn run_once(v: &Instance, bridge: bool) -> (bool, f64, String) {
    let t = Instant::now();
    let mut args = vec!["run", "--rm"];
    if !bridge {
        args.extend(["--network", "none"]);
    }
    args.extend([IMAGE, "true"]);
    let out = v.vessel(&args);
    let secs = t.elapsed().as_secs_f64();
    let ok = out.status.success();
    let why = if ok {
        String::new()
    } else {
        format!(
            "exit {:?}: {}{}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        )
    };
    (ok, secs, why)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[k]
}

/// The TAP devices on this instance's bridges (other instances, such as
/// other tests running beside this one, have their own).
fn taps(home: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(home.join("networks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let Some(bridge) = rec["bridge"].as_str() else {
            continue;
        };
        for port in std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(port.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

/// Address leases held on the instance's networks (`networks/*.json`).
fn leases(home: &Path) -> usize {
    std::fs::read_dir(home.join("networks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            rec["endpoints"].as_object().map_or(0, |m| m.len())
        })
        .sum()
}

/// Processes (VMs, runtime helpers) that name a container of
/// this instance on their command line.
fn container_processes(home: &Path) -> Vec<String> {
    let run_base = vessel_api::paths::Home::new(home).run_base();
    let needles = [
        home.join("containers").to_string_lossy().into_owned(),
        run_base.to_string_lossy().into_owned(),
    ];
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        let prog = line.split(' ').next().unwrap_or("");
        if prog.ends_with("vessel-apiserver")
            || prog.ends_with("vessel-images")
            || prog.ends_with("vessel-network")
        {
            continue;
        }
        if needles.iter().any(|n| line.contains(n.as_str())) {
            found.push(line);
        }
    }
    found
}

#[test]
fn many_containers_fail_none_and_grow_nothing() {
    let sequential = knob("VESSEL_SOAK_SEQUENTIAL", 30);
    let rounds = knob("VESSEL_SOAK_ROUNDS", 3);
    let width = knob("VESSEL_SOAK_WIDTH", 8);
    let v = Instance::started();

    // Warm-up: the first containers create the default network, the
    // image's base and the services' caches; memory is measured after.
    for i in 0..4 {
        let (ok, _, why) = run_once(&v, i % 2 == 0);
        assert!(ok, "warm-up run {i}: {why}");
    }
    let first = sample(v.path());
    let names: Vec<&str> = first.iter().map(|(s, _, _)| s.name).collect();
    assert_eq!(
        names,
        ["apiserver", "supervisor", "vessel-images", "vessel-network"],
        "the instance's services: {first:?}"
    );

    let started = Instant::now();
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for i in 0..sequential {
        let (ok, secs, why) = run_once(&v, i % 2 == 0);
        times.push(secs);
        if !ok {
            failures.push(format!("sequential run {i}: {why}"));
        }
        if (i + 1) % 100 == 0 {
            eprintln!("soak: {} sequential runs done", i + 1);
        }
    }
    let sequential_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut round_secs = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        let results: Vec<(bool, f64, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..width)
                .map(|j| {
                    let v = &v;
                    scope.spawn(move || run_once(v, j % 2 == 0))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        round_secs.push(t.elapsed().as_secs_f64());
        for (j, (ok, _, why)) in results.into_iter().enumerate() {
            if !ok {
                failures.push(format!("round {r}, container {j}: {why}"));
            }
        }
        if (r + 1) % 10 == 0 {
            eprintln!("soak: {} parallel rounds done", r + 1);
        }
    }
    let parallel_secs = started.elapsed().as_secs_f64();

    // Let the services settle (a container's removal ends a little after
    // its CLI returns), then take the last sample.
    let leftovers_gone = v.wait_for(Duration::from_secs(20), || {
        v.container_dirs().is_empty() && container_processes(v.path()).is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let last = sample(v.path());

    times.sort_by(f64::total_cmp);
    round_secs.sort_by(f64::total_cmp);
    let services_json: Vec<_> = first
        .iter()
        .map(|(s, rss, fds)| {
            let end = last.iter().find(|(l, _, _)| l.name == s.name);
            json!({
                "name": s.name,
                "pid_first": s.pid,
                "pid_last": end.map(|(l, _, _)| l.pid),
                "rss_kib_first": rss,
                "rss_kib_last": end.map(|(_, r, _)| *r),
                "fds_first": fds,
                "fds_last": end.map(|(_, _, f)| *f),
            })
        })
        .collect();
    let report = json!({
        "sequential": sequential,
        "rounds": rounds,
        "width": width,
        "containers": sequential + rounds * width,
        "failures": failures.len(),
        "sequential_secs": sequential_secs,
        "parallel_secs": parallel_secs,
        "run_p50": pct(&times, 50.0),
        "run_p95": pct(&times, 95.0),
        "run_max": times.last().copied().unwrap_or(0.0),
        "round_p50": pct(&round_secs, 50.0),
        "round_max": round_secs.last().copied().unwrap_or(0.0),
        "services": services_json,
    });
    println!("SOAK_REPORT {report}");

    assert!(failures.is_empty(), "failed runs: {failures:#?}");
    assert!(
        leftovers_gone,
        "left behind: containers {:?}, processes {:#?}",
        v.container_dirs(),
        container_processes(v.path())
    );
    assert_eq!(
        taps(v.path()),
        Vec::<String>::new(),
        "TAP devices left behind"
    );
    assert_eq!(leases(v.path()), 0, "address leases left behind");
    let ls = v.vessel(&["ls", "-a", "-q"]);
    assert_ok(&ls, "ls -a -q");
    assert!(
        text(&ls.stdout).trim().is_empty(),
        "ls -a: {}",
        text(&ls.stdout)
    );

    for (s, rss, fds) in &first {
        let (l, rss_last, fds_last) = last
            .iter()
            .find(|(l, _, _)| l.name == s.name)
            .unwrap_or_else(|| panic!("{} is gone: {last:?}", s.name));
        // The same process throughout: a service that crashed and was
        // restarted by its supervisor would hide a leak (and is a failure).
        assert_eq!(l.pid, s.pid, "{} was restarted during the soak", s.name);
        assert!(
            *fds_last <= fds + 2,
            "{}: open descriptors grew from {fds} to {fds_last}",
            s.name
        );
        // Allocators keep freed memory; a leak of a container's worth of
        // state per run shows as steady growth well past this.
        let allowed = rss + (rss / 4).max(8 * 1024);
        assert!(
            *rss_last <= allowed,
            "{}: resident memory grew from {rss} KiB to {rss_last} KiB",
            s.name
        );
    }
}
