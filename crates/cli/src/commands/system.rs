//! `vessel system start|stop|status|logs|df`.

use crate::api::Api;
use crate::cli::SystemCommand;
use anyhow::{bail, Context, Result};
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vessel_api::fsutil::pid_alive;
use vessel_api::paths::sibling_binary;
use vessel_api::types::SystemInfo;

pub fn dispatch(api: &Api, c: SystemCommand) -> Result<i32> {
    match c {
        SystemCommand::Start { group, subnet } => start(api, group.as_deref(), subnet.as_deref()),
        SystemCommand::Stop => stop(api),
        SystemCommand::Install(args) => super::install::install(api, &args),
        SystemCommand::Uninstall(args) => super::install::uninstall(api, &args),
        SystemCommand::InstallShim(args) => super::shim::install_shim(&args),
        SystemCommand::Status { format } => status(api, format.as_deref()),
        SystemCommand::Df { verbose, format } => df(api, verbose, format.as_deref()),
        SystemCommand::Logs => {
            // Under systemd the apiserver writes to the journal; its
            // helpers keep their files.
            if let Some((user, unit)) = super::install::managed_by_systemd(&api.home) {
                crate::outln!("==> journalctl -u {unit}.service <==");
                let mut cmd = std::process::Command::new("journalctl");
                if user {
                    cmd.arg("--user");
                }
                let status = cmd
                    .args(["--no-pager", "-u", &format!("{unit}.service")])
                    .status();
                if let Err(e) = status {
                    eprintln!("vessel: running journalctl: {e}");
                }
            }
            for name in [
                "supervisor.log",
                "apiserver.log",
                "images.log",
                "network.log",
            ] {
                let p = api.home.logs_dir().join(name);
                if let Ok(text) = fs::read_to_string(&p) {
                    crate::outln!("==> {} <==\n{text}", p.display());
                }
            }
            Ok(0)
        }
    }
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn start(api: &Api, group: Option<&str>, subnet: Option<&str>) -> Result<i32> {
    if let Some(s) = subnet {
        super::network::check_subnet(s)?;
    }
    if api.is_up() {
        let info: SystemInfo = api.call("GET", "/v1/system/info", None)?;
        crate::outln!(
            "vessel is already running (apiserver pid {}, VESSEL_HOME={})",
            info.apiserver_pid,
            info.home.display()
        );
        return Ok(0);
    }
    let home = &api.home;
    if let Some((user, name)) = super::install::managed_by_systemd(home) {
        // Installed as systemd units: systemd supervises it.
        eprintln!("vessel: starting {name}.service (installed with `vessel system install`)");
        if group.is_some() || subnet.is_some() {
            eprintln!(
                "vessel: --group and --subnet are ignored here: the units keep the ones given \
                 to `vessel system install` (install again to change them)"
            );
        }
        super::install::start_units(user, &name)?;
    } else if let Some(pid) = read_pid(&home.supervisor_pid()).filter(|p| pid_alive(*p)) {
        // A supervisor is there, restarting its apiserver: wait for it.
        eprintln!("vessel: a supervisor (pid {pid}) is already running; waiting for its apiserver");
    } else {
        fs::create_dir_all(home.logs_dir())
            .with_context(|| format!("creating {}", home.logs_dir().display()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.logs_dir().join("supervisor.log"))?;
        let bin = sibling_binary("vessel-apiserver");
        let mut cmd = Command::new(&bin);
        cmd.arg("supervise").arg("--home").arg(home.root());
        if let Some(g) = group {
            cmd.arg("--group").arg(g);
        }
        // Inherited by the apiserver and vessel-network, which uses it when
        // it creates the default network.
        if let Some(s) = subnet {
            cmd.env("VESSEL_SUBNET", s);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if api.is_up() {
            let info: SystemInfo = api.call("GET", "/v1/system/info", None)?;
            crate::outln!(
                "vessel started: apiserver pid {}, accelerator {} ({})",
                info.apiserver_pid,
                info.accel,
                info.accel_reason
            );
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the apiserver did not come up within 20 s; see {}",
        home.logs_dir().join("apiserver.log").display()
    )
}

fn stop(api: &Api) -> Result<i32> {
    let home = &api.home;
    let supervisor = read_pid(&home.supervisor_pid()).filter(|p| pid_alive(*p));
    let apiserver = read_pid(&home.apiserver_pid()).filter(|p| pid_alive(*p));
    if api.is_up() {
        let info: SystemInfo = api.call("GET", "/v1/system/info", None)?;
        // Read the whole answer: hanging up early must not cancel the stop.
        let _: serde_json::Value = api.call("POST", "/v1/system/shutdown", None)?;
        if let Some(unit) = systemd_unit(&info.supervisor) {
            return stop_systemd(info.apiserver_pid, &unit);
        }
    } else if let Some(pid) = supervisor {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    } else {
        crate::outln!("vessel is not running");
        return Ok(0);
    }
    let started = Instant::now();
    let mut escalated = 0;
    while started.elapsed() < Duration::from_secs(60) {
        let gone = |p: Option<i32>| p.map(|p| !pid_alive(p)).unwrap_or(true);
        if gone(supervisor) && gone(apiserver) && !api.is_up() {
            // An apiserver ended by a signal leaves its socket behind.
            let _ = fs::remove_file(home.api_socket());
            crate::outln!("vessel stopped");
            return Ok(0);
        }
        // Containers get 5 s each (in parallel); past that, end the services
        // by signal: SIGTERM first, SIGKILL if they still linger.
        let signal = match (started.elapsed().as_secs(), escalated) {
            (20.., 0) => Some(libc::SIGTERM),
            (30.., 1) => Some(libc::SIGKILL),
            _ => None,
        };
        if let Some(sig) = signal {
            escalated += 1;
            for pid in [supervisor, apiserver]
                .into_iter()
                .flatten()
                .filter(|p| pid_alive(*p))
            {
                eprintln!("vessel: process {pid} is still running; sending signal {sig}");
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, sig) };
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("vessel did not stop within 60 s")
}

/// `NAME` of a supervisor shown as `systemd (NAME.service)...`.
fn systemd_unit(supervisor: &str) -> Option<String> {
    let rest = supervisor.strip_prefix("systemd (")?;
    let (unit, _) = rest.split_once(".service)")?;
    Some(unit.to_string())
}

/// `system stop` of an apiserver run by systemd: once it has stopped the
/// containers and ended, stop its socket, so that no request (not even
/// our own check) starts it again.
fn stop_systemd(apiserver: i32, unit: &str) -> Result<i32> {
    let started = Instant::now();
    while pid_alive(apiserver) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the apiserver (pid {apiserver}) did not end within 60 s; see                  `journalctl -u {unit}.service`"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() } != 0;
    super::install::stop_socket(user, unit)?;
    crate::outln!("vessel stopped ({unit}.socket too; `vessel system start` starts it again)");
    Ok(0)
}

/// Whether containers start from VM templates, and how many there are.
fn templates_line(info: &SystemInfo) -> String {
    if !info.templates_enabled {
        return "off (VESSEL_TEMPLATES=0): every VM boots its kernel".into();
    }
    match info.templates.len() {
        0 => "on; none built yet (the first container of each size builds one)".into(),
        n => format!(
            "on; {n} built (containers with bind mounts, shared or block volumes or several \
             networks boot their kernel)"
        ),
    }
}

fn status(api: &Api, format: Option<&str>) -> Result<i32> {
    if !api.is_up() {
        crate::outln!(
            "vessel is not running (VESSEL_HOME={}); start it with `vessel system start`",
            api.home.root().display()
        );
        return Ok(1);
    }
    let info: SystemInfo = api.call("GET", "/v1/system/info", None)?;
    if format == Some("json") {
        crate::outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    crate::outln!(
        "apiserver:    running (pid {}, version {})",
        info.apiserver_pid,
        info.version
    );
    crate::outln!("supervisor:   {}", info.supervisor);
    crate::outln!("home:         {}", info.home.display());
    for h in &info.helpers {
        let state = match (h.running, h.pid, &h.error) {
            (true, Some(pid), _) => format!("running (pid {pid})"),
            (true, None, _) => "running (one per container)".to_string(),
            (false, _, Some(e)) => format!("not running: {e}"),
            (false, _, None) => "not running".to_string(),
        };
        let label = format!("{}:", h.name);
        crate::outln!("{label:<13} {state}");
    }
    crate::outln!("accelerator:  {} ({})", info.accel, info.accel_reason);
    if let Some(c) = &info.vmm_confinement {
        crate::outln!("vmm jail:     {c}");
    }
    let exists = |p: &std::path::Path| if p.is_file() { "" } else { " (MISSING)" };
    crate::outln!(
        "kernel:       {}{}",
        info.kernel.display(),
        exists(&info.kernel)
    );
    crate::outln!(
        "initramfs:    {}{}",
        info.initrd.display(),
        exists(&info.initrd)
    );
    crate::outln!("agent:        {}", info.agent_protocol);
    crate::outln!("templates:    {}", templates_line(&info));
    for t in &info.templates {
        crate::outln!(
            "  {}  {} CPU, {} MiB, {}: state {:.1} MiB, built in {:.1} s, {} ago",
            t.key,
            t.cpus,
            t.memory_mib,
            if t.nic {
                "network device"
            } else {
                "no network device"
            },
            t.state_bytes as f64 / (1024.0 * 1024.0),
            t.build_ms as f64 / 1000.0,
            crate::format::human_duration(crate::format::since(t.created_ms))
        );
    }
    crate::outln!(
        "containers:   {} running, {} in all",
        info.containers_running,
        info.containers_total
    );
    let mut nets: Vec<String> = info
        .networks
        .iter()
        .map(|n| {
            format!(
                "{} {} ({}{}, {} containers)",
                n.name,
                n.subnet,
                n.bridge,
                if n.internal { ", internal" } else { "" },
                n.containers.len()
            )
        })
        .collect();
    let net_up = info
        .helpers
        .iter()
        .any(|h| h.name == "vessel-network" && h.running);
    let rootless = info
        .network_mode
        .as_deref()
        .is_some_and(|m| m.starts_with("rootless"));
    if let Some(mode) = &info.network_mode {
        crate::outln!("network:      {mode}");
    }
    if rootless {
        nets = vec![
            "none to manage (each container has its own private 10.0.2.0/24 with address 10.0.2.15)"
                .into(),
        ];
    } else if !net_up {
        nets = vec![
            "unavailable (vessel-network is not running; `vessel run --network none` still works)"
                .into(),
        ];
    } else if nets.is_empty() {
        nets.push("none yet (the default network is created on first use)".into());
    }
    for (i, n) in nets.iter().enumerate() {
        crate::outln!(
            "{}{n}",
            if i == 0 {
                "networks:     "
            } else {
                "              "
            }
        );
    }
    Ok(0)
}

/// One row of `system df`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct DfRow {
    #[serde(rename = "type")]
    kind: &'static str,
    total: usize,
    active: usize,
    /// Unknown for containers (their writable layers are not measured yet).
    size_bytes: Option<u64>,
    reclaimable_bytes: Option<u64>,
}

/// The rows of `system df`: images (active: used by a container), containers
/// (active: running) and volumes (active: used by a container).
fn df_rows(
    images: &[vessel_api::types::ImageSummary],
    containers: &[vessel_api::types::ContainerSummary],
    volumes: &[vessel_api::mounts::VolumeInfo],
) -> Vec<DfRow> {
    let used: std::collections::BTreeSet<&str> =
        containers.iter().map(|c| c.image.as_str()).collect();
    let image_active = |i: &&vessel_api::types::ImageSummary| used.contains(i.reference.as_str());
    let volume_active = |v: &&vessel_api::mounts::VolumeInfo| !v.containers.is_empty();
    vec![
        DfRow {
            kind: "Images",
            total: images.len(),
            active: images.iter().filter(image_active).count(),
            size_bytes: Some(images.iter().map(|i| i.size).sum()),
            reclaimable_bytes: Some(
                images
                    .iter()
                    .filter(|i| !image_active(i))
                    .map(|i| i.size)
                    .sum(),
            ),
        },
        DfRow {
            kind: "Containers",
            total: containers.len(),
            active: containers.iter().filter(|c| c.status.is_active()).count(),
            size_bytes: None,
            reclaimable_bytes: None,
        },
        DfRow {
            kind: "Local Volumes",
            total: volumes.len(),
            active: volumes.iter().filter(volume_active).count(),
            size_bytes: Some(volumes.iter().map(|v| v.usage_bytes).sum()),
            reclaimable_bytes: Some(
                volumes
                    .iter()
                    .filter(|v| !volume_active(v))
                    .map(|v| v.usage_bytes)
                    .sum(),
            ),
        },
    ]
}

fn df(api: &Api, verbose: bool, format: Option<&str>) -> Result<i32> {
    use crate::format::{human_size, table};
    let images: Vec<vessel_api::types::ImageSummary> = api.call("GET", "/v1/images", None)?;
    let containers: Vec<vessel_api::types::ContainerSummary> =
        api.call("GET", "/v1/containers?all=true", None)?;
    let volumes: Vec<vessel_api::mounts::VolumeInfo> = api.call("GET", "/v1/volumes", None)?;
    let rows = df_rows(&images, &containers, &volumes);
    match format {
        Some("json") => {
            for r in &rows {
                crate::outln!("{}", serde_json::to_string(r)?);
            }
            return Ok(0);
        }
        None | Some("table") => {}
        Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    let size = |b: Option<u64>| b.map(human_size).unwrap_or_else(|| "-".into());
    let mut t = vec![vec![
        "TYPE".to_string(),
        "TOTAL".into(),
        "ACTIVE".into(),
        "SIZE".into(),
        "RECLAIMABLE".into(),
    ]];
    for r in &rows {
        t.push(vec![
            r.kind.to_string(),
            r.total.to_string(),
            r.active.to_string(),
            size(r.size_bytes),
            size(r.reclaimable_bytes),
        ]);
    }
    crate::out!("{}", table(&t));
    if verbose {
        crate::outln!("\nLocal Volumes space usage:\n");
        let mut t = vec![vec![
            "VOLUME NAME".to_string(),
            "BACKING".into(),
            "LINKS".into(),
            "SIZE".into(),
        ]];
        for v in &volumes {
            t.push(vec![
                v.name.clone(),
                format!("{:?}", v.backing).to_lowercase(),
                v.containers.len().to_string(),
                human_size(v.usage_bytes),
            ]);
        }
        crate::out!("{}", table(&t));
    }
    Ok(0)
}

#[cfg(test)]
mod unit_tests {
    #[test]
    fn the_unit_is_read_from_the_supervisor_field() {
        assert_eq!(
            super::systemd_unit("systemd (vessel.service), socket-activated").as_deref(),
            Some("vessel")
        );
        assert_eq!(
            super::systemd_unit("systemd (vessel-1a2b3c4d.service)").as_deref(),
            Some("vessel-1a2b3c4d")
        );
        assert_eq!(super::systemd_unit("vessel-supervisor"), None);
        assert_eq!(
            super::systemd_unit("none (foreground), socket-activated"),
            None
        );
    }
}

#[cfg(test)]
mod df_tests {
    use super::*;
    use vessel_api::mounts::{VolumeBacking, VolumeInfo};
    use vessel_api::types::{ContainerSummary, ImageSummary, Status};

    #[test]
    fn rows_count_what_is_used() {
        let image = |r: &str, size| ImageSummary {
            reference: r.into(),
            id: "sha256:x".into(),
            digest: "sha256:y".into(),
            created: None,
            size,
        };
        let container = |image: &str, status| ContainerSummary {
            id: "c".into(),
            name: "c".into(),
            image: image.into(),
            command: "true".into(),
            created_ms: 0,
            status,
            exit_code: None,
            started_ms: None,
            finished_ms: None,
            ports: vec![],
            health: None,
            restarting: false,
            killed_by: None,
        };
        let volume = |name: &str, usage, users: usize| VolumeInfo {
            name: name.into(),
            driver: "local".into(),
            backing: VolumeBacking::Block,
            mountpoint: "/x".into(),
            created_ms: 0,
            size_bytes: Some(1 << 30),
            usage_bytes: usage,
            options: Default::default(),
            labels: Default::default(),
            anonymous: false,
            containers: vec!["c".into(); users],
        };
        let rows = df_rows(
            &[image("a:1", 100), image("b:1", 50)],
            &[
                container("a:1", Status::Running),
                container("a:1", Status::Exited),
            ],
            &[volume("v1", 4096, 1), volume("v2", 8192, 0)],
        );
        assert_eq!(
            (
                rows[0].total,
                rows[0].active,
                rows[0].size_bytes,
                rows[0].reclaimable_bytes
            ),
            (2, 1, Some(150), Some(50))
        );
        assert_eq!(
            (rows[1].total, rows[1].active, rows[1].size_bytes),
            (2, 1, None)
        );
        assert_eq!(
            (
                rows[2].kind,
                rows[2].total,
                rows[2].active,
                rows[2].size_bytes,
                rows[2].reclaimable_bytes
            ),
            ("Local Volumes", 2, 1, Some(12288), Some(8192))
        );
    }
}
