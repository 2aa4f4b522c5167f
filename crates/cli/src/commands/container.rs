//! `vessel ls`, `logs`, `stop`, `kill`, `rm`, `inspect`, `wait`, `restart`,
//! `pause`, `unpause`, `rename`, `port`, `container prune`.

use super::stream::{print_stream, Printing, StreamEnd};
use crate::api::{check, Api};
use crate::cli::{
    KillArgs, LogsArgs, LsArgs, PortArgs, RenameArgs, RestartArgs, RmArgs, StopArgs, TargetsArgs,
    UpdateArgs,
};
use crate::exit::FAILURE;
use crate::format::{human_duration, since, status_text, table, truncate};
use anyhow::{bail, Result};
use std::io::IsTerminal;
use vessel_api::http::percent_encode;
use vessel_api::types::{ContainerInfo, ContainerSummary, PruneResponse, Status, WaitResponse};

fn path(key: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", percent_encode(key))
}

pub fn ls(api: &Api, a: LsArgs) -> Result<i32> {
    let list: Vec<ContainerSummary> =
        api.call("GET", &format!("/v1/containers?all={}", a.all), None)?;
    if a.quiet {
        for c in &list {
            crate::outln!("{}", if a.no_trunc { &c.id[..] } else { &c.id[..12] });
        }
        return Ok(0);
    }
    match a.format.as_deref() {
        Some("json") => {
            for c in &list {
                crate::outln!("{}", serde_json::to_string(c)?);
            }
        }
        None | Some("table") => {
            let mut rows = vec![vec![
                "CONTAINER ID".to_string(),
                "IMAGE".into(),
                "COMMAND".into(),
                "CREATED".into(),
                "STATUS".into(),
                "PORTS".into(),
                "NAMES".into(),
            ]];
            for c in &list {
                let cmd = format!(
                    "\"{}\"",
                    if a.no_trunc {
                        c.command.clone()
                    } else {
                        truncate(&c.command, 20)
                    }
                );
                rows.push(vec![
                    if a.no_trunc {
                        c.id.clone()
                    } else {
                        c.id[..12].to_string()
                    },
                    c.image.clone(),
                    cmd,
                    format!("{} ago", human_duration(since(c.created_ms))),
                    status_text(c),
                    c.ports
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.name.clone(),
                ]);
            }
            crate::out!("{}", table(&rows));
        }
        Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(0)
}

pub fn logs(api: &Api, a: LogsArgs) -> Result<i32> {
    let mut query = format!("follow={}", a.follow);
    if let Some(t) = &a.tail {
        if t != "all" && t.parse::<usize>().is_err() {
            bail!("invalid --tail {t:?}: give a number of lines, or `all`");
        }
        query.push_str(&format!("&tail={}", percent_encode(t)));
    }
    if let Some(since) = &a.since {
        let t = super::events::api_time("since", since, std::time::SystemTime::now())?;
        query.push_str(&format!("&since={t}"));
    }
    let resp = check(api.send("GET", &path(&a.container, &format!("/logs?{query}")), None)?)?;
    let printing = Printing {
        timestamps: a.timestamps,
        ..Default::default()
    };
    match print_stream(resp, printing)? {
        StreamEnd::Exit(..) | StreamEnd::Eof => Ok(0),
    }
}

pub fn restart(api: &Api, a: RestartArgs) -> Result<i32> {
    each(&a.containers, |c| {
        let info: ContainerInfo =
            api.call("POST", &path(c, &format!("/restart?t={}", a.time)), None)?;
        match (info.state.status, &info.state.error) {
            (Status::Exited, Some(err)) => bail!("container {c} did not start again: {err}"),
            _ => Ok(()),
        }
    })
}

/// `vessel update --restart POLICY CONTAINER...`: prints each name as given.
pub fn update(api: &Api, a: UpdateArgs) -> Result<i32> {
    let body = serde_json::to_value(vessel_api::restart::ContainerUpdate { restart: a.restart })?;
    each(&a.containers, |c| {
        api.call::<ContainerInfo>("POST", &path(c, "/update"), Some(&body))
            .map(drop)
    })
}

pub fn pause(api: &Api, a: TargetsArgs) -> Result<i32> {
    each(&a.containers, |c| {
        api.call::<ContainerInfo>("POST", &path(c, "/pause"), None)
            .map(drop)
    })
}

pub fn unpause(api: &Api, a: TargetsArgs) -> Result<i32> {
    each(&a.containers, |c| {
        api.call::<ContainerInfo>("POST", &path(c, "/unpause"), None)
            .map(drop)
    })
}

pub fn rename(api: &Api, a: RenameArgs) -> Result<i32> {
    let q = format!("/rename?name={}", percent_encode(&a.new_name));
    api.call::<ContainerInfo>("POST", &path(&a.container, &q), None)?;
    Ok(0)
}

/// `port`: `80/tcp -> 0.0.0.0:8080` for each published port (or the host
/// addresses of the one asked for, as Docker prints them).
pub fn port(api: &Api, a: PortArgs) -> Result<i32> {
    let info: ContainerInfo = api.call("GET", &path(&a.container, ""), None)?;
    let wanted = match &a.private_port {
        None => None,
        Some(p) => {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let port: u16 = port.parse().map_err(|_| {
                anyhow::anyhow!("invalid port {p:?}: give PORT or PORT/tcp or PORT/udp")
            })?;
            Some((port, proto.to_ascii_lowercase()))
        }
    };
    let mut found = false;
    for att in &info.networks {
        for m in &att.ports {
            let proto = m.protocol.to_string();
            if let Some((port, want_proto)) = &wanted {
                if m.container_port != *port || proto != *want_proto {
                    continue;
                }
            }
            found = true;
            let ip = if m.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &m.host_ip
            };
            match &wanted {
                Some(_) => crate::outln!("{ip}:{}", m.host_port),
                None => crate::outln!("{}/{proto} -> {ip}:{}", m.container_port, m.host_port),
            }
        }
    }
    if let (Some(p), false) = (&a.private_port, found) {
        bail!(
            "no public port {p} published for container {}",
            info.config.name
        );
    }
    Ok(0)
}

