//! The per-request service: runs route → headers → filters → pick with the
//! routing guard held (synchronously), then forwards without it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use opentelemetry_sdk::trace::SdkTracer;
use sluice_model::{BindKey, Protocol, Snapshot};
use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::body::ResponseBody;
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::filters::{self, FilterCtx};
use crate::metrics::Metrics;
use crate::observe::{AccessFields, Finish, ObservedBody, Outcome};
use crate::pool::Pool;
use crate::trace::RequestTrace;
use crate::upstream::{self, Plan};
use crate::{headers, route};

/// State shared by every connection and request.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// Upstream connections (HTTP/1.1, TLS, h2c), pooled per worker thread.
    pub(crate) pool: Pool,
    /// Connection builder (HTTP/1.1 + h2c), configured once.
    pub(crate) server: auto::Builder<TokioExecutor>,
    /// The same, HTTP/1.1 only (TLS connections that negotiated `http/1.1`).
    pub(crate) http1: auto::Builder<TokioExecutor>,
    /// The same, HTTP/2 only (TLS connections that negotiated `h2`).
    pub(crate) http2: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 on plain sockets, whose connections park while idle
    /// (`idle.rs`); configured as `server`'s HTTP/1.1 side.
    pub(crate) plain_http1: hyper::server::conn::http1::Builder,
    /// Flips to `true` when upgraded tunnels must close; its receiver count
    /// is the number of open tunnels.
    tunnels: watch::Sender<bool>,
    /// Request metrics.
    pub(crate) metrics: Metrics,
    /// Access log writer, when enabled.
    pub(crate) access_log: Option<AccessLog>,
    /// Request tracer, when tracing is on.
    pub(crate) tracer: Option<SdkTracer>,
}

/// Per-connection request context.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    /// The socket the connection arrived on.
    pub(crate) key: BindKey,
    /// The client IP, ready for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// The client IP (rate limit keys and allow-lists).
    pub(crate) peer_ip: std::net::IpAddr,
    /// TLS: the SNI of the handshake (lowercase).
    pub(crate) sni: Option<Box<str>>,
}

/// What the synchronous routing phase decided.
enum Decision {
    /// Answer locally (a redirect).
    Respond(Response<ResponseBody>),
    /// Forward upstream.
    Forward(Plan),
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(
        config: ProxyConfig,
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Metrics,
        access_log: Option<AccessLog>,
        tracer: Option<SdkTracer>,
    ) -> Self {
        let mut server = auto::Builder::new(TokioExecutor::new());
        // hyper rejects a buffer limit below 8 KiB.
        let header_bytes = config.max_request_header_bytes.max(8 * 1024);
        server.http1().timer(TokioTimer::new()).max_buf_size(header_bytes);
        server.http2().timer(TokioTimer::new()).max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
        let http1 = server.clone().http1_only();
        let http2 = server.clone().http2_only();
        let mut plain_http1 = hyper::server::conn::http1::Builder::new();
        plain_http1.timer(TokioTimer::new()).max_buf_size(header_bytes).header_read_timeout(crate::idle::IDLE_TIMEOUT);
        let pool = Pool::new(&config, &metrics);
        let (tunnels, _) = watch::channel(false);
        Self { config, snapshot, pool, server, http1, http2, plain_http1, tunnels, metrics, access_log, tracer }
    }

    /// A handle an upgraded tunnel holds while open; it resolves to `true`
    /// when the tunnel must close.
    pub(crate) fn tunnel_stop(&self) -> watch::Receiver<bool> {
        self.tunnels.subscribe()
    }

    /// Waits until every tunnel has closed.
    pub(crate) async fn tunnels_closed(&self) {
        self.tunnels.closed().await;
    }

    /// Closes every open tunnel.
    pub(crate) fn stop_tunnels(&self) {
        self.tunnels.send_replace(true);
    }
}

// === impl ConnCtx ===

impl ConnCtx {
    pub(crate) fn new(shared: Arc<Shared>, key: BindKey, peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        let client_ip = HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { shared, key, client_ip, peer_ip: ip, sni: None }
    }
}

