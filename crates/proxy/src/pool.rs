//! Upstream connections: one keep-alive pool per worker thread, keyed by
//! endpoint address (and TLS settings), holding hyper's connection-level
//! `SendRequest` handles directly.
//!
//! Why not hyper-util's pooled `Client`: per request it takes a mutex,
//! hashes a `(Scheme, Authority)` key several times, rebuilds an absolute
//! URI and spawns a task that waits for the connection to become ready
//! again. Here a request pops an idle HTTP/1.1 connection from its
//! thread's list (no lock, no hashing of strings), sends on it, and the
//! response body hands the connection back when it is dropped after its
//! last frame, on whatever thread finished the response.
//!
//! - HTTP/1.1: LIFO list of idle connections per key (the most recently
//!   used connection is the warmest). A connection is reused only after its
//!   response body ended; a body dropped early closes the connection.
//!   Idle connections close after `idle_upstream_timeout` (the connection
//!   task checks every period, so the bound is between one and two
//!   periods).
//! - h2c (prior knowledge): one shared connection per key and thread,
//!   multiplexed; replaced when closed.
//! - A request that failed before any byte of it was written on a *reused*
//!   connection (the upstream closed it while idle) is retried once on a
//!   fresh connection; anything else is the caller's error.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use sluice_model::UpstreamTls;
use tokio::net::TcpStream;

use crate::body::{BoxError, RequestBody};
use crate::coalesce::Coalesce;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::upstream::Counted;

/// How long a reused connection may take to signal readiness after its
/// previous response ended (normally at once).
const READY_GRACE: Duration = Duration::from_secs(5);

/// Connection settings shared by every thread's pool.
pub(crate) struct Pool {
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    open: IntGauge,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// What a connection is for: endpoint and TLS settings (the protocol is
/// the map it is in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    addr: SocketAddr,
    /// Fingerprint of the BackendTLSPolicy settings; `None` for cleartext.
    tls: Option<u64>,
}

/// A checked-out HTTP/1.1 connection; goes back to the pool through
/// [`Reuse::release`] once its response has ended.
pub(crate) struct Reuse {
    key: Key,
    tx: http1::SendRequest<RequestBody>,
    idle: Arc<IdleSince>,
}

/// Milliseconds since [`EPOCH`] at which the connection became idle;
/// [`BUSY`] while a request is on it. Read by the connection's task to
/// close it after the idle timeout.
#[derive(Debug, Default)]
struct IdleSince(AtomicU64);

const BUSY: u64 = u64::MAX;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// An idle HTTP/1.1 connection.
type IdleConn = (http1::SendRequest<RequestBody>, Arc<IdleSince>);

/// One thread's idle connections.
#[derive(Default)]
struct Idle {
    h1: HashMap<Key, VecDeque<IdleConn>, BuildHasherDefault<KeyHasher>>,
    h2: HashMap<Key, http2::SendRequest<RequestBody>, BuildHasherDefault<KeyHasher>>,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// Why a connection could not be used.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Connecting (TCP or TLS) failed or timed out: nothing was sent.
    Connect(BoxError),
    /// The request failed on an established connection.
    Request(hyper::Error),
}

// === impl Pool ===

impl Pool {
    /// The pool for the static proxy config.
    pub(crate) fn new(config: &ProxyConfig, metrics: &Metrics) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Self {
            connect_timeout: config.connect_timeout,
            idle_timeout: Some(config.idle_upstream_timeout).filter(|d| !d.is_zero()),
            open: metrics.upstream_connections.clone(),
            http1: http1::Builder::new(),
            http2,
        }
    }

    /// Sends `req` to `addr` over HTTP/1.1 (TLS when `tls` is set), on an
    /// idle pooled connection when there is one. The returned [`Reuse`]
    /// must be released when the response body has ended.
    pub(crate) async fn send_http1(
        &self,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Reuse), SendError> {
        let key = Key { addr, tls: tls.map(|t| t.fingerprint) };
        while let Some((mut tx, idle)) = checkout_http1(&key) {
            if !tx.is_ready() && !matches!(tokio::time::timeout(READY_GRACE, tx.ready()).await, Ok(Ok(()))) {
                continue;
            }
            idle.0.store(BUSY, Ordering::Relaxed);
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Reuse { key, tx, idle })),
                Err(mut e) => match e.take_message() {
                    // Not sent: the upstream closed the idle connection.
                    Some(back) => req = back,
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
        // Boxed: connecting (a TLS handshake's state especially) is large
        // and rare; inline it would be copied with every request's future.
        let (mut tx, idle) = Box::pin(self.connect_http1(addr, tls)).await.map_err(SendError::Connect)?;
        let resp = tx.send_request(req).await.map_err(SendError::Request)?;
        Ok((resp, Reuse { key, tx, idle }))
    }

    /// Sends `req` to `addr` over HTTP/2 with prior knowledge, on the
    /// thread's shared connection to it when one is open.
    pub(crate) async fn send_h2c(
        &self,
        addr: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = Key { addr, tls: None };
        let shared =
            IDLE.try_with(|idle| idle.borrow().h2.get(&key).filter(|tx| !tx.is_closed()).cloned()).ok().flatten();
        let mut tx = match shared {
            Some(tx) => tx,
            None => {
                let tx = Box::pin(self.connect_h2c(addr)).await.map_err(SendError::Connect)?;
                let _ = IDLE.try_with(|idle| idle.borrow_mut().h2.insert(key, tx.clone()));
                tx
            }
        };
        tx.send_request(req).await.map_err(SendError::Request)
    }

    async fn connect_http1(&self, addr: SocketAddr, tls: Option<&UpstreamTls>) -> Result<IdleConn, BoxError> {
        let tcp = self.tcp(addr).await?;
        let idle = Arc::new(IdleSince(AtomicU64::new(BUSY)));
        let tx = match tls {
            None => self.handshake_http1(TokioIo::new(tcp), &idle).await?,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let handshake = connector.connect(tls.server_name.clone(), tcp);
                let stream = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| "TLS handshake timed out")??;
                self.handshake_http1(TokioIo::new(stream), &idle).await?
            }
        };
        Ok((tx, idle))
    }

    async fn handshake_http1<T>(
        &self,
        io: T,
        idle: &Arc<IdleSince>,
    ) -> Result<http1::SendRequest<RequestBody>, BoxError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        self.open.inc();
        let (tx, conn) = self.http1.handshake(Counted::new(io, self.open.clone())).await?;
        let watch = self.idle_timeout.map(|period| IdleWatch { idle: idle.clone(), period, tick: None });
        tokio::spawn(Driven { conn: conn.with_upgrades(), watch });
        Ok(tx)
    }

    async fn connect_h2c(&self, addr: SocketAddr) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        let tcp = self.tcp(addr).await?;
        self.open.inc();
        // Requests of many streams share this connection: batch their frames.
        let io = TokioIo::new(Coalesce::new(tcp));
        let (tx, conn) = self.http2.handshake(Counted::new(io, self.open.clone())).await?;
        tokio::spawn(Driven { conn, watch: None });
        Ok(tx)
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, BoxError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle_timeout", &self.idle_timeout).finish_non_exhaustive()
    }
}

