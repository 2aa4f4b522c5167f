//! `vessel-network --home DIR`: serve the network API on `DIR/network.sock`.
//! `vessel-network --home DIR --cleanup`: remove this instance's bridges,
//! TAP devices and nftables table, and exit.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use vessel_api::paths::Home;
use vessel_network::manager::{Manager, Options};

/// vessel's network helper (started by vessel-apiserver).
#[derive(Parser)]
#[command(name = "vessel-network", version)]
struct Args {
    /// The instance's data root (default: VESSEL_HOME or the per-user default).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Subnet of the `default` network when it is first created (A.B.C.D/N).
    #[arg(long, env = "VESSEL_SUBNET")]
    subnet: Option<String>,
    /// Resolvers for names the containers' DNS does not know, `IP[:PORT]`,
    /// comma-separated (default: the nameservers of /etc/resolv.conf).
    #[arg(long, env = "VESSEL_DNS_UPSTREAM", value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// Remove the bridges, TAP devices and rules of this instance, then exit.
    #[arg(long)]
    cleanup: bool,
}

fn upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("invalid --dns-upstream {s:?}: expected IP or IP:PORT"))
}

fn main() {
    let args = Args::parse();
    let home = args.home.map(Home::new).unwrap_or_else(Home::from_env);
    let mut opts = Options::new(home.clone());
    opts.default_subnet = args.subnet;
    if !args.dns_upstream.is_empty() {
        match args.dns_upstream.iter().map(|s| upstream(s)).collect() {
            Ok(v) => opts.upstreams = v,
            Err(e) => {
                eprintln!("vessel-network: error: {e}");
                std::process::exit(2);
            }
        }
    }
    let result = if args.cleanup {
        Manager::open(opts).and_then(|m| m.shutdown_all())
    } else {
        Manager::open(opts).map(|m| {
            if let Err(e) = vessel_network::server::run(&home, m) {
                eprintln!(
                    "vessel-network: error: {}",
                    vessel_api::error::error_chain(&e)
                );
                std::process::exit(1);
            }
        })
    };
    if let Err(e) = result {
        eprintln!(
            "vessel-network: error: {}",
            vessel_api::error::error_chain(&e)
        );
        std::process::exit(1);
    }
}
