use clap::Parser;
use vessel_api::paths::Home;
use vessel_cli::api::Api;
use vessel_cli::cli::Cli;

fn main() {
    let cli = Cli::parse();
    let api = Api::new(Home::from_env());
    match vessel_cli::commands::dispatch(cli, &api) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The whole chain, once, at the top.
            let mut msg = format!("{e}");
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("vessel: error: {msg}");
            std::process::exit(125);
        }
    }
}
