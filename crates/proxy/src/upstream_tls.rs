//! TLS to backends with a BackendTLSPolicy: a connector for the pooled
//! HTTP/1.1 client that dials TCP and then runs a rustls handshake with the
//! policy's client config (built by the controller) and SNI.
//!
//! The client pools connections by URI authority. A request to a TLS
//! backend carries `b{backend}.{fingerprint}@{endpoint}` as its authority:
//! the userinfo keeps pools of different policies (or of an old and a
//! rotated CA) apart even when they share an endpoint address, and tells
//! the connector which settings to look up in the current snapshot. The
//! userinfo never reaches the wire (the client writes origin-form and
//! Sluice sets `Host` itself).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use sluice_model::{BackendId, Snapshot, UpstreamTls};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::{BoxError, RequestBody};
use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::Counted;

/// The pooled client for TLS backends.
pub(crate) type TlsClient = Client<TlsConnector, RequestBody>;

/// Dials TCP, then TLS with the backend's policy.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    tcp: HttpConnector,
    snapshot: Arc<ArcSwap<Snapshot>>,
    handshake_timeout: Duration,
    open: IntGauge,
}

/// An upstream TLS connection.
#[derive(Debug)]
pub(crate) struct TlsIo(TokioIo<TlsStream<TcpStream>>);

/// The client for TLS backends (HTTP/1.1, keep-alive pool per backend
/// endpoint and policy).
pub(crate) fn client(config: &ProxyConfig, metrics: &Metrics, snapshot: Arc<ArcSwap<Snapshot>>) -> TlsClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(config.connect_timeout));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.idle_upstream_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(TlsConnector {
            tcp,
            snapshot,
            handshake_timeout: config.connect_timeout,
            open: metrics.upstream_connections.clone(),
        })
}

/// `https://b{id}.{pool_key}@ADDR`: the authority of a request to a TLS
/// backend (one small allocation per request to such a backend).
pub(crate) fn authority(id: BackendId, tls: &UpstreamTls, addr: std::net::SocketAddr) -> Result<Authority, ProxyError> {
    Authority::from_maybe_shared(Bytes::from(format!("b{}.{}@{addr}", id.0, tls.pool_key)))
        .map_err(|_| ProxyError::Internal("upstream TLS authority is invalid"))
}

/// The scheme for TLS backends.
pub(crate) const SCHEME: Scheme = Scheme::HTTPS;

/// Parses `b{id}.{fingerprint}` from the authority's userinfo.
fn key(uri: &Uri) -> Option<(BackendId, u64)> {
    let (userinfo, _) = uri.authority()?.as_str().split_once('@')?;
    let (id, fp) = userinfo.strip_prefix('b')?.split_once('.')?;
    Some((BackendId(id.parse().ok()?), u64::from_str_radix(fp, 16).ok()?))
}

// === impl TlsConnector ===

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = Counted<TlsIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The settings are looked up once per new connection, in the table
        // that is current now; a table where the policy changed uses
        // another pool key, so a stale one is simply not found.
        let settings = key(&uri).and_then(|(id, fp)| {
            let snapshot = self.snapshot.load();
            snapshot.routes.upstream_tls(id).filter(|t| t.fingerprint == fp).cloned()
        });
        let connecting = self.tcp.call(uri);
        let open = self.open.clone();
        let limit = self.handshake_timeout;
        Box::pin(async move {
            let tls = settings.ok_or("the backend's BackendTLSPolicy changed; retry")?;
            let tcp = connecting.await?.into_inner();
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let handshake = connector.connect(tls.server_name.clone(), tcp);
            let stream = tokio::time::timeout(limit, handshake).await.map_err(|_| "TLS handshake timed out")??;
            open.inc();
            Ok(Counted::new(TlsIo(TokioIo::new(stream)), open))
        })
    }
}

// === impl TlsIo ===

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_key_round_trips_through_the_authority() -> Result<(), Box<dyn std::error::Error>> {
        let uri: Uri = "https://b7.1a2b@127.0.0.1:8443/x".parse()?;
        assert_eq!(key(&uri), Some((BackendId(7), 0x1a2b)));
        assert_eq!(uri.host(), Some("127.0.0.1"), "the connector dials the endpoint, not the userinfo");
        assert_eq!(key(&"https://127.0.0.1:8443/".parse()?), None);
        Ok(())
    }
}
