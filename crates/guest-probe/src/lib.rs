//! `vessel-probe`: what a kernel offers a container, and the guest kernel's
//! contract checked against it.
//!
//! The binary (`src/main.rs`) runs inside a container (a vessel VM, or
//! runc on the host for comparison) and prints a [`report::Report`]. This
//! library holds the report format and the checks of a report against the
//! expectation list `guest/kernel/features.list` ([`expect`]); the
//! end-to-end test in `tests/tests/kernel_features.rs` uses both.

pub mod expect;
pub mod report;

pub use expect::{check_guest, check_host, Expectations, Finding};
pub use report::{Entry, Report};
