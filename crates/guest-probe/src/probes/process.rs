//! Process-level features: namespaces, cgroups (v1 subsystems compiled in,
//! v2 controllers and the files a nested runtime writes), seccomp, keyrings,
//! io_uring, file change notification (inotify, fanotify, dnotify), BPF,
//! perf events, Landlock, membarrier, pidfd, clocks, and the x86 ABIs.

use super::sys::{self, Outcome};
use std::os::fd::AsRawFd;
use std::time::Duration;
use vessel_probe::Report;

const CHILD: Duration = Duration::from_secs(5);

fn outcome_to(r: &mut Report, key: &str, o: Outcome) {
    match o {
        Outcome::Exited(0) => r.yes(key, "ok"),
        o => r.no(key, &o.describe()),
    }
}

fn probe_namespaces(r: &mut Report) {
    for (flag, name) in [
        (libc::CLONE_NEWNS, "mnt"),
        (libc::CLONE_NEWUTS, "uts"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWPID, "pid"),
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWUSER, "user"),
        (libc::CLONE_NEWCGROUP, "cgroup"),
        (0x80, "time"),
    ] {
        let o = sys::in_child(CHILD, || match sys::unshare(flag) {
            Ok(()) => 0,
            Err(e) => e,
        });
        outcome_to(r, &format!("ns:{name}"), o);
    }
    // A user namespace inside a user namespace (rootless runtimes nest
    // them): map our ids in the first, then create the second.
    let o = sys::in_child(CHILD, || {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if let Err(e) = sys::unshare(libc::CLONE_NEWUSER) {
            return e;
        }
        let maps = [
            ("/proc/self/uid_map", format!("0 {uid} 1")),
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/gid_map", format!("0 {gid} 1")),
        ];
        for (file, content) in maps {
            if let Err(e) = write(file, &content) {
                return e;
            }
        }
        match sys::unshare(libc::CLONE_NEWUSER) {
            Ok(()) => 0,
            Err(e) => e,
        }
    });
    outcome_to(r, "ns:user.nested", o);
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn write(path: &str, s: &str) -> Result<(), i32> {
    std::fs::write(path, s).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn probe_cgroups(r: &mut Report) {
    // Subsystems compiled in (v1 and v2), whatever is mounted.
    if let Some(text) = read("/proc/cgroups") {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 {
                r.record(&format!("cgroup:{}", f[0]), f[3] == "1", "");
            }
        }
    }
    // Named v1 hierarchies (old systemd in containers mounts name=systemd),
    // in a private mount namespace.
    match sys::ScratchDir::new("/tmp", ".vessel-probe-cg1") {
        Some(d) => {
            let o = sys::in_child(CHILD, || {
                if let Err(e) = sys::unshare(libc::CLONE_NEWNS) {
                    return e;
                }
                if let Err(e) = sys::mount_private_root() {
                    return e;
                }
                match sys::mount("none", &d.path, "cgroup", "none,name=vessel-probe") {
                    Ok(()) => 0,
                    Err(e) => e,
                }
            });
            outcome_to(r, "mount:cgroup1.named", o);
        }
        None => r.no("mount:cgroup1.named", "cannot create a directory in /tmp"),
    }

    let root = "/sys/fs/cgroup";
    if sys::fs_type(root) != "cgroup2" {
        r.no(
            "cgroup2:mounted",
            &format!("{root} is {}", sys::fs_type(root)),
        );
        return;
    }
    r.yes("cgroup2:mounted", "");
    let controllers: Vec<String> = read(&format!("{root}/cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for c in &controllers {
        r.yes(&format!("cgroup2:{c}"), "");
    }
    // What a nested runtime gets: enable every controller for children,
    // make a child, list its files, undo.
    let subtree = format!("{root}/cgroup.subtree_control");
    let before = read(&subtree).unwrap_or_default();
    let mut enabled = Vec::new();
    for c in &controllers {
        if before.split_whitespace().any(|b| b == c) {
            continue;
        }
        match write(&subtree, &format!("+{c}")) {
            Ok(()) => enabled.push(c.clone()),
            Err(e) => r.no(&format!("cgroup2:delegate.{c}"), &sys::errno_name(e)),
        }
    }
    let child = format!("{root}/vessel-probe.{}", std::process::id());
    match std::fs::create_dir(&child) {
        Ok(()) => {
            for n in std::fs::read_dir(&child)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
            {
                r.yes(&format!("cgroupfile:{n}"), "");
            }
            let _ = std::fs::remove_dir(&child);
        }
        Err(e) => r.no("cgroup2:child", &e.to_string()),
    }
    for c in enabled.iter().rev() {
        let _ = write(&subtree, &format!("-{c}"));
    }
}

/// `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

fn probe_seccomp(r: &mut Report) {
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    match sys::check(unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } as i64) {
        Ok(mode) => r.yes("seccomp:prctl", &format!("mode={mode}")),
        Err(e) => r.no("seccomp:prctl", &sys::errno_name(e)),
    }
    const SECCOMP_GET_ACTION_AVAIL: usize = 2;
    const SECCOMP_GET_NOTIF_SIZES: usize = 3;
    for (action, name) in [
        (0x8000_0000u32, "KILL_PROCESS"),
        (0, "KILL_THREAD"),
        (0x0003_0000, "TRAP"),
        (0x0005_0000, "ERRNO"),
        (0x7fc0_0000, "USER_NOTIF"),
        (0x7ff0_0000, "TRACE"),
        (0x7ffc_0000, "LOG"),
        (0x7fff_0000, "ALLOW"),
    ] {
        let a = action;
        let res = sys::syscall(
            libc::SYS_seccomp,
            [
                SECCOMP_GET_ACTION_AVAIL,
                0,
                &a as *const u32 as usize,
                0,
                0,
                0,
            ],
        );
        let key = format!("seccomp:action.{name}");
        match res {
            Ok(_) => r.yes(&key, "ok"),
            Err(e) => r.no(&key, &sys::errno_name(e)),
        }
    }
    let mut sizes = [0u16; 3];
    match sys::syscall(
        libc::SYS_seccomp,
        [
            SECCOMP_GET_NOTIF_SIZES,
            0,
            sizes.as_mut_ptr() as usize,
            0,
            0,
            0,
        ],
    ) {
        Ok(_) => r.yes("seccomp:user_notif", ""),
        Err(e) => r.no("seccomp:user_notif", &sys::errno_name(e)),
    }
    // A real filter: getppid() fails with EXDEV, everything else allowed.
    let o = sys::in_child(CHILD, || {
        let ld_nr = SockFilter {
            code: 0x20, // BPF_LD | BPF_W | BPF_ABS
            jt: 0,
            jf: 0,
            k: 0, // offsetof(struct seccomp_data, nr)
        };
        let jeq = SockFilter {
            code: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
            jt: 0,
            jf: 1,
            k: libc::SYS_getppid as u32,
        };
        let errno = SockFilter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::EXDEV as u32,
        };
        let allow = SockFilter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        };
        let prog = [ld_nr, jeq, errno, allow];
        let fprog = SockFprog {
            len: prog.len() as u16,
            filter: prog.as_ptr(),
        };
        // SAFETY: prctl with no pointers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return 101;
        }
        // SECCOMP_SET_MODE_FILTER = 1
        if let Err(e) = sys::syscall(
            libc::SYS_seccomp,
            [1, 0, &fprog as *const SockFprog as usize, 0, 0, 0],
        ) {
            return e;
        }
        match sys::syscall(libc::SYS_getppid, [0; 6]) {
            Err(e) if e == libc::EXDEV => 0,
            Err(e) => e,
            Ok(_) => 102,
        }
    });
    outcome_to(r, "seccomp:filter", o);
}

