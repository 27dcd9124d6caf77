//! Tracing for `sluice run`: configuration (flags over the standard
//! OpenTelemetry environment variables), the OTLP/HTTP (protobuf) exporter
//! behind the async-runtime batch span processor, dropped-span accounting,
//! and the flush on shutdown.
//!
//! Tracing is off unless an endpoint is configured. Precedence:
//!
//! | setting | first of |
//! |---|---|
//! | endpoint | `--otlp-endpoint URL` (a URL without a path gets `/v1/traces`), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is), `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` |
//! | sampler | `--trace-sample-ratio R` (= `parentbased_traceidratio` with `R`), `OTEL_TRACES_SAMPLER` + `OTEL_TRACES_SAMPLER_ARG`, `parentbased_always_on` |
//! | `service.name` | `OTEL_SERVICE_NAME`, `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, `sluice` |
//!
//! `OTEL_SDK_DISABLED=true` turns tracing off. The exporter also honours
//! `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` and `_TIMEOUT`, and the batch
//! processor `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`,
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and `OTEL_BSP_EXPORT_TIMEOUT`.
//!
//! Spans never wait: a request's span is queued with a non-blocking send
//! into a bounded queue that a background task on the proxy's runtime
//! batches and exports. A span that finds the queue full, and every span of
//! a batch whose export fails (collector down, refused, timed out), is
//! dropped and counted in `sluice_trace_spans_dropped_total{reason}`
//! (`queue_full`, `export_failed`); exported spans are counted in
//! `sluice_trace_spans_exported_total`. Failures are logged once when
//! exporting starts failing and once when it recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, Key, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
    span_processor_with_async_runtime,
};
use opentelemetry_sdk::{Resource, runtime};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Spans queued beyond which new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
const DEFAULT_QUEUE: usize = 2048;
/// Extra room in the processor's channel for its control messages, so a
/// span admitted by [`Bounded`] always fits.
const CONTROL_ROOM: usize = 64;
/// Longest the shutdown flush may take.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracing flags of `sluice run`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TraceArgs {
    /// Export request spans over OTLP/HTTP (protobuf) to this collector
    /// URL, e.g. `http://otel-collector:4318` (a URL without a path gets
    /// `/v1/traces`). Overrides `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; tracing is off when none is set.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces to record, 0 to 1; requests with a `traceparent`
    /// follow the caller's sampling decision (parent-based). Overrides
    /// `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`.
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    pub trace_sample_ratio: Option<f64>,
}

/// The sampler, as configured.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerSpec {
    /// Record every trace.
    AlwaysOn,
    /// Record none (still propagates).
    AlwaysOff,
    /// Record this share of trace ids.
    Ratio(f64),
    /// Follow the parent's decision; use the inner sampler for new traces.
    ParentBased(Box<SamplerSpec>),
}

/// Resolved tracing configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The OTLP/HTTP traces URL spans are POSTed to.
    pub endpoint: String,
    /// Sampling.
    pub sampler: SamplerSpec,
    /// `service.name`, when set by `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// Spans queued before new ones are dropped.
    pub queue: usize,
}

/// A running trace pipeline. Call [`Tracing::shutdown`] after the proxy
/// drained; dropping it without that still shuts the pipeline down, in the
/// background.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    tracer: SdkTracer,
}

/// Span accounting shared by [`Bounded`] and [`Counting`].
#[derive(Debug)]
struct Accounting {
    /// Spans handed to the processor and not yet to the exporter.
    queued: AtomicUsize,
    capacity: usize,
    queue_full: IntCounter,
    export_failed: IntCounter,
    exported: IntCounter,
    /// Whether the last export failed (for logging transitions only).
    failing: AtomicBool,
    endpoint: String,
}

/// Span processor wrapper that bounds the queue itself, so that every span
/// dropped for lack of room is counted.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    acct: Arc<Accounting>,
}

