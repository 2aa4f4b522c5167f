use clap::Parser;
use vessel_api::paths::Home;
use vessel_cli::api::Api;
use vessel_cli::cli::Cli;
use vessel_cli::exit;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(exit::usage(&e));
        }
    };
    let failure = exit::failure(&cli.command);
    let api = Api::new(Home::from_env());
    let result = vessel_cli::commands::dispatch(cli, &api);
    // `exit` runs no destructors: the terminal goes back to how it was
    // here, whatever way the command ended.
    vessel_cli::terminal::restore();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The whole chain, once, at the top.
            eprintln!(
                "vessel: error: {}",
                vessel_api::error::error_chain(e.as_ref())
            );
            std::process::exit(failure);
        }
    }
}