fn probe_keys(r: &mut Report) {
    const KEY_SPEC_PROCESS_KEYRING: i64 = -2;
    const KEYCTL_JOIN_SESSION_KEYRING: usize = 1;
    const KEYCTL_READ: usize = 11;
    let o = sys::in_child(CHILD, || {
        let (ty, desc) = (sys::cstr("user"), sys::cstr("vessel-probe"));
        let payload = b"x";
        let id = match sys::syscall(
            libc::SYS_add_key,
            [
                ty.as_ptr() as usize,
                desc.as_ptr() as usize,
                payload.as_ptr() as usize,
                1,
                KEY_SPEC_PROCESS_KEYRING as usize,
                0,
            ],
        ) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let mut buf = [0u8; 8];
        match sys::syscall(
            libc::SYS_keyctl,
            [KEYCTL_READ, id as usize, buf.as_mut_ptr() as usize, 8, 0, 0],
        ) {
            Ok(1) if buf[0] == b'x' => 0,
            Ok(_) => 103,
            Err(e) => e,
        }
    });
    outcome_to(r, "keys:user", o);
    let o = sys::in_child(CHILD, || {
        let name = sys::cstr("vessel-probe");
        match sys::syscall(
            libc::SYS_keyctl,
            [
                KEYCTL_JOIN_SESSION_KEYRING,
                name.as_ptr() as usize,
                0,
                0,
                0,
                0,
            ],
        ) {
            Ok(_) => 0,
            Err(e) => e,
        }
    });
    outcome_to(r, "keys:session", o);
}

