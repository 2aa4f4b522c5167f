//! `containerd-shim-vessel-v2`: a containerd runtime v2 shim that runs each
//! task in a vessel VM, on vessel's own runtime (`vessel-runtime`), guest
//! kernel, initramfs and vminitd. See docs/CONTAINERD.md.

pub mod exit;
pub mod metrics;
pub mod pod;
pub mod podnet;
pub mod service;
pub mod spec;
pub mod vm;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.vessel.v2";
