//! Listening sockets: the registry behind `reconcile`/`bound`/`shutdown`,
//! the accept loop, and one hyper connection (HTTP/1.1 with upgrades, or h2c
//! prior knowledge) per accepted stream, drained gracefully. Plain sockets
//! go through `idle.rs` (the first bytes pick the protocol; idle HTTP/1.1
//! connections drop their buffers). On TLS, the ALPN protocol (`h2`,
//! `http/1.1`) picks the protocol up front, without sniffing the first bytes.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_model::BindKey;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument as _, debug, debug_span, info, warn};

use crate::coalesce::Coalesce;
use crate::idle::{self, Drain, Fresh, Handoff};
use crate::observe::ObservedBody;
use crate::server::{self, ConnCtx, Shared};
use crate::tls::TlsSocket;

/// Pause after an accept error that is not about one connection (e.g. out
/// of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The socket registry. Only the control plane touches it; the request path
/// never does.
#[derive(Default)]
pub(crate) struct Sockets {
    registry: Mutex<Registry>,
    /// Lock-free copy of the bound sockets for [`Sockets::bound`].
    bound: ArcSwap<Vec<(BindKey, SocketAddr)>>,
}

#[derive(Default)]
struct Registry {
    sockets: BTreeMap<BindKey, Socket>,
    /// Accept loops of removed sockets that may still be draining.
    draining: Vec<JoinHandle<()>>,
    shut_down: bool,
}

struct Socket {
    addr: SocketAddr,
    /// Tells the accept loop to stop (dropping it does too).
    stop: oneshot::Sender<()>,
    /// Fires once the listening socket is closed.
    closed: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

// === impl Sockets ===

impl Sockets {
    /// Binds the keys of `wanted` (key, address to bind) that are not bound
    /// yet and stops the bound ones that are not wanted.
    pub(crate) async fn reconcile(
        &self,
        shared: &Arc<Shared>,
        wanted: Vec<(BindKey, SocketAddr)>,
    ) -> Vec<(BindKey, Result<SocketAddr, io::Error>)> {
        let mut reg = self.registry.lock().await;
        let keys: HashSet<&BindKey> = wanted.iter().map(|(k, _)| k).collect();
        let removed: Vec<BindKey> = reg.sockets.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for key in removed {
            if let Some(socket) = reg.sockets.remove(&key) {
                info!(port = key.port, gateway = ?key.gateway, addr = %socket.addr, "stopped listening");
                // Close the socket before binding new ones: a new key may want
                // the same port.
                let task = socket.stop_accepting().await;
                reg.draining.push(task);
            }
        }
        reg.draining.retain(|t| !t.is_finished());

        let mut out: Vec<(BindKey, Result<SocketAddr, io::Error>)> = Vec::new();
        for (key, target) in &wanted {
            if reg.sockets.contains_key(key) || out.iter().any(|(k, _)| k == key) {
                continue;
            }
            if reg.shut_down {
                out.push((key.clone(), Err(io::Error::other("proxy is shut down"))));
                continue;
            }
            let result = match TcpListener::bind(*target).await.and_then(|l| Ok((l.local_addr()?, l))) {
                Ok((addr, listener)) => {
                    info!(port = key.port, gateway = ?key.gateway, %addr, "listening");
                    reg.sockets.insert(key.clone(), Socket::spawn(shared.clone(), key.clone(), listener, addr));
                    Ok(addr)
                }
                Err(error) => {
                    debug!(port = key.port, gateway = ?key.gateway, %error, "bind failed");
                    Err(error)
                }
            };
            out.push((key.clone(), result));
        }
        self.publish(&reg);
        out
    }

    pub(crate) fn bound(&self) -> Vec<(BindKey, SocketAddr)> {
        self.bound.load().as_ref().clone()
    }

