//! Networking a container sees: socket families and types, netlink
//! protocols, generic netlink families, the kinds of network device a
//! nested runtime can create (in a private network namespace), and
//! netfilter (nftables and iptables tables).

use super::sys::{self, Outcome};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;
use vessel_probe::Report;

const CHILD: Duration = Duration::from_secs(10);

/// Address family names by number (include/linux/socket.h).
const FAMILIES: &[(i32, &str)] = &[
    (1, "AF_UNIX"),
    (2, "AF_INET"),
    (3, "AF_AX25"),
    (4, "AF_IPX"),
    (5, "AF_APPLETALK"),
    (6, "AF_NETROM"),
    (7, "AF_BRIDGE"),
    (8, "AF_ATMPVC"),
    (9, "AF_X25"),
    (10, "AF_INET6"),
    (11, "AF_ROSE"),
    (12, "AF_DECnet"),
    (13, "AF_NETBEUI"),
    (14, "AF_SECURITY"),
    (15, "AF_KEY"),
    (16, "AF_NETLINK"),
    (17, "AF_PACKET"),
    (18, "AF_ASH"),
    (19, "AF_ECONET"),
    (20, "AF_ATMSVC"),
    (21, "AF_RDS"),
    (22, "AF_SNA"),
    (23, "AF_IRDA"),
    (24, "AF_PPPOX"),
    (25, "AF_WANPIPE"),
    (26, "AF_LLC"),
    (27, "AF_IB"),
    (28, "AF_MPLS"),
    (29, "AF_CAN"),
    (30, "AF_TIPC"),
    (31, "AF_BLUETOOTH"),
    (32, "AF_IUCV"),
    (33, "AF_RXRPC"),
    (34, "AF_ISDN"),
    (35, "AF_PHONET"),
    (36, "AF_IEEE802154"),
    (37, "AF_CAIF"),
    (38, "AF_ALG"),
    (39, "AF_NFC"),
    (40, "AF_VSOCK"),
    (41, "AF_KCM"),
    (42, "AF_QIPCRTR"),
    (43, "AF_SMC"),
    (44, "AF_XDP"),
    (45, "AF_MCTP"),
];

const TYPES: &[(i32, &str)] = &[
    (libc::SOCK_STREAM, "SOCK_STREAM"),
    (libc::SOCK_DGRAM, "SOCK_DGRAM"),
    (libc::SOCK_RAW, "SOCK_RAW"),
    (libc::SOCK_SEQPACKET, "SOCK_SEQPACKET"),
];

/// (family, type, protocol, name) for sockets that need a protocol.
const WITH_PROTOCOL: &[(i32, i32, i32, &str)] = &[
    (2, libc::SOCK_RAW, libc::IPPROTO_ICMP, "IPPROTO_ICMP"),
    (2, libc::SOCK_DGRAM, libc::IPPROTO_ICMP, "IPPROTO_ICMP"),
    (2, libc::SOCK_RAW, libc::IPPROTO_RAW, "IPPROTO_RAW"),
    (2, libc::SOCK_STREAM, libc::IPPROTO_SCTP, "IPPROTO_SCTP"),
    (2, libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP, "IPPROTO_SCTP"),
    (
        2,
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDPLITE,
        "IPPROTO_UDPLITE",
    ),
    (2, libc::SOCK_STREAM, 262, "IPPROTO_MPTCP"),
    (2, libc::SOCK_DGRAM, 115, "IPPROTO_L2TP"),
    (10, libc::SOCK_RAW, libc::IPPROTO_ICMPV6, "IPPROTO_ICMPV6"),
    (10, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6, "IPPROTO_ICMPV6"),
    (10, libc::SOCK_RAW, libc::IPPROTO_RAW, "IPPROTO_RAW"),
    (10, libc::SOCK_STREAM, libc::IPPROTO_SCTP, "IPPROTO_SCTP"),
    (
        10,
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDPLITE,
        "IPPROTO_UDPLITE",
    ),
    (10, libc::SOCK_STREAM, 262, "IPPROTO_MPTCP"),
    (15, libc::SOCK_RAW, 2, "PF_KEY_V2"),
    (17, libc::SOCK_RAW, 0x0300, "ETH_P_ALL"),
];

