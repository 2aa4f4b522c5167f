//! One module per command, named after it.

pub mod completion;
pub mod container;
pub mod cp;
pub mod events;
pub mod exec;
pub mod health;
pub mod image;
pub mod install;
pub mod interactive;
pub mod network;
pub mod registry;
pub mod run;
pub mod stats;
pub mod stream;
pub mod system;
pub mod version;
pub mod volume;

use crate::api::Api;
use crate::cli::{Cli, Command, ContainerCommand, ImageCommand, RegistryCommand};
use anyhow::Result;

/// Run a parsed command line; the process exit code.
pub fn dispatch(cli: Cli, api: &Api) -> Result<i32> {
    match cli.command {
        Command::Run(a) => run::run(api, a),
        Command::Create(a) => run::create(api, a),
        Command::Start(a) => run::start(api, a),
        Command::Restart(a) => container::restart(api, a),
        Command::Attach(a) => exec::attach(api, a),
        Command::Exec(a) => exec::exec(api, a),
        Command::Cp(a) => cp::cp(api, a),
        Command::Export(a) => cp::export(api, a),
        Command::Stats(a) => stats::stats(api, a),
        Command::Top(a) => stats::top(api, a),
        Command::Pause(a) => container::pause(api, a),
        Command::Unpause(a) => container::unpause(api, a),
        Command::Rename(a) => container::rename(api, a),
        Command::Update(a) => container::update(api, a),
        Command::Port(a) => container::port(api, a),
        Command::Container(ContainerCommand::Prune { force }) => container::prune(api, force),
        Command::Version(a) => version::version(api, a),
        Command::Completion(a) => completion::completion(a),
        Command::Man(a) => completion::man(a),
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
        Command::Volume(c) => volume::dispatch(api, c),
        Command::System(c) => system::dispatch(api, c),
    }
}
