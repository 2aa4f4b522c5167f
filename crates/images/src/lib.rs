//! vessel-images: the OCI content store, image loading and importing, and
//! the ext4 root filesystems containers boot from.
//!
//! - [`reference`]: Docker-compatible reference normalization.
//! - [`store`]: verified blobs by digest, and the reference index.
//! - [`oci`]: the OCI documents and media types.
//! - [`archive`]: `image load` (OCI layout / docker save) and `image import`.
//! - [`unpack`]: applying layers to a directory, safely.
//! - [`ext4`]: building an image's ext4 base with `mkfs.ext4 -d`.
//! - [`images`]: the service the apiserver calls (list, load, import,
//!   resolve, inspect, remove).
//! - [`registry`]: the OCI distribution client (pull, push, login).
//! - [`server`]: its HTTP API on the images socket.

pub mod archive;
pub mod ext4;
pub mod images;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod server;
pub mod store;
pub mod unpack;

pub use images::{Images, ImagesError, RemoveResult};