const NETLINK: &[(i32, &str)] = &[
    (0, "NETLINK_ROUTE"),
    (2, "NETLINK_USERSOCK"),
    (3, "NETLINK_FIREWALL"),
    (4, "NETLINK_SOCK_DIAG"),
    (5, "NETLINK_NFLOG"),
    (6, "NETLINK_XFRM"),
    (7, "NETLINK_SELINUX"),
    (8, "NETLINK_ISCSI"),
    (9, "NETLINK_AUDIT"),
    (10, "NETLINK_FIB_LOOKUP"),
    (11, "NETLINK_CONNECTOR"),
    (12, "NETLINK_NETFILTER"),
    (13, "NETLINK_IP6_FW"),
    (14, "NETLINK_DNRTMSG"),
    (15, "NETLINK_KOBJECT_UEVENT"),
    (16, "NETLINK_GENERIC"),
    (18, "NETLINK_SCSITRANSPORT"),
    (19, "NETLINK_ECRYPTFS"),
    (20, "NETLINK_RDMA"),
    (21, "NETLINK_CRYPTO"),
    (22, "NETLINK_SMC"),
];

/// Link kinds created with RTM_NEWLINK; only EOPNOTSUPP ("unknown device
/// type") means the kernel lacks the kind: other errors are missing
/// parameters of a kind it knows.
const LINK_KINDS: &[&str] = &[
    "veth",
    "bridge",
    "dummy",
    "bond",
    "team",
    "macvlan",
    "macvtap",
    "ipvlan",
    "ipvtap",
    "vxlan",
    "geneve",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "ipip",
    "sit",
    "ip6tnl",
    "vti",
    "vti6",
    "wireguard",
    "vrf",
    "ifb",
    "nlmon",
    "vlan",
    "macsec",
    "xfrm",
    "bareudp",
    "netkit",
];

fn probe_sockets(r: &mut Report) {
    let absent = |e: i32| {
        matches!(
            e,
            libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EINVAL
        ) || e == libc::EPROTOTYPE
            || e == libc::EOPNOTSUPP
    };
    for &(af, name) in FAMILIES {
        let mut any = false;
        let mut last = 0;
        for &(ty, tname) in TYPES {
            match sys::socket(af, ty, 0) {
                Ok(_) => {
                    any = true;
                    r.yes(&format!("socket:{name}/{tname}"), "ok");
                }
                Err(e) if !absent(e) => {
                    any = true;
                    r.yes(&format!("socket:{name}/{tname}"), &sys::errno_name(e));
                }
                Err(e) => last = e,
            }
        }
        for &(paf, ty, proto, pname) in WITH_PROTOCOL {
            if paf != af {
                continue;
            }
            let tname = TYPES
                .iter()
                .find(|(t, _)| *t == ty)
                .map(|(_, n)| *n)
                .unwrap_or("?");
            let key = format!("socket:{name}/{tname}/{pname}");
            match sys::socket(af, ty, proto) {
                Ok(_) => {
                    any = true;
                    r.yes(&key, "ok")
                }
                Err(e) if !absent(e) => {
                    any = true;
                    r.yes(&key, &sys::errno_name(e))
                }
                Err(e) => r.no(&key, &sys::errno_name(e)),
            }
        }
        if any {
            r.yes(&format!("socket:{name}"), "");
        } else {
            r.no(&format!("socket:{name}"), &sys::errno_name(last));
        }
    }
    for &(proto, name) in NETLINK {
        match sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, proto) {
            Ok(_) => r.yes(&format!("netlink:{name}"), "ok"),
            Err(e) => r.no(&format!("netlink:{name}"), &sys::errno_name(e)),
        }
    }
}

// --- netlink messages ---

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink attribute.
fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut v = Vec::with_capacity(align4(len));
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align4(len), 0);
    v
}

fn nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(body);
    v
}

/// One parsed netlink message: type and payload after the header.
struct Msg {
    ty: u16,
    payload: Vec<u8>,
}

