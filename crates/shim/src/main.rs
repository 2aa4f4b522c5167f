//! `containerd-shim-vessel-v2`: containerd starts it (`start`, `delete`, or
//! to serve a task's ttrpc socket); all of it is in the library.

fn main() {
    let config = containerd_shim::Config {
        // The shim waits for its own children (vessel-runtime); the VM's
        // helpers are the runtime's to reap.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<vessel_shim::service::VesselShim>(vessel_shim::RUNTIME_ID, Some(config));
}