    pub(crate) async fn shutdown(&self, shared: &Shared) {
        let deadline = tokio::time::Instant::now() + shared.config.drain_timeout;
        let tasks = {
            let mut reg = self.registry.lock().await;
            reg.shut_down = true;
            let sockets = std::mem::take(&mut reg.sockets);
            for (_, socket) in sockets {
                let task = socket.stop_accepting().await;
                reg.draining.push(task);
            }
            self.publish(&reg);
            std::mem::take(&mut reg.draining)
        };
        info!(sockets = tasks.len(), "draining connections");
        // Each loop bounds its own drain by the drain timeout.
        for task in tasks {
            if let Err(error) = task.await {
                warn!(%error, "accept loop failed");
            }
        }
        if tokio::time::timeout_at(deadline, shared.tunnels_closed()).await.is_err() {
            warn!("drain timeout: closing upgraded connections");
            shared.stop_tunnels();
        }
        info!("drained");
    }

    fn publish(&self, reg: &Registry) {
        let view = reg.sockets.iter().map(|(k, s)| (k.clone(), s.addr)).collect();
        self.bound.store(Arc::new(view));
    }
}

// === impl Socket ===

impl Socket {
    fn spawn(shared: Arc<Shared>, key: BindKey, listener: TcpListener, addr: SocketAddr) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        let span = debug_span!("listener", port = key.port, %addr);
        let task = tokio::spawn(accept_loop(shared, key, listener, stop_rx, closed_tx).instrument(span));
        Self { addr, stop, closed, task }
    }

    /// Stops the accept loop and waits until the socket is closed; the
    /// returned task finishes once its connections have drained.
    async fn stop_accepting(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        // An error means the loop is already gone, and the socket with it.
        let _ = self.closed.await;
        self.task
    }
}

/// Accepts until told to stop, then drains this socket's connections,
/// bounded by the drain timeout.
async fn accept_loop(
    shared: Arc<Shared>,
    key: BindKey,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
    closed: oneshot::Sender<()>,
) {
    let drain = Drain::default();
    let mut conns = JoinSet::new();
    let open = shared.metrics.downstream_connections.with_label_values(&[&key.port.to_string()]);
    let tls = match TlsSocket::new(shared.snapshot.clone(), key.clone(), &shared.metrics) {
        Ok(t) => Some(t),
        Err(error) => {
            warn!(%error, "TLS unavailable on this socket");
            None
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let mut ctx = ConnCtx::new(shared.clone(), key.clone(), peer);
                    let drain = drain.clone();
                    let span = debug_span!("conn", client = %peer);
                    let gauge = GaugeGuard::new(open.clone());
                    // Whether the socket speaks TLS follows the current table.
                    let is_tls = shared.snapshot.load().routes.bind(&key).is_some_and(sluice_model::Bind::is_tls);
                    let tls = if is_tls { tls.clone() } else { None };
                    conns.spawn(
                        async move {
                            if let Err(error) = stream.set_nodelay(true) {
                                debug!(%error, "set_nodelay failed");
                            }
                            match tls {
                                None if is_tls => {}
                                // The task's allocation is as large as its
                                // largest state: the paths that hold a hyper
                                // connection (or a TLS stream) inline are
                                // boxed, so that an idle plain connection costs
                                // only what `idle::serve` holds.
                                None => {
                                    let ctx = Arc::new(ctx);
                                    match idle::serve(ctx.clone(), stream, &drain, Fresh::Sniff).await {
                                        Handoff::Done => {}
                                        Handoff::H2(stream) => {
                                            Box::pin(serve_connection(ctx, stream, &drain, Proto::H2)).await;
                                        }
                                        Handoff::Sniff(stream) => {
                                            Box::pin(serve_connection(ctx, stream, &drain, Proto::Sniff)).await;
                                        }
                                    }
                                }
                                // TLS: the handshake, and then the connection,
                                // each in its own box, so that the task holds
                                // only what the current stage needs (an idle
                                // HTTP/1.1 connection: its TLS session).
                                Some(tls) => {
                                    if let Some(accepted) = Box::pin(tls.accept(stream)).await {
                                        ctx.sni = accepted.sni;
                                        let proto = Proto::from_alpn(accepted.stream.get_ref().1.alpn_protocol());
                                        let ctx = Arc::new(ctx);
                                        if proto == Proto::Http1 {
                                            // Parked when idle, as plain HTTP/1.1 is.
                                            let fresh = Fresh::Http1;
                                            match Box::pin(idle::serve(ctx.clone(), accepted.stream, &drain, fresh)).await
                                            {
                                                Handoff::Done => {}
                                                // Not returned for `Fresh::Http1` (no sniffing);
                                                // served as the auto builder would, all the same.
                                                Handoff::H2(s) | Handoff::Sniff(s) => {
                                                    Box::pin(serve_connection(ctx, s, &drain, Proto::Sniff)).await;
                                                }
                                            }
                                        } else {
                                            Box::pin(serve_connection(ctx, accepted.stream, &drain, proto)).await;
                                        }
                                    }
                                }
                            }
                            drop(gauge);
                        }
                        .instrument(span),
                    );
                }
                Err(error) if is_per_connection(&error) => debug!(%error, "accept failed"),
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closed.send(());

    debug!(open = conns.len(), "draining");
    drain.start();
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.config.drain_timeout, drained).await.is_err() {
        warn!(port = key.port, "drain timeout: closing remaining connections");
    }
    conns.shutdown().await;
}

