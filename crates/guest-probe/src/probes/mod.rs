//! The probes, one module per area. Each adds its keys to a
//! `vessel_probe::Report`.

pub mod files;
pub mod fs;
pub mod mem;
pub mod net;
pub mod process;
pub mod sys;
pub mod syscalls;
