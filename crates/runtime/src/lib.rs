//! `vessel-runtime`: the helper that owns one container's VM for its whole
//! life — the QEMU microVM ([`vmm`]), its agent transport ([`transport`]), its
//! rootless network ([`passt`]), its mounts ([`mounts`]), the
//! conversation with vminitd ([`agent`]), the output log ([`logs`]), the
//! control socket ([`control`]) and the lifecycle that ties them ([`run`]);
//! or, for copies of a container that is not running, a maintenance boot
//! of its VM ([`maintenance`]).

pub mod agent;
pub mod clock;
pub mod control;
pub mod health;
pub mod jail;
pub mod logs;
pub mod maintenance;
pub mod memfile;
pub mod mounts;
pub mod passt;
mod proc;
pub mod qmp;
pub mod run;
pub mod streams;
pub mod template;
pub mod transport;
pub mod virtiofs;
pub mod vmm;

pub use run::run;

/// One line to the runtime's log (its stderr, which is `runtime.log`).
pub(crate) fn log(msg: &str) {
    eprintln!("{} vessel-runtime: {msg}", vessel_api::types::now_ms());
}

/// An error and its causes, `: `-separated (vessel-api's, under the name
/// the runtime's modules use).
pub use vessel_api::error::error_chain as chain;
