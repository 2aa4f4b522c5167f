//! A clone's guest memory is its template's memory file, mapped
//! copy-on-write (`memory-backend-file,share=off`): every clone of a
//! template shares the pages it only reads (the kernel's, vminitd's) in the
//! host's page cache, and pays only for the pages it writes.
//!
//! QEMU 7.2 cannot be trusted with that file on its own:
//!
//! - it opens `mem-path` read-write (its `readonly=on` maps the memory
//!   read-only, which a guest cannot run on), and a compromised VMM holding
//!   a writable descriptor of the file every clone starts from could change
//!   what the next clone boots into;
//! - memory the guest gives back (free page reporting) is discarded with
//!   `fallocate(PUNCH_HOLE)` on the file before `MADV_DONTNEED`, which
//!   would zero the template's pages under every other clone.
//!
//! So the runtime supervises those two system calls of the clone's QEMU
//! with a seccomp filter that notifies it ([`install`], in the child
//! before exec) and a thread that answers ([`Supervisor`]):
//!
//! - `openat` of the memory file's path gets a **read-only** descriptor the
//!   runtime opened (`SECCOMP_IOCTL_NOTIF_ADDFD`); a private mapping of it
//!   is still writable, copy-on-write. The file is not in the VMM's jail at
//!   all: no other path reaches it.
//! - `fallocate` on that descriptor succeeds without doing anything, so
//!   QEMU goes on to `MADV_DONTNEED`, which drops the clone's private copy
//!   of the page (memory back to the host) and leaves the file alone; the
//!   guest only reports pages it considers free, whose content it does not
//!   expect back.
//! - Every other `openat` and `fallocate` continues as if there were no
//!   filter (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). This filter confines
//!   nothing: the jail and QEMU's own `-sandbox` do.
//!
//! Needs Linux 5.9 (`ADDFD`); [`supported`] checks, and a host without it
//! boots every VM's kernel.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// `_IOWR('!', 0, struct seccomp_notif)` (80 bytes).
const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `_IOWR('!', 1, struct seccomp_notif_resp)` (24 bytes).
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
/// `_IOW('!', 2, __u64)`.
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
/// `_IOW('!', 3, struct seccomp_notif_addfd)` (24 bytes).
const NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
#[derive(Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct NotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

/// The system calls the filter sends to the supervisor.
fn watched() -> Vec<u32> {
    let mut v = vec![libc::SYS_openat as u32, libc::SYS_fallocate as u32];
    #[cfg(target_arch = "x86_64")]
    v.push(libc::SYS_open as u32);
    v
}

/// The classic BPF program: this architecture's watched calls notify,
/// everything else is allowed.
fn program() -> Vec<libc::sock_filter> {
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let calls = watched();
    let n = calls.len() as u8;
    let mut p = vec![
        stmt(ld, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH, 0, n + 1),
        stmt(ld, 0), // seccomp_data.nr
    ];
    for (i, nr) in calls.iter().enumerate() {
        // Hit: jump over the remaining tests and the ALLOW to the NOTIF.
        p.push(jeq(*nr, n - i as u8, 0));
    }
    p.push(stmt(ret, SECCOMP_RET_ALLOW));
    p.push(stmt(ret, SECCOMP_RET_USER_NOTIF));
    p
}

/// What the child needs between fork and exec: the filter and the socket
/// its listener descriptor goes back on. Built before the fork.
pub struct Install {
    program: Vec<libc::sock_filter>,
    socket: UnixStream,
}

/// The two ends: [`Install`] for the child, [`Supervisor`] for the parent.
pub fn pair(memory: &Path) -> io::Result<(Install, Supervisor)> {
    let (child, parent) = UnixStream::pair()?;
    let path = CString::new(memory.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL in the memory file's path"))?;
    Ok((
        Install {
            program: program(),
            socket: child,
        },
        Supervisor {
            socket: parent,
            path,
            file_path: memory.to_path_buf(),
        },
    ))
}

impl Install {
    /// In the child, the last step before exec (after the jail set
    /// `PR_SET_NO_NEW_PRIVS`): install the filter and send its listener
    /// to the parent. Only raw system calls on data made before the fork.
    pub fn enter(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: raw system calls; `prog` and the message buffers live on
        // this stack frame for the calls; nothing is allocated.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            ) as RawFd;
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let r = send_fd(self.socket.as_raw_fd(), fd);
            libc::close(fd);
            libc::close(self.socket.as_raw_fd());
            r
        }
    }
}

/// `sendmsg` of one descriptor (SCM_RIGHTS) with a one-byte payload.
///
/// # Safety
/// `sock` and `fd` are open descriptors.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller's descriptors; the buffers live on this frame.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // Room for one descriptor's control message, aligned.
        let mut cmsg = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: msghdr is plain data; the buffers outlive the call; the
    // control message is read only when the kernel filled one in.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        if libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other(
                "the VMM's child sent no seccomp listener (it failed before exec)",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The parent's side: answers the clone QEMU's `openat` and `fallocate`
/// calls until it exits.
pub struct Supervisor {
    socket: UnixStream,
    /// The path QEMU is given as `mem-path`, as it passes it to `openat`.
    path: CString,
    file_path: PathBuf,
}

impl Supervisor {
    /// Serve on a thread of its own. Call before spawning QEMU: the thread
    /// first waits for the child's listener.
    pub fn spawn(self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("memfile".into())
            .spawn(move || {
                if let Err(e) = self.serve() {
                    crate::log(&format!("guest memory file supervisor: {e}"));
                }
            })
            .map(|_| ())
    }

