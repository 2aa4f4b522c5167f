//! Memory advice and memory files: `madvise` with each advice value,
//! `posix_fadvise`, `memfd_create` and its flags, huge pages,
//! `userfaultfd`.
//!
//! An advice is offered when the call succeeds or fails for a reason other
//! than EINVAL/ENOSYS (the kernel's answers for an advice it was built
//! without, or no `madvise` at all). MADV_HWPOISON and MADV_SOFT_OFFLINE
//! are never tried: they damage memory on purpose.

use super::sys::{self, Mapping};
use vessel_probe::Report;

const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

/// (value, name) of each advice tried on a private anonymous mapping.
const ADVICE: &[(i32, &str)] = &[
    (0, "MADV_NORMAL"),
    (1, "MADV_RANDOM"),
    (2, "MADV_SEQUENTIAL"),
    (3, "MADV_WILLNEED"),
    (4, "MADV_DONTNEED"),
    (8, "MADV_FREE"),
    (10, "MADV_DONTFORK"),
    (11, "MADV_DOFORK"),
    (12, "MADV_MERGEABLE"),
    (13, "MADV_UNMERGEABLE"),
    (14, "MADV_HUGEPAGE"),
    (15, "MADV_NOHUGEPAGE"),
    (16, "MADV_DONTDUMP"),
    (17, "MADV_DODUMP"),
    (18, "MADV_WIPEONFORK"),
    (19, "MADV_KEEPONFORK"),
    (20, "MADV_COLD"),
    (21, "MADV_PAGEOUT"),
    (22, "MADV_POPULATE_READ"),
    (23, "MADV_POPULATE_WRITE"),
    (24, "MADV_DONTNEED_LOCKED"),
];
const MADV_REMOVE: i32 = 9;
const MADV_COLLAPSE: i32 = 25;

fn madvise(addr: *mut libc::c_void, len: usize, advice: i32) -> Result<(), i32> {
    // SAFETY: `addr..addr+len` is a mapping this probe owns; the advice
    // values tried never make the kernel write to other memory.
    sys::check(unsafe { libc::madvise(addr, len, advice) } as i64).map(|_| ())
}

fn record_advice(r: &mut Report, key: &str, res: Result<(), i32>) {
    match res {
        Ok(()) => r.yes(key, "ok"),
        Err(e) if e == libc::EINVAL || e == libc::ENOSYS => r.no(key, &sys::errno_name(e)),
        Err(e) => r.yes(key, &sys::errno_name(e)),
    }
}

fn probe_madvise(r: &mut Report) {
    for &(advice, name) in ADVICE {
        let key = format!("madvise:{name}");
        match Mapping::anon(8 * PAGE) {
            Ok(m) => {
                m.touch();
                record_advice(r, &key, madvise(m.addr, m.len, advice));
            }
            Err(e) => r.no(&key, &format!("mmap:{}", sys::errno_name(e))),
        }
    }
    // MADV_REMOVE frees the backing store of shared memory.
    match Mapping::new(8 * PAGE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1) {
        Ok(m) => {
            m.touch();
            record_advice(
                r,
                "madvise:MADV_REMOVE",
                madvise(m.addr, m.len, MADV_REMOVE),
            );
        }
        Err(e) => r.no(
            "madvise:MADV_REMOVE",
            &format!("mmap:{}", sys::errno_name(e)),
        ),
    }
    // MADV_COLLAPSE wants a huge-page aligned range.
    match Mapping::anon(2 * HUGE) {
        Ok(m) => {
            let start = (m.addr as usize + HUGE - 1) & !(HUGE - 1);
            m.touch();
            let res = madvise(start as *mut libc::c_void, HUGE, MADV_COLLAPSE);
            record_advice(r, "madvise:MADV_COLLAPSE", res);
        }
        Err(e) => r.no(
            "madvise:MADV_COLLAPSE",
            &format!("mmap:{}", sys::errno_name(e)),
        ),
    }
}

