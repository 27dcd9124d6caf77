//! HTTP/1.1 connections that cost little while idle.
//!
//! hyper keeps a connection's state, its read buffer (8 KiB) and its write
//! buffer (8 KiB) for as long as the connection lives, idle keep-alive time
//! included. Here a plain connection holds only its socket (a TLS one its
//! socket and its TLS session) while it has nothing to do:
//!
//! - a fresh connection waits for its first bytes before anything else is
//!   allocated; those bytes pick the protocol: the h2 preface means h2c
//!   prior knowledge (served by the HTTP/2 builder, never parked), anything
//!   else HTTP/1.1. When the bytes that arrived are too few to tell, the
//!   sniffing `auto` builder serves the connection as before. A TLS
//!   connection (ALPN `http/1.1`) is served at once: its first request may
//!   already sit decrypted in the TLS session, where no socket peek sees it;
//! - an HTTP/1.1 connection that has been idle for [`PARK_AFTER`] (no
//!   request open, no request body left to read, its response written and
//!   flushed, the next read pending, no bytes received since the last request
//!   started) is taken apart with hyper's `into_parts`, which hands back the
//!   socket and any bytes read ahead; the connection is "parked" until the
//!   socket is readable again, then served by a new hyper connection. (When
//!   the last read was pending, the TLS session held no decrypted bytes, so
//!   for TLS too the socket is the place to wait.) The
//!   check runs on a timer every [`PARK_AFTER`] per active connection, not
//!   per request, so a busy connection pays nothing per request for it
//!   beyond a few flag writes.
//!
//! Connections that asked for an upgrade (WebSocket, CONNECT) are never
//! parked. A parked connection (or a fresh one) that stays silent for
//! [`IDLE_TIMEOUT`] is closed, as hyper's header read timeout closes an idle
//! keep-alive connection; on drain it is closed at once.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::UPGRADE;
use http::{Method, Request};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, trace};

use crate::observe::ObservedBody;
use crate::server::{self, ConnCtx};

/// Idle time after which an HTTP/1.1 connection drops its hyper state and
/// buffers (checked every `PARK_AFTER`, so parking happens after one to two
/// periods of idleness).
const PARK_AFTER: Duration = Duration::from_millis(250);

/// A fresh or parked connection that sends nothing for this long is closed.
/// The same value is hyper's header read timeout for the connections built
/// here (hyper's default), which closes an idle keep-alive connection that is
/// not parked yet.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells a socket's connections to drain: busy ones finish their requests
/// (hyper's graceful shutdown), idle ones close.
#[derive(Clone)]
pub(crate) struct Drain(Arc<watch::Sender<bool>>);

impl Default for Drain {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Drain {
    pub(crate) fn start(&self) {
        self.0.send_replace(true);
    }

