//! Sluice's data plane: listening sockets, the HTTP proxy path, load
//! balancing and upstream connection pools.
//!
//! Start reading at [`Proxy`]: the binary builds one with a [`ProxyConfig`]
//! and the shared `ArcSwap<Snapshot>` the controller publishes into, then
//! calls [`Proxy::reconcile`] whenever the table's bind keys change and
//! [`Proxy::shutdown`] on SIGTERM.
//!
//! Request path, one file per phase, in order:
//!
//! 1. `listener.rs`: socket registry, accept loop, one hyper connection per
//!    socket (HTTP/1.1 with upgrades, h2c prior knowledge), graceful drain;
//!    `idle.rs`: plain connections hold only their socket while idle (first
//!    bytes pick the protocol; idle HTTP/1.1 connections are parked).
//! 2. `server.rs`: the per-request service; runs the phases below and turns
//!    a [`ProxyError`] into a response.
//! 3. `route.rs`: one `snapshot.load()`, Host/`:authority` validation,
//!    [`sluice_model::Bind::lookup`].
//! 4. `headers.rs`: hop-by-hop stripping, `X-Forwarded-*`.
//! 5. `ratelimit.rs`: the rule's rate limits (before any filter; Redis
//!    decisions are awaited after the routing guard is dropped).
//!    `filters.rs`: Gateway API filters (request headers, URL rewrite,
//!    redirect; response headers after the upstream answers).
//! 6. `upstream.rs`: weighted backend pick (`rng.rs`), endpoint pick,
//!    timeouts; `pool.rs` keeps the upstream connections (HTTP/1.1, TLS,
//!    h2c) per worker thread; `upgrade.rs` splices upgraded
//!    (WebSocket) connections; `body.rs` holds the streaming body types.
//! 7. `observe.rs`: when the response body ends, metrics (`metrics.rs`), the
//!    request's span (`trace.rs`, only when tracing is on; it also sets the
//!    upstream's `traceparent` before step 6 sends) and the access log line
//!    (`access_log.rs`).
//!
//! Errors become responses in `error.rs`. The routing guard from
//! `ArcSwap::load` lives only in the synchronous part of `server.rs`; no
//! `.await` happens while it is held.

mod access_log;
mod body;
mod coalesce;
mod config;
mod error;
mod filters;
mod headers;
mod idle;
mod listener;
pub mod metrics;
mod observe;
mod pool;
pub mod ratelimit;
pub mod rng;
mod route;
mod server;
mod tls;
mod trace;
mod upgrade;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_model::{BindKey, Snapshot};

pub use access_log::{AccessLog, AccessLogTarget, rfc3339};
pub use config::ProxyConfig;
pub use error::{Fault, ProxyError};
pub use metrics::Metrics;
pub use ratelimit::RateLimits;

/// Observability wiring for [`Proxy::with_telemetry`].
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Registry the request metrics are registered in.
    pub registry: prometheus::Registry,
    /// Access log writer; `None` turns the access log off.
    pub access_log: Option<AccessLog>,
    /// Tracer for one span (kind Server) per request, with W3C
    /// `traceparent`/`tracestate` propagation to the upstream; `None` turns
    /// tracing off (no per-request work at all). The tracer's provider owns
    /// sampling and export (see the binary's `telemetry.rs`).
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

#[allow(clippy::panic)]
fn unreachable_metrics() -> Metrics {
    // A fresh registry cannot hold duplicates.
    panic!("registering metrics in an empty registry failed")
}

/// The data plane: listening sockets plus the shared request-path state.
///
/// Cheap to clone (two `Arc`s); clones share sockets, pools and the
/// snapshot. Dropping every clone without calling [`Proxy::shutdown`] still
/// stops the accept loops and drains their connections in the background.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<server::Shared>,
    sockets: Arc<listener::Sockets>,
}

// === impl Proxy ===

impl Proxy {
    /// Builds the proxy. Binds nothing yet: call [`Proxy::reconcile`].
    ///
    /// Every request reads `snapshot` once; storing a new [`Snapshot`]
    /// changes routing for requests that start afterwards.
    pub fn new(config: ProxyConfig, snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        Self::with_telemetry(config, snapshot, Telemetry::default())
    }

    /// Builds the proxy with metrics in `telemetry.registry` and an access
    /// log when `telemetry.access_log` is set.
    pub fn with_telemetry(config: ProxyConfig, snapshot: Arc<ArcSwap<Snapshot>>, telemetry: Telemetry) -> Self {
        let metrics = Metrics::new(&telemetry.registry).unwrap_or_else(|e| {
            // Only a duplicate registration can fail: fall back to a
            // private registry rather than serving without metrics.
            tracing::warn!(error = %e, "Metrics already registered; using a private registry");
            Metrics::new(&prometheus::Registry::new()).unwrap_or_else(|_| unreachable_metrics())
        });
        Self {
            shared: Arc::new(server::Shared::new(config, snapshot, metrics, telemetry.access_log, telemetry.tracer)),
            sockets: Arc::new(listener::Sockets::default()),
        }
    }

    /// The proxy's metrics (render them for `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Makes the set of listening sockets equal to `keys`.
    ///
    /// Keys not bound yet are bound at `resolve(key)` (port 0 picks a free
    /// port); keys no longer wanted stop accepting at once (their socket is
    /// closed before the future completes) while their open connections
    /// drain, bounded by [`ProxyConfig::drain_timeout`]. Returns one entry per
    /// newly bound key with its actual local address, or the bind error for
    /// that key alone. After [`Proxy::shutdown`] every new key gets an error.
    ///
    /// Used as `proxy.reconcile(&keys, &resolve).await`. `resolve` is called
    /// for every key before this returns the future, which therefore does
    /// not hold on to it and is `Send` (it can run in a spawned task).
    pub fn reconcile<'a>(
        &'a self,
        keys: &[BindKey],
        resolve: &dyn Fn(&BindKey) -> SocketAddr,
    ) -> impl Future<Output = Vec<(BindKey, Result<SocketAddr, std::io::Error>)>> + Send + use<'a> {
        let wanted: Vec<(BindKey, SocketAddr)> = keys.iter().map(|k| (k.clone(), resolve(k))).collect();
        self.sockets.reconcile(&self.shared, wanted)
    }

    /// The sockets currently accepting, ordered by key.
    pub fn bound(&self) -> Vec<(BindKey, SocketAddr)> {
        self.sockets.bound()
    }

    /// Graceful shutdown: stops accepting on every socket, lets in-flight
    /// requests finish and closes idle keep-alive connections, then waits
    /// for upgraded (WebSocket) tunnels; whatever is still open after
    /// [`ProxyConfig::drain_timeout`] is closed.
    pub async fn shutdown(&self) {
        self.sockets.shutdown(&self.shared).await;
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy").field("bound", &self.bound()).finish_non_exhaustive()
    }
}
