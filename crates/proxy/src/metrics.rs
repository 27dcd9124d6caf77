//! Request-path metrics (Prometheus).
//!
//! `http_requests_total` and `http_request_duration_seconds` carry `code`,
//! `method`, `route` (`namespace/name`), `rule` and `backend` labels; every
//! label value comes from the compiled config or a fixed set (methods
//! outside the standard ones are `OTHER`), never from request content, so
//! cardinality is bounded by the config.
//!
//! Recording takes no lock and allocates nothing once a series has been
//! seen on a thread: each worker thread records into thread-local
//! `prometheus::local` vectors (a hash lookup on precomputed label strings)
//! and flushes them into the shared metrics every [`FLUSH_EVERY`] and when
//! the thread parks (the binary calls [`flush_thread`] from tokio's
//! `on_thread_park`), so a scrape lags by at most that interval.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// How often a busy thread flushes its local metrics.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Latency buckets (seconds): sub-millisecond to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const REQUEST_LABELS: &[&str] = &["code", "method", "route", "rule", "backend"];

/// The proxy's metrics, registered in one [`Registry`].
#[derive(Clone, Debug)]
pub struct Metrics {
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_connect_errors: IntCounterVec,
    upstream_timeouts: IntCounterVec,
    /// Open client connections per listener port.
    pub downstream_connections: IntGaugeVec,
    /// HTTP/1.1 client connections (plain or TLS) that are idle and hold no
    /// HTTP state (parked, see `idle.rs`), included in `downstream_connections`.
    pub downstream_connections_parked: IntGauge,
    /// Open connections to upstream endpoints.
    pub upstream_connections: IntGauge,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: prometheus::IntCounter,
    /// TLS handshakes by `result` (see `tls.rs`).
    pub tls_handshakes: IntCounterVec,
}

/// Label values of one finished request, all borrowed from the config.
#[derive(Clone, Copy, Debug)]
pub struct RequestLabels<'a> {
    /// Status code.
    pub status: StatusCode,
    /// Method.
    pub method: &'a Method,
    /// `namespace/name` of the route, `""` when nothing matched.
    pub route: &'a str,
    /// Rule index, `""` when nothing matched.
    pub rule: &'a str,
    /// `namespace/name:port` of the backend, `""` when none was picked.
    pub backend: &'a str,
}

struct Local {
    id: u64,
    /// One entry per label set seen on this thread.
    series: HashMap<SeriesKey, Series, BuildHasherDefault<FxHasher>>,
    last_flush: Instant,
}

/// Upper bound on a thread's cached series (reloads leave stale ones
/// behind); past it the cache is flushed and emptied.
const MAX_SERIES: usize = 4096;

/// A label set by the addresses and lengths of its strings, all borrowed
/// from the compiled config or static: hashing it costs a few
/// multiplications instead of SipHash over every label value, twice. An
/// address can be reused by a later table, so a hit is confirmed against
/// the series' own copy of the strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    route: (usize, usize),
    rule: (usize, usize),
    backend: (usize, usize),
    code: u16,
    method: usize,
}

/// This thread's unflushed part of one series.
struct Series {
    route: Box<str>,
    rule: Box<str>,
    backend: Box<str>,
    requests: LocalIntCounter,
    duration: LocalHistogram,
}

/// FxHash-style word hasher for [`SeriesKey`] (no dependency, no seed:
/// the keys are addresses, not client input).
#[derive(Default)]
struct FxHasher(u64);

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests served."), REQUEST_LABELS)?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from the request's arrival to the last byte of the response.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            REQUEST_LABELS,
        )?;
        let upstream_connect_errors = IntCounterVec::new(
            Opts::new("sluice_upstream_connect_errors_total", "Failed connections to upstream endpoints."),
            &["backend"],
        )?;
        let upstream_timeouts = IntCounterVec::new(
            Opts::new("sluice_upstream_timeouts_total", "Upstream requests that hit their timeout (504)."),
            &["backend"],
        )?;
        let downstream_connections = IntGaugeVec::new(
            Opts::new("sluice_downstream_connections", "Open client connections per listener port."),
            &["port"],
        )?;
        let downstream_connections_parked = IntGauge::new(
            "sluice_downstream_connections_parked",
            "Idle HTTP/1.1 client connections (plain or TLS) holding no HTTP state (socket and TLS session only) until the client sends again.",
        )?;
        let upstream_connections =
            IntGauge::new("sluice_upstream_connections", "Open connections to upstream endpoints (pooled or busy).")?;
        let access_log_dropped = prometheus::IntCounter::new(
            "sluice_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_connect_errors.clone()))?;
        registry.register(Box::new(upstream_timeouts.clone()))?;
        registry.register(Box::new(downstream_connections.clone()))?;
        registry.register(Box::new(downstream_connections_parked.clone()))?;
        registry.register(Box::new(upstream_connections.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "sluice_tls_handshakes_total",
                "TLS handshakes on HTTPS listeners by result: ok, resumed, no_certificate, error, closed, timeout.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry: registry.clone(),
            requests,
            duration,
            upstream_connect_errors,
            upstream_timeouts,
            downstream_connections,
            downstream_connections_parked,
            upstream_connections,
            access_log_dropped,
            tls_handshakes,
        })
    }

    /// The registry the metrics live in (add control-plane metrics here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a finished request on this thread's local metrics.
    pub fn record(&self, labels: &RequestLabels<'_>, elapsed: Duration, now: Instant) {
        LOCAL.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else { return };
            if slot.as_ref().is_some_and(|l| l.id != self.id)
                && let Some(old) = slot.take()
            {
                old.flush();
            }
            let local = slot.get_or_insert_with(|| Local { id: self.id, series: HashMap::default(), last_flush: now });
            if local.series.len() >= MAX_SERIES {
                local.flush();
                local.series.clear();
            }
            let method = method_str(labels.method);
            let key = SeriesKey {
                route: (labels.route.as_ptr() as usize, labels.route.len()),
                rule: (labels.rule.as_ptr() as usize, labels.rule.len()),
                backend: (labels.backend.as_ptr() as usize, labels.backend.len()),
                code: labels.status.as_u16(),
                method: method.as_ptr() as usize,
            };
            let series = match local.series.entry(key) {
                Entry::Occupied(e) => {
                    let series = e.into_mut();
                    if !series.is(labels) {
                        // A reused address: a different label set.
                        series.flush();
                        *series = self.series(labels, method);
                    }
                    series
                }
                Entry::Vacant(e) => e.insert(self.series(labels, method)),
            };
            series.requests.inc();
            series.duration.observe(elapsed.as_secs_f64());
            if now.saturating_duration_since(local.last_flush) >= FLUSH_EVERY {
                local.flush();
                local.last_flush = now;
            }
        });
    }

    /// A new local series (looks the shared one up by its label values).
    fn series(&self, labels: &RequestLabels<'_>, method: &'static str) -> Series {
        let values = [code_str(labels.status), method, labels.route, labels.rule, labels.backend];
        Series {
            route: labels.route.into(),
            rule: labels.rule.into(),
            backend: labels.backend.into(),
            requests: self.requests.with_label_values(&values).local(),
            duration: self.duration.with_label_values(&values).local(),
        }
    }

    /// Counts a failed upstream connection.
    pub fn upstream_connect_error(&self, backend: &str) {
        self.upstream_connect_errors.with_label_values(&[backend]).inc();
    }

    /// Counts an upstream timeout.
    pub fn upstream_timeout(&self, backend: &str) {
        self.upstream_timeouts.with_label_values(&[backend]).inc();
    }

    /// Prometheus text exposition of everything in the registry, after
    /// flushing the calling thread's local metrics.
    pub fn render(&self) -> String {
        flush_thread();
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "Cannot encode metrics");
        }
        out
    }
}

