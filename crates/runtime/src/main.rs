//! `vessel-runtime --home HOME --id ID`: run one container's VM to its end.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use vessel_api::paths::Home;

/// Own one container's VM: boot it, run the container process, record its
/// exit status.
#[derive(Debug, Parser)]
#[command(name = "vessel-runtime", version)]
struct Args {
    /// The instance's data root (VESSEL_HOME).
    #[arg(long)]
    home: PathBuf,
    /// The container's id.
    #[arg(long)]
    id: String,
}

fn main() {
    let args = Args::parse();
    let root = std::path::absolute(&args.home).unwrap_or(args.home);
    let home = Home::new(root);
    let result = vessel_runtime::run(&home, &args.id)
        .with_context(|| format!("container {} did not run", args.id));
    if let Err(e) = result {
        eprintln!("vessel-runtime: error: {e:#}");
        std::process::exit(1);
    }
}
