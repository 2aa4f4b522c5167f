//! IPv4 subnets, the choice of a free subnet, address allocation and MACs.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network `A.B.C.D/N` (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// A subnet that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid subnet {0:?}: expected A.B.C.D/N")]
    Syntax(String),
    #[error("invalid subnet {0}: the prefix length must be between 8 and 30")]
    Prefix(String),
    #[error("invalid subnet {0}: host bits are set (did you mean {1}?)")]
    HostBits(String, Ipv4Net),
    #[error("gateway {0} is not a host address of subnet {1}")]
    Gateway(Ipv4Addr, Ipv4Net),
    #[error("no free subnet: every candidate overlaps a route of the host or another network; pass one with --subnet")]
    Exhausted,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let mask = Self::mask_of(prefix_len);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        }
    }

    fn mask_of(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len.min(32)))
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
    fn first(&self) -> u32 {
        u32::from(self.addr)
    }
    fn last(&self) -> u32 {
        self.first() | !Self::mask_of(self.prefix_len)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & Self::mask_of(self.prefix_len)) == self.first()
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
    /// Is `ip` a usable host address (not the network or broadcast address)?
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && v != self.first() && v != self.last()
    }
    /// The first host address: the gateway by default.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first() + 1)
    }
    /// Every usable host address, in order.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        (self.first() + 1..self.last()).map(Ipv4Addr::from)
    }

    /// Parse and check a user-given subnet.
    pub fn parse_user(s: &str) -> Result<Self, SubnetError> {
        let net: Ipv4Net = s.parse()?;
        if !(8..=30).contains(&net.prefix_len) {
            return Err(SubnetError::Prefix(s.to_string()));
        }
        let (ip, _) = s.split_once('/').unwrap_or((s, ""));
        if ip.parse::<Ipv4Addr>().ok() != Some(net.addr) {
            return Err(SubnetError::HostBits(s.to_string(), net));
        }
        Ok(net)
    }
}

impl FromStr for Ipv4Net {
    type Err = SubnetError;
    fn from_str(s: &str) -> Result<Self, SubnetError> {
        let bad = || SubnetError::Syntax(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        Ok(Ipv4Net::new(ip, len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Subnets tried, in order, for networks created without `--subnet`:
/// `10.88.0.0/24` ... `10.88.255.0/24`, then `192.168.64.0/24` ...
/// `192.168.127.0/24`.
pub fn candidates() -> impl Iterator<Item = Ipv4Net> {
    let a = (0..=255u8).map(|i| Ipv4Net::new(Ipv4Addr::new(10, 88, i, 0), 24));
    let b = (64..=127u8).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i, 0), 24));
    a.chain(b)
}

/// The first candidate that overlaps none of `taken` (the host's routes
/// other than the default route, its addresses' subnets, other networks).
pub fn choose_subnet(
    candidates: impl Iterator<Item = Ipv4Net>,
    taken: &[Ipv4Net],
) -> Result<Ipv4Net, SubnetError> {
    candidates
        .into_iter()
        .find(|c| !taken.iter().any(|t| t.prefix_len > 0 && t.overlaps(c)))
        .ok_or(SubnetError::Exhausted)
}

/// The lowest free host address of `net`, skipping `used` (which holds
/// the gateway).
pub fn allocate(net: &Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    net.hosts().find(|ip| !used.contains(ip))
}

/// The MAC of the guest that holds `ip`: locally administered, unicast,
/// `02:76:` followed by the address (so a reused address keeps its MAC and
/// neighbours' ARP caches stay right).
pub fn mac_for(ip: Ipv4Addr) -> String {
    mac_bytes(ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// [`mac_for`] as bytes (the bridge gets the one of its gateway).
pub fn mac_bytes(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x76, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_overlap() {
        let n = net("10.88.3.7/24");
        assert_eq!(n.to_string(), "10.88.3.0/24");
        assert!(n.contains(Ipv4Addr::new(10, 88, 3, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 88, 4, 0)));
        assert!(n.overlaps(&net("10.0.0.0/8")));
        assert!(net("10.0.0.0/8").overlaps(&n));
        assert!(!n.overlaps(&net("10.88.4.0/24")));
        assert!(n.is_host(Ipv4Addr::new(10, 88, 3, 1)));
        assert!(!n.is_host(Ipv4Addr::new(10, 88, 3, 0)));
        assert!(!n.is_host(Ipv4Addr::new(10, 88, 3, 255)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/", "10.0.0.0/+8"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        assert_eq!(
            Ipv4Net::parse_user("10.1.2.3/24"),
            Err(SubnetError::HostBits(
                "10.1.2.3/24".into(),
                net("10.1.2.0/24")
            ))
        );
        assert!(matches!(
            Ipv4Net::parse_user("10.1.2.0/31"),
            Err(SubnetError::Prefix(_))
        ));
        assert_eq!(Ipv4Net::parse_user("10.1.2.0/24").unwrap().prefix_len(), 24);
    }

    #[test]
    fn subnet_choice_avoids_host_routes_and_other_networks() {
        let taken = [
            net("0.0.0.0/0"), // the default route never counts
            net("10.88.0.0/24"),
            net("10.88.1.0/25"),
        ];
        assert_eq!(
            choose_subnet(candidates(), &taken).unwrap(),
            net("10.88.2.0/24")
        );
        // A host route over all of 10.0.0.0/8 sends the choice to 192.168.
        assert_eq!(
            choose_subnet(candidates(), &[net("10.0.0.0/8")]).unwrap(),
            net("192.168.64.0/24")
        );
        assert_eq!(
            choose_subnet(candidates(), &[net("10.0.0.0/8"), net("192.168.0.0/16")]),
            Err(SubnetError::Exhausted)
        );
    }

    #[test]
    fn ipam_allocates_lowest_free_and_reuses() {
        let n = net("10.88.0.0/30");
        let mut used = BTreeSet::from([n.first_host()]);
        let a = allocate(&n, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        used.insert(a);
        assert_eq!(allocate(&n, &used), None, "a /30 has two hosts");
        used.remove(&a);
        assert_eq!(allocate(&n, &used), Some(a));
        assert_eq!(mac_for(a), "02:76:0a:58:00:02");
    }
}