/// Flushes the calling thread's local request metrics into the shared
/// ones. Cheap when there is nothing to flush; call it when a worker thread
/// parks.
pub fn flush_thread() {
    LOCAL.with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut()
            && let Some(local) = slot.as_mut()
        {
            local.flush();
            local.last_flush = Instant::now();
        }
    });
}

// === impl Local ===

impl Local {
    fn flush(&self) {
        for series in self.series.values() {
            series.flush();
        }
    }
}

// === impl Series ===

impl Series {
    /// Whether this series has exactly these (config-borrowed) labels.
    fn is(&self, labels: &RequestLabels<'_>) -> bool {
        *self.route == *labels.route && *self.rule == *labels.rule && *self.backend == *labels.backend
    }

    fn flush(&self) {
        self.requests.flush();
        self.duration.flush();
    }
}

// === impl FxHasher ===

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn method_str(m: &Method) -> &'static str {
    crate::trace::standard_method(m).unwrap_or("OTHER")
}

/// Status code as a static string (no formatting per request).
fn code_str(s: StatusCode) -> &'static str {
    static CODES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let codes = CODES.get_or_init(|| (0..1000).map(|c| c.to_string()).collect());
    codes.get(usize::from(s.as_u16())).map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_visible_after_a_flush() -> prometheus::Result<()> {
        let registry = Registry::new();
        let m = Metrics::new(&registry)?;
        let labels = RequestLabels {
            status: StatusCode::OK,
            method: &Method::GET,
            route: "ns/r",
            rule: "0",
            backend: "ns/svc:80",
        };
        let now = Instant::now();
        for _ in 0..3 {
            m.record(&labels, Duration::from_millis(3), now);
        }
        let text = m.render();
        assert!(
            text.contains(
                r#"http_requests_total{backend="ns/svc:80",code="200",method="GET",route="ns/r",rule="0"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"http_request_duration_seconds_bucket{backend="ns/svc:80",code="200",method="GET",route="ns/r",rule="0",le="0.005"} 3"#), "{text}");
        assert!(text.contains(r#"le="0.0025"} 0"#), "{text}");
        Ok(())
    }

    #[test]
    fn a_reused_label_address_gets_its_own_series() -> prometheus::Result<()> {
        // The thread cache keys series by label addresses; a later table may
        // put different labels at the same address (same length here).
        let registry = Registry::new();
        let m = Metrics::new(&registry)?;
        let mut route = String::from("ns/a");
        let now = Instant::now();
        for _ in 0..2 {
            let labels =
                RequestLabels { status: StatusCode::OK, method: &Method::GET, route: &route, rule: "0", backend: "b" };
            m.record(&labels, Duration::from_millis(1), now);
        }
        route.replace_range(.., "ns/b");
        let labels =
            RequestLabels { status: StatusCode::OK, method: &Method::GET, route: &route, rule: "0", backend: "b" };
        m.record(&labels, Duration::from_millis(1), now);
        // A different allocation with the same content is the same series.
        let copy = String::from("ns/b");
        let labels =
            RequestLabels { status: StatusCode::OK, method: &Method::GET, route: &copy, rule: "0", backend: "b" };
        m.record(&labels, Duration::from_millis(1), now);
        let text = m.render();
        assert!(
            text.contains(r#"http_requests_total{backend="b",code="200",method="GET",route="ns/a",rule="0"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{backend="b",code="200",method="GET",route="ns/b",rule="0"} 2"#),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn unknown_methods_are_one_label_value() -> Result<(), http::method::InvalidMethod> {
        assert_eq!(method_str(&Method::from_bytes(b"PURGE")?), "OTHER");
        assert_eq!(code_str(StatusCode::BAD_GATEWAY), "502");
        Ok(())
    }
}
