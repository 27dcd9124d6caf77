//! `sluice echo`: an HTTP/1.1 + h2c echo backend honouring the Gateway API conformance echo contract.
//!
//! The server answers every request with a pretty-printed JSON description of what it received
//! (`path`, `host`, `method`, `proto`, `headers`, plus the pod / namespace / service / ingress
//! identity and the bound port), exactly like the upstream `echo-basic` image used by the
//! Gateway API conformance suite. On top of that it supports:
//!
//! * `X-Echo-Set-Header: Name:value,Name2:value2` to add response headers,
//! * `?delay=<Go duration>` to sleep before answering,
//! * `/status/<code>` to answer with an arbitrary status code,
//! * `/health` (plain `OK`),
//! * `/ws` (and any `Upgrade: websocket` / HTTP/2 extended CONNECT request): a WebSocket echo.
//!
//! HTTP/1.x and HTTP/2 with prior knowledge (h2c) are served on the same port.
//!
//! With `--static-body` (for load tests) every request, whatever its path, is drained and answered
//! `200 text/plain` with the body `ok\n` and an `X-Pod: <pod>` header naming the backend; no JSON
//! is built, so the backend is cheap next to the proxy under test.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Largest request body the server drains before answering `413 Payload Too Large`.
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// How long in-flight connections get to finish once a shutdown signal arrived.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) to avoid a hot loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// GUID appended to `Sec-WebSocket-Key` to compute `Sec-WebSocket-Accept` (RFC 6455 §1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Chunk size used when streaming WebSocket data frame payloads back to the client.
const WS_CHUNK: usize = 16 * 1024;

/// Echo server arguments.
#[derive(clap::Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Pod name reported in the `pod` field (defaults to `$HOSTNAME`, then `echo`).
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,

    /// Namespace reported in the `namespace` field.
    #[arg(long, env = "NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Service name reported in the `service` field.
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    pub service: String,

    /// Ingress name reported in the `ingress` field.
    #[arg(long, env = "INGRESS_NAME", default_value = "")]
    pub ingress: String,

    /// Do not log a line per echoed request (for load tests).
    #[arg(long)]
    pub quiet: bool,

    /// Load-test mode: answer every request `200 text/plain` with the body `ok\n` and an
    /// `X-Pod: <pod>` header (the request body is still drained); no echo JSON is built.
    #[arg(long)]
    pub static_body: bool,

    /// Serve TLS (only) with this PEM certificate chain (needs `--tls-key`); ALPN h2 and http/1.1.
    /// The echo JSON then carries a `tls` object with the SNI and ALPN the client sent.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// What the TLS handshake of the connection said (a request extension).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EchoTls {
    server_name: Option<String>,
    negotiated_protocol: Option<String>,
}

/// Identity and settings shared by every connection.
#[derive(Debug)]
struct EchoState {
    pod: String,
    namespace: String,
    service: String,
    ingress: String,
    http_port: String,
    quiet: bool,
    /// `Some(X-Pod value)` in `--static-body` mode.
    static_pod: Option<HeaderValue>,
}

impl EchoState {
    fn new(args: EchoArgs, port: u16) -> Self {
        let pod = args
            .pod
            .filter(|p| !p.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "echo".to_owned());
        let static_pod =
            args.static_body.then(|| HeaderValue::from_str(&pod).unwrap_or_else(|_| HeaderValue::from_static("echo")));
        Self {
            pod,
            namespace: args.namespace,
            service: args.service,
            ingress: args.ingress,
            http_port: port.to_string(),
            quiet: args.quiet,
            static_pod,
        }
    }
}

