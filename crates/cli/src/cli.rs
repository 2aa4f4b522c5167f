//! Command-line syntax, following Docker's flags and conventions.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vessel",
    version,
    about = "Run Linux containers, each in its own lightweight VM",
    after_help = "VESSEL_HOME selects the instance (default /var/lib/vessel as root)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and run a container in a new VM
    Run(RunArgs),
    /// Create a container without starting it (prints its ID)
    Create(RunArgs),
    /// Start created or stopped containers (a stopped one boots a fresh VM on its disk)
    Start(StartArgs),
    /// Stop and start containers again (a fresh VM, the same disk)
    Restart(RestartArgs),
    /// Attach to a running container's input and output
    Attach(AttachArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Copy files between a container and the host (`-` for a tar stream on stdin/stdout)
    Cp(CpArgs),
    /// Write a container's filesystem as a tar archive
    Export(ExportArgs),
    /// Show containers' resource usage (CPU, memory, network and block I/O, processes)
    Stats(StatsArgs),
    /// Show the processes running in a container
    Top(TopArgs),
    /// Pause every process of containers (their whole VMs)
    Pause(TargetsArgs),
    /// Resume paused containers
    Unpause(TargetsArgs),
    /// Rename a container
    Rename(RenameArgs),
    /// Change settings of existing containers (their restart policy)
    Update(UpdateArgs),
    /// List a container's published ports, or the host address of one
    Port(PortArgs),
    /// Manage containers
    #[command(subcommand)]
    Container(ContainerCommand),
    /// List containers
    #[command(visible_alias = "ps")]
    Ls(LsArgs),
    /// Show a container's output
    Logs(LogsArgs),
    /// Stop containers: SIGTERM, then SIGKILL after a grace period
    Stop(StopArgs),
    /// Send a signal to containers
    Kill(KillArgs),
    /// Remove containers
    Rm(RmArgs),
    /// Show containers' configuration and state as JSON
    Inspect(TargetsArgs),
    /// Wait for containers to end and print their exit codes
    Wait(TargetsArgs),
    /// Show what happens to containers, as it happens
    Events(EventsArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Download an image from a registry (same as `image pull`)
    Pull(PullArgs),
    /// Upload an image to a registry (same as `image push`)
    Push(PushArgs),
    /// Log in to a registry (same as `registry login`)
    Login(LoginArgs),
    /// Log out from a registry (same as `registry logout`)
    Logout(LogoutArgs),
    /// Manage registry credentials
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage the vessel services
    #[command(subcommand)]
    System(SystemCommand),
    /// Show the versions of the client, the apiserver, the agent protocol and the guest kernel
    Version(VersionArgs),
    /// Print a shell completion script (bash, zsh or fish)
    Completion(CompletionArgs),
    /// Write man pages for vessel and each of its commands into a directory
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it ends
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container ID
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set environment variables (KEY=VALUE, or KEY to pass the current value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Number of virtual CPUs (fractions round up)
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory of the VM (e.g. 256m, 1g)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Override the image's entrypoint
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User name or UID, optionally with group (user[:group])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Publish a container's port(s) to the host: [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,
    /// Connect the container to a network (default: `default`; `none`: no network)
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    /// Another name the network's DNS answers for the container
    #[arg(long = "network-alias", value_name = "ALIAS")]
    pub network_alias: Vec<String>,
    /// The container's host name (default: the first 12 characters of its ID)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Resource limit of the container's process: NAME=SOFT[:HARD] (e.g. nofile=1024:4096)
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Keep the container's stdin open and send ours to it
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container's process a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The keys that detach from the container, leaving it running (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Attach to STDIN, STDOUT or STDERR (repeatable; default: STDOUT and STDERR, and STDIN with -i)
    #[arg(short = 'a', long = "attach", value_name = "STREAM", value_parser = parse_stream)]
    pub attach: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines; KEY alone takes our value; # comments)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Mount a host directory or a volume: HOST-DIR:CTR-PATH[:ro], VOLUME:CTR-PATH[:ro|nocopy], or CTR-PATH (a new anonymous volume)
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:TARGET[:OPTS]")]
    pub volume: Vec<String>,
    /// Mount: type=bind|volume|tmpfs,source=...,target=...[,readonly][,volume-nocopy][,tmpfs-size=...][,tmpfs-mode=...]
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Mount a tmpfs: PATH[:size=64m,mode=1777,exec,...] (noexec, nosuid, nodev by default)
    #[arg(long = "tmpfs", value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Mount the container's root filesystem read-only (its mounts stay writable)
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Boot the VM's kernel instead of restoring a VM template (slower start)
    #[arg(long = "no-template")]
    pub no_template: bool,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Restart policy when the container ends: no, on-failure[:MAX], always, unless-stopped
    #[arg(long, value_name = "POLICY", value_parser = vessel_api::restart::parse_restart_flag)]
    pub restart: Option<vessel_api::restart::RestartPolicy>,
    /// Pull the image before creating: `missing` (default), `always`, `never`
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,
    /// Platform to pull if the image is pulled (os/arch[/variant])
    #[arg(long)]
    pub platform: Option<String>,
    /// Verify the registry's TLS certificate when pulling (`--tls-verify=false` also allows plain HTTP)
    #[arg(long = "tls-verify", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Suppress the pull output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The image to run
    pub image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The healthcheck flags of `run` and `create` (Docker's), checked by
/// [`crate::commands::health`].
#[derive(Args, Debug, Default)]
pub struct HealthArgs {
    /// Command to run to check health (run by /bin/sh -c in the container)
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s)
    #[arg(
        long = "health-interval",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s)
    #[arg(
        long = "health-timeout",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy (default 3)
    #[arg(
        long = "health-retries",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub health_retries: Option<i64>,
    /// Start period for the container to initialize before failures count (ms|s|m|h) (default 0s)
    #[arg(
        long = "health-start-period",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
}

/// `-a STDIN|STDOUT|STDERR`, in any case: its lower-case name.
fn parse_stream(s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "stdin" | "stdout" | "stderr" => Ok(l),
        _ => Err(format!("invalid stream {s:?}: use STDIN, STDOUT or STDERR")),
    }
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach to the container's output and exit with its exit code (one container)
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach our stdin to the container's (one container; it must have been created with -i)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// The keys that detach from the container, leaving it running (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// Seconds to wait for it to stop before killing it
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Do not attach our stdin
    #[arg(long)]
    pub no_stdin: bool,
    /// The keys that detach from the container, leaving it running (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Start the command and return at once; it runs on its own
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep the command's stdin open and send ours to it
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set environment variables (KEY=VALUE, or KEY to pass the current value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container (default: the container's)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User name or UID, optionally with group (default: the container's user)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The keys that detach from the command (default ctrl-p,ctrl-q)
    #[arg(long, value_name = "KEYS")]
    pub detach_keys: Option<String>,
    pub container: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Forms:\n  vessel cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-\n  vessel cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH\n\nPaths in the container are taken from its root (/). A source ending in /. copies a directory's contents. `-` is a tar stream on stdin or stdout. Into the container files belong to root unless -a; out of it, to the user running vessel unless -a."
)]
pub struct CpArgs {
    /// Archive mode: keep the owners (UID/GID) of the source
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Follow a symbolic link given as the source (on the host)
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    pub src: String,
    pub dest: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The file to write (default: stdout, when it is not a terminal)
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Print one sample (taken over a second) and exit
    #[arg(long)]
    pub no_stream: bool,
    /// Output format: `table` (default) or `json` (one object per container and sample)
    #[arg(long)]
    pub format: Option<String>,
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    pub container: String,
}

#[derive(Args, Debug)]
pub struct RenameArgs {
    pub container: String,
    pub new_name: String,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Restart policy when the container ends: no, on-failure[:MAX], always, unless-stopped
    #[arg(long, value_name = "POLICY", required = true, value_parser = vessel_api::restart::parse_restart_flag)]
    pub restart: Option<vessel_api::restart::RestartPolicy>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PortArgs {
    pub container: String,
    /// A container port, PORT[/tcp|udp]
    pub private_port: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Remove every container that does not run
    Prune {
        /// Do not ask for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Output format: `text` (default) or `json`
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    pub shell: String,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The directory to write the pages to (created if missing)
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Show all containers (default shows just running)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: `table` (default) or `json` (one object per line)
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output until the container ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (or `all`)
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<String>,
    /// Only output since this time: Unix seconds, RFC 3339 or a duration ago (10m, 1h30m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show when each line was written (RFC 3339, nanoseconds)
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (kills it)
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the container's anonymous volumes too (named volumes stay)
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Show events from this time on: Unix seconds, RFC 3339 (2024-05-01T12:00:00Z) or a duration ago (10m, 1h30m)
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at this time (same forms); without it, follow events until interrupted
    #[arg(long)]
    pub until: Option<String>,
    /// Only events matching KEY=VALUE (type, event, container, image, volume); several are ANDed, the same key ORed
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE[,KEY=VALUE]")]
    pub filter: Vec<String>,
    /// Output format: `text` (default) or `json` (one object per line)
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args, Debug)]
pub struct TargetsArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load images from an OCI layout or `docker save` archive
    Load {
        /// The archive to read
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        /// Print only the image references
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Create an image from a root filesystem tarball
    Import { file: PathBuf, reference: String },
    /// List images
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short = 'q', long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove images
    #[command(visible_alias = "remove")]
    Rm {
        /// Remove even if a container uses it
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// Give an image another reference
    Tag { source: String, target: String },
    /// Show images' details as a JSON array
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove unused images
    Prune {
        /// Remove every image no container uses, not just untagged ones
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not ask for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Write images to an archive (OCI layout, also loadable by `docker load`)
    Save {
        /// The file to write (default: stdout, when it is not a terminal)
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Print only the image's full reference
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Platform of the image in a multi-platform index (os/arch[/variant])
    #[arg(long)]
    pub platform: Option<String>,
    /// Verify the registry's TLS certificate (`--tls-verify=false` also allows plain HTTP)
    #[arg(long = "tls-verify", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The image, e.g. `alpine`, `ghcr.io/org/app:1.2`, `repo@sha256:...`
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Print only the image's full reference
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Verify the registry's TLS certificate (`--tls-verify=false` also allows plain HTTP)
    #[arg(long = "tls-verify", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The image to push, named with its registry
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Verify the registry's TLS certificate (`--tls-verify=false` also allows plain HTTP)
    #[arg(long = "tls-verify", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// The registry (default: Docker Hub)
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub)
    pub server: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Log in to a registry and store the credentials
    Login(LoginArgs),
    /// Remove a registry's stored credentials
    Logout(LogoutArgs),
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network
    Create {
        /// Subnet in CIDR form, e.g. 10.89.0.0/24 (default: a free one)
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address (default: the subnet's first address)
        #[arg(long)]
        gateway: Option<String>,
        /// No way out: no NAT and no forwarding beyond the network
        #[arg(long)]
        internal: bool,
        /// Driver (only `bridge`)
        #[arg(short = 'd', long, default_value = "bridge", value_parser = ["bridge"])]
        driver: String,
        name: String,
    },
    /// List networks
    #[command(visible_alias = "list")]
    Ls {
        /// Only display network names
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: `table` (default) or `json` (one object per line)
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks' details as a JSON array
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove all networks no container uses (never `default`)
    Prune {
        /// Do not ask for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (an ext4 disk image by default; prints its name)
    Create {
        /// Driver (only `local`)
        #[arg(short = 'd', long, default_value = "local", value_parser = ["local"])]
        driver: String,
        /// Options: size=SIZE (default 16g, sparse), backing=block|shared (or shared=true)
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        opt: Vec<String>,
        /// Set metadata on the volume
        #[arg(long = "label", value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// The volume's name (default: 64 generated hex digits)
        name: Option<String>,
    },
    /// List volumes
    #[command(visible_alias = "list")]
    Ls {
        /// Only display volume names
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Output format: `table` (default) or `json` (one object per line)
        #[arg(long)]
        format: Option<String>,
    },
    /// Show volumes' details as a JSON array
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (never one a container uses, running or not)
    #[command(visible_alias = "remove")]
    Rm {
        /// A volume that does not exist is no error
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove the anonymous volumes no container uses
    Prune {
        /// Named volumes too
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not ask for confirmation
        #[arg(short = 'f', long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Start the apiserver under its supervisor, in the background
    Start {
        /// Let this group use the API socket (mode 0660)
        #[arg(long)]
        group: Option<String>,
        /// Subnet of the default network when it is created (CIDR, e.g. 10.88.0.0/24)
        #[arg(long)]
        subnet: Option<String>,
    },
    /// Stop every container, then the apiserver and its supervisor
    Stop,
    /// Install this instance as systemd units: a socket that starts the
    /// apiserver on demand, and a service restarted on failure (and started at boot)
    Install(InstallArgs),
    /// Stop, disable and remove the units `system install` wrote for this
    /// instance (nothing else: its containers and data stay)
    Uninstall(UninstallArgs),
    /// Let containerd run tasks and Kubernetes pods in vessel VMs: install
    /// containerd-shim-vessel-v2 and add the runtime handler `vessel` to
    /// containerd's configuration
    InstallShim(InstallShimArgs),
    /// Show the apiserver, its helpers, the kernel and the accelerator
    Status {
        #[arg(long)]
        format: Option<String>,
    },
    /// Print the services' logs
    Logs,
    /// Show the disk space images, containers and volumes take
    Df {
        /// One line per image and volume too
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Output format: `table` (default) or `json`
        #[arg(long)]
        format: Option<String>,
    },
}

/// `vessel system install`.
#[derive(Args, Debug, Clone, Default)]
pub struct InstallArgs {
    /// Per-user units (~/.config/systemd/user, `systemctl --user`; rootless);
    /// the default when not root
    #[arg(long)]
    pub user: bool,
    /// Write the units into DIR (and enable them by links there) without
    /// asking systemd: for another system or an image being built
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Print the units and what would be done; write nothing
    #[arg(long, visible_alias = "print")]
    pub dry_run: bool,
    /// Unit name (default: `vessel`, or `vessel-HASH` for a VESSEL_HOME other
    /// than the default)
    #[arg(long)]
    pub name: Option<String>,
    /// Let this group use the API socket (mode 0660)
    #[arg(long)]
    pub group: Option<String>,
    /// Subnet of the default network when it is created (CIDR, e.g. 10.88.0.0/24)
    #[arg(long)]
    pub subnet: Option<String>,
    /// Start the apiserver only on the first request, not at boot
    #[arg(long)]
    pub on_demand: bool,
    /// Enable the units without starting them now
    #[arg(long)]
    pub no_start: bool,
}

/// `vessel system install-shim`.
#[derive(Args, Debug, Clone)]
pub struct InstallShimArgs {
    /// Where containerd finds the shim (on its PATH)
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// containerd's configuration, to which the CRI runtime handler is added
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/containerd/config.toml"
    )]
    pub config: PathBuf,
    /// Install the binaries only (enough for `ctr run --runtime io.containerd.vessel.v2`)
    #[arg(long)]
    pub no_config: bool,
    /// Print what would be done; change nothing
    #[arg(long, visible_alias = "print")]
    pub dry_run: bool,
}

/// `vessel system uninstall`.
#[derive(Args, Debug, Clone, Default)]
pub struct UninstallArgs {
    /// Per-user units (the default when not root)
    #[arg(long)]
    pub user: bool,
    /// The directory the units were written into with `install --unit-dir`
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Print what would be done; change nothing
    #[arg(long, visible_alias = "print")]
    pub dry_run: bool,
    /// Unit name (default: the one installed for this VESSEL_HOME)
    #[arg(long)]
    pub name: Option<String>,
}
