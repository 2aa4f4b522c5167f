//! Fault injection: while worker threads run a mix of `run --rm`, `run -d`
//! (some with `--restart always` / `on-failure`), `stop`, `rm -f`, `pull`
//! (from a loopback registry), `exec` and `ls`, SIGKILL hits, at a random
//! moment, one of the apiserver, vessel-images, vessel-network, a
//! vessel-runtime, a QEMU or a CLI process in the middle of its command. After each injection the workers finish what
//! they were doing and the instance gets a bounded time to recover; then
//! the invariants must hold:
//!
//! - `ls -a` tells the truth: every container shown running has its
//!   runtime and its QEMU; every QEMU, virtiofsd, passt and
//!   runtime process belongs to a container shown running;
//! - nothing leaks: TAP devices, nftables rules, DHCP/IPAM leases, run
//!   directories (and their sockets), container directories (overlays),
//!   mounts, loop devices, half-written downloads, duplicate helpers;
//! - restart policies do what they say: an `always` container whose QEMU,
//!   or runtime was killed comes back; a stopped one stays
//!   stopped (also when the apiserver is killed and restarted);
//! - the CLI gives a clear error and never panics, also while the
//!   apiserver is down;
//! - every listed image still runs (checked at the end of each phase).
//!
//! Knobs: `VESSEL_FAULT_SEED` replays a round (the seed is printed first),
//! `VESSEL_FAULT_INJECTIONS` sets its length (default 50: 7 or 8 per
//! component), `VESSEL_FAULT_RECOVERY_SECS` the recovery bound (default
//! 20). The round ends with one line `FAULTS-REPORT {json}` on standard
//! output (injections per component, violations, leaks, recoveries and
//! their times), which `bench/faults.py` collects from a longer run.
//!
//! Processes are found by the instance they belong to (their command line
//! names the instance's home or run directory, or a container's ID, or
//! they descend from its supervisor), never by their user: the confined
//! VMM runs them under other uids.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vessel_tests::registry::{free_port, Registry};
use vessel_tests::{assert_ok, required_env, text, Instance, IMAGE};

/// The components SIGKILL hits, in the report's words.
const COMPONENTS: [&str; 6] = ["apiserver", "images", "network", "runtime", "qemu", "cli"];

/// The longest any one CLI command may take before it counts as hung.
const CLI_LIMIT: Duration = Duration::from_secs(150);

/// Injections per phase: every listed image is run at the end of each.
const PHASE: usize = 10;

/// At most this many worker containers are kept; more are removed.
const MAX_WORKER_CONTAINERS: usize = 4;

/// A problem that is a boot still under way: the runtime helper's own
/// limits apply (a boot attempt that stalls is given up after 20 s and
/// booted again), so it gets [`BOOT_LIMIT`] instead of the recovery bound.
const SLOW: &str = "slow: ";
/// How long a container may stay `starting` or `stopping`.
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// The long-lived `--restart always` container that must always come back.
const KEEPER: &str = "fault-keeper";
/// An `--restart always` container a user stopped: it must stay stopped.
const SLEEPER: &str = "fault-sleeper";

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len()))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// What the round found, printed as the `FAULTS-REPORT` line.
#[derive(Default)]
struct Report {
    injections: BTreeMap<&'static str, u64>,
    /// Injections that found nothing to hit (no container running, a CLI
    /// command that ended before its kill); made again later.
    skipped: BTreeMap<&'static str, u64>,
    violations: Vec<String>,
    leaks: u64,
    /// Kill → everything checked clean, per component (it includes the
    /// workers' operations in flight at the kill, which end first).
    recoveries: BTreeMap<&'static str, Vec<u64>>,
    /// Workers done → everything checked clean: the part of the recovery
    /// the bound applies to.
    settles: Vec<u64>,
    ops: BTreeMap<String, (u64, u64)>,
    image_runs: u64,
    keeper_comebacks: u64,
    cli_errors_while_down: u64,
    /// Recoveries that waited for a boot longer than the bound (within
    /// [`BOOT_LIMIT`]).
    slow_boots: u64,
}

