//! The VMM's jail, after Firecracker's jailer: each container's QEMU runs
//!
//! - as a user and group of their own (a per-VM id from a reserved range,
//!   [`VmIds`]), with no supplementary groups but the group of `/dev/kvm`
//!   under KVM; the files they must open are handed to that id
//!   ([`hand_over`]) or passed as open descriptors (the TAP, [`open_tap`]);
//! - in a mount namespace of their own whose root is a small read-only
//!   tmpfs holding only what the process needs ([`Plan`]): `/usr` and the
//!   merged-usr links, a few device nodes, and this VM's own files bound at
//!   their original absolute paths (a qcow2 overlay names its base image by
//!   absolute path);
//! - with `PR_SET_NO_NEW_PRIVS`, rlimits, and in a cgroup with a memory
//!   and a pids ceiling where the host has a usable one ([`Cgroup`]).
//!
//! QEMU adds its own seccomp filter (`-sandbox`, in [`crate::vmm`]).
//!
//! Everything the child does between fork and exec ([`Jail::pre_exec`])
//! is a raw system call on data prepared before the fork: no allocation,
//! no lock.
//!
//! As an unprivileged user (rootless vessel) there is no other id to
//! switch to and no mount namespace without a user namespace: the jail
//! then applies what an unprivileged process can (no new privileges,
//! rlimits, QEMU's seccomp).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vessel_api::confine::{Ceilings, CGROUP_PARENT};

/// The first uid/gid of the range VMs run as. Above systemd's container
/// range (524288–1879048191), below 2^31.
pub const VM_ID_BASE: u32 = 1_900_000_000;
/// How many VMs can be confined at the same time on one host.
pub const VM_ID_COUNT: u32 = 65_536;
/// Threads and processes of one VM (QEMU's vCPU, I/O and worker threads
/// and its helpers'): the pids ceiling.
pub const PIDS_MAX: u64 = 512;
/// Open files per process (QEMU: disks, sockets, eventfds, ioeventfds).
pub const NOFILE_MAX: u64 = 4096;
/// The largest TCG translation cache of a VM (MiB): `-accel tcg,tb-size=`.
/// QEMU 7.2 reserves up to 1 GiB (an eighth of the host's RAM) by default
/// and fills it as it translates; a size of our own keeps the memory
/// ceiling honest ([`default_tcg_tb_mib`]).
pub const TCG_TB_MIB: u64 = 256;

/// Sets every VM's TCG translation cache (MiB) outright: for measuring.
pub const TCG_TB_ENV: &str = "VESSEL_TCG_TB_MIB";

/// The translation cache of a VM with `guest_mib` of RAM (MiB): the
/// [`TCG_TB_ENV`] override, else [`default_tcg_tb_mib`].
pub fn tcg_tb_mib(guest_mib: u64) -> u64 {
    std::env::var(TCG_TB_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&mib| mib > 0)
        .unwrap_or_else(|| default_tcg_tb_mib(guest_mib))
}

/// The translation cache of a VM with `guest_mib` of RAM (MiB): an eighth
/// of its RAM, between 16 and [`TCG_TB_MIB`]. The cache's pages stay
/// resident once written (QEMU flushes a full cache and starts over, it
/// never gives pages back), and booting and idling take 32 to 64 MiB of
/// it: measured (bench/tb_size.py), an idle container's QEMU PSS is 139 MiB
/// with 256 or 64, 130 with 32, 112 with 16, with no slowdown of `run` or
/// of a CPU-bound container at 16. A VM with more memory runs larger
/// programs, whose code gets the larger cache.
pub fn default_tcg_tb_mib(guest_mib: u64) -> u64 {
    (guest_mib / 8).clamp(16, TCG_TB_MIB)
}
/// QEMU's own memory besides the guest's RAM and the translation cache:
/// its heap, libraries, device state, I/O buffers (MiB).
pub const VMM_OVERHEAD_MIB: u64 = 256;