/// Holds a gauge up for as long as it lives (drops count, aborts too).
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a connection's protocol is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// HTTP/1.1, or h2 with prior knowledge when the client starts with the
    /// h2 preface (TLS without ALPN; plain sockets whose first bytes were
    /// too few to tell).
    Sniff,
    /// TLS, ALPN `http/1.1`.
    Http1,
    /// TLS, ALPN `h2`; plain sockets that start with the h2 preface.
    H2,
}

impl Proto {
    fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Self::H2,
            Some(b"http/1.1") => Self::Http1,
            _ => Self::Sniff,
        }
    }
}

async fn serve_connection<I>(ctx: Arc<ConnCtx>, io: I, drain: &Drain, proto: Proto)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let shared = &ctx.shared;
    // HTTP/1.1 polls the request future in place. HTTP/2 spawns a task per
    // stream and moves the future into it and through its stages: boxed,
    // that is a pointer instead of a few KiB (fewer instructions per h2
    // request; for HTTP/1.1 the allocation costs more than it saves).
    let result = match proto {
        Proto::Sniff => {
            let svc = service_fn(move |req| serve_request(svc_ctx.clone(), req));
            let conn = shared.server.serve_connection_with_upgrades(TokioIo::new(io), svc);
            idle::watch(conn, drain, |c| c.graceful_shutdown()).await
        }
        Proto::Http1 => {
            let svc = service_fn(move |req| serve_request(svc_ctx.clone(), req));
            let conn = shared.http1.serve_connection_with_upgrades(TokioIo::new(io), svc);
            idle::watch(conn, drain, |c| c.graceful_shutdown()).await
        }
        Proto::H2 => {
            let svc = service_fn(move |req| Box::pin(serve_request(svc_ctx.clone(), req)));
            // Responses of streams that finish together leave in one write.
            let io = TokioIo::new(Coalesce::new(io));
            let conn = shared.http2.serve_connection_with_upgrades(io, svc);
            idle::watch(conn, drain, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection error");
    }
}

async fn serve_request(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<ObservedBody>, Infallible> {
    Ok(server::serve(&ctx, req).await)
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::Proto;

    #[test]
    fn alpn_picks_the_protocol_and_no_alpn_sniffs() {
        assert_eq!(Proto::from_alpn(Some(b"h2")), Proto::H2);
        assert_eq!(Proto::from_alpn(Some(b"http/1.1")), Proto::Http1);
        assert_eq!(Proto::from_alpn(None), Proto::Sniff);
        assert_eq!(Proto::from_alpn(Some(b"h3")), Proto::Sniff);
    }
}
