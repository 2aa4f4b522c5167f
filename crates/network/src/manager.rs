//! The networks of one instance: records under `VESSEL_HOME/networks`,
//! their bridges, TAP devices, leases, DNS servers, port proxies and
//! nftables rules, kept consistent under one lock.

use crate::dns::{self, DnsServer, Names};
use crate::netlink::Netlink;
use crate::nft::{self, NetRules, BRIDGE_PREFIX};
use crate::ports::{self, PortError, Proxy};
use crate::subnet::{self, Ipv4Net, SubnetError};
use crate::tap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use vessel_api::error::{error_chain, ErrorBody, ErrorKind};
use vessel_api::fsutil::{random_hex, read_json, write_json_atomic};
use vessel_api::network::{
    Attachment, ConnectRequest, EndpointInfo, NetworkCreateRequest, NetworkInfo, PortMapping,
    ReconcileReport, DEFAULT_NETWORK, NO_NETWORK,
};
use vessel_api::paths::Home;
use vessel_api::types::{now_ms, ContainerState, Status};

/// A network as stored in `networks/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub internal: bool,
    pub created_ms: u64,
    /// Leases: container id → its endpoint.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// One container's lease and devices on a network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub container_id: String,
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub tap: String,
    /// With the host ports actually bound.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// Errors of network operations, each of an [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {0} not found; list networks with `vessel network ls`, or create it with `vessel network create {0}`")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("network {0} has active endpoints ({1})")]
    InUse(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("{0}")]
    Io(String, #[source] io::Error),
}

impl NetError {
    /// The kind of error answer this is (and so its HTTP status).
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetError::NotFound(_) => ErrorKind::NetworkNotFound,
            NetError::InUse(..) => ErrorKind::InUse,
            NetError::Exists(_) | NetError::Conflict(_) => ErrorKind::Conflict,
            NetError::Invalid(_) => ErrorKind::InvalidArgument,
            NetError::Subnet(SubnetError::Exhausted) => ErrorKind::Internal,
            NetError::Subnet(_) => ErrorKind::InvalidArgument,
            NetError::Port(PortError::Allocated(_) | PortError::RangeFull(_)) => {
                ErrorKind::Conflict
            }
            NetError::Port(PortError::HostIp(_)) => ErrorKind::InvalidArgument,
            NetError::Port(PortError::Bind(..)) | NetError::Io(..) => ErrorKind::Internal,
        }
    }

    /// The error answer: kind, message with its causes, and for a missing
    /// network its name.
    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.kind(), error_chain(self));
        match self {
            NetError::NotFound(name) => body.with_name(name.clone()),
            _ => body,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Io(what, e)
}

/// How the manager is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub home: Home,
    /// Subnet of the `default` network when it is created.
    pub default_subnet: Option<String>,
    /// Where unknown names are resolved.
    pub upstreams: Vec<SocketAddr>,
    /// The nftables table of this instance.
    pub table: String,
}

impl Options {
    /// Defaults for `home`: the host's resolvers, a table named after the home.
    pub fn new(home: Home) -> Self {
        let table = table_name(&home);
        Self {
            home,
            default_subnet: None,
            upstreams: dns::host_upstreams(std::path::Path::new("/etc/resolv.conf")),
            table,
        }
    }
}

