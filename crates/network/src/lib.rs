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
