//! In-process tests of the proxy: real sockets on 127.0.0.1, tiny hyper
//! upstreams that echo what they received, hyper (and raw TCP) clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_model::{
    BackendGroup, BackendId, BackendTarget, BindKey, Conditions, EndpointSet, Endpoints, Filter, HeaderModifier,
    HostPattern, ListenerInput, MatchInput, PathMatch, PathModifier, Precedence, Protocol, Redirect, Rewrite,
    RouteInput, RouteRef, RouteTable, Rule, RuleInput, ServiceRef, Snapshot, TableInput, WeightedBackend,
};
use sluice_proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

const LISTENER_PORT: u16 = 8080;

// === upstreams ===

/// Starts an HTTP/1.1 upstream named `name`. It answers with `x-upstream`,
/// `x-echo-uri`, `x-echo-version` and `x-body-bytes` headers and a body of
/// `name: value` lines, one per request header. `/slow` waits 400 ms first,
/// `/stall` 3 s.
async fn upstream(name: &'static str) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| echo(name, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

async fn echo(name: &'static str, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    let delay = match req.uri().path() {
        "/slow" => 400,
        "/stall" => 3000,
        _ => 0,
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let (parts, mut body) = req.into_parts();
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len();
        }
    }
    let mut text = String::new();
    for (k, v) in &parts.headers {
        text.push_str(&format!("{k}: {}\n", v.to_str()?));
    }
    let resp = Response::builder()
        .header("x-upstream", name)
        .header("x-echo-uri", parts.uri.to_string())
        .header("x-echo-version", format!("{:?}", parts.version))
        .header("x-body-bytes", bytes.to_string())
        .header("x-upstream-secret", "s3cret")
        .header("connection", "x-up-hop")
        .header("x-up-hop", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(text)))?;
    Ok(resp)
}

/// A raw upstream that accepts one upgrade: it reports the request head,
/// answers 101 and echoes every byte back.
async fn upgrade_upstream() -> Result<(SocketAddr, tokio::sync::oneshot::Receiver<String>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let Ok(head) = read_head(&mut stream).await else { return };
        let _ = tx.send(head);
        let reply = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    Ok((addr, rx))
}

/// Reads an HTTP head (up to and including the blank line), byte by byte so
/// nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> Result<String, BoxError> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err("eof in head".into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8(head)?)
}

/// An address where nothing listens.
async fn closed_port() -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

// === routing tables ===

fn key() -> BindKey {
    BindKey { gateway: None, port: LISTENER_PORT }
}

#[derive(Default)]
struct Fixture {
    input: TableInput,
    endpoints: Vec<Arc<EndpointSet>>,
}

#[derive(Default)]
struct RuleSpec {
    filters: Vec<Filter>,
    backends: Vec<WeightedBackend>,
    backend_timeout: Option<Duration>,
}

impl Fixture {
    fn new() -> Self {
        let mut f = Self::default();
        f.input.listeners.push(ListenerInput {
            bind: key(),
            name: "ns/gw/http".into(),
            hostname: HostPattern::Any,
            port: LISTENER_PORT,
            protocol: Protocol::Http,
            precedence: Precedence::GatewayApi,
            order: 0,
        });
        f
    }

    /// A Service with these ready endpoints.
    fn service(&mut self, addrs: Vec<SocketAddr>) -> BackendId {
        let id = BackendId(u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX));
        self.input.services.push(ServiceRef { namespace: "ns".into(), name: format!("svc{}", id.0), port: 80 });
        self.endpoints.push(Arc::new(EndpointSet::new(addrs)));
        id
    }

    /// A route for `host` ("" for any) and `path` with one rule.
    fn route(&mut self, host: &str, path: PathMatch, spec: RuleSpec) {
        let name = format!("route{}", self.input.routes.len());
        let route = Arc::new(RouteRef::new("HTTPRoute", "ns".into(), name));
        let rule = Arc::new(Rule {
            route: route.clone(),
            index: 0,
            filters: spec.filters.into(),
            backends: BackendGroup::new(spec.backends),
            request_timeout: None,
            backend_timeout: spec.backend_timeout,
        });
        let hostnames = if host.is_empty() { vec![] } else { vec![HostPattern::gateway(Some(host))] };
        let created = i64::try_from(self.input.routes.len()).unwrap_or(0);
        self.input.routes.push(RouteInput {
            listener: 0,
            route,
            created,
            hostnames,
            rules: vec![RuleInput { rule, matches: vec![MatchInput { path, conditions: Conditions::default() }] }],
            fallback: false,
        });
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            routes: Arc::new(RouteTable::compile(self.input.clone(), 1)),
            endpoints: Arc::new(Endpoints::new(self.endpoints.clone())),
        }
    }
}

