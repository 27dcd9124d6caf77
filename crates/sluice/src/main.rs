//! The `sluice` binary: CLI, wiring of the controller and proxy halves.

mod echo;

use clap::{Parser, Subcommand};

/// Sluice: a Kubernetes ingress and Gateway API data plane.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the conformance-compatible echo backend.
    Echo(echo::EchoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Echo(args) => rt.block_on(echo::run(args)),
    }
}