/// Errors setting up the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("No free VM user id in {VM_ID_BASE}..{}: too many confined VMs on this host", VM_ID_BASE as u64 + VM_ID_COUNT as u64)]
    NoIds,
    #[error("Could not take a VM user id (lock directory {})", .0.display())]
    IdLock(PathBuf, #[source] io::Error),
    #[error("Could not hand {} to the VM's user", .0.display())]
    HandOver(PathBuf, #[source] io::Error),
    #[error("Could not make the VM's cgroup {}", .0.display())]
    Cgroup(PathBuf, #[source] io::Error),
    #[error("Could not open the TAP device {0}")]
    Tap(String, #[source] io::Error),
    #[error("Could not enter the network namespace {}", .0.display())]
    Netns(PathBuf, #[source] io::Error),
    #[error("A path for the VM's jail contains a NUL byte: {}", .0.display())]
    Path(PathBuf),
    #[error("The VM's own user cannot open /dev/kvm (mode {0:o}, group {1}): give /dev/kvm to a group with read-write access (Debian: root:kvm 0660, the udev default), or run with VESSEL_ACCEL=tcg or VESSEL_VMM_CONFINE=0")]
    Kvm(u32, u32),
}

/// Sets every VM's memory ceiling (MiB) outright, instead of guest RAM +
/// overhead: for tests (an OOM kill on purpose) and debugging.
pub const CEILING_ENV: &str = "VESSEL_VMM_MEMORY_CEILING_MIB";

/// The memory ceiling of a VM with `guest_mib` of RAM under `accel`.
pub fn memory_ceiling_mib(guest_mib: u64, accel: &str) -> u64 {
    let tcg = if accel == "kvm" {
        0
    } else {
        tcg_tb_mib(guest_mib)
    };
    guest_mib + tcg + VMM_OVERHEAD_MIB
}

/// Is this process root (so it can give the VM its own ids)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A per-VM uid (= gid), held while the lock file is open: a runtime that
/// dies releases it with its descriptors. A release removes the file
/// (still locked, so a taker that opened it meanwhile sees it unlinked and
/// tries again): the directory holds the ids in use, not every id used.
#[derive(Debug)]
pub struct VmIds {
    pub id: u32,
    lock: File,
    path: PathBuf,
}

impl Drop for VmIds {
    fn drop(&mut self) {
        // Only our own file: a killed holder's file may have been taken
        // over (the same path, another inode) by now.
        if same_file(&self.lock, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Is `path` (still) the file `f` has open?
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl VmIds {
    /// Take a free id, starting at one derived from `container_id` (so a
    /// container usually gets the same id again).
    pub fn take(lock_dir: &Path, container_id: &str) -> Result<Self, JailError> {
        std::fs::create_dir_all(lock_dir).map_err(|e| JailError::IdLock(lock_dir.into(), e))?;
        let start = container_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % VM_ID_COUNT;
        let mut i = 0;
        let mut unlinked = 0;
        while i < VM_ID_COUNT {
            let id = VM_ID_BASE + (start + i) % VM_ID_COUNT;
            let path = lock_dir.join(id.to_string());
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| JailError::IdLock(path.clone(), e))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                if same_file(&f, &path) {
                    return Ok(Self { id, lock: f, path });
                }
                // Its holder released and removed it between our open and
                // our lock: the id is free, open it again (a bounded
                // number of times, in case of a storm of releases).
                unlinked += 1;
                if unlinked < 64 {
                    continue;
                }
            }
            i += 1;
        }
        Err(JailError::NoIds)
    }
}

/// Give `path` to the VM's user (a per-container file or directory).
pub fn hand_over(path: &Path, id: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(id), Some(id))
        .map_err(|e| JailError::HandOver(path.to_path_buf(), e))
}

/// Open the existing TAP device `name` as root and return the descriptor
/// for QEMU (`-netdev tap,fd=N`): an unprivileged QEMU cannot attach to a
/// TAP by name. The descriptor is close-on-exec; [`crate::proc::inherit_fds`]
/// clears that in QEMU only.
pub fn open_tap(name: &str) -> Result<OwnedFd, JailError> {
    let err = |e| JailError::Tap(name.to_string(), e);
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(io::Error::from(io::ErrorKind::InvalidInput)));
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes),
    // which `req` is, on a descriptor we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(tun.into())
}

/// [`open_tap`] for a TAP in another network namespace (`netns`, a path
/// such as `/var/run/netns/X`: a containerd task's CNI namespace). A
/// short-lived thread enters the namespace and attaches; the descriptor
/// stays bound to the device there, and the runtime's own threads never
/// change namespace.
pub fn open_tap_in(netns: &Path, name: &str) -> Result<OwnedFd, JailError> {
    let path = netns.to_path_buf();
    let ns = File::open(&path).map_err(|e| JailError::Netns(path.clone(), e))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a descriptor we own; CLONE_NEWNET changes
        // only this thread's network namespace, and the thread ends here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(JailError::Netns(path, io::Error::last_os_error()));
        }
        open_tap(&name)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(JailError::Netns(
            netns.to_path_buf(),
            io::Error::other("the namespace thread panicked"),
        ))
    })
}

/// What one bind mount of the jail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path; it appears at the same path in the jail.
    pub path: PathBuf,
    pub readonly: bool,
    /// A device node (the mount keeps device access).
    pub device: bool,
}

/// The jail's root: directories, links and bind mounts, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub links: Vec<(PathBuf, PathBuf)>,
    pub binds: Vec<Bind>,
}

