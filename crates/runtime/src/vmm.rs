//! The virtual machine monitor behind a trait: QEMU's `microvm` machine today.
//!
//! [`qemu_args`] builds the command line as a pure function (unit-tested);
//! [`Qemu`] runs it. The lifecycle only sees [`Vmm`], so it is tested with a
//! fake.

use crate::jail::{Cgroup, Jail};
use crate::proc::{die_with_parent, inherit_fds};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors starting or controlling the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("Could not open the VMM log {}", .0.display())]
    Log(PathBuf, #[source] std::io::Error),
    #[error("Could not start {}; install QEMU (Debian: `apt install qemu-system-x86`) or set VESSEL_QEMU", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    /// The child failed between fork and exec: in the jail's mounts, user
    /// switch or limits, or the guest memory supervisor's filter; or the
    /// exec itself. (The kernel reports one errno for all of them.)
    #[error("Could not start {} in its jail (mount namespace, VM user, limits, seccomp listener) or exec it; the binary exists", .0.display())]
    JailedSpawn(PathBuf, #[source] std::io::Error),
    #[error("The VMM has not been started")]
    NotStarted,
    #[error("Could not wait for or kill the VMM")]
    Io(#[source] std::io::Error),
    #[error("Could not pause or resume the VM")]
    Qmp(#[from] crate::qmp::QmpError),
}

/// How a VMM process ended: its exit code, or `-signal` when killed.
pub type VmmExit = i32;

/// One virtual machine monitor process.
pub trait Vmm: Send {
    /// Launch the VM. Must be called from a thread that lives as long as the
    /// VM: the VMM dies with that thread (`PR_SET_PDEATHSIG`).
    fn start(&mut self) -> Result<(), VmmError>;
    /// The VMM's host pid, once started.
    fn pid(&self) -> Option<i32>;
    /// Has the VMM exited? Never blocks; remembers the status once reaped.
    fn try_wait(&mut self) -> Result<Option<VmmExit>, VmmError>;
    /// Kill the VMM (SIGKILL). Killing an exited VMM is not an error.
    fn kill(&mut self) -> Result<(), VmmError>;
    /// Stop (`true`) or resume (`false`) the whole VM: its vCPUs and its
    /// clocks.
    fn pause(&mut self, paused: bool) -> Result<(), VmmError>;
    /// Once exited: the exit code to record and why, when the VMM's jail
    /// killed it (seccomp, memory ceiling).
    fn end_reason(&mut self) -> Option<JailKill> {
        None
    }

    /// Wait up to `limit` for the VMM to exit.
    fn wait_timeout(&mut self, limit: Duration) -> Result<Option<VmmExit>, VmmError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.try_wait()? {
                return Ok(Some(code));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Everything that goes into one QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSpec {
    /// `kvm` or `tcg`.
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The container's qcow2 overlay (root filesystem); none when the root
    /// is a virtio-fs share (see `ContainerConfig::rootfs_dir`).
    pub disk: Option<PathBuf>,
    /// The agent port's chardev: a connected stream socket QEMU inherits
    /// as this descriptor number, whose other end is the runtime's
    /// multiplexer ([`crate::transport`]).
    pub agent_fd: i32,
    /// Where the guest's serial console goes.
    pub boot_log: PathBuf,
    /// QEMU's control socket (QMP), for pause and resume.
    pub qmp_socket: PathBuf,
    /// The host's TSC frequency, handed to the guest kernel: under TCG its
    /// own calibration against the emulated PIT sometimes fails and the boot
    /// then hangs for good (seen in about one boot in five here).
    pub tsc_khz: Option<u64>,
    /// One virtio-net device per entry, backed by an existing host TAP
    /// device (created by vessel-network) or by a passt process. Empty: no
    /// network device.
    pub nics: Vec<Nic>,
    /// Block volumes: one raw virtio-blk disk each, after the root disk.
    pub volumes: Vec<crate::mounts::VolumeDisk>,
    /// One vhost-user-fs device per host directory shared into the VM,
    /// each served by its own `virtiofsd` ([`crate::virtiofs`]).
    pub fs_devices: Vec<FsDevice>,
    /// QEMU's own seccomp filter with everything it offers denied
    /// (`-sandbox`): part of the VMM's jail ([`crate::jail`]).
    pub sandbox: bool,
    /// Where guest memory lives: a memfd of its own (a VM that boots), a
    /// template's file (a template being built), or a template's file
    /// mapped copy-on-write with its device state restored (a clone).
    pub memory: GuestMemory,
}

/// Guest memory ([`QemuSpec::memory`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GuestMemory {
    /// A shared memfd of its own (vhost-user devices map it).
    #[default]
    Memfd,
    /// A template VM's: a file the template keeps (`share=on`), so its
    /// saved state needs no memory of its own (`x-ignore-shared`).
    TemplateFile(PathBuf),
    /// A clone's: the template's memory file mapped copy-on-write
    /// (`share=off`, opened read-only for QEMU by [`crate::memfile`]), and
    /// the template's device state read from this inherited descriptor
    /// (`-incoming defer`, then QMP `migrate-incoming`, see
    /// [`crate::template::finish_restore`]).
    Clone { memory: PathBuf, state_fd: i32 },
}

/// A virtio-fs device: a host directory the guest mounts by `tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDevice {
    /// Short and unique within the VM (`m0`, `m1`..., `root` for a root
    /// filesystem shared from a host directory).
    pub tag: String,
    /// The vhost-user socket of its `virtiofsd`.
    pub socket: PathBuf,
}

/// What carries a virtio-net device's frames on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// An existing host TAP device, by name (root mode, unconfined).
    Tap(String),
    /// An existing host TAP device the runtime attached to as root
    /// ([`crate::jail::open_tap`]), inherited as this descriptor number
    /// (root mode, confined: an unprivileged QEMU cannot attach by name).
    TapFd(i32),
    /// A connected stream socket QEMU inherits as this descriptor number,
    /// whose other end is passt (rootless mode): `-netdev stream` with
    /// `addr.type=fd`.
    Stream(i32),
    /// Nothing: the device is there for the guest but carries no frames
    /// (a template VM's network device, which each clone connects).
    Unplugged,
}

/// A network device of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub backend: NicBackend,
    /// The guest MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

impl QemuSpec {
    /// The descriptors QEMU must inherit (the agent port's socket, the
    /// stream NICs' sockets, the attached TAPs).
    pub fn inherited_fds(&self) -> Vec<i32> {
        std::iter::once(self.agent_fd)
            .chain(self.nics.iter().filter_map(|n| match n.backend {
                NicBackend::Stream(fd) | NicBackend::TapFd(fd) => Some(fd),
                NicBackend::Tap(_) | NicBackend::Unplugged => None,
            }))
            .chain(match self.memory {
                GuestMemory::Clone { state_fd, .. } => Some(state_fd),
                _ => None,
            })
            .collect()
    }
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&info)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split_once(':')?.1.trim().parse().ok()?;
    (mhz.is_finite() && mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// The kernel command line of every container VM.
///
/// `tsc=reliable`: the TSC a VM gets is the host's invariant one (QEMU's
/// TCG reads the host's TSC; KVM offsets it), but a microVM has no HPET or
/// ACPI PM timer, so the kernel's clocksource watchdog checks the TSC
/// against jiffies, which lag whenever the vCPU thread is not scheduled.
/// Under emulation one boot in three then marked the TSC unstable and fell
/// back to the 4 ms `refined-jiffies` clock, which runs behind: the
/// container's time was wrong by tens of milliseconds within seconds.
///
/// `lapic_bus_hz=1000000000`: the local APIC timer's bus runs at 1 GHz in
/// QEMU's emulated APIC and in KVM's. vessel's kernel
/// (guest/kernel/patches) then skips calibrating the APIC timer against the
/// PIT tick, which waited about 220 ms of every boot; another kernel ignores
/// the parameter.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable acpi=off lapic_bus_hz=1000000000";

/// QEMU's machine: `microvm` with its guest memory from the `mem` backend.
///
/// `rtc=on`: without a CMOS RTC the guest kernel still reads it at boot
/// (`mach_get_cmos_time`), finds the update-in-progress bit stuck at 1 and
/// waits in `mdelay` loops before giving up ("Unable to read current time
/// from RTC"): measured under TCG, 2.4 s of wall time per boot (4.0 s
/// against 1.6 s for a bare boot), before the guest's clock even starts, so
/// its uptime did not show it. With the RTC the guest also boots at the
/// host's time instead of 1970; the runtime still sets it ([`crate::clock`]).
///
/// `acpi=off`: QEMU then lists the virtio-mmio devices on the kernel command
/// line (`virtio_mmio.device=`) and the CPUs in an MP table, and the guest
/// skips ACPI: its tables, its interpreter and the drivers that probe its
/// namespace took 60 to 90 ms of the boot's initcalls under TCG. The kernel
/// is told too (`acpi=off` in [`KERNEL_CMDLINE`]), so it does not look for
/// the tables at all.
pub const MACHINE: &str =
    "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem";

/// The virtio-balloon device, for free page reporting only: vessel never
/// inflates it. Only over the shared memfd: on a private mapping of a file
/// (a VM template's memory) QEMU 7.2 punches the reported pages out of the
/// file itself, which every clone maps (measured; docs/GUEST_KERNEL.md).
pub const BALLOON_DEVICE: &str = "virtio-balloon-device,free-page-reporting=on";

/// Words added to the kernel command line, for measuring and debugging
/// the guest's boot (`initcall_debug printk.time=1`, without `quiet`'s
/// effect on them: `loglevel=8`).
pub const CMDLINE_EXTRA_ENV: &str = "VESSEL_KERNEL_CMDLINE_EXTRA";

/// `args` (from [`qemu_args`]) with `extra` appended to the kernel command
/// line, the value after `-append`.
pub fn with_cmdline_extra(mut args: Vec<OsString>, extra: &str) -> Vec<OsString> {
    let extra = extra.trim();
    if extra.is_empty() {
        return args;
    }
    let at = args.iter().rposition(|a| a == "-append").map(|i| i + 1);
    if let Some(line) = at.and_then(|i| args.get_mut(i)) {
        line.push(" ");
        line.push(extra);
    }
    args
}

/// QEMU's `-sandbox` argument: its seccomp filter, with every optional
/// group of system calls denied.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How the jail killed a VMM: the exit code to record, a short tag
/// (`seccomp`, `OOM`: `ls -a` shows it) and the reason.
pub type JailKill = (i32, &'static str, String);

/// What a VMM's end says about how it ended, when the jail killed it;
/// `None` for an ordinary end.
pub fn jail_end_reason(exit: VmmExit, oom_killed: bool) -> Option<JailKill> {
    if exit == -libc::SIGSYS {
        return Some((
            128 + libc::SIGSYS,
            "seccomp",
            "the VMM made a forbidden system call and was killed by its seccomp filter (SIGSYS)"
                .into(),
        ));
    }
    if exit == -libc::SIGKILL && oom_killed {
        return Some((
            128 + libc::SIGKILL,
            "OOM",
            "the VMM was killed for going over its memory ceiling (OOM): guest RAM plus the VMM's overhead"
                .into(),
        ));
    }
    None
}

/// QEMU splits option values at commas; a literal comma is written twice.
fn opt_path(p: &Path) -> OsString {
    let s = p.as_os_str().to_string_lossy().replace(',', ",,");
    OsString::from(s)
}

fn joined(prefix: &str, p: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(opt_path(p));
    s.push(suffix);
    s
}

/// The arguments (after the program name) that boot `spec` under QEMU's
/// `microvm` machine with the agent's virtio-serial port.
pub fn qemu_args(spec: &QemuSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-M");
    push(MACHINE);
    push("-object");
    match &spec.memory {
        GuestMemory::Memfd => push(&format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            spec.memory_mib
        )),
        GuestMemory::TemplateFile(path) => push(&format!(
            "memory-backend-file,id=mem,size={}M,share=on,mem-path={}",
            spec.memory_mib,
            opt_path(path).to_string_lossy()
        )),
        GuestMemory::Clone { memory, .. } => push(&format!(
            "memory-backend-file,id=mem,size={}M,share=off,mem-path={}",
            spec.memory_mib,
            opt_path(memory).to_string_lossy()
        )),
    }
    push("-m");
    push(&spec.memory_mib.to_string());
    push("-smp");
    push(&spec.cpus.max(1).to_string());
    if spec.accel == "kvm" {
        push("-accel");
        push("kvm");
        push("-cpu");
        push("host");
    } else {
        push("-accel");
        push(&format!(
            "tcg,tb-size={}",
            crate::jail::tcg_tb_mib(spec.memory_mib)
        ));
        push("-cpu");
        push("max");
    }
    if spec.sandbox {
        // Everything the filter offers is denied: obsolete system calls,
        // setuid and friends, fork and exec, scheduler and affinity
        // changes. A denied call kills QEMU (SIGSYS).
        push("-sandbox");
        push(SANDBOX);
    }
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ] {
        push(s);
    }
    a.push("-serial".into());
    a.push(joined("file:", &spec.boot_log, ""));
    a.push("-qmp".into());
    a.push(joined("unix:", &spec.qmp_socket, ",server=on,wait=off"));
    a.push("-kernel".into());
    a.push(spec.kernel.clone().into_os_string());
    a.push("-initrd".into());
    a.push(spec.initrd.clone().into_os_string());
    if let Some(disk) = &spec.disk {
        a.push("-drive".into());
        a.push(joined(
            "id=root,file=",
            disk,
            // A full host disk is an I/O error in the guest (QEMU's default
            // pauses the VM on ENOSPC, so the container would hang).
            ",format=qcow2,if=none,discard=unmap,werror=report,rerror=report",
        ));
        a.push("-device".into());
        a.push("virtio-blk-device,drive=root".into());
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        // QEMU's default cache (writeback) tells the guest its disk has a
        // volatile cache, so the guest's fsync becomes a flush, which QEMU
        // turns into fdatasync of the image: what a container syncs is on
        // the host's disk, even if the VM is killed the moment after.
        a.push("-drive".into());
        a.push(joined(
            &format!("id=vol{i},file="),
            &v.path,
            &format!(
                ",format=raw,if=none,cache=writeback,discard=unmap,werror=report,rerror=report{}",
                if v.readonly { ",readonly=on" } else { "" }
            ),
        ));
        a.push("-device".into());
        a.push(
            format!(
                "virtio-blk-device,drive=vol{i},serial={}",
                v.serial.replace(',', ",,")
            )
            .into(),
        );
    }
    // The agent's port: migratable, unlike vhost-user vsock.
    a.push("-device".into());
    a.push("virtio-serial-device,max_ports=2".into());
    a.push("-chardev".into());
    a.push(format!("socket,id=agent,fd={}", spec.agent_fd).into());
    a.push("-device".into());
    a.push(
        format!(
            "virtserialport,chardev=agent,name={}",
            agent_protocol::mux::PORT_NAME
        )
        .into(),
    );
    for (i, fs) in spec.fs_devices.iter().enumerate() {
        a.push("-chardev".into());
        a.push(joined(&format!("socket,id=fs{i},path="), &fs.socket, ""));
        a.push("-device".into());
        a.push(
            format!(
                "vhost-user-fs-device,chardev=fs{i},tag={}",
                fs.tag.replace(',', ",,")
            )
            .into(),
        );
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        if nic.backend == NicBackend::Unplugged {
            a.push("-device".into());
            a.push(format!("virtio-net-device,mac={}", nic.mac.replace(',', ",,")).into());
            continue;
        }
        a.push("-netdev".into());
        a.push(
            match &nic.backend {
                NicBackend::Tap(tap) => format!(
                    "tap,id=n{i},ifname={},script=no,downscript=no",
                    tap.replace(',', ",,")
                ),
                NicBackend::TapFd(fd) => format!("tap,id=n{i},fd={fd}"),
                NicBackend::Stream(fd) => {
                    format!("stream,id=n{i},server=off,addr.type=fd,addr.str={fd}")
                }
                NicBackend::Unplugged => unreachable!("handled above"),
            }
            .into(),
        );
        a.push("-device".into());
        a.push(
            format!(
                "virtio-net-device,netdev=n{i},mac={}",
                nic.mac.replace(',', ",,")
            )
            .into(),
        );
    }
    // Free page reporting: the guest tells QEMU which free 2 MiB blocks it
    // has (about 2 s after they are freed) and QEMU gives them back to the
    // host (hole punch in the memfd, then MADV_DONTNEED), so what a
    // container frees stops costing host memory. `-m` stays the ceiling the
    // guest sees.
    a.push("-device".into());
    a.push(BALLOON_DEVICE.into());
    a.push("-append".into());
    a.push(kernel_cmdline(spec.tsc_khz).into());
    if matches!(spec.memory, GuestMemory::Clone { .. }) {
        // Capabilities first (x-ignore-shared), then `migrate-incoming`.
        a.push("-incoming".into());
        a.push("defer".into());
    }
    a
}

/// Whether `binary` names a file that exists (a path, or a name on `PATH`).
fn resolves(binary: &Path) -> bool {
    if binary.components().count() > 1 {
        return binary.is_file();
    }
    vessel_api::paths::find_in_path(&binary.to_string_lossy()).is_some()
}

/// The kernel command line for a host TSC of `tsc_khz`.
pub fn kernel_cmdline(tsc_khz: Option<u64>) -> String {
    let mut cmdline = KERNEL_CMDLINE.to_string();
    if let Some(khz) = tsc_khz {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline
}

/// The QEMU binary: `VESSEL_QEMU`, else `qemu-system-x86_64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("VESSEL_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// A QEMU process running one container VM.
#[derive(Debug)]
pub struct Qemu {
    binary: PathBuf,
    spec: QemuSpec,
    /// QEMU's own stdout and stderr.
    log: PathBuf,
    child: Option<Child>,
    exit: Option<VmmExit>,
    /// Applied between fork and exec, once.
    jail: Option<Jail>,
    /// The VM's cgroup, for telling an OOM kill.
    cgroup: Option<Arc<Cgroup>>,
}

impl Qemu {
    pub fn new(binary: PathBuf, spec: QemuSpec, log: PathBuf) -> Self {
        Self {
            binary,
            spec,
            log,
            child: None,
            exit: None,
            jail: None,
            cgroup: None,
        }
    }

    /// Run QEMU in `jail`, its ceilings in `cgroup`.
    pub fn confined(mut self, jail: Jail, cgroup: Option<Arc<Cgroup>>) -> Self {
        self.jail = Some(jail);
        self.cgroup = cgroup;
        self
    }
}

impl Vmm for Qemu {
    fn start(&mut self) -> Result<(), VmmError> {
        let open = || OpenOptions::new().create(true).append(true).open(&self.log);
        let out = open().map_err(|e| VmmError::Log(self.log.clone(), e))?;
        let err = open().map_err(|e| VmmError::Log(self.log.clone(), e))?;
        let mut cmd = Command::new(&self.binary);
        let extra = std::env::var(CMDLINE_EXTRA_ENV).unwrap_or_default();
        cmd.args(with_cmdline_extra(qemu_args(&self.spec), &extra))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        inherit_fds(&mut cmd, self.spec.inherited_fds());
        let jailed = self.jail.is_some();
        if let Some(jail) = self.jail.take() {
            jail.apply_to(&mut cmd);
        }
        if let GuestMemory::Clone { memory, .. } = &self.spec.memory {
            // After the jail: its no-new-privileges lets an unprivileged
            // child install the filter.
            let (install, supervisor) = crate::memfile::pair(memory).map_err(VmmError::Io)?;
            supervisor.spawn().map_err(VmmError::Io)?;
            crate::memfile::install(&mut cmd, install);
        }
        let child = cmd.spawn().map_err(|e| {
            // A binary that is there failed in the child's setup.
            if jailed && resolves(&self.binary) {
                VmmError::JailedSpawn(self.binary.clone(), e)
            } else {
                VmmError::Spawn(self.binary.clone(), e)
            }
        })?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn end_reason(&mut self) -> Option<JailKill> {
        let exit = self.exit?;
        let oom = self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        jail_end_reason(exit, oom)
    }

    fn try_wait(&mut self) -> Result<Option<VmmExit>, VmmError> {
        if let Some(code) = self.exit {
            return Ok(Some(code));
        }
        let child = self.child.as_mut().ok_or(VmmError::NotStarted)?;
        match child.try_wait().map_err(VmmError::Io)? {
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| -status.signal().unwrap_or(0));
                self.exit = Some(code);
                Ok(Some(code))
            }
            None => Ok(None),
        }
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let child = self.child.as_mut().ok_or(VmmError::NotStarted)?;
        match child.kill() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(VmmError::Io(e)),
        }
        let status = child.wait().map_err(VmmError::Io)?;
        use std::os::unix::process::ExitStatusExt;
        self.exit = Some(
            status
                .code()
                .unwrap_or_else(|| -status.signal().unwrap_or(0)),
        );
        Ok(())
    }

    /// The VMM process is stopped (SIGSTOP) and continued (SIGCONT), as a
    /// cgroup freezer stops a container's processes: its vCPUs stand
    /// still, the devices keep their state. (Chosen when the agent
    /// ran over vhost-user vsock: QMP's `stop`/`cont` stopped that device
    /// for good. The virtio-serial transport has no such trouble, but a
    /// stopped process is what a frozen container is.)
    fn pause(&mut self, paused: bool) -> Result<(), VmmError> {
        if self.try_wait()?.is_some() {
            return Err(VmmError::Io(std::io::Error::other("the VMM has exited")));
        }
        let pid = self.pid().ok_or(VmmError::NotStarted)?;
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill has no memory-safety preconditions; `pid` is our
        // child, not reaped yet (checked just above), so not reused.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(VmmError::Io(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: &str) -> QemuSpec {
        QemuSpec {
            accel: accel.into(),
            cpus: 2,
            memory_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            disk: Some("/c/a,b/overlay.qcow2".into()),
            agent_fd: 5,
            boot_log: "/c/boot.log".into(),
            qmp_socket: "/run/x/qmp.sock".into(),
            tsc_khz: Some(2_596_120),
            nics: vec![],
            volumes: vec![],
            fs_devices: vec![],
            sandbox: false,
            memory: GuestMemory::Memfd,
        }
    }

    #[test]
    fn tsc_frequency_from_cpuinfo() {
        assert_eq!(
            parse_cpu_mhz("processor\t: 0\ncpu MHz\t\t: 2596.120\n"),
            Some(2_596_120)
        );
        assert_eq!(parse_cpu_mhz("cpu MHz : nonsense\n"), None);
        assert_eq!(parse_cpu_mhz(""), None);
        let a = strings(qemu_args(&spec("tcg")));
        assert!(a.last().unwrap().ends_with("tsc_early_khz=2596120"));
    }

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_virtio_fs_root_has_no_disk() {
        let mut s = spec("tcg");
        s.disk = None;
        s.fs_devices = vec![FsDevice {
            tag: "root".into(),
            socket: "/run/x/fs-root.sock".into(),
        }];
        let line = strings(qemu_args(&s)).join(" ");
        assert!(!line.contains("-drive"), "{line}");
        assert!(!line.contains("virtio-blk"), "{line}");
        assert!(line.contains("tag=root"), "{line}");
    }

    #[test]
    fn tcg_command_line() {
        let a = strings(qemu_args(&spec("tcg")));
        let line = a.join(" ");
        assert!(line.starts_with(
            "-M microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem \
             -object memory-backend-memfd,id=mem,size=256M,share=on -m 256 -smp 2 \
             -accel tcg,tb-size=32 -cpu max -nodefaults -no-user-config -display none -no-reboot \
             -serial file:/c/boot.log -qmp unix:/run/x/qmp.sock,server=on,wait=off \
             -kernel /k/vmlinux -initrd /k/initrd.img"
        ));
        assert!(a.contains(
            &"id=root,file=/c/a,,b/overlay.qcow2,format=qcow2,if=none,discard=unmap,werror=report,rerror=report".to_string()
        ));
        assert!(line.contains(
            "-device virtio-blk-device,drive=root -device virtio-serial-device,max_ports=2 \
             -chardev socket,id=agent,fd=5 -device virtserialport,chardev=agent,name=vessel.agent"
        ));
        assert_eq!(a[a.len() - 2], "-append");
        assert_eq!(
            a[a.len() - 1],
            format!("{KERNEL_CMDLINE} tsc_early_khz=2596120")
        );
    }

    #[test]
    fn volumes_are_raw_disks_with_serials_after_the_root() {
        let mut s = spec("tcg");
        s.volumes = vec![
            crate::mounts::VolumeDisk {
                name: "db".into(),
                path: "/h/volumes/db/disk.img".into(),
                serial: "vessel-vol0".into(),
                readonly: false,
            },
            crate::mounts::VolumeDisk {
                name: "ro".into(),
                path: "/h/volumes/r,o/disk.img".into(),
                serial: "vessel-vol1".into(),
                readonly: true,
            },
        ];
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-device virtio-blk-device,drive=root \
             -drive id=vol0,file=/h/volumes/db/disk.img,format=raw,if=none,cache=writeback,discard=unmap,werror=report,rerror=report \
             -device virtio-blk-device,drive=vol0,serial=vessel-vol0 \
             -drive id=vol1,file=/h/volumes/r,,o/disk.img,format=raw,if=none,cache=writeback,discard=unmap,werror=report,rerror=report,readonly=on \
             -device virtio-blk-device,drive=vol1,serial=vessel-vol1 -device virtio-serial-device"
        ), "{line}");
    }

    #[test]
    fn no_network_means_no_nic() {
        let line = strings(qemu_args(&spec("tcg"))).join(" ");
        assert!(!line.contains("-netdev") && !line.contains("virtio-net"));
    }

    #[test]
    fn tap_backed_nics() {
        let mut s = spec("tcg");
        s.nics = vec![
            Nic {
                backend: NicBackend::Tap("vsl0123456789a".into()),
                mac: "02:76:0a:58:00:02".into(),
            },
            Nic {
                backend: NicBackend::Tap("vslb".into()),
                mac: "02:76:0a:59:00:02".into(),
            },
        ];
        assert_eq!(s.inherited_fds(), vec![5], "the agent port's socket only");
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-netdev tap,id=n0,ifname=vsl0123456789a,script=no,downscript=no \
             -device virtio-net-device,netdev=n0,mac=02:76:0a:58:00:02 \
             -netdev tap,id=n1,ifname=vslb,script=no,downscript=no \
             -device virtio-net-device,netdev=n1,mac=02:76:0a:59:00:02 \
             -device virtio-balloon-device,free-page-reporting=on -append"
        ));
    }

    #[test]
    fn passt_backed_nic_uses_the_inherited_socket() {
        let mut s = spec("tcg");
        s.nics = vec![Nic {
            backend: NicBackend::Stream(7),
            mac: "02:76:0a:00:02:0f".into(),
        }];
        assert_eq!(s.inherited_fds(), vec![5, 7]);
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-netdev stream,id=n0,server=off,addr.type=fd,addr.str=7 \
             -device virtio-net-device,netdev=n0,mac=02:76:0a:00:02:0f \
             -device virtio-balloon-device,free-page-reporting=on -append"
        ));
        assert!(!line.contains("tap,"));
    }

    #[test]
    fn shared_directories_are_vhost_user_fs_devices() {
        let mut s = spec("tcg");
        let line = strings(qemu_args(&s)).join(" ");
        assert!(!line.contains("vhost-user-fs"));
        s.fs_devices = vec![
            FsDevice {
                tag: "m0".into(),
                socket: "/run/x/fs-m0.sock".into(),
            },
            FsDevice {
                tag: "m2".into(),
                socket: "/run/x,y/fs-m2.sock".into(),
            },
        ];
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-device virtserialport,chardev=agent,name=vessel.agent \
             -chardev socket,id=fs0,path=/run/x/fs-m0.sock \
             -device vhost-user-fs-device,chardev=fs0,tag=m0 \
             -chardev socket,id=fs1,path=/run/x,,y/fs-m2.sock \
             -device vhost-user-fs-device,chardev=fs1,tag=m2 \
             -device virtio-balloon-device,free-page-reporting=on -append"
        ));
        // Guest memory must be shareable for any vhost-user device.
        assert!(line.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
    }

    #[test]
    fn sandboxed_qemu_denies_everything_seccomp_offers() {
        let mut s = spec("tcg");
        assert!(!strings(qemu_args(&s)).contains(&"-sandbox".to_string()));
        s.sandbox = true;
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-accel tcg,tb-size=32 -cpu max -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -nodefaults"
        ), "{line}");
        s.accel = "kvm".into();
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains("-accel kvm -cpu host -sandbox on,"), "{line}");
    }

    #[test]
    fn confined_tap_is_an_inherited_descriptor() {
        let mut s = spec("tcg");
        s.nics = vec![Nic {
            backend: NicBackend::TapFd(9),
            mac: "02:76:0a:58:00:02".into(),
        }];
        assert_eq!(s.inherited_fds(), vec![5, 9]);
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-netdev tap,id=n0,fd=9 -device virtio-net-device,netdev=n0,mac=02:76:0a:58:00:02"
        ));
        assert!(!line.contains("ifname="));
    }

    #[test]
    fn jail_kills_have_reasons() {
        let (code, tag, why) = jail_end_reason(-libc::SIGSYS, false).unwrap();
        assert_eq!((code, tag), (159, "seccomp"));
        assert!(why.contains("seccomp"));
        let (code, tag, why) = jail_end_reason(-libc::SIGKILL, true).unwrap();
        assert_eq!((code, tag), (137, "OOM"));
        assert!(why.contains("OOM"));
        assert_eq!(jail_end_reason(-libc::SIGKILL, false), None);
        assert_eq!(jail_end_reason(0, true), None);
    }

    #[test]
    fn free_page_reporting_balloon_before_the_command_line() {
        let a = strings(qemu_args(&spec("tcg")));
        let at = a.iter().position(|s| s == BALLOON_DEVICE).unwrap();
        assert_eq!(a[at - 1], "-device");
        assert_eq!(a[at + 1], "-append");
    }

    #[test]
    fn command_line_extras_go_at_the_end_of_the_kernel_command_line() {
        let a = qemu_args(&spec("tcg"));
        assert_eq!(with_cmdline_extra(a.clone(), "  "), a);
        let b = strings(with_cmdline_extra(a, " initcall_debug printk.time=1 "));
        assert_eq!(
            b[b.len() - 1],
            format!("{KERNEL_CMDLINE} tsc_early_khz=2596120 initcall_debug printk.time=1")
        );
        assert!(with_cmdline_extra(vec!["-m".into()], "x") == vec![OsString::from("-m")]);
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let line = strings(qemu_args(&spec("kvm"))).join(" ");
        assert!(line.contains("-accel kvm -cpu host"));
        assert!(!line.contains("tcg"));
    }

    #[test]
    fn a_clone_maps_its_templates_memory_and_restores_its_devices() {
        let mut s = spec("tcg");
        s.nics = vec![Nic {
            backend: NicBackend::Unplugged,
            mac: "02:76:ff:ff:ff:fe".into(),
        }];
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(line.contains(
            "-device virtio-net-device,mac=02:76:ff:ff:ff:fe -device virtio-balloon-device"
        ));
        assert!(!line.contains("-netdev") && !line.contains("-incoming"));
        assert_eq!(s.inherited_fds(), vec![5], "the agent port only");
        s.memory = GuestMemory::TemplateFile("/t/k.building/memory".into());
        let line = strings(qemu_args(&s)).join(" ");
        assert!(line.contains(
            "-object memory-backend-file,id=mem,size=256M,share=on,mem-path=/t/k.building/memory -m 256"
        ));
        assert!(!line.contains("-incoming"));
        s.memory = GuestMemory::Clone {
            memory: "/t/a,b/memory".into(),
            state_fd: 11,
        };
        let a = strings(qemu_args(&s));
        let line = a.join(" ");
        assert!(line.contains(
            "-object memory-backend-file,id=mem,size=256M,share=off,mem-path=/t/a,,b/memory -m 256"
        ));
        assert_eq!(a[a.len() - 2..], ["-incoming", "defer"]);
        assert_eq!(s.inherited_fds(), vec![5, 11]);
    }

    #[test]
    fn a_binary_resolves_by_path_or_on_path() {
        assert!(resolves(Path::new("sh")));
        assert!(resolves(Path::new("/bin/sh")));
        assert!(!resolves(Path::new("/nonexistent/qemu")));
        assert!(!resolves(Path::new("no-such-binary-vessel")));
    }

    #[test]
    fn zero_cpus_still_boots_one() {
        let mut s = spec("tcg");
        s.cpus = 0;
        assert!(strings(qemu_args(&s)).join(" ").contains("-smp 1 "));
    }
}
