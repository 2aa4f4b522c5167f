//! Shared vocabulary of vessel's host processes: where an instance keeps its
//! state ([`paths`]), the documents exchanged over the API ([`types`]) and
//! the errors they answer with ([`error`]), the small
//! HTTP/1.1-over-Unix-socket layer they travel on ([`http`]), and atomic
//! state files ([`fsutil`]).

#[cfg(feature = "client")]
pub mod client;
pub mod confine;
pub mod control;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod http;
pub mod mounts;
pub mod network;
pub mod paths;
pub mod restart;
pub mod template;
pub mod types;
pub mod ulimit;

pub use agent_protocol::ProcessSpec;