impl Plan {
    /// What any dynamically linked program needs: `/usr`, the merged-usr
    /// links (or directories, bound read-only, on a split-usr host), the
    /// loader's cache, `/dev/null` and `/dev/urandom`, and the binary
    /// itself when it is not under `/usr`.
    pub fn base(binary: &Path) -> Self {
        let mut p = Self::default();
        p.ro("/usr");
        for top in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
            match std::fs::symlink_metadata(top) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(top) {
                        p.links.push((top.into(), t));
                    }
                }
                Ok(m) if m.is_dir() => p.ro(top),
                _ => {}
            }
        }
        if Path::new("/etc/ld.so.cache").is_file() {
            p.ro("/etc/ld.so.cache");
        }
        for dev in ["/dev/null", "/dev/zero", "/dev/urandom"] {
            p.device(dev);
        }
        if !binary.starts_with("/usr") && binary.is_absolute() {
            p.ro(binary);
        }
        p
    }

    pub fn ro(&mut self, path: impl Into<PathBuf>) {
        self.add(path.into(), true, false);
    }

    pub fn rw(&mut self, path: impl Into<PathBuf>) {
        self.add(path.into(), false, false);
    }

    pub fn device(&mut self, path: impl Into<PathBuf>) {
        self.add(path.into(), false, true);
    }

    fn add(&mut self, path: PathBuf, readonly: bool, device: bool) {
        // A read-only file inside a directory already bound read-only (the
        // kernel of an install under /usr/local/share) is there already; a
        // mount point for it could not be made inside that read-only bind.
        let covered = readonly
            && self
                .binds
                .iter()
                .any(|b| b.readonly && !b.device && path.starts_with(&b.path));
        if !covered && !self.binds.iter().any(|b| b.path == path) {
            self.binds.push(Bind {
                path,
                readonly,
                device,
            });
        }
    }
}

/// Who the jailed process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the group of `/dev/kvm` under KVM).
    pub groups: Vec<u32>,
}

/// The group owning `/dev/kvm`, when it lets its group open it.
pub fn kvm_group() -> Option<u32> {
    let m = std::fs::metadata("/dev/kvm").ok()?;
    group_rw(m.mode(), m.gid()).then_some(m.gid())
}

fn group_rw(mode: u32, gid: u32) -> bool {
    mode & 0o060 == 0o060 && gid != 0
}

/// Can a user of its own, with the device's group added, open `/dev/kvm`?
fn kvm_usable(mode: u32, gid: u32) -> bool {
    mode & 0o006 == 0o006 || group_rw(mode, gid)
}

/// One VM's cgroup(s): created before the VM, joined between fork and exec,
/// removed after ([`Cgroup::remove`], explicitly: a boot retry makes the
/// same directory again while the old handle may still be alive).
#[derive(Debug)]
pub struct Cgroup {
    /// The leaf directories (one for v2, memory and pids for v1).
    dirs: Vec<PathBuf>,
    /// Where the OOM kill counter is: `memory.events` (v2) or
    /// `memory.oom_control` (v1).
    oom_file: PathBuf,
    peak_file: Option<PathBuf>,
}

impl Cgroup {
    /// Create `vessel/<id>` under the hierarchies of `ceilings` with these
    /// limits; `None` for [`Ceilings::Rlimits`]. A stale one (from a runtime
    /// that was killed) is emptied and made again.
    pub fn create(
        ceilings: &Ceilings,
        id: &str,
        memory_bytes: u64,
        pids: u64,
    ) -> Result<Option<Self>, JailError> {
        let w = |dir: &Path, file: &str, value: &str| {
            std::fs::write(dir.join(file), value).map_err(|e| JailError::Cgroup(dir.join(file), e))
        };
        let make = |parent: &Path| -> Result<PathBuf, JailError> {
            let dir = parent.join(CGROUP_PARENT).join(id);
            if dir.exists() {
                remove_dir(&dir);
            }
            std::fs::create_dir_all(&dir).map_err(|e| JailError::Cgroup(dir.clone(), e))?;
            Ok(dir)
        };
        match ceilings {
            Ceilings::Rlimits => Ok(None),
            Ceilings::CgroupV2(root) => {
                // Controllers must be enabled down to the parent.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
                let parent = root.join(CGROUP_PARENT);
                std::fs::create_dir_all(&parent)
                    .map_err(|e| JailError::Cgroup(parent.clone(), e))?;
                w(&parent, "cgroup.subtree_control", "+memory +pids")?;
                let dir = make(root)?;
                w(&dir, "memory.max", &memory_bytes.to_string())?;
                // No swap: the ceiling is what the VM may hold.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                w(&dir, "pids.max", &pids.to_string())?;
                Ok(Some(Self {
                    oom_file: dir.join("memory.events"),
                    peak_file: Some(dir.join("memory.peak")),
                    dirs: vec![dir],
                }))
            }
            Ceilings::CgroupV1 { memory, pids: p } => {
                let m = make(memory)?;
                w(&m, "memory.limit_in_bytes", &memory_bytes.to_string())?;
                let _ = std::fs::write(m.join("memory.swappiness"), "0");
                let pd = match make(p) {
                    Ok(d) => d,
                    Err(e) => {
                        remove_dir(&m);
                        return Err(e);
                    }
                };
                w(&pd, "pids.max", &pids.to_string())?;
                Ok(Some(Self {
                    oom_file: m.join("memory.oom_control"),
                    peak_file: Some(m.join("memory.max_usage_in_bytes")),
                    dirs: vec![m, pd],
                }))
            }
        }
    }

