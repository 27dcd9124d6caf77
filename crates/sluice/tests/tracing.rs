//! Request tracing through the real binary: an OTLP/HTTP receiver in the
//! test process decodes what `sluice run` exports, a `sluice echo` backend
//! shows the `traceparent` the upstream received, and `curl` sends the
//! requests.
//!
//! Self-contained (no `tests/support`): its own child-process, config and
//! curl helpers below.

mod support;

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value as Json;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// How long anything asynchronous (startup, an export) may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// The OTLP `SpanKind` and `Status.code` values the tests check.
const KIND_SERVER: i32 = 2;
const STATUS_UNSET: i32 = 0;
const STATUS_ERROR: i32 = 2;
/// A client's trace context.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn spans_follow_the_http_semantic_conventions() {
    if !require_curl("spans_follow_the_http_semantic_conventions") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("spans");
    let access = dir.path().join("access.log");
    let endpoint = format!("http://{}", collector.addr);
    let sluice = Sluice::start(
        &dir,
        echo.port(),
        &["--otlp-endpoint", &endpoint, "--access-log", path_str(&access)],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );

    let ok = curl(sluice.addr, "/app/items?id=7", &["Host: Shop.Example:8080", "User-Agent: tracing-test/1"]);
    assert_eq!(ok.status, 200, "{}", sluice.proc.stderr());
    let echoed = ok.json();
    let down = curl(sluice.addr, "/down", &[]);
    assert_eq!(down.status, 503);
    let missing = curl(sluice.addr, "/nowhere", &[]);
    assert_eq!(missing.status, 404);

    let spans = collector.wait_spans(3, &sluice);
    assert!(collector.paths().iter().all(|p| p == "/v1/traces"), "{:?}", collector.paths());
    let app = find(&spans, "/app/items");
    assert_eq!(app.span.name, "GET default/app");
    assert_eq!(app.span.kind, KIND_SERVER);
    assert!(app.span.parent_span_id.is_empty(), "a request without traceparent starts a trace");
    assert_eq!(app.service_name, "sluice", "OTEL_SERVICE_NAME unset: the default");
    assert_eq!(app.scope, "sluice");
    let s = &app.span;
    assert_eq!(attr_str(s, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr_str(s, "http.route").as_deref(), Some("default/app"));
    assert_eq!(attr_int(s, "sluice.rule"), Some(0));
    assert_eq!(attr_int(s, "http.response.status_code"), Some(200));
    assert_eq!(attr_str(s, "url.path").as_deref(), Some("/app/items"));
    assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr_str(s, "server.address").as_deref(), Some("shop.example"));
    assert_eq!(attr_int(s, "server.port"), Some(8080));
    assert_eq!(attr_str(s, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr_str(s, "network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(attr_str(s, "user_agent.original").as_deref(), Some("tracing-test/1"));
    assert_eq!(attr_str(s, "sluice.backend").as_deref(), Some("default/echo:8080"));
    assert_eq!(attr_str(s, "network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr_int(s, "network.peer.port"), Some(i64::from(echo.port())));
    assert_eq!(attr_str(s, "error.type"), None);
    assert_eq!(s.status.as_ref().map_or(STATUS_UNSET, |st| st.code), STATUS_UNSET);
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);

    // Even a new trace is propagated: the upstream's parent is Sluice's span.
    let (trace_id, parent_id, flags) = upstream_traceparent(&echoed);
    assert_eq!(
        (trace_id.as_str(), parent_id.as_str(), flags.as_str()),
        (hex(&s.trace_id).as_str(), hex(&s.span_id).as_str(), "01")
    );

    let d = &find(&spans, "/down").span;
    assert_eq!(d.name, "GET default/down");
    assert_eq!(attr_int(d, "http.response.status_code"), Some(503));
    assert_eq!(attr_str(d, "error.type").as_deref(), Some("no_endpoints"));
    assert_eq!(d.status.as_ref().map(|st| st.code), Some(STATUS_ERROR), "5xx is an error");

    let m = &find(&spans, "/nowhere").span;
    assert_eq!(m.name, "GET", "no route: the method alone");
    assert_eq!(attr_str(m, "http.route"), None);
    assert_eq!(attr_int(m, "http.response.status_code"), Some(404));
    assert_eq!(m.status.as_ref().map_or(STATUS_UNSET, |st| st.code), STATUS_UNSET, "4xx is not a server error");

    // The access log names the trace.
    let lines = support::wait_until(PATIENCE, || {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        let lines: Vec<Json> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= 3).then_some(lines)
    })
    .unwrap_or_else(|| panic!("access log lines missing"));
    let line = lines.iter().find(|l| l["path"] == "/app/items?id=7").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(line["trace_id"], Json::String(hex(&s.trace_id)));
}

#[test]
fn a_client_trace_is_continued_and_forwarded() {
    if !require_curl("a_client_trace_is_continued_and_forwarded") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("continue");
    let endpoint = format!("http://{}", collector.addr);
    let sluice =
        Sluice::start(&dir, echo.port(), &["--otlp-endpoint", &endpoint], &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);

    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    let resp = curl(sluice.addr, "/app/continued", &[&traceparent, "tracestate: vendor=abc,other=1"]);
    assert_eq!(resp.status, 200);
    let echoed = resp.json();

    let spans = collector.wait_spans(1, &sluice);
    let s = &find(&spans, "/app/continued").span;
    assert_eq!(hex(&s.trace_id), TRACE_ID, "the client's trace");
    assert_eq!(hex(&s.parent_span_id), PARENT_ID, "the client's span is the parent");
    assert_eq!(s.trace_state, "vendor=abc,other=1");
    assert_eq!(s.kind, KIND_SERVER);

    let (trace_id, parent_id, flags) = upstream_traceparent(&echoed);
    assert_eq!(trace_id, TRACE_ID, "the upstream continues the same trace");
    assert_eq!(parent_id, hex(&s.span_id), "the upstream's parent is Sluice's span");
    assert_ne!(parent_id, PARENT_ID);
    assert_eq!(flags, "01");
    assert_eq!(echoed["headers"]["Tracestate"][0], "vendor=abc,other=1");
}

#[test]
fn sample_ratio_zero_exports_nothing_but_still_propagates() {
    if !require_curl("sample_ratio_zero_exports_nothing_but_still_propagates") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("ratio0");
    let endpoint = format!("http://{}", collector.addr);
    // The flag wins over the environment's always_on.
    let sluice = Sluice::start(
        &dir,
        echo.port(),
        &["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "0"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "50"), ("OTEL_TRACES_SAMPLER", "always_on")],
    );

    for i in 0..5 {
        let resp = curl(sluice.addr, &format!("/app/unsampled/{i}"), &[]);
        assert_eq!(resp.status, 200);
        let (trace_id, parent_id, flags) = upstream_traceparent(&resp.json());
        assert_eq!(flags, "00", "not sampled");
        assert!(trace_id.len() == 32 && trace_id != "0".repeat(32), "{trace_id}");
        assert!(parent_id.len() == 16 && parent_id != "0".repeat(16), "{parent_id}");
    }
    // An unsampled caller: same trace, not sampled, Sluice's span id.
    let unsampled = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-00");
    let (trace_id, parent_id, flags) =
        upstream_traceparent(&curl(sluice.addr, "/app/caller-unsampled", &[&unsampled]).json());
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE_ID, "00"));
    assert_ne!(parent_id, PARENT_ID);
    // Parent-based: a sampled caller is still recorded. Once its span is
    // there, every earlier span would have been exported too.
    let sampled = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    assert_eq!(curl(sluice.addr, "/app/caller-sampled", &[&sampled]).status, 200);
    collector.wait_spans(1, &sluice);
    std::thread::sleep(Duration::from_millis(300));
    let spans = collector.spans();
    let paths: Vec<String> = spans.iter().map(|r| attr_str(&r.span, "url.path").unwrap_or_default()).collect();
    assert_eq!(paths, ["/app/caller-sampled"], "only the sampled caller's span is exported");
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    if !require_curl("a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted") {
        return;
    }
    let echo = Proc::echo();
    let dir = TempDir::new("down");
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let sluice =
        Sluice::start(&dir, echo.port(), &["--otlp-endpoint", &endpoint], &[("OTEL_BSP_SCHEDULE_DELAY", "50")]);

    const REQUESTS: u64 = 20;
    for i in 0..REQUESTS {
        let started = Instant::now();
        assert_eq!(curl(sluice.addr, &format!("/app/{i}"), &[]).status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "request {i} took {:?}", started.elapsed());
    }
    let dropped = support::wait_until(PATIENCE, || {
        let n = metric_sum(&sluice.metrics(), "sluice_trace_spans_dropped_total");
        (n >= REQUESTS as f64).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "sluice_trace_spans_dropped_total did not reach {REQUESTS}:\n{}\nstderr:\n{}",
            sluice.metrics(),
            sluice.proc.stderr()
        )
    });
    assert_eq!(dropped, REQUESTS as f64, "every span dropped once");
    let text = sluice.metrics();
    assert!(text.contains(r#"sluice_trace_spans_dropped_total{reason="export_failed"} 20"#), "{text}");
    assert!(text.contains(r#"sluice_trace_spans_dropped_total{reason="queue_full"} 0"#), "{text}");
    assert_eq!(metric_sum(&text, "sluice_trace_spans_exported_total"), 0.0);
    // Still serving, and the failure was logged once, not per batch.
    assert_eq!(curl(sluice.addr, "/app/after", &[]).status, 200);
    assert_eq!(sluice.proc.stderr().matches("Cannot export trace spans").count(), 1, "{}", sluice.proc.stderr());
}

#[test]
fn standard_environment_variables_configure_tracing() {
    if !require_curl("standard_environment_variables_configure_tracing") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("env");
    let base = format!("http://{}/", collector.addr);
    let sluice = Sluice::start(
        &dir,
        echo.port(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    assert_eq!(curl(sluice.addr, "/app/env", &[]).status, 200);
    let spans = collector.wait_spans(1, &sluice);
    assert_eq!(spans[0].service_name, "edge-gateway");
    assert_eq!(collector.paths(), ["/v1/traces"], "OTEL_EXPORTER_OTLP_ENDPOINT gets /v1/traces");
}

#[test]
fn the_traces_endpoint_variable_is_used_as_is_and_wins() {
    if !require_curl("the_traces_endpoint_variable_is_used_as_is_and_wins") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("signal");
    let signal = format!("http://{}/custom/traces", collector.addr);
    let base = format!("http://127.0.0.1:{}", closed_port());
    let sluice = Sluice::start(
        &dir,
        echo.port(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &signal),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    assert_eq!(curl(sluice.addr, "/app/signal", &[]).status, 200);
    collector.wait_spans(1, &sluice);
    assert_eq!(collector.paths(), ["/custom/traces"]);
}

#[test]
fn sigterm_flushes_spans_still_queued() {
    if !require_curl("sigterm_flushes_spans_still_queued") {
        return;
    }
    let collector = Collector::start();
    let echo = Proc::echo();
    let dir = TempDir::new("flush");
    let endpoint = format!("http://{}", collector.addr);
    // No scheduled export for ten minutes: only the shutdown flush sends.
    let mut sluice =
        Sluice::start(&dir, echo.port(), &["--otlp-endpoint", &endpoint], &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    assert_eq!(curl(sluice.addr, "/app/last", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(collector.spans().is_empty(), "exported before shutdown");
    sluice.proc.terminate();
    let status = sluice.proc.wait_exit(PATIENCE).unwrap_or_else(|| panic!("sluice did not exit after SIGTERM"));
    assert!(status.success(), "exit {status}: {}", sluice.proc.stderr());
    let spans = collector.spans();
    assert_eq!(spans.len(), 1, "the queued span is flushed on shutdown\nstderr:\n{}", sluice.proc.stderr());
    assert_eq!(attr_str(&spans[0].span, "url.path").as_deref(), Some("/app/last"));
}

#[test]
fn tracing_off_leaves_trace_headers_alone() {
    if !require_curl("tracing_off_leaves_trace_headers_alone") {
        return;
    }
    let echo = Proc::echo();
    let dir = TempDir::new("off");
    // Sampler settings alone do not turn tracing on.
    let sluice = Sluice::start(&dir, echo.port(), &[], &[("OTEL_TRACES_SAMPLER", "always_on")]);
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01");
    let echoed = curl(sluice.addr, "/app/off", &[&traceparent, "tracestate: k=v"]).json();
    assert_eq!(
        echoed["headers"]["Traceparent"][0],
        format!("00-{TRACE_ID}-{PARENT_ID}-01"),
        "passed through unchanged"
    );
    assert_eq!(echoed["headers"]["Tracestate"][0], "k=v");
    assert!(
        !curl(sluice.addr, "/app/plain", &[]).json()["headers"]
            .as_object()
            .is_some_and(|h| h.contains_key("Traceparent"))
    );
    assert!(!sluice.metrics().contains("sluice_trace_spans"), "no trace pipeline");
}

#[test]
fn an_unusable_endpoint_is_a_usage_error() {
    let dir = TempDir::new("badurl");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("c.yaml"), config_yaml(closed_port())).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(SLUICE)
        .args(["run", "--config", path_str(&config), "--bind", "80=127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--otlp-endpoint", "https://collector.example:4318"])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running sluice: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--otlp-endpoint") && stderr.contains("https"), "{stderr}");
    let out = Command::new(SLUICE)
        .args(["run", "--config", path_str(&config), "--trace-sample-ratio", "1.5"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running sluice: {e}"));
    assert_eq!(out.status.code(), Some(2), "clap rejects the ratio: {}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------
// The OTLP/HTTP receiver
// ---------------------------------------------------------------------------

/// Accepts `POST` OTLP/HTTP protobuf exports on 127.0.0.1 (any path, so a
/// test can check which one was used) and keeps them.
struct Collector {
    addr: SocketAddr,
    state: Arc<Mutex<Received>>,
}

#[derive(Default)]
struct Received {
    paths: Vec<String>,
    requests: Vec<ExportTraceServiceRequest>,
    errors: Vec<String>,
}

/// One exported span with its resource's `service.name` and its scope.
#[derive(Clone, Debug)]
struct Exported {
    service_name: String,
    scope: String,
    span: Span,
}

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let state = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(receive(req, &state).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Self { addr, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn paths(&self) -> Vec<String> {
        self.lock().paths.clone()
    }

    fn spans(&self) -> Vec<Exported> {
        let received = self.lock();
        assert!(received.errors.is_empty(), "bad exports: {:?}", received.errors);
        let mut out = Vec::new();
        for req in &received.requests {
            for rs in &req.resource_spans {
                let service_name = rs
                    .resource
                    .as_ref()
                    .and_then(|r| find_attr(&r.attributes, "service.name"))
                    .and_then(|v| match v {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    let scope = ss.scope.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                    for span in &ss.spans {
                        out.push(Exported {
                            service_name: service_name.clone(),
                            scope: scope.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until at least `n` spans arrived.
    fn wait_spans(&self, n: usize, sluice: &Sluice) -> Vec<Exported> {
        support::wait_until(PATIENCE, || {
            let spans = self.spans();
            (spans.len() >= n).then_some(spans)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} spans, got {:?}\nmetrics:\n{}\nstderr:\n{}",
                self.spans(),
                sluice.metrics(),
                sluice.proc.stderr()
            )
        })
    }
}

async fn receive(req: Request<Incoming>, state: &Mutex<Received>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
    let encoding = req.headers().get(http::header::CONTENT_ENCODING).cloned();
    let method = req.method().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut received = state.lock().unwrap_or_else(|e| e.into_inner());
    received.paths.push(path);
    let problem = if method != http::Method::POST {
        Some(format!("method {method}"))
    } else if content_type.as_ref().is_none_or(|c| c != "application/x-protobuf") {
        Some(format!("content-type {content_type:?}"))
    } else if let Some(e) = encoding {
        // The exporter is built without compression; decoding gzip here
        // would only hide a change.
        Some(format!("unexpected content-encoding {e:?}"))
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                received.requests.push(r);
                None
            }
            Err(e) => Some(format!("decoding: {e}")),
        }
    };
    let status = match problem {
        Some(p) => {
            received.errors.push(p);
            StatusCode::BAD_REQUEST
        }
        // An empty ExportTraceServiceResponse is zero bytes.
        None => StatusCode::OK,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-protobuf"));
    resp
}

fn find_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn attr_str(span: &Span, key: &str) -> Option<String> {
    match find_attr(&span.attributes, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        Some(other) => panic!("{key} is not a string: {other:?}"),
        None => None,
    }
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match find_attr(&span.attributes, key) {
        Some(Value::IntValue(i)) => Some(*i),
        Some(other) => panic!("{key} is not an int: {other:?}"),
        None => None,
    }
}

fn find<'a>(spans: &'a [Exported], path: &str) -> &'a Exported {
    spans
        .iter()
        .find(|e| attr_str(&e.span, "url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no span for {path}: {spans:#?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` the echo backend received, split into trace id,
/// parent id and flags.
fn upstream_traceparent(echoed: &Json) -> (String, String, String) {
    let tp =
        echoed["headers"]["Traceparent"][0].as_str().unwrap_or_else(|| panic!("no Traceparent upstream: {echoed}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{tp}");
    (parts[1].to_string(), parts[2].to_string(), parts[3].to_string())
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process with its stdout and stderr collected line by line;
/// killed on drop.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    exit: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap_or_else(|| panic!("stdout"))));
        let stderr = collect(Box::new(child.stderr.take().unwrap_or_else(|| panic!("stderr"))));
        Self { child, stdout, stderr, exit: None }
    }

    /// `sluice echo --listen 127.0.0.1:0`, once it listens.
    fn echo() -> Self {
        let mut cmd = Command::new(SLUICE);
        cmd.args(["echo", "--listen", "127.0.0.1:0", "--pod", "echo-1", "--namespace", "default"]);
        let echo = Self::spawn(cmd);
        echo.stdout_value("listening addr=");
        echo
    }

    fn port(&self) -> u16 {
        self.stdout_value("listening addr=").parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}")).port()
    }

    /// The rest of the first stdout line starting with `prefix`, waiting
    /// for it.
    fn stdout_value(&self, prefix: &str) -> String {
        support::wait_until(PATIENCE, || {
            let lines = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
            lines.iter().find_map(|l| l.strip_prefix(prefix)).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {prefix:?} line on stdout\nstderr:\n{}", self.stderr()))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -TERM: {e}"));
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let exit = support::wait_until(timeout, || self.child.try_wait().ok().flatten());
        self.exit = exit;
        exit
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `sluice run` on a config routing `/app` to the echo backend and `/down`
/// to a Service without endpoints.
struct Sluice {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Sluice {
    fn start(dir: &TempDir, echo_port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(config.join("routes.yaml"), config_yaml(echo_port)).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(SLUICE);
        cmd.args(["run", "--config", path_str(&config), "--bind", "80=127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        cmd.args(args);
        // Only what the test sets.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().copied());
        let proc = Proc::spawn(cmd);
        let addr = proc.stdout_value("listening port=80 gateway=* addr=").parse().unwrap_or_else(|e| panic!("{e}"));
        let admin = proc.stdout_value("admin addr=").parse().unwrap_or_else(|e| panic!("{e}"));
        Self { proc, addr, admin }
    }

    /// The admin `/metrics` text.
    fn metrics(&self) -> String {
        curl(self.admin, "/metrics", &[]).body
    }
}

fn config_yaml(echo_port: u16) -> String {
    let route = |name: &str, prefix: &str, service: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  parentRefs:\n  - name: web\n  rules:\n  - matches:\n    - path:\n        type: PathPrefix\n        \
             value: {prefix}\n    backendRefs:\n    - name: {service}\n      port: 8080\n---\n"
        )
    };
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  \
             - name: http\n    port: 8080\n---\n"
        )
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: sluice\nspec:\n  \
         controllerName: sluice.dev/gateway-controller\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
         gatewayClassName: sluice\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 80\n---\n\
         {}{}{}{}\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-local\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: echo\naddressType: IPv4\nports:\n- name: http\n  port: {echo_port}\n\
         endpoints:\n- addresses: [\"127.0.0.1\"]\n",
        route("app", "/app", "echo"),
        route("down", "/down", "down"),
        service("echo"),
        service("down"),
    )
}

// ---------------------------------------------------------------------------
// curl, temp dirs, waiting
// ---------------------------------------------------------------------------

/// `true` when curl is there. Without curl: fails under CI=true, otherwise
/// prints a note and returns `false` (the test returns early).
fn require_curl(test: &str) -> bool {
    let found = Command::new("curl").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: `curl` is required (CI=true) but was not found");
    eprintln!("note: skipping {test}: `curl` not found");
    false
}

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET http://ADDR{path}` with extra request headers.
fn curl(addr: SocketAddr, path: &str, headers: &[&str]) -> Resp {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = cmd.output().unwrap_or_else(|e| panic!("running curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {path} failed: {} {}", out.status, String::from_utf8_lossy(&out.stderr)));
    Resp { status, body: body.to_string() }
}

/// Sums every sample of a metric in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("sluice-tracing-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