/// Runs the echo server.
pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    // Install the signal handlers before announcing the address so that a SIGTERM sent right
    // after the `listening` line is always handled gracefully.
    let mut signals = ShutdownSignals::new().context("installing signal handlers")?;

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening addr={local}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let state = Arc::new(EchoState::new(args, local.port()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().title_case_headers(true);
    builder.http2().enable_connect_protocol().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

    loop {
        tokio::select! {
            () = signals.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Best effort: latency matters more than packet count for an echo server.
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&state);
                    let builder = Arc::clone(&builder);
                    let watcher = graceful.watcher();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => serve(stream, None, state, builder, watcher, remote).await,
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => {
                                    let (_, conn) = stream.get_ref();
                                    let info = EchoTls {
                                        server_name: conn.server_name().map(str::to_owned),
                                        negotiated_protocol: conn
                                            .alpn_protocol()
                                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                                    };
                                    serve(stream, Some(info), state, builder, watcher, remote).await;
                                }
                                Err(err) => tracing::debug!(%remote, error = %err, "echo TLS handshake failed"),
                            },
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "echo: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
    Ok(())
}

/// Serves one connection (plain or TLS).
async fn serve<S>(
    stream: S,
    tls: Option<EchoTls>,
    state: Arc<EchoState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let state = Arc::clone(&state);
        if let Some(info) = &tls {
            req.extensions_mut().insert(info.clone());
        }
        async move { Ok::<_, Infallible>(handle(req, state, remote).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %err, "echo connection error");
    }
}

/// A rustls acceptor (ring) for `--tls-cert` / `--tls-key`.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("reading --tls-cert {}: {e}", cert.display()))?;
    // Never echo key material: name the file only.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| anyhow::anyhow!("reading --tls-key {}: no PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert / --tls-key do not form a usable certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// SIGINT / SIGTERM listener, registered eagerly.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    #[cfg(unix)]
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Routes one request.
async fn handle(req: Request<Incoming>, state: Arc<EchoState>, remote: SocketAddr) -> Response<Full<Bytes>> {
    if let Some(pod) = &state.static_pod {
        return static_response(req, pod.clone()).await;
    }
    let route = routing_path(req.uri().path());
    if route == "/ws" || is_websocket_request(&req) {
        return websocket(req, remote);
    }
    if route == "/health" {
        let (_, body) = req.into_parts();
        if let Err(resp) = drain(body).await {
            return resp;
        }
        let mut resp = Response::new(Full::new(Bytes::from_static(b"OK")));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return resp;
    }
    if let Some(code) = route.strip_prefix("/status/") {
        let resp = status_response(code);
        let (_, body) = req.into_parts();
        if let Err(resp) = drain(body).await {
            return resp;
        }
        return resp;
    }
    echo(req, &state, remote).await
}

/// `--static-body`: drains the request body, then `200 text/plain` `ok\n` with `X-Pod`.
async fn static_response(req: Request<Incoming>, pod: HeaderValue) -> Response<Full<Bytes>> {
    let (_, body) = req.into_parts();
    if let Err(resp) = drain(body).await {
        return resp;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(HeaderName::from_static("x-pod"), pod);
    resp
}

/// The path used for routing: `//` collapsed to `/` (the echoed `path` is left untouched).
fn routing_path(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Consumes and discards the request body frame by frame, bounded by [`MAX_BODY_BYTES`].
async fn drain(mut body: Incoming) -> Result<(), Response<Full<Bytes>>> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > MAX_BODY_BYTES {
        return Err(json_message(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
    }
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total = total.saturating_add(data.len() as u64);
                    if total > MAX_BODY_BYTES {
                        return Err(json_message(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
                    }
                }
            }
            Err(err) => {
                return Err(json_message(StatusCode::BAD_REQUEST, &format!("reading request body: {err}")));
            }
        }
    }
    Ok(())
}

/// The JSON document returned for echoed requests (field order matches `echo-basic`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EchoResponse<'a> {
    path: &'a str,
    host: &'a str,
    method: &'a str,
    proto: &'static str,
    headers: BTreeMap<String, Vec<Cow<'a, str>>>,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    http_port: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a EchoTls>,
}

/// Echoes the request back as JSON.
async fn echo(req: Request<Incoming>, state: &EchoState, remote: SocketAddr) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let target = request_target(&parts);
    if !state.quiet {
        // Never panic on a closed stdout (unlike `println!`); the lock is released at once.
        let _ = writeln!(std::io::stdout().lock(), "Echoing back request made to {target} to client ({remote})");
    }
    if let Err(resp) = drain(body).await {
        return resp;
    }
    if let Some(delay) = query_param(parts.uri.query(), "delay") {
        match parse_go_duration(&delay) {
            Ok(d) => tokio::time::sleep(d).await,
            Err(err) => return json_message(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
        }
    }

    let host = request_host(&parts);
    let doc = EchoResponse {
        path: &target,
        host: &host,
        method: parts.method.as_str(),
        proto: proto(parts.version),
        headers: echo_headers(&parts.headers, parts.version),
        namespace: &state.namespace,
        ingress: &state.ingress,
        service: &state.service,
        pod: &state.pod,
        http_port: &state.http_port,
        tls: parts.extensions.get::<EchoTls>(),
    };
    let body = match to_pretty_json(&doc) {
        Ok(body) => body,
        Err(err) => {
            return json_message(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding response: {err}"));
        }
    };
    let mut resp = json_response(StatusCode::OK, body);
    for (name, value) in parse_echo_set_headers(
        parts.headers.get_all("x-echo-set-header").iter().map(|v| String::from_utf8_lossy(v.as_bytes())),
    ) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

/// Go's `r.RequestURI`: the request-target as received (`:path` for HTTP/2).
fn request_target(parts: &Parts) -> Cow<'_, str> {
    let uri = &parts.uri;
    if parts.version != Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        // absolute-form or authority-form request-target.
        return Cow::Owned(uri.to_string());
    }
    Cow::Borrowed(uri.path_and_query().map_or("/", |pq| pq.as_str()))
}

/// Go's `r.Host`: the authority from the request-target / `:authority`, else the `Host` header.
fn request_host(parts: &Parts) -> Cow<'_, str> {
    if let Some(authority) = parts.uri.authority() {
        return Cow::Borrowed(authority.as_str());
    }
    parts.headers.get(header::HOST).map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes()))
}