/// Serves one request; never fails, errors become responses. The request
/// is recorded (metrics, span, access log) when its response body ends.
pub(crate) async fn serve(conn: &ConnCtx, req: Request<Incoming>) -> Response<ObservedBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let access = conn.shared.access_log.as_ref().map(|_| AccessFields {
        time: SystemTime::now(),
        client: conn.client_ip.clone(),
        host: req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers().get(http::header::HOST).cloned())
            .unwrap_or_else(|| HeaderValue::from_static("")),
        uri: req.uri().clone(),
        version: req.version(),
    });
    // Tracing off: `None`, and nothing below touches trace headers.
    let mut trace = conn.shared.tracer.as_ref().map(|_| RequestTrace::begin(&req, &conn.client_ip));
    let mut outcome = Outcome::default();
    let resp = match handle(conn, req, &mut outcome, trace.as_deref_mut()).await {
        Ok(resp) => resp,
        Err(e) => {
            e.log();
            if let Some(t) = trace.as_deref_mut() {
                t.failed(&e);
            }
            let backend = outcome.backend.as_deref().unwrap_or("");
            match &e {
                ProxyError::Connect { .. } => conn.shared.metrics.upstream_connect_error(backend),
                ProxyError::Timeout { .. } => conn.shared.metrics.upstream_timeout(backend),
                _ => {}
            }
            e.to_response()
        }
    };
    let status = resp.status();
    let finish = Finish { shared: conn.shared.clone(), start, method, status, outcome, access, trace };
    resp.map(|body| ObservedBody::new(body, finish))
}

async fn handle(
    conn: &ConnCtx,
    mut req: Request<Incoming>,
    outcome: &mut Outcome,
    trace: Option<&mut RequestTrace>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let shared = &*conn.shared;
    let authority = route::authority(&req)?;
    if let Some(limit) = shared.config.max_request_body_bytes {
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    // A Redis limit answers before any routing error (e.g. no endpoint).
    let decision = decide(conn, &mut req, &authority, outcome);
    if crate::ratelimit::has_pending(&outcome.ratelimit)
        && let Some(resp) = crate::ratelimit::settle(&mut outcome.ratelimit).await
    {
        return Ok(resp);
    }
    match decision? {
        Decision::Respond(resp) => Ok(resp),
        Decision::Forward(plan) => {
            if let (Some(t), Some(tracer)) = (trace, &shared.tracer) {
                // After the guard is gone: the sampler and span start run
                // outside the routing decision.
                let method = req.method().clone();
                t.propagate(tracer, &method, outcome, req.headers_mut());
            }
            let sent = Instant::now();
            let mut resp = upstream::forward(shared, plan, req).await;
            outcome.upstream_elapsed = Some(sent.elapsed());
            if let Ok(r) = &mut resp {
                crate::ratelimit::decorate(&outcome.ratelimit, r.headers_mut());
            }
            resp
        }
    }
}

/// Routing, header preparation, request filters and upstream pick, all
/// under one `snapshot.load()` guard. Synchronous on purpose: the guard must
/// not live across an `.await`.
fn decide(
    conn: &ConnCtx,
    req: &mut Request<Incoming>,
    authority: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Decision, ProxyError> {
    let shared = &*conn.shared;
    let snapshot = shared.snapshot.load();
    let m = route::lookup(&snapshot.routes, &conn.key, req, authority, conn.sni.as_deref())?;
    let rule = m.rule;
    outcome.rule = Some(rule.clone());
    let scheme = match m.listener.protocol {
        Protocol::Http => "http",
        Protocol::Https => "https",
    };
    outcome.scheme = Some(scheme);
    if let Some(resp) = crate::ratelimit::check(rule, conn.peer_ip, req.headers(), &mut outcome.ratelimit) {
        return Ok(Decision::Respond(resp));
    }

    let http11 = req.version() == Version::HTTP_11;
    let stripped = headers::strip_request(req.headers_mut(), http11);
    headers::forwarded(req.headers_mut(), &conn.client_ip, scheme, authority);

    let ctx = FilterCtx { scheme, listener_port: m.listener.port, authority, matched_prefix: m.matched_prefix };
    if let Some(resp) = filters::apply_request(&rule.filters, req, &ctx)? {
        return Ok(Decision::Respond(resp));
    }
    let (backend, id) = upstream::pick_backend(rule)?;
    outcome.backend = snapshot.routes.service_label(id).cloned();
    if let Some(resp) = filters::apply_request(&backend.filters, req, &ctx)? {
        return Ok(Decision::Respond(resp));
    }
    let (addr, authority) = upstream::pick_endpoint(&snapshot.routes, &snapshot.endpoints, id)?;
    outcome.upstream = Some(addr);
    Ok(Decision::Forward(Plan {
        rule: rule.clone(),
        backend_filters: (!backend.filters.is_empty()).then(|| backend.filters.clone()),
        addr,
        authority,
        timeout: upstream::timeout(rule, shared.config.request_timeout),
        upgrade: stripped.upgrade,
        // An upgrade (WebSocket) needs HTTP/1.1 even to an h2c backend.
        h2c: !stripped.upgrade && snapshot.routes.is_h2c(id),
        tls: snapshot.routes.upstream_tls(id).cloned(),
    }))
}
