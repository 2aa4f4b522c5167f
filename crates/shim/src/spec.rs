//! An OCI bundle's `config.json`, read as far as vessel uses it, and its
//! translation into the container record `vessel-runtime` reads
//! (`containers/<id>/config.json`, a [`ContainerConfig`]).
//!
//! Mounts the guest makes itself (`/proc`, `/sys`, `/dev`, `/dev/pts`,
//! `/dev/shm`, `/dev/mqueue`, cgroup) are left out; a bind mount of a host
//! directory becomes a virtio-fs share, as `vessel run -v` does. Mounts
//! vessel cannot give a VM yet (a single file, other filesystem types) are
//! skipped and reported, so the shim can log them.

use agent_protocol::{ProcessSpec, Rlimit};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vessel_api::mounts::{MountSpec, MountType};
use vessel_api::types::{AttachStreams, ContainerConfig};

/// The parts of an OCI runtime spec the shim reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Kept for pods: `io.kubernetes.cri.container-type`,
    /// `io.kubernetes.cri.sandbox-id`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// `process` of the spec (also an exec's whole spec).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub rlimits: Vec<OciRlimit>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OciRlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

/// One of `linux.namespaces`: a type, and the path of an existing one to
/// join (absent: a new one).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Spec {
    /// The existing network namespace the task joins (CNI's, or
    /// `ctr run --with-ns network:PATH`): the VM's network comes from it.
    pub fn network_namespace(&self) -> Option<&Path> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|n| n.kind == "network")?
            .path
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Whether the task asks for a PID namespace of its own: a `pid`
    /// namespace without a path (CRI's default for a pod's container; a
    /// path is the sandbox's, `shareProcessNamespace`).
    pub fn own_pid_namespace(&self) -> bool {
        self.linux.as_ref().is_some_and(|l| {
            l.namespaces.iter().any(|n| {
                n.kind == "pid" && n.path.as_ref().is_none_or(|p| p.as_os_str().is_empty())
            })
        })
    }

    /// A CRI pod's application container (not its sandbox): it shares the
    /// sandbox's network namespace, whose one TAP the sandbox's VM has.
    pub fn is_pod_container(&self) -> bool {
        crate::pod::is_container(&self.annotations)
    }

    /// `linux.resources.memory.limit`, in bytes, when set.
    pub fn memory_limit(&self) -> Option<u64> {
        self.resources()
            .and_then(|r| r.memory.as_ref())
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .map(|l| l as u64)
    }

    /// The CPU limit as cgroup v2's `cpu.max` takes it: (quota, period)
    /// in microseconds; none without a positive quota. The period defaults
    /// to 100 ms, as runc's.
    pub fn cpu_max(&self) -> Option<(u64, u64)> {
        let cpu = self.cpu()?;
        let quota = cpu.quota.filter(|q| *q > 0)? as u64;
        let period = cpu.period.filter(|p| *p > 0).unwrap_or(100_000);
        Some((quota, period))
    }

    /// The CPU weight as cgroup v2's `cpu.weight` takes it (1–10000), from
    /// the cgroup v1 `shares` (2–262144) CRI gives, by runc's conversion.
    pub fn cpu_weight(&self) -> Option<u64> {
        let shares = self.cpu()?.shares.filter(|s| *s > 0)?;
        let shares = shares.clamp(2, 262_144);
        Some(1 + ((shares - 2) * 9999) / 262_142)
    }

    fn cpu(&self) -> Option<&Cpu> {
        self.resources().and_then(|r| r.cpu.as_ref())
    }

    fn resources(&self) -> Option<&Resources> {
        self.linux.as_ref().and_then(|l| l.resources.as_ref())
    }

    /// The host file bind-mounted on `/etc/resolv.conf` (CRI's), if any.
    pub fn resolv_conf(&self) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|m| m.destination == "/etc/resolv.conf" && !m.source.is_empty())
            .map(|m| Path::new(m.source.as_str()))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

/// `linux.resources.cpu`: what CRI makes of a container's CPU request
/// (`shares`) and limit (`quota` per `period`, microseconds).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub shares: Option<u64>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
}

/// Errors reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("Could not read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{} is not a valid OCI runtime spec", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("The bundle's spec has no process")]
    NoProcess,
    #[error("The bundle's spec has an empty process.args")]
    NoArgs,
}

/// Read `BUNDLE/config.json`.
pub fn read(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| SpecError::Read(path.clone(), e))?;
    serde_json::from_slice(&text).map_err(|e| SpecError::Parse(path, e))
}

