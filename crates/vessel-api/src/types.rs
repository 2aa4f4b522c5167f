//! Documents exchanged over the apiserver API (see `docs/api/openapi.yaml`)
//! and kept in each container's state files.

use crate::ProcessSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub use crate::error::{ErrorBody, ErrorKind};

/// `POST /v1/containers`: what the user asked for with `vessel run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    pub image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// CMD override (the words after IMAGE); empty keeps the image's.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `--entrypoint`; `Some("")` clears the image's entrypoint.
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub auto_remove: bool,
    /// `--network`: a network's name, or `none`; absent joins the default network.
    #[serde(default)]
    pub network: Option<String>,
    /// `-p`: published ports (see [`crate::network::parse_port_spec`]).
    #[serde(default)]
    pub ports: Vec<crate::network::PortMapping>,
    /// `--network-alias`: more names the network's DNS answers for the container.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--hostname`; default: the first 12 characters of the ID.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `--ulimit`: resource limits replacing the defaults of the same name
    /// (see [`crate::ulimit`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<agent_protocol::Rlimit>,
    /// `-t`: the process gets a terminal.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// `-i`: the process's stdin stays open for clients that attach.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// `-a`: the streams `start -a` attaches to; absent: stdout and
    /// stderr, and stdin with `-i` (Docker's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachStreams>,
    /// `--health-*`, `--no-healthcheck` (see [`crate::health`]); absent:
    /// the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::Healthcheck>,
    /// `-v`, `--mount`, `--tmpfs` (see [`crate::mounts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mounts::MountSpec>,
    /// `--read-only`: the root filesystem is mounted read-only (mounts
    /// stay as they are).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `--restart` (see [`crate::restart`]); absent: `no`.
    #[serde(default, skip_serializing_if = "crate::restart::RestartPolicy::is_no")]
    pub restart: crate::restart::RestartPolicy,
    /// `--no-template`: always boot a kernel, never restore a VM template
    /// (see [`crate::template`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_template: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which of a container's streams a client attaches to (Docker's `-a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachStreams {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

impl AttachStreams {
    /// Docker's default: stdout and stderr, stdin when it is kept open.
    pub fn default_for(stdin: bool) -> Self {
        Self {
            stdin,
            stdout: true,
            stderr: true,
        }
    }
}

/// `POST /v1/containers` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateResponse {
    pub id: String,
    pub name: String,
}

/// A container's fixed configuration (`containers/<id>/config.json`),
/// written once by the apiserver at create time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// The image reference as resolved (`localhost/busybox:latest`).
    pub image: String,
    /// The image ID (config digest).
    pub image_id: String,
    pub created_ms: u64,
    pub process: ProcessSpec,
    pub hostname: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub auto_remove: bool,
    /// The image's read-only ext4 base, backing this container's overlay.
    /// Empty when [`ContainerConfig::rootfs_dir`] is the root instead.
    pub rootfs_base: PathBuf,
    /// A host directory that is the container's root filesystem, shared
    /// into the VM over virtio-fs instead of a disk: an OCI bundle's
    /// `rootfs/` as containerd's snapshotter prepared it (the containerd
    /// shim's containers). Such a VM boots its kernel (no template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_dir: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The network the container joins when it starts; `none`: no network.
    #[serde(default = "no_network")]
    pub network: String,
    /// Published ports as requested (host port 0: any free port).
    #[serde(default)]
    pub ports: Vec<crate::network::PortMapping>,
    /// `--network-alias` names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The streams `start -a` attaches to (`-a`); `process.terminal` and
    /// `process.stdin` hold `-t` and `-i`.
    #[serde(default = "default_attach")]
    pub attach: AttachStreams,
    /// The healthcheck it runs, resolved (the flags over the image's,
    /// defaults filled in); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::Healthcheck>,
    /// Mounts as resolved at create time: bind sources canonical, every
    /// volume named (anonymous ones too), in the order they are mounted
    /// (parents before what is inside them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mounts::MountSpec>,
    /// `--read-only`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `--restart`; changed by `vessel update --restart`.
    #[serde(default, skip_serializing_if = "crate::restart::RestartPolicy::is_no")]
    pub restart: crate::restart::RestartPolicy,
    /// `--no-template`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_template: bool,
}

