//! Upstream selection and forwarding: weighted backend pick, endpoint
//! round robin, the pooled HTTP/1.1 client, timeouts.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Extensions, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use sluice_model::{BackendId, BackendTarget, Endpoints, Filter, RouteTable, Rule, ServiceRef, WeightedBackend};

use crate::body::{BodyTooLarge, BoxError, RequestBody, ResponseBody};
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::server::Shared;
use crate::{filters, headers, rng, upgrade};

/// The shared upstream client: one keep-alive pool for every route.
pub(crate) type HttpClient = Client<CountingConnector, RequestBody>;

/// [`HttpConnector`] that keeps `sluice_upstream_connections` up to date.
#[derive(Clone, Debug)]
pub(crate) struct CountingConnector {
    inner: HttpConnector,
    open: IntGauge,
}

/// An upstream connection that decrements the gauge when closed.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    io: T,
    open: IntGauge,
}

/// Everything the forwarding phase needs once the routing guard is gone.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The matched rule (its response filters run on the answer).
    pub(crate) rule: Arc<Rule>,
    /// The picked backend's filters, when it has any.
    pub(crate) backend_filters: Option<Arc<[Filter]>>,
    /// The picked endpoint.
    pub(crate) addr: SocketAddr,
    /// The endpoint as a URI authority, precomputed with the endpoint set.
    pub(crate) authority: Option<Authority>,
    /// Limit for the response headers to arrive.
    pub(crate) timeout: Option<Duration>,
    /// Whether the client asked for a protocol upgrade.
    pub(crate) upgrade: bool,
    /// Speak HTTP/2 with prior knowledge to the endpoint.
    pub(crate) h2c: bool,
    /// Speak TLS to the endpoint (BackendTLSPolicy).
    pub(crate) tls: Option<(BackendId, Arc<sluice_model::UpstreamTls>)>,
}

/// Builds the upstream client from the static config: HTTP/1.1, or
/// HTTP/2 with prior knowledge when `h2c`.
pub(crate) fn client(config: &ProxyConfig, metrics: &Metrics, h2c: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(h2c)
        .pool_idle_timeout(config.idle_upstream_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The Host header is always set by the proxy from the client's
        // authority; the client must never replace it with the endpoint.
        .set_host(false)
        .build(CountingConnector { inner: connector, open: metrics.upstream_connections.clone() })
}

// === impl CountingConnector ===

impl tower::Service<Uri> for CountingConnector {
    type Response = Counted<<HttpConnector as tower::Service<Uri>>::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Boxed: one allocation per new connection, not per request.
        let connecting = self.inner.call(uri);
        let open = self.open.clone();
        Box::pin(async move {
            let io = connecting.await?;
            open.inc();
            Ok(Counted { io, open })
        })
    }
}

// === impl Counted ===

