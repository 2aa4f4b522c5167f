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
pub mod shim;
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

/// An `ls` of named objects (networks, volumes): their names alone with
/// `quiet`, one JSON object per line with `--format json`, else a table of
/// `header` and a `row` per object.
pub(crate) fn print_list<T: serde::Serialize>(
    list: &[T],
    quiet: bool,
    format: Option<&str>,
    name: impl Fn(&T) -> &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<i32> {
    if quiet {
        for item in list {
            crate::outln!("{}", name(item));
        }
        return Ok(0);
    }
    match format {
        Some("json") => {
            for item in list {
                crate::outln!("{}", serde_json::to_string(item)?);
            }
        }
        None | Some("table") => {
            let mut rows = vec![header.iter().map(|h| h.to_string()).collect()];
            rows.extend(list.iter().map(row));
            crate::out!("{}", crate::format::table(&rows));
        }
        Some(other) => anyhow::bail!("unknown --format {other:?}: use `table` or `json`"),
    }
    Ok(0)
}

/// `inspect` of named objects: `GET` each `path(name)`, print them as one
/// JSON array; a name that fails is an error line and exit code 1, the
/// others are still shown.
pub(crate) fn inspect_each(
    api: &Api,
    names: &[String],
    path: impl Fn(&str) -> String,
) -> Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for n in names {
        match api.call::<serde_json::Value>("GET", &path(n), None) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = 1;
            }
        }
    }
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

/// `rm` of named objects: `DELETE` each `path(name)`, print the names
/// removed; a name that fails is an error line and exit code 1.
pub(crate) fn remove_each(
    api: &Api,
    names: &[String],
    path: impl Fn(&str) -> String,
) -> Result<i32> {
    let mut code = 0;
    for n in names {
        match api.call::<serde_json::Value>("DELETE", &path(n), None) {
            Ok(_) => crate::outln!("{n}"),
            Err(e) => {
                eprintln!("vessel: error: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}
