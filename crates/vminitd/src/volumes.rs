//! The container's own mounts besides its root (`-v`, `--mount`,
//! `--tmpfs`) and `--read-only`: made after the root filesystem and before
//! the root is switched to, in the order the host gives.

use crate::mounts::{self, ROOTFS};
use agent_protocol::{GuestMount, GuestMountSource};
use nix::mount::{mount, MsFlags};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Symbolic links followed while resolving one target, as the kernel's
/// limit (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Resolve `target` (absolute, clean) inside `root` as the container will
/// see it: symbolic links on the way are followed *within* `root` (an
/// absolute link starts again at `root`, `..` stops at it), and missing
/// directories are made (mode 0755, root's). Returns the real path under
/// `root` with no link left in it.
pub fn resolve_in_root(root: &Path, target: &str) -> Result<PathBuf, String> {
    let mut pending: Vec<OsString> = components(Path::new(target));
    pending.reverse();
    let mut cur: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        if name == "." || name.is_empty() {
            continue;
        }
        let here: PathBuf = cur.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let next = here.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{target}: too many levels of symbolic links"));
                }
                let link = std::fs::read_link(&next)
                    .map_err(|e| format!("reading the link {}: {e}", next.display()))?;
                if link.is_absolute() {
                    cur.clear();
                }
                let mut more = components(&link);
                more.reverse();
                pending.extend(more);
            }
            Ok(md) if md.is_dir() => cur.push(name),
            Ok(_) if pending.is_empty() => {
                return Err(format!(
                    "{target}: exists in the image and is not a directory"
                ))
            }
            Ok(_) => return Err(format!("{target}: a part of the path is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)
                    .map_err(|e| format!("making {target} in the container: {e}"))?;
                cur.push(name);
            }
            Err(e) => return Err(format!("{}: {e}", next.display())),
        }
    }
    Ok(cur.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The block device whose virtio serial number is `serial`
/// (`/sys/block/vdX/serial`), waiting a moment for it to appear.
pub fn find_block_device(serial: &str) -> Result<PathBuf, String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/block") {
            for e in dir.flatten() {
                let s = std::fs::read(e.path().join("serial")).unwrap_or_default();
                if String::from_utf8_lossy(&s).trim() == serial {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no disk with serial {serial:?} in the VM"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmpfs_data(size: Option<u64>, mode: Option<u32>) -> String {
    let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    data
}

fn tmpfs_flags(flags: &[String]) -> MsFlags {
    let mut f = MsFlags::empty();
    for flag in flags {
        match flag.as_str() {
            "noexec" => f |= MsFlags::MS_NOEXEC,
            "exec" => f &= !MsFlags::MS_NOEXEC,
            "nosuid" => f |= MsFlags::MS_NOSUID,
            "suid" => f &= !MsFlags::MS_NOSUID,
            "nodev" => f |= MsFlags::MS_NODEV,
            "dev" => f &= !MsFlags::MS_NODEV,
            _ => {}
        }
    }
    f
}

/// Docker's copy-in: mount the volume (`source` of type `fstype`: a disk,
/// or a shared volume's virtio-fs tag) aside, and if it is empty, copy
/// into it what the image has at `at` (and its owner and mode); then
/// unmount it, to be mounted at `at`.
fn copy_in(source: &Path, fstype: &str, name: &str, at: &Path) -> Result<(), String> {
    let aside = Path::new("/run/vessel-volumes").join(name);
    std::fs::create_dir_all(&aside).map_err(|e| format!("making {}: {e}", aside.display()))?;
    mount(
        Some(source),
        &aside,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting {}: {}", source.display(), e.desc()))?;
    let copied = crate::populate::populate(at, &aside);
    let unmounted = nix::mount::umount(&aside);
    let _ = std::fs::remove_dir(&aside);
    let copied = copied?;
    unmounted.map_err(|e| format!("unmounting {}: {}", aside.display(), e.desc()))?;
    if copied {
        crate::log_line(&format!(
            "copy-in: the image's content filled the new volume at {}",
            at.display()
        ));
    }
    Ok(())
}

/// Mount `m` at `at` (a resolved directory in the container's root).
fn mount_one(m: &GuestMount, at: &Path) -> Result<(), String> {
    let ro = if m.readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let fail =
        |what: &str, e: nix::errno::Errno| format!("mounting {what} on {}: {}", m.target, e.desc());
    match &m.source {
        GuestMountSource::Tmpfs {
            size_bytes,
            mode,
            flags,
        } => {
            let data = tmpfs_data(*size_bytes, *mode);
            mount(
                Some("tmpfs"),
                at,
                Some("tmpfs"),
                tmpfs_flags(flags) | ro,
                Some(data.as_str()),
            )
            .map_err(|e| fail("a tmpfs", e))
        }
        GuestMountSource::VirtioFs { tag } => {
            // A shared volume asks for the copy-in; a bind mount never does.
            if m.populate && !m.readonly {
                copy_in(Path::new(tag), "virtiofs", tag, at).map_err(|e| {
                    format!("copying the image's {} into its new volume: {e}", m.target)
                })?;
            }
            mount(Some(tag.as_str()), at, Some("virtiofs"), ro, None::<&str>)
                .map_err(|e| fail(&format!("the shared directory {tag:?}"), e))
        }
        GuestMountSource::Block { serial, fstype } => {
            let dev = find_block_device(serial)?;
            let fstype = if fstype.is_empty() { "ext4" } else { fstype };
            if m.populate && !m.readonly {
                copy_in(&dev, fstype, serial, at).map_err(|e| {
                    format!("copying the image's {} into its new volume: {e}", m.target)
                })?;
            }
            // Online discard: what the container deletes is given back to
            // the host (the image is sparse; QEMU punches the holes).
            let data = (fstype == "ext4" && !m.readonly).then_some("discard");
            mount(Some(&dev), at, Some(fstype), ro, data)
                .map_err(|e| fail(&format!("the volume disk {}", dev.display()), e))
        }
    }
}

/// The volume disks mounted, relative to the container's root.
static VOLUMES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Write what the container wrote to its root and its volumes out to their
/// disks (`syncfs` of each): called when its main process has ended, before
/// the host hears of it. The host may end the VM at once then (`run --rm`,
/// `rm`, a power-off that outlasts its grace on a loaded host): a volume
/// outlives the container, and a stopped container keeps its writable
/// layer; neither may lose what the process wrote.
pub fn sync_disks() {
    let mut list = match VOLUMES.lock() {
        Ok(l) => l.clone(),
        Err(_) => Vec::new(),
    };
    list.insert(0, PathBuf::new());
    for rel in list {
        let p = mounts::root().join(&rel);
        match std::fs::File::open(&p) {
            Ok(f) => {
                use std::os::unix::io::AsRawFd;
                // SAFETY: the descriptor is open for the call.
                if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                    crate::log_line(&format!(
                        "syncing the disk at /{}: {}",
                        rel.display(),
                        std::io::Error::last_os_error()
                    ));
                }
            }
            Err(e) => crate::log_line(&format!("syncing the disk at /{}: {e}", rel.display())),
        }
    }
}

/// Make the container's mounts under [`ROOTFS`], then, with `read_only`,
/// remount the root read-only (the mounts keep their own mode). Called
/// after the root and the API filesystems are mounted and the network's
/// files written, before [`mounts::switch_root`].
pub fn mount_all(list: &[GuestMount], read_only: bool) -> Result<(), String> {
    let root = Path::new(ROOTFS);
    for m in list {
        if !m.target.starts_with('/') || m.target.trim_matches('/').is_empty() {
            return Err(format!("invalid mount target {:?}", m.target));
        }
        let at = resolve_in_root(root, &m.target)?;
        if at == root {
            return Err(format!("{}: resolves to the container's root", m.target));
        }
        mount_one(m, &at)?;
        mounts::record(&at);
        if matches!(m.source, GuestMountSource::Block { .. }) && !m.readonly {
            if let (Ok(rel), Ok(mut v)) = (at.strip_prefix(root), VOLUMES.lock()) {
                v.push(rel.to_path_buf());
            }
        }
    }
    if read_only {
        // A bind mount of the root onto itself gives it its own mount
        // flags without touching the superblock (the mounts inside keep
        // theirs); MS_REC is not wanted, so they stay writable.
        mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("making the root filesystem read-only: {}", e.desc()))?;
    }
    Ok(())
}

/// Is `p` (a bytes path) inside `root`? For tests and checks.
#[allow(dead_code)]
fn inside(root: &Path, p: &Path) -> bool {
    p.as_os_str()
        .as_bytes()
        .starts_with(root.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_links_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        symlink("/var/lib", root.join("data")).unwrap();
        symlink("../../../../etc", root.join("var/esc")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();

        let p = resolve_in_root(root, "/data/db").unwrap();
        assert_eq!(p, root.join("var/lib/db"));
        assert!(p.is_dir());
        // `..` stops at the root: the link lands in <root>/etc.
        let p = resolve_in_root(root, "/var/esc/x").unwrap();
        assert_eq!(p, root.join("etc/x"));
        assert!(inside(root, &p));
        assert!(resolve_in_root(root, "/loop/x")
            .unwrap_err()
            .contains("symbolic links"));
        assert!(resolve_in_root(root, "/file")
            .unwrap_err()
            .contains("not a directory"));
        assert!(resolve_in_root(root, "/file/x").is_err());
        let p = resolve_in_root(root, "/new/deep/dir").unwrap();
        assert!(p.is_dir());
    }

    #[test]
    fn tmpfs_options() {
        assert_eq!(tmpfs_data(None, None), "mode=1777");
        assert_eq!(
            tmpfs_data(Some(1 << 20), Some(0o700)),
            "mode=700,size=1048576"
        );
        let f = tmpfs_flags(&["noexec".into(), "nosuid".into(), "exec".into()]);
        assert_eq!(f, MsFlags::MS_NOSUID);
    }
}