/// Exporter wrapper that counts exported and failed spans.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    acct: Arc<Accounting>,
}

/// Counts its spans as failed unless settled (an export future dropped
/// by the processor's export timeout never completes).
struct Pending<'a> {
    acct: &'a Accounting,
    spans: u64,
    settled: bool,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid ratio {s:?}: expected a number from 0 to 1")),
    }
}

/// Resolves the configuration from `args` and the environment (`env`
/// returns a variable's value; empty counts as unset). `Ok(None)`: tracing
/// is off. `Err`: an unusable endpoint, with the setting it came from.
pub fn config(args: &TraceArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<TraceConfig>, String> {
    let var = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        if args.otlp_endpoint.is_some() {
            tracing::warn!("OTEL_SDK_DISABLED=true: tracing is off despite --otlp-endpoint");
        }
        return Ok(None);
    }
    let (source, endpoint) = if let Some(url) = args.otlp_endpoint.as_deref() {
        ("--otlp-endpoint", with_traces_path(url.trim()))
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", url.trim_end_matches('/')))
    } else {
        return Ok(None);
    };
    check_endpoint(&endpoint).map_err(|reason| format!("{source}: {endpoint}: {reason}"))?;
    for k in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(p) = var(k).filter(|p| p != "http/protobuf") {
            tracing::warn!(variable = k, value = %p, "Only http/protobuf is supported for OTLP; using it");
            break;
        }
    }
    let sampler = match args.trace_sample_ratio {
        Some(r) => SamplerSpec::ParentBased(Box::new(SamplerSpec::Ratio(r))),
        None => sampler_from_env(&var),
    };
    let queue = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
        None => DEFAULT_QUEUE,
        Some(v) => v.parse().ok().filter(|&q| q > 0).unwrap_or_else(|| {
            tracing::warn!(value = %v, "Invalid OTEL_BSP_MAX_QUEUE_SIZE; using {DEFAULT_QUEUE}");
            DEFAULT_QUEUE
        }),
    };
    Ok(Some(TraceConfig { endpoint, sampler, service_name: var("OTEL_SERVICE_NAME"), queue }))
}

/// `URL` as is when it has a path, else `URL/v1/traces`.
fn with_traces_path(url: &str) -> String {
    let has_path =
        url.parse::<http::Uri>().is_ok_and(|uri| uri.path_and_query().is_some_and(|p| !matches!(p.path(), "" | "/")));
    if has_path { url.to_string() } else { format!("{}/v1/traces", url.trim_end_matches('/')) }
}

fn check_endpoint(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https collectors are not supported yet (no TLS client); use http:// to a \
                        collector or agent on the node or in the pod"
                .into());
        }
        _ => return Err("expected an http:// URL".into()),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err("missing host".into());
    }
    Ok(())
}

fn sampler_from_env(var: &dyn Fn(&str) -> Option<String>) -> SamplerSpec {
    let ratio = || match var("OTEL_TRACES_SAMPLER_ARG") {
        None => 1.0,
        Some(arg) => parse_ratio(&arg).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Invalid OTEL_TRACES_SAMPLER_ARG; using 1.0");
            1.0
        }),
    };
    let parent_based = |s| SamplerSpec::ParentBased(Box::new(s));
    let Some(name) = var("OTEL_TRACES_SAMPLER") else { return parent_based(SamplerSpec::AlwaysOn) };
    match name.to_ascii_lowercase().as_str() {
        "always_on" => SamplerSpec::AlwaysOn,
        "always_off" => SamplerSpec::AlwaysOff,
        "traceidratio" => SamplerSpec::Ratio(ratio()),
        "parentbased_always_on" => parent_based(SamplerSpec::AlwaysOn),
        "parentbased_always_off" => parent_based(SamplerSpec::AlwaysOff),
        "parentbased_traceidratio" => parent_based(SamplerSpec::Ratio(ratio())),
        _ => {
            tracing::warn!(value = %name, "Unsupported OTEL_TRACES_SAMPLER; using parentbased_always_on");
            parent_based(SamplerSpec::AlwaysOn)
        }
    }
}