    /// The `cgroup.procs` files a process joins.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Has the kernel OOM-killed a process of this cgroup?
    pub fn oom_killed(&self) -> bool {
        let text = std::fs::read_to_string(&self.oom_file).unwrap_or_default();
        parse_oom_kills(&text) > 0
    }

    /// The highest memory use so far (bytes), where the kernel keeps it.
    pub fn peak_bytes(&self) -> Option<u64> {
        let f = self.peak_file.as_ref()?;
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    }

    /// Kill what is left in it and remove it.
    pub fn remove(&self) {
        for d in &self.dirs {
            remove_dir(d);
        }
    }
}

/// `oom_kill N` in `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// Remove a leaf cgroup: SIGKILL any process still in it, then rmdir,
/// retrying while the kernel is still taking exited processes out.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions; a pid in the
            // VM's own cgroup is one of the VM's processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                crate::log(&format!("could not remove cgroup {}: {e}", dir.display()));
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Where per-VM user ids are locked: host-wide, since every vessel
/// instance on the host draws from the same range.
pub const ID_LOCK_DIR: &str = "/run/vessel/vm-ids";

/// The confinement of one container's VM, for the runtime helper: who it
/// runs as, what enforces its ceilings, its cgroup.
#[derive(Debug)]
pub struct VmJail {
    /// `None` when not root (rootless: the VM runs as the user).
    pub ids: Option<VmIds>,
    pub ceilings: Ceilings,
    pub cgroup: Option<Arc<Cgroup>>,
    /// Rootless: the mount namespace is made inside a user namespace
    /// that maps only the user itself.
    pub userns: bool,
}

impl VmJail {
    /// `None` when confinement is off (`VESSEL_VMM_CONFINE=0`).
    pub fn prepare(container_id: &str) -> Result<Option<Self>, JailError> {
        if !vessel_api::confine::enabled() {
            return Ok(None);
        }
        let ids = if is_root() {
            Some(VmIds::take(Path::new(ID_LOCK_DIR), container_id)?)
        } else {
            None
        };
        let userns = ids.is_none() && vessel_api::confine::userns_allowed();
        Ok(Some(Self {
            ids,
            userns,
            ceilings: Ceilings::detect(&vessel_api::confine::cgroup_root()),
            cgroup: None,
        }))
    }

    /// The VM's uid (= gid), when it has its own.
    pub fn uid(&self) -> Option<u32> {
        self.ids.as_ref().map(|i| i.id)
    }

    /// Make (again) the VM's cgroup with its ceilings.
    pub fn make_cgroup(
        &mut self,
        container_id: &str,
        memory_mib: u64,
        accel: &str,
    ) -> Result<(), JailError> {
        if let Some(old) = self.cgroup.take() {
            old.remove();
        }
        // A fixed ceiling instead, for tests and debugging.
        let mib = std::env::var(CEILING_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&m| m > 0)
            .unwrap_or_else(|| memory_ceiling_mib(memory_mib, accel));
        let bytes = mib * 1024 * 1024;
        self.cgroup = Cgroup::create(&self.ceilings, container_id, bytes, PIDS_MAX)?.map(Arc::new);
        Ok(())
    }

    /// Under KVM, the VM's user must be able to open `/dev/kvm`: as "other",
    /// or through its group (which the jail adds).
    pub fn check_kvm(&self, accel: &str) -> Result<(), JailError> {
        if self.ids.is_none() || accel != "kvm" {
            return Ok(());
        }
        let Ok(m) = std::fs::metadata("/dev/kvm") else {
            return Ok(());
        };
        if kvm_usable(m.mode(), m.gid()) {
            Ok(())
        } else {
            Err(JailError::Kvm(m.mode() & 0o7777, m.gid()))
        }
    }

    /// Remove the cgroup (after the VM's processes are reaped).
    pub fn finish(&mut self) {
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
    }