fn default_attach() -> AttachStreams {
    AttachStreams::default_for(false)
}

fn no_network() -> String {
    crate::network::NO_NETWORK.to_string()
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Starting,
    Running,
    /// The whole VM is stopped (`vessel pause`).
    Paused,
    Stopping,
    Exited,
}

impl Status {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Starting | Status::Running | Status::Paused | Status::Stopping
        )
    }
}

/// One container's resource usage at one moment (`vessel stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerStats {
    /// What the guest sees: CPU time, its memory and limit, processes, I/O.
    pub guest: agent_protocol::StatsSnapshot,
    /// The VM's memory on the host: the VMM's resident set, in bytes.
    pub vmm_rss_bytes: u64,
    /// Host wall time when read, in ms since the epoch.
    pub read_ms: u64,
}

/// A container's changing state (`containers/<id>/state.json`), written by
/// its runtime helper (and by the apiserver before the helper exists).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    #[serde(default)]
    pub runtime_pid: Option<i32>,
    /// `/proc/<pid>/stat` start time of the runtime helper, against pid reuse.
    #[serde(default)]
    pub runtime_start_time: Option<u64>,
    #[serde(default)]
    pub vmm_pid: Option<i32>,
    /// The uid (and gid) the VMM runs as, when it is confined to a user of
    /// its own (root mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_uid: Option<u32>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the container failed to start or ended abnormally.
    #[serde(default)]
    pub error: Option<String>,
    /// What killed the VMM, when its jail did: `seccomp` (a forbidden
    /// system call) or `OOM` (its memory ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<String>,
    /// How many times its restart policy has started it again since a user
    /// last started it (Docker's `RestartCount`). The apiserver fills it in
    /// from `restart.json`.
    #[serde(default)]
    pub restart_count: u32,
    /// It has ended and its restart policy will start it again after a
    /// back-off (Docker's `Restarting`); filled in by the apiserver.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restarting: bool,
    /// Guest uptime (ms) when vminitd had started the process.
    #[serde(default)]
    pub guest_uptime_at_start_ms: Option<u64>,
    /// Host wall time (ms) from launching the VMM to the process running.
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// The VM template this run's VM was restored from (its key); absent:
    /// the VM booted its kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The healthcheck's status and last results, for a container that
    /// has one (from its start on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::Health>,
}

impl ContainerState {
    pub fn created() -> Self {
        Self {
            status: Status::Created,
            runtime_pid: None,
            runtime_start_time: None,
            vmm_pid: None,
            vmm_uid: None,
            killed_by: None,
            template: None,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            error: None,
            restart_count: 0,
            restarting: false,
            guest_uptime_at_start_ms: None,
            boot_ms: None,
            health: None,
        }
    }
}

/// `GET /v1/containers/{id}`: configuration and state together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub config: ContainerConfig,
    pub state: ContainerState,
    /// The container's places on networks while it holds them (from
    /// `network.json`): IP, MAC, gateway, published host ports.
    #[serde(default)]
    pub networks: Vec<crate::network::Attachment>,
    /// Its mounts (Docker's `Mounts`): bind mounts, volumes, tmpfs.
    #[serde(default)]
    pub mounts: Vec<crate::mounts::MountPoint>,
}

/// One row of `GET /v1/containers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: String,
    pub created_ms: u64,
    pub status: Status,
    pub exit_code: Option<i32>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Published ports while the container holds them.
    #[serde(default)]
    pub ports: Vec<crate::network::PortMapping>,
    /// Its health while it runs, when it has a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthStatus>,
    /// Ended, and to be started again by its restart policy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restarting: bool,
    /// What killed its VMM, when its jail did (`seccomp`, `OOM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<String>,
}