// === impl SamplerSpec ===

impl SamplerSpec {
    fn to_sdk(&self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(*r),
            Self::ParentBased(root) => Sampler::ParentBased(Box::new(root.to_sdk())),
        }
    }
}

impl std::fmt::Display for SamplerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlwaysOn => f.write_str("always_on"),
            Self::AlwaysOff => f.write_str("always_off"),
            Self::Ratio(r) => write!(f, "traceidratio({r})"),
            Self::ParentBased(root) => write!(f, "parentbased_{root}"),
        }
    }
}

// === impl Tracing ===

impl Tracing {
    /// Starts the pipeline on the current tokio runtime and registers its
    /// counters in `registry`.
    pub fn start(config: &TraceConfig, registry: &Registry) -> anyhow::Result<Self> {
        let acct = Arc::new(Accounting::new(registry, config.queue, config.endpoint.clone())?);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .build()?;
        // Reads the other OTEL_BSP_* variables.
        let batch = BatchConfigBuilder::default().with_max_queue_size(config.queue + CONTROL_ROOM).build();
        let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
            Counting { inner: exporter, acct: acct.clone() },
            runtime::Tokio,
        )
        .with_batch_config(batch)
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded { inner: processor, acct })
            .with_sampler(config.sampler.to_sdk())
            .with_resource(resource(config.service_name.as_deref()))
            .build();
        let scope = InstrumentationScope::builder("sluice").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = provider.tracer_with_scope(scope);
        tracing::info!(endpoint = %config.endpoint, sampler = %config.sampler, "Tracing requests (OTLP/HTTP)");
        Ok(Self { provider: Some(provider), tracer })
    }

    /// The tracer for [`sluice_proxy::Telemetry::tracer`].
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// Exports what is queued and stops, bounded by [`FLUSH_TIMEOUT`]. The
    /// SDK's shutdown blocks its thread, so it runs on the blocking pool.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else { return };
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => tracing::info!("Trace spans flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "Flushing trace spans failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "Flushing trace spans failed"),
            Err(_) => tracing::warn!(timeout = ?FLUSH_TIMEOUT, "Flushing trace spans timed out; the rest are dropped"),
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Without an explicit shutdown (an early exit), never block here:
        // the SDK's shutdown waits on the exporter task.
        if let (Some(provider), Ok(rt)) = (self.provider.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || provider.shutdown());
        }
    }
}

fn resource(service_name: Option<&str>) -> Resource {
    let env = EnvResourceDetector::new().detect();
    let name = match service_name {
        Some(name) => Some(name.to_string()),
        None if env.get(&Key::from_static_str("service.name")).is_some() => None,
        None => Some("sluice".to_string()),
    };
    let mut builder = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())]);
    if let Some(name) = name {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

// === impl Accounting ===

impl Accounting {
    fn new(registry: &Registry, capacity: usize, endpoint: String) -> prometheus::Result<Self> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "sluice_trace_spans_dropped_total",
                "Trace spans dropped: queue_full (the export queue was full) or export_failed (the collector \
                 could not be reached or refused them).",
            ),
            &["reason"],
        )?;
        let exported =
            IntCounter::new("sluice_trace_spans_exported_total", "Trace spans the OTLP collector accepted.")?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(exported.clone()))?;
        Ok(Self {
            queued: AtomicUsize::new(0),
            capacity,
            queue_full: dropped.with_label_values(&["queue_full"]),
            export_failed: dropped.with_label_values(&["export_failed"]),
            exported,
            failing: AtomicBool::new(false),
            endpoint,
        })
    }

    /// `n` spans left the queue for the exporter.
    fn dequeued(&self, n: usize) {
        let _ = self.queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(n)));
    }

    fn settle(&self, spans: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.exported.inc_by(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "Exporting trace spans again");
                }
            }
            Err(error) => {
                self.export_failed.inc_by(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        "Cannot export trace spans; dropping them until the collector is back \
                         (sluice_trace_spans_dropped_total)"
                    );
                }
            }
        }
    }
}