fn to(id: BackendId) -> WeightedBackend {
    WeightedBackend { target: BackendTarget::Service(id), weight: 1, filters: Arc::new([]) }
}

fn backends(id: BackendId) -> RuleSpec {
    RuleSpec { backends: vec![to(id)], ..RuleSpec::default() }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::prefix(p)
}

fn hname(s: &'static str) -> HeaderName {
    HeaderName::from_static(s)
}

fn hval(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

// === proxy and clients ===

struct Running {
    proxy: Proxy,
    snapshot: Arc<ArcSwap<Snapshot>>,
    addr: SocketAddr,
}

async fn start(fixture: &Fixture) -> Result<Running, BoxError> {
    start_with(fixture, ProxyConfig::default()).await
}

async fn start_with(fixture: &Fixture, config: ProxyConfig) -> Result<Running, BoxError> {
    let snapshot = Arc::new(ArcSwap::from_pointee(fixture.snapshot()));
    let proxy = Proxy::new(config, snapshot.clone());
    let keys: Vec<BindKey> = snapshot.load().routes.bind_keys().cloned().collect();
    let mut bound = proxy.reconcile(&keys, &|_| SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let (_, addr) = bound.pop().ok_or("nothing bound")?;
    Ok(Running { proxy, snapshot, addr: addr? })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The request headers the echo upstream reported.
    fn echoed(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for line in String::from_utf8_lossy(&self.body).lines() {
            if let Some((k, v)) = line.split_once(": ") {
                out.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        out
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Answer, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    collect(resp).await
}

async fn collect(resp: Response<Incoming>) -> Result<Answer, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Answer, BoxError> {
    send(addr, Request::get(path).header("host", host).body(Empty::<Bytes>::new())?).await
}

/// A body of `left` copies of `chunk` with no length known up front, so
/// the client sends it chunked.
struct Chunks {
    chunk: Bytes,
    left: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

// === routing ===

#[tokio::test]
async fn proxy_and_its_futures_can_move_across_tasks() {
    fn send<T: Send>(_: &T) {}
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<Proxy>();
    let proxy = Proxy::new(ProxyConfig::default(), Arc::new(ArcSwap::from_pointee(Snapshot::default())));
    let resolve = |_: &BindKey| SocketAddr::from(([127, 0, 0, 1], 0));
    send(&proxy.reconcile(&[key()], &resolve));
    send(&proxy.shutdown());
}

#[tokio::test]
async fn routes_to_the_matching_upstream() -> TestResult {
    let (a, b) = (upstream("a").await?, upstream("b").await?);
    let mut f = Fixture::new();
    let (sa, sb) = (f.service(vec![a]), f.service(vec![b]));
    f.route("a.example", prefix("/"), backends(sa));
    f.route("b.example", prefix("/"), backends(sa));
    f.route("b.example", prefix("/b"), backends(sb));
    let p = start(&f).await?;

    assert_eq!(get(p.addr, "a.example", "/b").await?.header("x-upstream"), "a");
    assert_eq!(get(p.addr, "b.example", "/x").await?.header("x-upstream"), "a");
    assert_eq!(get(p.addr, "B.example:8080", "/b/c").await?.header("x-upstream"), "b");
    Ok(())
}

#[tokio::test]
async fn host_is_forwarded_unchanged_with_forwarded_headers() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;

    let req = Request::get("/p/q?x=1&y=2")
        .header("host", "Example.COM:8080")
        .header("x-forwarded-for", "192.0.2.1")
        .header("x-forwarded-proto", "https")
        .body(Empty::<Bytes>::new())?;
    let resp = send(p.addr, req).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-echo-uri"), "/p/q?x=1&y=2", "origin-form on the wire");
    assert_eq!(resp.header("x-echo-version"), "HTTP/1.1");
    let echoed = resp.echoed();
    assert_eq!(echoed["host"], vec!["Example.COM:8080"]);
    assert_eq!(echoed["x-forwarded-for"], vec!["192.0.2.1, 127.0.0.1"]);
    assert_eq!(echoed["x-forwarded-proto"], vec!["http"]);
    assert_eq!(echoed["x-forwarded-host"], vec!["Example.COM:8080"]);
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;

    let req = Request::get("/")
        .header("host", "a.example")
        .header("connection", "x-custom")
        .header("x-custom", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "gzip")
        .header("x-kept", "yes")
        .body(Empty::<Bytes>::new())?;
    let resp = send(p.addr, req).await?;
    let echoed = resp.echoed();
    for gone in ["x-custom", "keep-alive", "proxy-authorization", "te"] {
        assert!(!echoed.contains_key(gone), "{gone} forwarded: {echoed:?}");
    }
    assert_eq!(echoed["x-kept"], vec!["yes"]);
    // The upstream's own hop-by-hop headers stay on its side too.
    assert!(resp.headers.get("x-up-hop").is_none());
    assert!(resp.headers.get("keep-alive").is_none());
    assert_eq!(resp.header("x-upstream"), "a");
    Ok(())
}

#[tokio::test]
async fn h2c_prior_knowledge_client_is_proxied_as_http1() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("h2.example", prefix("/"), backends(s));
    let p = start(&f).await?;

    let stream = TcpStream::connect(p.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("http://h2.example:8080/h2?x=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new())?;
    let resp = collect(sender.send_request(req).await?).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-echo-uri"), "/h2?x=1");
    assert_eq!(resp.header("x-echo-version"), "HTTP/1.1");
    let echoed = resp.echoed();
    assert_eq!(echoed["host"], vec!["h2.example:8080"]);
    assert_eq!(echoed["cookie"], vec!["a=1; b=2"]);
    Ok(())
}

// === errors ===

#[tokio::test]
async fn unknown_host_or_path_answers_404() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.input.listeners[0].hostname = HostPattern::gateway(Some("*.example"));
    f.route("", prefix("/known"), backends(s));
    let p = start(&f).await?;

    let resp = get(p.addr, "other.test", "/known").await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.header("content-type"), "text/plain");
    assert_eq!(get(p.addr, "a.example", "/unknown").await?.status, StatusCode::NOT_FOUND);
    assert_eq!(get(p.addr, "a.example", "/known").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn missing_host_answers_400() -> TestResult {
    let mut f = Fixture::new();
    f.route("", prefix("/"), RuleSpec::default());
    let p = start(&f).await?;
    let resp = send(p.addr, Request::get("/").body(Empty::<Bytes>::new())?).await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn invalid_backend_or_no_backends_answers_500() -> TestResult {
    let mut f = Fixture::new();
    let invalid = WeightedBackend { target: BackendTarget::Invalid, weight: 1, filters: Arc::new([]) };
    f.route("", prefix("/invalid"), RuleSpec { backends: vec![invalid], ..RuleSpec::default() });
    f.route("", prefix("/none"), RuleSpec::default());
    let p = start(&f).await?;

    let resp = get(p.addr, "a.example", "/invalid").await?;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.header("content-type"), "text/plain");
    assert_eq!(get(p.addr, "a.example", "/none").await?.status, StatusCode::INTERNAL_SERVER_ERROR);
    Ok(())
}

#[tokio::test]
async fn service_without_endpoints_answers_503() -> TestResult {
    let mut f = Fixture::new();
    let s = f.service(vec![]);
    f.route("", prefix("/"), backends(s));
    // A backend id past the endpoint list has no endpoints either.
    f.route("", prefix("/unknown"), backends(BackendId(99)));
    let p = start(&f).await?;
    assert_eq!(get(p.addr, "a.example", "/").await?.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(p.addr, "a.example", "/unknown").await?.status, StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test]
async fn refused_connection_answers_502() -> TestResult {
    let mut f = Fixture::new();
    let s = f.service(vec![closed_port().await?]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;
    let resp = get(p.addr, "a.example", "/").await?;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(resp.header("content-type"), "text/plain");
    Ok(())
}

#[tokio::test]
async fn slow_upstream_past_backend_timeout_answers_504() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    let spec = RuleSpec { backend_timeout: Some(Duration::from_millis(200)), ..backends(s) };
    f.route("", prefix("/"), spec);
    let p = start(&f).await?;

    let started = Instant::now();
    let resp = get(p.addr, "a.example", "/stall").await?;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(get(p.addr, "a.example", "/fast").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn content_length_over_limit_answers_413() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let config = ProxyConfig { max_request_body_bytes: Some(1024), ..ProxyConfig::default() };
    let p = start_with(&f, config).await?;

    let big = Request::post("/").header("host", "a").body(Full::new(Bytes::from(vec![b'x'; 2048])))?;
    assert_eq!(send(p.addr, big).await?.status, StatusCode::PAYLOAD_TOO_LARGE);
    let small = Request::post("/").header("host", "a").body(Full::new(Bytes::from(vec![b'x'; 512])))?;
    let resp = send(p.addr, small).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-body-bytes"), "512");
    Ok(())
}

#[tokio::test]
async fn streamed_body_over_limit_answers_413() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let config = ProxyConfig { max_request_body_bytes: Some(1024), ..ProxyConfig::default() };
    let p = start_with(&f, config).await?;

    let body = Chunks { chunk: Bytes::from(vec![b'x'; 512]), left: 4 };
    let req = Request::post("/").header("host", "a").body(body)?;
    assert_eq!(send(p.addr, req).await?.status, StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

// === filters ===

#[tokio::test]
async fn redirect_sets_location_and_status() -> TestResult {
    let mut f = Fixture::new();
    let redirect = Redirect {
        scheme: Some("https".into()),
        hostname: None,
        port: None,
        path: Some(PathModifier::Prefix("/new".into())),
        status: StatusCode::MOVED_PERMANENTLY,
    };
    f.route("", prefix("/old"), RuleSpec { filters: vec![Filter::Redirect(redirect)], ..RuleSpec::default() });
    let port_only = Redirect { scheme: None, hostname: None, port: None, path: None, status: StatusCode::FOUND };
    f.route("", prefix("/keep"), RuleSpec { filters: vec![Filter::Redirect(port_only)], ..RuleSpec::default() });
    let p = start(&f).await?;

    let resp = get(p.addr, "Shop.example:9999", "/old/x?q=1").await?;
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.header("location"), "https://Shop.example/new/x?q=1");
    let resp = get(p.addr, "shop.example", "/keep/y").await?;
    assert_eq!(resp.status, StatusCode::FOUND);
    assert_eq!(resp.header("location"), "http://shop.example:8080/keep/y");
    Ok(())
}

#[tokio::test]
async fn url_rewrite_replaces_prefix_and_host() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    let rewrite = Rewrite { hostname: Some(hval("internal.svc")), path: Some(PathModifier::Prefix("/v2".into())) };
    f.route("", prefix("/api"), RuleSpec { filters: vec![Filter::Rewrite(rewrite)], ..backends(s) });
    let p = start(&f).await?;

    let resp = get(p.addr, "public.example", "/api/users?id=7").await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-echo-uri"), "/v2/users?id=7");
    let echoed = resp.echoed();
    assert_eq!(echoed["host"], vec!["internal.svc"]);
    assert_eq!(echoed["x-forwarded-host"], vec!["public.example"]);
    Ok(())
}

#[tokio::test]
async fn header_modifiers_apply_to_request_and_response() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    let request = HeaderModifier {
        set: vec![(hname("x-set"), hval("set"))],
        add: vec![(hname("x-add"), hval("added"))],
        remove: vec![hname("x-remove")],
    };
    let response = HeaderModifier {
        set: vec![(hname("x-resp"), hval("yes"))],
        add: vec![],
        remove: vec![hname("x-upstream-secret")],
    };
    let backend_request = HeaderModifier { set: vec![(hname("x-backend"), hval("b"))], ..HeaderModifier::default() };
    let backend_response =
        HeaderModifier { set: vec![(hname("x-backend-resp"), hval("b"))], ..HeaderModifier::default() };
    let backend = WeightedBackend {
        target: BackendTarget::Service(s),
        weight: 1,
        filters: vec![Filter::RequestHeaders(backend_request), Filter::ResponseHeaders(backend_response)].into(),
    };
    let spec = RuleSpec {
        filters: vec![Filter::RequestHeaders(request), Filter::ResponseHeaders(response)],
        backends: vec![backend],
        backend_timeout: None,
    };
    f.route("", prefix("/"), spec);
    let p = start(&f).await?;

    let req = Request::get("/")
        .header("host", "a.example")
        .header("x-set", "old")
        .header("x-add", "orig")
        .header("X-Remove", "gone")
        .body(Empty::<Bytes>::new())?;
    let resp = send(p.addr, req).await?;
    let echoed = resp.echoed();
    assert_eq!(echoed["x-set"], vec!["set"]);
    assert_eq!(echoed["x-add"], vec!["orig", "added"]);
    assert!(!echoed.contains_key("x-remove"));
    assert_eq!(echoed["x-backend"], vec!["b"]);
    assert_eq!(resp.header("x-resp"), "yes");
    assert_eq!(resp.header("x-backend-resp"), "b");
    assert!(resp.headers.get("x-upstream-secret").is_none());
    Ok(())
}

// === streaming and upgrades ===

#[tokio::test]
async fn large_chunked_body_streams_through() -> TestResult {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 128; // 8 MiB
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;

    let body = Chunks { chunk: Bytes::from(vec![7u8; CHUNK]), left: CHUNKS };
    let req = Request::post("/upload").header("host", "a.example").body(body)?;
    let resp = send(p.addr, req).await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-body-bytes"), (CHUNK * CHUNKS).to_string());
    assert_eq!(resp.echoed()["transfer-encoding"], vec!["chunked"]);
    Ok(())
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() -> TestResult {
    let (ws, head) = upgrade_upstream().await?;
    let mut f = Fixture::new();
    let s = f.service(vec![ws]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;

    let mut client = TcpStream::connect(p.addr).await?;
    let request = "GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: keep-alive, Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    client.write_all(request.as_bytes()).await?;
    let response = tokio::time::timeout(Duration::from_secs(2), read_head(&mut client)).await??;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{response}");
    assert!(lower.contains("connection: upgrade"), "{response}");

    let upstream_head = head.await?.to_ascii_lowercase();
    assert!(upstream_head.starts_with("get /chat http/1.1"), "{upstream_head}");
    assert!(upstream_head.contains("upgrade: websocket"), "{upstream_head}");
    assert!(upstream_head.contains("connection: upgrade"), "{upstream_head}");
    assert!(upstream_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="), "{upstream_head}");

    client.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

// === dynamic config and lifecycle ===

#[tokio::test]
async fn table_swap_changes_routing_for_new_requests() -> TestResult {
    let (a, b) = (upstream("a").await?, upstream("b").await?);
    let mut f = Fixture::new();
    let (sa, sb) = (f.service(vec![a]), f.service(vec![b]));
    f.route("", prefix("/"), backends(sa));
    let p = start(&f).await?;
    assert_eq!(get(p.addr, "x", "/").await?.header("x-upstream"), "a");

    let mut g = Fixture::new();
    g.service(vec![a]);
    g.service(vec![b]);
    g.route("", prefix("/"), backends(sb));
    p.snapshot.store(Arc::new(g.snapshot()));
    assert_eq!(get(p.addr, "x", "/").await?.header("x-upstream"), "b");
    Ok(())
}

#[tokio::test]
async fn reconcile_binds_new_keys_and_stops_removed_ones() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;
    let other = BindKey { gateway: Some("ns/other".into()), port: 9090 };
    let local = |_: &BindKey| SocketAddr::from(([127, 0, 0, 1], 0));

    let added = p.proxy.reconcile(&[key(), other.clone()], &local).await;
    assert_eq!(added.len(), 1, "only the new key is bound");
    let (added_key, other_addr) = added.into_iter().next().ok_or("none")?;
    assert_eq!(added_key, other);
    let other_addr = other_addr?;
    assert_eq!(p.proxy.bound().len(), 2);
    // The second socket has no table entry: its requests answer 404.
    assert_eq!(get(other_addr, "x", "/").await?.status, StatusCode::NOT_FOUND);

    // A busy address fails alone.
    let taken = BindKey { gateway: None, port: 1 };
    let busy = p.proxy.reconcile(&[key(), other.clone(), taken], &|_| p.addr).await;
    assert_eq!(busy.len(), 1);
    assert!(busy[0].1.is_err());

    let removed = p.proxy.reconcile(&[key()], &local).await;
    assert!(removed.is_empty());
    assert_eq!(p.proxy.bound(), vec![(key(), p.addr)]);
    assert!(TcpStream::connect(other_addr).await.is_err(), "removed socket still accepts");
    assert_eq!(get(p.addr, "x", "/").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() -> TestResult {
    let a = upstream("a").await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let config = ProxyConfig { drain_timeout: Duration::from_secs(2), ..ProxyConfig::default() };
    let p = start_with(&f, config).await?;

    // An idle keep-alive connection must not hold the drain up.
    let idle = TcpStream::connect(p.addr).await?;
    let (mut idle_sender, idle_conn) = hyper::client::conn::http1::handshake(TokioIo::new(idle)).await?;
    let idle_task = tokio::spawn(idle_conn);
    let req = Request::get("/").header("host", "a").body(Empty::<Bytes>::new())?;
    assert_eq!(collect(idle_sender.send_request(req).await?).await?.status, StatusCode::OK);

    let in_flight = tokio::spawn(get(p.addr, "a.example", "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    p.proxy.shutdown().await;
    let took = started.elapsed();

    let resp = in_flight.await??;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-upstream"), "a");
    assert!(took < Duration::from_millis(1500), "drain took {took:?}");
    assert!(p.proxy.bound().is_empty());
    assert!(TcpStream::connect(p.addr).await.is_err(), "still accepting after shutdown");
    // The idle connection was closed by the drain.
    tokio::time::timeout(Duration::from_secs(1), idle_task).await??.ok();
    let after = p.proxy.reconcile(&[key()], &|_| SocketAddr::from(([127, 0, 0, 1], 0))).await;
    assert!(after.iter().all(|(_, r)| r.is_err()));
    Ok(())
}

// === upstream connection reuse ===

/// Connections an upstream accepted and saw closed.
#[derive(Default)]
struct ConnCounts {
    accepted: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
}

impl ConnCounts {
    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An HTTP/1.1 upstream that counts its connections. `/chunked` answers
/// three chunks without a length, `/empty` 204, `/big` 4 MiB chunked,
/// `/early` before reading the request body, the rest `ok` with a length. With `close_after_each`, it closes every
/// connection 50 ms after one response without saying so (as an upstream
/// whose keep-alive timeout fires between requests does).
async fn counting_upstream(close_after_each: bool) -> Result<(SocketAddr, Arc<ConnCounts>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(ConnCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body: http_body_util::combinators::BoxBody<Bytes, Infallible> = match req.uri().path() {
                        "/chunked" => Chunks { chunk: Bytes::from_static(b"chunk\n"), left: 3 }.boxed(),
                        "/big" => Chunks { chunk: Bytes::from(vec![b'x'; 64 * 1024]), left: 64 }.boxed(),
                        "/empty" => Empty::new().boxed(),
                        // Answers before reading the request body.
                        "/early" => Full::new(Bytes::from_static(b"early")).boxed(),
                        _ => Full::new(Bytes::from_static(b"ok")).boxed(),
                    };
                    let status = if req.uri().path() == "/empty" { StatusCode::NO_CONTENT } else { StatusCode::OK };
                    Ok::<_, Infallible>(Response::builder().status(status).body(body).unwrap_or_default())
                });
                if close_after_each {
                    // One response, then a bare close: no `connection: close`.
                    let mut stream = stream;
                    if read_head(&mut stream).await.is_ok() {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } else {
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                }
                c.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    Ok((addr, counts))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn one_upstream_connection_serves_sequential_requests_of_every_body_kind() -> TestResult {
    let (a, counts) = counting_upstream(false).await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;
    for round in 0..5 {
        // A fresh client connection each time: the upstream one is pooled
        // by the proxy, not tied to the client's.
        let ok = get(p.addr, "a.example", "/").await?;
        assert_eq!((ok.status, &ok.body[..]), (StatusCode::OK, &b"ok"[..]), "round {round}");
        let chunked = get(p.addr, "a.example", "/chunked").await?;
        assert_eq!(&chunked.body[..], b"chunk\nchunk\nchunk\n", "round {round}");
        assert_eq!(get(p.addr, "a.example", "/empty").await?.status, StatusCode::NO_CONTENT);
        let head = send(p.addr, Request::head("/").header("host", "a.example").body(Empty::<Bytes>::new())?).await?;
        assert_eq!(head.status, StatusCode::OK);
    }
    assert_eq!(counts.accepted(), 1, "every request reused the first upstream connection");
    Ok(())
}

#[tokio::test]
async fn a_response_abandoned_midway_closes_its_upstream_connection_and_the_next_is_clean() -> TestResult {
    let (a, counts) = counting_upstream(false).await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;

    // Read the head of a 4 MiB response, then hang up.
    let mut client = TcpStream::connect(p.addr).await?;
    client.write_all(b"GET /big HTTP/1.1\r\nhost: a.example\r\n\r\n").await?;
    let head = read_head(&mut client).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(client);
    wait_for("the upstream connection of the abandoned response to close", || counts.closed() == 1).await?;

    // The rest of that body must not leak into the next response.
    let ok = get(p.addr, "a.example", "/").await?;
    assert_eq!((ok.status, &ok.body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(counts.accepted(), 2);
    Ok(())
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_never_costs_a_request() -> TestResult {
    let (a, counts) = counting_upstream(true).await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;
    for i in 0..20 {
        let resp = get(p.addr, "a.example", "/").await?;
        assert_eq!((resp.status, &resp.body[..]), (StatusCode::OK, &b"ok"[..]), "request {i}");
        // The pooled connection is closed by the upstream now; the proxy
        // may or may not have noticed yet.
        wait_for("the upstream to close the connection", || counts.closed() == i + 1).await?;
    }
    assert_eq!(counts.accepted(), 20, "the upstream closed each connection after one response");
    Ok(())
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_idle_timeout() -> TestResult {
    let (a, counts) = counting_upstream(false).await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let config = ProxyConfig { idle_upstream_timeout: Duration::from_millis(200), ..ProxyConfig::default() };
    let p = start_with(&f, config).await?;
    assert_eq!(get(p.addr, "a.example", "/").await?.status, StatusCode::OK);
    assert_eq!(counts.closed(), 0);
    wait_for("the idle upstream connection to close", || counts.closed() == 1).await?;
    assert_eq!(get(p.addr, "a.example", "/").await?.status, StatusCode::OK);
    assert_eq!(counts.accepted(), 2, "a new connection after the idle one closed");
    Ok(())
}

#[tokio::test]
async fn an_upstream_answering_before_the_upload_ends_leaves_the_next_request_clean() -> TestResult {
    let (a, _counts) = counting_upstream(false).await?;
    let mut f = Fixture::new();
    let s = f.service(vec![a]);
    f.route("", prefix("/"), backends(s));
    let p = start(&f).await?;
    let upload = Chunks { chunk: Bytes::from(vec![b'u'; 64 * 1024]), left: 64 };
    // The upstream closes on the unread upload; whether its answer or the
    // reset reaches the proxy first is a race (200 or 502). What must hold:
    // that connection is never reused.
    let early = send(p.addr, Request::post("/early").header("host", "a.example").body(upload)?).await?;
    assert!([StatusCode::OK, StatusCode::BAD_GATEWAY].contains(&early.status), "{}", early.status);
    for i in 0..5 {
        let ok = get(p.addr, "a.example", "/").await?;
        assert_eq!((ok.status, &ok.body[..]), (StatusCode::OK, &b"ok"[..]), "request {i} after the early answer");
    }
    Ok(())
}
