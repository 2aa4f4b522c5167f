//! `vessel create`, `vessel start` and `vessel run` (both at once): create a
//! container, start its VM, and (in the foreground) stream its output and
//! exit with its exit code.

use super::stream::{print_stream, StreamEnd};
use crate::api::{check, decode, server_error, Api, ErrorKind};
use crate::cli::{RunArgs, StartArgs};
use crate::exit::VESSEL_ERROR;
use anyhow::{anyhow, bail, Result};
use std::sync::atomic::{AtomicU32, Ordering};
use vessel_api::http::percent_encode;
use vessel_api::network::parse_port_spec;
use vessel_api::types::{parse_memory, ContainerInfo, CreateRequest, CreateResponse, Status};

/// Build the create request from the flags (validated here, before any work).
pub fn create_request(a: &RunArgs) -> Result<CreateRequest> {
    let memory_mib = match &a.memory {
        Some(m) => {
            let bytes = parse_memory(m).map_err(|e| anyhow!("{e}"))?;
            Some(bytes.div_ceil(1 << 20))
        }
        None => None,
    };
    let cpus = match &a.cpus {
        Some(c) => {
            let v: f64 = c
                .trim()
                .parse()
                .map_err(|_| anyhow!("invalid --cpus {c:?}: expected a number such as 2 or 1.5"))?;
            if !(v > 0.0 && v <= 64.0) {
                bail!("invalid --cpus {c:?}: must be more than 0 and at most 64");
            }
            Some(v.ceil() as u32)
        }
        None => None,
    };
    let mut env = Vec::new();
    for e in &a.env {
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            // `-e KEY` passes the client's value, as Docker does.
            env.push(format!("{e}={v}"));
        }
    }
    let mut ports = Vec::new();
    for p in &a.publish {
        ports.extend(parse_port_spec(p).map_err(|e| anyhow!("{e}"))?);
    }
    Ok(CreateRequest {
        image: a.image.clone(),
        name: a.name.clone(),
        cmd: a.command.clone(),
        entrypoint: a.entrypoint.clone(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        cpus,
        memory_mib,
        auto_remove: a.rm,
        network: a.network.clone(),
        ports,
        aliases: a.network_alias.clone(),
        hostname: a.hostname.clone(),
        ulimits: a
            .ulimit
            .iter()
            .map(|u| vessel_api::ulimit::parse_ulimit(u).map_err(|e| anyhow!("{e}")))
            .collect::<Result<_>>()?,
    })
}

/// Pull the image of `run`/`create`, progress on stderr.
fn pull_image(api: &Api, a: &RunArgs) -> Result<()> {
    super::image::pull(
        api,
        &a.image,
        a.platform.as_deref(),
        a.tls_verify,
        a.quiet,
        true,
    )?;
    Ok(())
}

/// Does `e` say that the image `image` of a create request is missing (and
/// nothing else: not a network, not another image)?
pub fn image_missing(e: &anyhow::Error, image: &str) -> bool {
    server_error(e)
        .is_some_and(|s| s.kind == ErrorKind::ImageNotFound && s.name.as_deref() == Some(image))
}

/// Create the container, pulling its image first as `--pull` says; its ID.
fn create_container(api: &Api, a: &RunArgs) -> Result<String> {
    let req = create_request(a)?;
    let body = serde_json::to_value(&req)?;
    if a.pull == "always" {
        pull_image(api, a)?;
    }
    match api.call::<CreateResponse>("POST", "/v1/containers", Some(&body)) {
        Ok(c) => Ok(c.id),
        Err(e) if a.pull == "missing" && image_missing(&e, &a.image) => {
            if !a.quiet {
                eprintln!(
                    "Unable to find image '{}' locally",
                    super::image::with_default_tag(&a.image)
                );
            }
            pull_image(api, a).map_err(|pull_err| {
                anyhow::anyhow!(
                    "image {} not found locally, and pulling it failed: {pull_err:#}",
                    super::image::with_default_tag(&a.image)
                )
            })?;
            let c: CreateResponse = api.call("POST", "/v1/containers", Some(&body))?;
            Ok(c.id)
        }
        Err(e) => Err(e),
    }
}

/// `vessel create`: create the container and print its ID.
pub fn create(api: &Api, a: RunArgs) -> Result<i32> {
    let id = create_container(api, &a)?;
    println!("{id}");
    Ok(0)
}

/// A container whose start was refused (a taken port, a network that
/// cannot be joined) is removed: `run` leaves nothing half-made.
fn discard(api: &Api, id: &str, e: anyhow::Error) -> anyhow::Error {
    let _ = api.send("DELETE", &format!("/v1/containers/{id}?force=true"), None);
    e
}