/// Where the guest makes these itself (vminitd's `mount_rootfs`).
const GUEST_MADE: &[&str] = &[
    "/proc",
    "/sys",
    "/sys/fs/cgroup",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
];

/// Mount flags and the filesystem's data string from a containerd mount's
/// options (`ro`, `rbind`, ... are flags; the rest, e.g. overlayfs's
/// `lowerdir=`, is data).
pub fn mount_flags(options: &[String]) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Mount one of the snapshot's mounts on `target` (the library's helper
/// waits for a child through its reaper, which this shim does not run).
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> nix::Result<()> {
    let (flags, data) = mount_flags(options);
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(Some(source), target, Some(kind), flags, data)
}

/// A host file or directory bound into a pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// The bind mounts of a pod's container (files and directories: the
/// kubelet's `/etc/hosts`, `/etc/resolv.conf`, volumes), and the mounts
/// left out with why. What the guest makes itself is left out silently.
pub fn pod_binds(spec: &Spec) -> (Vec<HostBind>, Vec<String>) {
    let mut binds = Vec::new();
    let mut skipped = Vec::new();
    for m in &spec.mounts {
        if GUEST_MADE.contains(&m.destination.trim_end_matches('/')) {
            continue;
        }
        let bind = m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            let kind = if m.kind.is_empty() {
                "untyped"
            } else {
                &m.kind
            };
            skipped.push(format!(
                "{} ({kind} mounts are not supported yet)",
                m.destination
            ));
        } else if !m.destination.starts_with('/') || m.destination.split('/').any(|c| c == "..") {
            skipped.push(format!("{} (not a plain absolute path)", m.destination));
        } else if std::fs::symlink_metadata(&m.source).is_err() {
            skipped.push(format!(
                "{} (its source {} does not exist)",
                m.destination, m.source
            ));
        } else {
            binds.push(HostBind {
                source: PathBuf::from(&m.source),
                destination: m.destination.clone(),
                readonly: m.options.iter().any(|o| o == "ro"),
            });
        }
    }
    (binds, skipped)
}

/// The VM's size and assets, decided by the shim (not the spec).
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub accel: String,
    pub cpus: u32,
    /// Used when the spec sets no memory limit.
    pub memory_mib: u64,
}

/// The OCI process as vminitd takes it.
pub fn process_spec(p: &Process, stdin: bool) -> Result<ProcessSpec, SpecError> {
    if p.args.is_empty() {
        return Err(SpecError::NoArgs);
    }
    let rlimits = p
        .rlimits
        .iter()
        .map(|r| Rlimit {
            name: r.kind.trim_start_matches("RLIMIT_").to_ascii_lowercase(),
            soft: r.soft,
            hard: r.hard,
        })
        .collect::<Vec<_>>();
    Ok(ProcessSpec {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: if p.cwd.is_empty() {
            "/".into()
        } else {
            p.cwd.clone()
        },
        user: format!("{}:{}", p.user.uid, p.user.gid),
        rlimits: (!rlimits.is_empty()).then_some(rlimits),
        terminal: p.terminal,
        stdin,
        root: None,
        binds: Vec::new(),
        memory_max: None,
        cpu_max: None,
        cpu_weight: None,
        own_pids: false,
    })
}

/// The translation: the record, and the mounts left out with why.
#[derive(Debug)]
pub struct Translated {
    pub config: ContainerConfig,
    pub skipped: Vec<String>,
}

