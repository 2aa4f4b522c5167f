//! The container's mounts on the VM's side: the host directories served
//! to it over virtio-fs ([`shares`]) and what the guest is told to mount
//! ([`guest_mounts`]).
//!
//! A mount's virtio-fs tag is `m<index>`, its index in the
//! configuration's `mounts`: short, unique within the VM, and the same in
//! both lists.

use crate::virtiofs::{IdMapping, ShareSpec};
use agent_protocol::{GuestMount, GuestMountSource};
use std::path::{Path, PathBuf};
use vessel_api::mounts::{MountSpec, MountType};
use vessel_api::types::ContainerConfig;

/// The virtio-fs tag of mount number `index`.
pub fn fs_tag(index: usize) -> String {
    format!("m{index}")
}

/// The host directory a mount serves over virtio-fs, if it is one: a bind
/// mount's source.
pub fn shared_dir(m: &MountSpec) -> Option<PathBuf> {
    match m.kind {
        MountType::Bind => Some(PathBuf::from(&m.source)),
        MountType::Volume | MountType::Tmpfs => None,
    }
}

/// One [`ShareSpec`] per mount served over virtio-fs, its socket in
/// `run_dir`.
pub fn shares(config: &ContainerConfig, run_dir: &Path, ids: IdMapping) -> Vec<ShareSpec> {
    config
        .mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let dir = shared_dir(m)?;
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

/// What vminitd mounts after the root, in the configuration's order.
pub fn guest_mounts(config: &ContainerConfig) -> Vec<GuestMount> {
    config
        .mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let source = match m.kind {
                MountType::Tmpfs => GuestMountSource::Tmpfs {
                    size_bytes: m.tmpfs_size,
                    mode: m.tmpfs_mode,
                    flags: m.tmpfs_flags.clone(),
                },
                // Mounted read-only in the guest as well, but the host's
                // `virtiofsd --readonly` is what enforces it.
                MountType::Bind => GuestMountSource::VirtioFs { tag: fs_tag(i) },
                MountType::Volume => return None,
            };
            Some(GuestMount {
                target: m.target.clone(),
                source,
                readonly: m.readonly,
                populate: false,
            })
        })
        .collect()
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
        let shares = shares(&c, Path::new("/run/v/c1"), IdMapping::Identity);
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
        assert!(shares(&c, Path::new("/r"), IdMapping::Identity).is_empty());
        assert!(guest_mounts(&c).is_empty());
    }
}