    fn process_ids(&self, kvm: bool) -> Option<Ids> {
        self.ids.as_ref().map(|i| Ids {
            uid: i.id,
            gid: i.id,
            groups: if kvm {
                kvm_group().into_iter().collect()
            } else {
                vec![]
            },
        })
    }

    /// RLIMIT_NPROC counts per user: a pids ceiling only for a VM with its
    /// own user and no cgroup.
    fn nproc(&self) -> Option<u64> {
        (self.ids.is_some() && self.cgroup.is_none()).then_some(PIDS_MAX)
    }

    /// The jail of a process with `plan`; the mount namespace (rooted at
    /// the empty directory `mountpoint`) only as root.
    pub fn jail(&self, plan: &Plan, mountpoint: &Path, kvm: bool) -> Result<Jail, JailError> {
        let root = self.mount_ns().then_some(mountpoint);
        let mut jail = Jail::new(
            root,
            plan,
            self.cgroup.as_deref(),
            self.process_ids(kvm),
            self.nproc(),
        )?;
        if self.userns {
            // SAFETY: geteuid and getegid have no preconditions.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            jail.userns = Some((
                CString::new(format!("{uid} {uid} 1\n")).unwrap_or_default(),
                CString::new(format!("{gid} {gid} 1\n")).unwrap_or_default(),
            ));
        }
        Ok(jail)
    }

    /// Do its processes get a mount namespace of their own?
    pub fn mount_ns(&self) -> bool {
        self.ids.is_some() || self.userns
    }
}

/// Resolve a program name the way `exec` will (for its bind mount).
pub fn resolve_binary(binary: &Path) -> PathBuf {
    let found = if binary.is_absolute() {
        Some(binary.to_path_buf())
    } else {
        binary.to_str().and_then(vessel_api::paths::find_in_path)
    };
    found
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| binary.to_path_buf())
}

/// What QEMU's jail holds: the base, the VM's kernel, initramfs, disks
/// (the overlay's base read-only at its original path), console log and
/// run directory, and `/dev/kvm` under KVM.
pub fn qemu_plan(spec: &crate::vmm::QemuSpec, binary: &Path, base: &Path, run_dir: &Path) -> Plan {
    let mut p = Plan::base(binary);
    if spec.accel == "kvm" {
        p.device("/dev/kvm");
    }
    p.ro(&spec.kernel);
    p.ro(&spec.initrd);
    if !base.as_os_str().is_empty() {
        p.ro(base);
    }
    if let Some(disk) = &spec.disk {
        p.rw(disk);
    }
    for v in &spec.volumes {
        if v.readonly {
            p.ro(&v.path);
        } else {
            p.rw(&v.path);
        }
    }
    p.rw(&spec.boot_log);
    p.rw(run_dir);
    p
}

/// Everything the child needs between fork and exec, prepared before the
/// fork.
#[derive(Debug)]
pub struct Jail {
    /// The (empty) directory the new root is mounted on, in the child's
    /// namespace only.
    root: Option<CString>,
    dirs: Vec<CString>,
    links: Vec<(CString, CString)>,
    /// (source, target inside the new root, is a directory, flags of the
    /// read-only/nosuid remount)
    binds: Vec<(CString, CString, bool, libc::c_ulong)>,
    cgroup_procs: Vec<CString>,
    ids: Option<Ids>,
    nproc: Option<u64>,
    /// Rootless: `uid_map` and `gid_map` lines of a user namespace mapping
    /// only ourselves, made together with the mount namespace.
    userns: Option<(CString, CString)>,
}

/// `MS_*` flags of the mount holding `path` that a bind mount of it must
/// keep (locked in a user namespace): read-only, nosuid, nodev, noexec and
/// the atime ones.
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs is plain data filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    out
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Path(p.to_path_buf()))
}

