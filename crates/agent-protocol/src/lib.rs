//! # `vessel.agent.v1`: the protocol between a runtime helper and vminitd
//!
//! This file is the single source of truth for the host ↔ guest channel.
//!
//! ## Transport
//! Each connection is a stream of the multiplexer [`mux`] over the VM's
//! virtio-serial port [`mux::PORT_NAME`] (migratable, unlike vhost-user
//! vsock): vminitd serves streams to [`AGENT_PORT`]. The host side is
//! *hybrid vsock* over a Unix socket the runtime serves: a client connects,
//! writes `CONNECT 1024\n`, reads `OK <n>\n`, and from then on the stream
//! is the guest port (see [`hybrid_connect_line`] and [`parse_hybrid_ok`]).
//! A guest without the serial port falls back to `AF_VSOCK` on the same
//! port.
//!
//! ## Framing
//! Every message is a frame: a 4-byte big-endian length `n` (the length of
//! what follows, `1 <= n <= MAX_FRAME`), one [`FrameKind`] byte, then `n - 1`
//! payload bytes. Control frames carry one JSON document ([`HostMessage`] from
//! the host, [`GuestMessage`] from the guest); stdio frames carry raw bytes.
//! A frame that is too long, of an unknown kind, or whose JSON does not parse
//! is a protocol error: the reader reports it and closes the connection. It
//! never panics, whatever the peer sends.
//!
//! ## Connections
//! The host may open any number of connections; each starts with the
//! `Hello` exchange, and the host's first request after it says what the
//! connection carries:
//!
//! | first request | the connection then carries |
//! |---|---|
//! | `Start(StartRequest)` | the container: root filesystem, network, the main process's streams and exit, clock, statistics, shutdown. Once per VM. |
//! | `Exec(ExecRequest)` | one more process in the started container: its streams (or terminal), resize, signals, exit (feature [`FEATURE_EXEC`]) |
//! | `CopyOut { path }` | a tar stream of `path` inside the container, guest → host (feature [`FEATURE_COPY`]) |
//! | `CopyIn { path }` | a tar stream to unpack into the directory `path`, host → guest (feature [`FEATURE_COPY`]) |
//! | `Exec` with `process.root` | a process of a pod's container in this VM (the containerd shim): the first one for a root gets a mount namespace and cgroup of its own, with the `binds`, `memory_max`, `cpu_max`, `cpu_weight` and `own_pids` it carries; later ones join them |
//! | `ReadStats` | one [`StatsSnapshot`] (feature [`FEATURE_STATS`]), then more on request |
//! | `ReadGroupStats { group }` | one [`StatsSnapshot`] of a pod container's cgroup (feature [`FEATURE_STATS`]) |
//! | `ReadProcesses` | the container's processes (feature [`FEATURE_TOP`]), then more on request |
//! | `MountRoot { .. }` | a maintenance boot of a stopped container: its root filesystem mounted, no process; copies on other connections; power-off at `Shutdown` or when this connection ends (feature [`FEATURE_MAINTENANCE`]). Once per VM, instead of `Start`. |
//!
//! A process's streams belong to its connection, so each process has its own
//! flow control (the mux's credits per stream), and closing the connection
//! ends what it started: an exec'd process loses its stdin and terminal
//! (SIGHUP under a terminal, EOF and SIGPIPE otherwise), as under Docker.
//!
//! ## A process's conversation (main or exec'd)
//! 1. host → `Hello { version }`; guest → `Hello { version, uptime_ms,
//!    features }` (features: optional parts it implements, e.g. `network`). A
//!    guest that speaks another major version answers `Error` and closes.
//! 2. host → `Start(StartRequest)` or `Exec(ExecRequest)`; guest (for
//!    `Start`: mounts the root filesystem and network first) starts the
//!    process, then answers `Started { pid, uptime_ms }` or
//!    `StartFailed { exit_code, message }` (127: command not found, 126: not
//!    executable, 125: anything else, as Docker reports them).
//! 3. guest → `Stdout`/`Stderr` frames as the process writes (a process with
//!    a terminal has one output stream: `Stdout`); host → `Signal { signal,
//!    group }` at any time, `Stdin` frames and `CloseStdin` (when the process
//!    has stdin open), `Resize { rows, cols }` (when it has a terminal).
//! 4. guest → `Exited { exit_code, signal }` once the process has ended and
//!    its output is drained. On the main connection: host → `Shutdown`; the
//!    guest syncs its disks and powers the VM off; a guest whose main
//!    connection drops after `Exited` powers off by itself. On an exec
//!    connection the guest closes the connection after `Exited`.
//!
//! ## Stdin flow control
//! A guest that lists [`FEATURE_STDIN_CREDIT`] answers `Stdin` payload with
//! `StdinCredit { bytes }` once it has passed those bytes to the process (or
//! dropped them: stdin closed). The host keeps at most [`STDIN_WINDOW`]
//! bytes of stdin sent and not yet credited, in frames of at most
//! [`MAX_STDIO_CHUNK`]. So the guest never has to stop reading its
//! connection while the process is slow to read stdin, and its receive
//! window never fills (with `vhost-device-vsock`, the transport before the
//! mux, a connection whose guest-bound credit ran out while the guest was
//! also sending stalled both ways for good: `run -i cat` of a few MiB hung).
//!
//! `Start` may carry a [`NetworkConfig`] (optional field: hosts without
//! networking omit it). A peer ignores nothing silently: unknown control
//! messages are errors.
//!
//! ## Copying files
//! `CopyOut`: the guest answers with `Data` frames holding a tar stream of
//! the path (a file, or a directory and everything in it, named as the
//! path's last component, owners and modes kept), then `CopyDone { error }`
//! and closes. `CopyIn`: the host sends `Data` frames of a tar stream, then
//! `CloseStdin`; the guest unpacks it into the directory `path` and answers
//! `CopyDone { error }`. Both resolve paths inside the container's root (in
//! a process chrooted there), so `..` and symbolic links cannot lead out.
//!
//! ## A maintenance boot
//! `vessel cp` and `vessel export` of a container that is not running boot
//! its VM on its disk without starting anything: host → `MountRoot {
//! root_device, root_fstype }` (after `Hello` and the clock); the guest
//! mounts the root filesystem alone (no `/proc`, `/dev`... in it, no
//! network) and answers `RootMounted`, or `Error` and closes. Copies then
//! come on connections of their own, as in a running container; `Exec` is
//! refused. At `Shutdown`, or when the `MountRoot` connection ends, the
//! guest ends the copies' helpers, unmounts the root (so the disk is
//! consistent) and powers off.
//!
//! ## The guest's clock
//! A guest that lists [`FEATURE_CLOCK`] in its `Hello` answers
//! `ReadClock { id }` at any time with `Clock { id, realtime_ns }` (its
//! `CLOCK_REALTIME` when it handled the request) and applies
//! `AdjustClock { offset_ns, mode, max_error_ns }` (a step or a slew of its
//! `CLOCK_REALTIME`, and the kernel's clock marked synchronized). The host
//! measures the offset the way NTP does (its send and receive times around
//! the guest's reading, the least round trip of a few samples), steps the
//! clock between `Hello` and `Start` (the guest boots at 1970: there is no
//! RTC), and keeps it in step while the container runs: periodically, and at
//! once when the host's own clock jumps or the host resumes from suspend.
//! The policy is the host's ([`AdjustMode`]); the guest only executes it.

