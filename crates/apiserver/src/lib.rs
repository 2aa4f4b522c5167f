//! vessel-apiserver: the HTTP/JSON API on a Unix socket, the containers'
//! bookkeeping, the image helper's supervision, and the supervisor that
//! restarts the apiserver itself when it crashes.
//!
//! The API is documented in `docs/api/openapi.yaml`. Container state lives in
//! files under `VESSEL_HOME/containers/<id>/`, so an apiserver that restarts
//! finds every container again: a running container is owned by its
//! `vessel-runtime` process, which outlives the apiserver.

pub mod accel;
pub mod activation;
pub mod api;
pub mod assets;
pub mod containers;
pub mod error;
pub mod events;
pub mod helpers;
pub mod logs;
pub mod names;
pub mod rootless;
pub mod server;
pub mod supervisor;
pub mod volumes;
pub mod watch;
