//! `/v1/containers...`.

use super::call::Call;
use super::splice::splice;
use crate::error::{ApiError, ApiResult};
use crate::logs::Selection;
use crate::server::Server;
use agent_protocol::GuestMessage;
use std::io::Write;
use std::sync::Arc;
use vessel_api::control::{AttachRequest, ControlRequest};
use vessel_api::error::ErrorKind;
use vessel_api::types::{
    parse_signal, ContainerSummary, CreateRequest, CreateResponse, ExecCreate,
};

pub fn list(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let all = c.flag("all")?;
    let list: Vec<ContainerSummary> = s
        .containers()
        .list()
        .iter()
        .filter(|i| all || i.state.status.is_active() || i.state.restarting)
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
    let volumes = c.flag("volumes")?;
    let info = s.containers().remove(c.param("id"), force, volumes)?;
    c.respond_json(200, &ContainerSummary::from_info(&info))
}

pub fn start(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let attach = c.flag("attach")?;
    if attach && c.wants_upgrade("tcp") {
        return start_and_attach(s, c);
    }
    let containers = s.containers();
    let id = containers.find(c.param("id"))?.config.id;
    if attach {
        // Held until the stream ends: a `--rm` container stays until then.
        let guard = containers.attach(&id);
        // This boot's output only: an earlier run's is in the same log.
        let boot_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        containers.start(&id)?;
        let mut out = c.respond_stream(200, "application/x-ndjson")?;
        // As Docker's `run --rm`: a `--rm` container is gone when its exit
        // is told (unless another client still follows it).
        let mut guard = Some(guard);
        let sel = Selection {
            follow: true,
            since_ms: Some(boot_ms),
            ..Default::default()
        };
        crate::logs::stream(containers, &id, &mut out, sel, |info| {
            drop(guard.take());
            containers.reap_auto_remove_now(info);
        })?;
    } else {
        let info = containers.start(&id)?;
        c.respond_json(200, &info)?;
    }
    Ok(())
}

/// `POST .../start?attach=1` with an upgrade (`run -i`, `run -t`, `start
/// -a -i`): start the container, then carry its attach stream (what it
/// wrote since its start first, then live, its stdin when `stdin`), as
/// `POST .../attach` does. A run that has already ended is told from its
/// log: its output, then `Exited` (or `StartFailed` with the reason).
fn start_and_attach(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let req = AttachRequest {
        stdin: c.flag("stdin")?,
        stdout: c.flag_or("stdout", true)?,
        stderr: c.flag_or("stderr", true)?,
        logs: true,
    };
    let wanted = (req.stdout, req.stderr);
    let containers = s.containers();
    let id = containers.find(c.param("id"))?.config.id;
    // Held until the stream ends: a `--rm` container stays until then.
    let guard = containers.attach(&id);
    let info = containers.start(&id)?;
    let stream = if info.state.status.is_active() {
        match containers.control_stream(&id, &ControlRequest::Attach(req)) {
            Ok(s) => Some(s),
            // It ended in between: told from its log below.
            Err(e) if !containers.load(&id)?.state.status.is_active() => {
                eprintln!(
                    "vessel-apiserver: attach {}: {e}; telling its end from the log",
                    short(&id)
                );
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    match stream {
        Some((info, runtime, first)) => {
            splice_upgraded(c, &info, runtime, &first, &[], "attach")?;
        }
        None => {
            let ended = containers.load(&id)?;
            let client = c.upgrade("tcp")?;
            let mut w = std::io::BufWriter::new(&client.stream);
            if let Some(since) = ended.state.started_ms {
                crate::logs::write_frames_since(containers, &id, since, wanted, &mut w)?;
            }
            let code = ended.state.exit_code.unwrap_or(255);
            let end = match (ended.state.started_ms, ended.state.error) {
                // Never ran: why.
                (None, Some(message)) => GuestMessage::StartFailed {
                    exit_code: code,
                    message,
                },
                _ => GuestMessage::Exited {
                    exit_code: code,
                    signal: None,
                },
            };
            agent_protocol::write_message(&mut w, &end).map_err(|e| anyhow::anyhow!(e))?;
            w.flush()?;
            drop(w);
            let _ = client.stream.shutdown(std::net::Shutdown::Both);
        }
    }
    drop(guard);
    if let Ok(now) = containers.load(&id) {
        containers.reap_auto_remove_now(&now);
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

pub fn logs(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let follow = c.flag("follow")?;
    let tail = match c.query("tail") {
        None | Some("all") | Some("") => None,
        Some(t) => Some(t.parse::<usize>().map_err(|_| {
            ApiError::invalid(format!(
                "invalid tail {t:?}: give a number of lines, or `all`"
            ))
        })?),
    };
    let since_ms = c
        .query("since")
        .map(|v| crate::events::parse_time("since", v))
        .transpose()
        .map_err(ApiError::invalid)?
        .map(|ns| ns / 1_000_000);
    let containers = s.containers();
    let info = containers.find(c.param("id"))?;
    let id = info.config.id;
    let _guard = containers.attach(&id);
    // Only a running container is followed (Docker's rule): one that was
    // never started, or has ended, has no more to say.
    let sel = Selection {
        follow: follow && info.state.status.is_active(),
        tail,
        since_ms,
    };
    let mut out = c.respond_stream(200, "application/x-ndjson")?;
    crate::logs::stream(containers, &id, &mut out, sel, |_| {})?;
    Ok(())
}

/// The `t` (seconds before SIGKILL) of `stop` and `restart`.
fn timeout(c: &Call) -> ApiResult<u64> {
    match c.query("t") {
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|t| *t <= 24 * 3600)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid timeout {t:?}: give whole seconds, at most 86400"
                ))
            }),
        None => Ok(10),
    }
}

