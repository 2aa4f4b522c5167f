//! `vessel-apiserver serve` runs the API server; `vessel-apiserver supervise`
//! runs the supervisor that keeps it running (what `vessel system start` uses).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vessel_api::paths::Home;

#[derive(Parser)]
#[command(name = "vessel-apiserver", version, about = "The vessel API server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API on VESSEL_HOME/vessel.sock (in the foreground); with
    /// socket activation (LISTEN_PID/LISTEN_FDS), on the socket passed.
    Serve {
        #[arg(long, env = "VESSEL_HOME")]
        home: Option<PathBuf>,
        /// Let this group use the socket (mode 0660).
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value = "none (foreground)")]
        supervisor: String,
    },
    /// Keep an apiserver running, restarting it when it crashes.
    Supervise {
        #[arg(long, env = "VESSEL_HOME")]
        home: Option<PathBuf>,
        #[arg(long)]
        group: Option<String>,
    },
}

fn home(h: Option<PathBuf>) -> Home {
    h.map(Home::new).unwrap_or_else(Home::from_env)
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Cmd::Serve {
            home: h,
            group,
            supervisor,
        } => {
            let home = home(h);
            // First, before any thread starts: it changes the environment.
            vessel_apiserver::activation::take_listener(&home.api_socket()).and_then(|passed| {
                let options = vessel_apiserver::server::Options {
                    group,
                    supervisor,
                    socket_activated: passed.is_some(),
                };
                vessel_apiserver::server::Server::new(home, options).and_then(|s| s.serve(passed))
            })
        }
        Cmd::Supervise { home: h, group } => {
            vessel_apiserver::supervisor::run(&home(h), group.as_deref())
        }
    };
    if let Err(e) = res {
        eprintln!("vessel-apiserver: error: {e:#}");
        std::process::exit(1);
    }
}