fn split(buf: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        out.push(Msg {
            ty,
            payload: buf[off + 16..off + len].to_vec(),
        });
        off += align4(len);
    }
    out
}

fn error_code(m: &Msg) -> i32 {
    if m.payload.len() >= 4 {
        -i32::from_ne_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]])
    } else {
        libc::EIO
    }
}

/// Send one request, collect replies until DONE or an error/ack.
fn transact(fd: &OwnedFd, req: &[u8]) -> Result<Vec<Msg>, i32> {
    // SAFETY: sending a buffer we own on our socket.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(sys::errno());
    }
    // A receive timeout, so a silent kernel cannot hang the probe.
    let tv = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(sys::errno());
        }
        for m in split(&buf[..n as usize]) {
            match m.ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = error_code(&m);
                    return if e == 0 { Ok(out) } else { Err(e) };
                }
                _ => out.push(m),
            }
        }
    }
}

/// Attributes of a payload starting at `off`: (type, value).
fn attrs(p: &[u8], mut off: usize) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while off + 4 <= p.len() {
        let len = u16::from_ne_bytes([p[off], p[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([p[off + 2], p[off + 3]]) & 0x3fff;
        if len < 4 || off + len > p.len() {
            break;
        }
        out.push((ty, p[off + 4..off + len].to_vec()));
        off += align4(len);
    }
    out
}

fn probe_genl(r: &mut Report) {
    let fd = match sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC) {
        Ok(fd) => fd,
        Err(e) => {
            r.no("genl:nlctrl", &sys::errno_name(e));
            return;
        }
    };
    // CTRL_CMD_GETFAMILY (3), version 1, dumped.
    let req = nlmsg(0x10, NLM_F_REQUEST | NLM_F_DUMP, 1, &[3, 1, 0, 0]);
    match transact(&fd, &req) {
        Ok(msgs) => {
            for m in msgs {
                for (ty, v) in attrs(&m.payload, 4) {
                    // CTRL_ATTR_FAMILY_NAME
                    if ty == 2 {
                        let name = String::from_utf8_lossy(&v)
                            .trim_end_matches('\0')
                            .to_string();
                        r.yes(&format!("genl:{name}"), "");
                    }
                }
            }
        }
        Err(e) => r.no("genl:nlctrl", &sys::errno_name(e)),
    }
}

fn rtnl_newlink(fd: &OwnedFd, name: &str, kind: &str) -> Result<(), i32> {
    let mut body = vec![0u8; 16]; // struct ifinfomsg
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    body.extend(nla(3, &ifname)); // IFLA_IFNAME
    let mut k = kind.as_bytes().to_vec();
    k.push(0);
    body.extend(nla(18, &nla(1, &k))); // IFLA_LINKINFO { IFLA_INFO_KIND }
    let req = nlmsg(
        16, // RTM_NEWLINK
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        2,
        &body,
    );
    transact(fd, &req).map(|_| ())
}

fn probe_link_kinds(r: &mut Report) {
    for (i, kind) in LINK_KINDS.iter().enumerate() {
        let o = sys::in_child(CHILD, || {
            if sys::unshare(libc::CLONE_NEWNET).is_err() {
                return 199;
            }
            let fd = match sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) {
                Ok(fd) => fd,
                Err(e) => return e,
            };
            match rtnl_newlink(&fd, &format!("vp{i}"), kind) {
                Ok(()) => 0,
                Err(e) => e,
            }
        });
        let key = format!("netdev:{kind}");
        match o {
            Outcome::Exited(0) => r.yes(&key, "ok"),
            Outcome::Exited(e) if e == libc::EOPNOTSUPP => r.no(&key, "EOPNOTSUPP"),
            Outcome::Exited(e) if e < 199 => r.yes(&key, &sys::errno_name(e)),
            o => r.no(&key, &o.describe()),
        }
    }
    // TUN/TAP through /dev/net/tun.
    let o = sys::in_child(CHILD, || {
        if let Err(e) = sys::unshare(libc::CLONE_NEWNET) {
            return e;
        }
        let fd = match sys::open("/dev/net/tun", libc::O_RDWR) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        // struct ifreq: name[16], flags (IFF_TUN | IFF_NO_PI).
        let mut ifr = [0u8; 40];
        ifr[..3].copy_from_slice(b"vpt");
        ifr[16..18].copy_from_slice(&(0x0001u16 | 0x1000).to_ne_bytes());
        const TUNSETIFF: u64 = 0x4004_54ca;
        // SAFETY: TUNSETIFF reads and writes a struct ifreq we own.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        if rc == 0 {
            0
        } else {
            sys::errno()
        }
    });
    match o {
        Outcome::Exited(0) => r.yes("netdev:tun", "ok"),
        o => r.no("netdev:tun", &o.describe()),
    }
}