/// Build the container record for task `id` of `bundle` (its `rootfs/`
/// becomes the VM's root over virtio-fs). `stdin`: containerd gave a
/// stdin FIFO.
pub fn translate(
    id: &str,
    bundle: &Path,
    spec: &Spec,
    stdin: bool,
    vm: &VmSettings,
    now_ms: u64,
) -> Result<Translated, SpecError> {
    let process = process_spec(spec.process.as_ref().ok_or(SpecError::NoProcess)?, stdin)?;
    let mut skipped = Vec::new();
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        if GUEST_MADE.contains(&m.destination.trim_end_matches('/')) {
            continue;
        }
        let bind = m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            skipped.push(format!(
                "{} ({} mounts are not supported yet)",
                m.destination,
                if m.kind.is_empty() {
                    "untyped"
                } else {
                    &m.kind
                }
            ));
            continue;
        }
        if !Path::new(&m.source).is_dir() {
            skipped.push(format!(
                "{} (its source {} is not a directory; single-file bind mounts are not supported yet)",
                m.destination, m.source
            ));
            continue;
        }
        // Through serde: the rest of a bind's fields keep their defaults.
        let bind: Result<MountSpec, _> = serde_json::from_value(serde_json::json!({
            "type": "bind",
            "source": m.source,
            "target": m.destination,
            "readonly": m.options.iter().any(|o| o == "ro"),
        }));
        match bind {
            Ok(b) if b.kind == MountType::Bind => mounts.push(b),
            _ => skipped.push(format!("{} (not a valid bind mount)", m.destination)),
        }
    }
    let memory_mib = spec
        .memory_limit()
        .map(|l| l.div_ceil(1 << 20))
        .unwrap_or(vm.memory_mib);
    let hostname = if spec.hostname.is_empty() {
        id.chars().take(12).collect()
    } else {
        spec.hostname.clone()
    };
    let config = ContainerConfig {
        id: id.to_string(),
        name: id.to_string(),
        image: String::new(),
        image_id: String::new(),
        created_ms: now_ms,
        process,
        hostname,
        cpus: vm.cpus,
        memory_mib,
        auto_remove: false,
        rootfs_base: PathBuf::new(),
        rootfs_dir: Some(bundle.join("rootfs")),
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        accel: vm.accel.clone(),
        network: vessel_api::network::NO_NETWORK.to_string(),
        ports: Vec::new(),
        aliases: Vec::new(),
        attach: AttachStreams::default_for(stdin),
        healthcheck: None,
        mounts,
        read_only: false,
        restart: Default::default(),
        no_template: true,
    };
    Ok(Translated { config, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmSettings {
        VmSettings {
            kernel: "/k".into(),
            initrd: "/i".into(),
            accel: "tcg".into(),
            cpus: 1,
            memory_mib: 512,
        }
    }

    #[test]
    fn a_pid_namespace_without_a_path_is_the_container_s_own() {
        let spec = |ns: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"process": {{"args": ["true"]}}, "root": {{"path": "rootfs"}},
                    "linux": {{"namespaces": [{ns}]}}}}"#
            ))
            .unwrap()
        };
        assert!(spec(r#"{"type": "pid"}, {"type": "mount"}"#).own_pid_namespace());
        assert!(spec(r#"{"type": "pid", "path": ""}"#).own_pid_namespace());
        assert!(!spec(r#"{"type": "pid", "path": "/proc/7/ns/pid"}"#).own_pid_namespace());
        assert!(!spec(r#"{"type": "mount"}"#).own_pid_namespace());
        assert!(!Spec::default().own_pid_namespace());
    }

    #[test]
    fn cpu_limits_as_cgroup_v2_takes_them() {
        let spec = |cpu: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"process": {{"args": ["true"]}}, "root": {{"path": "rootfs"}},
                    "linux": {{"resources": {{"cpu": {cpu}}}}}}}"#
            ))
            .unwrap()
        };
        // CRI's 500m limit and 512 shares (a 0.5 CPU request).
        let s = spec(r#"{"shares": 512, "quota": 50000, "period": 100000}"#);
        assert_eq!(s.cpu_max(), Some((50_000, 100_000)));
        assert_eq!(s.cpu_weight(), Some(20));
        // No limit (quota -1 or absent), the period's default, the ends
        // of the shares' range.
        assert_eq!(spec(r#"{"quota": -1, "period": 100000}"#).cpu_max(), None);
        assert_eq!(
            spec(r#"{"quota": 20000}"#).cpu_max(),
            Some((20_000, 100_000))
        );
        assert_eq!(spec(r#"{"shares": 2}"#).cpu_weight(), Some(1));
        assert_eq!(spec(r#"{"shares": 262144}"#).cpu_weight(), Some(10_000));
        assert_eq!(spec(r#"{"shares": 1024}"#).cpu_weight(), Some(39));
        assert_eq!(spec("{}").cpu_weight(), None);
    }

    #[test]
    fn translates_what_ctr_run_writes() {
        let host = tempfile::tempdir().unwrap();
        let src = host.path().to_str().unwrap();
        let json = format!(
            r#"{{
            "ociVersion": "1.0.2",
            "process": {{
                "terminal": true,
                "user": {{"uid": 1000, "gid": 100}},
                "args": ["sh", "-c", "exit 7"],
                "env": ["PATH=/usr/bin:/bin", "A=b"],
                "cwd": "/work",
                "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}}]
            }},
            "root": {{"path": "rootfs"}},
            "hostname": "box",
            "mounts": [
                {{"destination": "/proc", "type": "proc", "source": "proc"}},
                {{"destination": "/dev/pts", "type": "devpts", "source": "devpts"}},
                {{"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}},
                {{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}},
                {{"destination": "/data", "type": "bind", "source": "{src}", "options": ["rbind", "ro"]}},
                {{"destination": "/etc/hosts", "type": "bind", "source": "/nonexistent/hosts", "options": ["rbind"]}},
                {{"destination": "/run", "type": "tmpfs", "source": "tmpfs"}}
            ],
            "annotations": {{"io.kubernetes.cri.container-type": "container"}},
            "linux": {{"resources": {{"memory": {{"limit": 268435456}}}}}}
        }}"#
        );
        let spec: Spec = serde_json::from_str(&json).unwrap();
        let t = translate("abc", Path::new("/b"), &spec, false, &vm(), 5).unwrap();
        let c = &t.config;
        assert_eq!(c.process.args, ["sh", "-c", "exit 7"]);
        assert_eq!(c.process.env, ["PATH=/usr/bin:/bin", "A=b"]);
        assert_eq!(c.process.cwd, "/work");
        assert_eq!(c.process.user, "1000:100");
        assert!(c.process.terminal);
        assert!(!c.process.stdin);
        let r = c.process.rlimits.as_ref().unwrap();
        assert_eq!(
            (r[0].name.as_str(), r[0].soft, r[0].hard),
            ("nofile", 512, 1024)
        );
        assert_eq!(c.hostname, "box");
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.rootfs_dir.as_deref(), Some(Path::new("/b/rootfs")));
        assert!(c.rootfs_base.as_os_str().is_empty());
        assert!(c.no_template);
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(c.mounts[0].target, "/data");
        assert!(c.mounts[0].readonly);
        assert_eq!(t.skipped.len(), 2, "{:?}", t.skipped);
        assert!(t.skipped[0].starts_with("/etc/hosts"));
        assert!(t.skipped[1].starts_with("/run (tmpfs"));
        assert_eq!(
            spec.annotations["io.kubernetes.cri.container-type"],
            "container"
        );
        assert!(spec.is_pod_container());
        assert!(!Spec::default().is_pod_container());
    }

    #[test]
    fn the_network_namespace_to_join_and_resolv_conf() {
        let spec: Spec = serde_json::from_str(
            r#"{"mounts": [{"destination": "/etc/resolv.conf", "type": "bind",
                            "source": "/var/lib/sandboxes/x/resolv.conf"}],
                "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"},
                    {"type": "network", "path": "/var/run/netns/cni-1"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.network_namespace(),
            Some(Path::new("/var/run/netns/cni-1"))
        );
        assert_eq!(
            spec.resolv_conf(),
            Some(Path::new("/var/lib/sandboxes/x/resolv.conf"))
        );
        // A new namespace (ctr run without --with-ns): no network.
        let spec: Spec =
            serde_json::from_str(r#"{"linux": {"namespaces": [{"type": "network"}]}}"#).unwrap();
        assert_eq!(spec.network_namespace(), None);
        assert_eq!(Spec::default().network_namespace(), None);
    }

    #[test]
    fn snapshot_mount_options() {
        use nix::mount::MsFlags;
        let (f, d) = mount_flags(&[
            "index=off".into(),
            "workdir=/w".into(),
            "upperdir=/u".into(),
            "lowerdir=/l1:/l2".into(),
        ]);
        assert_eq!(f, MsFlags::empty());
        assert_eq!(d, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
        let (f, d) = mount_flags(&["ro".into(), "rbind".into()]);
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(d, "");
    }

    #[test]
    fn defaults_and_refusals() {
        let spec: Spec =
            serde_json::from_str(r#"{"process": {"args": ["true"]}, "root": {"path": "rootfs"}}"#)
                .unwrap();
        let t = translate("0123456789abcdef", Path::new("/b"), &spec, true, &vm(), 0).unwrap();
        assert_eq!(t.config.process.cwd, "/");
        assert_eq!(t.config.process.user, "0:0");
        assert!(t.config.process.stdin);
        assert!(t.config.process.rlimits.is_none());
        assert_eq!(t.config.hostname, "0123456789ab");
        assert_eq!(t.config.memory_mib, 512);
        let none: Spec = serde_json::from_str("{}").unwrap();
        assert!(matches!(
            translate("x", Path::new("/b"), &none, false, &vm(), 0),
            Err(SpecError::NoProcess)
        ));
        let empty: Spec = serde_json::from_str(r#"{"process": {"args": []}}"#).unwrap();
        assert!(matches!(
            translate("x", Path::new("/b"), &empty, false, &vm(), 0),
            Err(SpecError::NoArgs)
        ));
    }
}