pub mod mux;

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// The protocol's major version. Bumped on any incompatible change.
pub const VERSION: u32 = 1;
/// The package name of this protocol, for logs and `system status`.
pub const PACKAGE: &str = "vessel.agent.v1";
/// The guest port vminitd serves.
pub const AGENT_PORT: u32 = 1024;
/// The guest's "ready" signal: the host transport connects to the Unix
/// socket `vsock.sock_<READY_PORT>` (and at once closes) when the guest
/// answers the mux's `HELLO`, i.e. once vminitd accepts sessions; the
/// `AF_VSOCK` fallback connects to this host port instead.
pub const READY_PORT: u32 = 1025;
/// Largest frame either side accepts (kind byte + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest stdio payload a writer puts in one frame.
pub const MAX_STDIO_CHUNK: usize = 64 * 1024;
/// Most stdin bytes a host has sent and the guest has not yet credited
/// (see "Stdin flow control"); well under a stream's window
/// ([`mux::WINDOW`]).
pub const STDIN_WINDOW: usize = 128 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`HostMessage`] or [`GuestMessage`].
    Control = 0,
    /// Bytes the process wrote to its standard output.
    Stdout = 1,
    /// Bytes the process wrote to its standard error.
    Stderr = 2,
    /// Bytes for the process's standard input.
    Stdin = 3,
    /// Bytes of a tar stream (`CopyOut`, `CopyIn`).
    Data = 4,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Control),
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            3 => Some(Self::Stdin),
            4 => Some(Self::Data),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// The process to run, as the host resolved it from the image config and the