    fn serve(self) -> io::Result<()> {
        let listener = recv_fd(&self.socket)?;
        let file = File::open(&self.file_path)?;
        loop {
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if pfd.revents & libc::POLLIN == 0 {
                // POLLHUP: no process uses the filter any more.
                return Ok(());
            }
            let mut req = Notif::default();
            // SAFETY: `req` is a zeroed struct seccomp_notif.
            if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut req) } < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    // The caller was killed meanwhile, or a signal.
                    Some(libc::ENOENT) | Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
            let answer = self.decide(&listener, &req, &file);
            // SAFETY: a struct seccomp_notif_resp for the same id.
            let _ = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &answer) };
        }
    }

    /// The answer to one notification.
    fn decide(&self, listener: &OwnedFd, req: &Notif, file: &File) -> NotifResp {
        let go_on = NotifResp {
            id: req.id,
            val: 0,
            error: 0,
            flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        };
        let nr = req.data.nr as libc::c_long;
        if nr == libc::SYS_fallocate {
            let fd = req.data.args[0] as i32;
            let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", req.pid));
            if target.is_ok_and(|t| t == self.file_path) {
                // The punch is skipped; QEMU's MADV_DONTNEED follows.
                return NotifResp {
                    id: req.id,
                    val: 0,
                    error: 0,
                    flags: 0,
                };
            }
            return go_on;
        }
        let path_arg = if nr == libc::SYS_openat {
            req.data.args[1]
        } else {
            req.data.args[0]
        };
        let want = self.path.as_bytes_with_nul();
        match read_remote(req.pid, path_arg, want.len()) {
            Some(bytes) if bytes == want => {}
            _ => return go_on,
        }
        // The path was read from a process that may have changed since:
        // act only if the notification is still pending.
        let id = req.id;
        // SAFETY: a u64 for the ioctl to read.
        if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_ID_VALID, &id) } < 0 {
            return go_on;
        }
        let add = NotifAddfd {
            id: req.id,
            flags: 0,
            srcfd: file.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: 0,
        };
        // SAFETY: a struct seccomp_notif_addfd; the kernel copies `srcfd`
        // into the target and returns its number there.
        let newfd = unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_ADDFD, &add) };
        if newfd < 0 {
            return NotifResp {
                id: req.id,
                val: 0,
                error: -libc::EACCES,
                flags: 0,
            };
        }
        NotifResp {
            id: req.id,
            val: newfd as i64,
            error: 0,
            flags: 0,
        }
    }
}

/// Up to `len` bytes at `addr` in process `pid`, cut after the first NUL.
fn read_remote(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // Never across a page boundary in one read: the next page may not
        // be mapped although the string ends before it.
        let at = addr + got as u64;
        let room = (4096 - (at % 4096) as usize).min(len - got);
        let local = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: room,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: room,
        };
        // SAFETY: `local` points into `buf` with `room` bytes left.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            break;
        }
        let before = got;
        got += n as usize;
        if buf[before..got].contains(&0) {
            break;
        }
    }
    buf.truncate(got);
    if let Some(i) = buf.iter().position(|b| *b == 0) {
        buf.truncate(i + 1);
    }
    Some(buf)
}

/// Whether this kernel has what [`install`] needs: seccomp listeners with
/// `CONTINUE` and `ADDFD` (Linux 5.9).
pub fn supported() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (5, 9)
}

/// Register `install` as the last step before exec of `cmd`.
pub fn install(cmd: &mut std::process::Command, install: Install) {
    use std::os::unix::process::CommandExt;
    // SAFETY: `Install::enter` makes only raw system calls on data built
    // before the fork.
    unsafe {
        cmd.pre_exec(move || install.enter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_notifies_the_watched_calls_only() {
        let p = program();
        let calls = watched();
        // arch, its check, nr, one test per call, allow, notify.
        assert_eq!(p.len(), 3 + calls.len() + 2);
        assert_eq!(p[p.len() - 1].k, SECCOMP_RET_USER_NOTIF);
        assert_eq!(p[p.len() - 2].k, SECCOMP_RET_ALLOW);
        // A wrong architecture jumps to ALLOW.
        assert_eq!(1 + 1 + p[1].jf as usize, p.len() - 2);
        for (i, nr) in calls.iter().enumerate() {
            let t = &p[3 + i];
            assert_eq!(t.k, *nr);
            // A hit lands on the NOTIF return.
            assert_eq!(3 + i + 1 + t.jt as usize, p.len() - 1);
        }
    }

    /// A real child under the filter: its `open` of the memory file's path
    /// gets a read-only descriptor of the file (which the child's own
    /// namespace need not have), its `fallocate` on it succeeds without
    /// touching the file, and other files open as usual.
    #[test]
    fn a_child_gets_the_file_read_only_and_cannot_punch_it() {
        if !supported() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let memory = tmp.path().join("memory");
        std::fs::write(&memory, vec![7u8; 8192]).unwrap();
        let other = tmp.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        let (install_half, supervisor) = pair(&memory).unwrap();
        supervisor.spawn().unwrap();
        let script = format!(
            "exec 3<>{m} || exit 10; \
             echo ok >&3 && exit 11; \
             fallocate -p -o 0 -l 4096 {m} || exit 12; \
             cat {o} >/dev/null || exit 13; exit 0",
            m = memory.display(),
            o = other.display()
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(&script);
        install(&mut cmd, install_half);
        let status = cmd.status().unwrap();
        // `exec 3<>` asks read-write and gets read-only: the write fails.
        assert_eq!(status.code(), Some(0), "{status:?}");
        assert_eq!(std::fs::read(&memory).unwrap(), vec![7u8; 8192]);
    }
}
