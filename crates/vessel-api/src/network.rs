//! Networking documents shared by `vessel-network`, the apiserver, the
//! runtime helper and the CLI, and the parser of Docker's `-p` syntax.
//!
//! The apiserver asks `vessel-network` to connect a container to a network
//! ([`ConnectRequest`] → [`Attachment`]), writes the attachments to
//! `containers/<id>/network.json` ([`ContainerNetworks`]), and the runtime
//! helper reads that file to give QEMU one TAP-backed virtio-net device per
//! attachment and vminitd the guest side ([`ContainerNetworks::guest_config`]).

use agent_protocol::{HostEntry, InterfaceConfig, NetworkConfig};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The network containers join when `--network` is not given.
pub const DEFAULT_NETWORK: &str = "default";
/// `--network none`: no network device at all.
pub const NO_NETWORK: &str = "none";
/// The file, in a container's directory, that lists its attachments.
pub const NETWORK_FILE: &str = "network.json";

/// The socket of `vessel-network` (`VESSEL_HOME/network.sock`, 0600).
pub fn socket_path(home: &crate::paths::Home) -> PathBuf {
    home.root().join("network.sock")
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One published port: host address and port → container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on; empty means every address (`0.0.0.0`).
    #[serde(default)]
    pub host_ip: String,
    /// The host port; 0 means "any free port" (the answer holds the one taken).
    pub host_port: u16,
    /// When set, any free host port in `host_port..=host_port_end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = if self.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.host_ip
        };
        let ip = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        write!(
            f,
            "{ip}:{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// A `-p` value that does not parse; the messages follow Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    #[error("invalid port format for --publish: {0}")]
    Format(String),
    #[error("invalid IP address: {0}")]
    Ip(String),
    #[error("invalid containerPort: {0}")]
    ContainerPort(String),
    #[error("invalid hostPort: {0}")]
    HostPort(String),
    #[error("invalid proto: {0}")]
    Proto(String),
    #[error("no port specified: {0}<empty>")]
    NoPort(String),
    #[error("invalid ranges specified for container and host Ports: {0}")]
    Ranges(String),
}

/// Parse `PORT`, `RANGE` or `START-END` into an inclusive range.
fn parse_range(s: &str) -> Option<(u16, u16)> {
    let num = |t: &str| -> Option<u16> {
        if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    match s.split_once('-') {
        None => num(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// Parse one `-p` value, Docker's syntax:
/// `[IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]`, where the ports may be
/// ranges `START-END` of equal length (or a host range with one container
/// port: any free port of the range), the IP may be `[v6]`, and an empty
/// HOSTPORT (`127.0.0.1::80`) means any free port.
pub fn parse_port_spec(spec: &str) -> Result<Vec<PortMapping>, PortSpecError> {
    let (raw, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p),
        None => (spec, "tcp"),
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(PortSpecError::Proto(proto.to_string())),
    };
    // An IPv6 address comes in brackets and contains colons.
    let (ip, rest) = if let Some(r) = raw.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| PortSpecError::Format(spec.to_string()))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| PortSpecError::Format(spec.to_string()))?;
        (Some(ip.to_string()), after.to_string())
    } else {
        let parts: Vec<&str> = raw.split(':').collect();
        match parts.len() {
            1 | 2 => (None, raw.to_string()),
            3 => (
                Some(parts[0].to_string()),
                format!("{}:{}", parts[1], parts[2]),
            ),
            _ => return Err(PortSpecError::Format(spec.to_string())),
        }
    };
    let host_ip = match ip {
        None => String::new(),
        Some(ip) if ip.is_empty() => String::new(),
        Some(ip) => {
            let parsed: IpAddr = ip.parse().map_err(|_| PortSpecError::Ip(ip.clone()))?;
            parsed.to_string()
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (h.to_string(), c.to_string()),
        None => (String::new(), rest.clone()),
    };
    if container.is_empty() {
        return Err(PortSpecError::NoPort(spec.to_string()));
    }
    let (c_start, c_end) =
        parse_range(&container).ok_or_else(|| PortSpecError::ContainerPort(container.clone()))?;
    if c_start == 0 {
        return Err(PortSpecError::ContainerPort(container));
    }
    let (h_start, h_end) = if host.is_empty() {
        (0, 0)
    } else {
        parse_range(&host).ok_or_else(|| PortSpecError::HostPort(host.clone()))?
    };
    let c_len = c_end - c_start;
    let h_len = h_end - h_start;
    let mapping = |h: u16, h_end: Option<u16>, c: u16| PortMapping {
        host_ip: host_ip.clone(),
        host_port: h,
        host_port_end: h_end,
        container_port: c,
        protocol,
    };
    if host.is_empty() {
        return Ok((c_start..=c_end).map(|c| mapping(0, None, c)).collect());
    }
    if c_len == 0 && h_len > 0 {
        return Ok(vec![mapping(h_start, Some(h_end), c_start)]);
    }
    if c_len != h_len {
        return Err(PortSpecError::Ranges(spec.to_string()));
    }
    if h_start == 0 && c_len > 0 {
        return Err(PortSpecError::HostPort(host));
    }
    Ok((0..=c_len)
        .map(|i| mapping(h_start + i, None, c_start + i))
        .collect())
}

/// `POST /networks` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkCreateRequest {
    pub name: String,
    /// `A.B.C.D/N`; chosen by the helper when absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Defaults to the first host address of the subnet.
    #[serde(default)]
    pub gateway: Option<String>,
    /// No masquerade and no forwarding out of the network.
    #[serde(default)]
    pub internal: bool,
}