/// `path` under `root` (both absolute).
fn under(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

impl Jail {
    /// A jail for one process. `root_dir`: an empty directory to mount the
    /// new root on (`None`: no mount namespace). `ids`: the VM's user
    /// (`None`: stay who we are). `nproc`: RLIMIT_NPROC, the pids ceiling
    /// when there is no cgroup (it counts per user, so only with `ids`).
    pub fn new(
        root_dir: Option<&Path>,
        plan: &Plan,
        cgroup: Option<&Cgroup>,
        ids: Option<Ids>,
        nproc: Option<u64>,
    ) -> Result<Self, JailError> {
        let mut jail = Self {
            root: None,
            dirs: Vec::new(),
            links: Vec::new(),
            binds: Vec::new(),
            cgroup_procs: Vec::new(),
            ids,
            nproc,
            userns: None,
        };
        if let Some(c) = cgroup {
            for f in c.procs_files() {
                jail.cgroup_procs.push(cstr(&f)?);
            }
        }
        let Some(root) = root_dir else {
            return Ok(jail);
        };
        jail.root = Some(cstr(root)?);
        let mut dirs: Vec<PathBuf> = Vec::new();
        let want_dir = |p: &Path, dirs: &mut Vec<PathBuf>| {
            let mut acc = PathBuf::from("/");
            for c in p.components() {
                if let Component::Normal(n) = c {
                    acc.push(n);
                    if !dirs.contains(&acc) {
                        dirs.push(acc.clone());
                    }
                }
            }
        };
        for (link, _) in &plan.links {
            if let Some(parent) = link.parent() {
                want_dir(parent, &mut dirs);
            }
        }
        let mut binds = Vec::new();
        for b in &plan.binds {
            // A path missing on the host is left out: the program then
            // fails on it as it would anywhere.
            let Ok(meta) = std::fs::metadata(&b.path) else {
                continue;
            };
            let is_dir = meta.is_dir();
            if is_dir {
                want_dir(&b.path, &mut dirs);
            } else if let Some(parent) = b.path.parent() {
                want_dir(parent, &mut dirs);
            }
            // Keep the source mount's flags: in a user namespace they are
            // locked, and a remount without them fails.
            let mut flags =
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | locked_flags(&b.path);
            if b.readonly {
                flags |= libc::MS_RDONLY;
            }
            if !b.device {
                flags |= libc::MS_NODEV;
            }
            binds.push((cstr(&b.path)?, cstr(&under(root, &b.path))?, is_dir, flags));
        }
        for d in dirs {
            jail.dirs.push(cstr(&under(root, &d))?);
        }
        for (link, target) in &plan.links {
            jail.links.push((cstr(target)?, cstr(&under(root, link))?));
        }
        jail.binds = binds;
        Ok(jail)
    }

    /// Apply the jail in the child of `cmd`, after every other `pre_exec`
    /// step registered before it. It re-arms the parent-death signal,
    /// which a change of user clears.
    pub fn apply_to(self, cmd: &mut Command) {
        // SAFETY: getpid has no preconditions and cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and makes only
        // raw system calls (open, write, close, unshare, mount, mkdir,
        // symlink, chdir, pivot_root, umount2, setrlimit, setgroups,
        // setresgid, setresuid, prctl, getppid) on data allocated before
        // the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.enter(parent));
        }
    }

    /// The child's side. Only raw system calls.
    fn enter(&self, parent: libc::pid_t) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: every pointer passed is a NUL-terminated CString owned by
        // `self` or a static string, alive for the call; `rlimit` and the
        // group list are valid for reads; nothing is allocated.
        unsafe {
            for procs in &self.cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                check(fd)?;
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if rc != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(root) = &self.root {
                let none = std::ptr::null();
                match &self.userns {
                    None => check(libc::unshare(libc::CLONE_NEWNS))?,
                    Some((uid_map, gid_map)) => {
                        check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                        let put = |file: &std::ffi::CStr, line: &std::ffi::CStr| {
                            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                            check(fd)?;
                            let len = line.to_bytes().len();
                            let n = libc::write(fd, line.as_ptr().cast(), len);
                            libc::close(fd);
                            if n != len as isize {
                                return Err(io::Error::last_os_error());
                            }
                            Ok(())
                        };
                        // An unprivileged gid_map needs setgroups denied.
                        put(c"/proc/self/setgroups", c"deny")?;
                        put(c"/proc/self/uid_map", uid_map)?;
                        put(c"/proc/self/gid_map", gid_map)?;
                    }
                }
                check(libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=64k,nr_inodes=4096,mode=0755".as_ptr().cast(),
                ))?;
                for d in &self.dirs {
                    if libc::mkdir(d.as_ptr(), 0o755) < 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (target, link) in &self.links {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
                }
                for (src, dst, is_dir, flags) in &self.binds {
                    if !is_dir {
                        let fd = libc::open(
                            dst.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o600,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        none,
                        dst.as_ptr(),
                        none,
                        *flags,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::chdir(root.as_ptr()))?;
                // The new root stacks over the old; detaching the old one
                // leaves the new one alone (no put_old directory needed).
                check(
                    libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
                        as libc::c_int,
                )?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(c"/".as_ptr()))?;
                check(libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))?;
            }
            let limit = |res, n: u64| {
                let r = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                check(libc::setrlimit(res, &r))
            };
            limit(libc::RLIMIT_NOFILE, NOFILE_MAX)?;
            limit(libc::RLIMIT_CORE, 0)?;
            if let Some(n) = self.nproc {
                limit(libc::RLIMIT_NPROC, n)?;
            }
            if let Some(ids) = &self.ids {
                check(libc::setgroups(ids.groups.len(), ids.groups.as_ptr()))?;
                check(libc::setresgid(ids.gid, ids.gid, ids.gid))?;
                check(libc::setresuid(ids.uid, ids.uid, ids.uid))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            // A change of user clears the parent-death signal: arm it again.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_in_a_missing_namespace_names_the_namespace() {
        let e = open_tap_in(Path::new("/nonexistent/netns"), "vsl-tap0").unwrap_err();
        assert!(matches!(e, JailError::Netns(ref p, _) if p == Path::new("/nonexistent/netns")));
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }

    #[test]
    fn translation_cache_is_an_eighth_of_guest_ram_within_bounds() {
        assert_eq!(default_tcg_tb_mib(64), 16);
        assert_eq!(default_tcg_tb_mib(128), 16);
        assert_eq!(default_tcg_tb_mib(512), 64);
        assert_eq!(default_tcg_tb_mib(2048), 256);
        assert_eq!(default_tcg_tb_mib(16384), TCG_TB_MIB);
    }

    #[test]
    fn ceiling_is_guest_ram_plus_overhead() {
        assert_eq!(memory_ceiling_mib(256, "tcg"), 256 + 32 + VMM_OVERHEAD_MIB);
        assert_eq!(memory_ceiling_mib(256, "kvm"), 256 + VMM_OVERHEAD_MIB);
    }

    fn qemu_spec(accel: &str) -> crate::vmm::QemuSpec {
        crate::vmm::QemuSpec {
            accel: accel.into(),
            cpus: 1,
            memory_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            disk: Some("/h/containers/c1/overlay.qcow2".into()),
            agent_fd: 5,
            boot_log: "/h/containers/c1/boot.log".into(),
            qmp_socket: "/h/run/c1/qmp.sock".into(),
            tsc_khz: None,
            nics: vec![],
            volumes: vec![crate::mounts::VolumeDisk {
                name: "db".into(),
                path: "/h/volumes/db/disk.img".into(),
                serial: "vessel-vol0".into(),
                readonly: true,
            }],
            fs_devices: vec![],
            sandbox: true,
            memory: crate::vmm::GuestMemory::Memfd,
        }
    }

    #[test]
    fn qemu_jail_holds_this_vms_files_only() {
        let s = qemu_spec("tcg");
        let p = qemu_plan(
            &s,
            Path::new("/usr/bin/qemu-system-x86_64"),
            Path::new("/h/images/base.ext4"),
            Path::new("/h/run/c1"),
        );
        let find = |x: &str| p.binds.iter().find(|b| b.path == Path::new(x)).cloned();
        assert!(find("/h/images/base.ext4").unwrap().readonly);
        assert!(find("/k/vmlinux").unwrap().readonly);
        assert!(find("/k/initrd.img").unwrap().readonly);
        assert!(!find("/h/containers/c1/overlay.qcow2").unwrap().readonly);
        assert!(find("/h/volumes/db/disk.img").unwrap().readonly);
        assert!(!find("/h/containers/c1/boot.log").unwrap().readonly);
        assert!(!find("/h/run/c1").unwrap().readonly);
        // Not the container's directory, the images store or the home.
        for absent in [
            "/h",
            "/h/containers/c1",
            "/h/images",
            "/h/containers",
            "/dev/kvm",
        ] {
            assert!(find(absent).is_none(), "{absent}");
        }
        let kvm = qemu_plan(
            &qemu_spec("kvm"),
            Path::new("/usr/bin/qemu-system-x86_64"),
            Path::new("/h/images/base.ext4"),
            Path::new("/h/run/c1"),
        );
        let dev = kvm
            .binds
            .iter()
            .find(|b| b.path == Path::new("/dev/kvm"))
            .unwrap();
        assert!(dev.device && !dev.readonly);
    }

    #[test]
    fn files_under_usr_need_no_bind_of_their_own() {
        // An install's kernel and initramfs (scripts/setup.sh: /usr/local).
        let mut s = qemu_spec("tcg");
        s.kernel = "/usr/local/share/vessel/vmlinux".into();
        s.initrd = "/usr/local/share/vessel/initramfs.img".into();
        let p = qemu_plan(
            &s,
            Path::new("/usr/bin/qemu-system-x86_64"),
            Path::new("/var/lib/vessel/rootfs/base.ext4"),
            Path::new("/run/vessel/x/c1"),
        );
        let has = |x: &str| p.binds.iter().any(|b| b.path == Path::new(x));
        assert!(has("/usr"));
        assert!(!has("/usr/local/share/vessel/vmlinux"));
        assert!(!has("/usr/local/share/vessel/initramfs.img"));
        assert!(has("/var/lib/vessel/rootfs/base.ext4"));
        // Writable paths are never dropped.
        let mut q = Plan::default();
        q.ro("/usr");
        q.rw("/usr/x/overlay");
        assert!(q
            .binds
            .iter()
            .any(|b| b.path == Path::new("/usr/x/overlay")));
    }

    #[test]
    fn kvm_must_be_open_to_the_vms_user() {
        assert!(kvm_usable(0o20660, 108), "root:kvm 0660");
        assert!(kvm_usable(0o20666, 0), "0666");
        assert!(!kvm_usable(0o20600, 0), "root-only");
        assert!(!kvm_usable(0o20660, 0), "group root is not added");
        assert!(group_rw(0o20660, 108));
    }

    #[test]
    fn oom_counters() {
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(parse_oom_kills(""), 0);
    }

    #[test]
    fn base_plan_holds_only_what_exec_needs() {
        let p = Plan::base(Path::new("/usr/bin/qemu-system-x86_64"));
        let paths: Vec<_> = p.binds.iter().map(|b| b.path.clone()).collect();
        assert!(paths.contains(&PathBuf::from("/usr")));
        assert!(p.binds.iter().all(|b| b.readonly || b.device));
        assert!(!paths.iter().any(|x| x.starts_with("/etc/shadow")));
        assert!(!paths.contains(&PathBuf::from("/etc")));
        assert!(!paths.contains(&PathBuf::from("/dev")));
        let p = Plan::base(Path::new("/opt/x/vhost-device-vsock"));
        assert!(p.binds.contains(&Bind {
            path: "/opt/x/vhost-device-vsock".into(),
            readonly: true,
            device: false
        }));
    }

    #[test]
    fn jail_paths_are_under_the_new_root() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a/b/disk.qcow2");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, "x").unwrap();
        let mut plan = Plan::default();
        plan.rw(&f);
        plan.ro(d.path().join("missing"));
        plan.links.push(("/lib".into(), "usr/lib".into()));
        let j = Jail::new(Some(Path::new("/r")), &plan, None, None, None).unwrap();
        assert_eq!(j.binds.len(), 1, "missing paths are left out");
        let (src, dst, is_dir, flags) = &j.binds[0];
        assert_eq!(src.to_bytes(), f.as_os_str().as_bytes());
        assert_eq!(
            dst.to_bytes(),
            under(Path::new("/r"), &f).as_os_str().as_bytes()
        );
        assert!(dst.to_bytes().starts_with(b"/r/"));
        assert!(!is_dir);
        assert_eq!(flags & libc::MS_RDONLY, 0);
        assert_ne!(flags & libc::MS_NODEV, 0);
        assert!(j.dirs.iter().any(|x| x.to_bytes()
            == under(Path::new("/r"), f.parent().unwrap())
                .as_os_str()
                .as_bytes()));
        // Parents come before children.
        let pos = |p: &Path| {
            j.dirs
                .iter()
                .position(|x| x.to_bytes() == under(Path::new("/r"), p).as_os_str().as_bytes())
                .unwrap()
        };
        assert!(pos(d.path()) < pos(f.parent().unwrap()));
        assert_eq!(j.links[0].1.to_bytes(), b"/r/lib");
    }

    #[test]
    fn ids_are_distinct_while_held_and_reused_after() {
        let d = tempfile::tempdir().unwrap();
        let a = VmIds::take(d.path(), "c1").unwrap();
        let b = VmIds::take(d.path(), "c1").unwrap();
        assert_ne!(a.id, b.id, "a held id is not handed out twice");
        assert!((VM_ID_BASE..VM_ID_BASE + VM_ID_COUNT).contains(&a.id));
        let first = a.id;
        drop(a);
        assert_eq!(VmIds::take(d.path(), "c1").unwrap().id, first);
    }

    #[test]
    fn the_lock_directory_holds_only_the_ids_in_use() {
        let d = tempfile::tempdir().unwrap();
        let count = || std::fs::read_dir(d.path()).unwrap().count();
        // A killed holder's file (unlocked) is taken over, then removed.
        let a = VmIds::take(d.path(), "c1").unwrap();
        let stale = d.path().join(a.id.to_string());
        drop(a);
        assert!(!stale.exists());
        File::create(&stale).unwrap();
        let b = VmIds::take(d.path(), "c1").unwrap();
        assert_eq!(b.path, stale);
        let c = VmIds::take(d.path(), "c2").unwrap();
        assert_eq!(count(), 2);
        drop(b);
        assert_eq!(count(), 1);
        // A holder whose file was replaced meanwhile leaves the new one.
        std::fs::remove_file(&c.path).unwrap();
        File::create(&c.path).unwrap();
        let path = c.path.clone();
        drop(c);
        assert!(path.exists());
    }
}