/// Go's `r.Proto`.
fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Go's `r.Header`: canonical names, values in order, without `Host` (promoted to `r.Host`) and
/// `Transfer-Encoding` (consumed by Go's HTTP/1 reader); HTTP/2 cookies are joined with `; `.
fn echo_headers(headers: &HeaderMap, version: Version) -> BTreeMap<String, Vec<Cow<'_, str>>> {
    let mut out: BTreeMap<String, Vec<Cow<'_, str>>> = BTreeMap::new();
    for name in headers.keys() {
        if name == header::HOST || name == header::TRANSFER_ENCODING {
            continue;
        }
        let mut values: Vec<Cow<'_, str>> =
            headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
        if version == Version::HTTP_2 && name == header::COOKIE && values.len() > 1 {
            values = vec![Cow::Owned(values.join("; "))];
        }
        out.entry(canonical_header_name(name.as_str())).or_default().extend(values);
    }
    out
}

/// Whether `b` is a valid HTTP token byte (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `x-forwarded-for` → `X-Forwarded-For`.
///
/// Names containing non-token bytes are returned unchanged, as Go does.
pub(crate) fn canonical_header_name(name: &str) -> String {
    if !name.bytes().all(is_token_byte) {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        let c = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
        out.push(c);
        upper = c == '-';
    }
    out
}

/// Parses `X-Echo-Set-Header` values (`Name:value,Name2:value2`) like `echo-basic`.
///
/// Entries are trimmed; invalid header names are skipped; a name seen again (case-insensitively)
/// has its value appended to the first one with `,`.
fn parse_echo_set_headers<I, S>(values: I) -> Vec<(HeaderName, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<(HeaderName, String)> = Vec::new();
    for list in values {
        for entry in list.as_ref().split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (name, value) = entry.split_once(':').unwrap_or((entry, ""));
            let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
                continue;
            };
            let value = value.trim();
            if let Some((_, existing)) = out.iter_mut().find(|(n, _)| *n == name) {
                existing.push(',');
                existing.push_str(value);
            } else {
                out.push((name, value.to_owned()));
            }
        }
    }
    out
}

/// `/status/<code>`: answers with that status (200..=999), or 400 for anything else.
fn status_response(code: &str) -> Response<Full<Bytes>> {
    match code.parse::<u16>().ok().filter(|c| (200..=999).contains(c)) {
        Some(c) => match StatusCode::from_u16(c) {
            Ok(status) => json_message(status, &format!("returning status code {c}")),
            Err(_) => json_message(StatusCode::BAD_REQUEST, &format!("invalid status code {code:?}")),
        },
        None => json_message(StatusCode::BAD_REQUEST, &format!("invalid status code {code:?}")),
    }
}

/// Serializes `value` like Go's `json.MarshalIndent(v, "", " ")`.
fn to_pretty_json<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    value.serialize(&mut ser)?;
    Ok(buf)
}

/// A response with `Content-Type: application/json` and `X-Content-Type-Options: nosniff`.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// `{"message": ...}` with the given status.
fn json_message(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Message<'a> {
        message: &'a str,
    }
    let body = to_pretty_json(&Message { message }).unwrap_or_else(|_| b"{\"message\": \"error\"}".to_vec());
    json_response(status, body)
}

/// Parses a query string like Go's `url.ParseQuery` and returns the first value of `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    for pair in query?.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key.contains(';') {
            continue;
        }
        let Some(key) = query_unescape(key) else {
            continue;
        };
        if key != name {
            continue;
        }
        if let Some(value) = query_unescape(value) {
            return Some(value);
        }
    }
    None
}

