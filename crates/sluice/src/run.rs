//! `sluice run`: load, translate, compile, serve, watch, swap.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Registry};
use sluice_controller::report::Severity;
use sluice_controller::source::file::{self, FileEvent};
use sluice_controller::{Objects, Report, endpoints, translate};
use sluice_model::{BindKey, Endpoints, RouteTable, Snapshot};
use sluice_proxy::{AccessLog, AccessLogTarget, Proxy, ProxyConfig, Telemetry};
use tokio::sync::mpsc;

use crate::admin::{AdminState, LastApply};

mod incremental;
use crate::check::TranslateArgs;
use crate::telemetry::{TraceArgs, Tracing};

/// `sluice run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A manifest file or a directory of them (standalone mode). Watched:
    /// a change recompiles and swaps atomically. Without it Sluice runs in
    /// Kubernetes mode (`--kubernetes`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub kube: crate::kube::KubeArgs,
    /// Maps a listener port to a local socket: `PORT=ADDR`, or
    /// `NAMESPACE/GATEWAY:PORT=ADDR` for one Gateway. Port 0 picks a free
    /// port. Unmapped ports bind `0.0.0.0:PORT`. Repeatable.
    #[arg(long = "bind", value_name = "PORT=ADDR")]
    pub binds: Vec<BindSpec>,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`,
    /// `/diagnostics`). Loopback by default; in a cluster use the pod IP
    /// (e.g. `--admin $(POD_IP):9901`) so Prometheus can scrape it.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Do not start the admin listener.
    #[arg(long)]
    pub no_admin: bool,
    /// Allow `--admin` on all interfaces (0.0.0.0 or ::), which would expose
    /// config and metrics to anyone who can reach the host.
    #[arg(long)]
    pub admin_allow_any: bool,
    /// Do not record per-request metrics (to measure their cost; other
    /// metrics stay).
    #[arg(long)]
    pub no_request_metrics: bool,
    /// Access log: one JSON line per request to `-` (stdout) or a file.
    /// Off by default.
    #[arg(long, value_name = "-|PATH")]
    pub access_log: Option<String>,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub translate: TranslateArgs,
    #[command(flatten)]
    pub ratelimit: crate::ratelimit::RateLimitArgs,
    /// How long shutdown waits for in-flight requests (Go duration).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Default request timeout when a rule sets none (0s: none).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// One `--bind` mapping.
#[derive(Clone, Debug)]
pub struct BindSpec {
    gateway: Option<String>,
    port: u16,
    addr: SocketAddr,
}

impl FromStr for BindSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lhs, addr) = s.split_once('=').ok_or("expected PORT=ADDR or NAMESPACE/GATEWAY:PORT=ADDR")?;
        let addr: SocketAddr = addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))?;
        let (gateway, port) = match lhs.rsplit_once(':') {
            Some((gw, port)) if gw.contains('/') => (Some(gw.to_string()), port),
            _ => (None, lhs),
        };
        let port = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
        Ok(Self { gateway, port, addr })
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_model::duration::parse_go_duration(s).ok_or_else(|| format!("invalid duration {s:?} (e.g. 30s, 500ms)"))
}

fn resolve(binds: &[BindSpec], key: &BindKey) -> SocketAddr {
    let by_gateway = key
        .gateway
        .as_deref()
        .and_then(|gw| binds.iter().find(|b| b.port == key.port && b.gateway.as_deref() == Some(gw)));
    by_gateway
        .or_else(|| binds.iter().find(|b| b.port == key.port && b.gateway.is_none()))
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], key.port)), |b| b.addr)
}

/// Control-half state: the last good objects and the published snapshot.
/// Shared by every source (files, the Kubernetes API): a source produces
/// [`Objects`], [`Controller::apply`] does the rest.
pub(crate) struct Controller {
    options: sluice_controller::Options,
    snapshot: Arc<ArcSwap<Snapshot>>,
    objects: Objects,
    pub(crate) generation: u64,
    metrics: ControlMetrics,
    pub(crate) admin: Arc<AdminState>,
    proxy: Proxy,
    binds: Vec<BindSpec>,
    /// Reject the whole change when any object or rule is invalid (files:
    /// an edit is all or nothing). When false (Kubernetes, where each object
    /// was validated by the API server and belongs to someone else), invalid
    /// objects and rules are left out and reported, the rest applies.
    pub(crate) strict: bool,
    limits: sluice_proxy::RateLimits,
    ratelimit: crate::ratelimit::RateLimitArgs,
    /// State for HTTPRoute-only changes, which skip the full translation.
    incremental: sluice_controller::Incremental,
    /// Frees replaced tables and objects off the reload path.
    reclaim: crate::reclaim::Reclaim,
}

/// Control-plane metrics, registered beside the proxy's.
pub(crate) struct ControlMetrics {
    generation: IntGauge,
    applies: IntCounter,
    failures: IntCounter,
    apply_seconds: Histogram,
    endpoint_updates: IntCounter,
    candidates: IntGauge,
    backends: IntGauge,
}

impl ControlMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            generation: IntGauge::new("sluice_config_generation", "Generation of the route table being served.")?,
            applies: IntCounter::new("sluice_config_applies_total", "Route tables compiled and swapped in.")?,
            failures: IntCounter::new(
                "sluice_config_apply_failures_total",
                "Config changes rejected as invalid (the last good table kept serving).",
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_config_apply_duration_seconds",
                    "Time from the first config change event to the new table being swapped in.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            endpoint_updates: IntCounter::new(
                "sluice_endpoint_updates_total",
                "Endpoint-only changes applied without recompiling routes.",
            )?,
            candidates: IntGauge::new("sluice_route_table_matches", "Match candidates in the route table (its size).")?,
            backends: IntGauge::new("sluice_route_table_backends", "Service ports the route table sends traffic to.")?,
        };
        registry.register(Box::new(m.generation.clone()))?;
        registry.register(Box::new(m.applies.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.endpoint_updates.clone()))?;
        registry.register(Box::new(m.candidates.clone()))?;
        registry.register(Box::new(m.backends.clone()))?;
        let info = IntGaugeVec::new(prometheus::Opts::new("sluice_build_info", "Sluice version."), &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(info))?;
        Ok(m)
    }
}

impl Controller {
    /// Applies `objects` (read by a source, with its parse diagnostics in
    /// `report`; changed since `since`): endpoint-only changes take the fast
    /// path, others recompile, and listeners are reconciled. Invalid config
    /// keeps the last good table. `Ok(true)` when the route table changed.
    pub(crate) async fn apply(&mut self, objects: Objects, report: Report, since: Instant) -> Result<bool, Report> {
        let result = self.swap(objects, report, since);
        if let Ok(true) = result {
            let keys: Vec<BindKey> = self.snapshot.load().routes.bind_keys().cloned().collect();
            let binds = self.binds.clone();
            let bound = self.proxy.reconcile(&keys, &|k| resolve(&binds, k)).await;
            print_listening(&bound);
        }
        result
    }

    /// Translation options.
    pub(crate) fn options(&self) -> &sluice_controller::Options {
        &self.options
    }

    /// Compiles and swaps, without touching listeners.
    fn swap(&mut self, objects: Objects, report: Report, since: Instant) -> Result<bool, Report> {
        let result = self.try_swap(objects, report, since);
        match &result {
            Ok(_) => {}
            Err(report) => {
                self.metrics.failures.inc();
                let last = self.admin.last.load();
                self.admin.last.store(Arc::new(LastApply {
                    applied_at: last.applied_at,
                    generation: last.generation,
                    rejected: true,
                    report: report.clone(),
                }));
            }
        }
        result
    }

    /// The endpoint fast path: the EndpointSlices are now `slices`, nothing
    /// else changed (the caller knows); the compiled routes stay. Returns
    /// false when there is no table yet.
    pub(crate) fn swap_endpoints(
        &mut self,
        slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
        since: Instant,
    ) -> bool {
        if self.generation == 0 {
            return false;
        }
        let started = Instant::now();
        self.objects.endpoint_slices = slices;
        // Cluster rate limits re-split when Sluice's own endpoints change.
        self.limits.set_replicas(self.ratelimit.replicas(&self.objects));
        let current = self.snapshot.load_full();
        let eps = endpoints::build(current.routes.services(), &self.objects);
        self.snapshot.store(Arc::new(Snapshot { routes: current.routes.clone(), endpoints: Arc::new(eps) }));
        self.metrics.endpoint_updates.inc();
        self.metrics.apply_seconds.observe(since.elapsed().as_secs_f64());
        tracing::info!(elapsed_us = started.elapsed().as_micros() as u64, "Endpoints updated");
        true
    }

    fn try_swap(&mut self, objects: Objects, mut report: Report, since: Instant) -> Result<bool, Report> {
        let started = Instant::now();
        if self.strict && report.has_errors() {
            return Err(report);
        }
        self.limits.set_replicas(self.ratelimit.replicas(&objects));
        if self.generation > 0 && objects.same_except_endpoints(&self.objects) {
            if objects.endpoint_slices == self.objects.endpoint_slices {
                // Nothing Sluice uses changed (e.g. only a status).
                return Ok(false);
            }
            // Fast path: only endpoints changed; keep the compiled routes.
            self.swap_endpoints(objects.endpoint_slices, since);
            return Ok(false);
        }
        let generation = self.generation + 1;
        // A few HTTPRoutes changed: translate those only, rebuild only their
        // host groups. An invalid change takes the full path below, which
        // builds the complete error report.
        let prepared = (self.generation > 0)
            .then(|| self.incremental.prepare(&self.objects, &objects, &self.options))
            .flatten()
            .filter(|p| !(self.strict && p.has_errors()));
        let incremental = prepared.is_some();
        let (table, eps, report) = match prepared {
            Some(p) => {
                let (table, eps) = self.commit_incremental(p, Some(&objects), generation);
                // `publish` adds the translation's part after the swap.
                (table, eps, report)
            }
            None => {
                let t = translate(&objects, &self.options);
                report.statuses.extend(t.report.statuses.iter().cloned());
                report.diagnostics.extend(t.report.diagnostics.iter().cloned());
                if self.strict && report.has_errors() {
                    return Err(report);
                }
                log_report(&report);
                crate::ratelimit::bind(&self.limits, &t.rate_limits);
                let table = RouteTable::compile(t.input, generation);
                self.incremental.reset(&table, &t.report, &objects, !t.rate_limits.is_empty());
                self.reclaim.drop_later(t.report);
                let eps = Arc::new(endpoints::build(table.services(), &objects));
                (table, eps, report)
            }
        };
        self.reclaim.drop_later(std::mem::replace(&mut self.objects, objects));
        self.publish(table, eps, report, incremental, since, started);
        Ok(true)
    }

    /// Swaps in a new table (generation `self.generation + 1`), then
    /// records the apply. `incremental`: only changed routes were compiled,
    /// and `report` holds only the source's diagnostics: the translation's
    /// ([`sluice_controller::Incremental::report`]) are added after the swap,
    /// off the propagation path.
    fn publish(
        &mut self,
        table: RouteTable,
        eps: Arc<Endpoints>,
        mut report: Report,
        incremental: bool,
        since: Instant,
        started: Instant,
    ) {
        let generation = table.generation;
        let table = Arc::new(table);
        let old = self.snapshot.swap(Arc::new(Snapshot { routes: table.clone(), endpoints: eps }));
        let swap_us = started.elapsed().as_micros() as u64;
        self.reclaim.drop_later(old);
        self.generation = generation;
        if incremental {
            report.statuses.extend(self.incremental.report().statuses.iter().cloned());
            report.diagnostics.extend(self.incremental.report().diagnostics.iter().cloned());
            log_report(&report);
        }
        let candidates = table.candidate_count();
        let backends = table.services().len();
        let m = &self.metrics;
        m.apply_seconds.observe(since.elapsed().as_secs_f64());
        m.applies.inc();
        m.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        m.candidates.set(i64::try_from(candidates).unwrap_or(i64::MAX));
        m.backends.set(i64::try_from(backends).unwrap_or(i64::MAX));
        let last = self.admin.last.swap(Arc::new(LastApply {
            applied_at: Some(SystemTime::now()),
            generation,
            rejected: false,
            report,
        }));
        self.reclaim.drop_later(last);
        tracing::info!(
            generation,
            candidates,
            incremental,
            swap_us,
            elapsed_us = started.elapsed().as_micros() as u64,
            "Route table applied"
        );
    }
}

pub(crate) fn log_report(report: &Report) {
    for d in &report.diagnostics {
        match d.severity {
            Severity::Error => {
                tracing::error!(object = %d.object, field = %d.field, reason = %d.message, "Invalid config")
            }
            Severity::Warning => {
                tracing::warn!(object = %d.object, field = %d.field, reason = %d.message, "Config problem")
            }
        }
    }
    for s in &report.statuses {
        tracing::debug!(status = %s, "Condition");
    }
}

fn print_listening(bound: &[(BindKey, Result<SocketAddr, std::io::Error>)]) {
    let mut out = std::io::stdout().lock();
    for (key, res) in bound {
        let gw = key.gateway.as_deref().unwrap_or("*");
        match res {
            Ok(addr) => {
                let _ = writeln!(out, "listening port={} gateway={gw} addr={addr}", key.port);
            }
            Err(e) => tracing::error!(port = key.port, gateway = gw, error = %e, "Cannot bind listener"),
        }
    }
    let _ = out.flush();
}

/// Quiet period after the last file event before a reload.
const QUIET: Duration = Duration::from_millis(2);
/// Longest a reload waits for writers to close their files.
const MAX_WAIT: Duration = Duration::from_secs(1);

fn settle_wait(dirty_since: Option<Instant>, writing: &HashSet<PathBuf>) -> Duration {
    match dirty_since {
        Some(t) if !writing.is_empty() => MAX_WAIT.saturating_sub(t.elapsed()),
        _ => QUIET,
    }
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.no_admin && args.admin.ip().is_unspecified() && !args.admin_allow_any {
        eprintln!(
            "sluice: --admin {} would expose the admin API on every interface; use the pod IP or loopback, or pass --admin-allow-any",
            args.admin
        );
        return Ok(ExitCode::from(crate::EX_USAGE));
    }
    let trace_config = match crate::telemetry::config(&args.trace, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: tracing: {e}");
            return Ok(ExitCode::from(crate::EX_USAGE));
        }
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let registry = Registry::new();
    let traces = match trace_config.as_ref().map(|c| Tracing::start(c, &registry)).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice: tracing: {e:#}");
            return Ok(ExitCode::from(crate::EX_USAGE));
        }
    };
    let access_log = match args.access_log.as_deref() {
        None => None,
        Some("-") => Some(AccessLog::start(AccessLogTarget::Stdout)?),
        Some(path) => Some(AccessLog::start(AccessLogTarget::File(path.into())).context("opening the access log")?),
    };
    let proxy = Proxy::with_telemetry(
        ProxyConfig {
            drain_timeout: args.drain_timeout,
            connect_timeout: args.connect_timeout,
            request_timeout: (!args.request_timeout.is_zero()).then_some(args.request_timeout),
            request_metrics: !args.no_request_metrics,
            ..ProxyConfig::default()
        },
        snapshot.clone(),
        Telemetry { registry: registry.clone(), access_log, tracer: traces.as_ref().map(Tracing::tracer) },
    );
    let admin = Arc::new(AdminState {
        snapshot: snapshot.clone(),
        ready: AtomicBool::new(false),
        metrics: proxy.metrics().clone(),
        last: ArcSwap::from_pointee(LastApply::default()),
    });
    let admin_addr = (!args.no_admin).then_some(args.admin);
    let limits = sluice_proxy::RateLimits::new(&registry, args.ratelimit.redis_url.clone(), args.ratelimit.replicas)
        .map(|l| l.with_key_prefix(&args.ratelimit.redis_key_prefix))
        .context("registering rate limit metrics")?;
    limits.start();
    let mut controller = Controller {
        options: args.translate.options(),
        snapshot: snapshot.clone(),
        objects: Objects::default(),
        generation: 0,
        metrics: ControlMetrics::new(&registry).context("registering metrics")?,
        admin: admin.clone(),
        proxy: proxy.clone(),
        binds: args.binds.clone(),
        strict: args.config.is_some(),
        limits,
        ratelimit: args.ratelimit.clone(),
        incremental: sluice_controller::Incremental::default(),
        reclaim: crate::reclaim::Reclaim::start(),
    };
    let mut shutdown = std::pin::pin!(shutdown_signal()?);
    let code = match args.config.clone() {
        Some(config) => run_files(&mut controller, &config, admin_addr, shutdown.as_mut()).await?,
        None => {
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: no Kubernetes API to talk to: {e}");
                    eprintln!("sluice: run it in a cluster, set KUBECONFIG, or pass --config PATH (standalone mode)");
                    return Ok(ExitCode::from(crate::EX_CONFIG));
                }
            };
            if let Some(addr) = admin_addr {
                let bound = crate::admin::serve(addr, admin.clone())
                    .with_context(|| format!("binding the admin listener {addr}"))?;
                println!("admin addr={bound}");
            }
            crate::kube::run(client, &mut controller, &args.kube, &registry, shutdown.as_mut()).await?
        }
    };
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    tracing::info!("Shutting down: draining connections");
    admin.ready.store(false, Ordering::Release);
    proxy.shutdown().await;
    if let Some(t) = traces {
        // After the drain, so the last requests' spans are exported too.
        t.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

/// Standalone mode: serve `config` and reload it on change until `shutdown`.
async fn run_files(
    controller: &mut Controller,
    config: &std::path::Path,
    admin_addr: Option<SocketAddr>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<ExitCode> {
    let mut source = file::FileSource::new(config);
    let (objects, report) = source.load();
    if let Err(report) = controller.swap(objects, report, Instant::now()) {
        log_report(&report);
        for d in report.diagnostics.iter().filter(|d| d.severity == Severity::Error) {
            eprintln!("{d}");
        }
        eprintln!("sluice: configuration {} is invalid; not starting", config.display());
        return Ok(ExitCode::from(crate::EX_CONFIG));
    }
    let admin = controller.admin.clone();
    if let Some(addr) = admin_addr {
        let bound =
            crate::admin::serve(addr, admin.clone()).with_context(|| format!("binding the admin listener {addr}"))?;
        println!("admin addr={bound}");
    }
    let keys: Vec<BindKey> = controller.snapshot.load().routes.bind_keys().cloned().collect();
    let binds = controller.binds.clone();
    let bound = controller.proxy.reconcile(&keys, &|k| resolve(&binds, k)).await;
    print_listening(&bound);
    admin.ready.store(true, Ordering::Release);

    let (tx, mut rx) = mpsc::unbounded_channel::<FileEvent>();
    let _watcher = file::watch(config, move |e| {
        let _ = tx.send(e);
    })
    .context("watching the config path")?;
    // Files being written in place are not read until their writer closes
    // them (or MAX_WAIT passes); otherwise a reload runs once events have
    // been quiet for QUIET.
    let mut writing: HashSet<PathBuf> = HashSet::new();
    let mut dirty_since: Option<Instant> = None;
    // Whether the served table was built from the source's last load.
    let mut in_sync = true;

    loop {
        tokio::select! {
            Some(event) = rx.recv() => {
                match event {
                    FileEvent::Writing(p) => {
                        writing.insert(p);
                    }
                    FileEvent::Closed(p) => {
                        writing.remove(&p);
                    }
                    FileEvent::Changed => {}
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            () = tokio::time::sleep(settle_wait(dirty_since, &writing)), if dirty_since.is_some() => {
                if !writing.is_empty() && dirty_since.is_some_and(|t| t.elapsed() < MAX_WAIT) {
                    continue;
                }
                if !writing.is_empty() {
                    tracing::warn!(files = writing.len(), "Config files still open for writing; reloading anyway");
                }
                writing.clear();
                let since = dirty_since.take().unwrap_or_else(Instant::now);
                // While the served table is the last load's, only what changed
                // is read; a change confined to HTTPRoute-only files is applied
                // on its own.
                let loaded = if in_sync { source.load_changes() } else { let (o, r) = source.load(); file::Loaded::Config(o, r) };
                let result = match loaded {
                    file::Loaded::Unchanged => Ok(false),
                    file::Loaded::Routes { removed, added } => match controller.apply_routes(&removed, added, since) {
                        Some(result) => result,
                        None => {
                            let (objects, report) = source.load();
                            controller.apply(objects, report, since).await
                        }
                    },
                    file::Loaded::Config(objects, report) => controller.apply(objects, report, since).await,
                };
                in_sync = result.is_ok();
                if let Err(report) = result {
                    log_report(&report);
                    tracing::error!(generation = controller.generation, "Invalid config change ignored; the last good table keeps serving");
                }
            }
            () = shutdown.as_mut() => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_specs_parse_port_and_gateway_forms() {
        let b: BindSpec = "80=127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.gateway.as_deref(), b.port), (None, 80));
        let g: BindSpec = "ns/gw:8080=127.0.0.1:9000".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((g.gateway.as_deref(), g.port), (Some("ns/gw"), 8080));
        assert!("80".parse::<BindSpec>().is_err());
        let binds = vec![b, g];
        let key = |gw: Option<&str>, port| BindKey { gateway: gw.map(Arc::from), port };
        assert_eq!(resolve(&binds, &key(Some("ns/gw"), 8080)).port(), 9000);
        assert_eq!(resolve(&binds, &key(Some("other/gw"), 80)).to_string(), "127.0.0.1:0");
        assert_eq!(resolve(&binds, &key(None, 443)).to_string(), "0.0.0.0:443");
    }
}
