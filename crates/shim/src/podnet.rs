//! A task's network namespace reaching its VM, as Kata's "tcfilter" model
//! does: when config.json names a network namespace (what CNI gives a pod,
//! or `ctr run --with-ns network:PATH`), the shim
//!
//! 1. reads, inside that namespace, the CNI interface (`eth0`, or the one
//!    non-loopback interface with an IPv4 address): its address, prefix,
//!    MAC, MTU, and the default gateway ([`Link::pick`], [`default_gateway`]);
//! 2. makes a TAP there ([`TAP`]) with the same MTU, and joins the two with
//!    tc: an ingress qdisc on each and a `u32 match u32 0 0` filter whose
//!    action redirects every frame to the other's egress;
//! 3. writes the attachment the runtime reads (`network.json`): the TAP, its
//!    namespace, and the guest side (the interface's MAC, so the neighbour
//!    entries and the bridge's forwarding table CNI set up stay right;
//!    its address and gateway).
//!
//! [`teardown`] removes the TAP and the interface's ingress qdisc (with its
//! filter); the namespace belongs to whoever made it. Every command runs
//! through [`NetnsExec`], so the sequence is unit-tested with a fake.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use vessel_api::network::{Attachment, AttachmentMode};

/// The TAP the shim makes in the task's namespace (one VM per namespace).
pub const TAP: &str = "vsl-tap0";
/// The attachment's network name (`vessel inspect`-style logs show it).
pub const NETWORK: &str = "cni";
/// What the shim records to undo its work (`containers/<id>/podnet.json`).
pub const RECORD: &str = "podnet.json";

/// Errors wiring a namespace to the VM.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("Could not run `{0}` in the network namespace")]
    Spawn(String, #[source] std::io::Error),
    #[error("`{0}` failed in the network namespace: {1}")]
    Failed(String, String),
    #[error("Unexpected output from `{0}`")]
    Parse(String, #[source] serde_json::Error),
    #[error(
        "The network namespace has no interface with an IPv4 address (eth0, or one other than lo); did the CNI plugin run?"
    )]
    NoInterface,
    #[error("The network namespace has several interfaces with an IPv4 address ({0}) and no eth0")]
    Ambiguous(String),
    #[error(
        "The network namespace already has {TAP}: another task's VM uses it (one VM per network namespace)"
    )]
    InUse,
}

/// Runs a command inside one network namespace and returns its stdout.
pub trait NetnsExec {
    fn run(&self, args: &[&str]) -> Result<String, PodNetError>;
}

/// The real one: `nsenter --net=PATH -- ARGS` (the shim's own threads stay
/// in the host namespace).
pub struct Nsenter(pub PathBuf);

