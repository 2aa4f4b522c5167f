//! Docker's copy-in: a new (empty) volume mounted over a directory of the
//! image first gets that directory's content, so `-v data:/etc` shows the
//! image's `/etc` and not an empty directory.
//!
//! [`populate`] copies the tree as it is: owners, modes (with setuid and
//! friends), times, symbolic links, hard links (as links), device nodes,
//! FIFOs and extended attributes (file capabilities among them); the
//! volume's root takes the owner and mode of the image's directory, as
//! Docker does. A volume that has anything in it (other than an empty
//! `lost+found`) is left as it is: its data wins over the image's.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Is `dir` empty for the copy-in: nothing in it, or only an empty
/// `lost+found` (what `mkfs.ext4` leaves in a filesystem made elsewhere)?
pub fn is_empty(dir: &Path) -> io::Result<bool> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name() == "lost+found"
            && e.file_type()?.is_dir()
            && fs::read_dir(e.path())?.next().is_none()
        {
            continue;
        }
        return Ok(false);
    }
    Ok(true)
}

/// Copy the content of `src` (the image's directory at the mount target)
/// into `dst` (the new volume's root) when `dst` is empty, and give `dst`
/// the owner and mode of `src`. Returns whether it copied.
pub fn populate(src: &Path, dst: &Path) -> Result<bool, String> {
    let empty =
        is_empty(dst).map_err(|e| format!("reading the volume's root {}: {e}", dst.display()))?;
    if !empty {
        return Ok(false);
    }
    let md = fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut links = HashMap::new();
    copy_children(src, dst, &mut links)?;
    set_owner(dst, md.uid(), md.gid())?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(|e| format!("chmod {}: {e}", dst.display()))?;
    set_times(dst, &md)?;
    Ok(true)
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn last_err(what: &str, p: &Path) -> String {
    format!("{what} {}: {}", p.display(), io::Error::last_os_error())
}

/// `lchown`: never follows a link.
fn set_owner(p: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(last_err("chown", p));
    }
    Ok(())
}

/// Access and modification times of `md`, on `p` itself (not a link's
/// target).
fn set_times(p: &Path, md: &fs::Metadata) -> Result<(), String> {
    let c = cpath(p)?;
    let times = [
        libc::timespec {
            tv_sec: md.atime() as libc::time_t,
            tv_nsec: md.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: md.mtime() as libc::time_t,
            tv_nsec: md.mtime_nsec() as _,
        },
    ];
    // SAFETY: `c` is a valid path and `times` two timespecs, as utimensat
    // expects; both outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(last_err("setting the times of", p));
    }
    Ok(())
}