pub fn stop(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let t = timeout(c)?;
    let info = s.containers().stop(c.param("id"), t)?;
    c.respond_json(200, &info)
}

pub fn restart(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let t = timeout(c)?;
    let info = s.containers().restart(c.param("id"), t)?;
    c.respond_json(200, &info)
}

pub fn pause(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let info = s.containers().pause(c.param("id"), true)?;
    c.respond_json(200, &info)
}

pub fn unpause(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let info = s.containers().pause(c.param("id"), false)?;
    c.respond_json(200, &info)
}

pub fn rename(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let name = c.required("name")?.to_string();
    let info = s.containers().rename(c.param("id"), &name)?;
    c.respond_json(200, &info)
}

pub fn update(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let update: vessel_api::restart::ContainerUpdate = c.json()?;
    let info = s.containers().update(c.param("id"), &update)?;
    c.respond_json(200, &info)
}

pub fn prune(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let pruned = s.containers().prune()?;
    c.respond_json(200, &pruned)
}

pub fn stats(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let stats = s.containers().stats(c.param("id"))?;
    c.respond_json(200, &stats)
}

pub fn top(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let top = s.containers().top(c.param("id"))?;
    c.respond_json(200, &top)
}

pub fn resize(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let dim = |name: &str| -> ApiResult<u16> {
        let v = c.required(name)?;
        v.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid {name} {v:?}: a number of {} from 1 to 65535",
                if name == "h" { "rows" } else { "columns" }
            ))
        })
    };
    let (rows, cols) = (dim("h")?, dim("w")?);
    let info = s.containers().resize(c.param("id"), rows, cols)?;
    c.respond_json(200, &info)
}