/// `vessel_<hash of VESSEL_HOME>`: one table per instance.
pub fn table_name(home: &Home) -> String {
    let h = Sha256::digest(home.root().as_os_str().as_encoded_bytes());
    format!("vessel_{}", &hex::encode(h)[..10])
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The TAP of `container_id` on network `network_id`: `vsl` + 8 characters
/// of the container id + 4 of the network id (15, the limit).
pub fn tap_name(container_id: &str, network_id: &str) -> String {
    let c: String = container_id.chars().take(8).collect();
    let n: String = network_id.chars().take(4).collect();
    format!("vsl{c}{n}")
}

struct Running {
    dns: Option<DnsServer>,
    names: Names,
}

struct State {
    nl: Netlink,
    nets: BTreeMap<String, NetworkRecord>,
    running: HashMap<String, Running>,
    /// (network name, container id) → its port proxies.
    proxies: HashMap<(String, String), Vec<Proxy>>,
}

/// All networks of one instance.
pub struct Manager {
    opts: Options,
    upstreams: Arc<Vec<SocketAddr>>,
    state: Mutex<State>,
}

impl Manager {
    fn dir(&self) -> PathBuf {
        self.opts.home.root().join("networks")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.json"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Load the records and bring the host in line with them: bridges,
    /// addresses, DNS servers, proxies, rules; then drop the leases of
    /// containers that are gone.
    pub fn open(opts: Options) -> Result<Self, NetError> {
        let nl = Netlink::open().map_err(io_err("cannot open a netlink socket"))?;
        let m = Manager {
            upstreams: Arc::new(opts.upstreams.clone()),
            opts,
            state: Mutex::new(State {
                nl,
                nets: BTreeMap::new(),
                running: HashMap::new(),
                proxies: HashMap::new(),
            }),
        };
        std::fs::create_dir_all(m.dir()).map_err(io_err("cannot create the networks directory"))?;
        // A helper killed mid-save left its temporary copy: never read, but
        // not to be kept either.
        let stale = vessel_api::fsutil::remove_atomic_temporaries(&m.dir());
        if stale > 0 {
            eprintln!("vessel-network: removed {stale} temporary file(s) a killed helper left");
        }
        let mut nets = BTreeMap::new();
        let entries =
            std::fs::read_dir(m.dir()).map_err(io_err("cannot read the networks directory"))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match read_json::<NetworkRecord>(&p) {
                Ok(Some(r)) => {
                    nets.insert(r.name.clone(), r);
                }
                Ok(None) => {}
                Err(e) => eprintln!("vessel-network: ignoring {}: {e}", p.display()),
            }
        }
        {
            let mut st = m.lock();
            st.nets = nets;
            let names: Vec<String> = st.nets.keys().cloned().collect();
            for name in names {
                if let Err(e) = m.bring_up(&mut st, &name) {
                    eprintln!("vessel-network: network {name}: {e}");
                }
                let eps: Vec<Endpoint> = st.nets[&name].endpoints.values().cloned().collect();
                for ep in eps {
                    m.start_proxies(&mut st, &name, &ep);
                }
            }
            m.apply_rules(&st)?;
        }
        let report = m.reconcile(None)?;
        for r in &report.removed {
            eprintln!("vessel-network: removed the stale attachment {r}");
        }
        for d in &report.removed_devices {
            eprintln!("vessel-network: removed the stray device {d}");
        }
        Ok(m)
    }

    /// The bridge with its address, up, and its DNS server.
    fn bring_up(&self, st: &mut State, name: &str) -> Result<(), NetError> {
        let rec = st.nets[name].clone();
        let link = match st.nl.link(&rec.bridge).map_err(io_err("netlink"))? {
            Some(l) => l,
            None => {
                st.nl
                    .create_bridge(&rec.bridge)
                    .map_err(io_err(format!("cannot create bridge {}", rec.bridge)))?;
                st.nl
                    .link(&rec.bridge)
                    .map_err(io_err("netlink"))?
                    .ok_or_else(|| NetError::Invalid(format!("bridge {} vanished", rec.bridge)))?
            }
        };
        st.nl
            .set_mac(link.index, subnet::mac_bytes(rec.gateway))
            .map_err(io_err(format!(
                "cannot set the MAC of bridge {}",
                rec.bridge
            )))?;
        st.nl
            .add_address(link.index, rec.gateway, rec.subnet.prefix_len())
            .map_err(io_err(format!("cannot address bridge {}", rec.bridge)))?;
        st.nl
            .set_up(link.index, true)
            .map_err(io_err(format!("cannot bring up bridge {}", rec.bridge)))?;
        if !rec.internal {
            if let Err(e) = nft::enable_ip_forward() {
                eprintln!("vessel-network: cannot enable IPv4 forwarding: {e}");
            }
        }
        let names: Names = Arc::new(RwLock::new(names_of(&rec)));
        if let Some(old) = st.running.remove(name) {
            if let Some(d) = old.dns {
                d.stop();
            }
        }
        let dns = match DnsServer::start(rec.gateway, 53, names.clone(), self.upstreams.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!(
                    "vessel-network: network {name}: no DNS on {}:53: {e}",
                    rec.gateway
                );
                None
            }
        };
        st.running.insert(name.to_string(), Running { dns, names });
        Ok(())
    }

    fn apply_rules(&self, st: &State) -> Result<(), NetError> {
        let rules: Vec<NetRules> = st
            .nets
            .values()
            .map(|r| NetRules {
                bridge: r.bridge.clone(),
                subnet: r.subnet,
                gateway: r.gateway,
                internal: r.internal,
                forwards: r.endpoints.values().flat_map(forwards).collect(),
            })
            .collect();
        nft::apply(&self.opts.table, &rules).map_err(io_err("cannot install the nftables rules"))
    }

    fn save(&self, rec: &NetworkRecord) -> Result<(), NetError> {
        write_json_atomic(&self.file(&rec.name), rec)
            .map_err(io_err(format!("cannot save network {}", rec.name)))
    }

    fn refresh_names(st: &State, name: &str) {
        if let (Some(rec), Some(run)) = (st.nets.get(name), st.running.get(name)) {
            if let Ok(mut n) = run.names.write() {
                *n = names_of(rec);
            }
        }
    }

    fn start_proxies(&self, st: &mut State, net: &str, ep: &Endpoint) {
        let mut running = Vec::new();
        for m in &ep.ports {
            match ports::bind(m) {
                Ok(b) => running.push(Proxy::start(b, ep.ip)),
                Err(e) => eprintln!(
                    "vessel-network: container {}: cannot publish {m}: {e}",
                    ep.container_id
                ),
            }
        }
        st.proxies
            .insert((net.to_string(), ep.container_id.clone()), running);
    }

    /// Subnets in use on the host and by other networks.
    fn taken_subnets(st: &mut State) -> Result<Vec<(Ipv4Net, String)>, NetError> {
        let mut taken = Vec::new();
        let links = st.nl.links().map_err(io_err("netlink"))?;
        let ifname = |i: Option<u32>| {
            i.and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_default()
        };
        for r in st.nl.routes().map_err(io_err("netlink"))? {
            if r.prefix_len > 0 {
                taken.push((
                    Ipv4Net::new(r.destination, r.prefix_len),
                    format!(
                        "the host route {}/{} on {}",
                        r.destination,
                        r.prefix_len,
                        ifname(r.oif)
                    ),
                ));
            }
        }
        for (idx, ip, len) in st.nl.addresses().map_err(io_err("netlink"))? {
            if len > 0 && len < 32 {
                taken.push((
                    Ipv4Net::new(ip, len),
                    format!("the address {ip}/{len} on {}", ifname(Some(idx))),
                ));
            }
        }
        for r in st.nets.values() {
            taken.push((r.subnet, format!("network {}", r.name)));
        }
        Ok(taken)
    }

    fn create_locked(
        &self,
        st: &mut State,
        req: &NetworkCreateRequest,
    ) -> Result<NetworkInfo, NetError> {
        if !valid_name(&req.name) {
            return Err(NetError::Invalid(format!(
                "invalid network name {:?}: use letters, digits, '_', '.', '-' (at most 64)",
                req.name
            )));
        }
        if req.name == NO_NETWORK || req.name == "host" || req.name == "bridge" {
            return Err(NetError::Invalid(format!(
                "{} is a reserved network name",
                req.name
            )));
        }
        if st.nets.contains_key(&req.name) {
            return Err(NetError::Exists(req.name.clone()));
        }
        // Held until the bridge has its address (and its route shows), so
        // another instance choosing a subnet now sees this one taken.
        let _host_lock = SubnetLock::acquire();
        let taken = Self::taken_subnets(st)?;
        let wanted = match &req.subnet {
            Some(s) => Some(Ipv4Net::parse_user(s)?),
            None if req.name == DEFAULT_NETWORK => self
                .opts
                .default_subnet
                .as_deref()
                .map(Ipv4Net::parse_user)
                .transpose()?,
            None => None,
        };
        let subnet = match wanted {
            Some(s) => {
                if let Some((_, what)) = taken.iter().find(|(t, _)| t.overlaps(&s)) {
                    return Err(NetError::Conflict(format!("subnet {s} overlaps {what}")));
                }
                s
            }
            None => {
                let nets: Vec<Ipv4Net> = taken.iter().map(|(n, _)| *n).collect();
                subnet::choose_subnet(subnet::candidates(), &nets)?
            }
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| NetError::Invalid(format!("invalid gateway {g:?}")))?;
                if !subnet.is_host(g) {
                    return Err(SubnetError::Gateway(g, subnet).into());
                }
                g
            }
            None => subnet.first_host(),
        };
        let id = random_hex(32);
        let rec = NetworkRecord {
            bridge: format!("{BRIDGE_PREFIX}{}", &id[..10]),
            id,
            name: req.name.clone(),
            subnet,
            gateway,
            internal: req.internal,
            created_ms: now_ms(),
            endpoints: BTreeMap::new(),
        };
        st.nets.insert(rec.name.clone(), rec.clone());
        let result = self
            .bring_up(st, &rec.name)
            .and_then(|()| self.apply_rules(st))
            .and_then(|()| self.save(&rec));
        if let Err(e) = result {
            self.teardown(st, &rec.name);
            st.nets.remove(&rec.name);
            let _ = std::fs::remove_file(self.file(&rec.name));
            let _ = self.apply_rules(st);
            return Err(e);
        }
        eprintln!(
            "vessel-network: created network {} ({} on {}{})",
            rec.name,
            rec.subnet,
            rec.bridge,
            if rec.internal { ", internal" } else { "" }
        );
        Ok(info(&rec))
    }

    /// Create a network.
    pub fn create(&self, req: &NetworkCreateRequest) -> Result<NetworkInfo, NetError> {
        let mut st = self.lock();
        self.create_locked(&mut st, req)
    }

    /// Stop a network's DNS and proxies and delete its bridge and TAPs.
    fn teardown(&self, st: &mut State, name: &str) {
        if let Some(run) = st.running.remove(name) {
            if let Some(d) = run.dns {
                d.stop();
            }
        }
        let Some(rec) = st.nets.get(name).cloned() else {
            return;
        };
        for ep in rec.endpoints.values() {
            st.proxies
                .remove(&(name.to_string(), ep.container_id.clone()));
            let _ = st.nl.delete_link_named(&ep.tap);
        }
        if let Err(e) = st.nl.delete_link_named(&rec.bridge) {
            eprintln!("vessel-network: cannot delete bridge {}: {e}", rec.bridge);
        }
    }

    pub fn list(&self) -> Vec<NetworkInfo> {
        self.lock().nets.values().map(info).collect()
    }

    pub fn inspect(&self, name: &str) -> Result<NetworkInfo, NetError> {
        let st = self.lock();
        let rec = find(&st.nets, name)?;
        Ok(info(rec))
    }

    /// Remove a network; refused while containers are attached.
    pub fn remove(&self, name: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        let rec = find(&st.nets, name)?.clone();
        if !rec.endpoints.is_empty() {
            let who: Vec<String> = rec.endpoints.values().map(|e| e.name.clone()).collect();
            return Err(NetError::InUse(rec.name, who.join(", ")));
        }
        self.teardown(&mut st, &rec.name);
        st.nets.remove(&rec.name);
        let _ = std::fs::remove_file(self.file(&rec.name));
        self.apply_rules(&st)?;
        eprintln!("vessel-network: removed network {}", rec.name);
        Ok(())
    }

    /// Remove every unused network but `default`.
    pub fn prune(&self) -> Result<Vec<String>, NetError> {
        let unused: Vec<String> = {
            let st = self.lock();
            st.nets
                .values()
                .filter(|r| r.endpoints.is_empty() && r.name != DEFAULT_NETWORK)
                .map(|r| r.name.clone())
                .collect()
        };
        let mut removed = Vec::new();
        for n in unused {
            match self.remove(&n) {
                Ok(()) => removed.push(n),
                Err(NetError::InUse(..) | NetError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Attach a container: lease, TAP on the bridge, DNS names, published
    /// ports. Creates `default` on first use. Connecting an attached
    /// container again answers its attachment. On any error nothing is left.
    pub fn connect(&self, name: &str, req: &ConnectRequest) -> Result<Attachment, NetError> {
        let cid = &req.container_id;
        if cid.len() < 8 || cid.len() > 128 || !cid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NetError::Invalid(format!("invalid container id {cid:?}")));
        }
        let mut st = self.lock();
        if name == DEFAULT_NETWORK && !st.nets.contains_key(name) {
            self.create_locked(
                &mut st,
                &NetworkCreateRequest {
                    name: DEFAULT_NETWORK.into(),
                    ..Default::default()
                },
            )?;
        }
        let rec = find(&st.nets, name)?.clone();
        if let Some(ep) = rec.endpoints.get(cid) {
            return Ok(attachment(&rec, ep));
        }
        let mut used: BTreeSet<Ipv4Addr> = rec.endpoints.values().map(|e| e.ip).collect();
        used.insert(rec.gateway);
        let ip = subnet::allocate(&rec.subnet, &used).ok_or_else(|| {
            NetError::Conflict(format!("network {} has no free address left", rec.name))
        })?;
        // Bind every host port first: a taken port fails before anything exists.
        let mut bound = Vec::new();
        for m in &req.ports {
            bound.push(ports::bind(m)?);
        }
        let ep = Endpoint {
            container_id: cid.clone(),
            name: req.name.clone(),
            hostname: req.hostname.clone(),
            aliases: req.aliases.clone(),
            ip,
            mac: subnet::mac_for(ip),
            tap: tap_name(cid, &rec.id),
            ports: bound.iter().map(|b| b.mapping.clone()).collect(),
        };
        if let Err(e) = Self::plug(&mut st, &rec, &ep) {
            let _ = st.nl.delete_link_named(&ep.tap);
            return Err(e);
        }
        let mut updated = rec.clone();
        updated.endpoints.insert(cid.clone(), ep.clone());
        if let Err(e) = self.save(&updated) {
            let _ = st.nl.delete_link_named(&ep.tap);
            return Err(e);
        }
        st.nets.insert(rec.name.clone(), updated.clone());
        Self::refresh_names(&st, &rec.name);
        let proxies = bound.into_iter().map(|b| Proxy::start(b, ip)).collect();
        st.proxies.insert((rec.name.clone(), cid.clone()), proxies);
        if !forwards(&ep).is_empty() {
            // The kernel's DNAT for the new ports; the proxies serve them
            // meanwhile (and for loopback clients anyway).
            if let Err(e) = self.apply_rules(&st) {
                eprintln!(
                    "vessel-network: published ports of {} only through the proxy: {e}",
                    ep.name
                );
            }
        }
        eprintln!(
            "vessel-network: {} ({}) on {}: {ip} via {}",
            ep.name, ep.container_id, rec.name, ep.tap
        );
        Ok(attachment(&updated, &ep))
    }

    /// Create the TAP, enslave it to the bridge, bring it up.
    fn plug(st: &mut State, rec: &NetworkRecord, ep: &Endpoint) -> Result<(), NetError> {
        let bridge = st
            .nl
            .link(&rec.bridge)
            .map_err(io_err("netlink"))?
            .ok_or_else(|| NetError::Invalid(format!("bridge {} is missing", rec.bridge)))?;
        tap::create_tap(&ep.tap).map_err(io_err(format!("cannot create TAP {}", ep.tap)))?;
        let t = st
            .nl
            .link(&ep.tap)
            .map_err(io_err("netlink"))?
            .ok_or_else(|| NetError::Invalid(format!("TAP {} vanished", ep.tap)))?;
        st.nl
            .set_master(t.index, bridge.index)
            .map_err(io_err(format!(
                "cannot attach {} to {}",
                ep.tap, rec.bridge
            )))?;
        st.nl
            .set_up(t.index, true)
            .map_err(io_err(format!("cannot bring up {}", ep.tap)))?;
        Ok(())
    }

    fn disconnect_locked(&self, st: &mut State, name: &str, cid: &str) -> Result<bool, NetError> {
        let mut rec = find(&st.nets, name)?.clone();
        let Some(ep) = rec.endpoints.remove(cid) else {
            return Ok(false);
        };
        if let Some(proxies) = st.proxies.remove(&(rec.name.clone(), cid.to_string())) {
            for p in proxies {
                p.stop();
            }
        }
        st.nl
            .delete_link_named(&ep.tap)
            .map_err(io_err(format!("cannot delete TAP {}", ep.tap)))?;
        self.save(&rec)?;
        let net = rec.name.clone();
        st.nets.insert(net.clone(), rec);
        Self::refresh_names(st, &net);
        if !forwards(&ep).is_empty() {
            if let Err(e) = self.apply_rules(st) {
                eprintln!("vessel-network: cannot remove the DNAT of {}: {e}", ep.name);
            }
        }
        eprintln!("vessel-network: {} ({cid}) left {net}", ep.name);
        Ok(true)
    }

    /// Detach a container from one network (a no-op when not attached).
    pub fn disconnect(&self, name: &str, cid: &str) -> Result<bool, NetError> {
        let mut st = self.lock();
        self.disconnect_locked(&mut st, name, cid)
    }

    /// Detach a container from every network; the names of those it left.
    pub fn disconnect_all(&self, cid: &str) -> Result<Vec<String>, NetError> {
        let mut st = self.lock();
        let nets: Vec<String> = st
            .nets
            .values()
            .filter(|r| r.endpoints.contains_key(cid))
            .map(|r| r.name.clone())
            .collect();
        for n in &nets {
            self.disconnect_locked(&mut st, n, cid)?;
        }
        Ok(nets)
    }

    /// Is container `id` gone for good? Its directory is missing, or its
    /// state says it exited. (A created container is about to start.)
    fn container_gone(&self, id: &str) -> bool {
        let dir = self.opts.home.container_dir(id);
        if !dir.is_dir() {
            return true;
        }
        matches!(
            read_json::<ContainerState>(&dir.join("state.json")),
            Ok(Some(s)) if s.status == Status::Exited
        )
    }

    /// Drop the attachments of containers whose directory is gone: they
    /// were removed, and whatever their removal did not give back (the
    /// apiserver could not reach this helper then, or the answer to their
    /// connect was lost) must not be held for good. Containers that exist
    /// are left alone, ended or not: the apiserver releases those. Run
    /// every few seconds by the server; the attachments dropped.
    pub fn sweep_removed(&self) -> Vec<String> {
        let mut st = self.lock();
        let pairs: Vec<(String, String)> = st
            .nets
            .values()
            .flat_map(|r| r.endpoints.keys().map(|c| (r.name.clone(), c.clone())))
            .filter(|(_, c)| !self.opts.home.container_dir(c).is_dir())
            .collect();
        let mut removed = Vec::new();
        for (net, cid) in pairs {
            match self.disconnect_locked(&mut st, &net, &cid) {
                Ok(true) => removed.push(format!("{net}/{cid}")),
                Ok(false) => {}
                Err(e) => eprintln!("vessel-network: releasing {net}/{cid}: {e}"),
            }
        }
        removed
    }

    /// Drop the attachments of containers that are not live (all but
    /// `live` when given, else judged from `VESSEL_HOME/containers`),
    /// delete TAPs on this instance's bridges that no lease claims, and
    /// reinstall the rules.
    pub fn reconcile(&self, live: Option<&[String]>) -> Result<ReconcileReport, NetError> {
        let mut st = self.lock();
        let mut report = ReconcileReport::default();
        let pairs: Vec<(String, String)> = st
            .nets
            .values()
            .flat_map(|r| r.endpoints.keys().map(|c| (r.name.clone(), c.clone())))
            .collect();
        for (net, cid) in pairs {
            let dead = match live {
                Some(l) => !l.iter().any(|x| x == &cid),
                None => self.container_gone(&cid),
            };
            if dead && self.disconnect_locked(&mut st, &net, &cid)? {
                report.removed.push(format!("{net}/{cid}"));
            }
        }
        let links = st.nl.links().map_err(io_err("netlink"))?;
        let bridges: BTreeSet<u32> = links
            .iter()
            .filter(|l| st.nets.values().any(|r| r.bridge == l.name))
            .map(|l| l.index)
            .collect();
        let claimed: BTreeSet<String> = st
            .nets
            .values()
            .flat_map(|r| r.endpoints.values().map(|e| e.tap.clone()))
            .collect();
        for l in &links {
            let on_ours = l.master.is_some_and(|m| bridges.contains(&m));
            if on_ours && l.kind.as_deref() == Some("tun") && !claimed.contains(&l.name) {
                st.nl
                    .delete_link(l.index)
                    .map_err(io_err(format!("cannot delete {}", l.name)))?;
                report.removed_devices.push(l.name.clone());
            }
        }
        self.apply_rules(&st)?;
        Ok(report)
    }

    /// Take down everything this instance put on the host (bridges, TAPs,
    /// rules); the records stay, and `open` brings them back.
    pub fn shutdown_all(&self) -> Result<(), NetError> {
        let mut st = self.lock();
        let names: Vec<String> = st.nets.keys().cloned().collect();
        for n in names {
            self.teardown(&mut st, &n);
        }
        nft::delete(&self.opts.table).map_err(io_err("cannot delete the nftables table"))
    }

    pub fn table(&self) -> &str {
        &self.opts.table
    }
}

fn find<'a>(
    nets: &'a BTreeMap<String, NetworkRecord>,
    name: &str,
) -> Result<&'a NetworkRecord, NetError> {
    nets.get(name)
        .or_else(|| {
            // Docker also accepts a network's id or a unique prefix of it.
            let mut m = nets
                .values()
                .filter(|r| name.len() >= 3 && r.id.starts_with(name));
            match (m.next(), m.next()) {
                (Some(r), None) => Some(r),
                _ => None,
            }
        })
        .ok_or_else(|| NetError::NotFound(name.to_string()))
}