impl Report {
    fn op(&mut self, name: &str, ok: bool) {
        let e = self.ops.entry(name.to_string()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    fn json(&self, seed: u64, secs: u64) -> serde_json::Value {
        let mut all: Vec<u64> = self.recoveries.values().flatten().copied().collect();
        all.sort_unstable();
        let pct = |p: usize| all.get((all.len().saturating_sub(1)) * p / 100).copied();
        let per: serde_json::Map<String, serde_json::Value> = self
            .recoveries
            .iter()
            .map(|(k, v)| {
                let max = v.iter().max().copied().unwrap_or(0);
                let mean = v.iter().sum::<u64>() / v.len().max(1) as u64;
                (
                    k.to_string(),
                    serde_json::json!({"count": v.len(), "mean_ms": mean, "max_ms": max}),
                )
            })
            .collect();
        let ops: serde_json::Map<String, serde_json::Value> = self
            .ops
            .iter()
            .map(|(k, (ok, failed))| (k.clone(), serde_json::json!({"ok": ok, "failed": failed})))
            .collect();
        serde_json::json!({
            "seed": seed,
            "duration_s": secs,
            "injections_total": self.injections.values().sum::<u64>(),
            "injections": self.injections,
            "skipped": self.skipped,
            "violations": self.violations.len(),
            "violation_list": self.violations.iter().take(30).collect::<Vec<_>>(),
            "leaks": self.leaks,
            "recoveries": {
                "count": all.len(),
                "mean_ms": all.iter().sum::<u64>() / all.len().max(1) as u64,
                "p50_ms": pct(50),
                "p95_ms": pct(95),
                "max_ms": all.last(),
                "by_component": per,
            },
            "settle": {
                "mean_ms": self.settles.iter().sum::<u64>() / self.settles.len().max(1) as u64,
                "max_ms": self.settles.iter().max(),
            },
            "keeper_comebacks": self.keeper_comebacks,
            "slow_boots": self.slow_boots,
            "cli_errors_while_apiserver_down": self.cli_errors_while_down,
            "image_runs": self.image_runs,
            "ops": ops,
        })
    }
}

/// A CLI command's end.
struct Ran {
    out: Output,
    timed_out: bool,
}

/// Spawn `vessel ARGS` with its output collected by threads.
fn spawn(v: &Instance, args: &[&str]) -> (Child, impl FnOnce(Child, bool) -> Ran) {
    let mut child = v
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running vessel");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let finish = move |mut child: Child, timed_out: bool| {
        let status = child.wait().expect("wait vessel");
        Ran {
            out: Output {
                status,
                stdout: t1.join().unwrap_or_default(),
                stderr: t2.join().unwrap_or_default(),
            },
            timed_out,
        }
    };
    (child, finish)
}

/// `vessel ARGS`, killed when it takes longer than [`CLI_LIMIT`].
fn vessel(v: &Instance, args: &[&str]) -> Ran {
    let (mut child, finish) = spawn(v, args);
    let deadline = Instant::now() + CLI_LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return finish(child, false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return finish(child, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a CLI failure is not a clear error: a panic, a hang, a crash.
/// `op` names the operation: the code of `run --rm` and `exec` is their
/// process's, and one that a signal ended (a `stop` or `rm -f` of its
/// container by another worker: 128 + the signal) ends silently, as
/// Docker's does.
fn unclear(r: &Ran, op: &str) -> Option<String> {
    let err = text(&r.out.stderr);
    if r.timed_out {
        return Some(format!("hung for {}s", CLI_LIMIT.as_secs()));
    }
    if err.contains("panicked") || r.out.status.code() == Some(101) {
        return Some(format!("panicked: {err}"));
    }
    if r.out.status.code().is_none() {
        return Some(format!("died of {:?}", r.out.status));
    }
    let signalled = matches!(r.out.status.code(), Some(128..=254));
    if matches!(op, "run --rm" | "exec") && signalled {
        return None;
    }
    if !r.out.status.success() && err.trim().is_empty() {
        return Some(format!(
            "failed ({}) without a message; its output: {:?}",
            r.out.status,
            text(&r.out.stdout)
        ));
    }
    None
}

/// One process of the host.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    /// argv[0]'s file name.
    prog: String,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue; // a kernel thread or a zombie
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": the comm may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut f = after.split_whitespace();
        let state = f.next().unwrap_or("");
        if state == "Z" {
            continue;
        }
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let argv0 = raw.split(|b| *b == 0).next().unwrap_or_default();
        let prog = Path::new(&*String::from_utf8_lossy(argv0))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        v.push(Proc {
            pid,
            ppid,
            prog,
            cmdline,
        });
    }
    v
}

/// What a process of the instance is.
fn kind(p: &Proc) -> &'static str {
    let prog = p.prog.as_str();
    if prog.starts_with("qemu-system") {
        "qemu"
    } else if prog == "virtiofsd" {
        "virtiofsd"
    } else if prog == "passt" {
        "passt"
    } else if prog == "vessel-runtime" {
        "runtime"
    } else if prog == "vessel-images" {
        "images"
    } else if prog == "vessel-network" {
        "network"
    } else if prog == "vessel-apiserver" && p.cmdline.contains(" supervise") {
        "supervisor"
    } else if prog == "vessel-apiserver" {
        "apiserver"
    } else {
        "other"
    }
}

/// Everything the round knows about its instance.
struct Round<'a> {
    v: &'a Instance,
    home: String,
    run_base: PathBuf,
    /// Every container ID ever seen: a process or a device of a removed
    /// container is still recognised.
    ids: Mutex<BTreeSet<String>>,
    registry_ref: String,
    /// A host directory some containers bind-mount.
    bind_dir: String,
    seq: AtomicU64,
    report: Mutex<Report>,
    /// Problems already reported: one that persists is counted once.
    reported: Mutex<BTreeSet<String>>,
}

