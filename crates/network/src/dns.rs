//! The resolver on each network's gateway address (UDP and TCP port 53).
//!
//! It answers `A` queries for the names of the containers on its network
//! (container name, hostname, aliases, short ID) and forwards everything
//! else to the host's resolvers. Queries come from untrusted guests: they
//! are parsed with `hickory-proto`, bounded in size, and a malformed one is
//! dropped (UDP) or ends its connection (TCP); nothing here panics on input.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// TTL of the answers for container names (containers come and go).
pub const LOCAL_TTL: u32 = 10;
/// Largest UDP message read or relayed.
const MAX_UDP: usize = 4096;
/// How long an upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded queries in flight per server, beyond which queries are dropped.
const MAX_IN_FLIGHT: usize = 128;
/// TCP connections served at once per server.
const MAX_TCP: usize = 32;

/// Container names on one network: lower-case name → addresses.
pub type Names = Arc<RwLock<BTreeMap<String, Vec<Ipv4Addr>>>>;

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Ask the upstream resolvers.
    Forward,
    /// Not a DNS query we can answer: ignore it.
    Drop,
}

/// Normalise a name for lookups: lower case, no trailing dot.
pub fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn reply(req: &Message, code: ResponseCode) -> Message {
    let mut m = Message::error_msg(req.metadata.id, req.metadata.op_code, code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(req.queries.iter().cloned());
    m
}

/// Decide about one query: answer it from `names`, forward it, or drop it.
pub fn handle_query(packet: &[u8], names: &BTreeMap<String, Vec<Ipv4Addr>>) -> Verdict {
    let Ok(req) = Message::from_vec(packet) else {
        return Verdict::Drop;
    };
    if req.metadata.message_type != MessageType::Query {
        return Verdict::Drop;
    }
    let encode = |m: Message| match m.to_vec() {
        Ok(v) => Verdict::Answer(v),
        Err(_) => Verdict::Drop,
    };
    if req.metadata.op_code != OpCode::Query {
        return encode(reply(&req, ResponseCode::NotImp));
    }
    if req.queries.len() != 1 {
        return encode(reply(&req, ResponseCode::FormErr));
    }
    let q = &req.queries[0];
    let Some(ips) = names.get(&key(&q.name().to_ascii())) else {
        return Verdict::Forward;
    };
    let mut m = reply(&req, ResponseCode::NoError);
    m.metadata.authoritative = true;
    if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
        for ip in ips {
            m.add_answer(Record::from_rdata(
                q.name().clone(),
                LOCAL_TTL,
                RData::A(A(*ip)),
            ));
        }
    }
    // Other types of a known name: an empty NOERROR answer, so that a
    // resolver asking A and AAAA together still uses the A record.
    encode(m)
}

/// The nameservers of a `resolv.conf`, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The host's resolvers from `/etc/resolv.conf`.
pub fn host_upstreams(path: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// Ask the upstream resolvers over UDP; the first valid answer wins.
pub fn forward_udp(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = packet.get(..2)?;
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        if s.connect(up).is_err() || s.set_read_timeout(Some(UPSTREAM_TIMEOUT)).is_err() {
            continue;
        }
        if s.send(packet).is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_UDP];
        // Skip stray datagrams whose ID does not match.
        for _ in 0..4 {
            match s.recv(&mut buf) {
                Ok(n) if n >= 12 && &buf[..2] == id => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}

/// Ask the upstream resolvers over TCP.
pub fn forward_tcp(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    for up in upstreams {
        let Ok(mut s) = TcpStream::connect_timeout(up, UPSTREAM_TIMEOUT) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(UPSTREAM_TIMEOUT));
        let _ = s.set_write_timeout(Some(UPSTREAM_TIMEOUT));
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(packet);
        if s.write_all(&out).is_err() {
            continue;
        }
        if let Ok(Some(answer)) = read_tcp_message(&mut s) {
            return Some(answer);
        }
    }
    None
}

/// Read one length-prefixed DNS message; `None` at a clean end.
fn read_tcp_message(s: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u16::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(Some(buf))
}

fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    reply(&req, ResponseCode::ServFail).to_vec().ok()
}

/// Wait until `fd` is readable, at most `ms` milliseconds.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// A running resolver for one network.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub addr: Ipv4Addr,
}

