//! A small synchronous rtnetlink client: links, bridges, addresses and
//! routes, through `netlink-packet-route` on a blocking `netlink-sys` socket.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// One network interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// `bridge`, `tun`, `veth`, ... when the kernel says.
    pub kind: Option<String>,
    pub up: bool,
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub oif: Option<u32>,
}

/// An rtnetlink connection.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn nl_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 1 })
    }

    /// Send one request and collect the answers: the inner messages of a
    /// dump, or nothing for an acknowledged change.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        self.socket.send(&buf, 0)?;

        let mut out = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0)?;
            if n > rx.len() {
                return Err(nl_err("truncated answer"));
            }
            let mut off = 0;
            while off < rx.len() {
                let m = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&rx[off..])
                    .map_err(nl_err)?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len.div_ceil(4) * 4;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(out),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Every link of the host (of this network namespace).
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewLink(m) = a else {
                continue;
            };
            let mut link = Link {
                index: m.header.index,
                name: String::new(),
                master: None,
                kind: None,
                up: m.header.flags.contains(LinkFlags::Up),
            };
            for attr in &m.attributes {
                match attr {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Controller(i) => link.master = Some(*i),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                link.kind = Some(k.to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Create a bridge (fails with `EEXIST` if the name is taken).
    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    /// Bring a link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), 0)?;
        Ok(())
    }

    /// Set a link's MAC address. A bridge given one keeps it; otherwise it
    /// takes the lowest of its ports' and changes as ports come and go,
    /// which leaves stale gateway entries in the guests' ARP caches.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(m), 0)?;
        Ok(())
    }

    /// Enslave a link to a bridge.
    pub fn set_master(&mut self, index: u32, master: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.request(RouteNetlinkMessage::SetLink(m), 0)?;
        Ok(())
    }

    /// Delete a link by index.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0)?;
        Ok(())
    }

    /// Delete the link called `name`; true when it existed.
    pub fn delete_link_named(&mut self, name: &str) -> io::Result<bool> {
        match self.link(name)? {
            Some(l) => match self.delete_link(l.index) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
                Err(e) => Err(e),
            },
            None => Ok(false),
        }
    }

    /// Put `ip/prefix_len` on a link (replacing the same address).
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        let host_mask = if prefix_len >= 32 {
            0
        } else {
            u32::MAX >> prefix_len
        };
        let bcast = Ipv4Addr::from(u32::from(ip) | host_mask);
        m.attributes.push(AddressAttribute::Broadcast(bcast));
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Every IPv4 address: (link index, address, prefix length).
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let answers = self.request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewAddress(m) = a else {
                continue;
            };
            for attr in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    out.push((m.header.index, *ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let answers = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewRoute(m) = a else {
                continue;
            };
            if m.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut r = Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: m.header.destination_prefix_length,
                oif: None,
            };
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => r.destination = *d,
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link("lo").unwrap().expect("lo exists");
        assert_eq!(lo.index, 1);
        assert!(nl
            .addresses()
            .unwrap()
            .iter()
            .any(|(i, ip, p)| *i == 1 && ip.is_loopback() && *p == 8));
        // Whatever the host's routes are, dumping them works.
        nl.routes().unwrap();
    }
}