    /// Completes once the drain has started.
    async fn started(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone: the socket is gone too.
        let _ = rx.wait_for(|on| *on).await;
    }
}

/// Runs a connection future to completion, calling `shutdown` on it once
/// the drain starts.
pub(crate) async fn watch<C: Future>(conn: C, drain: &Drain, shutdown: impl FnOnce(Pin<&mut C>)) -> C::Output {
    let mut conn = pin!(conn);
    let mut started = pin!(drain.started());
    let mut shutdown = Some(shutdown);
    poll_fn(|cx| {
        if shutdown.is_some()
            && started.as_mut().poll(cx).is_ready()
            && let Some(f) = shutdown.take()
        {
            f(conn.as_mut());
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// What a connection turned out to need from the listener.
pub(crate) enum Handoff<S> {
    /// Served and closed here.
    Done,
    /// h2c prior knowledge: serve with the HTTP/2 builder.
    H2(S),
    /// Too few bytes to tell: serve with the sniffing `auto` builder.
    Sniff(S),
}

/// A connection's stream, and the TCP socket under it (where a parked
/// connection waits for bytes).
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How a fresh connection starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    /// Plain: wait for the first bytes, which pick the protocol.
    Sniff,
    /// HTTP/1.1 already agreed (TLS ALPN): serve at once.
    Http1,
}

/// Serves an HTTP/1.1 connection (see the module docs).
pub(crate) async fn serve<S: Socket>(ctx: Arc<ConnCtx>, stream: S, drain: &Drain, fresh: Fresh) -> Handoff<S> {
    let act = Arc::new(Activity::default());
    let mut io = Tracked { stream, ahead: Bytes::new(), act: act.clone() };
    let mut first = true;
    loop {
        if io.ahead.is_empty() && !(first && fresh == Fresh::Http1) {
            // Counted from the first park on (fresh connections are not).
            let _parked = (!first).then(|| Parked::new(&ctx.shared.metrics.downstream_connections_parked));
            // Parked (or fresh): nothing but the socket until bytes arrive.
            // `peek` rather than `readable`, which may report readiness
            // without data; the bytes also pick the protocol (first time).
            let mut buf = [0u8; H2_PREFACE.len()];
            let peeked = tokio::select! {
                biased;
                () = drain.started() => None,
                r = tokio::time::timeout(IDLE_TIMEOUT, io.stream.tcp().peek(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => Some(n),
                    Ok(Ok(_)) => None,
                    Ok(Err(error)) => {
                        debug!(%error, "peek failed");
                        None
                    }
                    Err(_) => None,
                },
            };
            let Some(n) = peeked else {
                trace!("idle: closed while waiting for bytes");
                return Handoff::Done;
            };
            if first && fresh == Fresh::Sniff {
                match sniff(&buf[..n]) {
                    Sniffed::Http1 => {}
                    Sniffed::H2 => return Handoff::H2(io.stream),
                    Sniffed::Unsure => return Handoff::Sniff(io.stream),
                }
            }
        }
        first = false;
        let svc_ctx = ctx.clone();
        let svc_act = act.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let open = svc_act.start(&req);
            let ctx = svc_ctx.clone();
            async move {
                let resp = server::serve(&ctx, req).await;
                Ok::<_, Infallible>(resp.map(|body| OpenBody { body, _open: open }))
            }
        });
        let mut conn = Box::new(ctx.shared.plain_http1.serve_connection(TokioIo::new(io), svc).with_upgrades());
        let mut tick = pin!(tokio::time::sleep(PARK_AFTER));
        let mut seen = act.requests.load(Relaxed);
        let mut draining = false;
        let mut started = pin!(drain.started());
        let park = poll_fn(|cx| {
            if !draining && started.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                if let Err(error) = result {
                    debug!(%error, "connection error");
                }
                return Poll::Ready(false);
            }
            if !draining && tick.as_mut().poll(cx).is_ready() {
                let requests = act.requests.load(Relaxed);
                if requests == seen && act.parkable() {
                    return Poll::Ready(true);
                }
                seen = requests;
                tick.as_mut().reset(tokio::time::Instant::now() + PARK_AFTER);
                // Registers the timer again.
                let _ = tick.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await;
        if !park {
            return Handoff::Done;
        }
        trace!("idle: parked");
        let Some(parts) = conn.into_parts() else {
            return Handoff::Done;
        };
        io = parts.io.into_inner();
        // Bytes hyper read but did not parse yet are served again first.
        if !parts.read_buf.is_empty() {
            io.ahead = if io.ahead.is_empty() {
                parts.read_buf
            } else {
                let mut joined = BytesMut::with_capacity(parts.read_buf.len() + io.ahead.len());
                joined.extend_from_slice(&parts.read_buf);
                joined.extend_from_slice(&io.ahead);
                joined.freeze()
            };
        }
    }
}

enum Sniffed {
    Http1,
    H2,
    Unsure,
}

/// The protocol of a plain connection, from its first bytes (at least one).
fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Sniffed::Http1
    } else if n == H2_PREFACE.len() {
        Sniffed::H2
    } else {
        Sniffed::Unsure
    }
}

/// Holds the parked-connections gauge up while it lives.
struct Parked(prometheus::IntGauge);

impl Parked {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the idle check needs to know about a connection. Only the
/// connection's task touches it (HTTP/1.1 serves its requests in place), so
/// plain loads and stores suffice.
#[derive(Default)]
struct Activity {
    /// Requests started.
    requests: AtomicU64,
    /// Responses not finished (their body not dropped yet).
    open: AtomicUsize,
    /// The latest request has a body hyper may still be reading.
    body: AtomicBool,
    /// A request asked for an upgrade: the connection is never parked.
    upgrade: AtomicBool,
    /// The latest socket read was pending.
    read_pending: AtomicBool,
    /// Bytes arrived since the latest request started (a partial request
    /// head: hyper's header read timeout must keep running).
    read_since_request: AtomicBool,
    /// Written since the latest flush completed.
    unflushed: AtomicBool,
}

impl Activity {
    fn start(self: &Arc<Self>, req: &Request<Incoming>) -> Open {
        self.requests.store(self.requests.load(Relaxed).wrapping_add(1), Relaxed);
        self.read_since_request.store(false, Relaxed);
        self.body.store(!req.body().is_end_stream(), Relaxed);
        if req.method() == Method::CONNECT || req.headers().contains_key(UPGRADE) {
            self.upgrade.store(true, Relaxed);
        }
        self.open.store(self.open.load(Relaxed) + 1, Relaxed);
        Open(self.clone())
    }

    fn parkable(&self) -> bool {
        self.open.load(Relaxed) == 0
            && self.read_pending.load(Relaxed)
            && !self.body.load(Relaxed)
            && !self.upgrade.load(Relaxed)
            && !self.read_since_request.load(Relaxed)
            && !self.unflushed.load(Relaxed)
    }
}

/// An open response; dropped with its body (or with the request future when
/// the connection goes away first).
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.store(self.0.open.load(Relaxed).saturating_sub(1), Relaxed);
    }
}

/// The response body, holding the connection's [`Open`] mark.
struct OpenBody {
    body: ObservedBody,
    _open: Open,
}

impl Body for OpenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The stream of an HTTP/1.1 connection: records what the idle check needs
/// and replays bytes read ahead by an earlier hyper connection.
struct Tracked<S> {
    stream: S,
    ahead: Bytes,
    act: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.act.read_pending.store(result.is_pending(), Relaxed);
        if buf.filled().len() > before {
            this.act.read_since_request.store(true, Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.act.unflushed.store(true, Relaxed);
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.act.unflushed.store(true, Relaxed);
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            this.act.unflushed.store(false, Relaxed);
        }
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection waiting on the drain wakes when it starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_wakes_every_waiting_connection() {
        let drain = Drain::default();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let drain = drain.clone();
            tasks.push(tokio::spawn(async move { drain.started().await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain.start();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap_or_else(|_| panic!("a waiting task missed the drain"))
                .unwrap_or_else(|e| panic!("task failed: {e}"));
        }
        // Started before waiting: done at once.
        tokio::time::timeout(Duration::from_secs(5), drain.started())
            .await
            .unwrap_or_else(|_| panic!("a late waiter missed the drain"));
    }
}