/// `struct ipt_getinfo`: the table's name and its counts.
fn iptables_table(family: i32, level: i32, table: &str) -> Result<(), i32> {
    let fd = sys::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let mut info = [0u8; 84];
    info[..table.len()].copy_from_slice(table.as_bytes());
    let mut len = info.len() as libc::socklen_t;
    // IPT_SO_GET_INFO / IP6T_SO_GET_INFO = 64.
    // SAFETY: getsockopt into a buffer of the stated length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            64,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(sys::errno())
    }
}

fn probe_netfilter(r: &mut Report) {
    let tables: &[(i32, i32, &str, &str)] = &[
        (libc::AF_INET, libc::SOL_IP, "filter", "iptables.filter"),
        (libc::AF_INET, libc::SOL_IP, "nat", "iptables.nat"),
        (libc::AF_INET, libc::SOL_IP, "mangle", "iptables.mangle"),
        (libc::AF_INET, libc::SOL_IP, "raw", "iptables.raw"),
        (libc::AF_INET6, libc::SOL_IPV6, "filter", "ip6tables.filter"),
        (libc::AF_INET6, libc::SOL_IPV6, "nat", "ip6tables.nat"),
        (libc::AF_INET6, libc::SOL_IPV6, "mangle", "ip6tables.mangle"),
    ];
    for &(family, level, table, key) in tables {
        let o = sys::in_child(CHILD, || {
            if let Err(e) = sys::unshare(libc::CLONE_NEWNET) {
                return e;
            }
            match iptables_table(family, level, table) {
                Ok(()) => 0,
                Err(e) => e,
            }
        });
        match o {
            Outcome::Exited(0) => r.yes(&format!("netfilter:{key}"), "ok"),
            o => r.no(&format!("netfilter:{key}"), &o.describe()),
        }
    }
    // nftables: NFT_MSG_GETGEN through nfnetlink.
    let o = sys::in_child(CHILD, || {
        if let Err(e) = sys::unshare(libc::CLONE_NEWNET) {
            return e;
        }
        let fd = match sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        // (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN; struct nfgenmsg.
        let req = nlmsg((10 << 8) | 16, NLM_F_REQUEST | NLM_F_ACK, 3, &[0, 0, 0, 0]);
        match transact(&fd, &req) {
            Ok(msgs) if msgs.iter().any(|m| m.ty == (10 << 8) | 15) => 0,
            Ok(_) => 121,
            Err(e) => e,
        }
    });
    match o {
        Outcome::Exited(0) => r.yes("netfilter:nftables", "ok"),
        o => r.no("netfilter:nftables", &o.describe()),
    }
}

pub fn probe(r: &mut Report) {
    probe_sockets(r);
    probe_genl(r);
    probe_link_kinds(r);
    probe_netfilter(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let body = nla(3, b"vp0\0");
        assert_eq!(body.len(), 8);
        let m = nlmsg(16, NLM_F_REQUEST, 7, &body);
        let parsed = split(&m);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].ty, 16);
        assert_eq!(attrs(&parsed[0].payload, 0), vec![(3, b"vp0\0".to_vec())]);
        // Truncated or garbage input yields nothing, never a panic.
        assert!(split(&m[..10]).is_empty());
        assert!(attrs(&[200, 0, 1, 0], 0).is_empty());
    }
}