impl ContainerSummary {
    pub fn from_info(info: &ContainerInfo) -> Self {
        Self {
            id: info.config.id.clone(),
            name: info.config.name.clone(),
            image: info.config.image.clone(),
            command: info.config.process.args.join(" "),
            created_ms: info.config.created_ms,
            status: info.state.status,
            exit_code: info.state.exit_code,
            started_ms: info.state.started_ms,
            finished_ms: info.state.finished_ms,
            ports: info
                .networks
                .iter()
                .flat_map(|a| a.ports.iter().cloned())
                .collect(),
            health: info
                .state
                .health
                .as_ref()
                .filter(|_| info.state.status.is_active())
                .map(|h| h.status),
            restarting: info.state.restarting,
            killed_by: info.state.killed_by.clone(),
        }
    }
}

/// `POST /v1/containers/{id}/wait` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitResponse {
    pub exit_code: i32,
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/containers/{id}/exec`: one more process in a running
/// container (`vessel exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCreate {
    /// The command and its arguments (not empty).
    pub cmd: Vec<String>,
    /// `-e KEY=VALUE`, over the container's environment (Docker's rule).
    #[serde(default)]
    pub env: Vec<String>,
    /// `-w`; absent: the container's working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `-u`; absent: the container's user.
    #[serde(default)]
    pub user: Option<String>,
    /// `-t`: a terminal.
    #[serde(default)]
    pub tty: bool,
    /// `-i`: stdin from the client.
    #[serde(default)]
    pub stdin: bool,
    /// The terminal's first size (with `tty`).
    #[serde(default)]
    pub tty_size: Option<agent_protocol::WinSize>,
    /// `-d`: start it and answer at once; it runs on its own.
    #[serde(default)]
    pub detach: bool,
}

/// The answer of a detached exec (`exec -d`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    pub id: String,
    /// Its pid in the guest.
    pub pid: i32,
}

/// `GET /v1/containers/{id}/exec/{exec_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInfo {
    pub id: String,
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub detach: bool,
    pub created_ms: u64,
    pub running: bool,
    /// Its exit code once it has ended (and it was known).
    pub exit_code: Option<i32>,
    /// Its pid in the guest, when it is known (`exec -d`).
    #[serde(default)]
    pub pid: Option<i32>,
}

/// `GET /v1/containers/{id}/top`: the container's processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopResponse {
    pub processes: Vec<agent_protocol::ProcessInfo>,
    /// When the guest booted, in ms since the epoch (a process's start
    /// time is this plus its `start_ms`).
    #[serde(default)]
    pub boot_time_ms: Option<u64>,
}

/// `POST /v1/containers/prune` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResponse {
    /// The IDs of the containers removed.
    pub removed: Vec<String>,
}

/// Which stream a log record or attach event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of `stdio.log` (JSON lines). Text is kept as `log` when the chunk
/// is valid UTF-8, as base64 in `b64` otherwise, so no byte is lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    pub time_ms: u64,
    pub stream: Stream,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64: Option<String>,
}

impl LogRecord {
    pub fn new(stream: Stream, data: &[u8]) -> Self {
        Self::at(now_ms(), stream, data)
    }

    /// A record of `data` written at `time_ms`.
    pub fn at(time_ms: u64, stream: Stream, data: &[u8]) -> Self {
        let (log, b64) = match std::str::from_utf8(data) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(b64_encode(data))),
        };
        Self {
            time_ms,
            stream,
            log,
            b64,
        }
    }

    /// The record cut into lines (each with its `\n`, the last one maybe
    /// without), each with the record's time and stream.
    pub fn lines(&self) -> Vec<LogRecord> {
        let data = self.data();
        data.split_inclusive(|b| *b == b'\n')
            .map(|l| Self::at(self.time_ms, self.stream, l))
            .collect()
    }

    /// The record's bytes.
    pub fn data(&self) -> Vec<u8> {
        if let Some(s) = &self.log {
            return s.as_bytes().to_vec();
        }
        self.b64.as_deref().and_then(b64_decode).unwrap_or_default()
    }
}