/// user's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, in order; later entries win.
    pub env: Vec<String>,
    /// Working directory inside the container; created if missing.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
    /// Resource limits the process starts with. Absent (a host that
    /// predates them): [`default_rlimits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<Vec<Rlimit>>,
    /// Give the process a terminal (`-t`): a PTY as stdin, stdout and
    /// stderr, its controlling terminal in a new session.
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminal: bool,
    /// Keep stdin open (`-i`): `Stdin` frames reach the process until
    /// `CloseStdin`. Otherwise stdin is `/dev/null` (or, with a terminal,
    /// the terminal, which nobody types into).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// A container of a pod that runs in the pod's VM (the containerd
    /// shim): the directory of the VM's root that is this container's own
    /// root filesystem (`/.vessel-pod/ID`). The first process given a root
    /// gets a mount namespace of its own with the API filesystems mounted
    /// in it; later ones (execs) join that namespace while the first runs.
    /// Absent: the VM's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// With `root`: files and directories of the VM bound into the
    /// container's namespace by its first process (a pod's volumes, and
    /// the `/etc/hosts` and `/etc/resolv.conf` the kubelet gives).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<Bind>,
    /// With `root`: the container's memory limit in bytes (its cgroup's
    /// `memory.max` in the guest), set by its first process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// With `root`: the container's CPU limit, `cpu.max` of its cgroup:
    /// (quota, period) in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<(u64, u64)>,
    /// With `root`: the container's share of CPU time against the pod's
    /// other containers, `cpu.weight` of its cgroup (1–10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// With `root`: the container's first process is PID 1 of a PID
    /// namespace of its own (Kubernetes' default), which its execs join;
    /// false, the pod's containers share the VM's (`shareProcessNamespace`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_pids: bool,
}

/// A bind mount into a pod's container ([`ProcessSpec::binds`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// The file or directory in the VM (under the pod's share).
    pub source: String,
    /// Where it shows in the container (absolute; symlinks in the path
    /// resolve inside the container's root).
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// One resource limit, as `setrlimit(2)` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The resource as Docker's `--ulimit` names it: `nofile`, `nproc`,
    /// `core`, `stack`, `memlock`, ... (see [`rlimit_resource`]).
    pub name: String,
    /// Soft limit; `u64::MAX` is unlimited.
    pub soft: u64,
    /// Hard limit; `u64::MAX` is unlimited.
    pub hard: u64,
}

/// `RLIM_INFINITY`.
pub const RLIM_UNLIMITED: u64 = u64::MAX;

/// The limits a container's process starts with unless the user sets
/// others: what a Docker container gets on a systemd host (its daemons run
/// with `LimitNOFILE=1048576`, `LimitNPROC=infinity`, `LimitCORE=infinity`,
/// the rest inherited from the system's defaults). Limits not listed keep
/// the guest kernel's defaults, which are the host kernel's.
pub fn default_rlimits() -> Vec<Rlimit> {
    let r = |name: &str, soft, hard| Rlimit {
        name: name.into(),
        soft,
        hard,
    };
    vec![
        r("nofile", 1_048_576, 1_048_576),
        r("nproc", RLIM_UNLIMITED, RLIM_UNLIMITED),
        r("core", RLIM_UNLIMITED, RLIM_UNLIMITED),
        r("stack", 8 << 20, RLIM_UNLIMITED),
        r("memlock", 8 << 20, 8 << 20),
    ]
}

/// The `RLIMIT_*` number of a resource named as Docker's `--ulimit` does.
pub fn rlimit_resource(name: &str) -> Option<i32> {
    // Numbers from the Linux UAPI (asm-generic/resource.h), x86_64.
    Some(match name {
        "cpu" => 0,
        "fsize" => 1,
        "data" => 2,
        "stack" => 3,
        "core" => 4,
        "rss" => 5,
        "nproc" => 6,
        "nofile" => 7,
        "memlock" => 8,
        "as" => 9,
        "locks" => 10,
        "sigpending" => 11,
        "msgqueue" => 12,
        "nice" => 13,
        "rtprio" => 14,
        "rttime" => 15,
        _ => return None,
    })
}

