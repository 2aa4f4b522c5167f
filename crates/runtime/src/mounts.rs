//! The container's mounts on the VM's side: the host directories served
//! to it over virtio-fs ([`shares`]), the volume disks the VM gets
//! ([`volume_disks`], each locked for this VM alone: [`VolumeLocks`]) and
//! what the guest is told to mount ([`guest_mounts`]).
//!
//! A mount's virtio-fs tag is `m<index>`, its index in the
//! configuration's `mounts`: short, unique within the VM, and the same in
//! both lists.

use crate::virtiofs::{IdMapping, ShareSpec};
use agent_protocol::{GuestMount, GuestMountSource};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vessel_api::mounts::{MountSpec, MountType};
use vessel_api::paths::Home;
use vessel_api::types::ContainerConfig;

/// The virtio-fs tag of mount number `index`.
pub fn fs_tag(index: usize) -> String {
    format!("m{index}")
}

/// The name of a shared volume's directory in its volume directory (the
/// apiserver's volume store makes it).
pub const VOLUME_DATA: &str = "data";

/// The host directory a mount serves over virtio-fs, if it is one: a bind
/// mount's source, a shared volume's data directory.
pub fn shared_dir(home: &Home, m: &MountSpec) -> Option<PathBuf> {
    match m.kind {
        MountType::Bind => Some(PathBuf::from(&m.source)),
        MountType::Volume if m.shared => Some(home.volume_dir(&m.source).join(VOLUME_DATA)),
        MountType::Volume | MountType::Tmpfs => None,
    }
}

/// One [`ShareSpec`] per mount served over virtio-fs, its socket in
/// `run_dir`.
pub fn shares(
    home: &Home,
    config: &ContainerConfig,
    run_dir: &Path,
    ids: IdMapping,
) -> Vec<ShareSpec> {
    config
        .mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let dir = shared_dir(home, m)?;
            let tag = fs_tag(i);
            Some(ShareSpec {
                socket: run_dir.join(format!("fs-{tag}.sock")),
                tag,
                dir,
                readonly: m.readonly,
                ids,
            })
        })
        .collect()
}

/// The name of a block volume's ext4 image in its directory (the
/// apiserver's volume store makes it).
pub const VOLUME_DISK: &str = "disk.img";

/// The virtio serial number of the `n`th volume disk of a VM (at most 20
/// bytes, the virtio-blk limit); vminitd finds the disk by it.
pub fn volume_serial(n: usize) -> String {
    format!("vessel-vol{n}")
}

/// A block volume attached to the VM as a virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// The volume's name.
    pub name: String,
    /// Its ext4 image.
    pub path: PathBuf,
    pub serial: String,
    pub readonly: bool,
}

/// The container's block volumes, in the configuration's order.
pub fn volume_disks(home: &Home, config: &ContainerConfig) -> Vec<VolumeDisk> {
    config
        .mounts
        .iter()
        .filter(|m| m.kind == MountType::Volume && !m.shared)
        .enumerate()
        .map(|(n, m)| VolumeDisk {
            name: m.source.clone(),
            path: home.volume_dir(&m.source).join(VOLUME_DISK),
            serial: volume_serial(n),
            readonly: m.readonly,
        })
        .collect()
}

/// What vminitd mounts after the root, in the configuration's order.
pub fn guest_mounts(config: &ContainerConfig) -> Vec<GuestMount> {
    let mut volumes = 0;
    config
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut populate = false;
            let source = match m.kind {
                MountType::Tmpfs => GuestMountSource::Tmpfs {
                    size_bytes: m.tmpfs_size,
                    mode: m.tmpfs_mode,
                    flags: m.tmpfs_flags.clone(),
                },
                // Mounted read-only in the guest as well, but the host's
                // `virtiofsd --readonly` is what enforces it.
                MountType::Bind => GuestMountSource::VirtioFs { tag: fs_tag(i) },
                MountType::Volume if m.shared => {
                    populate = !m.no_copy && !m.readonly;
                    GuestMountSource::VirtioFs { tag: fs_tag(i) }
                }
                MountType::Volume => {
                    let serial = volume_serial(volumes);
                    volumes += 1;
                    // Docker's copy-in of the image's content into an
                    // empty volume (not with `nocopy`; a read-only disk
                    // cannot take it).
                    populate = !m.no_copy && !m.readonly;
                    GuestMountSource::Block {
                        serial,
                        fstype: "ext4".into(),
                    }
                }
            };
            GuestMount {
                target: m.target.clone(),
                source,
                readonly: m.readonly,
                populate,
            }
        })
        .collect()
}

