//! Small safe wrappers over raw system calls and child processes, shared by
//! the probes. The probe is single-threaded, so a forked child may allocate.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// A raw system call; `Err(errno)` when it fails.
pub fn syscall(nr: i64, args: [usize; 6]) -> Result<i64, i32> {
    // SAFETY: the callers pass arguments that the kernel validates (bad
    // pointers fail with EFAULT); a call that changes the process's memory
    // map or state is only made in a throw-away child (see `in_child`).
    let r = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Map a libc-style return value (`-1` and errno on failure).
pub fn check(r: i64) -> Result<i64, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// The symbolic name of an errno value.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "ok",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EDQUOT => "EDQUOT",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ENOMEDIUM => "ENOMEDIUM",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ELOOP => "ELOOP",
        libc::ENOLINK => "ENOLINK",
        libc::EUSERS => "EUSERS",
        _ => return format!("errno{e}"),
    };
    name.to_string()
}

/// What a child process did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
    /// Still running after the time limit (killed).
    TimedOut,
    /// fork() itself failed.
    ForkFailed(i32),
}

impl Outcome {
    /// The child's exit code read as an errno (0 = success).
    pub fn describe(&self) -> String {
        match *self {
            Outcome::Exited(0) => "ok".into(),
            Outcome::Exited(c) if c < 200 => errno_name(c),
            Outcome::Exited(c) => format!("exit{c}"),
            Outcome::Signaled(s) => format!("signal{s}"),
            Outcome::TimedOut => "blocked".into(),
            Outcome::ForkFailed(e) => format!("fork:{}", errno_name(e)),
        }
    }
}

/// Block SIGCHLD in the probe so [`in_child`] can wait with a time limit.
pub fn block_sigchld() {
    // SAFETY: plain signal-mask manipulation on valid, initialised sets.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Run `f` in a forked child; its return value is the exit code. The child
/// is killed after `limit`.
pub fn in_child(limit: Duration, f: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: the probe has a single thread, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Outcome::ForkFailed(errno());
    }
    if pid == 0 {
        let code = f();
        // SAFETY: leaving the child without running the parent's exit code.
        unsafe { libc::_exit(code) };
    }
    wait_child(pid, limit)
}

fn reap(pid: i32, flags: i32) -> Option<Outcome> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid local.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    if r != pid {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(Outcome::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Outcome::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

fn wait_child(pid: i32, limit: Duration) -> Outcome {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(o) = reap(pid, libc::WNOHANG) {
            return o;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        let left = deadline - now;
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: waits for SIGCHLD (blocked by `block_sigchld`) with a
        // valid set and timeout; the result only wakes us up.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
        }
    }
    // SAFETY: kill our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid, 0);
    Outcome::TimedOut
}

/// Become `nobody` with no capabilities and no way back (for the system
/// call sweep). Returns an errno on failure.
pub fn drop_privileges() -> Result<(), i32> {
    // SAFETY: credential changes of the calling (child) process.
    unsafe {
        if libc::getuid() == 0 {
            libc::setgroups(0, std::ptr::null());
            if libc::setresgid(65534, 65534, 65534) != 0 {
                return Err(errno());
            }
            if libc::setresuid(65534, 65534, 65534) != 0 {
                return Err(errno());
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Take ownership of a descriptor returned by a system call.
pub fn owned(fd: i64) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// `open(path, flags)`.
pub fn open(path: &str, flags: i32) -> Result<OwnedFd, i32> {
    let p = cstr(path);
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    check(fd as i64).map(owned)
}

/// `socket(domain, type, protocol)`.
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, i32> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    check(fd as i64).map(owned)
}

/// `mount(2)` with no flags; `data` may be empty.
pub fn mount(src: &str, target: &str, fstype: &str, data: &str) -> Result<(), i32> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: NUL-terminated strings; callers mount only on their own
    // scratch directories, in a private mount namespace of a child.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            0,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr() as *const libc::c_void
            },
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Make every mount of this (new, private) mount namespace private, so
/// nothing mounted in it propagates out.
pub fn mount_private_root() -> Result<(), i32> {
    let root = cstr("/");
    // SAFETY: changes the propagation of the caller's mount namespace only.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// `unshare(flags)`.
pub fn unshare(flags: i32) -> Result<(), i32> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(flags) } as i64).map(|_| ())
}

/// An anonymous private mapping of `len` bytes, unmapped on drop.
pub struct Mapping {
    pub addr: *mut libc::c_void,
    pub len: usize,
}

impl Mapping {
    pub fn new(len: usize, flags: i32, fd: i32) -> Result<Self, i32> {
        // SAFETY: a fresh mapping at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(errno());
        }
        Ok(Self { addr, len })
    }

    pub fn anon(len: usize) -> Result<Self, i32> {
        Self::new(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    /// Write to every page, so advice has pages to act on.
    pub fn touch(&self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off` is inside the mapping, which is writable.
            unsafe { (self.addr as *mut u8).add(off).write_volatile(1) };
            off += 4096;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// A scratch directory, removed (best effort) on drop.
pub struct ScratchDir {
    pub path: String,
}

impl ScratchDir {
    pub fn new(parent: &str, name: &str) -> Option<Self> {
        let path = format!("{parent}/{name}.{}", std::process::id());
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).ok()?;
        Some(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The filesystem type of `path`, by name where known.
pub fn fs_type(path: &str) -> String {
    let p = cstr(path);
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlay".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x6367_7270 => "cgroup2".into(),
        0x0027_e0eb => "cgroup".into(),
        0x0102_1997 => "9p".into(),
        0x6573_5546 => "fuse".into(),
        0xE0F5_E1E2 => "erofs".into(),
        0x6265_6572 => "sysfs".into(),
        0x9fa0 => "proc".into(),
        other => format!("0x{other:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Children here only return or signal: no allocation after fork, since
    // the test harness has other threads.

    #[test]
    fn child_exit_code_signal_and_time_limit() {
        block_sigchld();
        assert_eq!(in_child(Duration::from_secs(5), || 7), Outcome::Exited(7));
        let o = in_child(Duration::from_secs(5), || {
            // SAFETY: raising a signal in the child itself.
            unsafe { libc::raise(libc::SIGTERM) };
            0
        });
        assert_eq!(o, Outcome::Signaled(libc::SIGTERM));
        let start = std::time::Instant::now();
        let o = in_child(Duration::from_millis(200), || {
            // SAFETY: pause only waits for a signal.
            unsafe { libc::pause() };
            0
        });
        assert_eq!(o, Outcome::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn outcomes_read_as_errno_names() {
        assert_eq!(Outcome::Exited(0).describe(), "ok");
        assert_eq!(Outcome::Exited(libc::ENOSYS).describe(), "ENOSYS");
        assert_eq!(Outcome::Exited(255).describe(), "exit255");
        assert_eq!(Outcome::Signaled(11).describe(), "signal11");
        assert_eq!(Outcome::TimedOut.describe(), "blocked");
        assert_eq!(errno_name(libc::EAFNOSUPPORT), "EAFNOSUPPORT");
        assert_eq!(errno_name(4000), "errno4000");
    }
}