fn probe_io_uring(r: &mut Report) {
    // struct io_uring_params is 120 bytes.
    let mut params = [0u8; 120];
    match sys::syscall(425, [4, params.as_mut_ptr() as usize, 0, 0, 0, 0]) {
        Ok(fd) => {
            drop(sys::owned(fd));
            let features = u32::from_ne_bytes([params[20], params[21], params[22], params[23]]);
            r.yes("io_uring:setup", &format!("features=0x{features:x}"));
        }
        Err(e) => r.no("io_uring:setup", &sys::errno_name(e)),
    }
}

fn probe_notify(r: &mut Report) {
    let Some(dir) = sys::ScratchDir::new("/tmp", ".vessel-probe-notify") else {
        r.no("notify:scratch", "cannot create a directory in /tmp");
        return;
    };
    let d = dir.path.clone();

    // inotify: a watch on the directory sees a file created in it.
    let o = sys::in_child(CHILD, || {
        // SAFETY: no pointers.
        let fd = match sys::check(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) } as i64) {
            Ok(fd) => sys::owned(fd),
            Err(e) => return e,
        };
        let p = sys::cstr(&d);
        // SAFETY: valid path.
        let w = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), p.as_ptr(), libc::IN_CREATE) };
        if w < 0 {
            return sys::errno();
        }
        if std::fs::write(format!("{d}/inotify"), b"x").is_err() {
            return 104;
        }
        let mut buf = [0u8; 256];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            0
        } else {
            sys::errno()
        }
    });
    outcome_to(r, "notify:inotify", o);

    // fanotify: an open of a file in a marked directory is reported.
    let o = sys::in_child(CHILD, || {
        const FAN_CLASS_NOTIF: usize = 0;
        const FAN_CLOEXEC: usize = 1;
        const FAN_MARK_ADD: usize = 1;
        const FAN_OPEN: u64 = 0x20;
        const FAN_EVENT_ON_CHILD: u64 = 0x0800_0000;
        let fd = match sys::syscall(
            libc::SYS_fanotify_init,
            [
                FAN_CLASS_NOTIF | FAN_CLOEXEC,
                libc::O_RDONLY as usize,
                0,
                0,
                0,
                0,
            ],
        ) {
            Ok(fd) => sys::owned(fd),
            Err(e) => return e,
        };
        let p = sys::cstr(&d);
        if let Err(e) = sys::syscall(
            libc::SYS_fanotify_mark,
            [
                fd.as_raw_fd() as usize,
                FAN_MARK_ADD,
                (FAN_OPEN | FAN_EVENT_ON_CHILD) as usize,
                libc::AT_FDCWD as usize,
                p.as_ptr() as usize,
                0,
            ],
        ) {
            return e;
        }
        let _ = std::fs::write(format!("{d}/fanotify"), b"x");
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            0
        } else {
            sys::errno()
        }
    });
    outcome_to(r, "notify:fanotify", o);
    // FAN_REPORT_FID (what inotify-replacing watchers use).
    match sys::syscall(
        libc::SYS_fanotify_init,
        [0x200 | 1, libc::O_RDONLY as usize, 0, 0, 0, 0],
    ) {
        Ok(fd) => {
            drop(sys::owned(fd));
            r.yes("notify:fanotify.report_fid", "ok")
        }
        Err(e) => r.no("notify:fanotify.report_fid", &sys::errno_name(e)),
    }

    // dnotify: fcntl(F_NOTIFY) on the directory, then SIGIO on a change.
    let o = sys::in_child(CHILD, || {
        // SAFETY: block SIGIO in this child so it can be waited for.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let fd = match sys::open(&d, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        const DN_CREATE: i32 = 4;
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_NOTIFY, DN_CREATE) };
        if rc != 0 {
            return sys::errno();
        }
        let _ = std::fs::write(format!("{d}/dnotify"), b"x");
        let ts = libc::timespec {
            tv_sec: 2,
            tv_nsec: 0,
        };
        // SAFETY: wait for the blocked SIGIO with a valid set and timeout.
        let sig = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
        };
        if sig == libc::SIGIO {
            0
        } else {
            105
        }
    });
    outcome_to(r, "fcntl:F_NOTIFY", o);
}

