//! `sluice echo`: placeholder, being written.

/// Echo server arguments.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: std::net::SocketAddr,
}

/// Runs the echo server.
pub async fn run(_args: EchoArgs) -> anyhow::Result<()> {
    Ok(())
}
