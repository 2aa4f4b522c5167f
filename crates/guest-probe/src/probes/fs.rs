//! Filesystems: the types the kernel knows (`/proc/filesystems`), which of
//! them a privileged container can mount (in a private mount namespace, on
//! a scratch tmpfs), the new mount API, and extended attributes and POSIX
//! ACLs on the root filesystem and on tmpfs.

use super::sys::{self, Outcome};
use std::time::Duration;
use vessel_probe::Report;

const CHILD: Duration = Duration::from_secs(10);

/// (fstype, options) mounted on a fresh directory.
const MOUNTS: &[(&str, &str)] = &[
    ("proc", ""),
    ("sysfs", ""),
    ("tmpfs", "mode=0755"),
    ("ramfs", ""),
    ("devtmpfs", ""),
    ("devpts", "newinstance,ptmxmode=0666"),
    ("mqueue", ""),
    ("cgroup2", ""),
    ("bpf", ""),
    ("hugetlbfs", ""),
    ("binfmt_misc", ""),
    ("tracefs", ""),
    ("debugfs", ""),
    ("securityfs", ""),
    ("configfs", ""),
    ("fusectl", ""),
    ("pstore", ""),
];

/// In a child: a private mount namespace with a tmpfs on `dir`, then `f`.
fn with_scratch_tmpfs(dir: &str, f: impl FnOnce(&str) -> i32) -> Outcome {
    sys::in_child(CHILD, || {
        if let Err(e) = sys::unshare(libc::CLONE_NEWNS) {
            return e;
        }
        if let Err(e) = sys::mount_private_root() {
            return e;
        }
        if let Err(e) = sys::mount("tmpfs", dir, "tmpfs", "mode=0755") {
            return e;
        }
        f(dir)
    })
}

fn probe_mounts(r: &mut Report, tmp: &str) {
    for &(fstype, opts) in MOUNTS {
        let o = with_scratch_tmpfs(tmp, |d| {
            let target = format!("{d}/m");
            if std::fs::create_dir(&target).is_err() {
                return 110;
            }
            match sys::mount(fstype, &target, fstype, opts) {
                Ok(()) => 0,
                Err(e) => e,
            }
        });
        record(r, &format!("mount:{fstype}"), o);
    }
    // overlay with its directories on tmpfs, as container engines use it.
    let o = with_scratch_tmpfs(tmp, |d| {
        for sub in ["lower", "upper", "work", "merged"] {
            if std::fs::create_dir(format!("{d}/{sub}")).is_err() {
                return 110;
            }
        }
        let opts = format!("lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work");
        match sys::mount("overlay", &format!("{d}/merged"), "overlay", &opts) {
            Ok(()) => 0,
            Err(e) => e,
        }
    });
    record(r, "mount:overlay", o);
    // The new mount API: fsopen, fsconfig(CREATE), fsmount.
    let o = sys::in_child(CHILD, || {
        let name = sys::cstr("tmpfs");
        let fs = match sys::syscall(430, [name.as_ptr() as usize, 1, 0, 0, 0, 0]) {
            Ok(fd) => sys::owned(fd),
            Err(e) => return e,
        };
        use std::os::fd::AsRawFd;
        if let Err(e) = sys::syscall(431, [fs.as_raw_fd() as usize, 6, 0, 0, 0, 0]) {
            return e;
        }
        match sys::syscall(432, [fs.as_raw_fd() as usize, 1, 0, 0, 0, 0]) {
            Ok(m) => {
                drop(sys::owned(m));
                0
            }
            Err(e) => e,
        }
    });
    record(r, "mount:fsopen", o);
}

fn record(r: &mut Report, key: &str, o: Outcome) {
    match o {
        Outcome::Exited(0) => r.yes(key, "ok"),
        o => r.no(key, &o.describe()),
    }
}

fn setxattr(path: &str, name: &str, value: &[u8]) -> Result<(), i32> {
    let (p, n) = (sys::cstr(path), sys::cstr(name));
    // SAFETY: valid strings and a value buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(sys::errno())
    }
}

/// An access ACL: user::rwx group::r-x other::r-x (version 2 format).
fn acl_blob() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 5)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

/// (xattr name, key) tried on one file.
fn xattr_tests() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("user.vessel_probe", "xattr:user", b"1".to_vec()),
        ("trusted.vessel_probe", "xattr:trusted", b"1".to_vec()),
        ("security.vessel_probe", "xattr:security", b"1".to_vec()),
        ("system.posix_acl_access", "acl:access", acl_blob()),
    ]
}

fn probe_xattrs_at(r: &mut Report, file: &str, fs: &str) {
    for (name, key, value) in xattr_tests() {
        let key = format!("{key}@{fs}");
        match setxattr(file, name, &value) {
            Ok(()) => r.yes(&key, "ok"),
            Err(e) => r.no(&key, &sys::errno_name(e)),
        }
    }
}

pub fn probe(r: &mut Report, scratch: Option<&str>) {
    if let Ok(text) = std::fs::read_to_string("/proc/filesystems") {
        for line in text.lines() {
            if let Some(name) = line.split_whitespace().last() {
                r.yes(&format!("fs:{name}"), "");
            }
        }
    }
    let Some(tmp) = sys::ScratchDir::new("/tmp", ".vessel-probe-mnt") else {
        r.no("mount:scratch", "cannot create a directory in /tmp");
        return;
    };
    probe_mounts(r, &tmp.path);

    // Extended attributes: on the root filesystem, and on a fresh tmpfs.
    if let Some(dir) = scratch {
        let file = format!("{dir}/xattr");
        if std::fs::write(&file, b"x").is_ok() {
            probe_xattrs_at(r, &file, &sys::fs_type(dir));
        }
    }
    let o = with_scratch_tmpfs(&tmp.path, |d| {
        let file = format!("{d}/xattr");
        if std::fs::write(&file, b"x").is_err() {
            return 110;
        }
        // Report through the exit code: 200 + one bit per test that worked.
        let mut bits = 0;
        for (i, (name, _, value)) in xattr_tests().iter().enumerate() {
            if setxattr(&file, name, value).is_ok() {
                bits |= 1 << i;
            }
        }
        200 + bits
    });
    match o {
        Outcome::Exited(code) if (200..216).contains(&code) => {
            let bits = code - 200;
            for (i, (_, key, _)) in xattr_tests().iter().enumerate() {
                r.record(&format!("{key}@tmpfs"), bits & (1 << i) != 0, "");
            }
        }
        o => r.no("xattr:user@tmpfs", &o.describe()),
    }
}
