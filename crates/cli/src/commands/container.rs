//! `vessel ls`, `logs`, `stop`, `kill`, `rm`, `inspect`, `wait`.

use super::stream::{print_stream, StreamEnd};
use crate::api::{check, Api};
use crate::cli::{KillArgs, LogsArgs, LsArgs, RmArgs, StopArgs, TargetsArgs};
use crate::exit::FAILURE;
use crate::format::{human_duration, since, status_text, table, truncate};
use anyhow::{bail, Result};
use vessel_api::http::percent_encode;
use vessel_api::types::{ContainerInfo, ContainerSummary, WaitResponse};

fn path(key: &str, rest: &str) -> String {
    format!("/v1/containers/{}{rest}", percent_encode(key))
}

pub fn ls(api: &Api, a: LsArgs) -> Result<i32> {
    let list: Vec<ContainerSummary> =
        api.call("GET", &format!("/v1/containers?all={}", a.all), None)?;
    if a.quiet {
        for c in &list {
            println!("{}", if a.no_trunc { &c.id[..] } else { &c.id[..12] });
        }
        return Ok(0);
    }
    match a.format.as_deref() {
        Some("json") => {
            for c in &list {
                println!("{}", serde_json::to_string(c)?);
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
            print!("{}", table(&rows));
        }
        Some(other) => bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(0)
}

pub fn logs(api: &Api, a: LogsArgs) -> Result<i32> {
    let resp = check(api.send(
        "GET",
        &path(&a.container, &format!("/logs?follow={}", a.follow)),
        None,
    )?)?;
    match print_stream(resp)? {
        StreamEnd::Exit(..) | StreamEnd::Eof => Ok(0),
    }
}

/// Apply `f` to each target, printing the target on success and the error
/// otherwise, like Docker; exit code 1 if any failed.
pub(crate) fn each(targets: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<i32> {
    let mut code = 0;
    for t in targets {
        match f(t) {
            Ok(()) => println!("{t}"),
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
        api.call::<ContainerSummary>("DELETE", &path(c, &format!("?force={}", a.force)), None)
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
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

pub fn wait(api: &Api, a: TargetsArgs) -> Result<i32> {
    let mut code = 0;
    for c in &a.containers {
        match api.call::<WaitResponse>("POST", &path(c, "/wait"), None) {
            Ok(w) => println!("{}", w.exit_code),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = FAILURE;
            }
        }
    }
    Ok(code)
}
