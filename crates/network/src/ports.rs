//! Published ports: a userland proxy per mapping that holds the host port
//! (so a taken port fails at once with a clear message) and relays to the
//! container's address: TCP by accept and two copy threads per connection,
//! UDP by a socket per client.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vessel_api::network::{PortMapping, Protocol};

/// TCP connections proxied at once per published port.
const MAX_TCP_CONNS: usize = 1024;
/// UDP clients remembered per published port.
const MAX_UDP_CLIENTS: usize = 256;
/// A UDP client forgotten after this long without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a port cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("Bind for {0} failed: port is already allocated")]
    Allocated(String),
    #[error("Bind for {0} failed: no free port in the range")]
    RangeFull(String),
    #[error("Bind for {0} failed")]
    Bind(String, #[source] io::Error),
    #[error("invalid host IP {0:?}")]
    HostIp(String),
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A host port bound but not yet relaying.
pub struct Bound {
    socket: Socket,
    /// The mapping with the host port actually bound.
    pub mapping: PortMapping,
}

fn host_ip(m: &PortMapping) -> Result<IpAddr, PortError> {
    if m.host_ip.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    m.host_ip
        .parse()
        .map_err(|_| PortError::HostIp(m.host_ip.clone()))
}

fn bind_one(ip: IpAddr, port: u16, proto: Protocol) -> io::Result<Socket> {
    let addr = SocketAddr::new(ip, port);
    Ok(match proto {
        Protocol::Tcp => Socket::Tcp(TcpListener::bind(addr)?),
        Protocol::Udp => Socket::Udp(UdpSocket::bind(addr)?),
    })
}

fn local_port(s: &Socket) -> u16 {
    match s {
        Socket::Tcp(l) => l.local_addr().map(|a| a.port()).unwrap_or(0),
        Socket::Udp(u) => u.local_addr().map(|a| a.port()).unwrap_or(0),
    }
}

/// Bind the host side of `m`.
pub fn bind(m: &PortMapping) -> Result<Bound, PortError> {
    let ip = host_ip(m)?;
    let shown = |p: u16| SocketAddr::new(ip, p).to_string();
    let socket = match m.host_port_end {
        Some(end) if end > m.host_port => {
            let mut found = None;
            for p in m.host_port..=end {
                if let Ok(s) = bind_one(ip, p, m.protocol) {
                    found = Some(s);
                    break;
                }
            }
            found.ok_or_else(|| PortError::RangeFull(format!("{ip}:{}-{end}", m.host_port)))?
        }
        _ => bind_one(ip, m.host_port, m.protocol).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                PortError::Allocated(shown(m.host_port))
            } else {
                PortError::Bind(shown(m.host_port), e)
            }
        })?,
    };
    let mut mapping = m.clone();
    mapping.host_port = local_port(&socket);
    mapping.host_port_end = None;
    Ok(Bound { socket, mapping })
}

/// A running proxy; stopping it closes the host port and every relayed
/// connection.
pub struct Proxy {
    stop: Arc<AtomicBool>,
    /// A second descriptor of the host socket: shutting it down wakes the
    /// relay thread out of its poll at once, so a stop takes no poll period.
    wake: Option<OwnedFd>,
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
    pub mapping: PortMapping,
}

