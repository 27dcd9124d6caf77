//! Admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`,
//! `/diagnostics`.
//!
//! It runs on its own thread and single-threaded runtime, so scrapes and
//! config dumps never take time from the request path's workers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_controller::{Report, report::Severity};
use sluice_model::Snapshot;

/// What the admin endpoints read.
pub struct AdminState {
    /// The published snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// True once the first table is applied and listeners are bound.
    pub ready: AtomicBool,
    /// Proxy metrics (the registry also holds the control-plane ones).
    pub metrics: sluice_proxy::Metrics,
    /// The outcome of the last compile.
    pub last: ArcSwap<LastApply>,
}

/// The last compile: its diagnostics, and when the serving table was
/// applied.
#[derive(Debug, Default)]
pub struct LastApply {
    /// When the serving table was swapped in.
    pub applied_at: Option<SystemTime>,
    /// Generation of the serving table.
    pub generation: u64,
    /// Whether the last attempt was rejected (the serving table is older).
    pub rejected: bool,
    /// Diagnostics and conditions of the last attempt.
    pub report: Report,
}

/// Binds the admin listener and serves it on a dedicated thread.
pub fn serve(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("sluice-admin".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let resp = handle(&req, &state);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    })?;
    Ok(bound)
}

fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    let text_format = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "format=text"));
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".to_string()),
        "/readyz" if state.ready.load(Ordering::Acquire) => (StatusCode::OK, TEXT, "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".to_string()),
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.metrics.render()),
        "/config" if text_format => {
            let s = state.snapshot.load();
            (StatusCode::OK, TEXT, format!("# generation {}\n{}", s.routes.generation, s.routes.describe()))
        }
        "/config" => {
            let s = state.snapshot.load();
            let last = state.last.load();
            let mut v = s.routes.to_json(Some(&s.endpoints));
            v["appliedAt"] = last.applied_at.map(rfc3339).into();
            (StatusCode::OK, JSON, pretty(&v))
        }
        "/diagnostics" => {
            let last = state.last.load();
            (StatusCode::OK, JSON, pretty(&diagnostics_json(&last)))
        }
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn diagnostics_json(last: &LastApply) -> serde_json::Value {
    use serde_json::json;
    json!({
        "generation": last.generation,
        "appliedAt": last.applied_at.map(rfc3339),
        "lastAttemptRejected": last.rejected,
        "diagnostics": last.report.diagnostics.iter().map(|d| json!({
            "severity": match d.severity { Severity::Error => "Error", Severity::Warning => "Warning" },
            "object": d.object,
            "field": d.field,
            "message": d.message,
        })).collect::<Vec<_>>(),
        "conditions": last.report.statuses.iter().map(|s| json!({
            "kind": s.kind,
            "namespace": s.namespace,
            "name": s.name,
            "scope": format!("{:?}", s.scope),
            "conditions": s.conditions.iter().map(|c| json!({
                "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                "observedGeneration": c.observed_generation,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let mut s = String::new();
    sluice_proxy::rfc3339(t, &mut s);
    s
}
