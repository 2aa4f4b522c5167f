//! vessel-network against the real kernel: bridges, TAP devices, nftables
//! and network namespaces (needs root).
//!
//! Each "guest" is a network namespace whose `eth0` is a TAP device; a
//! thread relays frames between it and the host TAP that vessel-network
//! made, as QEMU's virtio-net backend would. The "outside" is another
//! namespace behind a veth pair with a test address (198.18.0.0/15, the
//! benchmarking range), so no traffic leaves the machine. DNS forwarding
//! goes to a fake upstream on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vessel_api::error::{ErrorBody, ErrorKind};
use vessel_api::http::Client;
use vessel_api::network::{
    parse_port_spec, Attachment, ConnectRequest, DisconnectRequest, NetworkCreateRequest,
    NetworkInfo, ReconcileReport, ReconcileRequest,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (bridges, TAP devices, namespaces)");
            return;
        }
    };
}

fn rand_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a);
    }

    /// Run `f` on a thread that lives in this namespace; sockets made
    /// there stay in it.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(path).unwrap();
            // SAFETY: setns on a valid namespace fd; it affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tap(name: &str) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut r = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a valid ifreq.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut r as *mut IfReq) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    f
}

/// A container stand-in: a namespace whose eth0 is wired to the host TAP.
struct Guest {
    ns: Netns,
    ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
}

impl Guest {
    fn new(att: &Attachment) -> Self {
        let ns = Netns::new(format!("vslt-{}", rand_tag()));
        let inner = ns.run(|| open_tap("eth0"));
        let outer = open_tap(&att.tap);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || relay(outer, inner, &s));
        ns.ip(&["link", "set", "eth0", "address", &att.mac]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/{}", att.ip, att.prefix_len),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &att.gateway]);
        Guest {
            ns,
            ip: att.ip.parse().unwrap(),
            stop,
        }
    }

    /// A TCP server in the guest that answers `<tag> <peer ip>\n`.
    fn serve(&self, port: u16, tag: &'static str) {
        let l = self
            .ns
            .run(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = c.write_all(format!("{tag} {peer}\n").as_bytes());
            }
        });
    }

    /// Connect from the guest; the server's line, or an error.
    fn fetch(&self, to: SocketAddr) -> Result<String, String> {
        self.ns.run(move || fetch(to))
    }

    fn dns(&self, server: Ipv4Addr, name: &'static str) -> Option<Message> {
        self.ns.run(move || dns_query(server, name))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn relay(a: File, b: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) } <= 0 {
            continue;
        }
        for (i, (mut from, mut to)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
            if fds[i].revents & libc::POLLIN != 0 {
                match from.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = to.write(&buf[..n]);
                    }
                    _ => return,
                }
            }
        }
    }
}

fn fetch(to: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_millis(1500)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.trim().to_string())
}

fn dns_query(server: Ipv4Addr, name: &str) -> Option<Message> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    for _ in 0..3 {
        s.send_to(&m.to_vec().ok()?, (server, 53)).ok()?;
        let mut buf = [0u8; 1500];
        if let Ok(n) = s.recv(&mut buf) {
            return Message::from_vec(&buf[..n]).ok();
        }
    }
    None
}

fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers.iter().find_map(|r| match r.data {
        RData::A(A(ip)) => Some(ip),
        _ => None,
    })
}

/// A fake upstream resolver on 127.0.0.1 that answers every A query with
/// 127.0.0.77.
fn fake_upstream() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r =
                Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::NoError);
            for query in &q.queries {
                r.add_query(query.clone());
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    5,
                    RData::A(A(Ipv4Addr::new(127, 0, 0, 77))),
                ));
            }
            let _ = s.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    addr
}

/// The "outside": a namespace at 198.18.X.2 behind a veth whose host end
/// is 198.18.X.1, with a server on port 9000 that reports the peer address.
struct Outside {
    ns: Netns,
    ip: Ipv4Addr,
}

impl Outside {
    fn new() -> Self {
        let tag = rand_tag();
        let ns = Netns::new(format!("vslt-out-{tag}"));
        let x = (rand::random::<u8>() % 250) + 1;
        let (host_if, ns_if) = (format!("vto{tag}"), format!("vti{tag}"));
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns",
            &ns.name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{x}.1/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("198.18.{x}.2/30"), "dev", &ns_if]);
        ns.ip(&["link", "set", &ns_if, "up"]);
        let o = Outside {
            ns,
            ip: Ipv4Addr::new(198, 18, x, 2),
        };
        let l = o.ns.run(|| TcpListener::bind("0.0.0.0:9000").unwrap());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = c.write_all(format!("outside {peer}\n").as_bytes());
            }
        });
        o
    }

    fn host_side(&self) -> String {
        let o = self.ip.octets();
        format!("{}.{}.{}.1", o[0], o[1], o[2])
    }
}

