//! `vessel-images --home DIR`: serve the image API on `DIR/images.sock`.

use clap::Parser;
use std::path::PathBuf;
use vessel_api::paths::Home;

/// vessel's image helper (started by vessel-apiserver).
#[derive(Parser)]
#[command(name = "vessel-images", version)]
struct Args {
    /// The instance's data root (default: VESSEL_HOME or the per-user default).
    #[arg(long)]
    home: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let home = args.home.map(Home::new).unwrap_or_else(Home::from_env);
    if let Err(e) = vessel_images::server::run(&home) {
        eprintln!(
            "vessel-images: error: {}",
            vessel_api::error::error_chain(&e)
        );
        std::process::exit(1);
    }
}
