//! NAT and isolation with nftables, in one table per instance
//! (`table inet vessel_<hash>`), replaced as a whole in one transaction
//! each time the set of networks changes, and removed with `delete table`.
//!
//! Per network bridge `B` with subnet `S` and gateway `G`:
//! - forward: `B` → another vessel bridge is dropped (networks are
//!   isolated); into `B` from elsewhere only replies and connections to
//!   published ports (DNAT, below) pass; an internal network forwards
//!   nothing out.
//! - postrouting: `S` leaving through anything but `B` is masqueraded
//!   (not for internal networks); so is `S` to `S` after DNAT (a container
//!   reaching a published port through the host: hairpin).
//! - prerouting and output: a published port on every host address (or on
//!   one non-loopback address) is DNATed to its container, so clients from
//!   elsewhere reach it in the kernel and the container sees their own
//!   address, as with Docker. Host-local connections to a non-loopback
//!   address are DNATed in output; loopback ones (`127.0.0.1:PORT`) and
//!   those from containers of other networks are served by the userland
//!   proxy, which also holds the port.
//! - input, internal networks only: the guests reach the host only for DNS
//!   on `G` (and replies to connections the host opened).

use crate::subnet::Ipv4Net;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What the rules need to know about one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRules {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// Published ports of its containers, forwarded in the kernel.
    pub forwards: Vec<Forward>,
}

/// A published port the kernel forwards (DNAT) to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The host address it is published on; `None`: every address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub udp: bool,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The prefix of every vessel bridge (of any instance).
pub const BRIDGE_PREFIX: &str = "vsl-";

/// The nft program: `VESSEL_NFT` or `nft`.
pub fn nft_binary() -> String {
    std::env::var("VESSEL_NFT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nft".into())
}

/// The script that replaces `table` with the rules for `nets`.
pub fn ruleset(table: &str, nets: &[NetRules]) -> String {
    let mut fwd = String::new();
    let mut input = String::new();
    let mut nat = String::new();
    let mut pre = String::new();
    let mut out = String::new();
    for n in nets {
        let b = &n.bridge;
        fwd.push_str(&format!(
            "    iifname \"{b}\" oifname != \"{b}\" oifname \"{BRIDGE_PREFIX}*\" drop\n\
             \x20   oifname \"{b}\" iifname != \"{b}\" ct state established,related accept\n"
        ));
        if !n.internal && !n.forwards.is_empty() {
            fwd.push_str(&format!(
                "    oifname \"{b}\" iifname != \"{BRIDGE_PREFIX}*\" ct status dnat accept\n"
            ));
            nat.push_str(&format!(
                "    oifname \"{b}\" ip saddr {} ct status dnat masquerade\n",
                n.subnet
            ));
            for f in &n.forwards {
                let daddr = f
                    .host_ip
                    .map(|ip| format!(" ip daddr {ip}"))
                    .unwrap_or_default();
                let proto = if f.udp { "udp" } else { "tcp" };
                let rule = format!(
                    "{daddr} {proto} dport {} dnat ip to {}:{}\n",
                    f.host_port, f.container_ip, f.container_port
                );
                // From outside vessel's networks, and from this network
                // (hairpin); other networks reach it through the proxy.
                pre.push_str(&format!(
                    "    iifname != \"{BRIDGE_PREFIX}*\" fib daddr type local{rule}\
                     \x20   iifname \"{b}\" fib daddr type local{rule}"
                ));
                out.push_str(&format!(
                    "    fib daddr type local ip daddr != 127.0.0.0/8{rule}"
                ));
            }
        }
        fwd.push_str(&format!("    oifname \"{b}\" iifname != \"{b}\" drop\n"));
        if n.internal {
            fwd.push_str(&format!("    iifname \"{b}\" oifname != \"{b}\" drop\n"));
            let g = n.gateway;
            input.push_str(&format!(
                "    iifname \"{b}\" ct state established,related accept\n\
                 \x20   iifname \"{b}\" ip daddr {g} udp dport 53 accept\n\
                 \x20   iifname \"{b}\" ip daddr {g} tcp dport 53 accept\n\
                 \x20   iifname \"{b}\" drop\n"
            ));
        } else {
            nat.push_str(&format!(
                "    ip saddr {} oifname != \"{b}\" masquerade\n",
                n.subnet
            ));
        }
    }
    format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n{fwd}  }}\n\
         \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n{input}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{out}  }}\n\
         }}\n"
    )
}

