//! `vessel network create|ls|inspect|rm|prune`.

use crate::api::Api;
use crate::cli::NetworkCommand;
use anyhow::{bail, Result};
use std::io::IsTerminal;
use vessel_api::http::percent_encode;
use vessel_api::network::{NetworkCreateRequest, NetworkInfo, RemovedNetworks};

pub fn dispatch(api: &Api, c: NetworkCommand) -> Result<i32> {
    match c {
        NetworkCommand::Create {
            subnet,
            gateway,
            internal,
            driver: _,
            name,
        } => create(api, name, subnet, gateway, internal),
        NetworkCommand::Ls { quiet, format } => ls(api, quiet, format.as_deref()),
        NetworkCommand::Inspect { networks } => inspect(api, &networks),
        NetworkCommand::Rm { networks } => rm(api, &networks),
        NetworkCommand::Prune { force } => prune(api, force),
    }
}

/// Check `A.B.C.D/N` before sending it (the helper checks it again).
pub fn check_subnet(s: &str) -> Result<()> {
    let ok = s.split_once('/').is_some_and(|(ip, n)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && n.parse::<u8>().is_ok_and(|n| n <= 30)
    });
    if !ok {
        bail!("invalid subnet {s:?}: expected IPv4 CIDR such as 10.89.0.0/24 (prefix at most /30)");
    }
    Ok(())
}

fn create(
    api: &Api,
    name: String,
    subnet: Option<String>,
    gateway: Option<String>,
    internal: bool,
) -> Result<i32> {
    if let Some(s) = &subnet {
        check_subnet(s)?;
    }
    if let Some(g) = &gateway {
        if subnet.is_none() {
            bail!("--gateway needs --subnet");
        }
        if g.parse::<std::net::Ipv4Addr>().is_err() {
            bail!("invalid --gateway {g:?}: expected an IPv4 address");
        }
    }
    let req = NetworkCreateRequest {
        name,
        subnet,
        gateway,
        internal,
    };
    let info: NetworkInfo = api.call("POST", "/v1/networks", Some(&serde_json::to_value(&req)?))?;
    crate::outln!("{}", info.id);
    Ok(0)
}

fn ls(api: &Api, quiet: bool, format: Option<&str>) -> Result<i32> {
    let mut list: Vec<NetworkInfo> = api.call("GET", "/v1/networks", None)?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    super::print_list(
        &list,
        quiet,
        format,
        |n| &n.name,
        &[
            "NETWORK ID",
            "NAME",
            "DRIVER",
            "SUBNET",
            "GATEWAY",
            "INTERNAL",
            "CONTAINERS",
        ],
        |n| {
            vec![
                n.id.chars().take(12).collect(),
                n.name.clone(),
                "bridge".into(),
                n.subnet.clone(),
                n.gateway.clone(),
                n.internal.to_string(),
                n.containers.len().to_string(),
            ]
        },
    )
}

fn path(name: &str) -> String {
    format!("/v1/networks/{}", percent_encode(name))
}

fn inspect(api: &Api, names: &[String]) -> Result<i32> {
    super::inspect_each(api, names, path)
}

fn rm(api: &Api, names: &[String]) -> Result<i32> {
    super::remove_each(api, names, path)
}

fn prune(api: &Api, force: bool) -> Result<i32> {
    if !force && std::io::stdin().is_terminal() {
        eprintln!(
            "WARNING! This will remove all custom networks not used by at least one container."
        );
        if !super::image::confirm("Are you sure you want to continue?")? {
            return Ok(0);
        }
    }
    let r: RemovedNetworks = api.call("POST", "/v1/networks/prune", None)?;
    if !r.removed.is_empty() {
        crate::outln!("Deleted Networks:");
        for n in &r.removed {
            crate::outln!("{n}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked() {
        assert!(check_subnet("10.89.0.0/24").is_ok());
        for bad in [
            "10.89.0.0",
            "10.89.0/24",
            "10.89.0.0/31",
            "x/24",
            "10.0.0.0/",
        ] {
            assert!(check_subnet(bad).is_err(), "{bad}");
        }
    }
}
