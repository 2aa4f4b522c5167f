//! `vessel create`, `vessel start` and `vessel run` (both at once): create a
//! container, start its VM, and (in the foreground) stream its output and
//! exit with its exit code.

use super::interactive::{self, Interrupt, Spec};
use super::stream::{print_stream, Printing, StreamEnd};
use crate::api::{check, decode, server_error, Api, ErrorKind};
use crate::cli::{RunArgs, StartArgs};
use crate::exit::VESSEL_ERROR;
use crate::session::End;
use anyhow::{anyhow, bail, Result};
use vessel_api::http::percent_encode;
use vessel_api::network::parse_port_spec;
use vessel_api::types::{
    parse_memory, AttachStreams, ContainerInfo, CreateRequest, CreateResponse, Status,
};

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
    // `-e KEY` passes the client's value, as Docker does.
    let env = crate::env::environment(&a.env, &a.env_file)?;
    if a.detach && !a.attach.is_empty() {
        bail!("conflicting options: -a and -d");
    }
    if let Some(k) = &a.detach_keys {
        crate::terminal::parse_detach_keys(k)?;
    }
    let attach = (!a.attach.is_empty()).then(|| AttachStreams {
        stdin: a.attach.iter().any(|s| s == "stdin"),
        stdout: a.attach.iter().any(|s| s == "stdout"),
        stderr: a.attach.iter().any(|s| s == "stderr"),
    });
    let mut ports = Vec::new();
    for p in &a.publish {
        ports.extend(parse_port_spec(p).map_err(|e| anyhow!("{e}"))?);
    }
    // Mounts in the order given, `-v` first, as Docker lists them.
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let mut mounts = Vec::new();
    for v in &a.volume {
        mounts.push(vessel_api::mounts::parse_volume_flag(v, &cwd).map_err(|e| anyhow!("{e}"))?);
    }
    for m in &a.mount {
        mounts.push(vessel_api::mounts::parse_mount_flag(m).map_err(|e| anyhow!("{e}"))?);
    }
    for t in &a.tmpfs {
        mounts.push(vessel_api::mounts::parse_tmpfs_flag(t).map_err(|e| anyhow!("{e}"))?);
    }
    vessel_api::mounts::validate(&mounts).map_err(|e| anyhow!("{e}"))?;
    let restart = a.restart.unwrap_or_default();
    if a.rm && !restart.is_no() {
        bail!("conflicting options: --restart and --rm (a container removed when it ends cannot be restarted)");
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
        tty: a.tty,
        stdin: a.interactive,
        attach,
        healthcheck: super::health::healthcheck(&a.health)?,
        mounts,
        read_only: a.read_only,
        restart,
        no_template: a.no_template,
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
    crate::outln!("{id}");
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
        crate::outln!("{id}");
        return Ok(0);
    }
    let info: ContainerInfo = api.call("GET", &container_path(&id, ""), None)?;
    let how = Attached {
        streams: info.config.attach,
        tty: a.tty,
        detach_keys: interactive::detach_keys(a.detach_keys.as_deref())?,
        discard_failed: true,
        auto_remove: a.rm,
    };
    start_attached(api, &id, &how)
}