/// Decodes `+` and `%XX` escapes; `None` on a malformed escape.
fn query_unescape(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Error returned by [`parse_go_duration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a Go `time.ParseDuration` string (`300ms`, `1.5h`, `1m30s`, `-2s`, `0`).
///
/// Units: `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`. Negative durations are accepted and clamp to
/// zero (Go's `time.Sleep` returns immediately for them). Values beyond Go's `int64` nanosecond
/// range are rejected.
pub(crate) fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError(format!("time: invalid duration {input:?}"));
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    // Go's limit: |d| <= 1<<63 (only reachable when negative), else <= 1<<63 - 1.
    let limit: u128 = if negative { 1 << 63 } else { (1 << 63) - 1 };
    let mut total: u128 = 0;
    while !s.is_empty() {
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, rest) = s.split_at(int_len);
        s = rest;
        let mut int_value: u128 = 0;
        for d in int_digits.bytes() {
            int_value = int_value * 10 + u128::from(d - b'0');
            if int_value > limit {
                return Err(invalid());
            }
        }
        // Fraction part.
        let mut frac_value: u128 = 0;
        let mut frac_scale: u128 = 1;
        let mut frac_len = 0;
        if let Some(rest) = s.strip_prefix('.') {
            frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (frac_digits, rest) = rest.split_at(frac_len);
            s = rest;
            for d in frac_digits.bytes() {
                // Further digits are below 1e-20 of the unit: ignore them (Go does similarly).
                if frac_scale >= 10u128.pow(20) {
                    break;
                }
                frac_value = frac_value * 10 + u128::from(d - b'0');
                frac_scale *= 10;
            }
        }
        if int_len == 0 && frac_len == 0 {
            // No digits at all (e.g. ".s" or "s").
            return Err(invalid());
        }
        // Unit.
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => {
                return Err(DurationError(format!("time: missing unit in duration {input:?}")));
            }
            other => {
                return Err(DurationError(format!("time: unknown unit {other:?} in duration {input:?}")));
            }
        };
        total += int_value * unit_nanos + frac_value * unit_nanos / frac_scale;
        if total > limit {
            return Err(invalid());
        }
    }
    if negative {
        return Ok(Duration::ZERO);
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| invalid())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| invalid())?;
    Ok(Duration::new(secs, nanos))
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// Whether the request asks for a WebSocket (HTTP/1.1 `Upgrade` or RFC 8441 extended CONNECT).
fn is_websocket_request<B>(req: &Request<B>) -> bool {
    if req.method() == Method::CONNECT {
        return req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Whether a comma-separated header contains `token` (case-insensitively).
fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub(crate) fn websocket_accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Performs the WebSocket handshake and spawns the echo loop on the upgraded connection.
fn websocket(mut req: Request<Incoming>, remote: SocketAddr) -> Response<Full<Bytes>> {
    let extended_connect = req.method() == Method::CONNECT && is_websocket_request(&req);
    let version_ok = req.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() == b"13");

    let mut resp = Response::new(Full::new(Bytes::new()));
    if extended_connect {
        // RFC 8441: HTTP/2 CONNECT with `:protocol websocket`; a 200 opens the tunnel.
        if !version_ok {
            return version_mismatch();
        }
    } else {
        if req.method() != Method::GET
            || !header_has_token(req.headers(), &header::CONNECTION, "upgrade")
            || !header_has_token(req.headers(), &header::UPGRADE, "websocket")
        {
            return json_message(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade request");
        }
        if !version_ok || !req.headers().contains_key(header::SEC_WEBSOCKET_VERSION) {
            return version_mismatch();
        }
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|k| k.to_str().ok())
            .map(str::trim)
            .filter(|k| base64::engine::general_purpose::STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16));
        let Some(key) = key else {
            return json_message(StatusCode::BAD_REQUEST, "missing or invalid Sec-WebSocket-Key");
        };
        let Ok(accept) = HeaderValue::from_str(&websocket_accept(key)) else {
            return json_message(StatusCode::INTERNAL_SERVER_ERROR, "computing accept key");
        };
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if let Err(err) = ws_echo(TokioIo::new(upgraded)).await {
                    tracing::debug!(%remote, error = %err, "websocket echo ended with an error");
                }
            }
            Err(err) => tracing::debug!(%remote, error = %err, "websocket upgrade failed"),
        }
    });
    resp
}

/// `426 Upgrade Required` advertising the only supported WebSocket version.
fn version_mismatch() -> Response<Full<Bytes>> {
    let mut resp = json_message(StatusCode::UPGRADE_REQUIRED, "unsupported Sec-WebSocket-Version (want 13)");
    resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    resp
}

/// WebSocket opcodes (RFC 6455 §5.2).
mod opcode {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PING: u8 = 0x9;
    pub(super) const PONG: u8 = 0xA;
}

/// Close status: protocol error.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Largest WebSocket frame header: 2 + 8 (length) + 4 (mask).
const MAX_FRAME_HEADER: usize = 14;

/// A decoded WebSocket frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// FIN bit.
    pub(crate) fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub(crate) opcode: u8,
    /// Masking key, when the MASK bit is set.
    pub(crate) mask: Option<[u8; 4]>,
    /// Payload length.
    pub(crate) len: u64,
}

/// Outcome of [`decode_frame_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// At least this many bytes (in total) are needed.
    NeedMore(usize),
    /// A complete header and its encoded length.
    Header(FrameHeader, usize),
}

/// Decodes a frame header from the start of `buf`, validating it (RFC 6455 §5.2, §5.5).
///
/// Errors carry the close status to send (always protocol error).
pub(crate) fn decode_frame_header(buf: &[u8]) -> Result<Decoded, u16> {
    let [b0, b1, ..] = *buf else {
        return Ok(Decoded::NeedMore(2));
    };
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    let op = b0 & 0x0F;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    if rsv != 0 {
        return Err(CLOSE_PROTOCOL_ERROR);
    }
    match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || len7 > 125 {
                return Err(CLOSE_PROTOCOL_ERROR);
            }
        }
        _ => return Err(CLOSE_PROTOCOL_ERROR),
    }
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let total = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    let len = match ext {
        2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        8 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(CLOSE_PROTOCOL_ERROR);
            }
            len
        }
        _ => u64::from(len7),
    };
    let mask = masked.then(|| {
        let at = 2 + ext;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    Ok(Decoded::Header(FrameHeader { fin, opcode: op, mask, len }, total))
}

/// Appends an encoded frame header to `out`, using the shortest length encoding.
pub(crate) fn encode_frame_header(out: &mut Vec<u8>, fin: bool, op: u8, len: u64, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | (op & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        // Lossless: len < 126.
        out.push(mask_bit | (len as u8));
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Encodes a whole frame (masking the payload when `mask` is given).
pub(crate) fn encode_frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_FRAME_HEADER + payload.len());
    encode_frame_header(&mut out, fin, op, payload.len() as u64, mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// XORs `data` with the masking key; `offset` is the position of `data[0]` in the payload.
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(i + shift) % 4];
    }
}