// === impl Bounded ===

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Lock-free admission: past capacity the span is dropped here and
        // counted, before the processor's own queue could drop it silently.
        if self.acct.queued.fetch_add(1, Ordering::Relaxed) >= self.acct.capacity {
            self.acct.queued.fetch_sub(1, Ordering::Relaxed);
            self.acct.queue_full.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === impl Counting ===

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.acct.dequeued(batch.len());
        let mut pending = Pending { acct: &self.acct, spans: batch.len() as u64, settled: false };
        let result = self.inner.export(batch).await;
        pending.settled = true;
        self.acct.settle(pending.spans, result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.acct.settle(self.spans, Err("export timed out".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(args: &TraceArgs, pairs: &[(&str, &str)]) -> Option<TraceConfig> {
        config(args, &env(pairs)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(resolve(&TraceArgs::default(), &[("OTEL_TRACES_SAMPLER", "always_on")]), None);
        assert_eq!(resolve(&TraceArgs::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), None);
        let args = TraceArgs { otlp_endpoint: Some("http://c:4318".into()), trace_sample_ratio: None };
        assert_eq!(resolve(&args, &[("OTEL_SDK_DISABLED", "true")]), None);
    }

    #[test]
    fn endpoint_precedence() {
        let flag = TraceArgs { otlp_endpoint: Some("http://flag:4318".into()), trace_sample_ratio: None };
        let all = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://signal:4318/custom"),
        ];
        let endpoint = |args: &TraceArgs, pairs: &[(&str, &str)]| resolve(args, pairs).map(|c| c.endpoint);
        assert_eq!(endpoint(&flag, &all).as_deref(), Some("http://flag:4318/v1/traces"));
        assert_eq!(endpoint(&TraceArgs::default(), &all).as_deref(), Some("http://signal:4318/custom"));
        assert_eq!(endpoint(&TraceArgs::default(), &all[..1]).as_deref(), Some("http://base:4318/v1/traces"));
        let with_path = TraceArgs { otlp_endpoint: Some("http://c:4318/otlp/v1/traces".into()), ..flag.clone() };
        assert_eq!(endpoint(&with_path, &[]).as_deref(), Some("http://c:4318/otlp/v1/traces"));
        let slash = TraceArgs { otlp_endpoint: Some("http://c:4318/".into()), ..flag };
        assert_eq!(endpoint(&slash, &[]).as_deref(), Some("http://c:4318/v1/traces"));
    }

    #[test]
    fn bad_endpoints_are_errors_naming_their_source() {
        let e = config(&TraceArgs::default(), &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]));
        assert!(e.as_ref().is_err_and(|e| e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("https")), "{e:?}");
        let args = TraceArgs { otlp_endpoint: Some("not a url".into()), trace_sample_ratio: None };
        assert!(config(&args, &env(&[])).is_err());
    }

    #[test]
    fn sampler_from_flag_and_env() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        let sampler = |args: &TraceArgs, extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            resolve(args, &pairs).map(|c| c.sampler)
        };
        let pb = |s| Some(SamplerSpec::ParentBased(Box::new(s)));
        assert_eq!(sampler(&TraceArgs::default(), &[]), pb(SamplerSpec::AlwaysOn));
        assert_eq!(
            sampler(&TraceArgs::default(), &[("OTEL_TRACES_SAMPLER", "always_off")]),
            Some(SamplerSpec::AlwaysOff)
        );
        assert_eq!(
            sampler(
                &TraceArgs::default(),
                &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]
            ),
            Some(SamplerSpec::Ratio(0.25))
        );
        assert_eq!(
            sampler(&TraceArgs::default(), &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]),
            pb(SamplerSpec::Ratio(1.0))
        );
        assert_eq!(
            sampler(&TraceArgs::default(), &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
            pb(SamplerSpec::AlwaysOff)
        );
        assert_eq!(
            sampler(
                &TraceArgs::default(),
                &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "7")]
            ),
            Some(SamplerSpec::Ratio(1.0))
        );
        assert_eq!(
            sampler(&TraceArgs::default(), &[("OTEL_TRACES_SAMPLER", "jaeger_remote")]),
            pb(SamplerSpec::AlwaysOn)
        );
        let flag = TraceArgs { otlp_endpoint: None, trace_sample_ratio: Some(0.0) };
        assert_eq!(sampler(&flag, &[("OTEL_TRACES_SAMPLER", "always_on")]), pb(SamplerSpec::Ratio(0.0)));
        assert!(parse_ratio("1.5").is_err() && parse_ratio("-0.1").is_err() && parse_ratio("x").is_err());
    }

    /// Answers every export as told.
    #[derive(Debug)]
    enum Fake {
        Fail,
        Succeed,
        Hang,
    }

    impl SpanExporter for Fake {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            match self {
                Self::Fail => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("down".into())),
                Self::Succeed => Ok(()),
                Self::Hang => std::future::pending().await,
            }
        }
    }

    fn span(sampled: bool) -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([1; 8]),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "GET".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    /// A processor that keeps what it is given.
    #[derive(Debug, Default)]
    struct Keep(std::sync::Mutex<Vec<SpanData>>);

    impl SpanProcessor for Keep {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn counter(registry: &Registry, name: &str, reason: Option<&str>) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| reason.is_none_or(|r| m.get_label().iter().any(|l| l.value() == r)))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test]
    async fn counts_queue_full_and_failed_exports() -> anyhow::Result<()> {
        let registry = Registry::new();
        let acct = Arc::new(Accounting::new(&registry, 2, "http://c/v1/traces".into())?);
        let processor = Bounded { inner: Keep::default(), acct: acct.clone() };
        for _ in 0..5 {
            processor.on_end(span(true));
        }
        processor.on_end(span(false));
        assert_eq!(processor.inner.0.lock().map(|v| v.len()).unwrap_or(0), 2, "two fit, unsampled never queued");
        assert_eq!(counter(&registry, "sluice_trace_spans_dropped_total", Some("queue_full")), 3);

        let failing = Counting { inner: Fake::Fail, acct: acct.clone() };
        assert!(failing.export(vec![span(true), span(true)]).await.is_err());
        assert_eq!(counter(&registry, "sluice_trace_spans_dropped_total", Some("export_failed")), 2);
        assert_eq!(acct.queued.load(Ordering::Relaxed), 0, "the batch left the queue");
        processor.on_end(span(true));
        assert_eq!(counter(&registry, "sluice_trace_spans_dropped_total", Some("queue_full")), 3, "room again");

        let working = Counting { inner: Fake::Succeed, acct: acct.clone() };
        working.export(vec![span(true)]).await?;
        assert_eq!(counter(&registry, "sluice_trace_spans_exported_total", None), 1);

        // An export cut off by the processor's timeout counts as failed.
        let never = Counting { inner: Fake::Hang, acct: acct.clone() };
        drop(never.export(vec![span(true), span(true), span(true)]));
        assert_eq!(counter(&registry, "sluice_trace_spans_dropped_total", Some("export_failed")), 2);
        let mut fut = Box::pin(never.export(vec![span(true), span(true), span(true)]));
        let waker = std::task::Waker::noop();
        let _ = fut.as_mut().poll(&mut std::task::Context::from_waker(waker));
        drop(fut);
        assert_eq!(counter(&registry, "sluice_trace_spans_dropped_total", Some("export_failed")), 5);
        Ok(())
    }
}