/// Everything vminitd needs to start the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    pub process: ProcessSpec,
    pub hostname: String,
    /// Block device holding the container's root filesystem, e.g. `/dev/vda`.
    pub root_device: String,
    /// Its filesystem type, e.g. `ext4`.
    pub root_fstype: String,
    /// The container's network, if it has one (`--network none`: absent).
    /// Absent in messages from hosts that predate networking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The terminal's size when the process has one (default 24x80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<WinSize>,
    /// More filesystems, mounted in this order after the root (needs
    /// [`FEATURE_MOUNTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<GuestMount>,
    /// The root filesystem is made read-only once the mounts are in place
    /// (`--read-only`; needs [`FEATURE_MOUNTS`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root: bool,
}

/// One filesystem of the container besides its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    /// Absolute, clean path in the container (not `/`). Missing
    /// directories are made; a symbolic link on the way is resolved inside
    /// the container's root, never out of it.
    pub target: String,
    pub source: GuestMountSource,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    /// When the mounted filesystem is empty (nothing but `lost+found`),
    /// first copy into it what the image has at `target` (owners, modes,
    /// times, links kept): Docker's copy-in of a new volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub populate: bool,
}

/// What a [`GuestMount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMountSource {
    /// A vhost-user-fs device with this tag (a host directory served by
    /// a `virtiofsd` for this VM alone).
    VirtioFs { tag: String },
    /// A virtio-blk disk, found by its serial number, holding a filesystem
    /// of type `fstype` (`ext4`).
    Block { serial: String, fstype: String },
    /// A tmpfs in the VM's memory.
    Tmpfs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_bytes: Option<u64>,
        /// Mode of its root (default 1777).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// `noexec`, `nosuid`, `nodev` (and `exec`, `suid`, `dev`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        flags: Vec<String>,
    },
}

/// One more process in the started container (`vessel exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The host's name for it, for the guest's log.
    pub exec_id: String,
    /// The process; `env` is used as given (the host merges the
    /// container's environment), `rlimits` absent means the container's.
    pub process: ProcessSpec,
    /// The terminal's size when the process has one (default 24x80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<WinSize>,
}

/// Resource usage of the whole guest at one moment, for `vessel stats`.
/// Counters are cumulative since boot; rates come from two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatsSnapshot {
    /// Guest `CLOCK_MONOTONIC` when taken, in nanoseconds.
    pub monotonic_ns: u64,
    /// CPU time spent busy (everything but idle and iowait), summed over
    /// CPUs, in nanoseconds.
    pub cpu_busy_ns: u64,
    /// CPU time in all states, summed over CPUs, in nanoseconds.
    pub cpu_total_ns: u64,
    pub online_cpus: u32,
    /// `MemTotal`: the memory the guest sees (its limit).
    pub memory_total_bytes: u64,
    /// `MemTotal - MemAvailable`: what the container uses, caches that the
    /// kernel can drop excluded (Docker's "usage" likewise).
    pub memory_used_bytes: u64,
    /// Processes in the container (vminitd not counted).
    pub pids: u64,
    /// Bytes received and sent on every interface but loopback.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// Bytes read from and written to the container's disks.
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

/// How vminitd sets up the guest's network before starting the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkConfig {
    /// One entry per virtio-net device, found in the guest by its MAC.
    pub interfaces: Vec<InterfaceConfig>,
    /// Nameservers for `/etc/resolv.conf` (the networks' gateways).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// `search` domains for `/etc/resolv.conf`.
    #[serde(default)]
    pub search: Vec<String>,
    /// Extra `/etc/hosts` lines: an address and its names.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// One guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InterfaceConfig {
    /// `aa:bb:cc:dd:ee:ff`, as the host gave it to the VMM.
    pub mac: String,
    /// Dotted IPv4 address.
    pub address: String,
    /// Prefix length of the network, 1..=30.
    pub prefix_len: u8,
    /// Default route through this gateway (only the first interface with
    /// one gets the default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// MTU; the device default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostEntry {
    pub address: String,
    pub names: Vec<String>,
}

