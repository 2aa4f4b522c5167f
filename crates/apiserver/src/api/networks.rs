//! `/v1/networks...`: proxied to vessel-network.

use super::call::Call;
use crate::error::ApiResult;
use crate::server::{relay_json, Server};
use std::sync::Arc;
use vessel_api::http::percent_encode;
use vessel_api::network::NetworkCreateRequest;

pub fn list(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    if s.rootless() {
        // No networks to list; the other routes answer why.
        return c.respond_json(200, &serde_json::json!([]));
    }
    let resp = s.network_send("GET", "/networks", None)?;
    relay_json(c, resp)
}

pub fn create(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let create: NetworkCreateRequest = c.json()?;
    let body = serde_json::to_vec(&create).map_err(|e| anyhow::anyhow!(e))?;
    let resp = s.network_send("POST", "/networks", Some(&body))?;
    relay_json(c, resp)
}

pub fn prune(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let resp = s.network_send("POST", "/networks/prune", None)?;
    relay_json(c, resp)
}

fn path(c: &Call) -> ApiResult<String> {
    Ok(format!("/networks/{}", percent_encode(c.param("name"))))
}

pub fn inspect(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let resp = s.network_send("GET", &path(c)?, None)?;
    relay_json(c, resp)
}

pub fn remove(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let resp = s.network_send("DELETE", &path(c)?, None)?;
    relay_json(c, resp)
}