impl NetnsExec for Nsenter {
    fn run(&self, args: &[&str]) -> Result<String, PodNetError> {
        let shown = args.join(" ");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.0.display()))
            .arg("--")
            .args(args)
            .output()
            .map_err(|e| PodNetError::Spawn(shown.clone(), e))?;
        if !out.status.success() {
            return Err(PodNetError::Failed(
                shown,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One interface of `ip -j addr show`.
#[derive(Debug, Clone, Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
struct IpAddr {
    #[serde(default)]
    family: String,
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
}

/// The CNI interface, as read in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub ip: String,
    pub prefix_len: u8,
}

impl Link {
    /// The CNI interface in `ip -j addr show`'s output: `eth0` when it has
    /// an IPv4 address, else the one non-loopback interface that has one.
    /// A namespace that has the shim's TAP already is another VM's.
    pub fn pick(ip_addr_json: &str) -> Result<Link, PodNetError> {
        let links: Vec<IpLink> = serde_json::from_str(ip_addr_json)
            .map_err(|e| PodNetError::Parse("ip -j addr show".into(), e))?;
        if links.iter().any(|l| l.ifname == TAP) {
            return Err(PodNetError::InUse);
        }
        let usable: Vec<Link> = links
            .iter()
            .filter(|l| l.link_type != "loopback" && l.ifname != "lo")
            .filter_map(|l| {
                let a = l.addr_info.iter().find(|a| a.family == "inet")?;
                Some(Link {
                    name: l.ifname.clone(),
                    mac: l.address.clone()?,
                    mtu: l.mtu,
                    ip: a.local.clone(),
                    prefix_len: a.prefixlen,
                })
            })
            .collect();
        if let Some(eth0) = usable.iter().find(|l| l.name == "eth0") {
            return Ok(eth0.clone());
        }
        match usable.len() {
            0 => Err(PodNetError::NoInterface),
            1 => Ok(usable[0].clone()),
            _ => Err(PodNetError::Ambiguous(
                usable
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }
}

/// The IPv4 default route's gateway in `ip -j route show default`'s
/// output (none: the guest gets no default route).
pub fn default_gateway(route_json: &str) -> Result<Option<String>, PodNetError> {
    #[derive(Deserialize)]
    struct Route {
        #[serde(default)]
        gateway: Option<String>,
    }
    let routes: Vec<Route> = serde_json::from_str(route_json)
        .map_err(|e| PodNetError::Parse("ip -j route show default".into(), e))?;
    Ok(routes.into_iter().find_map(|r| r.gateway))
}

/// The nameservers of a resolv.conf (what CRI mounts on `/etc/resolv.conf`).
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect()
}

/// What [`teardown`] needs: kept in the task's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    pub netns: PathBuf,
    /// The CNI interface whose ingress qdisc the shim added.
    pub link: String,
    pub tap: String,
}

impl Wiring {
    pub fn write(&self, container_dir: &Path) -> std::io::Result<()> {
        vessel_api::fsutil::write_json_atomic(&container_dir.join(RECORD), self)
    }

    pub fn read(container_dir: &Path) -> Option<Wiring> {
        vessel_api::fsutil::read_json(&container_dir.join(RECORD))
            .ok()
            .flatten()
    }
}

/// Wire the namespace `netns` (reached through `ns`) to a VM: the TAP and
/// the tc redirects; the attachment for the runtime. On an error, what was
/// made is removed again.
pub fn setup(
    ns: &dyn NetnsExec,
    netns: &Path,
    dns: Vec<String>,
) -> Result<(Attachment, Wiring), PodNetError> {
    let link = Link::pick(&ns.run(&["ip", "-j", "addr", "show"])?)?;
    let gateway = default_gateway(&ns.run(&["ip", "-j", "-4", "route", "show", "default"])?)?;
    let wiring = Wiring {
        netns: netns.to_path_buf(),
        link: link.name.clone(),
        tap: TAP.to_string(),
    };
    if let Err(e) = connect(ns, &link) {
        teardown(ns, &wiring);
        return Err(e);
    }
    let attachment = Attachment {
        network: NETWORK.to_string(),
        network_id: NETWORK.to_string(),
        tap: TAP.to_string(),
        mac: link.mac.clone(),
        ip: link.ip.clone(),
        prefix_len: link.prefix_len,
        gateway: gateway.unwrap_or_default(),
        dns,
        ports: Vec::new(),
        internal: false,
        mode: AttachmentMode::Bridge,
        dns_upstream: Vec::new(),
        netns: Some(netns.to_path_buf()),
        mtu: link.mtu,
    };
    Ok((attachment, wiring))
}

/// The TAP, and the redirects both ways.
fn connect(ns: &dyn NetnsExec, link: &Link) -> Result<(), PodNetError> {
    ns.run(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])?;
    if let Some(mtu) = link.mtu {
        ns.run(&["ip", "link", "set", "dev", TAP, "mtu", &mtu.to_string()])?;
    }
    ns.run(&["ip", "link", "set", "dev", TAP, "up"])?;
    for (from, to) in [(link.name.as_str(), TAP), (TAP, link.name.as_str())] {
        ns.run(&["tc", "qdisc", "add", "dev", from, "ingress"])?;
        ns.run(&[
            "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ])?;
    }
    Ok(())
}

/// Undo [`setup`]: the TAP (its qdisc goes with it) and the interface's
/// ingress qdisc (with the filter). Failures are logged: a namespace
/// already gone took both with it.
pub fn teardown(ns: &dyn NetnsExec, wiring: &Wiring) {
    for args in [
        &["tc", "qdisc", "del", "dev", wiring.link.as_str(), "ingress"][..],
        &["ip", "link", "del", "dev", wiring.tap.as_str()][..],
    ] {
        if let Err(e) = ns.run(args) {
            log::debug!("network namespace {}: {e}", wiring.netns.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":2,"link_index":9,"ifname":"eth0","mtu":1450,"link_type":"ether",
       "address":"4a:1c:2e:aa:bb:01",
       "addr_info":[{"family":"inet","local":"10.231.7.5","prefixlen":24},
                    {"family":"inet6","local":"fe80::1","prefixlen":64}]}
    ]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"10.231.7.1","dev":"eth0"}]"#;

    /// Records the commands; answers `ip -j` with canned output; fails the
    /// command that starts with `fail`.
    struct Fake {
        ran: RefCell<Vec<String>>,
        fail: Option<&'static str>,
    }

    impl Fake {
        fn new(fail: Option<&'static str>) -> Self {
            Fake {
                ran: RefCell::new(Vec::new()),
                fail,
            }
        }
    }

    impl NetnsExec for Fake {
        fn run(&self, args: &[&str]) -> Result<String, PodNetError> {
            let line = args.join(" ");
            self.ran.borrow_mut().push(line.clone());
            if self.fail.is_some_and(|f| line.starts_with(f)) {
                return Err(PodNetError::Failed(
                    line,
                    "RTNETLINK answers: File exists".into(),
                ));
            }
            Ok(match line.as_str() {
                "ip -j addr show" => ADDRS.into(),
                "ip -j -4 route show default" => ROUTES.into(),
                _ => String::new(),
            })
        }
    }

    #[test]
    fn the_cni_interface_is_eth0_or_the_only_one_with_ipv4() {
        let l = Link::pick(ADDRS).unwrap();
        assert_eq!(
            l,
            Link {
                name: "eth0".into(),
                mac: "4a:1c:2e:aa:bb:01".into(),
                mtu: Some(1450),
                ip: "10.231.7.5".into(),
                prefix_len: 24,
            }
        );
        let one = ADDRS.replace("\"eth0\"", "\"net1\"");
        assert_eq!(Link::pick(&one).unwrap().name, "net1");
        let two = r#"[
          {"ifname":"a","address":"02:00:00:00:00:01","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24}]},
          {"ifname":"b","address":"02:00:00:00:00:02","addr_info":[{"family":"inet","local":"10.0.1.2","prefixlen":24}]}
        ]"#;
        assert!(matches!(Link::pick(two), Err(PodNetError::Ambiguous(s)) if s == "a, b"));
        let none = r#"[{"ifname":"lo","link_type":"loopback","addr_info":[]}]"#;
        assert!(matches!(Link::pick(none), Err(PodNetError::NoInterface)));
        assert!(matches!(
            Link::pick("not json"),
            Err(PodNetError::Parse(..))
        ));
        let taken = ADDRS.replace("\"lo\"", "\"vsl-tap0\"");
        assert!(matches!(Link::pick(&taken), Err(PodNetError::InUse)));
    }

    #[test]
    fn gateway_and_nameservers_are_read() {
        assert_eq!(
            default_gateway(ROUTES).unwrap().as_deref(),
            Some("10.231.7.1")
        );
        assert_eq!(default_gateway("[]").unwrap(), None);
        assert_eq!(
            nameservers(
                "search x\nnameserver 10.96.0.10\nnameserver fe80::1\n#nameserver 1.1.1.1\n"
            ),
            vec!["10.96.0.10"]
        );
    }

    #[test]
    fn setup_makes_the_tap_and_redirects_both_ways() {
        let ns = Fake::new(None);
        let (a, w) = setup(
            &ns,
            Path::new("/var/run/netns/p"),
            vec!["10.96.0.10".into()],
        )
        .unwrap();
        assert_eq!(
            *ns.ran.borrow(),
            vec![
                "ip -j addr show",
                "ip -j -4 route show default",
                "ip tuntap add dev vsl-tap0 mode tap",
                "ip link set dev vsl-tap0 mtu 1450",
                "ip link set dev vsl-tap0 up",
                "tc qdisc add dev eth0 ingress",
                "tc filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev vsl-tap0",
                "tc qdisc add dev vsl-tap0 ingress",
                "tc filter add dev vsl-tap0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev eth0",
            ]
        );
        assert_eq!(a.tap, TAP);
        assert_eq!(a.mac, "4a:1c:2e:aa:bb:01");
        assert_eq!((a.ip.as_str(), a.prefix_len), ("10.231.7.5", 24));
        assert_eq!(a.gateway, "10.231.7.1");
        assert_eq!(a.mtu, Some(1450));
        assert_eq!(a.netns.as_deref(), Some(Path::new("/var/run/netns/p")));
        assert_eq!(a.dns, vec!["10.96.0.10"]);
        assert_eq!(w.link, "eth0");
        let g = vessel_api::network::ContainerNetworks {
            attachments: vec![a],
        }
        .guest_config("", "")
        .unwrap();
        assert_eq!(g.interfaces[0].gateway.as_deref(), Some("10.231.7.1"));
        assert_eq!(g.interfaces[0].mtu, Some(1450));
    }

    #[test]
    fn a_failed_setup_removes_what_it_made() {
        let ns = Fake::new(Some("tc filter add dev vsl-tap0"));
        let e = setup(&ns, Path::new("/var/run/netns/p"), vec![]).unwrap_err();
        assert!(e.to_string().contains("tc filter add dev vsl-tap0"), "{e}");
        let ran = ns.ran.borrow();
        assert_eq!(
            ran[ran.len() - 2..],
            ["tc qdisc del dev eth0 ingress", "ip link del dev vsl-tap0"]
        );
    }
}