impl<T> Counted<T> {
    /// Wraps a connection the caller has already counted in `open`.
    pub(crate) fn new(io: T, open: IntGauge) -> Self {
        Self { io, open }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// Weighted pick among the rule's backends.
pub(crate) fn pick_backend(rule: &Rule) -> Result<(&WeightedBackend, BackendId), ProxyError> {
    let backend =
        rule.backends.pick(rng::next_u64()).ok_or_else(|| ProxyError::NoBackends { route: rule.route.clone() })?;
    match backend.target {
        BackendTarget::Service(id) => Ok((backend, id)),
        BackendTarget::Invalid => Err(ProxyError::InvalidBackend { route: rule.route.clone() }),
    }
}

/// Round-robin pick among the Service's ready endpoints, with the address
/// as a precomputed URI authority when available.
pub(crate) fn pick_endpoint(
    table: &RouteTable,
    endpoints: &Endpoints,
    id: BackendId,
) -> Result<(SocketAddr, Option<Authority>), ProxyError> {
    let picked = endpoints.get(id).and_then(|set| set.pick_with_authority());
    picked.map(|(addr, authority)| (addr, authority.cloned())).ok_or_else(|| ProxyError::NoEndpoints {
        service: table.services().get(id.0 as usize).cloned().unwrap_or_else(|| ServiceRef {
            namespace: String::new(),
            name: "?".into(),
            port: 0,
        }),
    })
}

/// The limit on waiting for response headers: the smaller of the request
/// timeout (the rule's `timeouts.request`, else the proxy default) and the
/// rule's `timeouts.backendRequest`; zero disables either.
pub(crate) fn timeout(rule: &Rule, default: Option<Duration>) -> Option<Duration> {
    let request = rule.request_timeout.or(default).filter(|d| !d.is_zero());
    let backend = rule.backend_timeout.filter(|d| !d.is_zero());
    match (request, backend) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sends the (already filtered) request to `plan.addr` and returns the
/// upstream's response, streamed, with hop-by-hop headers removed and the
/// response filters applied.
pub(crate) async fn forward(
    shared: &Shared,
    plan: Plan,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let client_upgrade = plan.upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
    }
    let h2c = plan.h2c && plan.tls.is_none();
    parts.uri = match &plan.tls {
        Some((id, tls)) => upstream_uri(
            crate::upstream_tls::SCHEME,
            plan.addr,
            Some(crate::upstream_tls::authority(*id, tls, plan.addr)?),
            &parts.uri,
        )?,
        None => upstream_uri(Scheme::HTTP, plan.addr, plan.authority.clone(), &parts.uri)?,
    };
    parts.version = if h2c { Version::HTTP_2 } else { Version::HTTP_11 };
    parts.extensions = Extensions::new();
    let up = Request::from_parts(parts, RequestBody::new(body, shared.config.max_request_body_bytes));

    let sent = match (&plan.tls, h2c) {
        (Some(_), _) => shared.client_tls.request(up),
        (None, true) => shared.client_h2c.request(up),
        (None, false) => shared.client.request(up),
    };
    let result = match plan.timeout {
        Some(t) => {
            tokio::time::timeout(t, sent).await.map_err(|_| ProxyError::Timeout { addr: plan.addr, timeout: t })?
        }
        None => sent.await,
    };
    let mut resp = result.map_err(|e| classify(e, plan.addr))?;

    let switching = plan.upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let Some(client) = client_upgrade.filter(|_| switching) {
        upgrade::splice(shared, plan.addr, client, hyper::upgrade::on(&mut resp));
    }
    let headers = resp.headers_mut();
    headers::strip_response(headers, switching);
    filters::apply_response(&plan.rule.filters, headers);
    if let Some(f) = &plan.backend_filters {
        filters::apply_response(f, headers);
    }
    Ok(resp.map(ResponseBody::Upstream))
}

/// `http://ADDR/path?query`: the connector dials the endpoint and the
/// client writes origin-form (`/path?query`) on the wire.
fn upstream_uri(
    scheme: Scheme,
    addr: SocketAddr,
    authority: Option<Authority>,
    original: &Uri,
) -> Result<Uri, ProxyError> {
    let authority = match authority {
        Some(a) => a,
        None => Authority::from_maybe_shared(Bytes::from(addr.to_string()))
            .map_err(|_| ProxyError::Internal("endpoint address is not a valid authority"))?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(original.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).map_err(|_| ProxyError::Internal("upstream URI is invalid"))
}

/// Maps a client error to the proxy error it stands for.
fn classify(err: legacy::Error, addr: SocketAddr) -> ProxyError {
    if err.is_connect() {
        return ProxyError::Connect { addr, source: err };
    }
    let mut source = err.source();
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge;
        }
        source = e.source();
    }
    ProxyError::Upstream { addr, source: err }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::{BackendGroup, RouteRef};

    fn rule(request: Option<u64>, backend: Option<u64>) -> Rule {
        Rule {
            route: Arc::new(RouteRef::new("HTTPRoute", "ns".into(), "r".into())),
            index: 0,
            filters: Arc::new([]),
            backends: BackendGroup::default(),
            request_timeout: request.map(Duration::from_millis),
            backend_timeout: backend.map(Duration::from_millis),
        }
    }

    #[test]
    fn timeout_takes_the_smallest_enabled_limit() {
        let d = Some(Duration::from_millis(1000));
        let ms = |v: u64| Some(Duration::from_millis(v));
        assert_eq!(timeout(&rule(None, None), None), None);
        assert_eq!(timeout(&rule(None, None), d), d);
        assert_eq!(timeout(&rule(Some(300), None), d), ms(300));
        assert_eq!(timeout(&rule(Some(0), None), d), None, "zero disables the request timeout");
        assert_eq!(timeout(&rule(Some(0), Some(200)), d), ms(200));
        assert_eq!(timeout(&rule(None, Some(2000)), d), d);
        assert_eq!(timeout(&rule(None, Some(0)), None), None);
    }

    #[test]
    fn upstream_uri_targets_the_endpoint_and_keeps_path_and_query() -> Result<(), Box<dyn std::error::Error>> {
        let addr: SocketAddr = "[::1]:8080".parse()?;
        let uri = upstream_uri(Scheme::HTTP, addr, None, &"http://a.example/x/y?q=1".parse()?)?;
        assert_eq!(
            upstream_uri(Scheme::HTTP, addr, Some("[::1]:8080".parse()?), &"/x".parse()?)?,
            "http://[::1]:8080/x"
        );
        assert_eq!(uri, "http://[::1]:8080/x/y?q=1");
        Ok(())
    }
}