/// `container prune`: remove every container that does not run.
pub fn prune(api: &Api, force: bool) -> Result<i32> {
    if !force && std::io::stdin().is_terminal() {
        eprint!("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            return Ok(0);
        }
    }
    let r: PruneResponse = api.call("POST", "/v1/containers/prune", None)?;
    if !r.removed.is_empty() {
        crate::outln!("Deleted Containers:");
        for id in &r.removed {
            crate::outln!("{id}");
        }
    }
    crate::outln!("Total reclaimed: {} containers", r.removed.len());
    Ok(0)
}

/// Apply `f` to each target, printing the target on success and the error
/// otherwise, like Docker; exit code 1 if any failed.
pub(crate) fn each(targets: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<i32> {
    let mut code = 0;
    for t in targets {
        match f(t) {
            Ok(()) => crate::outln!("{t}"),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = FAILURE;
            }
        }
    }
    Ok(code)
}

pub fn stop(api: &Api, a: StopArgs) -> Result<i32> {
    each(&a.containers, |c| {
        api.call::<ContainerInfo>("POST", &path(c, &format!("/stop?t={}", a.time)), None)
            .map(drop)
    })
}

pub fn kill(api: &Api, a: KillArgs) -> Result<i32> {
    vessel_api::types::parse_signal(&a.signal).map_err(anyhow::Error::msg)?;
    let sig = percent_encode(&a.signal);
    each(&a.containers, |c| {
        api.call::<ContainerInfo>("POST", &path(c, &format!("/kill?signal={sig}")), None)
            .map(drop)
    })
}

pub fn rm(api: &Api, a: RmArgs) -> Result<i32> {
    each(&a.containers, |c| {
        api.call::<ContainerSummary>(
            "DELETE",
            &path(c, &format!("?force={}&volumes={}", a.force, a.volumes)),
            None,
        )
        .map(drop)
    })
}

pub fn inspect(api: &Api, a: TargetsArgs) -> Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for c in &a.containers {
        match api.call::<serde_json::Value>("GET", &path(c, ""), None) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = FAILURE;
            }
        }
    }
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

pub fn wait(api: &Api, a: TargetsArgs) -> Result<i32> {
    let mut code = 0;
    for c in &a.containers {
        match api.call::<WaitResponse>("POST", &path(c, "/wait"), None) {
            Ok(w) => crate::outln!("{}", w.exit_code),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = FAILURE;
            }
        }
    }
    Ok(code)
}