/// How the guest applies a clock correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustMode {
    /// Jump by the offset at once (`ADJ_SETOFFSET`): before the process
    /// starts, and for offsets too large to slew (a paused VM, a host that
    /// resumed from suspend or stepped its own clock).
    Step,
    /// Speed up or slow down the clock until the offset is absorbed
    /// (`adjtime(3)`'s slew, at most 0.5 ms per second), so time never
    /// jumps under a running program.
    Slew,
}

/// Messages the host sends.
// `Start` is large, sent once per container, and never stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    Hello {
        version: u32,
    },
    Start(StartRequest),
    /// Start one more process (needs [`FEATURE_EXEC`]).
    Exec(ExecRequest),
    /// Send `signal` to this connection's process, or to its process group
    /// when `group` is set.
    Signal {
        signal: i32,
        #[serde(default, skip_serializing_if = "is_false")]
        group: bool,
    },
    CloseStdin,
    /// The terminal of this connection's process changed size.
    Resize {
        rows: u16,
        cols: u16,
    },
    Shutdown,
    /// Answer with [`GuestMessage::Stats`] (needs [`FEATURE_STATS`]).
    ReadStats,
    /// Answer with [`GuestMessage::Stats`] of one pod container's cgroup
    /// (`group`: its id, the last part of its [`ProcessSpec::root`]): its
    /// CPU time, memory and processes; the network is the VM's.
    ReadGroupStats {
        group: String,
    },
    /// Send a tar stream of `path` (needs [`FEATURE_COPY`]). With
    /// `one_file_system`, what other filesystems mount inside it is left
    /// out (their mount points kept): `vessel export` of `/`.
    CopyOut {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        one_file_system: bool,
    },
    /// Answer with [`GuestMessage::Processes`] (needs [`FEATURE_TOP`]).
    ReadProcesses,
    /// Unpack the tar stream that follows into the directory `path` (needs
    /// [`FEATURE_COPY`]).
    CopyIn {
        path: String,
    },
    /// Answer at once with [`GuestMessage::Clock`] (needs [`FEATURE_CLOCK`]).
    ReadClock {
        id: u64,
    },
    /// Mount the container's root filesystem and start nothing: a
    /// maintenance boot for copies (needs [`FEATURE_MAINTENANCE`]; see "A
    /// maintenance boot").
    MountRoot {
        /// Block device holding it, e.g. `/dev/vda`.
        root_device: String,
        /// Its filesystem type, e.g. `ext4`.
        root_fstype: String,
    },
    /// Correct `CLOCK_REALTIME` by `offset_ns` (added to it), and record
    /// `max_error_ns` as the kernel's estimated error (needs
    /// [`FEATURE_CLOCK`]).
    AdjustClock {
        offset_ns: i64,
        mode: AdjustMode,
        max_error_ns: u64,
    },
    /// This VM was restored from a template's saved state: make it this
    /// container's own before anything else runs (needs [`FEATURE_ADOPT`];
    /// see "VM templates"). Answered with [`GuestMessage::Adopted`].
    Adopt(AdoptRequest),
}

/// What makes a VM restored from a template this container's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AdoptRequest {
    /// Random bytes from the host, hex: the guest mixes them into its
    /// random pool and reseeds its generator from it, so no two clones of a
    /// template draw the same numbers (nor the same `boot_id`, which the
    /// kernel makes on its first read).
    pub entropy: String,
    /// The root disk (e.g. `/dev/vda`): the host has put the container's
    /// disk behind it and resized it; the guest waits until it sees
    /// `root_sectors` (512-byte sectors) and drops what it cached of the
    /// template's placeholder.
    pub root_device: String,
    pub root_sectors: u64,
    /// Network devices to give the container's MAC: the template's MAC
    /// (`from`) and the container's (`to`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<MacChange>,
}

/// One interface's new MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MacChange {
    pub from: String,
    pub to: String,
}

