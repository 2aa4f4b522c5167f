//! One module per command, named after it.

pub mod container;
pub mod image;
pub mod run;
pub mod stream;
pub mod system;

use crate::api::Api;
use crate::cli::{Cli, Command};
use anyhow::Result;

/// Run a parsed command line; the process exit code.
pub fn dispatch(cli: Cli, api: &Api) -> Result<i32> {
    match cli.command {
        Command::Run(a) => run::run(api, a),
        Command::Ls(a) => container::ls(api, a),
        Command::Logs(a) => container::logs(api, a),
        Command::Stop(a) => container::stop(api, a),
        Command::Kill(a) => container::kill(api, a),
        Command::Rm(a) => container::rm(api, a),
        Command::Inspect(a) => container::inspect(api, a),
        Command::Wait(a) => container::wait(api, a),
        Command::Image(c) => image::dispatch(api, c),
        Command::System(c) => system::dispatch(api, c),
    }
}