/// One line of an attach or `logs` stream (NDJSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamEvent {
    /// Output, a [`LogRecord`].
    Output(LogRecord),
    /// The container has ended (attach and `logs -f` only).
    Exit {
        exit_code: i32,
        #[serde(default)]
        error: Option<String>,
    },
}

/// Image configuration fields vessel uses to build the process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRuntimeConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    /// The image's `VOLUME`s (container paths), each an anonymous volume
    /// unless a mount of the container covers it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The image's `HEALTHCHECK` (`test` `["NONE"]` when it turned an
    /// inherited one off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::Healthcheck>,
}

/// One row of `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Full reference, e.g. `localhost/busybox:latest`.
    pub reference: String,
    /// Image ID: the digest of its config blob.
    pub id: String,
    /// Digest of its manifest.
    pub digest: String,
    pub created: Option<String>,
    /// Compressed size of its layers and config, in bytes.
    pub size: u64,
}

/// Answer of the image helper's `resolve`: what a container of this image needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedImage {
    pub reference: String,
    pub id: String,
    pub config: ImageRuntimeConfig,
    /// Path of the read-only ext4 base, built if it was not yet.
    pub rootfs: PathBuf,
}

/// `POST /v1/images/load` and `/v1/images/import` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResponse {
    pub images: Vec<ImageSummary>,
}

/// State of one helper process in `GET /v1/system/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperInfo {
    pub name: String,
    pub pid: Option<i32>,
    pub running: bool,
    /// Why it is not running, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/system/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemInfo {
    pub version: String,
    pub home: PathBuf,
    pub apiserver_pid: i32,
    pub supervisor: String,
    pub accel: String,
    pub accel_reason: String,
    pub kernel: PathBuf,
    /// The guest kernel's release (`6.1.x`), read from its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    pub initrd: PathBuf,
    pub agent_protocol: String,
    pub helpers: Vec<HelperInfo>,
    pub containers_running: usize,
    pub containers_total: usize,
    /// The networks, when vessel-network answers.
    #[serde(default)]
    pub networks: Vec<crate::network::NetworkInfo>,
    /// How containers are networked and what that gives them: `bridge
    /// (vessel-network): ...` as root, `rootless (passt): ...` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// What confines each container's VMM: seccomp, its own user, its own
    /// mount namespace, and what enforces its ceilings (`cgroup v2`,
    /// `cgroup v1` or `rlimits`); see docs/THREAT_MODEL.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_confinement: Option<String>,
    /// Whether containers start from VM templates (`VESSEL_TEMPLATES`),
    /// and the templates built so far (see [`crate::template`]).
    #[serde(default)]
    pub templates_enabled: bool,
    #[serde(default)]
    pub templates: Vec<crate::template::TemplateMeta>,
}

/// Parse a Docker-style memory size: a number with an optional unit
/// `b`, `k`, `m`, `g`, `t` (optionally followed by `b`/`ib`), case-insensitive.
/// Plain numbers are bytes. Returns bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || {
        format!("invalid memory size {s:?}: expected a number with an optional unit b, k, m, g (e.g. 256m, 1g)")
    };
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (1u64 << 50) as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parse a signal as Docker accepts it: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("invalid signal {s:?}: numbers must be 1-64"));
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("invalid signal {s:?}"))
}

/// Is `name` acceptable as a container name (Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`)?
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64; `None` if malformed.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("512mb").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1048576").unwrap(), 1 << 20);
        for bad in ["", "abc", "12x", "-5m", "m", "1.2.3g", "0"] {
            assert!(parse_memory(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_container_name("web-1"));
        assert!(!valid_container_name("-x"));
        assert!(!valid_container_name("a b"));
        assert!(!valid_container_name("a"));
    }

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\x00\xfe\x80"] {
            assert_eq!(b64_decode(&b64_encode(data)).unwrap(), data);
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert!(b64_decode("!!").is_none());
    }

    #[test]
    fn log_record_keeps_binary() {
        let r = LogRecord::new(Stream::Stdout, b"\xff\xfehi");
        assert!(r.log.is_none());
        assert_eq!(r.data(), b"\xff\xfehi");
        let r = LogRecord::new(Stream::Stderr, b"text\n");
        assert_eq!(r.log.as_deref(), Some("text\n"));
    }
}

