//! The `vessel` command-line client: parses Docker-style flags and sends each
//! command to the apiserver over its Unix socket.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod env;
pub mod exit;
pub mod format;
pub mod output;
pub mod progress;
pub mod session;
pub mod systemd;
pub mod terminal;