/// Why a volume disk cannot be given to this VM.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("The volume {0} has no disk image at {}; it is gone or not a block volume: remove the container and create it again", .1.display())]
    Missing(String, PathBuf),
    #[error("Could not open the disk of volume {0} ({})", .1.display())]
    Open(String, PathBuf, #[source] std::io::Error),
    #[error("Volume {0} is mounted by another running container: a block volume is a disk of one VM at a time; stop that container first, or keep the data in a shared volume (`vessel volume create --opt backing=shared NAME`)")]
    InUse(String),
}

/// Exclusive locks (`flock`) on the container's volume disks, held for the
/// runtime helper's life: a second VM on one block volume would corrupt
/// its filesystem. The apiserver refuses that with a clearer message first;
/// this is the guarantee. (QEMU's own image locks use OFD locks, which do
/// not meet `flock`'s.)
#[derive(Debug, Default)]
pub struct VolumeLocks {
    _held: Vec<File>,
}

impl VolumeLocks {
    /// Lock every disk, waiting up to `wait` for one that is held. The
    /// apiserver starts a container only when no other running container
    /// has its block volumes, so a lock held now is most likely that of a
    /// container that has just ended and whose VM is still powering off
    /// (its exit is told first): a `run` right after another on the same
    /// volume must wait for it, not fail.
    pub fn take(disks: &[VolumeDisk], wait: Duration) -> Result<Self, VolumeError> {
        let deadline = Instant::now() + wait;
        let mut held = Vec::new();
        for d in disks {
            if !d.path.is_file() {
                return Err(VolumeError::Missing(d.name.clone(), d.path.clone()));
            }
            let f = File::open(&d.path)
                .map_err(|e| VolumeError::Open(d.name.clone(), d.path.clone(), e))?;
            let mut told = false;
            loop {
                match vessel_api::fsutil::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                        if Instant::now() >= deadline {
                            return Err(VolumeError::InUse(d.name.clone()));
                        }
                        if !told {
                            told = true;
                            crate::log(&format!(
                                "the disk of volume {} is still held by another VM (one that is ending?); waiting up to {wait:?}",
                                d.name
                            ));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(VolumeError::Open(d.name.clone(), d.path.clone(), e)),
                }
            }
            held.push(f);
        }
        Ok(Self { _held: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::mounts::{parse_mount_flag, parse_tmpfs_flag, parse_volume_flag};

    fn config(mounts: Vec<MountSpec>) -> ContainerConfig {
        let mut c: ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": "c1", "name": "n", "image": "i", "image_id": "sha256:x",
            "created_ms": 0, "process": {"args": ["true"], "env": [], "cwd": "/", "user": "0:0"},
            "hostname": "h", "cpus": 1, "memory_mib": 256, "auto_remove": false,
            "rootfs_base": "/r", "kernel": "/k", "initrd": "/i", "accel": "tcg",
            "network": "none"
        }))
        .unwrap();
        c.mounts = mounts;
        c
    }

    #[test]
    fn bind_mounts_are_virtiofs_with_matching_tags() {
        let cwd = Path::new("/");
        let c = config(vec![
            parse_tmpfs_flag("/tmp").unwrap(),
            parse_volume_flag("/srv/a:/a:ro", cwd).unwrap(),
            parse_mount_flag("type=bind,source=/srv/b,target=/b").unwrap(),
        ]);
        let shares = shares(
            &Home::new("/h"),
            &c,
            Path::new("/run/v/c1"),
            IdMapping::Identity,
        );
        assert_eq!(shares.len(), 2);
        assert_eq!(
            (
                shares[0].tag.as_str(),
                shares[0].dir.as_path(),
                shares[0].readonly
            ),
            ("m1", Path::new("/srv/a"), true)
        );
        assert_eq!(shares[0].socket, Path::new("/run/v/c1/fs-m1.sock"));
        assert_eq!((shares[1].tag.as_str(), shares[1].readonly), ("m2", false));

        let g = guest_mounts(&c);
        assert_eq!(g.len(), 3);
        assert!(matches!(g[0].source, GuestMountSource::Tmpfs { .. }));
        assert_eq!(g[1].source, GuestMountSource::VirtioFs { tag: "m1".into() });
        assert!(g[1].readonly && g[1].target == "/a");
        assert_eq!(g[2].source, GuestMountSource::VirtioFs { tag: "m2".into() });
        assert!(!g[2].readonly);
    }

