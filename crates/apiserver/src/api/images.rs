//! `/v1/images...` and `/v1/registry/login`: the image helper's routes,
//! with the apiserver's own policy (an image a container uses is kept).

use super::call::Call;
use crate::error::{ApiError, ApiResult};
use crate::server::{registry_body, relay, relay_json, Server};
use std::sync::Arc;
use vessel_api::error::ErrorKind;
use vessel_api::http::percent_encode;
use vessel_api::types::{ImageSummary, LoadResponse};

/// `tls_verify` checked here (a boolean, default true), so the helper
/// gets only `true` or `false`.
fn check_tls_verify(c: &Call) -> ApiResult<()> {
    c.flag_or("tls_verify", true).map(drop)
}

pub fn list(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let list: Vec<ImageSummary> = s.images_call("GET", "/images")?;
    c.respond_json(200, &list)
}

pub fn load(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let upload = s.receive_upload(c)?;
    let path = percent_encode(&upload.path.to_string_lossy());
    let res: LoadResponse = s.images_call("POST", &format!("/images/load?path={path}"))?;
    c.respond_json(200, &res)
}

pub fn import(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let reference = c.required("ref")?.to_string();
    let upload = s.receive_upload(c)?;
    let path = percent_encode(&upload.path.to_string_lossy());
    let res: LoadResponse = s.images_call(
        "POST",
        &format!(
            "/images/import?path={path}&ref={}",
            percent_encode(&reference)
        ),
    )?;
    c.respond_json(200, &res)
}

pub fn pull(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    check_tls_verify(c)?;
    let q = s.forward_query(c, &["ref", "platform", "tls_verify"], &["ref"])?;
    let body = registry_body(c)?;
    let resp = s.images_send("POST", &format!("/images/pull?{q}"), Some(&body))?;
    relay(c, resp, "application/x-ndjson")
}

pub fn push(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    check_tls_verify(c)?;
    let q = s.forward_query(c, &["ref", "tls_verify"], &["ref"])?;
    let body = registry_body(c)?;
    let resp = s.images_send("POST", &format!("/images/push?{q}"), Some(&body))?;
    relay(c, resp, "application/x-ndjson")
}

pub fn login(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    check_tls_verify(c)?;
    let q = s.forward_query(c, &["server", "tls_verify"], &["server"])?;
    let body = registry_body(c)?;
    let resp = s.images_send("POST", &format!("/registry/login?{q}"), Some(&body))?;
    relay_json(c, resp)
}

pub fn inspect(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let q = s.forward_query(c, &["ref"], &["ref"])?;
    let resp = s.images_send("GET", &format!("/images/inspect?{q}"), None)?;
    relay_json(c, resp)
}

pub fn tag(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let q = s.forward_query(c, &["source", "target"], &["source", "target"])?;
    let resp = s.images_send("POST", &format!("/images/tag?{q}"), None)?;
    relay_json(c, resp)
}

pub fn prune(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let all = c.flag("all")?;
    let body = s.keep_body()?;
    let resp = s.images_send("POST", &format!("/images/prune?all={all}"), Some(&body))?;
    relay_json(c, resp)
}

pub fn save(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let q = s.forward_query(c, &["refs"], &["refs"])?;
    let resp = s.images_send("GET", &format!("/images/save?{q}"), None)?;
    relay(c, resp, "application/x-tar")
}

pub fn remove(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let reference = c.required("ref")?.to_string();
    if !c.flag("force")? {
        let image = s.resolve_image_id(&reference)?;
        if let Some(ctr) = s
            .containers()
            .list()
            .iter()
            .find(|i| i.config.image_id == image)
        {
            return Err(ApiError::new(ErrorKind::InUse, format!(
                "image {reference} is used by container {} ({}); remove the container first or use `vessel image rm -f`",
                ctr.config.name,
                &ctr.config.id[..12.min(ctr.config.id.len())]
            )));
        }
    }
    // The helper keeps whatever a container still needs, even with force.
    let body = s.keep_body()?;
    let resp = s.images_send(
        "DELETE",
        &format!("/images?ref={}", percent_encode(&reference)),
        Some(&body),
    )?;
    relay_json(c, resp)
}
