//! `vessel-network`: the only host component that changes the host's
//! network. One Linux bridge per network, one persistent TAP device per
//! container VM on it, leases under `VESSEL_HOME/networks`, NAT and
//! isolation with nftables, a resolver on each gateway, and userland
//! proxies for published ports. See [`server`] for its HTTP API.

pub mod dns;
pub mod manager;
pub mod netlink;
pub mod nft;
pub mod ports;
pub mod server;
pub mod subnet;
pub mod tap;

/// The message of `e` followed by its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
