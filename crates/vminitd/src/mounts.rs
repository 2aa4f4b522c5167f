//! Guest mounts: the initramfs basics and the container's root filesystem.

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the container's root filesystem is mounted (before
/// [`switch_root`]).
pub const ROOTFS: &str = "/run/rootfs";

/// Set once vminitd lives in the container's root ([`switch_root`]).
static SWITCHED: AtomicBool = AtomicBool::new(false);

/// Container mounts relative to the container's root, in mount order
/// (unmounted in reverse at power-off); `""` is the root itself.
static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn record(p: &Path) {
    let rel = p.strip_prefix(ROOTFS).unwrap_or(p).to_path_buf();
    if let Ok(mut m) = MOUNTED.lock() {
        m.push(rel);
    }
}

/// The container's root as vminitd sees it now: [`ROOTFS`], or `/` after
/// [`switch_root`].
pub fn root() -> &'static Path {
    if SWITCHED.load(Ordering::SeqCst) {
        Path::new("/")
    } else {
        Path::new(ROOTFS)
    }
}

/// Make the container's root filesystem the root of the VM: move it over
/// the initramfs (`mount --move`) and change root into it, as
/// `switch_root` does. vminitd (and every process it starts) then lives in
/// the container's root. A plain `chroot` into a directory would leave
/// every container process "chrooted", and the kernel refuses
/// `unshare(CLONE_NEWUSER)` to a chrooted process: no user namespaces for
/// rootless Podman, bubblewrap or Chromium's sandbox. (`pivot_root` is not
/// an option: the initramfs is the namespace's root mount and cannot be
/// pivoted away.)
pub fn switch_root() -> Result<(), String> {
    if SWITCHED.load(Ordering::SeqCst) {
        return Ok(());
    }
    std::env::set_current_dir(ROOTFS).map_err(|e| format!("chdir {ROOTFS}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the container's root onto /: {}", e.desc()))?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot into the container's root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    SWITCHED.store(true, Ordering::SeqCst);
    Ok(())
}

fn do_mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    if let Err(e) = std::fs::create_dir_all(target) {
        return Err(format!("mkdir {}: {e}", target.display()));
    }
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {}: {}", target.display(), e.desc()))
}

/// Mount devtmpfs, proc and sysfs for vminitd itself (as PID 1).
pub fn mount_base() -> Vec<String> {
    let mut errors = Vec::new();
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let list: [(&str, &str, &str, MsFlags); 3] = [
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID),
        ("proc", "/proc", "proc", nse | MsFlags::MS_NODEV),
        ("sysfs", "/sys", "sysfs", nse | MsFlags::MS_NODEV),
    ];
    for (src, target, fstype, flags) in list {
        let _ = std::fs::create_dir_all(target);
        match mount(Some(src), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => errors.push(format!("mount {target}: {}", e.desc())),
        }
    }
    errors
}

/// Mount the root device at [`ROOTFS`], and nothing in it: what a
/// maintenance boot (copies of a stopped container) needs. Refused once a
/// root is mounted (a second `Start` or `MountRoot`).
pub fn mount_root(device: &str, fstype: &str) -> Result<(), String> {
    let root = Path::new(ROOTFS);
    let fstype = if fstype.is_empty() { "ext4" } else { fstype };
    if device.is_empty() {
        return Err("no root device given".into());
    }
    let mut mounted = MOUNTED.lock().map_err(|_| "mount table lock poisoned")?;
    if !mounted.is_empty() {
        return Err("the root filesystem is already mounted".into());
    }
    // The block device node may show up a moment after boot. A virtio-fs
    // root (a containerd bundle's rootfs) is named by its tag: no node.
    let deadline = Instant::now() + Duration::from_secs(2);
    while fstype != "virtiofs" && !Path::new(device).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    do_mount(device, root, fstype, MsFlags::empty(), None)
        .map_err(|e| format!("cannot mount root filesystem {device}: {e}"))?;
    mounted.push(PathBuf::new());
    Ok(())
}

/// Mount the root device at [`ROOTFS`] and the API filesystems inside it.
/// Errors on the root mount are fatal (returned); others are returned as
/// warnings in the `Ok` value.
pub fn mount_rootfs(device: &str, fstype: &str) -> Result<Vec<String>, String> {
    let root = Path::new(ROOTFS);
    mount_root(device, fstype)?;

    let mut warnings = Vec::new();
    let nosuid = MsFlags::MS_NOSUID;
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    // No tmpfs on /tmp: Docker keeps the image's /tmp (its files, extended
    // attributes, and the root filesystem's size).
    let list: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "proc", "proc", nse, None),
        ("sysfs", "sys", "sysfs", nse, None),
        ("devtmpfs", "dev", "devtmpfs", nosuid, None),
        (
            "devpts",
            "dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            "shm",
            "dev/shm",
            "tmpfs",
            nosuid | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "sys/fs/cgroup", "cgroup2", nse, None),
        ("mqueue", "dev/mqueue", "mqueue", nse, None),
    ];
    for (src, rel, fstype, flags, data) in list {
        let target = root.join(rel);
        match do_mount(src, &target, fstype, flags, data) {
            Ok(()) => record(&target),
            Err(e) => warnings.push(e),
        }
    }

    let dev = root.join("dev");
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let p = dev.join(name);
        let _ = std::fs::remove_file(&p);
        if let Err(e) = std::os::unix::fs::symlink(target, &p) {
            warnings.push(format!("symlink {}: {e}", p.display()));
        }
    }
    Ok(warnings)
}

/// Unmount the container mounts, innermost first. Errors are ignored; a busy
/// mount is detached. The root, once vminitd lives in it, is made
/// read-only instead (which writes everything out).
pub fn unmount_all() {
    let list = match MOUNTED.lock() {
        Ok(mut m) => std::mem::take(&mut *m),
        Err(_) => return,
    };
    let root = root();
    for rel in list.iter().rev() {
        let p = root.join(rel);
        if rel.as_os_str().is_empty() && SWITCHED.load(Ordering::SeqCst) {
            let _ = mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            continue;
        }
        if umount2(&p, MntFlags::empty()).is_err() {
            if rel.as_os_str().is_empty() {
                // A busy root (before a switch: a maintenance boot) is
                // made read-only first, which writes everything out, so
                // the disk is consistent even if the detach leaves it.
                let _ = mount(
                    None::<&str>,
                    &p,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
            }
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }
}