fn probe_bpf(r: &mut Report) {
    // union bpf_attr, BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&2u32.to_ne_bytes()); // BPF_MAP_TYPE_ARRAY
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&8u32.to_ne_bytes());
    attr[12..16].copy_from_slice(&1u32.to_ne_bytes());
    match sys::syscall(
        libc::SYS_bpf,
        [0, attr.as_ptr() as usize, attr.len(), 0, 0, 0],
    ) {
        Ok(fd) => {
            drop(sys::owned(fd));
            r.yes("bpf:map_create", "ok")
        }
        Err(e) => r.no("bpf:map_create", &sys::errno_name(e)),
    }
    // BPF_PROG_LOAD of a socket filter: r0 = 0; exit.
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = sys::cstr("GPL");
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes()); // insn_cnt
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    match sys::syscall(
        libc::SYS_bpf,
        [5, attr.as_ptr() as usize, attr.len(), 0, 0, 0],
    ) {
        Ok(fd) => {
            drop(sys::owned(fd));
            r.yes("bpf:prog_load", "ok")
        }
        Err(e) => r.no("bpf:prog_load", &sys::errno_name(e)),
    }
}

fn probe_perf(r: &mut Report) {
    // struct perf_event_attr (PERF_ATTR_SIZE_VER5 = 112 bytes).
    for (ty, config, name) in [
        (1u32, 0u64, "software.cpu_clock"),
        (1, 1, "software.task_clock"),
        (0, 0, "hardware.cpu_cycles"),
    ] {
        let mut attr = [0u8; 112];
        attr[0..4].copy_from_slice(&ty.to_ne_bytes());
        attr[4..8].copy_from_slice(&112u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&config.to_ne_bytes());
        // flags: disabled | exclude_kernel | exclude_hv
        attr[40..48].copy_from_slice(&(1u64 | (1 << 5) | (1 << 6)).to_ne_bytes());
        let key = format!("perf:{name}");
        match sys::syscall(
            libc::SYS_perf_event_open,
            [attr.as_ptr() as usize, 0, usize::MAX, usize::MAX, 0, 0],
        ) {
            Ok(fd) => {
                drop(sys::owned(fd));
                r.yes(&key, "ok")
            }
            Err(e) => r.no(&key, &sys::errno_name(e)),
        }
    }
}

