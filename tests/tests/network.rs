//! Networking end to end: real VMs on real bridges and TAP devices, the
//! real `vessel-network`, nftables NAT, DNS by name, published ports.
//!
//! Every instance gets its own subnets (checked against the host's routes)
//! and a dead local DNS upstream, and the only "outside" host is a network
//! namespace the test creates behind a veth pair: no packet leaves this
//! machine. The namespaces, veths, bridges, TAPs and nftables tables are
//! removed even when a test fails (guards and `Instance`'s drop).

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vessel_tests::{assert_ok, text, Instance, IMAGE};

/// A container command serving `/www/index.html` with busybox httpd.
const SERVE: &str =
    "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 80 -h /www";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A number unique in this test process, for names and subnets.
fn unique() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn sh_ok(cmd: &str, args: &[&str]) {
    let out = sh(cmd, args);
    assert_ok(&out, &format!("{cmd} {}", args.join(" ")));
}

/// Every IPv4 prefix the host routes or owns, as (network, prefix length).
fn host_prefixes() -> Vec<(u32, u8)> {
    let mut out = Vec::new();
    let parse = |s: &str, len: Option<u8>| -> Option<(u32, u8)> {
        let (ip, n) = match s.split_once('/') {
            Some((ip, n)) => (ip, n.parse().ok()?),
            None => (s, len.unwrap_or(32)),
        };
        Some((u32::from(ip.parse::<Ipv4Addr>().ok()?), n))
    };
    let routes: Value =
        serde_json::from_slice(&sh("ip", &["-4", "-j", "route", "show", "table", "all"]).stdout)
            .unwrap_or(Value::Null);
    for r in routes.as_array().into_iter().flatten() {
        if let Some(p) = r["dst"].as_str().and_then(|d| parse(d, None)) {
            out.push(p);
        }
    }
    let addrs: Value =
        serde_json::from_slice(&sh("ip", &["-4", "-j", "addr"]).stdout).unwrap_or(Value::Null);
    for l in addrs.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let len = a["prefixlen"].as_u64().map(|n| n as u8);
            if let Some(p) = a["local"].as_str().and_then(|d| parse(d, len)) {
                out.push(p);
            }
        }
    }
    out
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let n = a.1.min(b.1);
    let mask = if n == 0 { 0 } else { u32::MAX << (32 - n) };
    a.0 & mask == b.0 & mask
}

/// A /24 inside `base` (a /16, e.g. 10.213.0.0) that no host route or
/// address overlaps; the third octet starts from this process and test.
fn free_24(base: [u8; 2]) -> [u8; 3] {
    let taken = host_prefixes();
    let start = (std::process::id() * 7 + unique() * 13) % 200 + 20;
    for k in 0..200 {
        let third = ((start + k) % 230 + 20) as u8;
        let cand = (u32::from(Ipv4Addr::new(base[0], base[1], third, 0)), 24);
        if !taken.iter().any(|t| t.1 > 0 && overlaps(*t, cand)) {
            // Never the same one twice in this process.
            if TAKEN
                .lock()
                .unwrap()
                .insert(third as u32 | (base[1] as u32) << 8)
            {
                return [base[0], base[1], third];
            }
        }
    }
    panic!("no free /24 in {}.{}.0.0/16", base[0], base[1]);
}

static TAKEN: Mutex<std::collections::BTreeSet<u32>> =
    Mutex::new(std::collections::BTreeSet::new());

/// A free container subnet `10.213.X.0/24`.
fn free_subnet() -> String {
    let [a, b, c] = free_24([10, 213]);
    format!("{a}.{b}.{c}.0/24")
}

/// A started instance whose default network is `subnet` and whose DNS
/// forwards unknown names to a dead local port (never off this machine).
fn instance(subnet: Option<&str>) -> Instance {
    let mut v = Instance::new();
    v.set_env("VESSEL_DNS_UPSTREAM", "127.0.0.1:9");
    match subnet {
        Some(s) => v.start_with(&["--subnet", s]),
        None => v.start(),
    }
    v.load_test_image();
    v
}

