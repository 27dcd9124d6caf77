//! The `sluice` binary: CLI, wiring of the controller and proxy halves.
//!
//! `sluice run` (serve), `sluice check` (validate, like `nginx -t`) and
//! `sluice echo` (a conformance echo backend). This is the only crate that
//! knows both halves; they meet in one `ArcSwap<Snapshot>`.

mod admin;
mod check;
mod echo;
mod kube;
mod purge;
mod ratelimit;
mod reclaim;
mod run;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: glibc malloc/free was 5% of the request path and a third of a
/// reload in profiles (loadtests/results/profile-2026-11-22.md). Built with
/// `arena_eager_commit` off (.cargo/config.toml): eager commit cost ~7 MB idle
/// and ~10 kB per connection. `MIMALLOC_ARENA_EAGER_COMMIT=1` (or any
/// `MIMALLOC_*` option) still overrides at run time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for invalid configuration (sysexits `EX_CONFIG`).
pub const EX_CONFIG: u8 = 78;
/// Exit code for invalid command-line usage (sysexits `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// Sluice: a Kubernetes ingress and Gateway API data plane.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve traffic for the Gateways, HTTPRoutes and Ingresses in --config,
    /// or from the Kubernetes API (--kubernetes, the default without --config).
    Run(Box<run::RunArgs>),
    /// Validate a config, print diagnostics, conditions and compiled routes.
    Check(check::CheckArgs),
    /// Run the conformance-compatible echo backend.
    Echo(echo::EchoArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Run(args) => {
            // Workers flush their thread-local request metrics when they go
            // idle, so a scrape never misses a quiet worker's last requests.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(sluice_proxy::metrics::flush_thread)
                .build()?;
            rt.spawn(purge::nudge_forever());
            rt.block_on(run::run(*args))
        }
        Command::Echo(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(echo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