/// Copy the extended attributes of `src` to `dst` (links themselves).
/// Attributes the filesystem or the kernel refuses (another security
/// module's, say) are skipped: the data matters more.
fn copy_xattrs(src: &Path, dst: &Path) -> Result<(), String> {
    let s = cpath(src)?;
    let d = cpath(dst)?;
    // SAFETY: a null buffer of size 0 asks for the size the list needs.
    let n = unsafe { libc::llistxattr(s.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: `names` has room for `names.len()` bytes.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Ok(());
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        // SAFETY: size query, as above.
        let len = unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: `value` has room for `value.len()` bytes.
        let len = unsafe {
            libc::lgetxattr(
                s.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            continue;
        }
        // SAFETY: the path, the name and `len` bytes of `value` are valid.
        let rc = unsafe {
            libc::lsetxattr(
                d.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                len as usize,
                0,
            )
        };
        if rc != 0 {
            crate::log_line(&format!(
                "copy-in: {}: extended attribute {} not copied: {}",
                dst.display(),
                String::from_utf8_lossy(name),
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn copy_children(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), String> {
    let rd = fs::read_dir(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("reading {}: {e}", src.display()))?;
        copy_entry(&e.path(), &dst.join(e.file_name()), links)?;
    }
    Ok(())
}

/// Copy one entry (and, for a directory, what is in it).
fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), String> {
    let md = fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let ft = md.file_type();
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            return fs::hard_link(first, dst)
                .map_err(|e| format!("linking {}: {e}", dst.display()));
        }
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    let mode = md.mode() & 0o7777;
    if ft.is_dir() {
        fs::create_dir(dst).map_err(|e| format!("making {}: {e}", dst.display()))?;
        copy_children(src, dst, links)?;
    } else if ft.is_file() {
        let mut from = fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(|e| format!("making {}: {e}", dst.display()))?;
        io::copy(&mut from, &mut to).map_err(|e| format!("copying {}: {e}", src.display()))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| format!("{}: {e}", src.display()))?;
        std::os::unix::fs::symlink(&target, dst)
            .map_err(|e| format!("making {}: {e}", dst.display()))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let c = cpath(dst)?;
        let kind = md.mode() & libc::S_IFMT;
        // SAFETY: `c` is a valid path; mknod has no memory preconditions.
        if unsafe { libc::mknod(c.as_ptr(), kind | mode, md.rdev() as libc::dev_t) } != 0 {
            return Err(last_err("making", dst));
        }
    } else {
        // A socket: nothing to copy (as tar leaves it out).
        return Ok(());
    }
    // Owner first: chown clears setuid bits and file capabilities, which
    // the mode and the attributes then put back.
    set_owner(dst, md.uid(), md.gid())?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", dst.display()))?;
    }
    copy_xattrs(src, dst)?;
    set_times(dst, &md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let c = cpath(p).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid path, name and buffer.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| buf[..len as usize].to_vec())
    }

    fn set_xattr(p: &Path, name: &str, v: &[u8]) -> bool {
        let c = cpath(p).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid path, name and value.
        unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) == 0 }
    }

    #[test]
    fn empty_means_nothing_but_an_empty_lost_and_found() {
        let d = tempfile::tempdir().unwrap();
        assert!(is_empty(d.path()).unwrap());
        fs::create_dir(d.path().join("lost+found")).unwrap();
        assert!(is_empty(d.path()).unwrap());
        fs::write(d.path().join("lost+found/#12"), b"x").unwrap();
        assert!(!is_empty(d.path()).unwrap());
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("lost+found"), b"a file").unwrap();
        assert!(!is_empty(d.path()).unwrap());
    }

    #[test]
    fn copies_owners_modes_times_links_and_attributes() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let img = tempfile::tempdir().unwrap();
        let src = img.path().join("etc");
        fs::create_dir(&src).unwrap();
        fs::create_dir(src.join("sub")).unwrap();
        fs::write(src.join("passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::set_permissions(src.join("passwd"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(src.join("sub/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("sub/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(src.join("passwd"), src.join("passwd.link")).unwrap();
        symlink("sub/tool", src.join("tool")).unwrap();
        symlink("/nowhere", src.join("dangling")).unwrap();
        let xattrs = set_xattr(&src.join("passwd"), "user.vessel", b"kept");
        if root {
            set_owner(&src.join("sub"), 1000, 1001).unwrap();
            set_owner(&src, 70, 70).unwrap();
            let c = cpath(&src.join("fifo")).unwrap();
            // SAFETY: `c` is a valid path for the call.
            let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFIFO | 0o600, 0) };
            assert_eq!(rc, 0);
        }
        fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
        // An old time, set last.
        let old = fs::metadata(src.join("passwd")).unwrap();
        let c = cpath(&src.join("passwd")).unwrap();
        let t = [
            libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: 2_000_000,
                tv_nsec: 7,
            },
        ];
        // SAFETY: valid path and times.
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) };
        assert_ne!(old.mtime(), 2_000_000);

        let vol = tempfile::tempdir().unwrap();
        fs::create_dir(vol.path().join("lost+found")).unwrap();
        assert!(populate(&src, vol.path()).unwrap());
        let v = vol.path();
        // Before the read below moves it.
        assert_eq!(fs::metadata(v.join("passwd")).unwrap().atime(), 1_000_000);
        assert_eq!(
            fs::read(v.join("passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        let md = fs::metadata(v.join("passwd")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.mtime(), md.mtime_nsec()), (2_000_000, 7));
        assert_eq!(
            md.ino(),
            fs::metadata(v.join("passwd.link")).unwrap().ino(),
            "a hard link stays one"
        );
        assert_eq!(
            fs::metadata(v.join("sub/tool")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::read_link(v.join("tool")).unwrap(),
            Path::new("sub/tool")
        );
        assert_eq!(
            fs::read_link(v.join("dangling")).unwrap(),
            Path::new("/nowhere")
        );
        if xattrs {
            assert_eq!(xattr(&v.join("passwd"), "user.vessel").unwrap(), b"kept");
        }
        let vroot = fs::metadata(v).unwrap();
        assert_eq!(vroot.mode() & 0o7777, 0o750);
        if root {
            let sub = fs::metadata(v.join("sub")).unwrap();
            assert_eq!((sub.uid(), sub.gid()), (1000, 1001));
            assert_eq!((vroot.uid(), vroot.gid()), (70, 70));
            assert!(fs::symlink_metadata(v.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
        }

        // Not empty any more: a second populate leaves it alone.
        fs::write(src.join("new"), b"n").unwrap();
        assert!(!populate(&src, v).unwrap());
        assert!(!v.join("new").exists());
    }
}
