//! Starting the container process inside the root filesystem.

use crate::user::ExecUser;
use agent_protocol::{rlimit_resource, Rlimit};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `PATH` when the process environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A failed start, as reported to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub exit_code: i32,
    pub message: String,
}

impl StartError {
    pub fn new(exit_code: i32, message: impl Into<String>) -> Self {
        Self {
            exit_code,
            message: message.into(),
        }
    }
}

/// Build the final environment: `KEY=VALUE` entries in order (later entries
/// win, first position kept), plus `PATH`, `HOSTNAME` and `HOME` when missing,
/// and `TERM=xterm` for a process with a terminal.
pub fn build_env(
    env: &[String],
    home: &str,
    hostname: &str,
    terminal: bool,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in env {
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            continue;
        }
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !hostname.is_empty() && !out.iter().any(|(k, _)| k == "HOSTNAME") {
        out.push(("HOSTNAME".into(), hostname.into()));
    }
    if !out.iter().any(|(k, _)| k == "HOME") {
        out.push(("HOME".into(), home.into()));
    }
    // Docker's `-t` sets TERM=xterm unless the user gave one.
    if terminal && !out.iter().any(|(k, _)| k == "TERM") {
        out.push(("TERM".into(), "xterm".into()));
    }
    out
}

/// Map a spawn error to Docker's exit code and message.
pub fn spawn_error(arg0: &str, err: &io::Error) -> StartError {
    match err.raw_os_error() {
        Some(libc::ENOENT) if arg0.contains('/') => {
            StartError::new(127, format!("exec: \"{arg0}\": no such file or directory"))
        }
        Some(libc::ENOENT) => StartError::new(
            127,
            format!("exec: \"{arg0}\": executable file not found in $PATH"),
        ),
        Some(libc::EACCES) => StartError::new(126, format!("exec: \"{arg0}\": permission denied")),
        _ => StartError::new(125, format!("exec: \"{arg0}\": {err}")),
    }
}

/// The directories `mkdir -p CWD` creates, outermost first, as absolute paths.
pub fn cwd_prefixes(cwd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for comp in cwd.split('/') {
        if comp.is_empty() || comp == "." {
            continue;
        }
        cur.push('/');
        cur.push_str(comp);
        out.push(cur.clone());
    }
    out
}

/// Exit code as a shell reports it, and the signal if one ended the process.
pub fn exit_status(status: nix::sys::wait::WaitStatus) -> Option<(i32, Option<i32>)> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some((code, None)),
        WaitStatus::Signaled(_, sig, _) => Some((128 + sig as i32, Some(sig as i32))),
        _ => None,
    }
}

fn cstring(s: &[u8]) -> Result<CString, StartError> {
    CString::new(s).map_err(|_| StartError::new(125, "string contains a NUL byte"))
}

/// The `(resource, limit)` pairs to set in the child, resolved before the
/// fork; an unknown resource or a soft limit above the hard one is refused
/// (Docker refuses them too).
pub fn resolve_rlimits(limits: &[Rlimit]) -> Result<Vec<(i32, libc::rlimit)>, StartError> {
    limits
        .iter()
        .map(|l| {
            let resource = rlimit_resource(&l.name).ok_or_else(|| {
                StartError::new(125, format!("unknown resource limit {:?}", l.name))
            })?;
            if l.soft > l.hard {
                return Err(StartError::new(
                    125,
                    format!(
                        "resource limit {}: soft limit {} is above hard limit {}",
                        l.name, l.soft, l.hard
                    ),
                ));
            }
            Ok((
                resource,
                libc::rlimit {
                    rlim_cur: l.soft,
                    rlim_max: l.hard,
                },
            ))
        })
        .collect()
}