/// One container on a network, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub container_id: String,
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub tap: String,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// A network as `GET /networks` and `GET /networks/<name>` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    /// `A.B.C.D/N`.
    pub subnet: String,
    pub gateway: String,
    /// The Linux bridge on the host.
    pub bridge: String,
    pub internal: bool,
    pub created_ms: u64,
    #[serde(default)]
    pub containers: Vec<EndpointInfo>,
}

/// `POST /networks/<name>/connect` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConnectRequest {
    pub container_id: String,
    /// The container's name: resolvable by the other containers.
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    /// `--network-alias` values.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports (from [`parse_port_spec`]).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// `POST /networks/<name>/disconnect` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DisconnectRequest {
    pub container_id: String,
}

/// `POST /reconcile` body: the containers whose VMs may still run. Every
/// attachment of any other container is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReconcileRequest {
    pub live: Vec<String>,
}

/// `POST /reconcile` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReconcileReport {
    /// `network/container id` of each attachment removed.
    pub removed: Vec<String>,
    /// Devices removed that no attachment claimed.
    pub removed_devices: Vec<String>,
}

/// `POST /networks/prune` answer and `DELETE` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemovedNetworks {
    pub removed: Vec<String>,
}

/// How a container VM's network device reaches its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentMode {
    /// A TAP device on a vessel-network bridge (root mode).
    #[default]
    Bridge,
    /// A user-mode network of its own, served by a `passt` process the
    /// runtime helper starts next to QEMU (rootless mode): outbound traffic
    /// and published ports only.
    User,
}

impl AttachmentMode {
    pub fn is_bridge(&self) -> bool {
        *self == AttachmentMode::Bridge
    }
}

impl fmt::Display for AttachmentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachmentMode::Bridge => "bridge",
            AttachmentMode::User => "user",
        })
    }
}

/// The private network `passt` gives each VM in rootless mode (slirp's
/// usual addresses): every VM has the same address on its own network.
pub mod user_mode {
    /// The guest's address.
    pub const GUEST_IP: &str = "10.0.2.15";
    pub const PREFIX_LEN: u8 = 24;
    /// The gateway; connections to it reach the host's loopback.
    pub const GATEWAY: &str = "10.0.2.2";
    /// passt forwards DNS queries to this address to the host's resolver.
    pub const DNS: &str = "10.0.2.3";
    /// The guest's MAC address.
    pub const MAC: &str = "02:76:0a:00:02:0f";
    /// `network_id` of a user-mode attachment.
    pub const NETWORK_ID: &str = "passt";
}

