//! The container's mounts on the VM's side: what the guest is told to
//! mount ([`guest_mounts`]).

use agent_protocol::{GuestMount, GuestMountSource};
use vessel_api::mounts::MountType;
use vessel_api::types::ContainerConfig;

/// What vminitd mounts after the root, in the configuration's order.
pub fn guest_mounts(config: &ContainerConfig) -> Vec<GuestMount> {
    config
        .mounts
        .iter()
        .filter_map(|m| {
            let source = match m.kind {
                MountType::Tmpfs => GuestMountSource::Tmpfs {
                    size_bytes: m.tmpfs_size,
                    mode: m.tmpfs_mode,
                    flags: m.tmpfs_flags.clone(),
                },
                MountType::Bind | MountType::Volume => return None,
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