fn run_nft(script: &str) -> io::Result<()> {
    let mut child = Command::new(nft_binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run nft ({e}); install it (Debian: apt install nftables)"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Replace the table with the rules for `nets`.
pub fn apply(table: &str, nets: &[NetRules]) -> io::Result<()> {
    run_nft(&ruleset(table, nets))
}

/// Remove the table (and so every rule of this instance).
pub fn delete(table: &str) -> io::Result<()> {
    run_nft(&format!("table inet {table}\ndelete table inet {table}\n"))
}

/// The table as `nft -j list table` prints it, or `None` when it is absent.
pub fn list_json(table: &str) -> io::Result<Option<serde_json::Value>> {
    let out = Command::new(nft_binary())
        .args(["-j", "list", "table", "inet", table])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(|e| io::Error::other(format!("nft -j output: {e}")))
}

/// Turn on IPv4 forwarding (needed for NAT).
pub fn enable_ip_forward() -> io::Result<()> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(p, "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_a_normal_and_an_internal_network() {
        let nets = [
            NetRules {
                bridge: "vsl-aaaa".into(),
                subnet: "10.88.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 88, 0, 1),
                internal: false,
                forwards: vec![
                    Forward {
                        host_ip: None,
                        host_port: 8080,
                        udp: false,
                        container_ip: Ipv4Addr::new(10, 88, 0, 2),
                        container_port: 80,
                    },
                    Forward {
                        host_ip: Some(Ipv4Addr::new(192, 0, 2, 7)),
                        host_port: 5353,
                        udp: true,
                        container_ip: Ipv4Addr::new(10, 88, 0, 3),
                        container_port: 53,
                    },
                ],
            },
            NetRules {
                bridge: "vsl-bbbb".into(),
                subnet: "10.88.1.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 88, 1, 1),
                internal: true,
                forwards: vec![Forward {
                    host_ip: None,
                    host_port: 9090,
                    udp: false,
                    container_ip: Ipv4Addr::new(10, 88, 1, 2),
                    container_port: 90,
                }],
            },
        ];
        let r = ruleset("vessel_t", &nets);
        assert!(r.starts_with("table inet vessel_t\ndelete table inet vessel_t\n"));
        assert!(r.contains("ip saddr 10.88.0.0/24 oifname != \"vsl-aaaa\" masquerade"));
        assert!(
            !r.contains("10.88.1.0/24"),
            "no masquerade for internal:\n{r}"
        );
        assert!(r.contains("iifname \"vsl-bbbb\" oifname != \"vsl-bbbb\" drop"));
        assert!(r.contains("iifname \"vsl-bbbb\" ip daddr 10.88.1.1 udp dport 53 accept"));
        assert!(r.contains("iifname \"vsl-aaaa\" oifname != \"vsl-aaaa\" oifname \"vsl-*\" drop"));
        // Published ports: DNAT from outside and hairpin, output DNAT for
        // the host's own non-loopback addresses, forward and masquerade.
        assert!(r.contains(
            "iifname != \"vsl-*\" fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80"
        ));
        assert!(r.contains(
            "iifname \"vsl-aaaa\" fib daddr type local tcp dport 8080 dnat ip to 10.88.0.2:80"
        ));
        assert!(r.contains(
            "fib daddr type local ip daddr != 127.0.0.0/8 ip daddr 192.0.2.7 udp dport 5353 dnat ip to 10.88.0.3:53"
        ));
        assert!(r.contains("oifname \"vsl-aaaa\" iifname != \"vsl-*\" ct status dnat accept"));
        assert!(r.contains("oifname \"vsl-aaaa\" ip saddr 10.88.0.0/24 ct status dnat masquerade"));
        // The accept comes before the drop of new connections into the bridge.
        let accept = r
            .find("oifname \"vsl-aaaa\" iifname != \"vsl-*\" ct status dnat accept")
            .unwrap();
        let drop = r
            .find("oifname \"vsl-aaaa\" iifname != \"vsl-aaaa\" drop")
            .unwrap();
        assert!(accept < drop, "{r}");
        // An internal network publishes nothing in the kernel.
        assert!(!r.contains("9090"), "{r}");
    }
}