/// The guest applies `StartRequest::network` (addresses, routes,
/// resolv.conf, hosts).
pub const FEATURE_NETWORK: &str = "network";
/// The guest answers `ReadClock` and applies `AdjustClock`.
pub const FEATURE_CLOCK: &str = "clock";
/// The guest applies `ProcessSpec::rlimits` and starts the process with an
/// empty signal mask and default signal dispositions.
pub const FEATURE_RLIMITS: &str = "rlimits";
/// The guest runs `Exec` connections, PTYs (`ProcessSpec::terminal`),
/// stdin (`ProcessSpec::stdin`), `Resize` and group signals.
pub const FEATURE_EXEC: &str = "exec";
/// The guest answers `ReadStats`.
pub const FEATURE_STATS: &str = "stats";
/// The guest serves `CopyOut` and `CopyIn`.
pub const FEATURE_COPY: &str = "copy";
/// The guest answers `ReadProcesses`.
pub const FEATURE_TOP: &str = "top";
/// The guest serves `MountRoot` (a maintenance boot).
pub const FEATURE_MAINTENANCE: &str = "maintenance";
/// The guest credits `Stdin` payload with `StdinCredit` (see "Stdin flow
/// control").
pub const FEATURE_STDIN_CREDIT: &str = "stdin_credit";
/// The guest applies `StartRequest::mounts` and `read_only_root`.
pub const FEATURE_MOUNTS: &str = "mounts";
/// The guest serves `Adopt` (a VM restored from a template).
pub const FEATURE_ADOPT: &str = "adopt";

/// One process in the guest, for `vessel top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// CPU time used (user + system), in milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Started this long after boot, in milliseconds.
    pub start_ms: u64,
    /// The command line (or `[name]` when it has none).
    pub command: String,
}

/// Messages the guest sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    Hello {
        version: u32,
        /// Guest uptime in milliseconds when vminitd answered.
        uptime_ms: u64,
        /// Optional parts of the protocol this guest implements (see
        /// [`FEATURE_NETWORK`]). Absent in guests that predate them, so a
        /// host can refuse what an old guest would silently ignore.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    Started {
        pid: i32,
        /// Guest uptime in milliseconds right after the process started.
        uptime_ms: u64,
    },
    StartFailed {
        exit_code: i32,
        message: String,
    },
    Exited {
        /// The exit code as a shell reports it (128 + signal when killed).
        exit_code: i32,
        /// The signal that ended the process, if any.
        signal: Option<i32>,
    },
    Error {
        message: String,
    },
    /// The answer to [`HostMessage::ReadStats`].
    Stats(StatsSnapshot),
    /// The answer to [`HostMessage::ReadProcesses`]: the container's
    /// processes (vminitd and its helpers left out).
    Processes {
        processes: Vec<ProcessInfo>,
    },
    /// The end of a `CopyOut` or `CopyIn`; `error` says what failed.
    CopyDone {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The answer to [`HostMessage::MountRoot`]: the root filesystem is
    /// mounted, copies may come.
    RootMounted,
    /// The answer to [`HostMessage::ReadClock`].
    Clock {
        id: u64,
        /// The guest's `CLOCK_REALTIME` in nanoseconds since the epoch.
        realtime_ns: i64,
    },
    /// `bytes` more of the `Stdin` payload have been passed to the process
    /// or dropped (feature [`FEATURE_STDIN_CREDIT`]).
    StdinCredit {
        bytes: u64,
    },
    /// The answer to [`HostMessage::Adopt`]: reseeded, disk and MACs in
    /// place.
    Adopted {
        /// Guest uptime in milliseconds when done.
        uptime_ms: u64,
    },
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("I/O error on the agent connection")]
    Io(#[from] io::Error),
    #[error("Frame of {0} bytes is outside 1..={MAX_FRAME}")]
    BadLength(usize),
    #[error("Unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("Control message is not valid JSON for this protocol version")]
    BadMessage(#[source] serde_json::Error),
    #[error("Expected a control frame, got {0:?}")]
    NotControl(FrameKind),
    #[error("Malformed hybrid vsock reply: {0:?}")]
    BadHybridReply(String),
}

/// Write one frame.
pub fn write_frame<W: Write>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    let n = payload.len() + 1;
    if n > MAX_FRAME {
        return Err(ProtocolError::BadLength(n));
    }
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.extend_from_slice(&(n as u32).to_be_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Write a control message as one frame.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let json = serde_json::to_vec(msg).map_err(ProtocolError::BadMessage)?;
    write_frame(w, FrameKind::Control, &json)
}

/// Read one frame. Returns `Ok(None)` on a clean end of stream between frames.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(ProtocolError::BadLength(n));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    let kind = FrameKind::from_byte(kind[0]).ok_or(ProtocolError::UnknownKind(kind[0]))?;
    let mut payload = vec![0u8; n - 1];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { kind, payload }))
}