/// The names the network's resolver answers.
pub fn names_of(rec: &NetworkRecord) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut map: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for ep in rec.endpoints.values() {
        let short: String = ep.container_id.chars().take(12).collect();
        let mut names = vec![ep.name.clone(), ep.hostname.clone(), short];
        names.extend(ep.aliases.iter().cloned());
        for n in names {
            if n.is_empty() {
                continue;
            }
            let ips = map.entry(dns::key(&n)).or_default();
            if !ips.contains(&ep.ip) {
                ips.push(ep.ip);
            }
        }
    }
    map
}

fn info(rec: &NetworkRecord) -> NetworkInfo {
    NetworkInfo {
        id: rec.id.clone(),
        name: rec.name.clone(),
        subnet: rec.subnet.to_string(),
        gateway: rec.gateway.to_string(),
        bridge: rec.bridge.clone(),
        internal: rec.internal,
        created_ms: rec.created_ms,
        containers: rec
            .endpoints
            .values()
            .map(|e| EndpointInfo {
                container_id: e.container_id.clone(),
                name: e.name.clone(),
                ip: e.ip.to_string(),
                mac: e.mac.clone(),
                tap: e.tap.clone(),
                ports: e.ports.clone(),
            })
            .collect(),
    }
}

fn attachment(rec: &NetworkRecord, ep: &Endpoint) -> Attachment {
    Attachment {
        network: rec.name.clone(),
        network_id: rec.id.clone(),
        tap: ep.tap.clone(),
        mac: ep.mac.clone(),
        ip: ep.ip.to_string(),
        prefix_len: rec.subnet.prefix_len(),
        gateway: rec.gateway.to_string(),
        dns: vec![rec.gateway.to_string()],
        ports: ep.ports.clone(),
        internal: rec.internal,
        mode: vessel_api::network::AttachmentMode::Bridge,
        dns_upstream: Vec::new(),
        netns: None,
        mtu: None,
    }
}