/// A container's place on one network: what the connect call answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub network_id: String,
    /// The host TAP device the VMM opens (`-netdev tap,ifname=...`).
    pub tap: String,
    pub mac: String,
    pub ip: String,
    pub prefix_len: u8,
    pub gateway: String,
    /// Nameservers for the guest: the gateway (vessel-network's resolver).
    pub dns: Vec<String>,
    /// Published ports with the host ports actually bound.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    pub internal: bool,
    /// `bridge` (absent in older files) or `user` (rootless, passt).
    #[serde(default, skip_serializing_if = "AttachmentMode::is_bridge")]
    pub mode: AttachmentMode,
    /// User mode: the resolvers passt forwards the guest's DNS queries to;
    /// empty means the host's `/etc/resolv.conf`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_upstream: Vec<String>,
    /// Bridge mode: the network namespace (a path such as
    /// `/var/run/netns/X`) the TAP lives in, when not the runtime's own
    /// (a containerd task's CNI namespace); the runtime attaches to the TAP
    /// from inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The guest interface's MTU; the device default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Attachment {
    /// A user-mode (passt) attachment to network `network` with published
    /// `ports` (each with a concrete host port).
    pub fn user_mode(network: &str, ports: Vec<PortMapping>, dns_upstream: Vec<String>) -> Self {
        Attachment {
            network: network.to_string(),
            network_id: user_mode::NETWORK_ID.to_string(),
            tap: String::new(),
            mac: user_mode::MAC.to_string(),
            ip: user_mode::GUEST_IP.to_string(),
            prefix_len: user_mode::PREFIX_LEN,
            gateway: user_mode::GATEWAY.to_string(),
            dns: vec![user_mode::DNS.to_string()],
            ports,
            internal: false,
            mode: AttachmentMode::User,
            dns_upstream,
            netns: None,
            mtu: None,
        }
    }
}

/// `containers/<id>/network.json`, written by the apiserver, read by the
/// runtime helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerNetworks {
    pub attachments: Vec<Attachment>,
}

impl ContainerNetworks {
    /// Where the file of container `id` lives.
    pub fn path(container_dir: &Path) -> PathBuf {
        container_dir.join(NETWORK_FILE)
    }

    /// Read a container's attachments; `None` when it has no network.
    pub fn read(container_dir: &Path) -> std::io::Result<Option<Self>> {
        crate::fsutil::read_json(&Self::path(container_dir))
    }

    /// Write them atomically.
    pub fn write(&self, container_dir: &Path) -> std::io::Result<()> {
        crate::fsutil::write_json_atomic(&Self::path(container_dir), self)
    }