fn probe_fadvise(r: &mut Report, dir: &str) {
    let path = format!("{dir}/fadvise");
    let data = vec![7u8; 64 * 1024];
    if let Err(e) = std::fs::write(&path, &data) {
        r.no("fadvise:file", &format!("cannot write {path}: {e}"));
        return;
    }
    let fs = sys::fs_type(dir);
    let Ok(fd) = sys::open(&path, libc::O_RDONLY) else {
        r.no("fadvise:file", "cannot open the scratch file");
        return;
    };
    use std::os::fd::AsRawFd;
    for (advice, name) in [
        (libc::POSIX_FADV_NORMAL, "POSIX_FADV_NORMAL"),
        (libc::POSIX_FADV_RANDOM, "POSIX_FADV_RANDOM"),
        (libc::POSIX_FADV_SEQUENTIAL, "POSIX_FADV_SEQUENTIAL"),
        (libc::POSIX_FADV_WILLNEED, "POSIX_FADV_WILLNEED"),
        (libc::POSIX_FADV_DONTNEED, "POSIX_FADV_DONTNEED"),
        (libc::POSIX_FADV_NOREUSE, "POSIX_FADV_NOREUSE"),
    ] {
        // SAFETY: posix_fadvise on a descriptor we own; no pointers.
        let e = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, advice) };
        let key = format!("fadvise:{name}");
        if e == 0 {
            r.yes(&key, &format!("ok on {fs}"));
        } else {
            r.no(&key, &format!("{} on {fs}", sys::errno_name(e)));
        }
    }
}

fn memfd(name: &str, flags: u32) -> Result<std::os::fd::OwnedFd, i32> {
    let n = sys::cstr(name);
    sys::syscall(
        libc::SYS_memfd_create,
        [n.as_ptr() as usize, flags as usize, 0, 0, 0, 0],
    )
    .map(sys::owned)
}

fn probe_memfd(r: &mut Report) {
    use std::os::fd::AsRawFd;
    match memfd("vessel-probe", libc::MFD_CLOEXEC) {
        Ok(_) => r.yes("memfd:create", "ok"),
        Err(e) => r.no("memfd:create", &sys::errno_name(e)),
    }
    match memfd("vessel-probe", libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) {
        Ok(fd) => {
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
            // SAFETY: fcntl on a descriptor we own.
            let res =
                sys::check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } as i64);
            match res {
                Ok(_) => r.yes("memfd:seals", "ok"),
                Err(e) => r.no("memfd:seals", &sys::errno_name(e)),
            }
        }
        Err(e) => r.no("memfd:seals", &sys::errno_name(e)),
    }
    for (flag, name) in [
        (libc::MFD_HUGETLB, "MFD_HUGETLB"),
        (0x0008, "MFD_NOEXEC_SEAL"),
        (0x0010, "MFD_EXEC"),
    ] {
        let key = format!("memfd:{name}");
        match memfd("vessel-probe", libc::MFD_CLOEXEC | flag) {
            Ok(_) => r.yes(&key, "ok"),
            Err(e) => r.no(&key, &sys::errno_name(e)),
        }
    }
    // memfd_secret(2): off unless the kernel was booted with secretmem.enable=1.
    match sys::syscall(447, [libc::O_CLOEXEC as usize, 0, 0, 0, 0, 0]) {
        Ok(fd) => {
            drop(sys::owned(fd));
            r.yes("memfd:secret", "ok");
        }
        Err(e) => r.no("memfd:secret", &sys::errno_name(e)),
    }
    // Anonymous huge pages: ENOMEM (no pages reserved) still means the
    // kernel has hugetlbfs.
    match Mapping::new(
        HUGE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
        -1,
    ) {
        Ok(_) => r.yes("mmap:MAP_HUGETLB", "ok"),
        Err(e) if e == libc::ENOSYS || e == libc::EINVAL => {
            r.no("mmap:MAP_HUGETLB", &sys::errno_name(e))
        }
        Err(e) => r.yes("mmap:MAP_HUGETLB", &sys::errno_name(e)),
    }
}

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

fn probe_userfaultfd(r: &mut Report) {
    use std::os::fd::AsRawFd;
    const UFFD_USER_MODE_ONLY: usize = 1;
    const UFFDIO_API: u64 = 0xc018_aa3f;
    let fd = match sys::syscall(
        libc::SYS_userfaultfd,
        [
            libc::O_CLOEXEC as usize | UFFD_USER_MODE_ONLY,
            0,
            0,
            0,
            0,
            0,
        ],
    ) {
        Ok(fd) => sys::owned(fd),
        Err(e) => {
            r.no("userfaultfd:api", &sys::errno_name(e));
            return;
        }
    };
    let mut api = UffdioApi {
        api: 0xAA,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api` we own.
    let res = sys::check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } as i64);
    match res {
        Ok(_) => r.yes("userfaultfd:api", &format!("features=0x{:x}", api.features)),
        Err(e) => r.no("userfaultfd:api", &sys::errno_name(e)),
    }
}

pub fn probe(r: &mut Report, scratch: Option<&str>) {
    probe_madvise(r);
    match scratch {
        Some(dir) => probe_fadvise(r, dir),
        None => r.no("fadvise:file", "no writable scratch directory"),
    }
    probe_memfd(r);
    probe_userfaultfd(r);
}