/// Pops the most recently used idle connection for `key`, dropping closed
/// ones on the way.
fn checkout_http1(key: &Key) -> Option<IdleConn> {
    // `try_with`: nothing is pooled on a thread that is shutting down.
    IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.h1.get_mut(key)?;
        while let Some(conn) = list.pop_back() {
            if !conn.0.is_closed() {
                return Some(conn);
            }
        }
        None
    })
    .ok()
    .flatten()
}

// === impl Reuse ===

impl Reuse {
    /// Returns the connection to this thread's pool: at once when it is
    /// ready for the next request, else once it signals readiness (a body
    /// ended before the connection task processed the end).
    pub(crate) fn release(self) {
        let Self { key, mut tx, idle } = self;
        if tx.is_ready() {
            put(key, tx, idle);
        } else if !tx.is_closed() {
            tokio::spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_GRACE, tx.ready()).await {
                    put(key, tx, idle);
                }
            });
        }
    }
}

impl std::fmt::Debug for Reuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reuse").field("key", &self.key).finish_non_exhaustive()
    }
}

fn put(key: Key, tx: http1::SendRequest<RequestBody>, idle: Arc<IdleSince>) {
    idle.0.store(now_ms(), Ordering::Relaxed);
    let _ = IDLE.try_with(|cell| {
        let mut cell = cell.borrow_mut();
        let list = cell.h1.entry(key).or_default();
        // Connections the upstream closed while idle leave from the front
        // (the oldest end), one per release: amortised, never a scan.
        if list.front().is_some_and(|c| c.0.is_closed()) {
            list.pop_front();
        }
        list.push_back((tx, idle));
    });
}

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(BUSY - 1)
}

// === Driven: a connection task with an idle timeout ===

/// Drives a client connection; ends it once it has been idle in the pool
/// for a whole `period` when checked.
struct Driven<C> {
    conn: C,
    watch: Option<IdleWatch>,
}

struct IdleWatch {
    idle: Arc<IdleSince>,
    period: Duration,
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C: Future + Unpin> Future for Driven<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Pin::new(&mut this.conn).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(watch) = &mut this.watch else { return Poll::Pending };
        loop {
            let tick = watch.tick.get_or_insert_with(|| Box::pin(tokio::time::sleep(watch.period)));
            if tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let since = watch.idle.0.load(Ordering::Relaxed);
            let period_ms = u64::try_from(watch.period.as_millis()).unwrap_or(u64::MAX);
            if since != BUSY && now_ms().saturating_sub(since) >= period_ms {
                // Dropping the connection closes the socket; the pooled
                // handle then reports closed and is discarded.
                return Poll::Ready(());
            }
            watch.tick = None;
        }
    }
}

// === KeyHasher ===

/// FxHash-style hasher for [`Key`] (a few integers): the pool key is hashed
/// on every request, and SipHash's DoS resistance buys nothing for keys
/// that come from the compiled endpoint set.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn keys_that_differ_hash_apart() {
        let h = BuildHasherDefault::<KeyHasher>::default();
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: SocketAddr = "127.0.0.1:8081".parse().unwrap_or_else(|e| panic!("{e}"));
        let keys = [
            Key { addr: a, tls: None },
            Key { addr: b, tls: None },
            Key { addr: a, tls: Some(1) },
            Key { addr: a, tls: Some(2) },
        ];
        let hashes: std::collections::HashSet<u64> = keys.iter().map(|k| h.hash_one(k)).collect();
        assert_eq!(hashes.len(), keys.len());
    }
}
