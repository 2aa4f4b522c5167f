//! `vessel volume create|ls|inspect|rm|prune`.

use crate::api::Api;
use crate::cli::VolumeCommand;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use vessel_api::http::percent_encode;
use vessel_api::mounts::{validate_volume_name, VolumeCreate, VolumeInfo, VolumePruneResponse};

pub fn dispatch(api: &Api, c: VolumeCommand) -> Result<i32> {
    match c {
        VolumeCommand::Create {
            driver: _,
            opt,
            label,
            name,
        } => create(api, name, &opt, &label),
        VolumeCommand::Ls { quiet, format } => ls(api, quiet, format.as_deref()),
        VolumeCommand::Inspect { volumes } => inspect(api, &volumes),
        VolumeCommand::Rm { force, volumes } => rm(api, force, &volumes),
        VolumeCommand::Prune { all, force } => prune(api, all, force),
    }
}

/// `KEY=VALUE` flags as a map (`flag` names them in errors).
pub fn key_values(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in items {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => bail!("invalid {flag} {kv:?}: expected KEY=VALUE"),
        }
    }
    Ok(out)
}

fn create(api: &Api, name: Option<String>, opt: &[String], label: &[String]) -> Result<i32> {
    let name = name.unwrap_or_default();
    if !name.is_empty() {
        validate_volume_name(&name)?;
    }
    let req = VolumeCreate {
        name,
        options: key_values("--opt", opt)?,
        labels: key_values("--label", label)?,
    };
    let info: VolumeInfo = api.call("POST", "/v1/volumes", Some(&serde_json::to_value(&req)?))?;
    crate::outln!("{}", info.name);
    Ok(0)
}

fn ls(api: &Api, quiet: bool, format: Option<&str>) -> Result<i32> {
    let list: Vec<VolumeInfo> = api.call("GET", "/v1/volumes", None)?;
    super::print_list(
        &list,
        quiet,
        format,
        |v| &v.name,
        &["DRIVER", "VOLUME NAME"],
        |v| vec![v.driver.clone(), v.name.clone()],
    )
}

fn path(name: &str) -> String {
    format!("/v1/volumes/{}", percent_encode(name))
}

fn inspect(api: &Api, names: &[String]) -> Result<i32> {
    super::inspect_each(api, names, path)
}

fn rm(api: &Api, force: bool, names: &[String]) -> Result<i32> {
    super::remove_each(api, names, |n| format!("{}?force={force}", path(n)))
}

fn prune(api: &Api, all: bool, force: bool) -> Result<i32> {
    if !force && std::io::stdin().is_terminal() {
        if all {
            eprintln!("WARNING! This will remove all volumes not used by at least one container.");
        } else {
            eprintln!(
                "WARNING! This will remove anonymous volumes not used by at least one container."
            );
        }
        if !super::image::confirm("Are you sure you want to continue?")? {
            return Ok(0);
        }
    }
    let r: VolumePruneResponse = api.call("POST", &format!("/v1/volumes/prune?all={all}"), None)?;
    if !r.removed.is_empty() {
        crate::outln!("Deleted Volumes:");
        for n in &r.removed {
            crate::outln!("{n}");
        }
        crate::outln!();
    }
    crate::outln!(
        "Total reclaimed space: {}",
        crate::format::human_size(r.reclaimed_bytes)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_labels() {
        let m = key_values("--opt", &["size=1g".into(), "shared=true".into()]).unwrap();
        assert_eq!(m.get("size").map(String::as_str), Some("1g"));
        let m = key_values("--label", &["empty=".into()]).unwrap();
        assert_eq!(m.get("empty").map(String::as_str), Some(""));
        for bad in ["size", "=1g"] {
            let e = key_values("--opt", &[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("KEY=VALUE"), "{e}");
        }
    }
}
