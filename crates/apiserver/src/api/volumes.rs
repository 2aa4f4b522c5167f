//! `/v1/volumes...`: the volume store ([`crate::volumes`]).

use super::call::Call;
use crate::error::ApiResult;
use crate::server::Server;
use std::sync::Arc;
use vessel_api::mounts::{VolumeCreate, VolumePruneResponse};

pub fn list(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let users = s.containers().volume_users();
    c.respond_json(200, &s.containers().volumes().list(&users))
}

pub fn create(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let req: VolumeCreate = c.json()?;
    let info = s.containers().volumes().create(&req)?;
    c.respond_json(201, &info)
}

pub fn inspect(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let users = s.containers().volume_users();
    let info = s.containers().volumes().get(c.param("name"), &users)?;
    c.respond_json(200, &info)
}

pub fn remove(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let force = c.flag("force")?;
    let name = c.param("name").to_string();
    let volumes = s.containers().volumes();
    // The users are read under the store's lock: a container being
    // created holds it until its configuration names the volume.
    let g = volumes.lock()?;
    let users = s.containers().volume_users();
    let usage = volumes
        .get(&name, &users)
        .map(|v| v.usage_bytes)
        .unwrap_or(0);
    let removed = volumes.remove_locked(&g, &name, force, &users)?;
    drop(g);
    c.respond_json(
        200,
        &VolumePruneResponse {
            removed: if removed { vec![name] } else { Vec::new() },
            reclaimed_bytes: if removed { usage } else { 0 },
        },
    )
}

pub fn prune(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let all = c.flag("all")?;
    let volumes = s.containers().volumes();
    let g = volumes.lock()?;
    let users = s.containers().volume_users();
    let pruned = volumes.prune_locked(&g, all, &users)?;
    drop(g);
    c.respond_json(200, &pruned)
}