impl DnsServer {
    /// Listen on `addr:port` (UDP and TCP) and serve `names`.
    pub fn start(
        addr: Ipv4Addr,
        port: u16,
        names: Names,
        upstreams: Arc<Vec<SocketAddr>>,
    ) -> io::Result<Self> {
        let udp = UdpSocket::bind((addr, port))?;
        let tcp = TcpListener::bind((addr, port))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (stop, names, upstreams) = (stop.clone(), names.clone(), upstreams.clone());
            threads.push(std::thread::spawn(move || {
                serve_udp(udp, &stop, &names, &upstreams)
            }));
        }
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                serve_tcp(tcp, &stop, &names, &upstreams)
            }));
        }
        Ok(Self {
            stop,
            threads,
            addr,
        })
    }

    /// Stop serving and close the sockets.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn serve_udp(sock: UdpSocket, stop: &AtomicBool, names: &Names, upstreams: &Arc<Vec<SocketAddr>>) {
    let sock = Arc::new(sock);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut buf = vec![0u8; MAX_UDP];
    while !stop.load(Ordering::SeqCst) {
        if !readable(sock.as_raw_fd(), 250) {
            continue;
        }
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let packet = &buf[..n];
        let verdict = match names.read() {
            Ok(map) => handle_query(packet, &map),
            Err(_) => Verdict::Drop,
        };
        match verdict {
            Verdict::Answer(a) => {
                let _ = sock.send_to(&a, peer);
            }
            Verdict::Drop => {}
            Verdict::Forward => {
                if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (sock, ups, flight) = (sock.clone(), upstreams.clone(), in_flight.clone());
                let packet = packet.to_vec();
                let spawned = std::thread::Builder::new().spawn(move || {
                    if let Some(a) = forward_udp(&packet, &ups).or_else(|| servfail(&packet)) {
                        let _ = sock.send_to(&a, peer);
                    }
                    flight.fetch_sub(1, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

fn serve_tcp(
    listener: TcpListener,
    stop: &AtomicBool,
    names: &Names,
    upstreams: &Arc<Vec<SocketAddr>>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        if !readable(listener.as_raw_fd(), 250) {
            continue;
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_TCP {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropping `conn` closes it
        }
        let (names, ups, act) = (names.clone(), upstreams.clone(), active.clone());
        let spawned = std::thread::Builder::new().spawn(move || {
            serve_tcp_conn(conn, &names, &ups);
            act.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn serve_tcp_conn(mut conn: TcpStream, names: &Names, upstreams: &[SocketAddr]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    // A client may send several queries on one connection; serve a few.
    for _ in 0..16 {
        let Ok(Some(packet)) = read_tcp_message(&mut conn) else {
            return;
        };
        let verdict = match names.read() {
            Ok(map) => handle_query(&packet, &map),
            Err(_) => Verdict::Drop,
        };
        let answer = match verdict {
            Verdict::Answer(a) => a,
            Verdict::Drop => return,
            Verdict::Forward => match forward_tcp(&packet, upstreams).or_else(|| servfail(&packet))
            {
                Some(a) => a,
                None => return,
            },
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&answer);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn names() -> BTreeMap<String, Vec<Ipv4Addr>> {
        BTreeMap::from([("web".to_string(), vec![Ipv4Addr::new(10, 88, 0, 2)])])
    }

    fn answer(v: Verdict) -> Message {
        match v {
            Verdict::Answer(a) => Message::from_vec(&a).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn known_names_are_answered_case_insensitively() {
        let m = answer(handle_query(&query("WeB.", RecordType::A), &names()));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 88, 0, 2))));
        assert_eq!(m.answers[0].ttl, LOCAL_TTL);
        let m = answer(handle_query(&query("web", RecordType::AAAA), &names()));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_names_are_forwarded() {
        assert_eq!(
            handle_query(&query("example.org.", RecordType::A), &names()),
            Verdict::Forward
        );
        assert_eq!(
            handle_query(&query("db", RecordType::A), &names()),
            Verdict::Forward
        );
    }

    #[test]
    fn garbage_and_odd_messages_never_panic() {
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 3],
            vec![0xff; 12],
            vec![0xff; 600],
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01".to_vec(),
        ];
        let q = query("web", RecordType::A);
        for cut in 0..q.len() {
            cases.push(q[..cut].to_vec());
        }
        for i in 0..q.len() {
            let mut c = q.clone();
            c[i] ^= 0xa5;
            cases.push(c);
        }
        for c in cases {
            let _ = handle_query(&c, &names());
            let _ = servfail(&c);
        }
        // A response is not a query.
        let mut m = Message::from_vec(&q).unwrap();
        m.metadata.message_type = MessageType::Response;
        assert_eq!(handle_query(&m.to_vec().unwrap(), &names()), Verdict::Drop);
        // Two questions: FORMERR.
        let mut m = Message::from_vec(&q).unwrap();
        m.add_query(Query::query(Name::from_ascii("x").unwrap(), RecordType::A));
        let r = answer(handle_query(&m.to_vec().unwrap(), &names()));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn resolv_conf() {
        let t =
            "# c\nsearch x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bad\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    /// A real server on loopback: a local name over UDP and TCP, and a
    /// forwarded one through a fake upstream on loopback too.
    #[test]
    fn serves_udp_and_tcp_and_forwards() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let up = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = upstream.recv_from(&mut buf).unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut r = reply(&req, ResponseCode::NoError);
            r.add_answer(Record::from_rdata(
                req.queries[0].name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(127, 0, 0, 9))),
            ));
            upstream.send_to(&r.to_vec().unwrap(), peer).unwrap();
        });
        let names: Names = Arc::new(RwLock::new(names()));
        // Find a free port on 127.0.0.1 for both protocols.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let srv = DnsServer::start(
            Ipv4Addr::LOCALHOST,
            port,
            names.clone(),
            Arc::new(vec![up_addr]),
        )
        .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1500];
        c.send_to(&query("web", RecordType::A), ("127.0.0.1", port))
            .unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(Message::from_vec(&buf[..n]).unwrap().answers.len(), 1);
        c.send_to(&query("outside.test", RecordType::A), ("127.0.0.1", port))
            .unwrap();
        let n = c.recv(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(127, 0, 0, 9))));
        up.join().unwrap();
        // TCP, and a name added while running.
        names
            .write()
            .unwrap()
            .insert("db".into(), vec![Ipv4Addr::new(10, 88, 0, 3)]);
        let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let q = query("db", RecordType::A);
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        t.write_all(&out).unwrap();
        let a = read_tcp_message(&mut t).unwrap().unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 88, 0, 3))));
        srv.stop();
        assert!(
            UdpSocket::bind(("127.0.0.1", port)).is_ok(),
            "port released"
        );
    }
}