    /// What vminitd needs: the interfaces, the nameservers, `/etc/hosts`
    /// lines for the container's own names.
    pub fn guest_config(&self, hostname: &str, name: &str) -> Option<NetworkConfig> {
        if self.attachments.is_empty() {
            return None;
        }
        let mut cfg = NetworkConfig::default();
        let mut has_route = false;
        for a in &self.attachments {
            let gateway = (!has_route && !a.gateway.is_empty()).then(|| a.gateway.clone());
            has_route |= gateway.is_some();
            cfg.interfaces.push(InterfaceConfig {
                mac: a.mac.clone(),
                address: a.ip.clone(),
                prefix_len: a.prefix_len,
                gateway,
                mtu: a.mtu,
            });
            for d in &a.dns {
                if !cfg.nameservers.contains(d) {
                    cfg.nameservers.push(d.clone());
                }
            }
        }
        if let Some(first) = self.attachments.first() {
            let mut names = Vec::new();
            for n in [hostname, name] {
                if !n.is_empty() && !names.iter().any(|x: &String| x == n) {
                    names.push(n.to_string());
                }
            }
            if !names.is_empty() {
                cfg.hosts.push(HostEntry {
                    address: first.ip.clone(),
                    names,
                });
            }
        }
        Some(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortMapping {
        let v = parse_port_spec(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v.into_iter().next().unwrap()
    }

    #[test]
    fn port_specs_parse_like_docker() {
        let m = one("127.0.0.1:18080:80");
        assert_eq!(
            (
                m.host_ip.as_str(),
                m.host_port,
                m.container_port,
                m.protocol
            ),
            ("127.0.0.1", 18080, 80, Protocol::Tcp)
        );
        let m = one("8080:80/udp");
        assert_eq!(
            (m.host_ip.as_str(), m.host_port, m.protocol),
            ("", 8080, Protocol::Udp)
        );
        let m = one("80");
        assert_eq!((m.host_port, m.container_port), (0, 80));
        let m = one("127.0.0.1::53/UDP");
        assert_eq!(
            (m.host_port, m.container_port, m.protocol),
            (0, 53, Protocol::Udp)
        );
        let m = one("[::1]:8443:443");
        assert_eq!((m.host_ip.as_str(), m.host_port), ("::1", 8443));
        assert_eq!(m.to_string(), "[::1]:8443->443/tcp");
        let v = parse_port_spec("8000-8002:9000-9002").unwrap();
        assert_eq!(
            v.iter()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>(),
            vec![(8000, 9000), (8001, 9001), (8002, 9002)]
        );
        let m = one("8000-8010:80");
        assert_eq!((m.host_port, m.host_port_end), (8000, Some(8010)));
        assert_eq!(parse_port_spec("7000-7001").unwrap().len(), 2);
        assert_eq!(one(":80").host_port, 0);
    }

    #[test]
    fn bad_port_specs_name_the_problem() {
        use PortSpecError::*;
        let cases = [
            ("80/sctpx", Proto("sctpx".into())),
            ("abc", ContainerPort("abc".into())),
            ("x:80", HostPort("x".into())),
            ("1.2.3:80:80", Ip("1.2.3".into())),
            ("8080:", NoPort("8080:".into())),
            ("1:2:3:4", Format("1:2:3:4".into())),
            ("8000-8001:80-82", Ranges("8000-8001:80-82".into())),
            ("70000:80", HostPort("70000".into())),
            ("80:0", ContainerPort("0".into())),
            ("90-80", ContainerPort("90-80".into())),
            ("[::1:80:80", Format("[::1:80:80".into())),
            ("+80", ContainerPort("+80".into())),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_port_spec(spec), Err(want), "{spec}");
        }
        assert_eq!(
            parse_port_spec("x:80").unwrap_err().to_string(),
            "invalid hostPort: x"
        );
    }

    #[test]
    fn guest_config_routes_through_the_first_network() {
        let att = |net: &str, ip: &str, gw: &str| Attachment {
            network: net.into(),
            network_id: "id".into(),
            tap: "vsl0".into(),
            mac: "02:76:0a:00:00:02".into(),
            ip: ip.into(),
            prefix_len: 24,
            gateway: gw.into(),
            dns: vec![gw.into()],
            ports: vec![],
            internal: false,
            mode: AttachmentMode::Bridge,
            dns_upstream: vec![],
            netns: None,
            mtu: None,
        };
        let n = ContainerNetworks {
            attachments: vec![
                att("a", "10.1.0.2", "10.1.0.1"),
                att("b", "10.2.0.2", "10.2.0.1"),
            ],
        };
        let g = n.guest_config("h", "web").unwrap();
        assert_eq!(g.interfaces[0].gateway.as_deref(), Some("10.1.0.1"));
        assert_eq!(g.interfaces[1].gateway, None);
        assert_eq!(g.nameservers, vec!["10.1.0.1", "10.2.0.1"]);
        assert_eq!(g.hosts[0].names, vec!["h", "web"]);
        assert!(ContainerNetworks::default()
            .guest_config("h", "n")
            .is_none());
    }

    #[test]
    fn attachment_mode_is_compatible_with_older_files() {
        let old = r#"{"network":"default","network_id":"n","tap":"vsl0","mac":"02:76:0a:58:00:02",
            "ip":"10.88.0.2","prefix_len":24,"gateway":"10.88.0.1","dns":["10.88.0.1"],"internal":false}"#;
        let a: Attachment = serde_json::from_str(old).unwrap();
        assert_eq!(a.mode, AttachmentMode::Bridge);
        assert!(a.dns_upstream.is_empty());
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("mode") && !text.contains("dns_upstream"));

        let u = Attachment::user_mode("default", vec![], vec!["127.0.0.1".into()]);
        let text = serde_json::to_string(&u).unwrap();
        assert!(text.contains(r#""mode":"user""#), "{text}");
        let back: Attachment = serde_json::from_str(&text).unwrap();
        assert_eq!(back, u);
        let g = ContainerNetworks {
            attachments: vec![u],
        }
        .guest_config("h", "web")
        .unwrap();
        assert_eq!(g.interfaces[0].address, "10.0.2.15");
        assert_eq!(g.interfaces[0].gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(g.nameservers, vec!["10.0.2.3"]);
    }
}
