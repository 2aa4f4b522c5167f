//! `vessel-runtime --home HOME --id ID`: run one container's VM to its end.
//! With `--maintenance`: boot it for copies only (see
//! `vessel_runtime::maintenance`).

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
    /// Boot the VM of a container that is not running for copies only
    /// (`vessel cp`, `vessel export`): no process, no network, no state
    /// change.
    #[arg(long)]
    maintenance: bool,
}

fn main() {
    let args = Args::parse();
    let root = std::path::absolute(&args.home).unwrap_or(args.home);
    let home = Home::new(root);
    let result = if args.maintenance {
        vessel_runtime::maintenance::run(&home, &args.id)
            .with_context(|| format!("maintenance boot of container {}", args.id))
    } else {
        vessel_runtime::run(&home, &args.id)
            .with_context(|| format!("container {} did not run", args.id))
    };
    if let Err(e) = result {
        eprintln!("vessel-runtime: error: {e:#}");
        std::process::exit(1);
    }
}
