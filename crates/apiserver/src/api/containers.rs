//! `/v1/containers...`.

use super::call::Call;
use super::splice::splice;
use crate::error::{ApiError, ApiResult};
use crate::server::Server;
use std::sync::Arc;
use vessel_api::control::{AttachRequest, ControlRequest};
use vessel_api::error::ErrorKind;
use vessel_api::types::{parse_signal, ContainerSummary, CreateRequest, CreateResponse};

pub fn list(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let all = c.flag("all")?;
    let list: Vec<ContainerSummary> = s
        .containers()
        .list()
        .iter()
        .filter(|i| all || i.state.status.is_active())
        .map(ContainerSummary::from_info)
        .collect();
    c.respond_json(200, &list)
}

pub fn create(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let create: CreateRequest = c.json()?;
    // `image_not_found` from create is always about this image, named as
    // the request gave it: the CLI pulls on that alone.
    let image = s
        .resolve_image(&create.image)
        .map_err(|e| e.naming(ErrorKind::ImageNotFound, &create.image))?;
    let config = s.containers().create(&create, &image, s.accel())?;
    c.respond_json(
        201,
        &CreateResponse {
            id: config.id,
            name: config.name,
        },
    )
}

pub fn inspect(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let info = s.containers().find(c.param("id"))?;
    c.respond_json(200, &info)
}

pub fn remove(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let force = c.flag("force")?;
    let info = s.containers().remove(c.param("id"), force)?;
    c.respond_json(200, &ContainerSummary::from_info(&info))
}

pub fn start(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let attach = c.flag("attach")?;
    let containers = s.containers();
    let id = containers.find(c.param("id"))?.config.id;
    if attach {
        // Held until the stream ends: a `--rm` container stays until then.
        let guard = containers.attach(&id);
        containers.start(&id)?;
        let mut out = c.respond_stream(200, "application/x-ndjson")?;
        // As Docker's `run --rm`: a `--rm` container is gone when its exit
        // is told (unless another client still follows it).
        let mut guard = Some(guard);
        crate::logs::stream(containers, &id, &mut out, true, |info| {
            drop(guard.take());
            containers.reap_auto_remove_now(info);
        })?;
    } else {
        let info = containers.start(&id)?;
        c.respond_json(200, &info)?;
    }
    Ok(())
}

pub fn logs(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let follow = c.flag("follow")?;
    let containers = s.containers();
    let info = containers.find(c.param("id"))?;
    let id = info.config.id;
    let _guard = containers.attach(&id);
    // Only a running container is followed (Docker's rule): one that was
    // never started, or has ended, has no more to say.
    let follow = follow && info.state.status.is_active();
    let mut out = c.respond_stream(200, "application/x-ndjson")?;
    crate::logs::stream(containers, &id, &mut out, follow, |_| {})?;
    Ok(())
}

pub fn stop(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let t = match c.query("t") {
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|t| *t <= 24 * 3600)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid timeout {t:?}: give whole seconds, at most 86400"
                ))
            })?,
        None => 10,
    };
    let info = s.containers().stop(c.param("id"), t)?;
    c.respond_json(200, &info)
}

pub fn kill(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let sig = parse_signal(c.query("signal").unwrap_or("KILL")).map_err(ApiError::invalid)?;
    let info = s.containers().kill(c.param("id"), sig)?;
    c.respond_json(200, &info)
}

pub fn wait(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let gone = c.gone().clone();
    match s.containers().wait(c.param("id"), &gone)? {
        Some(w) => c.respond_json(200, &w),
        // The client has gone: nobody to answer.
        None => Ok(()),
    }
}

/// `POST /v1/containers/{id}/attach`: upgrade the connection, then carry
/// the runtime helper's attach stream over it.
pub fn attach(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let req = AttachRequest {
        stdin: c.flag("stdin")?,
        stdout: c.flag_or("stdout", true)?,
        stderr: c.flag_or("stderr", true)?,
        logs: c.flag("logs")?,
    };
    proxy_stream(s, c, ControlRequest::Attach(req), "attach")
}

/// A streaming route: check the upgrade request, send `request` to the
/// container's runtime helper, and on its `{"ok":true}` switch protocols
/// and splice the client's connection with the runtime's until either
/// side goes. A refusal (container not running, an op the runtime does
/// not know) is an ordinary error answer, before any upgrade.
fn proxy_stream(
    s: &Arc<Server>,
    c: &mut Call,
    request: ControlRequest,
    what: &str,
) -> ApiResult<()> {
    if !c.wants_upgrade("tcp") {
        return Err(ApiError::invalid(format!(
            "{what} needs an upgraded connection: send `Connection: Upgrade` and `Upgrade: tcp`"
        )));
    }
    let containers = s.containers();
    let (info, runtime, runtime_first) = containers
        .control_stream(c.param("id"), &request)
        .map_err(|e| match e {
            ApiError::Answer(mut b) if b.message.starts_with("Invalid control request") => {
                b.message = format!(
                    "the runtime helper of this container does not support {what} (it answered: {}); containers started by an older vessel-runtime cannot do this",
                    b.message
                );
                ApiError::Answer(b)
            }
            e => e,
        })?;
    let _guard = containers.attach(&info.config.id);
    let client = c.upgrade("tcp")?;
    let carried = splice(client.stream, &client.pending, runtime, &runtime_first)?;
    eprintln!(
        "vessel-apiserver: {what} {}: ended ({} bytes in, {} out)",
        &info.config.id[..12.min(info.config.id.len())],
        carried.a_to_b,
        carried.b_to_a
    );
    Ok(())
}
