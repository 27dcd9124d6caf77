//! `sluice check`: validate a config like `nginx -t`.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_controller::{Options, report::Severity, source::file, translate};
use sluice_model::RouteTable;

/// `sluice check` arguments.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A manifest file or a directory of them.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// Print only diagnostics, not conditions and routes.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Translation flags shared by `run` and `check`.
#[derive(clap::Args, Debug, Clone)]
pub struct TranslateArgs {
    /// GatewayClass controllerName to serve.
    #[arg(long, default_value = sluice_controller::GATEWAY_CONTROLLER)]
    pub gateway_controller: String,
    /// IngressClass spec.controller to serve.
    #[arg(long, default_value = sluice_controller::INGRESS_CONTROLLER)]
    pub ingress_controller: String,
    /// Give each Gateway its own sockets instead of sharing a port across
    /// Gateways (and Ingresses).
    #[arg(long)]
    pub isolate_gateways: bool,
}

impl TranslateArgs {
    /// Translation options.
    pub fn options(&self) -> Options {
        Options {
            gateway_controller: self.gateway_controller.clone(),
            ingress_controller: self.ingress_controller.clone(),
            isolate_gateways: self.isolate_gateways,
        }
    }
}

/// Runs the check; exit 0 when the config is valid, 78 when not.
pub fn run(args: &CheckArgs) -> ExitCode {
    let (objects, mut report) = file::load(&args.config);
    let t = translate(&objects, &args.translate.options());
    report.statuses.extend(t.report.statuses);
    report.diagnostics.extend(t.report.diagnostics);
    for d in &report.diagnostics {
        println!("{d}");
    }
    if !args.quiet {
        println!("# conditions");
        for s in &report.statuses {
            println!("{s}");
        }
        println!("# routes");
        print!("{}", RouteTable::compile(t.input, 1).describe());
    }
    let errors = report.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    if errors > 0 {
        println!("configuration {} is invalid: {errors} error(s)", args.config.display());
        ExitCode::from(crate::EX_CONFIG)
    } else {
        println!("configuration {} is ok ({} objects)", args.config.display(), objects.len());
        ExitCode::SUCCESS
    }
}