/// A container in `ls -a --format json`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: String,
    status: String,
    restarting: bool,
}

impl<'a> Round<'a> {
    fn new(v: &'a Instance, registry_ref: String, bind_dir: &Path) -> Self {
        let run_base = vessel_api::paths::Home::new(v.path()).run_base();
        Self {
            v,
            home: v.path().to_string_lossy().into_owned(),
            run_base,
            ids: Mutex::new(BTreeSet::new()),
            registry_ref,
            bind_dir: bind_dir.to_string_lossy().into_owned(),
            seq: AtomicU64::new(0),
            report: Mutex::new(Report::default()),
            reported: Mutex::new(BTreeSet::new()),
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violation(&self, what: String) {
        eprintln!("faults: VIOLATION: {what}");
        self.report().violations.push(what);
    }

    /// `ls -a --format json`, parsed; `Err` with the CLI's error.
    fn rows(&self) -> Result<Vec<Row>, String> {
        let r = vessel(self.v, &["ls", "-a", "--format", "json"]);
        if !r.out.status.success() {
            return Err(format!(
                "ls -a failed ({}): {}",
                r.out.status,
                text(&r.out.stderr).trim()
            ));
        }
        let mut rows = Vec::new();
        for l in text(&r.out.stdout).lines().filter(|l| !l.trim().is_empty()) {
            let j: serde_json::Value =
                serde_json::from_str(l).map_err(|e| format!("ls JSON line {l:?}: {e}"))?;
            rows.push(Row {
                id: j["id"].as_str().unwrap_or_default().to_string(),
                name: j["name"].as_str().unwrap_or_default().to_string(),
                status: j["status"].as_str().unwrap_or_default().to_string(),
                restarting: j["restarting"].as_bool().unwrap_or(false),
            });
        }
        let mut ids = self.ids.lock().unwrap();
        for r in &rows {
            ids.insert(r.id.clone());
        }
        Ok(rows)
    }

    /// The processes of this instance: named by its home or run directory
    /// or by one of its containers, or descended from its supervisor.
    fn instance_procs(&self) -> Vec<Proc> {
        let all = processes();
        let run_base = self.run_base.to_string_lossy().into_owned();
        let ids: Vec<String> = self
            .ids
            .lock()
            .unwrap()
            .iter()
            .map(|i| i[..12.min(i.len())].to_string())
            .collect();
        let supervisor: Option<i32> = std::fs::read_to_string(self.v.path().join("supervisor.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let parents: HashMap<i32, i32> = all.iter().map(|p| (p.pid, p.ppid)).collect();
        let descends = |mut pid: i32| {
            let Some(s) = supervisor else { return false };
            for _ in 0..64 {
                if pid == s {
                    return true;
                }
                match parents.get(&pid) {
                    Some(&pp) if pp > 1 => pid = pp,
                    _ => return false,
                }
            }
            false
        };
        all.into_iter()
            .filter(|p| p.prog != "vessel" && p.pid != std::process::id() as i32)
            .filter(|p| {
                p.cmdline.contains(&self.home)
                    || p.cmdline.contains(&run_base)
                    || ids.iter().any(|i| p.cmdline.contains(i.as_str()))
                    || descends(p.pid)
            })
            .collect()
    }

    /// The container (full ID) a process or a name belongs to.
    fn owner(&self, s: &str) -> Option<String> {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .find(|i| s.contains(&i[..12.min(i.len())]))
            .cloned()
    }

    /// Every invariant that does not hold now, as one line each (leaks
    /// start with "leak:").
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let rows = match self.rows() {
            Ok(r) => r,
            Err(e) => return vec![e],
        };
        let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let active = |id: &str| {
            by_id.get(id).is_some_and(|r| {
                matches!(
                    r.status.as_str(),
                    "running" | "paused" | "starting" | "stopping"
                )
            })
        };
        for r in &rows {
            if matches!(r.status.as_str(), "starting" | "stopping") {
                p.push(format!(
                    "{SLOW}container {} ({}) still {}",
                    r.name,
                    &r.id[..12],
                    r.status
                ));
            }
        }

        // Processes.
        let procs = self.instance_procs();
        let mut per_kind: BTreeMap<&str, Vec<&Proc>> = BTreeMap::new();
        for pr in &procs {
            per_kind.entry(kind(pr)).or_default().push(pr);
        }
        for k in ["supervisor", "apiserver", "images", "network"] {
            let n = per_kind.get(k).map_or(0, Vec::len);
            if n != 1 {
                p.push(format!("{n} {k} processes, not 1"));
            }
        }
        let mut has: BTreeSet<(String, &str)> = BTreeSet::new();
        let by_pid: HashMap<i32, &Proc> = procs.iter().map(|x| (x.pid, x)).collect();
        for pr in &procs {
            let k = kind(pr);
            if !matches!(k, "qemu" | "virtiofsd" | "passt" | "runtime") {
                continue;
            }
            // Named on its command line, or else by the nearest ancestor
            // that names it (its runtime helper's `--id`).
            let mut owner = self.owner(&pr.cmdline);
            let mut up = pr.ppid;
            for _ in 0..8 {
                if owner.is_some() {
                    break;
                }
                let Some(parent) = by_pid.get(&up) else { break };
                owner = self.owner(&parent.cmdline);
                up = parent.ppid;
            }
            match owner {
                Some(id) if active(&id) => {
                    has.insert((id, k));
                }
                Some(id) => p.push(format!(
                    "leak: {k} process {} of container {} which ls shows {}",
                    pr.pid,
                    &id[..12],
                    by_id
                        .get(id.as_str())
                        .map_or("removed".to_string(), |r| r.status.clone())
                )),
                None => p.push(format!(
                    "leak: {k} process {} of no known container: {}",
                    pr.pid, pr.cmdline
                )),
            }
        }
        for r in rows.iter().filter(|r| r.status == "running") {
            for k in ["runtime", "qemu"] {
                if !has.contains(&(r.id.clone(), k)) {
                    p.push(format!(
                        "ls shows {} ({}) running but it has no {k} process",
                        r.name,
                        &r.id[..12]
                    ));
                }
            }
        }

        // Run directories (and the sockets in them).
        for e in std::fs::read_dir(&self.run_base)
            .into_iter()
            .flatten()
            .flatten()
        {
            if !e.path().is_dir() {
                continue; // the apiserver's mark, not a container's
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match self.owner(&name) {
                Some(id) if active(&id) => {}
                _ => p.push(format!(
                    "leak: run directory {} ({:?})",
                    e.path().display(),
                    std::fs::read_dir(e.path())
                        .map(|d| d
                            .flatten()
                            .map(|x| x.file_name().to_string_lossy().into_owned())
                            .collect::<Vec<_>>())
                        .unwrap_or_default()
                )),
            }
        }
        // Container directories (overlays, logs).
        let dirs = self.v.container_dirs();
        for d in &dirs {
            if !by_id.contains_key(d.as_str()) {
                p.push(format!(
                    "leak: container directory {d} of no listed container"
                ));
            }
        }
        for r in &rows {
            if !dirs.contains(&r.id) {
                p.push(format!("ls shows {} but it has no directory", r.id));
            }
        }

        // Network: leases, TAPs, nftables.
        let mut bridges = Vec::new();
        let mut lease_ips = BTreeSet::new();
        for e in std::fs::read_dir(self.v.path().join("networks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // A save's temporary copy: only for the moment of a save; one
            // left by a killed helper goes when the next one starts.
            if name.starts_with('.') && name.contains(".tmp-") {
                p.push(format!("leak: temporary file networks/{name}"));
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let Ok(j) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(net) = serde_json::from_slice::<serde_json::Value>(&j) else {
                continue;
            };
            if let Some(b) = net["bridge"].as_str() {
                bridges.push(b.to_string());
            }
            if let Some(g) = net["gateway"].as_str() {
                lease_ips.insert(g.to_string());
            }
            for (cid, ep) in net["endpoints"].as_object().into_iter().flatten() {
                if !by_id.contains_key(cid.as_str()) {
                    p.push(format!(
                        "leak: lease {} on network {} of removed container {}",
                        ep["ip"],
                        net["name"],
                        &cid[..12.min(cid.len())]
                    ));
                }
                if let Some(ip) = ep["ip"].as_str() {
                    lease_ips.insert(ip.to_string());
                }
            }
        }
        let taps = taps(&bridges, &self.ids.lock().unwrap());
        for t in &taps {
            // vsl + the container ID's first 8 + the network ID's first 4.
            let prefix = t.get(3..11).unwrap_or_default();
            let id = self
                .ids
                .lock()
                .unwrap()
                .iter()
                .find(|i| i.starts_with(prefix))
                .cloned();
            match id {
                Some(id) if active(&id) => {}
                _ => p.push(format!("leak: TAP {t} of a container not running")),
            }
        }
        let table = format!(
            "vessel_{}",
            self.run_base
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        if let Ok(o) = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
        {
            let rules = text(&o.stdout);
            for w in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
                if w.starts_with("vsl") && !w.starts_with("vsl-") && !taps.contains(w) {
                    p.push(format!("leak: nftables rule names TAP {w}, which is gone"));
                }
                let is_ip = w.split('.').count() == 4
                    && w.split('.')
                        .all(|o| !o.is_empty() && o.parse::<u8>().is_ok());
                if is_ip && w.starts_with("10.") && !w.ends_with(".0") && !lease_ips.contains(w) {
                    p.push(format!(
                        "leak: nftables rule names {w}, which no container holds"
                    ));
                }
            }
        }

        // Mounts and loop devices under the instance.
        let run_base = self.run_base.to_string_lossy().into_owned();
        for l in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if l.contains(&self.home) || l.contains(&run_base) {
                match self.owner(l) {
                    Some(id) if active(&id) => {}
                    _ => p.push(format!("leak: mount {l}")),
                }
            }
        }
        for e in std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                if b.contains(&self.home) {
                    p.push(format!(
                        "leak: loop device {} on {}",
                        e.file_name().to_string_lossy(),
                        b.trim()
                    ));
                }
            }
        }
        // Half-written downloads.
        for e in std::fs::read_dir(self.v.path().join("content/ingest"))
            .into_iter()
            .flatten()
            .flatten()
        {
            p.push(format!("leak: download left in {}", e.path().display()));
        }

        // Restart policies.
        match rows.iter().find(|r| r.name == KEEPER) {
            Some(r) if r.status == "running" => {}
            Some(r) => p.push(format!(
                "{KEEPER} (--restart always) is {}{}, not running",
                r.status,
                if r.restarting { " (restarting)" } else { "" }
            )),
            None => p.push(format!("{KEEPER} is gone")),
        }
        match rows.iter().find(|r| r.name == SLEEPER) {
            Some(r) if r.status == "exited" && !r.restarting => {}
            Some(r) => p.push(format!(
                "{SLEEPER} (--restart always, stopped by its user) is {}{}: it was started again",
                r.status,
                if r.restarting { " (restarting)" } else { "" }
            )),
            None => p.push(format!("{SLEEPER} is gone")),
        }
        p
    }

    /// Everything needed to debug a violation.
    fn dump(&self, ids: &[String]) {
        eprintln!("----- faults: debug dump -----");
        let ls = vessel(self.v, &["ls", "-a", "--format", "json"]);
        eprintln!(
            "ls -a --format json ({}):\n{}{}",
            ls.out.status,
            text(&ls.out.stdout),
            text(&ls.out.stderr)
        );
        eprintln!("processes of the instance:");
        for p in self.instance_procs() {
            eprintln!(
                "  {} (ppid {}) [{}] {:.240}",
                p.pid,
                p.ppid,
                kind(&p),
                p.cmdline
            );
        }
        let tail = |path: PathBuf, n: usize| {
            let s = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            eprintln!("== {} (last {n} lines)", path.display());
            for l in &lines[lines.len().saturating_sub(n)..] {
                eprintln!("  {l}");
            }
        };
        for log in [
            "supervisor.log",
            "apiserver.log",
            "images.log",
            "network.log",
        ] {
            tail(self.v.path().join("logs").join(log), 30);
        }
        for id in ids {
            let d = self.v.path().join("containers").join(id);
            for f in ["runtime.log", "vmm.log", "state.json", "restart.json"] {
                tail(d.join(f), 20);
            }
        }
        eprintln!("----- end of dump -----");
    }

    /// Wait up to `limit` for every invariant; record what still fails.
    /// The time it took, when everything held.
    fn recover(&self, limit: Duration, since: Instant, what: &str) -> Option<u64> {
        let deadline = Instant::now() + limit;
        let mut last = Vec::new();
        let mut slow_noted = false;
        loop {
            // A problem already reported (one that persists) does not hold
            // every later injection up.
            let p: Vec<String> = {
                let known = self.reported.lock().unwrap().clone();
                self.problems()
                    .into_iter()
                    .filter(|x| !known.contains(x))
                    .collect()
            };
            if p.is_empty() {
                let ms = since.elapsed().as_millis() as u64;
                if ms > limit.as_millis() as u64 / 2 {
                    eprintln!("faults: slow recovery ({ms} ms) after {what}; last seen: {last:?}");
                }
                return Some(ms);
            }
            last = p.clone();
            let booting = !p.is_empty() && p.iter().all(|x| x.starts_with(SLOW));
            let boot_deadline = deadline - limit + BOOT_LIMIT.max(limit);
            if booting && Instant::now() <= boot_deadline {
                if !slow_noted {
                    slow_noted = Instant::now() > deadline;
                    if slow_noted {
                        self.report().slow_boots += 1;
                        eprintln!("faults: a boot takes longer than the bound: {p:?}");
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if Instant::now() > deadline {
                let mut seen = BTreeSet::new();
                let mut ids = Vec::new();
                for x in &p {
                    if let Some(id) = self.owner(x) {
                        ids.push(id);
                    }
                    if seen.insert(x.clone()) && self.reported.lock().unwrap().insert(x.clone()) {
                        if x.starts_with("leak:") {
                            self.report().leaks += 1;
                        }
                        self.violation(format!("after {what}, {}s later: {x}", limit.as_secs()));
                    }
                }
                ids.sort();
                ids.dedup();
                self.dump(&ids);
                return None;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The images to run containers from: the loaded one and, once
    /// pulled, the registry's.
    fn images(&self) -> Vec<String> {
        let r = vessel(self.v, &["image", "ls", "--format", "json"]);
        let mut v: Vec<String> = text(&r.out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|j| j["reference"].as_str().map(str::to_string))
            .filter(|s| !s.is_empty() && s != "<none>")
            .collect();
        if v.is_empty() {
            v.push(IMAGE.to_string());
        }
        v
    }

    /// Worker containers (neither keeper nor sleeper).
    fn worker_rows(&self) -> Vec<Row> {
        self.rows()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.name != KEEPER && r.name != SLEEPER)
            .collect()
    }

    /// One random operation, as a user would make it.
    fn operation(&self, rng: &mut Rng) -> (String, Vec<String>) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        // `stop`, `rm -f` and `exec` only touch the `run -d` containers of
        // the workers: a `run --rm` another worker follows would end with
        // 137 and no message, as Docker's does.
        let workers: Vec<Row> = self
            .worker_rows()
            .into_iter()
            .filter(|r| r.name.starts_with("fw"))
            .collect();
        let images = self.images();
        let image = rng.pick(&images).cloned().unwrap_or_else(|| IMAGE.into());
        let network = if rng.chance(50) { "default" } else { "none" };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let dice = rng.below(100);
        if workers.len() >= MAX_WORKER_CONTAINERS && dice < 60 {
            let w = rng.pick(&workers).unwrap();
            return ("rm -f".into(), s(&["rm", "-f", &w.id]));
        }
        match dice {
            0..=19 => (
                "run --rm".into(),
                s(&[
                    "run",
                    "--rm",
                    "--network",
                    network,
                    &image,
                    "sh",
                    "-c",
                    "echo fault-ok",
                ]),
            ),
            20..=39 => {
                let name = format!("fw{n}");
                let mut a = s(&["run", "-d", "--name", &name, "--network", network]);
                match rng.below(3) {
                    0 => a.extend(s(&["--restart", "always"])),
                    1 => a.extend(s(&["--restart", "on-failure:5"])),
                    _ => {}
                }
                if rng.chance(25) {
                    // A bind mount: a virtiofsd for this VM.
                    a.extend(s(&["-v", &format!("{}:/data", self.bind_dir)]));
                }
                if network == "default" && rng.chance(30) {
                    a.extend(s(&["-p", &format!("127.0.0.1:{}:80", free_port())]));
                }
                a.extend(s(&[&image, "sleep", "100000"]));
                ("run -d".into(), a)
            }
            40..=49 => match rng.pick(&workers) {
                Some(w) => ("stop".into(), s(&["stop", "-t", "1", &w.id])),
                None => ("ls -a".into(), s(&["ls", "-a"])),
            },
            50..=59 => match rng.pick(&workers) {
                Some(w) => ("rm -f".into(), s(&["rm", "-f", &w.id])),
                None => ("ls -a".into(), s(&["ls", "-a"])),
            },
            60..=74 => {
                if rng.chance(50) {
                    // A pull that downloads again.
                    let _ = vessel(self.v, &["image", "rm", &self.registry_ref]);
                }
                ("pull".into(), s(&["image", "pull", &self.registry_ref]))
            }
            75..=89 => {
                let running: Vec<&Row> = workers.iter().filter(|r| r.status == "running").collect();
                match rng.pick(&running) {
                    Some(w) => ("exec".into(), s(&["exec", &w.id, "echo", "exec-ok"])),
                    None => ("ls -a".into(), s(&["ls", "-a"])),
                }
            }
            _ => ("ls -a".into(), s(&["ls", "-a"])),
        }
    }

    /// A worker: operations until `stop`.
    fn worker(&self, seed: u64, stop: &AtomicBool) {
        let mut rng = Rng(seed);
        while !stop.load(Ordering::SeqCst) {
            let (name, args) = self.operation(&mut rng);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = vessel(self.v, &a);
            self.judge(&name, &a, &r);
            std::thread::sleep(rng.millis(0, 300));
        }
    }

    fn judge(&self, name: &str, args: &[&str], r: &Ran) {
        if let Some(why) = unclear(r, name) {
            self.violation(format!("`vessel {}`: {why}", args.join(" ")));
        }
        let ok = r.out.status.success();
        if ok && name == "run --rm" && !text(&r.out.stdout).contains("fault-ok") {
            self.violation(format!(
                "`vessel {}` succeeded without its output: {:?}",
                args.join(" "),
                text(&r.out.stdout)
            ));
        }
        if ok && name == "run -d" {
            let id = text(&r.out.stdout).trim().to_string();
            if id.len() == 64 {
                self.ids.lock().unwrap().insert(id);
            }
        }
        self.report().op(name, ok);
    }

    /// SIGKILL one process of `component`; what was hit (None: nothing
    /// to hit).
    fn inject(&self, component: &'static str, rng: &mut Rng) -> Option<String> {
        if component == "cli" {
            return self.kill_cli(rng);
        }
        let procs = self.instance_procs();
        let mut targets: Vec<&Proc> = procs.iter().filter(|p| kind(p) == component).collect();
        if matches!(component, "runtime" | "qemu") {
            // Containers only, not maintenance boots of the test.
            targets.retain(|p| self.owner(&p.cmdline).is_some());
        }
        let t = rng.pick(&targets)?;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(t.pid, libc::SIGKILL) };
        let owner = self
            .owner(&t.cmdline)
            .map(|id| format!(" of {}", &id[..12]))
            .unwrap_or_default();
        if component == "apiserver" {
            self.cli_while_apiserver_down();
        }
        Some(format!("{component} pid {}{owner}", t.pid))
    }

    /// Right after the apiserver died: a command fails with a clear error
    /// or (the supervisor was quick) works.
    fn cli_while_apiserver_down(&self) {
        let r = vessel(self.v, &["ls"]);
        if let Some(why) = unclear(&r, "ls") {
            self.violation(format!("`vessel ls` while the apiserver is down: {why}"));
        } else if !r.out.status.success() {
            let err = text(&r.out.stderr);
            self.report().cli_errors_while_down += 1;
            if !err.starts_with("vessel: error:") || err.contains("Os {") {
                self.violation(format!(
                    "`vessel ls` while the apiserver is down: not a clear error: {err}"
                ));
            }
        }
    }

    /// A CLI command killed in its middle: a `run --rm` (its container
    /// booting or running), a `run -d` (booting) or a `pull` (downloading).
    /// None if it ended before the kill.
    fn kill_cli(&self, rng: &mut Rng) -> Option<String> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let name = format!("fw{n}");
        let (what, args): (&str, Vec<&str>) = match rng.below(10) {
            0..=3 => (
                "run --rm",
                vec!["run", "--rm", IMAGE, "sh", "-c", "sleep 2; echo fault-ok"],
            ),
            4..=6 => (
                "run -d",
                vec![
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--restart",
                    "always",
                    IMAGE,
                    "sleep",
                    "100000",
                ],
            ),
            _ => {
                let _ = vessel(self.v, &["image", "rm", &self.registry_ref]);
                ("pull", vec!["image", "pull", &self.registry_ref])
            }
        };
        let (child, finish) = spawn(self.v, &args);
        std::thread::sleep(rng.millis(100, 2000));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let r = finish(child, false);
        if r.out.status.code().is_some() {
            // It ended before the kill: judged as any command.
            self.judge(what, &args, &r);
            None
        } else {
            Some(format!("cli `{what}` mid-command"))
        }
    }

    /// Every listed image runs.
    fn images_run(&self) {
        for image in self.images() {
            let r = vessel(
                self.v,
                &["run", "--rm", "--network", "none", &image, "true"],
            );
            self.report().image_runs += 1;
            if !r.out.status.success() {
                self.violation(format!(
                    "listed image {image} does not run: {}",
                    text(&r.out.stderr).trim()
                ));
            }
        }
    }

    /// Keep the worker containers few: remove the oldest beyond the limit.
    fn trim(&self) {
        let w = self.worker_rows();
        if w.len() > MAX_WORKER_CONTAINERS {
            for r in &w[MAX_WORKER_CONTAINERS..] {
                let _ = vessel(self.v, &["rm", "-f", &r.id]);
            }
        }
    }

    /// The pid of the keeper's QEMU, when it runs.
    fn keeper_vmm(&self) -> Option<i64> {
        let r = vessel(self.v, &["inspect", KEEPER]);
        let j: serde_json::Value = serde_json::from_slice(&r.out.stdout).ok()?;
        j[0]["state"]["vmm_pid"].as_i64()
    }
}

/// TAP devices of the instance: ports of its bridges, and any `vsl` device
/// named after one of its containers.
fn taps(bridges: &[String], ids: &BTreeSet<String>) -> BTreeSet<String> {
    let mut t = BTreeSet::new();
    for b in bridges {
        for e in std::fs::read_dir(format!("/sys/class/net/{b}/brif"))
            .into_iter()
            .flatten()
            .flatten()
        {
            t.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    for e in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("vsl")
            && !n.starts_with("vsl-")
            && n.len() >= 11
            && ids.iter().any(|i| i.starts_with(&n[3..11]))
        {
            t.insert(n);
        }
    }
    t
}

fn start_keeper_and_sleeper(v: &Instance) {
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            KEEPER,
            "--restart",
            "always",
            IMAGE,
            "sleep",
            "100000",
        ]),
        "run the keeper",
    );
    assert_ok(
        &v.vessel(&[
            "run",
            "-d",
            "--name",
            SLEEPER,
            "--network",
            "none",
            "--restart",
            "always",
            IMAGE,
            "sleep",
            "100000",
        ]),
        "run the sleeper",
    );
    assert_ok(&v.vessel(&["stop", "-t", "1", SLEEPER]), "stop the sleeper");
}

#[test]
fn sigkill_anywhere_leaves_the_truth_and_no_leaks() {
    let seed = env_u64("VESSEL_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id())
    });
    let injections = env_u64("VESSEL_FAULT_INJECTIONS").unwrap_or(50) as usize;
    let limit = Duration::from_secs(env_u64("VESSEL_FAULT_RECOVERY_SECS").unwrap_or(20));
    eprintln!(
        "faults: seed {seed} (replay with VESSEL_FAULT_SEED={seed}), {injections} injections, recovery bound {}s",
        limit.as_secs()
    );
    let started = Instant::now();

    let reg = Registry::plain();
    reg.push(
        &format!(
            "oci-archive:{}",
            required_env("VESSEL_TEST_IMAGE").display()
        ),
        "faults/busybox:latest",
        &[],
    );
    let v = Instance::started();
    // For bench/faults.py: what to clean up if it is interrupted.
    eprintln!("faults: home {}", v.path().display());
    let bind = tempfile::tempdir().unwrap();
    std::fs::write(bind.path().join("hello"), b"from the host\n").unwrap();
    let round = Round::new(&v, reg.reference("faults/busybox:latest"), bind.path());
    start_keeper_and_sleeper(&v);
    assert!(
        round.recover(limit, Instant::now(), "setup").is_some(),
        "the instance is not clean before any fault"
    );

    let mut rng = Rng(seed);
    let mut order: Vec<&'static str> = Vec::new();
    let (mut i, mut attempts) = (0, 0);
    while i < injections && attempts < 2 * injections {
        attempts += 1;
        if order.is_empty() {
            // Each component once per block of 7, in a random order.
            order = COMPONENTS.to_vec();
            for j in (1..order.len()).rev() {
                order.swap(j, rng.below(j + 1));
            }
        }
        let component = order.pop().unwrap();
        let stop = AtomicBool::new(false);
        let workers = 1 + rng.below(2);
        let seeds: Vec<u64> = (0..workers).map(|_| rng.next()).collect();
        let keeper_before = round.keeper_vmm();
        let (hit, at) = std::thread::scope(|s| {
            for ws in &seeds {
                let (round, stop) = (&round, &stop);
                s.spawn(move || round.worker(*ws, stop));
            }
            std::thread::sleep(rng.millis(300, 3000));
            let hit = round.inject(component, &mut rng);
            let at = Instant::now();
            std::thread::sleep(rng.millis(0, 1000));
            stop.store(true, Ordering::SeqCst);
            (hit, at)
        });
        let Some(hit) = hit else {
            eprintln!("faults: [{i}] {component}: nothing to hit (tried again later)");
            *round.report().skipped.entry(component).or_default() += 1;
            order.insert(0, component);
            continue;
        };
        *round.report().injections.entry(component).or_default() += 1;
        let what = format!("injection {i} (SIGKILL {hit})");
        let quiet = Instant::now();
        match round.recover(limit, at, &what) {
            Some(ms) => {
                let settle = quiet.elapsed().as_millis() as u64;
                eprintln!(
                    "faults: [{i}] {hit}: clean after {ms} ms ({settle} ms after the workers stopped)"
                );
                round.report().settles.push(settle);
                round
                    .report()
                    .recoveries
                    .entry(component)
                    .or_default()
                    .push(ms);
            }
            None => eprintln!("faults: [{i}] {hit}: NOT clean"),
        }
        let keeper_after = round.keeper_vmm();
        if keeper_after.is_some() && keeper_before.is_some() && keeper_after != keeper_before {
            round.report().keeper_comebacks += 1;
        }
        round.trim();
        i += 1;
        if i % PHASE == 0 || i == injections {
            round.images_run();
        }
    }

    // The end: everything removed, nothing left.
    for r in round.rows().unwrap_or_default() {
        let _ = vessel(&v, &["rm", "-f", &r.id]);
    }
    let leftovers: Vec<String> = round
        .problems()
        .into_iter()
        .filter(|p| p.starts_with("leak:"))
        .collect();
    for l in leftovers {
        round.report().leaks += 1;
        round.violation(format!("after removing everything: {l}"));
    }

    let report = round.report().json(seed, started.elapsed().as_secs());
    println!("FAULTS-REPORT {report}");
    eprintln!("FAULTS-REPORT {report}");
    let violations = round.report().violations.clone();
    assert!(
        violations.is_empty(),
        "{} invariant violations (replay with VESSEL_FAULT_SEED={seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );
}