pub fn run(api: &Api, a: RunArgs) -> Result<i32> {
    let id = create_container(api, &a)?;
    if a.detach {
        let info: ContainerInfo = api
            .call("POST", &format!("/v1/containers/{id}/start"), None)
            .map_err(|e| discard(api, &id, e))?;
        if info.state.status == Status::Exited {
            if let Some(err) = &info.state.error {
                eprintln!("vessel: error: {err}");
                return Ok(info.state.exit_code.unwrap_or(VESSEL_ERROR));
            }
        }
        println!("{id}");
        return Ok(0);
    }
    start_attached(api, &id, true)
}

/// `vessel start`: start created containers, printing each name as given;
/// exit code 1 if any failed. With `-a`, start one and attach to it as
/// `run` does: its output, and its exit code.
pub fn start(api: &Api, a: StartArgs) -> Result<i32> {
    if a.attach {
        let [key] = &a.containers[..] else {
            bail!("you cannot start and attach more than one container at once");
        };
        let info: ContainerInfo = api.call("GET", &container_path(key, ""), None)?;
        return start_attached(api, &info.config.id, false);
    }
    super::container::each(&a.containers, |c| {
        let info: ContainerInfo = api.call("POST", &container_path(c, "/start"), None)?;
        match (info.state.status, &info.state.error) {
            (Status::Exited, Some(err)) => bail!("container {c} did not start: {err}"),
            _ => Ok(()),
        }
    })
}

fn container_path(key: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", percent_encode(key))
}

/// Start container `id` and follow its output to its end; its exit code.
/// `discard`: remove the container if it cannot be started (`run` made it).
fn start_attached(api: &Api, id: &str, discard_failed: bool) -> Result<i32> {
    forward_interrupts(api, id);
    let resp = check(api.send("POST", &format!("/v1/containers/{id}/start?attach=1"), None)?)
        .map_err(|e| {
            if discard_failed {
                discard(api, id, e)
            } else {
                e
            }
        })?;
    match print_stream(resp)? {
        StreamEnd::Exit(code, error) => {
            if let Some(err) = error {
                eprintln!("vessel: error: {err}");
            }
            Ok(code)
        }
        StreamEnd::Eof => {
            // The apiserver went away; the container lives on in its VM.
            let state: Result<ContainerInfo> =
                decode(api.send("GET", &format!("/v1/containers/{id}"), None)?);
            match state {
                Ok(info) if info.state.status == Status::Exited => {
                    Ok(info.state.exit_code.unwrap_or(0))
                }
                _ => {
                    eprintln!(
                        "vessel: lost the connection to the apiserver; the container may still run: `vessel logs -f {}`",
                        &id[..12.min(id.len())]
                    );
                    Ok(VESSEL_ERROR)
                }
            }
        }
    }
}

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Ctrl-C (or SIGTERM) stops the container: SIGTERM, then SIGKILL after 10
/// s; a second Ctrl-C kills it at once. The stream then ends with its exit.
fn forward_interrupts(api: &Api, id: &str) {
    // SAFETY: the mask is a valid local; blocking signals in this thread is
    // inherited by threads spawned later, so only the waiter below sees them.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let api = Api::new(api.home.clone());
    let id = id.to_string();
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set and sig are valid for the call.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        let n = INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        let path = if n == 0 {
            format!("/v1/containers/{id}/stop?t=10")
        } else {
            format!("/v1/containers/{id}/kill?signal={}", percent_encode("KILL"))
        };
        let api2 = Api::new(api.home.clone());
        std::thread::spawn(move || {
            let _ = api2.send("POST", &path, None);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorBody;

    #[test]
    fn only_the_requested_image_missing_is_pulled() {
        let missing = |kind, name: &str| -> anyhow::Error {
            ErrorBody::new(kind, format!("{name} not found"))
                .with_name(name)
                .into()
        };
        let img = "localhost/busybox:latest";
        assert!(image_missing(&missing(ErrorKind::ImageNotFound, img), img));
        // The network of issue 8: a 404, but not the image.
        assert!(!image_missing(
            &missing(ErrorKind::NetworkNotFound, "nosuchnet"),
            img
        ));
        // Another image (or one named differently) is not the one asked for.
        assert!(!image_missing(
            &missing(ErrorKind::ImageNotFound, "localhost/other:1"),
            img
        ));
        // A not-found of an older server carries no kind of its own.
        assert!(!image_missing(&missing(ErrorKind::NotFound, img), img));
        assert!(!image_missing(
            &ErrorBody::new(ErrorKind::ImageNotFound, "no name").into(),
            img
        ));
        assert!(!image_missing(&anyhow!("image {img} not found"), img));
    }
}