    #[test]
    fn no_mounts_no_shares() {
        let c = config(vec![]);
        assert!(shares(&Home::new("/h"), &c, Path::new("/r"), IdMapping::Identity).is_empty());
        assert!(guest_mounts(&c).is_empty());
    }

    #[test]
    fn volumes_become_disks_found_by_serial() {
        let mut ro = MountSpec::volume("b", "/ro");
        ro.readonly = true;
        let mut nocopy = MountSpec::volume("c", "/nc");
        nocopy.no_copy = true;
        let c = config(vec![
            MountSpec::volume("a", "/data"),
            MountSpec::tmpfs("/tmp"),
            ro,
            nocopy,
        ]);
        let home = Home::new("/h");
        let disks = volume_disks(&home, &c);
        assert_eq!(disks.len(), 3);
        assert_eq!(disks[0].path, PathBuf::from("/h/volumes/a/disk.img"));
        assert_eq!(
            (disks[1].serial.as_str(), disks[1].readonly),
            ("vessel-vol1", true)
        );
        assert!(disks.iter().all(|d| d.serial.len() <= 20));
        let g = guest_mounts(&c);
        assert_eq!(g.len(), 4);
        let serials: Vec<(String, bool)> = g
            .iter()
            .filter_map(|m| match &m.source {
                GuestMountSource::Block { serial, fstype } => {
                    assert_eq!(fstype, "ext4");
                    Some((serial.clone(), m.populate))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            serials,
            [
                ("vessel-vol0".to_string(), true),
                ("vessel-vol1".to_string(), false),
                ("vessel-vol2".to_string(), false)
            ]
        );
    }

    #[test]
    fn a_volume_disk_is_locked_for_one_vm() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("disk.img");
        std::fs::write(&path, b"").unwrap();
        let disk = VolumeDisk {
            name: "v".into(),
            path: path.clone(),
            serial: volume_serial(0),
            readonly: false,
        };
        let no_wait = Duration::ZERO;
        let held = VolumeLocks::take(std::slice::from_ref(&disk), no_wait).unwrap();
        let e = VolumeLocks::take(std::slice::from_ref(&disk), no_wait).unwrap_err();
        assert!(e.to_string().contains("backing=shared"), "{e}");
        let t = Instant::now();
        let e =
            VolumeLocks::take(std::slice::from_ref(&disk), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, VolumeError::InUse(_)), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        drop(held);
        VolumeLocks::take(std::slice::from_ref(&disk), no_wait).unwrap();
        let gone = VolumeDisk {
            path: d.path().join("nope"),
            ..disk
        };
        assert!(matches!(
            VolumeLocks::take(&[gone], no_wait),
            Err(VolumeError::Missing(..))
        ));
    }

    #[test]
    fn a_start_waits_for_the_vm_of_a_container_that_just_ended() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("disk.img");
        std::fs::write(&path, b"").unwrap();
        let disk = VolumeDisk {
            name: "v".into(),
            path,
            serial: volume_serial(0),
            readonly: false,
        };
        // The ending VM's runtime lets go after 300 ms.
        let ending = VolumeLocks::take(std::slice::from_ref(&disk), Duration::ZERO).unwrap();
        let let_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(ending);
        });
        let t = Instant::now();
        VolumeLocks::take(std::slice::from_ref(&disk), Duration::from_secs(10)).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        let_go.join().unwrap();
    }

    #[test]
    fn shared_volumes_are_virtiofs_of_their_data_directory_and_not_disks() {
        let mut sv = MountSpec::volume("team", "/srv");
        sv.shared = true;
        let c = config(vec![MountSpec::volume("blk", "/b"), sv]);
        let home = Home::new("/h");
        let disks = volume_disks(&home, &c);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "blk");
        let s = shares(&home, &c, Path::new("/run/v/c1"), IdMapping::Identity);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].dir, PathBuf::from("/h/volumes/team/data"));
        assert_eq!(s[0].tag, "m1");
        let g = guest_mounts(&c);
        assert_eq!(
            g[0].source,
            GuestMountSource::Block {
                serial: "vessel-vol0".into(),
                fstype: "ext4".into()
            }
        );
        assert_eq!(g[1].source, GuestMountSource::VirtioFs { tag: "m1".into() });
        assert!(g[1].populate, "an empty shared volume gets the copy-in too");
    }
}