/// Credentials for one registry, resolved by the CLI (which runs as the user
/// and can run their credential helpers) and sent with a pull, push or login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// An OAuth2 refresh token (Docker's `identitytoken`), used instead of
    /// the password when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
}

/// Body of `POST /v1/images/pull`, `POST /v1/images/push` and
/// `POST /v1/registry/login` (query: `ref=`, `platform=`, `tls_verify=false`;
/// login: `server=`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryRequest {
    /// Credentials for the registry of the reference, if any.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
}

/// One layer (or config) of an image being pulled or pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
}

/// One line of the `application/x-ndjson` answer of a pull or push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TransferEvent {
    /// The manifest is known: these blobs will be transferred.
    Resolved {
        reference: String,
        /// Digest of the manifest chosen for the platform.
        digest: String,
        layers: Vec<BlobInfo>,
    },
    /// Bytes of one blob transferred so far.
    Progress {
        digest: String,
        current: u64,
        total: u64,
    },
    /// One blob is in place (`skipped`: it already was, or was mounted).
    BlobDone { digest: String, skipped: bool },
    /// A phase that is not a blob transfer ("unpacking", "pushing manifest").
    Status { message: String },
    /// The operation succeeded.
    Done { image: ImageSummary },
    /// The operation failed; nothing unverified was kept. `kind` as in
    /// error answers (absent from older peers: `internal`).
    Error {
        #[serde(default)]
        kind: ErrorKind,
        message: String,
    },
}

/// The actions of [`Event`]s, each with its name on the wire. Adding a kind
/// of event is one line here (and its name in the `Event` schema of
/// `docs/api/openapi.yaml`, which a test keeps in step).
macro_rules! event_actions {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// What happened to the thing an [`Event`] is about.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventAction {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl EventAction {
            /// Every action, in the order of the API description.
            pub const ALL: &'static [EventAction] = &[$(EventAction::$variant,)*];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventAction::$variant => $name,)*
                }
            }

            /// The action named `name`.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(EventAction::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_actions! {
    /// Created (not started).
    Create = "create",
    /// Its process runs.
    Start = "start",
    /// Its process ended (`exit_code` attribute), by itself or not.
    Die = "die",
    /// Stopped by a `stop` request (after its `die`).
    Stop = "stop",
    /// A signal was sent to it (`signal` attribute).
    Kill = "kill",
    /// Removed.
    Destroy = "destroy",
    /// Its whole VM was paused.
    Pause = "pause",
    /// Its VM runs again.
    Unpause = "unpause",
    /// Restarted (`restart`: after its `die`/`stop` and its new `start`).
    Restart = "restart",
    /// Renamed (`old_name` attribute).
    Rename = "rename",
    /// An exec'd process was asked for (`exec_id`, `command` attributes).
    ExecCreate = "exec_create",
    /// It started (`exec_id`).
    ExecStart = "exec_start",
    /// It ended (`exec_id`, `exit_code` when known).
    ExecDie = "exec_die",
    /// Its healthcheck's status changed to `healthy` or `unhealthy`
    /// (`health_status` attribute).
    HealthStatus = "health_status",
}

/// What an [`Event`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Container,
    /// A volume: `create` and `destroy` (its name is the event's `id`
    /// and `name`).
    Volume,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Container => "container",
            EventType::Volume => "volume",
        }
    }
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub action: EventAction,
    /// The container's full ID.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// `image`, and per action: `exit_code` (die), `signal` (kill).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