/// `POST .../exec`: one more process in a running container. Streamed
/// over an upgraded connection (its ID in `Vessel-Exec-Id`), or with
/// `detach` started on its own and answered with its ID and pid.
pub fn exec(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let body: ExecCreate = c.json()?;
    if !body.detach && !c.wants_upgrade("tcp") {
        return Err(ApiError::invalid(
            "exec needs an upgraded connection (`Connection: Upgrade`, `Upgrade: tcp`), or `detach`",
        ));
    }
    let containers = s.containers();
    let (info, request) = containers.exec_create(c.param("id"), &body)?;
    let exec_id = request.exec_id.clone();
    if body.detach {
        let started = containers.exec_detached(&info, request)?;
        return c.respond_json(201, &started);
    }
    let opened = containers.control_stream(&info.config.id, &ControlRequest::Exec(request));
    let (info, runtime, first) = match opened {
        Ok(o) => o,
        Err(e) => {
            containers.exec_ended(&info, &exec_id);
            return Err(e);
        }
    };
    containers.exec_started(&info, &exec_id);
    let r = splice_upgraded(
        c,
        &info,
        runtime,
        &first,
        &[(EXEC_ID_HEADER, exec_id.clone())],
        "exec",
    );
    containers.exec_ended(&info, &exec_id);
    r
}

/// The header of an exec's 101 answer that holds its ID.
pub const EXEC_ID_HEADER: &str = "vessel-exec-id";

pub fn exec_inspect(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let info = s
        .containers()
        .exec_inspect(c.param("id"), c.param("exec_id"))?;
    c.respond_json(200, &info)
}

/// A path in the container, as the copy routes take it: absolute.
fn container_path(c: &Call) -> ApiResult<String> {
    let p = c.required("path")?;
    if !p.starts_with('/') || p.contains('\0') {
        return Err(ApiError::invalid(format!(
            "invalid path {p:?}: give an absolute path in the container"
        )));
    }
    Ok(p.to_string())
}

/// `POST .../copy-out?path=P`: a tar of `P` (`Data` frames, then `CopyDone`).
pub fn copy_out(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let path = container_path(c)?;
    let req = ControlRequest::CopyOut {
        path,
        one_file_system: false,
    };
    proxy_stream(s, c, req, "copy")
}

/// `POST .../copy-in?path=D`: the client's tar unpacked into directory `D`.
pub fn copy_in(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let path = container_path(c)?;
    proxy_stream(s, c, ControlRequest::CopyIn { path }, "copy")
}

/// `POST .../export`: a tar of the container's root filesystem.
pub fn export(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let req = ControlRequest::CopyOut {
        path: "/".into(),
        one_file_system: true,
    };
    proxy_stream(s, c, req, "export")
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
/// container's runtime helper (for a copy of a container that is not
/// running: to a maintenance boot's), and on its `{"ok":true}` switch
/// protocols and splice the client's connection with the runtime's until
/// either side goes. A refusal (container not running, an op the runtime
/// does not know) is an ordinary error answer, before any upgrade.
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
    // A copy of a container that is not running goes through a
    // maintenance boot of its VM; the gate it holds keeps a start or a
    // removal waiting until the copy ends.
    let opened = match &request {
        ControlRequest::CopyOut { .. } | ControlRequest::CopyIn { .. } => containers
            .copy_stream(c.param("id"), &request)
            .map(|o| (o.info, o.runtime, o.first, o.gate)),
        _ => containers
            .control_stream(c.param("id"), &request)
            .map(|(info, runtime, first)| (info, runtime, first, None)),
    };
    let (info, runtime, runtime_first, _gate) = opened
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
    splice_upgraded(c, &info, runtime, &runtime_first, &[], what)
}

/// Answer `101 Switching Protocols` (with `headers`) and splice the
/// client's connection with the runtime helper's until either side goes.
fn splice_upgraded(
    c: &mut Call,
    info: &vessel_api::types::ContainerInfo,
    runtime: std::os::unix::net::UnixStream,
    runtime_first: &[u8],
    headers: &[(&str, String)],
    what: &str,
) -> ApiResult<()> {
    let client = match c.upgrade_with("tcp", headers) {
        Ok(cl) => cl,
        Err(e) => {
            let _ = runtime.shutdown(std::net::Shutdown::Both);
            return Err(e);
        }
    };
    let carried = splice(client.stream, &client.pending, runtime, runtime_first)?;
    eprintln!(
        "vessel-apiserver: {what} {}: ended ({} bytes in, {} out)",
        short(&info.config.id),
        carried.a_to_b,
        carried.b_to_a
    );
    Ok(())
}