/// `vessel inspect NAME`, the one object.
fn inspect(v: &Instance, name: &str) -> Value {
    let out = v.vessel(&["inspect", name]);
    assert_ok(&out, "inspect");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

/// `vessel network inspect NAME`, the one object.
fn network(v: &Instance, name: &str) -> Value {
    let out = v.vessel(&["network", "inspect", name]);
    assert_ok(&out, "network inspect");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

/// The host's links (`ip -j link`).
fn links() -> Vec<Value> {
    serde_json::from_slice::<Value>(&sh("ip", &["-j", "link"]).stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn link_exists(name: &str) -> bool {
    links().iter().any(|l| l["ifname"] == name)
}

/// Names of the links enslaved to `bridge`.
fn ports_of(bridge: &str) -> Vec<String> {
    links()
        .iter()
        .filter(|l| l["master"] == bridge)
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect()
}

/// `nft list ruleset` as text.
fn ruleset() -> String {
    text(&sh("nft", &["list", "ruleset"]).stdout)
}

/// One HTTP/1.0 GET; the body.
fn http_get(addr: &str, timeout: Duration) -> Result<String, String> {
    let sa: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let resp = text(&resp);
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("bad answer: {resp:?}")),
    }
}

/// GET until it succeeds or `limit` passes.
fn http_get_eventually(addr: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match http_get(addr, Duration::from_secs(3)) {
            Ok(b) => return b,
            Err(e) if Instant::now() > deadline => panic!("GET http://{addr}/: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid of vessel-network from `system status --format json`.
fn network_helper_pid(v: &Instance) -> Option<i64> {
    let out = v.vessel(&["system", "status", "--format", "json"]);
    let info: Value = serde_json::from_slice(&out.stdout).ok()?;
    info["helpers"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == "vessel-network")
        .and_then(|h| h["pid"].as_i64())
}

/// A test "outside" host: a network namespace behind a veth pair,
/// `198.19.X.2/24` inside, `198.19.X.1/24` on the host side, with an HTTP
/// server inside that answers `client=<source address>` and records the
/// source of every connection. Removed on drop.
struct Outside {
    ns: String,
    veth: String,
    host_ip: Ipv4Addr,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Outside {
    fn new() -> Self {
        let n = unique();
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let ns = format!("vsltest{tag}");
        let veth = format!("vto{tag}h");
        let peer = format!("vto{tag}g");
        let [a, b, c] = free_24([198, 19]);
        let host_ip = Ipv4Addr::new(a, b, c, 1);
        let inside = Ipv4Addr::new(a, b, c, 2);
        let mut me = Self {
            ns: ns.clone(),
            veth: veth.clone(),
            host_ip,
            addr: SocketAddr::from((inside, 8080)),
            seen: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        sh_ok("ip", &["netns", "add", &ns]);
        sh_ok(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &ns,
            ],
        );
        sh_ok(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &veth],
        );
        sh_ok("ip", &["link", "set", &veth, "up"]);
        let nsx = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend_from_slice(args);
            sh_ok("ip", &a);
        };
        nsx(&["addr", "add", &format!("{inside}/24"), "dev", &peer]);
        nsx(&["link", "set", &peer, "up"]);
        nsx(&["link", "set", "lo", "up"]);
        me.server = Some(me.serve());
        me
    }

    /// The server thread: enters the namespace (setns affects only this
    /// thread), listens, answers each client with its source address.
    fn serve(&self) -> std::thread::JoinHandle<()> {
        let (ns, addr, seen, stop) = (
            self.ns.clone(),
            self.addr,
            self.seen.clone(),
            self.stop.clone(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: setns on a valid namespace fd; only this thread moves.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        seen.lock().unwrap().push(peer);
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let body = format!("client={}\n", peer.ip());
                        let _ = write!(
                            s,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the outside server did not start");
        h
    }

    fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
        let _ = sh("ip", &["link", "del", &self.veth]);
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

#[test]
fn containers_reach_each_other_by_name_and_the_host_reaches_their_ip() {
    let subnet = free_subnet();
    let v = instance(Some(&subnet));
    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "web",
        "--hostname",
        "webhost",
        "--network-alias",
        "www",
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "run -d web");
    let id = text(&out.stdout).trim().to_string();

    // inspect: the network, IP in the subnet, MAC, gateway.
    let info = inspect(&v, "web");
    let net = &info["networks"][0];
    assert_eq!(net["network"], "default", "{info:#}");
    let ip = net["ip"].as_str().unwrap().to_string();
    let prefix = subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "{ip} in {subnet}");
    assert_eq!(net["gateway"], format!("{prefix}1"));
    assert!(net["mac"].as_str().unwrap().starts_with("02:"), "{net}");
    let tap = net["tap"].as_str().unwrap().to_string();
    assert!(link_exists(&tap), "TAP {tap} on the host");
    let default = network(&v, "default");
    assert_eq!(
        default["subnet"],
        subnet.as_str(),
        "--subnet of system start"
    );
    let bridge = default["bridge"].as_str().unwrap().to_string();
    assert_eq!(ports_of(&bridge), vec![tap.clone()]);

    // The host reaches the container at its own address.
    let page = http_get_eventually(&format!("{ip}:80"), Duration::from_secs(30));
    assert_eq!(page, "hello from webhost\n");

    // kill -9 of vessel-network: restarted, the container stays reachable,
    // nothing is duplicated.
    let rules_before = ruleset().matches(&bridge).count();
    assert!(rules_before > 0, "rules name the bridge");
    let old = network_helper_pid(&v).expect("vessel-network runs");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    assert!(
        v.wait_for(Duration::from_secs(20), || network_helper_pid(&v)
            .is_some_and(|p| p != old)),
        "vessel-network was not restarted"
    );
    assert_eq!(
        http_get(&format!("{ip}:80"), Duration::from_secs(5)),
        Ok(page.clone())
    );
    assert_eq!(ruleset().matches(&bridge).count(), rules_before);
    assert_eq!(ports_of(&bridge), vec![tap.clone()]);
    let default = network(&v, "default");
    assert_eq!(default["containers"].as_array().unwrap().len(), 1);

    // Another container finds it by name, alias and host name.
    let out = v.run_rm(&[
        "sh",
        "-c",
        "wget -qO- http://web/ && wget -qO- http://www/ && wget -qO- http://webhost/",
    ]);
    assert_ok(&out, "wget by name");
    assert_eq!(text(&out.stdout), page.repeat(3));

    // --network none: loopback only (sit0 is the guest kernel's IPv6-in-IPv4
    // tunnel, not a NIC), and up, with localhost and the host name in
    // /etc/hosts, as Docker gives; --hostname applies.
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--hostname",
        "solo",
        IMAGE,
        "sh",
        "-c",
        "ls /sys/class/net | grep -v sit0; hostname; cat /sys/class/net/lo/operstate; \
         grep -c localhost /etc/hosts; grep -w solo /etc/hosts | cut -f2; \
         (httpd -f -p 127.0.0.1:8081 -h /etc &) ; sleep 0.5; wget -qO- http://localhost:8081/hostname",
    ]);
    assert_ok(&out, "run --network none");
    assert_eq!(
        text(&out.stdout),
        "lo\nsolo\nunknown\n2\nsolo\nsolo\n",
        "{}",
        text(&out.stderr)
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-p",
        "80",
        IMAGE,
        "true",
    ]);
    assert!(
        text(&out.stderr).contains("conflicting options"),
        "{}",
        text(&out.stderr)
    );

    // rm -f of the running container gives back its TAP and lease.
    assert_ok(&v.vessel(&["rm", "-f", "web"]), "rm -f");
    assert!(!link_exists(&tap), "TAP {tap} removed with the container");
    assert!(ports_of(&bridge).is_empty());
    let default = network(&v, "default");
    assert!(default["containers"].as_array().unwrap().is_empty());
    let leases = std::fs::read_to_string(v.path().join("networks/default.json")).unwrap();
    assert!(!leases.contains(&id), "lease gone: {leases}");
}

#[test]
fn published_ports_work_and_are_released_when_the_container_ends() {
    let v = instance(Some(&free_subnet()));
    let port = free_port();
    let spec = format!("127.0.0.1:{port}:80");
    let out = v.vessel(&[
        "run", "-d", "--name", "pub", "-p", &spec, IMAGE, "sh", "-c", SERVE,
    ]);
    assert_ok(&out, "run -p");
    let id = text(&out.stdout).trim().to_string();
    let page = http_get_eventually(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    assert!(page.starts_with("hello from "), "{page}");
    let ls = text(&v.vessel(&["ls"]).stdout);
    assert!(
        ls.contains("PORTS") && ls.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{ls}"
    );
    let info = inspect(&v, "pub");
    assert_eq!(info["networks"][0]["ports"][0]["host_port"], port);
    let tap = info["networks"][0]["tap"].as_str().unwrap().to_string();
    let bridge = network(&v, "default")["bridge"]
        .as_str()
        .unwrap()
        .to_string();

    // The same host port again: refused at once, nothing left behind.
    let out = v.vessel(&["run", "-d", "-p", &spec, IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("port is already allocated") && err.contains(&port.to_string()),
        "{err}"
    );
    let all = text(&v.vessel(&["ls", "-a", "-q"]).stdout);
    assert_eq!(all.lines().count(), 1, "no container half-made: {all}");
    assert_eq!(ports_of(&bridge), vec![tap.clone()]);
    assert_eq!(
        network(&v, "default")["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // stop: the port closes, the TAP and the lease go, no rule names them.
    assert_ok(&v.vessel(&["stop", "-t", "1", "pub"]), "stop");
    assert!(!port_open(port), "port {port} closed after stop");
    assert!(!link_exists(&tap), "TAP {tap} removed at stop");
    let rules = ruleset();
    assert!(
        !rules.contains(&tap) && !rules.contains(&format!("dport {port}")),
        "{rules}"
    );
    assert!(network(&v, "default")["containers"]
        .as_array()
        .unwrap()
        .is_empty());
    let leases = std::fs::read_to_string(v.path().join("networks/default.json")).unwrap();
    assert!(!leases.contains(&id), "lease gone: {leases}");
    let ls = text(&v.vessel(&["ls", "-a"]).stdout);
    assert!(
        !ls.contains("->80/tcp"),
        "no ports on a stopped container: {ls}"
    );

    // A container that ends by itself gives the port back too.
    let out = v.vessel(&["run", "-d", "-p", &spec, IMAGE, "sleep", "3"]);
    assert_ok(&out, "the port is free again");
    let short = text(&out.stdout).trim().to_string();
    assert!(port_open(port), "published while it runs");
    assert!(
        v.wait_for(Duration::from_secs(30), || !port_open(port)
            && inspect(&v, &short)["state"]["status"] == "exited"),
        "port {port} released after the container exited"
    );
    assert!(v.wait_for(Duration::from_secs(5), || ports_of(&bridge).is_empty()));

    // And one that is killed.
    let out = v.vessel(&["run", "-d", "-p", &spec, IMAGE, "sleep", "600"]);
    assert_ok(&out, "run to kill");
    let killed = text(&out.stdout).trim().to_string();
    assert_ok(&v.vessel(&["kill", &killed]), "kill");
    assert!(
        v.wait_for(Duration::from_secs(15), || !port_open(port)
            && ports_of(&bridge).is_empty()
            && network(&v, "default")["containers"]
                .as_array()
                .unwrap()
                .is_empty()),
        "released after kill"
    );
}

#[test]
fn user_networks_are_isolated_and_internal_ones_have_no_way_out() {
    let outside = Outside::new();
    let v = instance(None);
    let (sa, sb, si) = (free_subnet(), free_subnet(), free_subnet());
    for args in [
        vec!["network", "create", "--subnet", &sa, "neta"],
        vec!["network", "create", "--subnet", &sb, "netb"],
        vec!["network", "create", "--internal", "--subnet", &si, "neti"],
    ] {
        assert_ok(&v.vessel(&args), "network create");
    }
    let out = v.vessel(&["network", "create", "--subnet", &sa, "dup"]);
    assert!(!out.status.success(), "an overlapping subnet is refused");
    let ls = text(&v.vessel(&["network", "ls"]).stdout);
    for n in ["neta", "netb", "neti"] {
        assert!(ls.contains(n), "{ls}");
    }
    assert_eq!(network(&v, "neti")["internal"], true);

    let out = v.vessel(&[
        "run",
        "-d",
        "--name",
        "srvb",
        "--network",
        "netb",
        IMAGE,
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "run on netb");
    let ipb = inspect(&v, "srvb")["networks"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ipb.starts_with(sb.trim_end_matches("0/24")),
        "{ipb} in {sb}"
    );
    http_get_eventually(&format!("{ipb}:80"), Duration::from_secs(30));

    // Same network: reachable by name (so the refusals below mean something).
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "netb",
        IMAGE,
        "timeout",
        "10",
        "wget",
        "-qO-",
        "http://srvb/",
    ]);
    assert_ok(&out, "wget on the same network");
    assert!(text(&out.stdout).starts_with("hello from "));

    // Another network: neither the address nor the name, but the outside is.
    let script = format!(
        "timeout 3 wget -qO- http://{ipb}/ && echo REACHED || echo BLOCKED; \
         nslookup srvb >/dev/null 2>&1 && echo RESOLVED || echo UNKNOWN; \
         timeout 10 wget -qO- http://{}/",
        outside.addr
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "neta",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        text(&out.stdout),
        format!("BLOCKED\nUNKNOWN\nclient={}\n", outside.host_ip),
        "stderr: {}",
        text(&out.stderr)
    );
    let seen_before = outside.seen().len();
    assert_eq!(seen_before, 1);

    // Internal: no way out.
    let script = format!(
        "timeout 3 wget -qO- http://{}/ && echo REACHED || echo BLOCKED",
        outside.addr
    );
    let out = v.vessel(&[
        "run",
        "--rm",
        "--network",
        "neti",
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(text(&out.stdout), "BLOCKED\n", "{}", text(&out.stderr));
    assert_eq!(outside.seen().len(), seen_before, "nothing arrived outside");

    // rm of a network in use is refused; once free it goes; prune the rest.
    let out = v.vessel(&["network", "rm", "netb"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("active endpoints"),
        "{}",
        text(&out.stderr)
    );
    let bridge_b = network(&v, "netb")["bridge"].as_str().unwrap().to_string();
    assert_ok(&v.vessel(&["stop", "-t", "1", "srvb"]), "stop srvb");
    assert_ok(&v.vessel(&["network", "rm", "netb"]), "network rm netb");
    assert!(!link_exists(&bridge_b), "bridge {bridge_b} removed");
    let out = v.vessel(&["network", "prune", "-f"]);
    assert_ok(&out, "network prune");
    let pruned = text(&out.stdout);
    assert!(
        pruned.contains("neta") && pruned.contains("neti"),
        "{pruned}"
    );
    let left = text(&v.vessel(&["network", "ls", "-q"]).stdout);
    assert!(
        !left.contains("neta") && !left.contains("netb") && !left.contains("neti"),
        "{left}"
    );
}

#[test]
fn outbound_traffic_is_masqueraded_behind_the_host() {
    let outside = Outside::new();
    let subnet = free_subnet();
    let v = instance(Some(&subnet));
    let out = v.run_rm(&[
        "timeout",
        "10",
        "wget",
        "-qO-",
        &format!("http://{}/", outside.addr),
    ]);
    assert_ok(&out, "wget to the outside host");
    assert_eq!(text(&out.stdout), format!("client={}\n", outside.host_ip));
    let seen = outside.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].ip(), std::net::IpAddr::V4(outside.host_ip));
    // The table goes at system stop, with the bridges.
    let bridge = network(&v, "default")["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ok(&v.vessel(&["system", "stop"]), "system stop");
    assert!(
        !link_exists(&bridge),
        "bridge {bridge} removed at system stop"
    );
    assert!(!ruleset().contains(&bridge), "no rule names {bridge}");
}

#[test]
fn a_container_found_dead_after_an_apiserver_restart_gives_its_network_back() {
    let v = instance(Some(&free_subnet()));
    let port = free_port();
    let spec = format!("127.0.0.1:{port}:80");
    let out = v.vessel(&[
        "run", "-d", "--name", "doomed", "-p", &spec, IMAGE, "sh", "-c", SERVE,
    ]);
    assert_ok(&out, "run -d -p");
    http_get_eventually(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    let info = inspect(&v, "doomed");
    let tap = info["networks"][0]["tap"].as_str().unwrap().to_string();
    let runtime = info["state"]["runtime_pid"].as_i64().unwrap() as i32;
    let vmm = info["state"]["vmm_pid"].as_i64().unwrap() as i32;
    let pid_file = v.path().join("apiserver.pid");
    let old: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // The apiserver (and with it vessel-network) dies, and while it is
    // away, so does the container's VM and its runtime helper.
    for pid in [old, runtime, vmm] {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        v.wait_for(Duration::from_secs(20), || {
            let new = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            new.is_some_and(|p| p != old) && v.vessel(&["ls"]).status.success()
        }),
        "the apiserver was not restarted"
    );
    // The new apiserver finds it dead and gives back its port, TAP and lease.
    assert!(
        v.wait_for(Duration::from_secs(20), || {
            !port_open(port)
                && !link_exists(&tap)
                && v.vessel(&["network", "inspect", "default"])
                    .status
                    .success()
                && network(&v, "default")["containers"]
                    .as_array()
                    .unwrap()
                    .is_empty()
                // The apiserver forgets the attachment right after the
                // helper has given it back.
                && inspect(&v, "doomed")["networks"]
                    .as_array()
                    .unwrap()
                    .is_empty()
        }),
        "port {port} / TAP {tap} / lease / attachment still held: {:#} {:#}",
        network(&v, "default"),
        inspect(&v, "doomed")["networks"]
    );
    assert_eq!(inspect(&v, "doomed")["state"]["status"], "exited");
    // And the port can be published again.
    let out = v.vessel(&["run", "--rm", "-p", &spec, IMAGE, "true"]);
    assert_ok(&out, "the port is free again");
}

/// `curl URL`, in network namespace `ns` when given, until it answers or
/// `limit` passes; the body.
fn curl_eventually(ns: Option<&str>, url: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let mut args: Vec<&str> = Vec::new();
        if let Some(ns) = ns {
            args.extend(["ip", "netns", "exec", ns]);
        }
        args.extend(["curl", "-sf", "-m", "5", url]);
        let out = sh(args[0], &args[1..]);
        if out.status.success() {
            return text(&out.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "curl {url} (netns {ns:?}): {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The address in a `remote=ADDR` answer (busybox httpd listens on IPv6 and
/// writes IPv4 clients as `[::ffff:a.b.c.d]`).
fn remote(body: &str) -> String {
    let a = body
        .trim()
        .strip_prefix("remote=")
        .unwrap_or_else(|| panic!("answer: {body:?}"));
    a.trim_start_matches("[::ffff:")
        .trim_end_matches(']')
        .to_string()
}

#[test]
fn published_ports_are_forwarded_in_the_kernel_and_keep_the_client_address() {
    let outside = Outside::new();
    let subnet = free_subnet();
    let v = instance(Some(&subnet));
    let port = free_port();
    // busybox httpd runs CGI: this one answers with the client's address.
    let serve = "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho remote=$REMOTE_ADDR\\n' > /w/cgi-bin/ip && chmod +x /w/cgi-bin/ip && exec httpd -f -p 80 -h /w";
    let spec = format!("{port}:80");
    let out = v.vessel(&[
        "run", "-d", "--name", "web", "-p", &spec, IMAGE, "sh", "-c", serve,
    ]);
    assert_ok(&out, "run -d -p");
    let gateway = network(&v, "default")["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!(":{port}/cgi-bin/ip");

    // A client elsewhere (the outside namespace) through the host's address
    // on its link: DNAT in the kernel, and the container sees the client.
    let inside = outside.addr.ip();
    let body = curl_eventually(
        Some(&outside.ns),
        &format!("http://{}{path}", outside.host_ip),
        Duration::from_secs(60),
    );
    assert_eq!(remote(&body), inside.to_string());
    // The host through a non-loopback address of its own: DNAT in output.
    let body = curl_eventually(
        None,
        &format!("http://{}{path}", outside.host_ip),
        Duration::from_secs(10),
    );
    assert_eq!(remote(&body), outside.host_ip.to_string());
    // The host through loopback: the userland proxy (from the gateway).
    let body = curl_eventually(
        None,
        &format!("http://127.0.0.1{path}"),
        Duration::from_secs(10),
    );
    assert_eq!(remote(&body), gateway);
    // Another container of the network through the gateway (hairpin): it
    // works, masqueraded behind the gateway.
    let out = v.run_rm(&[
        "timeout",
        "10",
        "wget",
        "-qO-",
        &format!("http://{gateway}{path}"),
    ]);
    assert_ok(&out, "hairpin wget");
    assert_eq!(remote(&text(&out.stdout)), gateway);

    // Stopped: the DNAT goes with the proxy.
    let dport = format!("dport {port} ");
    assert!(ruleset().contains(&dport), "{}", ruleset());
    assert_ok(&v.vessel(&["stop", "-t", "1", "web"]), "stop web");
    assert!(!ruleset().contains(&dport), "DNAT left: {}", ruleset());
    let out = sh(
        "ip",
        &[
            "netns",
            "exec",
            &outside.ns,
            "curl",
            "-s",
            "-m",
            "3",
            &format!("http://{}{path}", outside.host_ip),
        ],
    );
    assert!(!out.status.success(), "still served after stop");
}