fn probe_misc(r: &mut Report) {
    // Landlock: the ABI version, or EOPNOTSUPP when built but not enabled.
    match sys::syscall(444, [0, 0, 1, 0, 0, 0]) {
        Ok(v) => r.yes("landlock:abi", &format!("abi={v}")),
        Err(e) => r.no("landlock:abi", &sys::errno_name(e)),
    }
    // membarrier: MEMBARRIER_CMD_QUERY returns the supported commands.
    match sys::syscall(324, [0; 6]) {
        Ok(mask) => r.yes("membarrier:query", &format!("cmds=0x{mask:x}")),
        Err(e) => r.no("membarrier:query", &sys::errno_name(e)),
    }
    // pidfd: open our own, signal 0 through it.
    match sys::syscall(434, [std::process::id() as usize, 0, 0, 0, 0, 0]) {
        Ok(fd) => {
            let fd = sys::owned(fd);
            match sys::syscall(424, [fd.as_raw_fd() as usize, 0, 0, 0, 0, 0]) {
                Ok(_) => r.yes("pidfd:send_signal", "ok"),
                Err(e) => r.no("pidfd:send_signal", &sys::errno_name(e)),
            }
        }
        Err(e) => r.no("pidfd:send_signal", &sys::errno_name(e)),
    }
    // prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): checkpoint/restore (CRIU).
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes an unsigned int we own.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE,
            &mut size as *mut u32 as libc::c_ulong,
            0,
            0,
        )
    };
    match sys::check(rc as i64) {
        Ok(_) => r.yes("prctl:PR_SET_MM_MAP_SIZE", &format!("size={size}")),
        Err(e) => r.no("prctl:PR_SET_MM_MAP_SIZE", &sys::errno_name(e)),
    }
    // Clocks.
    for (id, name) in [
        (0, "CLOCK_REALTIME"),
        (1, "CLOCK_MONOTONIC"),
        (2, "CLOCK_PROCESS_CPUTIME_ID"),
        (3, "CLOCK_THREAD_CPUTIME_ID"),
        (4, "CLOCK_MONOTONIC_RAW"),
        (5, "CLOCK_REALTIME_COARSE"),
        (6, "CLOCK_MONOTONIC_COARSE"),
        (7, "CLOCK_BOOTTIME"),
        (8, "CLOCK_REALTIME_ALARM"),
        (9, "CLOCK_BOOTTIME_ALARM"),
        (11, "CLOCK_TAI"),
    ] {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes a timespec we own.
        let rc = unsafe { libc::clock_getres(id, &mut ts) };
        let key = format!("clock:{name}");
        match sys::check(rc as i64) {
            Ok(_) => r.yes(&key, ""),
            Err(e) => r.no(&key, &sys::errno_name(e)),
        }
    }
    // A timer on an alarm clock (needs a real-time clock device).
    match sys::syscall(
        libc::SYS_timerfd_create,
        [9, libc::TFD_CLOEXEC as usize, 0, 0, 0, 0],
    ) {
        Ok(fd) => {
            drop(sys::owned(fd));
            r.yes("timerfd:CLOCK_BOOTTIME_ALARM", "ok")
        }
        Err(e) => r.no("timerfd:CLOCK_BOOTTIME_ALARM", &sys::errno_name(e)),
    }
}

/// 32-bit x86 system calls from a 64-bit process: `int 0x80` with
/// getpid (20). Without IA32 emulation the interrupt is a fault.
fn int80_getpid() -> i64 {
    let mut ax: i64 = 20;
    // SAFETY: int 0x80 only clobbers eax/rax (the result) and, for the
    // 32-bit entry, r8-r11 are preserved by the kernel; getpid has no
    // arguments. Without IA32 emulation the process gets SIGSEGV.
    unsafe {
        std::arch::asm!("int 0x80", inout("rax") ax, out("r8") _, out("r9") _,
                        out("r10") _, out("r11") _, options(nostack));
    }
    ax
}

fn probe_abi(r: &mut Report) {
    let pid_ok = |ret: i64| ret > 0;
    let o = sys::in_child(CHILD, || if pid_ok(int80_getpid()) { 0 } else { 106 });
    outcome_to(r, "abi:ia32", o);
    // x32: the x32 flag on the getpid number (39).
    const X32: i64 = 0x4000_0000;
    match sys::syscall(X32 | 39, [0; 6]) {
        Ok(_) => r.yes("abi:x32", "ok"),
        Err(e) => r.no("abi:x32", &sys::errno_name(e)),
    }
    // The legacy vsyscall page: call its gettimeofday entry.
    let o = sys::in_child(CHILD, || {
        type Gtod = extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> i64;
        // SAFETY: the fixed vsyscall address; if the kernel has no
        // vsyscall page (or it is not executable) the child dies of SIGSEGV.
        let f: Gtod = unsafe { std::mem::transmute(0xffff_ffff_ff60_0000usize) };
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        if f(&mut tv, std::ptr::null_mut()) == 0 && tv.tv_sec > 0 {
            0
        } else {
            107
        }
    });
    outcome_to(r, "abi:vsyscall", o);
}

pub fn probe(r: &mut Report) {
    probe_namespaces(r);
    probe_cgroups(r);
    probe_seccomp(r);
    probe_keys(r);
    probe_io_uring(r);
    probe_notify(r);
    probe_bpf(r);
    probe_perf(r);
    probe_misc(r);
    probe_abi(r);
}
