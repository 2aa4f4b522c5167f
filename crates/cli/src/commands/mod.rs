//! One module per command, named after it.

pub mod container;
pub mod events;
pub mod image;
pub mod network;
pub mod registry;
pub mod run;
pub mod stream;
pub mod system;

use crate::api::Api;
use crate::cli::{Cli, Command, ImageCommand, RegistryCommand};
use anyhow::Result;

/// Run a parsed command line; the process exit code.
pub fn dispatch(cli: Cli, api: &Api) -> Result<i32> {
    match cli.command {
        Command::Run(a) => run::run(api, a),
        Command::Create(a) => run::create(api, a),
        Command::Start(a) => run::start(api, a),
        Command::Ls(a) => container::ls(api, a),
        Command::Logs(a) => container::logs(api, a),
        Command::Stop(a) => container::stop(api, a),
        Command::Kill(a) => container::kill(api, a),
        Command::Rm(a) => container::rm(api, a),
        Command::Inspect(a) => container::inspect(api, a),
        Command::Wait(a) => container::wait(api, a),
        Command::Events(a) => events::events(api, a),
        Command::Image(c) => image::dispatch(api, c),
        Command::Pull(a) => image::dispatch(api, ImageCommand::Pull(a)),
        Command::Push(a) => image::dispatch(api, ImageCommand::Push(a)),
        Command::Login(a) => registry::dispatch(api, RegistryCommand::Login(a)),
        Command::Logout(a) => registry::dispatch(api, RegistryCommand::Logout(a)),
        Command::Registry(c) => registry::dispatch(api, c),
        Command::Network(c) => network::dispatch(api, c),
        Command::System(c) => system::dispatch(api, c),
    }
}