/// A vessel-network process with its own VESSEL_HOME.
struct Helper {
    home: tempfile::TempDir,
    child: Option<Child>,
    upstream: SocketAddr,
}

impl Helper {
    fn start() -> Self {
        let mut h = Helper {
            home: tempfile::tempdir().unwrap(),
            child: None,
            upstream: fake_upstream(),
        };
        h.spawn();
        h
    }

    fn bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_vessel-network"))
    }

    fn spawn(&mut self) {
        let sock = self.home.path().join("network.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(Self::bin())
            .arg("--home")
            .arg(self.home.path())
            .arg("--dns-upstream")
            .arg(self.upstream.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client().request("GET", "/health", None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "vessel-network did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        Client::new(self.home.path().join("network.sock")).with_timeout(Duration::from_secs(30))
    }

    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ErrorBody> {
        self.client()
            .request_json("POST", path, body)
            .unwrap()
            .json()
            .unwrap()
    }

    fn create(&self, name: &str, subnet: &str, internal: bool) -> NetworkInfo {
        self.post(
            "/networks",
            &NetworkCreateRequest {
                name: name.into(),
                subnet: Some(subnet.into()),
                gateway: None,
                internal,
            },
        )
        .unwrap()
    }

    fn connect(&self, net: &str, name: &str, ports: &[&str]) -> Result<Attachment, ErrorBody> {
        let mut p = Vec::new();
        for s in ports {
            p.extend(parse_port_spec(s).unwrap());
        }
        // What the apiserver keeps for a running container: the startup
        // reconcile of a restarted helper keeps only live containers' leases.
        let id = vessel_api::fsutil::random_hex(32);
        let dir = self.home.path().join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = vessel_api::types::ContainerState::created();
        state.status = vessel_api::types::Status::Running;
        vessel_api::fsutil::write_json_atomic(&dir.join("state.json"), &state).unwrap();
        self.post(
            &format!("/networks/{net}/connect"),
            &ConnectRequest {
                container_id: id,
                name: name.into(),
                hostname: format!("{name}-host"),
                aliases: vec![format!("{name}-alias")],
                ports: p,
            },
        )
    }

    fn table(&self) -> String {
        vessel_network::manager::table_name(&vessel_api::paths::Home::new(self.home.path()))
    }

    /// The table's rules, without the handles nft numbers them with.
    fn rules(&self) -> String {
        fn strip(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    m.remove("handle");
                    m.values_mut().for_each(strip);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut v = vessel_network::nft::list_json(&self.table())
            .unwrap()
            .unwrap_or_default();
        strip(&mut v);
        v.to_string()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(Self::bin())
            .arg("--home")
            .arg(self.home.path())
            .arg("--cleanup")
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn subnet(second: u8) -> String {
    format!("10.{second}.{}.0/24", rand::random::<u8>())
}

#[test]
fn containers_talk_by_name_reach_outside_through_nat_and_publish_ports() {
    need_root!();
    let h = Helper::start();
    let outside = Outside::new();
    let net = h.create("front", &subnet(201), false);
    let gw: Ipv4Addr = net.gateway.parse().unwrap();
    let port = free_port();
    let web = h
        .connect("front", "web", &[&format!("127.0.0.1:{port}:8080")])
        .unwrap();
    assert_eq!(web.ports[0].host_port, port);
    assert!(link_exists(&web.tap) && link_exists(&net.bridge));
    let client = h.connect("front", "client", &[]).unwrap();
    let (gweb, gclient) = (Guest::new(&web), Guest::new(&client));
    gweb.serve(8080, "web");

    // DNS: by name, hostname and alias; unknown names go to the upstream.
    for name in ["web", "WEB.", "web-host", "web-alias"] {
        let m = gclient.dns(gw, name).expect("DNS answer");
        assert_eq!(first_a(&m), Some(gweb.ip), "{name}");
    }
    let m = gclient.dns(gw, "example.test").expect("forwarded answer");
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(127, 0, 0, 77)));

    // Container to container, host to container, published port.
    let to_web = SocketAddr::new(gweb.ip.into(), 8080);
    assert_eq!(
        gclient.fetch(to_web).unwrap(),
        format!("web {}", gclient.ip)
    );
    assert!(fetch(to_web).unwrap().starts_with("web "));
    assert!(fetch(format!("127.0.0.1:{port}").parse().unwrap())
        .unwrap()
        .starts_with("web "));

    // Outbound: masqueraded to the host's address on the outside link.
    let out = SocketAddr::new(outside.ip.into(), 9000);
    assert_eq!(
        gclient.fetch(out).unwrap(),
        format!("outside {}", outside.host_side())
    );

    // A second container on the same host port: refused, nothing left.
    let taps_before: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let e = h
        .connect("front", "web2", &[&format!("127.0.0.1:{port}:80")])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(
        e.message,
        format!("Bind for 127.0.0.1:{port} failed: port is already allocated")
    );
    let taps_after: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Other tests (and other instances on this host) create and remove
    // interfaces meanwhile: only web2's TAP matters.
    let web2_tap = vessel_network::manager::tap_name("web2", "");
    let left: Vec<&String> = taps_after
        .iter()
        .filter(|n| !taps_before.contains(n) && n.starts_with(&web2_tap))
        .collect();
    assert!(left.is_empty(), "the refused endpoint left {left:?}");
    let info: NetworkInfo = h
        .client()
        .request("GET", "/networks/front", None)
        .unwrap()
        .json()
        .unwrap()
        .unwrap();
    assert_eq!(info.containers.len(), 2);

    // Removing a network in use is refused.
    let r = h
        .client()
        .request("DELETE", "/networks/front", None)
        .unwrap();
    assert_eq!(r.status, 409);

    // Disconnect: TAP, lease, name and port are gone.
    let web_id = info
        .containers
        .iter()
        .find(|c| c.name == "web")
        .unwrap()
        .container_id
        .clone();
    let _: serde_json::Value = h
        .post(
            "/networks/front/disconnect",
            &DisconnectRequest {
                container_id: web_id,
            },
        )
        .unwrap();
    assert!(!link_exists(&web.tap));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let m = gclient.dns(gw, "web").expect("answer");
    assert_eq!(
        first_a(&m),
        Some(Ipv4Addr::new(127, 0, 0, 77)),
        "now forwarded"
    );
    let info: NetworkInfo = h
        .client()
        .request("GET", "/networks/front", None)
        .unwrap()
        .json()
        .unwrap()
        .unwrap();
    assert_eq!(info.containers.len(), 1);
    // The freed address is handed out again.
    let again = h.connect("front", "web3", &[]).unwrap();
    assert_eq!(again.ip, web.ip);
    assert_eq!(again.mac, web.mac);
}

#[test]
fn networks_are_isolated_and_internal_ones_have_no_way_out() {
    need_root!();
    let h = Helper::start();
    let outside = Outside::new();
    h.create("a", &subnet(202), false);
    let internal = h.create("b", &subnet(203), true);
    let x = Guest::new(&h.connect("a", "x", &[]).unwrap());
    let y = Guest::new(&h.connect("b", "y", &[]).unwrap());
    let y2 = Guest::new(&h.connect("b", "y2", &[]).unwrap());
    x.serve(7000, "x");
    y.serve(7000, "y");
    let out = SocketAddr::new(outside.ip.into(), 9000);

    assert!(x.fetch(out).is_ok(), "a normal network reaches outside");
    assert!(y.fetch(out).is_err(), "an internal network does not");
    assert!(x.fetch(SocketAddr::new(y.ip.into(), 7000)).is_err());
    assert!(y.fetch(SocketAddr::new(x.ip.into(), 7000)).is_err());
    // Inside the internal network, containers talk, and DNS works.
    assert!(y2
        .fetch(SocketAddr::new(y.ip.into(), 7000))
        .unwrap()
        .starts_with("y "));
    let gw: Ipv4Addr = internal.gateway.parse().unwrap();
    assert_eq!(first_a(&y2.dns(gw, "y").unwrap()), Some(y.ip));
    // The host's other addresses are not reachable from an internal network.
    let l = TcpListener::bind((outside.host_side().as_str(), 0)).unwrap();
    let hp = l.local_addr().unwrap();
    assert!(y.fetch(hp).is_err());
    assert!(
        TcpStream::connect(hp).is_ok(),
        "the listener works from the host"
    );
    drop(l);

    let r = h.client().request("DELETE", "/networks/b", None).unwrap();
    assert_eq!(r.status, 409);
    let e = r.json::<serde_json::Value>().unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InUse);
    assert!(e.message.contains("active endpoints"), "{}", e.message);
    // Unused networks go with prune; `b` is in use and stays.
    h.create("c", &subnet(204), false);
    let pruned: vessel_api::network::RemovedNetworks =
        h.post("/networks/prune", &serde_json::json!({})).unwrap();
    assert_eq!(pruned.removed, vec!["c".to_string()]);
}

#[test]
fn a_killed_helper_restarts_without_duplicates_and_reconciles() {
    need_root!();
    let mut h = Helper::start();
    let net = h.create("n", &subnet(205), false);
    let port = free_port();
    let att = h
        .connect("n", "svc", &[&format!("127.0.0.1:{port}:8080")])
        .unwrap();
    let g = Guest::new(&att);
    g.serve(8080, "svc");
    let before = h.rules();
    assert!(before.contains("masquerade"), "{before}");

    h.kill9();
    // The kernel state stays: the container keeps its network.
    assert!(fetch(SocketAddr::new(g.ip.into(), 8080)).is_ok());
    h.spawn();
    assert_eq!(h.rules(), before, "rules replaced, not duplicated");
    assert!(fetch(format!("127.0.0.1:{port}").parse().unwrap())
        .unwrap()
        .starts_with("svc "));

    // A TAP on our bridge that no lease claims is removed by reconcile,
    // and so is the lease of a container that is not live.
    let stray = format!("vslx{}", rand_tag());
    sh(&["ip", "tuntap", "add", "dev", &stray, "mode", "tap"]);
    sh(&["ip", "link", "set", &stray, "master", &net.bridge]);
    let report: ReconcileReport = h
        .post("/reconcile", &ReconcileRequest { live: vec![] })
        .unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert_eq!(report.removed_devices, vec![stray.clone()]);
    assert!(!link_exists(&stray) && !link_exists(&att.tap));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // Cleanup takes everything off the host.
    let bridge = net.bridge.clone();
    let table = h.table();
    drop(g);
    drop(h);
    assert!(!link_exists(&bridge));
    assert!(vessel_network::nft::list_json(&table).unwrap().is_none());
}

#[test]
fn the_attachment_of_a_removed_container_is_released_without_being_asked() {
    need_root!();
    let h = Helper::start();
    h.create("s", &subnet(206), false);
    let kept = h.connect("s", "kept", &[]).unwrap();
    let containers = h.home.path().join("containers");
    let kept_id = std::fs::read_dir(&containers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let gone = h.connect("s", "gone", &[]).unwrap();
    // Removed without a disconnect (an apiserver that could not reach the
    // helper then): its lease and TAP go within the sweep's interval.
    for e in std::fs::read_dir(&containers).unwrap().flatten() {
        if e.file_name() != kept_id {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while link_exists(&gone.tap) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!link_exists(&gone.tap), "the removed container's TAP stays");
    let info: NetworkInfo = h
        .client()
        .request("GET", "/networks/s", None)
        .unwrap()
        .json()
        .unwrap()
        .unwrap();
    assert_eq!(info.containers.len(), 1, "{info:?}");
    // The container that still exists keeps everything.
    assert!(link_exists(&kept.tap));
    assert_eq!(info.containers[0].ip, kept.ip, "{info:?}");
}

#[test]
fn helpers_choosing_subnets_at_once_never_take_the_same() {
    need_root!();
    // Independent instances (each its own helper and state), the way
    // parallel tests or two users' instances run: only the host's routes
    // tell them what the others took.
    let helpers: Vec<Helper> = (0..3).map(|_| Helper::start()).collect();
    let barrier = std::sync::Barrier::new(helpers.len());
    let nets: Vec<NetworkInfo> = std::thread::scope(|s| {
        let handles: Vec<_> = helpers
            .iter()
            .map(|h| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    h.post::<NetworkInfo>(
                        "/networks",
                        &NetworkCreateRequest {
                            name: "auto".into(),
                            subnet: None,
                            gateway: None,
                            internal: false,
                        },
                    )
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let subnets: BTreeSet<String> = nets.iter().map(|n| n.subnet.clone()).collect();
    assert_eq!(subnets.len(), nets.len(), "the same subnet twice: {nets:?}");
}
