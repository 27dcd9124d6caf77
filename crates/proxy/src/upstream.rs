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
use prometheus::IntGauge;
use sluice_model::{BackendId, BackendTarget, Endpoints, Filter, RouteTable, Rule, ServiceRef, WeightedBackend};

use crate::body::{BodyTooLarge, RequestBody, ResponseBody};
use crate::error::ProxyError;
use crate::pool::SendError;
use crate::server::Shared;
use crate::{filters, headers, rng, upgrade};

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
    /// The endpoint as a URI authority, precomputed with the endpoint set
    /// (h2c requests carry it as `:authority`).
    pub(crate) authority: Option<Authority>,
    /// Limit for the response headers to arrive.
    pub(crate) timeout: Option<Duration>,
    /// Whether the client asked for a protocol upgrade.
    pub(crate) upgrade: bool,
    /// Speak HTTP/2 with prior knowledge to the endpoint.
    pub(crate) h2c: bool,
    /// Speak TLS to the endpoint (BackendTLSPolicy).
    pub(crate) tls: Option<Arc<sluice_model::UpstreamTls>>,
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
    if h2c {
        parts.uri = absolute_uri(plan.addr, plan.authority.clone(), &parts.uri)?;
        parts.version = Version::HTTP_2;
    } else {
        origin_form(&mut parts.uri);
        parts.version = Version::HTTP_11;
    }
    parts.extensions = Extensions::new();
    let up = Request::from_parts(parts, RequestBody::new(body, shared.config.max_request_body_bytes));

    let sent = async {
        if h2c {
            shared.pool.send_h2c(plan.addr, up).await.map(|resp| (resp, None))
        } else {
            shared.pool.send_http1(plan.addr, plan.tls.as_deref(), up).await.map(|(resp, reuse)| (resp, Some(reuse)))
        }
    };
    let result = match plan.timeout {
        Some(t) => {
            tokio::time::timeout(t, sent).await.map_err(|_| ProxyError::Timeout { addr: plan.addr, timeout: t })?
        }
        None => sent.await,
    };
    let (mut resp, reuse) = result.map_err(|e| classify(e, plan.addr))?;

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
    // An upgraded connection belongs to the tunnel, never to the pool.
    let reuse = reuse.filter(|_| resp.status() != StatusCode::SWITCHING_PROTOCOLS);
    Ok(resp.map(|body| ResponseBody::upstream(body, reuse)))
}

/// HTTP/1.1 requests go out in origin-form (`/path?query`); a client's
/// absolute-form target and h2's `:scheme`/`:authority` are dropped (the
/// `Host` header carries the authority).
fn origin_form(uri: &mut Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = Uri::from(path);
    }
}

/// `http://ADDR/path?query`: h2c requests carry the endpoint as
/// `:authority`.
fn absolute_uri(addr: SocketAddr, authority: Option<Authority>, original: &Uri) -> Result<Uri, ProxyError> {
    let authority = match authority {
        Some(a) => a,
        None => Authority::from_maybe_shared(Bytes::from(addr.to_string()))
            .map_err(|_| ProxyError::Internal("endpoint address is not a valid authority"))?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(original.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).map_err(|_| ProxyError::Internal("upstream URI is invalid"))
}

/// Maps a pool error to the proxy error it stands for.
fn classify(err: SendError, addr: SocketAddr) -> ProxyError {
    let err = match err {
        SendError::Connect(source) => return ProxyError::Connect { addr, source },
        SendError::Request(err) => err,
    };
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
    fn h2c_uri_targets_the_endpoint_and_keeps_path_and_query() -> Result<(), Box<dyn std::error::Error>> {
        let addr: SocketAddr = "[::1]:8080".parse()?;
        let uri = absolute_uri(addr, None, &"http://a.example/x/y?q=1".parse()?)?;
        assert_eq!(absolute_uri(addr, Some("[::1]:8080".parse()?), &"/x".parse()?)?, "http://[::1]:8080/x");
        assert_eq!(uri, "http://[::1]:8080/x/y?q=1");
        Ok(())
    }

    #[test]
    fn http1_targets_are_origin_form() -> Result<(), Box<dyn std::error::Error>> {
        for (given, want) in
            [("http://a.example/x/y?q=1", "/x/y?q=1"), ("https://a.example", "/"), ("/p?x", "/p?x"), ("*", "*")]
        {
            let mut uri: Uri = given.parse()?;
            origin_form(&mut uri);
            assert_eq!(uri.to_string(), want, "{given}");
        }
        Ok(())
    }
}