/// Decode a frame's payload as a control message.
pub fn decode_message<T: for<'de> Deserialize<'de>>(frame: &Frame) -> Result<T, ProtocolError> {
    if frame.kind != FrameKind::Control {
        return Err(ProtocolError::NotControl(frame.kind));
    }
    serde_json::from_slice(&frame.payload).map_err(ProtocolError::BadMessage)
}

/// Incremental frame decoder for non-blocking readers: feed bytes, take frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Take the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if n == 0 || n > MAX_FRAME {
            return Err(ProtocolError::BadLength(n));
        }
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let kind =
            FrameKind::from_byte(self.buf[4]).ok_or(ProtocolError::UnknownKind(self.buf[4]))?;
        let payload = self.buf[5..4 + n].to_vec();
        self.buf.drain(..4 + n);
        Ok(Some(Frame { kind, payload }))
    }
}

/// The line a host writes to a hybrid vsock socket to reach a guest port.
pub fn hybrid_connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Parse the backend's answer to [`hybrid_connect_line`]: `OK <host port>`.
pub fn parse_hybrid_ok(line: &str) -> Result<u32, ProtocolError> {
    let bad = || ProtocolError::BadHybridReply(line.chars().take(80).collect());
    let rest = line.trim_end().strip_prefix("OK ").ok_or_else(bad)?;
    rest.trim().parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip() {
        let mut buf = Vec::new();
        let msg = HostMessage::Start(StartRequest {
            process: ProcessSpec {
                args: vec!["echo".into(), "hi".into()],
                env: vec!["A=B".into()],
                cwd: "/".into(),
                user: "1000".into(),
                rlimits: Some(default_rlimits()),
                terminal: true,
                stdin: true,
                root: None,
                binds: Vec::new(),
                memory_max: None,
                cpu_max: None,
                cpu_weight: None,
                own_pids: false,
            },
            hostname: "abc".into(),
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            network: Some(NetworkConfig {
                interfaces: vec![InterfaceConfig {
                    mac: "02:76:0a:58:00:02".into(),
                    address: "10.88.0.2".into(),
                    prefix_len: 24,
                    gateway: Some("10.88.0.1".into()),
                    mtu: None,
                }],
                nameservers: vec!["10.88.0.1".into()],
                search: vec![],
                hosts: vec![HostEntry {
                    address: "10.88.0.2".into(),
                    names: vec!["web".into()],
                }],
            }),
            tty_size: Some(WinSize {
                rows: 40,
                cols: 120,
            }),
            mounts: vec![
                GuestMount {
                    target: "/data".into(),
                    source: GuestMountSource::VirtioFs { tag: "m0".into() },
                    readonly: true,
                    populate: false,
                },
                GuestMount {
                    target: "/var/lib/db".into(),
                    source: GuestMountSource::Block {
                        serial: "vol-m1".into(),
                        fstype: "ext4".into(),
                    },
                    readonly: false,
                    populate: true,
                },
                GuestMount {
                    target: "/tmp".into(),
                    source: GuestMountSource::Tmpfs {
                        size_bytes: Some(1 << 20),
                        mode: None,
                        flags: vec!["noexec".into()],
                    },
                    readonly: false,
                    populate: false,
                },
            ],
            read_only_root: true,
        });
        write_message(&mut buf, &msg).unwrap();
        write_frame(&mut buf, FrameKind::Stdout, b"hello").unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(decode_message::<HostMessage>(&f).unwrap(), msg);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::Stdout);
        assert_eq!(f.payload, b"hello");
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn start_without_network_still_parses() {
        let json = br#"{"type":"start","process":{"args":["true"],"env":[],"cwd":"/","user":""},"hostname":"h","root_device":"/dev/vda","root_fstype":"ext4"}"#;
        let f = Frame {
            kind: FrameKind::Control,
            payload: json.to_vec(),
        };
        match decode_message::<HostMessage>(&f).unwrap() {
            HostMessage::Start(r) => assert_eq!(r.network, None),
            other => panic!("{other:?}"),
        }
        let no_net = HostMessage::Start(StartRequest {
            process: ProcessSpec::default(),
            hostname: String::new(),
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            network: None,
            tty_size: None,
            mounts: vec![],
            read_only_root: false,
        });
        let text = serde_json::to_string(&no_net).unwrap();
        assert!(!text.contains("network"), "{text}");
    }

    #[test]
    fn decoder_handles_split_input() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Stderr, b"abc").unwrap();
        write_message(
            &mut buf,
            &GuestMessage::Exited {
                exit_code: 7,
                signal: None,
            },
        )
        .unwrap();
        let mut d = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &buf {
            d.feed(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(
            decode_message::<GuestMessage>(&frames[1]).unwrap(),
            GuestMessage::Exited {
                exit_code: 7,
                signal: None
            }
        );
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0, 0, 0, 0],
            vec![0xff, 0xff, 0xff, 0xff, 0],
            vec![0, 0, 0, 2, 9, 0],
            vec![0, 0, 0, 5, 0, b'{', b'x'],
        ];
        for c in cases {
            let mut r = &c[..];
            let res = read_frame(&mut r);
            if let Ok(Some(f)) = res {
                assert!(decode_message::<GuestMessage>(&f).is_err());
            }
        }
        let mut d = FrameDecoder::new();
        d.feed(&[0, 0, 0, 2, 42, 0]);
        assert!(d.next_frame().is_err());
        let f = Frame {
            kind: FrameKind::Control,
            payload: b"{\"type\":\"nope\"}".to_vec(),
        };
        assert!(decode_message::<GuestMessage>(&f).is_err());
    }

    #[test]
    fn maintenance_messages_round_trip() {
        let m = HostMessage::MountRoot {
            root_device: "/dev/vda".into(),
            root_fstype: "ext4".into(),
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &m).unwrap();
        write_message(&mut buf, &GuestMessage::RootMounted).unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(decode_message::<HostMessage>(&f).unwrap(), m);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(f.payload, br#"{"type":"root_mounted"}"#);
        assert_eq!(
            decode_message::<GuestMessage>(&f).unwrap(),
            GuestMessage::RootMounted
        );
        // Without its device it is an error, not a guess.
        let f = Frame {
            kind: FrameKind::Control,
            payload: br#"{"type":"mount_root"}"#.to_vec(),
        };
        assert!(decode_message::<HostMessage>(&f).is_err());
    }

    #[test]
    fn clock_messages_round_trip() {
        let msgs = [
            HostMessage::ReadClock { id: 7 },
            HostMessage::AdjustClock {
                offset_ns: -1_700_000_000_123_456_789,
                mode: AdjustMode::Step,
                max_error_ns: 350_000,
            },
            HostMessage::AdjustClock {
                offset_ns: 1_500,
                mode: AdjustMode::Slew,
                max_error_ns: 0,
            },
        ];
        for m in msgs {
            let mut buf = Vec::new();
            write_message(&mut buf, &m).unwrap();
            let f = read_frame(&mut &buf[..]).unwrap().unwrap();
            assert_eq!(decode_message::<HostMessage>(&f).unwrap(), m);
        }
        let f = Frame {
            kind: FrameKind::Control,
            payload: br#"{"type":"clock","id":7,"realtime_ns":1796165703376538908}"#.to_vec(),
        };
        assert_eq!(
            decode_message::<GuestMessage>(&f).unwrap(),
            GuestMessage::Clock {
                id: 7,
                realtime_ns: 1_796_165_703_376_538_908
            }
        );
        // A mode this version does not know is an error, not a guess.
        let f = Frame {
            kind: FrameKind::Control,
            payload: br#"{"type":"adjust_clock","offset_ns":1,"mode":"warp","max_error_ns":0}"#
                .to_vec(),
        };
        assert!(decode_message::<HostMessage>(&f).is_err());
    }

    #[test]
    fn rlimits_default_when_absent_and_names_map_to_resources() {
        let p: ProcessSpec =
            serde_json::from_str(r#"{"args":["true"],"env":[],"cwd":"/","user":""}"#).unwrap();
        assert_eq!(p.rlimits, None);
        for r in default_rlimits() {
            assert!(rlimit_resource(&r.name).is_some(), "{}", r.name);
            assert!(r.soft <= r.hard, "{r:?}");
        }
        assert_eq!(rlimit_resource("nofile"), Some(7)); // RLIMIT_NOFILE
        assert_eq!(rlimit_resource("bogus"), None);
    }

    #[test]
    fn hybrid_reply() {
        assert_eq!(parse_hybrid_ok("OK 1073741824\n").unwrap(), 1073741824);
        assert!(parse_hybrid_ok("NOPE\n").is_err());
        assert_eq!(hybrid_connect_line(1024), "CONNECT 1024\n");
    }
}