/// The kernel forwards of an endpoint's published ports: those on every
/// address or on one non-loopback IPv4 address (loopback ones are the
/// proxy's alone).
fn forwards(ep: &Endpoint) -> Vec<nft::Forward> {
    ep.ports
        .iter()
        .filter_map(|m| {
            let host_ip = match m.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => match ip.parse::<Ipv4Addr>() {
                    Ok(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
                    _ => return None,
                },
            };
            Some(nft::Forward {
                host_ip,
                host_port: m.host_port,
                udp: m.protocol == vessel_api::network::Protocol::Udp,
                container_ip: ep.ip,
                container_port: m.container_port,
            })
        })
        .collect()
}

/// Where every vessel-network of this host serializes choosing subnets.
const SUBNET_LOCK: &str = "/run/vessel-network-subnets.lock";

/// A host-wide lock (flock) held while a network picks its subnet and
/// brings its bridge up. Each instance has its own helper and state; two
/// starting at once would otherwise both find a subnet free on the host and
/// both take it. Without `/run` (or permission there) networks are created
/// without it, as before.
struct SubnetLock {
    _held: Option<std::fs::File>,
}

impl SubnetLock {
    fn acquire() -> Self {
        match vessel_api::fsutil::open_locked(Path::new(SUBNET_LOCK), libc::LOCK_EX) {
            Ok(file) => Self { _held: Some(file) },
            Err(e) => {
                eprintln!(
                    "vessel-network: cannot lock {SUBNET_LOCK}: {e}; choosing a subnet without it"
                );
                Self { _held: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_kinds_and_name_what_is_missing() {
        let b = NetError::NotFound("backend".into()).body();
        assert_eq!(b.kind, ErrorKind::NetworkNotFound);
        assert_eq!(b.status(), 404);
        assert_eq!(b.name.as_deref(), Some("backend"));
        assert!(
            b.message.starts_with("network backend not found; "),
            "{}",
            b.message
        );
        assert!(
            b.message.contains("vessel network create backend"),
            "{}",
            b.message
        );
        let b = NetError::InUse("n".into(), "web".into()).body();
        assert_eq!((b.kind, b.name), (ErrorKind::InUse, None));
        assert_eq!(
            NetError::Port(PortError::Allocated("127.0.0.1:80".into())).kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            NetError::Subnet(SubnetError::Exhausted).kind(),
            ErrorKind::Internal
        );
        let e = NetError::Io("creating bridge".into(), io::Error::other("EPERM"));
        assert_eq!(e.body().message, "creating bridge: EPERM");
    }

    #[test]
    fn names_and_taps() {
        assert_eq!(tap_name("0123456789abcdef", "fedcba98"), "vsl01234567fedc");
        assert_eq!(tap_name("0123456789abcdef", "fedcba98").len(), 15);
        assert!(valid_name("my-net_1.x"));
        assert!(!valid_name("-x") && !valid_name("") && !valid_name("a b"));
        let mut rec = NetworkRecord {
            id: "n".into(),
            name: "n".into(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            bridge: "vsl-n".into(),
            internal: false,
            created_ms: 0,
            endpoints: BTreeMap::new(),
        };
        for (id, name, ip) in [
            ("aaaaaaaaaaaaaaaa", "Web", 2),
            ("bbbbbbbbbbbbbbbb", "db", 3),
        ] {
            rec.endpoints.insert(
                id.into(),
                Endpoint {
                    container_id: id.into(),
                    name: name.into(),
                    hostname: "h".into(),
                    aliases: vec!["svc".into()],
                    ip: Ipv4Addr::new(10, 1, 0, ip),
                    mac: String::new(),
                    tap: String::new(),
                    ports: vec![],
                },
            );
        }
        let n = names_of(&rec);
        assert_eq!(n["web"], vec![Ipv4Addr::new(10, 1, 0, 2)]);
        assert_eq!(n["aaaaaaaaaaaa"], vec![Ipv4Addr::new(10, 1, 0, 2)]);
        assert_eq!(n["svc"].len(), 2, "an alias shared by two containers");
        let nets = BTreeMap::from([("n".to_string(), rec)]);
        assert!(find(&nets, "n").is_ok());
        assert!(matches!(find(&nets, "zz"), Err(NetError::NotFound(_))));
    }
}
