//! `vessel version`: the client's version and protocol, and the
//! apiserver's, the agent protocol and the guest kernel it uses.

use crate::api::Api;
use crate::cli::VersionArgs;
use anyhow::{bail, Result};
use vessel_api::types::SystemInfo;

pub fn version(api: &Api, a: VersionArgs) -> Result<i32> {
    let json = match a.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("unknown --format {other:?}: use `text` or `json`"),
    };
    let client = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "agent_protocol": agent_protocol::PACKAGE,
        "os_arch": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    });
    // The client's part is printed even when the apiserver is not there.
    let server: Result<SystemInfo> = api.call("GET", "/v1/system/info", None);
    if json {
        let server = server.as_ref().ok().map(|s| {
            serde_json::json!({
                "version": s.version,
                "agent_protocol": s.agent_protocol,
                "kernel": s.kernel,
                "kernel_version": s.kernel_version,
                "initrd": s.initrd,
                "accel": s.accel,
            })
        });
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"client": client, "server": server}))?
        );
    } else {
        crate::outln!("Client:");
        crate::outln!(" Version:         {}", env!("CARGO_PKG_VERSION"));
        crate::outln!(" Agent protocol:  {}", agent_protocol::PACKAGE);
        crate::outln!(
            " OS/Arch:         {}/{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let Ok(s) = &server {
            crate::outln!();
            crate::outln!("Server (vessel-apiserver):");
            crate::outln!(" Version:         {}", s.version);
            crate::outln!(" Agent protocol:  {}", s.agent_protocol);
            crate::outln!(
                " Guest kernel:    {} ({})",
                s.kernel_version.as_deref().unwrap_or("unknown"),
                s.kernel.display()
            );
            crate::outln!(" Initramfs:       {}", s.initrd.display());
            crate::outln!(" Accelerator:     {}", s.accel);
        }
    }
    match server {
        Ok(_) => Ok(0),
        Err(e) => Err(e),
    }
}