/// `vessel start`: start created containers, printing each name as given;
/// exit code 1 if any failed. With `-a` (or `-i`), start one and attach to
/// it as `run` does: its output (its input with `-i`), and its exit code.
pub fn start(api: &Api, a: StartArgs) -> Result<i32> {
    if a.attach || a.interactive {
        let [key] = &a.containers[..] else {
            bail!("you cannot start and attach more than one container at once");
        };
        let info: ContainerInfo = api.call("GET", &container_path(key, ""), None)?;
        let c = &info.config;
        let how = Attached {
            streams: AttachStreams {
                // Docker: stdin only with -i, and only if it was kept open.
                stdin: a.interactive && c.process.stdin,
                stdout: c.attach.stdout || !c.attach.stderr,
                stderr: c.attach.stderr || !c.attach.stdout,
            },
            tty: c.process.terminal,
            detach_keys: interactive::detach_keys(a.detach_keys.as_deref())?,
            discard_failed: false,
            auto_remove: c.auto_remove,
        };
        return start_attached(api, &c.id, &how);
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

/// How `run` (in the foreground) and `start -a` follow the container.
pub struct Attached {
    /// The streams to attach to.
    pub streams: AttachStreams,
    /// It has a terminal.
    pub tty: bool,
    pub detach_keys: Vec<u8>,
    /// Remove the container if it cannot be started (`run` made it).
    pub discard_failed: bool,
    /// It is a `--rm` container: gone when we return.
    pub auto_remove: bool,
}

/// Start container `id` and follow it to its end; its exit code.
fn start_attached(api: &Api, id: &str, how: &Attached) -> Result<i32> {
    if how.tty || how.streams.stdin {
        return start_interactive(api, id, how);
    }
    interactive::handle_interrupts(api, Interrupt::StopContainer(id.to_string()), None);
    let resp = check(api.send("POST", &format!("/v1/containers/{id}/start?attach=1"), None)?)
        .map_err(|e| {
            if how.discard_failed {
                discard(api, id, e)
            } else {
                e
            }
        })?;
    let printing = Printing {
        stdout: how.streams.stdout,
        stderr: how.streams.stderr,
        timestamps: false,
    };
    match print_stream(resp, printing)? {
        StreamEnd::Exit(code, error) => {
            if let Some(err) = error {
                eprintln!("vessel: error: {err}");
            }
            Ok(code)
        }
        StreamEnd::Eof => lost(api, id),
    }
}

/// The stream ended without the container's end: the apiserver went
/// away. The container lives on in its VM, unless it has ended.
fn lost(api: &Api, id: &str) -> Result<i32> {
    let state: Result<ContainerInfo> =
        decode(api.send("GET", &format!("/v1/containers/{id}"), None)?);
    match state {
        Ok(info) if info.state.status == Status::Exited => Ok(info.state.exit_code.unwrap_or(0)),
        _ => {
            eprintln!(
                "vessel: lost the connection to the apiserver; the container may still run: `vessel logs -f {}`",
                &id[..12.min(id.len())]
            );
            Ok(VESSEL_ERROR)
        }
    }
}

/// `run -i/-t`, `start -a` of such a container: start and attach over an
/// upgraded connection (`vessel.agent.v1` frames both ways).
fn start_interactive(api: &Api, id: &str, how: &Attached) -> Result<i32> {
    let s = &how.streams;
    let path = format!(
        "/v1/containers/{id}/start?attach=1&stdin={}&stdout={}&stderr={}",
        s.stdin, s.stdout, s.stderr
    );
    let conn = api.upgrade("POST", &path, None).map_err(|e| {
        if how.discard_failed {
            discard(api, id, e)
        } else {
            e
        }
    })?;
    let spec = Spec {
        stdin: s.stdin,
        tty: how.tty,
        detach_keys: how.detach_keys.clone(),
        // The attach stream carries resizes only with stdin.
        resize: (!s.stdin).then(|| interactive::resize_by_api(api, id)),
        interrupt: Interrupt::StopContainer(id.to_string()),
    };
    let end = interactive::run(api, conn, spec)?;
    let code = match end {
        End::Exited(code) => {
            // Why the VM or vessel failed, when it says.
            if matches!(code, VESSEL_ERROR | 255) {
                if let Ok(info) = api.call::<ContainerInfo>("GET", &container_path(id, ""), None) {
                    if let Some(err) = info.state.error {
                        eprintln!("vessel: error: {err}");
                    }
                }
            }
            code
        }
        End::Failed(code, message) => {
            eprintln!("vessel: error: {message}");
            code
        }
        End::Detached => return Ok(0),
        End::Lost => return lost(api, id),
    };
    if how.auto_remove {
        // As `run --rm` without -i: gone when we return.
        let _ = api.send("POST", &format!("/v1/containers/{id}/wait"), None);
        let _ = api.send("DELETE", &format!("/v1/containers/{id}?force=true"), None);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorBody;

    fn run_args(args: &[&str]) -> RunArgs {
        use clap::Parser;
        let argv = ["vessel", "run"].into_iter().chain(args.iter().copied());
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restart_policies_go_into_the_request_and_not_with_rm() {
        let req = create_request(&run_args(&["--restart", "on-failure:3", "img"])).unwrap();
        assert_eq!(req.restart.to_string(), "on-failure:3");
        let req = create_request(&run_args(&["img"])).unwrap();
        assert!(req.restart.is_no());
        let e = create_request(&run_args(&["--rm", "--restart", "unless-stopped", "img"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("conflicting options: --restart and --rm"), "{e}");
        assert!(create_request(&run_args(&["--rm", "--restart", "no", "img"])).is_ok());
    }

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