/// Put the calling (just forked) process in the state runc gives a
/// container's process: every signal at its default disposition, an empty
/// signal mask, umask 022, the given resource limits. vminitd blocks
/// SIGCHLD for its signalfd, and a mask survives fork and exec: without
/// this the container's shells and supervisors never see their children end.
///
/// # Safety
/// Only between fork and exec: it makes async-signal-safe system calls on
/// data prepared before the fork and allocates nothing.
pub unsafe fn reset_process_state(rlimits: &[(i32, libc::rlimit)]) -> io::Result<()> {
    /// The kernel's `struct sigaction` for `rt_sigaction(2)` on x86_64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    // SIG_DFL, no flags, nothing blocked.
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction/sigprocmask/umask/setrlimit on valid, initialised
    // local structs and the caller's slice; none of them allocates.
    unsafe {
        // The raw system call: the C library's sigaction refuses the two
        // real-time signals it reserves, which may be ignored all the same.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::umask(0o022);
        for (resource, limit) in rlimits {
            if libc::setrlimit(*resource as _, limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// How the process's standard streams are connected.
pub enum StdioSetup {
    /// stdout and stderr are pipes; stdin a pipe when `stdin`, else
    /// `/dev/null`.
    Pipes { stdin: bool },
    /// The slave of a terminal: stdin, stdout and stderr, and the
    /// controlling terminal of the process's new session.
    Terminal(OwnedFd),
}

/// Where a process's root is, and how it gets there.
#[derive(Debug)]
pub enum RootSetup {
    /// `chroot` into the directory (the VM's container: its root is `/`).
    Chroot(PathBuf),
    /// A pod container's first process (the containerd shim's pods): a
    /// mount namespace of its own, in which `proc`, `sysfs`, the VM's
    /// `/dev` (its terminals and the pod's shared `/dev/shm`) and
    /// `cgroup2` are mounted in the directory, which becomes the root
    /// (`pivot_root`; `chroot` if that fails). The mounts end with the
    /// namespace's last process. `binds` are then mounted in it.
    /// `cgroup`: the `cgroup.procs` it joins first.
    /// `own_pids`: it is PID 1 of a PID namespace of its own.
    NewNamespace {
        dir: PathBuf,
        binds: Vec<BindSource>,
        cgroup: Option<PathBuf>,
        own_pids: bool,
    },
    /// A later process of a pod container: join the mount namespace, the
    /// PID namespace and the root of a process of it (`/proc/PID/ns/mnt`,
    /// `/proc/PID/ns/pid`, `/proc/PID/root`).
    Join {
        ns: OwnedFd,
        pids: OwnedFd,
        root: OwnedFd,
        cgroup: Option<PathBuf>,
    },
}

/// The PID namespace the next child of the calling thread is born in
/// (`/proc/thread-self/ns/pid_for_children`), moved for one spawn: a new
/// one, or a container's; put back on drop. Only the calling thread's
/// children are concerned, and the calling process itself never moves.
struct ChildPidNamespace {
    own: OwnedFd,
}

impl ChildPidNamespace {
    /// Move it as `setup` asks; `None` when it stays.
    fn enter(setup: &RootSetup) -> Result<Option<Self>, StartError> {
        let into = match setup {
            RootSetup::NewNamespace { own_pids: true, .. } => None,
            RootSetup::Join { pids, .. } => Some(pids),
            _ => return Ok(None),
        };
        let err = |what: &str, e: io::Error| StartError::new(125, format!("{what}: {e}"));
        let own = std::fs::File::open("/proc/thread-self/ns/pid")
            .map(OwnedFd::from)
            .map_err(|e| err("the PID namespace", e))?;
        // SAFETY: unshare and setns change only this thread's namespace
        // for its future children; the descriptor is valid.
        let r = unsafe {
            match into {
                None => libc::unshare(libc::CLONE_NEWPID),
                Some(fd) => libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID),
            }
        };
        if r != 0 {
            return Err(err("a PID namespace", io::Error::last_os_error()));
        }
        Ok(Some(Self { own }))
    }
}

impl Drop for ChildPidNamespace {
    fn drop(&mut self) {
        // SAFETY: back to the thread's own namespace (its active one, which
        // setns always allows), on a descriptor we own.
        unsafe { libc::setns(self.own.as_raw_fd(), libc::CLONE_NEWPID) };
    }
}

/// A file or directory bound into a pod container's namespace.
#[derive(Debug, Clone)]
pub struct BindSource {
    /// As vminitd sees it (in the VM's root).
    pub source: PathBuf,
    /// Absolute, in the container.
    pub target: String,
    pub readonly: bool,
}

/// A [`BindSource`] prepared before the fork. The child opens the source
/// once in its own mount namespace (a bind's source must be a mount of the
/// caller's namespace) and before `pivot_root` (after it, the VM's root is
/// gone), and mounts it through `/proc/self/fd/N` once in the container's
/// root, where the target's symlinks resolve inside the container.
struct PreparedBind {
    source: CString,
    /// Set in the child.
    fd: libc::c_int,
    target: CString,
    parents: Vec<CString>,
    dir: bool,
    readonly: bool,
}

/// `/a/b`: absolute, below `/`, with no `.`, `..` or empty part (a path
/// from the host that may only name what is under a root).
pub fn is_plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn prepare_binds(binds: &[BindSource]) -> Result<Vec<PreparedBind>, StartError> {
    binds
        .iter()
        .map(|b| {
            if !is_plain_absolute(Path::new(&b.target)) {
                return Err(StartError::new(
                    125,
                    format!("mount target must be a plain absolute path: {:?}", b.target),
                ));
            }
            let dir = std::fs::metadata(&b.source)
                .map_err(|e| {
                    StartError::new(125, format!("mount source {}: {e}", b.source.display()))
                })?
                .is_dir();
            let mut parents = cwd_prefixes(&b.target);
            parents.pop();
            Ok(PreparedBind {
                // A directory's "/." goes through it: the submount the
                // guest's virtio-fs mounts there on first access is
                // mounted, and the bind is of it.
                source: cstring(
                    &[
                        b.source.as_os_str().as_bytes(),
                        if dir { b"/." } else { b"" },
                    ]
                    .concat(),
                )?,
                fd: -1,
                // Relative: from the working directory, the new root.
                target: cstring(b.target.trim_start_matches('/').as_bytes())?,
                parents: parents
                    .iter()
                    .map(|p| cstring(p.trim_start_matches('/').as_bytes()))
                    .collect::<Result<_, _>>()?,
                dir,
                readonly: b.readonly,
            })
        })
        .collect()
}

/// `/proc/self/fd/FD` as a C string in `buf`, without allocating (the
/// child of a fork may not).
fn fd_path(fd: libc::c_int, buf: &mut [u8; 40]) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

/// In the child, in its new namespace and before leaving the VM's root:
/// open the binds' sources.
///
/// # Safety
/// Between fork and exec only (system calls on prepared data).
unsafe fn open_bind_sources(binds: &mut [PreparedBind]) -> io::Result<()> {
    for b in binds {
        // SAFETY: a NUL-terminated string prepared before the fork.
        b.fd = unsafe { libc::open(b.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if b.fd < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, in the container's root: mount the prepared binds.
///
/// # Safety
/// Between fork and exec only (system calls on prepared data).
unsafe fn mount_binds(binds: &[PreparedBind]) -> io::Result<()> {
    for b in binds {
        let mut buf = [0u8; 40];
        let source = fd_path(b.fd, &mut buf);
        // SAFETY: NUL-terminated strings prepared before the fork.
        unsafe {
            for p in &b.parents {
                libc::mkdir(p.as_ptr(), 0o755);
            }
            if b.dir {
                libc::mkdir(b.target.as_ptr(), 0o755);
            } else {
                let fd = libc::open(
                    b.target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            let flags = libc::MS_BIND | libc::MS_REC;
            let null = std::ptr::null();
            if libc::mount(source, b.target.as_ptr(), null, flags, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if b.readonly {
                let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                if libc::mount(null, b.target.as_ptr(), null, ro, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
    }
    Ok(())
}

/// One mount a [`RootSetup::NewNamespace`] child makes, prepared before
/// the fork: (source, target, type, flags, data).
type PreparedMount = (
    CString,
    CString,
    Option<CString>,
    libc::c_ulong,
    Option<CString>,
);

/// The mounts of a pod container's namespace, in order; the first (proc)
/// must succeed, the others may fail (a root without `/sys`).
fn pod_mounts(root: &Path) -> Result<Vec<PreparedMount>, StartError> {
    let nse = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    let list: [(&str, &str, Option<&str>, libc::c_ulong); 4] = [
        ("proc", "proc", Some("proc"), nse),
        ("sysfs", "sys", Some("sysfs"), nse),
        ("/dev", "dev", None, libc::MS_BIND | libc::MS_REC),
        ("cgroup2", "sys/fs/cgroup", Some("cgroup2"), nse),
    ];
    list.iter()
        .map(|(src, rel, fstype, flags)| {
            Ok((
                cstring(src.as_bytes())?,
                cstring(root.join(rel).as_os_str().as_bytes())?,
                fstype.map(|t| cstring(t.as_bytes())).transpose()?,
                *flags,
                None,
            ))
        })
        .collect()
}

/// In the child, between fork and exec: enter the process's root as
/// `setup` says. Only system calls on data prepared before the fork.
fn enter_root(
    setup: &RootSetup,
    root_c: &std::ffi::CStr,
    mounts: &[PreparedMount],
    binds: &mut [PreparedBind],
) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let dot = c".";
    // SAFETY: system calls on NUL-terminated strings and descriptors that
    // live as long as `setup` and `mounts`; no memory is handed over.
    unsafe {
        match setup {
            RootSetup::Chroot(_) => check(libc::chroot(root_c.as_ptr())),
            RootSetup::NewNamespace { .. } => {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing mounted here reaches the VM's other processes.
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                // The root a mount of its own, which `pivot_root` needs.
                check(libc::mount(
                    root_c.as_ptr(),
                    root_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                for (i, (src, target, fstype, flags, data)) in mounts.iter().enumerate() {
                    libc::mkdir(target.as_ptr(), 0o755);
                    let r = libc::mount(
                        src.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                        *flags,
                        data.as_ref()
                            .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
                    );
                    if r != 0 && i == 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // pivot_root, not chroot: the VM's root (the sandbox's, the
                // pod's other containers) leaves the namespace, and the
                // process is not "chrooted" (user namespaces work in it).
                // The old root lands on top of the new one and is detached.
                open_bind_sources(binds)?;
                check(libc::chdir(root_c.as_ptr()))?;
                // The binds go in while their sources' mounts (under the
                // VM's root) are still in the namespace: after pivot_root
                // (the old root stacked on the new one, the working
                // directory the new root, which the binds' relative
                // targets start from) and before the old root is detached.
                if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
                    mount_binds(binds)?;
                    libc::umount2(dot.as_ptr(), libc::MNT_DETACH);
                    check(libc::chdir(c"/".as_ptr()))
                } else {
                    check(libc::chroot(root_c.as_ptr()))?;
                    check(libc::chdir(c"/".as_ptr()))?;
                    mount_binds(binds)
                }
            }
            RootSetup::Join { ns, root, .. } => {
                check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS))?;
                check(libc::fchdir(root.as_raw_fd()))?;
                check(libc::chroot(dot.as_ptr()))
            }
        }
    }
}

/// Start `args` chrooted into `root` as `user`, in `cwd` (created if missing),
/// with `env` exactly and the resource limits `rlimits`, in the state
/// [`reset_process_state`] describes, its standard streams as `stdio` says,
/// in a session (and process group) of its own.
pub fn spawn(
    setup: RootSetup,
    args: &[String],
    env: &[(String, String)],
    cwd: &str,
    user: &ExecUser,
    rlimits: &[Rlimit],
    stdio: StdioSetup,
) -> Result<Child, StartError> {
    let Some(arg0) = args.first() else {
        return Err(StartError::new(125, "no command specified"));
    };
    if arg0.is_empty() {
        return Err(StartError::new(125, "no command specified"));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(StartError::new(125, "argument contains a NUL byte"));
    }
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    // Everything the child needs is allocated before fork.
    let (root_c, mounts) = match &setup {
        RootSetup::Chroot(root) => (cstring(root.as_os_str().as_bytes())?, Vec::new()),
        RootSetup::NewNamespace { dir, .. } => {
            (cstring(dir.as_os_str().as_bytes())?, pod_mounts(dir)?)
        }
        RootSetup::Join { .. } => (cstring(b".")?, Vec::new()),
    };
    let cgroup = match &setup {
        RootSetup::NewNamespace { cgroup, .. } | RootSetup::Join { cgroup, .. } => cgroup
            .as_ref()
            .map(|p| cstring(p.as_os_str().as_bytes()))
            .transpose()?,
        RootSetup::Chroot(_) => None,
    };
    let mut binds = match &setup {
        RootSetup::NewNamespace { binds, .. } => prepare_binds(binds)?,
        _ => Vec::new(),
    };
    let slash = cstring(b"/")?;
    let cwd_c = cstring(cwd.as_bytes())?;
    let prefixes = cwd_prefixes(cwd)
        .into_iter()
        .map(|p| cstring(p.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.uid, user.gid);
    let limits = resolve_rlimits(rlimits)?;

    let mut cmd = Command::new(arg0);
    cmd.args(&args[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    let terminal = matches!(stdio, StdioSetup::Terminal(_));
    match stdio {
        StdioSetup::Pipes { stdin } => {
            cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        StdioSetup::Terminal(slave) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| StartError::new(125, format!("terminal: {e}")))
            };
            cmd.stdin(dup(&slave)?)
                .stdout(dup(&slave)?)
                .stderr(Stdio::from(slave));
        }
    }
    // The child's PID namespace is chosen by the forking thread, before
    // the fork; the guard puts this thread's back after it.
    let pids = ChildPidNamespace::enter(&setup)?;
    let hook = move || -> io::Result<()> {
        // SAFETY: we are between fork and exec (this is a pre_exec hook).
        unsafe { reset_process_state(&limits)? };
        // SAFETY: plain system calls on valid NUL-terminated strings and a
        // valid gid array, all allocated before the fork and alive here.
        unsafe {
            // Its cgroup first, while the VM's /sys/fs/cgroup is in view.
            if let Some(procs) = &cgroup {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            enter_root(&setup, &root_c, &mounts, &mut binds)?;
            if libc::chdir(slash.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for p in &prefixes {
                if libc::mkdir(p.as_ptr(), 0o755) == 0 {
                    libc::chown(p.as_ptr(), uid, gid);
                }
            }
            if libc::chdir(cwd_c.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::setsid();
            // The terminal (already our stdin) becomes the session's
            // controlling terminal.
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe system calls on data prepared before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
    let child = cmd.spawn().map_err(|e| spawn_error(arg0, &e));
    drop(pids);
    child
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_absolute_paths_name_only_what_is_below_a_root() {
        for ok in ["/a", "/.vessel-pod/c1", "/etc/resolv.conf", "/a//b"] {
            assert!(is_plain_absolute(Path::new(ok)), "{ok}");
        }
        for bad in ["", "/", "a/b", "/a/../b", "/..", "./a"] {
            assert!(!is_plain_absolute(Path::new(bad)), "{bad}");
        }
    }
    use std::io::Read;

    #[test]
    fn env_defaults_and_overrides() {
        let env = build_env(
            &["A=1".into(), "B=x=y".into(), "A=2".into(), "JUNK".into()],
            "/root",
            "box",
            false,
        );
        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("A".into(), "2".into()),
                ("B".into(), "x=y".into()),
                ("HOSTNAME".into(), "box".into()),
                ("HOME".into(), "/root".into()),
            ]
        );
        let env = build_env(
            &["PATH=/x".into(), "HOME=/h".into(), "HOSTNAME=h".into()],
            "/root",
            "box",
            false,
        );
        assert_eq!(env.len(), 3);
        assert_eq!(env[0], ("PATH".into(), "/x".into()));
        assert_eq!(env[1], ("HOME".into(), "/h".into()));
        let env = build_env(&[], "/", "", true);
        assert_eq!(
            env.last().unwrap(),
            &("TERM".to_string(), "xterm".to_string())
        );
        let env = build_env(&["TERM=vt100".into()], "/", "", true);
        assert_eq!(env.iter().filter(|(k, _)| k == "TERM").count(), 1);
    }

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 40];
        for fd in [0, 7, 10, 123, i32::MAX] {
            let p = fd_path(fd, &mut buf);
            // SAFETY: fd_path wrote a NUL-terminated string into buf.
            let s = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(s.to_str().unwrap(), format!("/proc/self/fd/{fd}"));
        }
    }

    #[test]
    fn error_mapping() {
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        let e = spawn_error("nope", &enoent);
        assert_eq!(e.exit_code, 127);
        assert_eq!(
            e.message,
            "exec: \"nope\": executable file not found in $PATH"
        );
        let e = spawn_error("/bin/nope", &enoent);
        assert_eq!(e.exit_code, 127);
        assert_eq!(e.message, "exec: \"/bin/nope\": no such file or directory");
        let e = spawn_error("/etc", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.exit_code, 126);
        assert_eq!(e.message, "exec: \"/etc\": permission denied");
        let e = spawn_error("x", &io::Error::from_raw_os_error(libc::E2BIG));
        assert_eq!(e.exit_code, 125);
    }

    #[test]
    fn prefixes() {
        assert_eq!(cwd_prefixes("/"), Vec::<String>::new());
        assert_eq!(cwd_prefixes("/a//b/./c/"), vec!["/a", "/a/b", "/a/b/c"]);
        assert_eq!(cwd_prefixes("rel"), vec!["/rel"]);
    }

    #[test]
    fn exit_statuses() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let p = Pid::from_raw(5);
        assert_eq!(exit_status(WaitStatus::Exited(p, 3)), Some((3, None)));
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((137, Some(9)))
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    fn pipes() -> StdioSetup {
        StdioSetup::Pipes { stdin: false }
    }

    #[test]
    fn empty_args() {
        let u = ExecUser {
            uid: 0,
            gid: 0,
            groups: vec![],
            home: "/".into(),
        };
        let e = spawn(
            RootSetup::Chroot("/".into()),
            &[],
            &[],
            "/",
            &u,
            &[],
            pipes(),
        )
        .unwrap_err();
        assert_eq!(e, StartError::new(125, "no command specified"));
    }

    /// Checks, in a real chroot, that a bare program name is looked up in the
    /// child's PATH inside the new root. Needs root and a static busybox.
    #[test]
    fn chroot_path_lookup() {
        let busybox = Path::new("/bin/busybox");
        if !nix::unistd::geteuid().is_root() || !busybox.exists() {
            eprintln!("skipped: needs root and /bin/busybox");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A directory that exists only inside the chroot.
        std::fs::create_dir_all(r.join("onlyhere")).unwrap();
        std::fs::copy(busybox, r.join("onlyhere/busybox")).unwrap();
        for app in ["sh", "pwd", "id", "grep", "cat"] {
            std::os::unix::fs::symlink("busybox", r.join("onlyhere").join(app)).unwrap();
        }
        std::fs::write(r.join("onlyhere/noexec"), "x").unwrap();
        let user = ExecUser {
            uid: 1234,
            gid: 2345,
            groups: vec![3456],
            home: "/".into(),
        };
        let env = build_env(&["PATH=/onlyhere".into()], "/", "", false);
        let limits = vec![Rlimit {
            name: "nofile".into(),
            soft: 4242,
            hard: 4343,
        }];
        let run = |args: &[&str], cwd: &str| -> Result<String, StartError> {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let mut child = spawn(
                RootSetup::Chroot(r.to_path_buf()),
                &args,
                &env,
                cwd,
                &user,
                &limits,
                pipes(),
            )?;
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child.wait().unwrap();
            Ok(out)
        };
        assert_eq!(run(&["pwd"], "/work/dir").unwrap(), "/work/dir\n");
        let meta = std::fs::metadata(r.join("work/dir")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
        assert_eq!(
            run(&["id"], "/").unwrap(),
            "uid=1234 gid=2345 groups=3456\n"
        );
        assert_eq!(
            run(&["sh", "-c", "echo $HOME:$PATH"], "/").unwrap(),
            "/:/onlyhere\n"
        );
        assert_eq!(
            run(&["sh", "-c", "ulimit -n; ulimit -Hn; umask"], "/").unwrap(),
            "4242\n4343\n0022\n"
        );
        // What vminitd blocks and ignores does not reach the process.
        std::fs::create_dir(r.join("proc")).unwrap();
        nix::mount::mount(
            Some("proc"),
            &r.join("proc"),
            Some("proc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(nix::sys::signal::Signal::SIGCHLD);
        mask.add(nix::sys::signal::Signal::SIGUSR2);
        let old_mask = mask
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .unwrap();
        // SAFETY: SIG_IGN installs no handler code.
        let old_usr1 = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGUSR1,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .unwrap();
        let status = run(&["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], "/");
        old_mask.thread_set_mask().unwrap();
        // SAFETY: restores the disposition the test started with.
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGUSR1, old_usr1) }.unwrap();
        nix::mount::umount(&r.join("proc")).unwrap();
        assert_eq!(
            status.unwrap(),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
        );
        let bad = vec![Rlimit {
            name: "nofile".into(),
            soft: 2,
            hard: 1,
        }];
        let args = vec!["true".to_string()];
        let e = spawn(
            RootSetup::Chroot(r.to_path_buf()),
            &args,
            &env,
            "/",
            &user,
            &bad,
            pipes(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code, 125);
        assert!(e.message.contains("above hard limit"), "{}", e.message);
        assert_eq!(run(&["nothere"], "/").unwrap_err().exit_code, 127);
        assert_eq!(run(&["/onlyhere/gone"], "/").unwrap_err().exit_code, 127);
        assert_eq!(run(&["noexec"], "/").unwrap_err().exit_code, 126);
        assert_eq!(run(&["/onlyhere"], "/").unwrap_err().exit_code, 126);
    }
}
