//! TLS termination for sockets with HTTPS listeners (rustls, ring provider).
//!
//! One `ServerConfig` per socket, built once when the socket is bound. Its
//! certificate resolver reads the current [`Snapshot`] on every handshake
//! (one `ArcSwap::load`, one SNI lookup in certificates the controller
//! already parsed and checked), so a new table — e.g. a rotated Secret —
//! applies to the next handshake while established connections keep the
//! certificate they negotiated. TLS 1.3 and 1.2, ALPN `h2` then
//! `http/1.1`, session resumption with stateless tickets (TLS 1.3 and 1.2,
//! keys rotated by rustls; one TLS 1.3 ticket per handshake, see
//! [`TLS13_TICKETS`]) and a bounded server-side session cache.
//!
//! A handshake that fails (garbage instead of a ClientHello, no matching
//! certificate, timeout) closes that connection only; it is counted in
//! `sluice_tls_handshakes_total{result}` (`ok`, `resumed`, `no_certificate`,
//! `error`: a TLS protocol failure, `closed`: the client went away,
//! `timeout`) and logged at debug without any key material.

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use sluice_model::host::normalize_host;
use sluice_model::{BindKey, Snapshot};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;

/// Longest a client may take to complete its handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions kept for ID-based (TLS 1.2) and stateful resumption; the
/// oldest are evicted beyond this.
pub(crate) const SESSION_CACHE_SIZE: usize = 8192;

/// TLS 1.3 session tickets sent after a full handshake (rustls' default is
/// 2, OpenSSL's too; Go sends 1). Each costs the server a key derivation,
/// an encryption and three `getrandom` calls (about 2 µs each on a VM),
/// and is wasted on the many clients that never resume; our tickets are
/// stateless, so one ticket serves a client that reuses tickets for
/// several connections.
pub(crate) const TLS13_TICKETS: usize = 1;
/// A client that asks for more tickets (RFC 9149 `ticket_request`, e.g. to
/// resume several parallel connections with single-use tickets) gets up to
/// this many.
pub(crate) const TLS13_TICKETS_ON_REQUEST: usize = 2;

/// ALPN protocols offered, in server preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS state of one listening socket.
#[derive(Clone)]
pub(crate) struct TlsSocket {
    acceptor: TlsAcceptor,
    counters: Arc<Counters>,
}

struct Counters {
    ok: IntCounter,
    resumed: IntCounter,
    no_certificate: IntCounter,
    error: IntCounter,
    closed: IntCounter,
    timeout: IntCounter,
}

/// Chooses the certificate for a ClientHello from the current snapshot.
struct SniResolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
    key: BindKey,
}

/// A completed handshake.
pub(crate) struct Accepted {
    pub(crate) stream: TlsStream<TcpStream>,
    /// The SNI the client sent, lowercase.
    pub(crate) sni: Option<Box<str>>,
}

// === impl TlsSocket ===

impl TlsSocket {
    /// The TLS config of socket `key`. Cheap enough to build for every
    /// socket, TLS or not; it is used only when the socket has HTTPS
    /// listeners.
    pub(crate) fn new(snapshot: Arc<ArcSwap<Snapshot>>, key: BindKey, metrics: &Metrics) -> io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { snapshot, key }));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        if let Some(t) = ticketer() {
            config.ticketer = t;
        }
        config.send_tls13_tickets = TLS13_TICKETS;
        config.max_tls13_tickets = TLS13_TICKETS_ON_REQUEST;
        let c = |result: &str| metrics.tls_handshakes.with_label_values(&[result]);
        let counters = Counters {
            ok: c("ok"),
            resumed: c("resumed"),
            no_certificate: c("no_certificate"),
            error: c("error"),
            closed: c("closed"),
            timeout: c("timeout"),
        };
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), counters: Arc::new(counters) })
    }

    /// Runs the server handshake; `None` when it failed (the connection is
    /// dropped, nothing else is affected).
    pub(crate) async fn accept(&self, stream: TcpStream) -> Option<Accepted> {
        let c = &self.counters;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Err(_) => {
                c.timeout.inc();
                tracing::debug!("TLS handshake timed out");
                None
            }
            Ok(Err(error)) => {
                // A TLS-level failure carries a rustls error; anything else
                // is the socket (the client went away, e.g. right after its
                // Finished, before our session tickets were sent).
                match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::General(m)) if m.contains("no server certificate") => c.no_certificate.inc(),
                    Some(_) => c.error.inc(),
                    None => c.closed.inc(),
                }
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
            Ok(Ok(stream)) => {
                let conn = stream.get_ref().1;
                if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    c.resumed.inc();
                } else {
                    c.ok.inc();
                }
                let sni = conn.server_name().map(|s| Box::from(normalize_host(s).as_ref()));
                Some(Accepted { stream, sni })
            }
        }
    }
}

/// One ticket encrypter for the process: a resumed session works on any
/// socket. `None` (tickets off, cache only) if the RNG failed.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => Some(t),
            Err(error) => {
                tracing::warn!(%error, "TLS session tickets disabled");
                None
            }
        })
        .clone()
}

// === impl SniResolver ===

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.snapshot.load();
        let bind = snapshot.routes.bind(&self.key)?;
        let sni = hello.server_name().map(normalize_host);
        bind.certificates().resolve(sni.as_deref(), hello.signature_schemes()).cloned()
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the certificates (or keys) themselves.
        f.debug_struct("SniResolver").field("key", &self.key).finish_non_exhaustive()
    }
}