impl Proxy {
    /// Relay `bound` to `target`'s container port.
    pub fn start(bound: Bound, target: Ipv4Addr) -> Proxy {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let to = SocketAddr::new(IpAddr::V4(target), bound.mapping.container_port);
        let wake = match &bound.socket {
            Socket::Tcp(l) => l.try_clone().ok().map(OwnedFd::from),
            Socket::Udp(u) => u.try_clone().ok().map(OwnedFd::from),
        };
        let thread = {
            let (stop, conns) = (stop.clone(), conns.clone());
            match bound.socket {
                Socket::Tcp(l) => std::thread::spawn(move || tcp_loop(l, to, &stop, &conns)),
                Socket::Udp(u) => std::thread::spawn(move || udp_loop(u, to, &stop)),
            }
        };
        Proxy {
            stop,
            wake,
            conns,
            thread: Some(thread),
            mapping: bound.mapping,
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(fd) = &self.wake {
            // SAFETY: `fd` is an open socket descriptor owned by `self`;
            // shutdown(2) only changes the socket's state (on a listening or
            // unconnected UDP socket it wakes every poller).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Ok(conns) = self.conns.lock() {
            for c in conns.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn tcp_loop(
    listener: TcpListener,
    to: SocketAddr,
    stop: &Arc<AtomicBool>,
    conns: &Arc<Mutex<HashMap<u64, TcpStream>>>,
) {
    let next = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        if !readable(listener.as_raw_fd(), 200) {
            continue;
        }
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        if conns.lock().map(|c| c.len()).unwrap_or(usize::MAX) >= MAX_TCP_CONNS {
            continue;
        }
        let id = next.fetch_add(1, Ordering::SeqCst);
        let (stop, conns) = (stop.clone(), conns.clone());
        let _ = std::thread::Builder::new().spawn(move || {
            let Ok(server) = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) else {
                return; // closing `client` tells the peer
            };
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let (Ok(c2), Ok(s2), Ok(reg)) =
                (client.try_clone(), server.try_clone(), client.try_clone())
            else {
                return;
            };
            if let Ok(mut m) = conns.lock() {
                m.insert(id, reg);
            }
            let up = std::thread::spawn(move || pipe(c2, s2));
            pipe(server, client);
            let _ = up.join();
            if let Ok(mut m) = conns.lock() {
                m.remove(&id);
            }
        });
    }
}

/// Copy `from` into `to` until EOF, then half-close `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

struct UdpClient {
    socket: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
}

fn udp_loop(host: UdpSocket, to: SocketAddr, stop: &Arc<AtomicBool>) {
    let host = Arc::new(host);
    let clients: Arc<Mutex<HashMap<SocketAddr, UdpClient>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        if !readable(host.as_raw_fd(), 200) {
            continue;
        }
        let Ok((n, peer)) = host.recv_from(&mut buf) else {
            continue;
        };
        let Ok(mut map) = clients.lock() else {
            return;
        };
        if !map.contains_key(&peer) {
            if map.len() >= MAX_UDP_CLIENTS {
                continue;
            }
            let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                continue;
            };
            if s.connect(to).is_err() {
                continue;
            }
            let client = UdpClient {
                socket: Arc::new(s),
                last: Arc::new(Mutex::new(Instant::now())),
            };
            let (sock, last, host, stop, clients2) = (
                client.socket.clone(),
                client.last.clone(),
                host.clone(),
                stop.clone(),
                clients.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    let idle = last.lock().map(|l| l.elapsed()).unwrap_or(UDP_IDLE);
                    if idle >= UDP_IDLE {
                        break;
                    }
                    if !readable(sock.as_raw_fd(), 200) {
                        continue;
                    }
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            let _ = host.send_to(&buf[..n], peer);
                            if let Ok(mut l) = last.lock() {
                                *l = Instant::now();
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                if let Ok(mut m) = clients2.lock() {
                    m.remove(&peer);
                }
            });
            map.insert(peer, client);
        }
        if let Some(c) = map.get(&peer) {
            if let Ok(mut l) = c.last.lock() {
                *l = Instant::now();
            }
            let _ = c.socket.send(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn mapping(port: u16, to: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            host_port_end: None,
            container_port: to,
            protocol: p,
        }
    }

    #[test]
    fn tcp_is_relayed_and_stop_closes_the_port() {
        let server = TcpListener::bind("127.0.0.2:0").unwrap();
        let sport = server.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let (mut c, _) = server.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            c.write_all(&b.map(|x| x.to_ascii_uppercase())).unwrap();
        });
        let b = bind(&mapping(0, sport, Protocol::Tcp)).unwrap();
        let hport = b.mapping.host_port;
        assert_ne!(hport, 0);
        // The same port again: Docker's message.
        let e = bind(&mapping(hport, sport, Protocol::Tcp)).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!("Bind for 127.0.0.1:{hport} failed: port is already allocated")
        );
        let p = Proxy::start(b, Ipv4Addr::new(127, 0, 0, 2));
        let mut c = TcpStream::connect(("127.0.0.1", hport)).unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"PING");
        srv.join().unwrap();
        p.stop();
        assert!(TcpStream::connect(("127.0.0.1", hport)).is_err());
    }

    #[test]
    fn stop_does_not_wait_out_the_poll_period() {
        // Ten idle proxies, TCP and UDP: each stop wakes its relay thread at
        // once instead of waiting for the next 200 ms poll timeout.
        let mut proxies = Vec::new();
        for i in 0..10 {
            let proto = if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let b = bind(&mapping(0, 9, proto)).unwrap();
            proxies.push(Proxy::start(b, Ipv4Addr::new(127, 0, 0, 2)));
        }
        std::thread::sleep(Duration::from_millis(50)); // all in their poll
        let started = Instant::now();
        for p in proxies {
            p.stop();
        }
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "10 stops took {took:?}");
    }

    #[test]
    fn udp_is_relayed() {
        let server = UdpSocket::bind("127.0.0.2:0").unwrap();
        let sport = server.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            let mut b = [0u8; 16];
            let (n, peer) = server.recv_from(&mut b).unwrap();
            server.send_to(&b[..n], peer).unwrap();
        });
        let b = bind(&mapping(0, sport, Protocol::Udp)).unwrap();
        let hport = b.mapping.host_port;
        let p = Proxy::start(b, Ipv4Addr::new(127, 0, 0, 2));
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"hello", ("127.0.0.1", hport)).unwrap();
        let mut b = [0u8; 16];
        let n = c.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"hello");
        srv.join().unwrap();
        p.stop();
    }

    #[test]
    fn host_port_range_takes_a_free_one() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut m = mapping(port, 80, Protocol::Tcp);
        m.host_port_end = Some(port.saturating_add(20));
        let b = bind(&m).unwrap();
        assert!(b.mapping.host_port > port && b.mapping.host_port_end.is_none());
    }
}
