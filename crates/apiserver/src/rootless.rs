//! Rootless mode: an apiserver that does not run as root cannot create
//! bridges, TAP devices or nftables rules, so vessel-network is not run.
//! Each container VM gets a user-mode network of its own instead, served by
//! a `passt` process its runtime helper starts: the same private address on
//! every VM ([`vessel_api::network::user_mode`]), outbound traffic through
//! the user's own sockets, DNS forwarded to the host's resolvers, and
//! published ports bound on the host as the user.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use vessel_api::network::{Attachment, PortMapping, Protocol, DEFAULT_NETWORK};

/// What `vessel system status` says about networking in rootless mode.
pub const NOTE: &str = "rootless (passt): outbound NAT and published ports only; \
     no container-to-container networking, no DNS by name, no user-defined networks";

/// What it says in root mode.
pub const ROOT_NOTE: &str = "bridge (vessel-network): an address per container, \
     DNS by name, published ports, user-defined networks";

/// Does this apiserver run without root (and so in rootless mode)?
pub fn is_rootless() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() != 0 }
}

/// The first port an unprivileged user may bind
/// (`net.ipv4.ip_unprivileged_port_start`, 1024 when unreadable).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Why networks cannot be managed in rootless mode.
pub fn networks_unavailable() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    format!(
        "user-defined networks are not available in rootless mode (the apiserver runs as uid {uid}, \
         which cannot create bridges): each container gets its own user-mode network (passt) \
         with outbound access and published ports only"
    )
}

/// Is `passt` there (`VESSEL_PASST`, `PATH`, `/usr/bin/passt`)?
pub fn passt_available() -> bool {
    if let Some(p) = std::env::var_os("VESSEL_PASST").filter(|v| !v.is_empty()) {
        return std::path::Path::new(&p).is_file();
    }
    vessel_api::paths::find_in_path("passt").is_some()
        || std::path::Path::new("/usr/bin/passt").is_file()
}

/// Refuse, at create time, what rootless mode cannot do.
pub fn check_create(
    network: &str,
    aliases: &[String],
    ports: &[PortMapping],
    low_port_limit: u16,
) -> Result<(), String> {
    if network != DEFAULT_NETWORK {
        return Err(format!("network {network}: {}", networks_unavailable()));
    }
    if !aliases.is_empty() {
        return Err(
            "--network-alias is not available in rootless mode: containers do not find each other by name"
                .into(),
        );
    }
    for m in ports {
        if m.host_port != 0 && m.host_port < low_port_limit {
            return Err(format!(
                "cannot publish {m}: in rootless mode host ports are bound by an unprivileged user, \
                 and ports below {low_port_limit} need root (net.ipv4.ip_unprivileged_port_start); \
                 use a host port of {low_port_limit} or more"
            ));
        }
    }
    Ok(())
}

fn bind_addr(m: &PortMapping, port: u16) -> Result<SocketAddr, String> {
    let ip: IpAddr = if m.host_ip.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        m.host_ip
            .parse()
            .map_err(|_| format!("invalid IP address: {}", m.host_ip))?
    };
    Ok(SocketAddr::new(ip, port))
}

/// Bind (and release) `addr` to see whether passt will be able to; the port
/// actually bound (for port 0).
fn probe(addr: SocketAddr, protocol: Protocol) -> std::io::Result<u16> {
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr)?.local_addr().map(|a| a.port()),
        Protocol::Udp => UdpSocket::bind(addr)?.local_addr().map(|a| a.port()),
    }
}

/// Give every mapping one concrete, free host port (passt needs one; `0`
/// and ranges pick one now). A taken port fails with Docker's message.
pub fn resolve_ports(ports: &[PortMapping]) -> Result<Vec<PortMapping>, String> {
    let mut out: Vec<PortMapping> = Vec::new();
    for m in ports {
        let taken = |p: u16| {
            out.iter().any(|o: &PortMapping| {
                o.host_port == p && o.protocol == m.protocol && o.host_ip == m.host_ip
            })
        };
        let port =
            match m.host_port_end {
                Some(end) if end > m.host_port => (m.host_port..=end)
                    .find(|&p| {
                        !taken(p)
                            && bind_addr(m, p)
                                .ok()
                                .is_some_and(|a| probe(a, m.protocol).is_ok())
                    })
                    .ok_or_else(|| {
                        format!(
                        "Bind for {}:{}-{end} failed: every port of the range is already allocated",
                        bind_addr(m, 0).map(|a| a.ip().to_string()).unwrap_or_default(),
                        m.host_port
                    )
                    })?,
                _ => {
                    let addr = bind_addr(m, m.host_port)?;
                    probe(addr, m.protocol).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AddrInUse || taken(m.host_port) {
                            format!("Bind for {addr} failed: port is already allocated")
                        } else {
                            format!("Bind for {addr} failed: {e}")
                        }
                    })?
                }
            };
        if taken(port) {
            return Err(format!(
                "Bind for {} failed: port is already allocated",
                bind_addr(m, port)?
            ));
        }
        out.push(PortMapping {
            host_port: port,
            host_port_end: None,
            ..m.clone()
        });
    }
    Ok(out)
}

/// The DNS upstreams passt forwards to: `VESSEL_DNS_UPSTREAM` (comma
/// separated, as for vessel-network); empty means the host's resolv.conf.
pub fn dns_upstream() -> Vec<String> {
    std::env::var("VESSEL_DNS_UPSTREAM")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // vessel-network takes `IP[:PORT]`; passt takes an address only.
        .map(|s| match s.parse::<SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => s.to_string(),
        })
        .collect()
}