/// A close frame carrying `code`.
fn close_frame(code: u16) -> Vec<u8> {
    encode_frame(true, opcode::CLOSE, &code.to_be_bytes(), None)
}

/// Sends a close frame and shuts the write side down.
async fn ws_close<S: AsyncWrite + Unpin>(io: &mut S, frame: &[u8]) -> std::io::Result<()> {
    io.write_all(frame).await?;
    io.flush().await?;
    io.shutdown().await
}

/// Echoes WebSocket frames until the peer closes: data frames are sent back as-is (unmasked,
/// same FIN/opcode, payload streamed in chunks), pings are answered with pongs, pongs ignored,
/// a close is answered with a close carrying the same status code.
async fn ws_echo<S>(io: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = tokio::io::BufReader::with_capacity(WS_CHUNK, io);
    let mut head = [0u8; MAX_FRAME_HEADER];
    let mut out: Vec<u8> = Vec::with_capacity(MAX_FRAME_HEADER + WS_CHUNK);
    let mut chunk = vec![0u8; WS_CHUNK];
    // Whether a fragmented data message is in progress.
    let mut in_message = false;

    loop {
        match io.read_exact(&mut head[..2]).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        }
        let mut have = 2;
        let frame = loop {
            match decode_frame_header(&head[..have]) {
                Ok(Decoded::Header(frame, _)) => break frame,
                Ok(Decoded::NeedMore(n)) => {
                    let n = n.min(MAX_FRAME_HEADER);
                    io.read_exact(&mut head[have..n]).await?;
                    have = n;
                }
                Err(code) => return ws_close(&mut io, &close_frame(code)).await,
            }
        };
        // Clients must mask every frame (RFC 6455 §5.1).
        let Some(key) = frame.mask else {
            return ws_close(&mut io, &close_frame(CLOSE_PROTOCOL_ERROR)).await;
        };

        match frame.opcode {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                let continuation = frame.opcode == opcode::CONTINUATION;
                if continuation != in_message {
                    return ws_close(&mut io, &close_frame(CLOSE_PROTOCOL_ERROR)).await;
                }
                in_message = !frame.fin;
                out.clear();
                encode_frame_header(&mut out, frame.fin, frame.opcode, frame.len, None);
                let mut offset: u64 = 0;
                loop {
                    let n = usize::try_from(frame.len - offset).unwrap_or(WS_CHUNK).min(WS_CHUNK);
                    if n > 0 {
                        io.read_exact(&mut chunk[..n]).await?;
                        apply_mask(&mut chunk[..n], key, offset);
                        out.extend_from_slice(&chunk[..n]);
                        offset += n as u64;
                    }
                    io.write_all(&out).await?;
                    out.clear();
                    if offset >= frame.len {
                        break;
                    }
                }
                io.flush().await?;
            }
            opcode::PING | opcode::PONG | opcode::CLOSE => {
                // Control frames are at most 125 bytes (checked by the decoder).
                let n = usize::try_from(frame.len).unwrap_or(0).min(125);
                let payload = &mut chunk[..n];
                io.read_exact(payload).await?;
                apply_mask(payload, key, 0);
                match frame.opcode {
                    opcode::PING => {
                        io.write_all(&encode_frame(true, opcode::PONG, payload, None)).await?;
                        io.flush().await?;
                    }
                    opcode::CLOSE => {
                        let reply = match payload.len() {
                            0 => encode_frame(true, opcode::CLOSE, &[], None),
                            1 => close_frame(CLOSE_PROTOCOL_ERROR),
                            _ => encode_frame(true, opcode::CLOSE, &payload[..2], None),
                        };
                        return ws_close(&mut io, &reply).await;
                    }
                    _ => {} // Unsolicited pong: ignore.
                }
            }
            _ => return ws_close(&mut io, &close_frame(CLOSE_PROTOCOL_ERROR)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_duration_simple_units() {
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_go_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_go_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_go_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_go_duration("7us"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_go_duration("7µs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_go_duration("7μs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_go_duration("+5s"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn go_duration_fractions_and_composites() {
        assert_eq!(parse_go_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_go_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_go_duration("5.s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h2m3s4ms5us6ns"), Ok(Duration::new(3723, 4_005_006)));
        assert_eq!(parse_go_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_go_duration("1.0000000000000000000001s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("0s"), Ok(Duration::ZERO));
        // Negative durations clamp to zero.
        assert_eq!(parse_go_duration("-1s"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("-0"), Ok(Duration::ZERO));
        // Go's maximum, 1<<63 - 1 ns.
        assert_eq!(parse_go_duration("9223372036854775807ns"), Ok(Duration::from_nanos(9_223_372_036_854_775_807)));
        assert_eq!(parse_go_duration("-9223372036854775808ns"), Ok(Duration::ZERO));
    }

    #[test]
    fn go_duration_errors() {
        for bad in [
            "",
            "-",
            "+",
            "s",
            ".s",
            ".",
            "1",
            "10",
            "1.5",
            "1x",
            "1sec",
            "1s2",
            "1 s",
            " 1s",
            "1s ",
            "--1s",
            "1e3s",
            "9223372036854775808ns",
            "2562048h",
            "1..5s",
            "abc",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_go_duration("10").map_err(|e| e.to_string()),
            Err("time: missing unit in duration \"10\"".to_owned())
        );
        assert_eq!(
            parse_go_duration("1x").map_err(|e| e.to_string()),
            Err("time: unknown unit \"x\" in duration \"1x\"".to_owned())
        );
    }

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical_header_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header_name("user-agent"), "User-Agent");
        assert_eq!(canonical_header_name("content-length"), "Content-Length");
        assert_eq!(canonical_header_name("ACCEPT"), "Accept");
        assert_eq!(canonical_header_name("x-b3-traceid"), "X-B3-Traceid");
        assert_eq!(canonical_header_name("www-authenticate"), "Www-Authenticate");
        assert_eq!(canonical_header_name("a--b"), "A--B");
        assert_eq!(canonical_header_name("x_y"), "X_y");
        assert_eq!(canonical_header_name("1abc-def"), "1abc-Def");
        // Non-token names are left alone, like Go.
        assert_eq!(canonical_header_name("bad name"), "bad name");
        assert_eq!(canonical_header_name("x-é"), "x-é");
    }

    #[test]
    fn echo_headers_skip_host_and_keep_order() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let h1 = echo_headers(&headers, Version::HTTP_11);
        assert!(!h1.contains_key("Host"));
        assert_eq!(h1["X-Multi"], vec!["b", "a"]);
        assert_eq!(h1["Cookie"], vec!["a=1", "b=2"]);
        let h2 = echo_headers(&headers, Version::HTTP_2);
        assert_eq!(h2["Cookie"], vec!["a=1; b=2"]);
    }

    #[test]
    fn echo_set_header_parsing() {
        let parsed = parse_echo_set_headers(["X-Foo:bar, X-Multi: 1 ,x-multi:2", "Empty:,Bad Name:x,,"]);
        let as_strings: Vec<(String, String)> = parsed.into_iter().map(|(n, v)| (n.as_str().to_owned(), v)).collect();
        assert_eq!(
            as_strings,
            vec![
                ("x-foo".to_owned(), "bar".to_owned()),
                ("x-multi".to_owned(), "1,2".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert!(parse_echo_set_headers(Vec::<String>::new()).is_empty());
        // Values may contain ':' (only the first one separates).
        let parsed = parse_echo_set_headers(["Location:http://a/b"]);
        assert_eq!(parsed[0].1, "http://a/b");
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("delay=1s"), "delay"), Some("1s".to_owned()));
        assert_eq!(query_param(Some("a=1&delay=2s&delay=3s"), "delay"), Some("2s".to_owned()));
        assert_eq!(query_param(Some("de%6Cay=1%2E5s"), "delay"), Some("1.5s".to_owned()));
        assert_eq!(query_param(Some("delay=%zz&delay=4s"), "delay"), Some("4s".to_owned()));
        assert_eq!(query_param(Some("delay"), "delay"), Some(String::new()));
        assert_eq!(query_param(Some("x=1"), "delay"), None);
        assert_eq!(query_param(None, "delay"), None);
        assert_eq!(query_unescape("a+b%20c"), Some("a b c".to_owned()));
        assert_eq!(query_unescape("%"), None);
    }

    #[test]
    fn routing_paths() {
        assert_eq!(routing_path("/status/404"), "/status/404");
        assert_eq!(routing_path("//status//404"), "/status/404");
        assert_eq!(routing_path("/a///b"), "/a/b");
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_response("503").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_response("200").status(), StatusCode::OK);
        assert_eq!(status_response("999").status().as_u16(), 999);
        for bad in ["", "abc", "0", "99", "101", "1000", "70000", "-1", "5 03"] {
            assert_eq!(status_response(bad).status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let resp = status_response("418");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn websocket_accept_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frame_roundtrip_lengths_and_masking() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some(key)] {
                let encoded = encode_frame(true, opcode::BINARY, &payload, mask);
                let Ok(Decoded::Header(h, hlen)) = decode_frame_header(&encoded) else {
                    panic!("decode failed for len {len}");
                };
                assert_eq!(h.len, len as u64);
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.opcode, opcode::BINARY);
                let expected_hlen =
                    2 + match len {
                        0..=125 => 0,
                        126..=65_535 => 2,
                        _ => 8,
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(hlen, expected_hlen);
                let mut body = encoded[hlen..].to_vec();
                if let Some(k) = h.mask {
                    // Unmask in two uneven pieces to exercise the offset.
                    let split = body.len() / 3;
                    let (a, b) = body.split_at_mut(split);
                    apply_mask(a, k, 0);
                    apply_mask(b, k, split as u64);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn frame_rfc_examples() {
        // RFC 6455 §5.7: single-frame unmasked text "Hello".
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(encode_frame(true, opcode::TEXT, b"Hello", None), unmasked);
        // Single-frame masked text "Hello".
        let masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(encode_frame(true, opcode::TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])), masked);
        // Fragmented unmasked text: "Hel" then "lo".
        let first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let Ok(Decoded::Header(h, 2)) = decode_frame_header(&first) else {
            panic!("decode failed");
        };
        assert!(!h.fin);
        assert_eq!(h.opcode, opcode::TEXT);
        let second = [0x80, 0x02, 0x6c, 0x6f];
        let Ok(Decoded::Header(h, 2)) = decode_frame_header(&second) else {
            panic!("decode failed");
        };
        assert!(h.fin);
        assert_eq!(h.opcode, opcode::CONTINUATION);
        // 256-byte binary uses the 16-bit length.
        assert_eq!(&encode_frame(true, opcode::BINARY, &[0; 256], None)[..4], &[0x82, 0x7E, 0x01, 0x00]);
        // 64 KiB binary uses the 64-bit length.
        assert_eq!(
            &encode_frame(true, opcode::BINARY, &[0; 65_536], None)[..10],
            &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn frame_decoder_partial_and_invalid() {
        assert_eq!(decode_frame_header(&[]), Ok(Decoded::NeedMore(2)));
        assert_eq!(decode_frame_header(&[0x81]), Ok(Decoded::NeedMore(2)));
        assert_eq!(decode_frame_header(&[0x81, 0x85]), Ok(Decoded::NeedMore(6)));
        assert_eq!(decode_frame_header(&[0x82, 0xFE, 0x01]), Ok(Decoded::NeedMore(8)));
        assert_eq!(decode_frame_header(&[0x82, 0xFF]), Ok(Decoded::NeedMore(14)));
        // RSV bits without extensions.
        assert_eq!(decode_frame_header(&[0xC1, 0x00]), Err(CLOSE_PROTOCOL_ERROR));
        // Reserved opcodes.
        assert_eq!(decode_frame_header(&[0x83, 0x00]), Err(CLOSE_PROTOCOL_ERROR));
        assert_eq!(decode_frame_header(&[0x8B, 0x00]), Err(CLOSE_PROTOCOL_ERROR));
        // Fragmented control frame.
        assert_eq!(decode_frame_header(&[0x09, 0x00]), Err(CLOSE_PROTOCOL_ERROR));
        // Control frame longer than 125 bytes.
        assert_eq!(decode_frame_header(&[0x89, 0x7E, 0, 126]), Err(CLOSE_PROTOCOL_ERROR));
        // 64-bit length with the top bit set.
        assert_eq!(decode_frame_header(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(CLOSE_PROTOCOL_ERROR));
        // Ping / pong / close headers.
        for op in [opcode::PING, opcode::PONG, opcode::CLOSE] {
            let f = encode_frame(true, op, b"ab", Some([1, 2, 3, 4]));
            let Ok(Decoded::Header(h, 6)) = decode_frame_header(&f) else {
                panic!("decode failed");
            };
            assert_eq!(h.opcode, op);
            assert_eq!(h.len, 2);
        }
    }

    /// Drives [`ws_echo`] over an in-memory duplex pipe.
    #[tokio::test]
    async fn ws_echo_loop() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(ws_echo(server));
        let key = Some([9, 8, 7, 6]);

        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut sent = Vec::new();
        sent.extend(encode_frame(true, opcode::TEXT, b"hello", key));
        sent.extend(encode_frame(false, opcode::BINARY, b"part1", key));
        sent.extend(encode_frame(true, opcode::PING, b"pp", key));
        sent.extend(encode_frame(true, opcode::CONTINUATION, &big, key));
        sent.extend(encode_frame(true, opcode::PONG, b"ignored", key));
        sent.extend(encode_frame(true, opcode::CLOSE, &1000u16.to_be_bytes(), key));
        client.write_all(&sent).await.expect("write");

        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        let mut expected = Vec::new();
        expected.extend(encode_frame(true, opcode::TEXT, b"hello", None));
        expected.extend(encode_frame(false, opcode::BINARY, b"part1", None));
        expected.extend(encode_frame(true, opcode::PONG, b"pp", None));
        expected.extend(encode_frame(true, opcode::CONTINUATION, &big, None));
        expected.extend(encode_frame(true, opcode::CLOSE, &1000u16.to_be_bytes(), None));
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "echoed frames differ");
        task.await.expect("join").expect("ws_echo");
    }

    #[tokio::test]
    async fn ws_echo_rejects_unmasked_and_bad_sequences() {
        for input in [
            encode_frame(true, opcode::TEXT, b"x", None),
            encode_frame(true, opcode::CONTINUATION, b"x", Some([1, 1, 1, 1])),
            vec![0xC1, 0x80, 0, 0, 0, 0],
        ] {
            let (mut client, server) = tokio::io::duplex(4096);
            let task = tokio::spawn(ws_echo(server));
            client.write_all(&input).await.expect("write");
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.expect("read");
            assert_eq!(received, close_frame(CLOSE_PROTOCOL_ERROR));
            task.await.expect("join").expect("ws_echo");
        }
        // A clean EOF ends the loop without error.
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        ws_echo(server).await.expect("eof");
    }
}