/// The nameservers the guest uses. passt 0.0~git20230309's
/// `--dns-forward` loses the answers (seen with a loopback and with a
/// host-address upstream), so the guest asks the upstreams itself through
/// passt's ordinary UDP path: `upstream` (else `resolv_conf`'s IPv4
/// nameservers), with `127.0.0.1` reached as the gateway (passt maps it to
/// the host's loopback); other loopback addresses (`127.0.0.53`) cannot be
/// reached and are skipped. None left: passt's forwarder address.
pub fn guest_nameservers(upstream: &[String], resolv_conf: &str) -> Vec<String> {
    use vessel_api::network::user_mode;
    let from_conf: Vec<String> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next().unwrap_or("").to_string())
        })
        .collect();
    let sources = if upstream.is_empty() {
        &from_conf
    } else {
        upstream
    };
    let mut out: Vec<String> = Vec::new();
    for s in sources {
        let Ok(ip) = s.parse::<Ipv4Addr>() else {
            continue;
        };
        let ns = if ip == Ipv4Addr::LOCALHOST {
            user_mode::GATEWAY.to_string()
        } else if ip.is_loopback() || ip.is_unspecified() {
            continue;
        } else {
            ip.to_string()
        };
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
    if out.is_empty() {
        out.push(user_mode::DNS.to_string());
    }
    out
}

/// The user-mode attachment of a container with `ports` (resolved).
pub fn attachment(network: &str, ports: Vec<PortMapping>) -> Attachment {
    let upstream = dns_upstream();
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut a = Attachment::user_mode(network, ports, upstream.clone());
    a.dns = guest_nameservers(&upstream, &conf);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_api::network::parse_port_spec;

    fn ports(specs: &[&str]) -> Vec<PortMapping> {
        specs
            .iter()
            .flat_map(|s| parse_port_spec(s).unwrap())
            .collect()
    }

    #[test]
    fn what_rootless_mode_refuses() {
        assert!(check_create("default", &[], &ports(&["127.0.0.1:18080:80"]), 1024).is_ok());
        let e = check_create("mynet", &[], &[], 1024).unwrap_err();
        assert!(
            e.starts_with(
                "network mynet: user-defined networks are not available in rootless mode"
            ),
            "{e}"
        );
        let e = check_create("default", &["db".into()], &[], 1024).unwrap_err();
        assert!(e.contains("--network-alias"), "{e}");
        let e = check_create("default", &[], &ports(&["80:80"]), 1024).unwrap_err();
        assert!(
            e.contains("cannot publish 0.0.0.0:80->80/tcp") && e.contains("below 1024"),
            "{e}"
        );
        // Any free port (0) is fine; the limit follows the sysctl.
        assert!(check_create("default", &[], &ports(&["80"]), 1024).is_ok());
        assert!(check_create("default", &[], &ports(&["80:80"]), 80).is_ok());
    }

    #[test]
    fn ports_are_resolved_and_taken_ones_refused() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = held.local_addr().unwrap().port();
        let e = resolve_ports(&ports(&[&format!("127.0.0.1:{p}:80")])).unwrap_err();
        assert_eq!(
            e,
            format!("Bind for 127.0.0.1:{p} failed: port is already allocated")
        );
        // UDP on the same number is free.
        let r = resolve_ports(&ports(&[&format!("127.0.0.1:{p}:53/udp")])).unwrap();
        assert_eq!(r[0].host_port, p);

        let r = resolve_ports(&ports(&["127.0.0.1::80", "127.0.0.1::81"])).unwrap();
        assert!(r
            .iter()
            .all(|m| m.host_port != 0 && m.host_port_end.is_none()));
        assert_ne!(r[0].host_port, r[1].host_port);

        // A range skips the held port.
        let r = resolve_ports(&ports(&[&format!("127.0.0.1:{p}-{}:80", p + 20)])).unwrap();
        assert!(r[0].host_port > p && r[0].host_port <= p + 20);
        assert_eq!(r[0].host_port_end, None);
    }

    #[test]
    fn guest_nameservers_reach_the_upstreams() {
        let conf =
            "# x\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nnameserver ::1\nsearch lan\n";
        assert_eq!(guest_nameservers(&[], conf), vec!["192.0.2.53"]);
        assert_eq!(
            guest_nameservers(&["127.0.0.1".into(), "198.51.100.1".into()], conf),
            vec!["10.0.2.2", "198.51.100.1"]
        );
        // Only systemd-resolved's stub: passt's forwarder is all there is.
        assert_eq!(
            guest_nameservers(&[], "nameserver 127.0.0.53\n"),
            vec!["10.0.2.3"]
        );
        assert_eq!(guest_nameservers(&[], ""), vec!["10.0.2.3"]);
    }

    #[test]
    fn dns_upstream_from_the_environment_drops_ports() {
        // Only this test touches the variable.
        std::env::set_var("VESSEL_DNS_UPSTREAM", "127.0.0.1:5353, 192.0.2.53");
        assert_eq!(dns_upstream(), vec!["127.0.0.1", "192.0.2.53"]);
        std::env::remove_var("VESSEL_DNS_UPSTREAM");
        assert!(dns_upstream().is_empty());
    }
}
