//! Request tracing: one OpenTelemetry span (kind Server) per request, and
//! W3C Trace Context (`traceparent`/`tracestate`) from the client to the
//! upstream.
//!
//! Off unless the binary hands the proxy a tracer
//! ([`crate::Telemetry::tracer`]); then `server.rs` does, per request:
//!
//! 1. [`RequestTrace::begin`] on arrival: parses `traceparent` (strictly, as
//!    W3C Trace Context says) and keeps the URI, Host and User-Agent as the
//!    client sent them (filters may rewrite them later).
//! 2. [`RequestTrace::propagate`] once the route and endpoint are picked:
//!    starts the span (its start time is the arrival time; the sampler runs
//!    here, on the parent and the trace id; attributes are built only for a
//!    span that records) and sets the upstream's `traceparent` to Sluice's
//!    span, so the upstream's spans are its children. `tracestate` is forwarded as received
//!    when the client's `traceparent` was valid and removed otherwise (a new
//!    trace starts without the old vendor state).
//! 3. [`RequestTrace::finish`] when the response body ends: the status code,
//!    the error, then `end()`, which hands the span to the SDK's span
//!    processor (a bounded queue, never waited on).
//!
//! A request answered without an upstream (a redirect, a 404) starts its span
//! in step 3. Unsampled spans still propagate their trace id and span id (with
//! the sampled flag off) and record nothing. With tracing off none of this
//! runs: `server.rs` holds a `None` and the headers pass through untouched.
//!
//! Attributes (OpenTelemetry HTTP semantic conventions, plus `sluice.*`):
//! `http.request.method` (`_OTHER` and `http.request.method_original` for a
//! non-standard method), `url.path`, `url.scheme`, `server.address`,
//! `server.port` (from the authority the request was routed by),
//! `client.address`, `network.protocol.version`, `user_agent.original`,
//! `http.route` (the route's `namespace/name`), `sluice.rule` (rule index),
//! `sluice.backend` (`namespace/name:port`), `network.peer.address` and
//! `network.peer.port` (the upstream endpoint), `http.response.status_code`,
//! and for 5xx answers `error.type` with status Error.

use std::borrow::Cow;
use std::time::SystemTime;

use http::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::error::ProxyError;
use crate::observe::Outcome;
use crate::route::host_without_port;

/// `traceparent` (W3C Trace Context).
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent` value.
const TRACEPARENT_LEN: usize = 55;

/// The tracing state of one request (only exists when tracing is on).
pub(crate) struct RequestTrace {
    /// Arrival time: the span's start.
    start: SystemTime,
    /// The client's valid `traceparent` (and `tracestate`).
    parent: Option<SpanContext>,
    /// The request as it arrived; turned into attributes only if the span
    /// records (an unsampled request pays for no attribute).
    request: Option<Arrived>,
    /// The span, once started.
    span: Option<Span>,
    /// Why the proxy answered with an error: `error.type` and description.
    error: Option<(&'static str, String)>,
}

/// Request facts captured on arrival (clones of refcounted buffers).
struct Arrived {
    uri: Uri,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    client: HeaderValue,
    version: Version,
}

// === impl RequestTrace ===

impl RequestTrace {
    /// Reads the client's trace context and keeps what the attributes need.
    pub(crate) fn begin<B>(req: &Request<B>, client_ip: &HeaderValue) -> Box<Self> {
        let headers = req.headers();
        let parent = parse_traceparent(headers).map(|(trace_id, span_id, flags)| {
            SpanContext::new(trace_id, span_id, flags, true, parse_tracestate(headers))
        });
        let mut hosts = headers.get_all(HOST).iter();
        let request = Arrived {
            uri: req.uri().clone(),
            host: match (hosts.next(), hosts.next()) {
                (Some(h), None) => Some(h.clone()),
                _ => None,
            },
            user_agent: headers.get(USER_AGENT).cloned(),
            client: client_ip.clone(),
            version: req.version(),
        };
        Box::new(Self { start: SystemTime::now(), parent, request: Some(request), span: None, error: None })
    }

    /// Notes the proxy error the request is answered with.
    pub(crate) fn failed(&mut self, e: &ProxyError) {
        let recording = self.span.as_ref().is_none_or(|s| s.is_recording());
        self.error = Some((error_type(e), if recording { e.to_string() } else { String::new() }));
    }

    /// Starts the span (once the upstream is picked) and points the
    /// upstream request's `traceparent` at it.
    pub(crate) fn propagate(
        &mut self,
        tracer: &SdkTracer,
        method: &Method,
        outcome: &Outcome,
        headers: &mut HeaderMap,
    ) {
        let continued = self.parent.is_some();
        let sc = self.start(tracer, method, outcome).span_context();
        // Invalid only once the SDK is shut down: then the headers stay as
        // the client sent them.
        if sc.is_valid() {
            headers.insert(TRACEPARENT, traceparent(sc));
            if !continued {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// Ends the span with the response status; returns its trace id when
    /// it is sampled (for the access log).
    pub(crate) fn finish(
        mut self: Box<Self>,
        tracer: &SdkTracer,
        method: &Method,
        status: StatusCode,
        outcome: &Outcome,
    ) -> Option<TraceId> {
        let error = self.error.take();
        let span = self.start(tracer, method, outcome);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            if status.is_server_error() {
                let (kind, description) = match error {
                    Some((kind, description)) => (Cow::Borrowed(kind), Cow::Owned(description)),
                    None => (Cow::Owned(status.as_str().to_string()), Cow::Borrowed("")),
                };
                span.set_attribute(KeyValue::new("error.type", kind));
                span.set_status(Status::error(description));
            }
        }
        let sc = span.span_context();
        let traced = sc.is_sampled().then(|| sc.trace_id());
        span.end();
        traced
    }

    /// Starts the span if it is not started yet. The sampler sees the name
    /// and kind; the attributes are added only when the span records.
    fn start(&mut self, tracer: &SdkTracer, method: &Method, outcome: &Outcome) -> &mut Span {
        let Self { start, parent, request, span, .. } = self;
        span.get_or_insert_with(|| {
            let method_name = standard_method(method).unwrap_or("HTTP");
            let builder = SpanBuilder::from_name(method_name).with_kind(SpanKind::Server).with_start_time(*start);
            let parent = match parent {
                Some(sc) => Context::new().with_remote_span_context(sc.clone()),
                None => Context::new(),
            };
            let mut span = tracer.build_with_context(builder, &parent);
            if span.is_recording() {
                if let Some(rule) = &outcome.rule {
                    span.update_name(format!("{method_name} {}", rule.route.label()));
                }
                if let Some(request) = request.take() {
                    span.set_attributes(attributes(method, &request, outcome));
                }
            }
            span
        })
    }
}

/// The span's attributes, known once the upstream is picked.
fn attributes(method: &Method, request: &Arrived, outcome: &Outcome) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(18);
    match standard_method(method) {
        Some(m) => attributes.push(KeyValue::new("http.request.method", m)),
        None => {
            attributes.push(KeyValue::new("http.request.method", "_OTHER"));
            attributes.push(KeyValue::new("http.request.method_original", method.as_str().to_string()));
        }
    }
    attributes.push(KeyValue::new("url.path", request.uri.path().to_string()));
    attributes.push(KeyValue::new("url.scheme", outcome.scheme.unwrap_or("http")));
    // The authority the request is routed by: the URI's, else Host.
    let authority = request.uri.authority().map(|a| a.as_str()).or_else(|| request.host.as_ref()?.to_str().ok());
    if let Some(authority) = authority.filter(|a| !a.is_empty()) {
        attributes.push(KeyValue::new("server.address", host_without_port(authority).to_ascii_lowercase()));
        if let Some(port) = explicit_port(authority) {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    if let Ok(ip) = request.client.to_str() {
        attributes.push(KeyValue::new("client.address", ip.to_string()));
    }
    if let Some(v) = protocol_version(request.version) {
        attributes.push(KeyValue::new("network.protocol.version", v));
    }
    if let Some(ua) = request.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    if let Some(rule) = &outcome.rule {
        attributes.push(KeyValue::new("http.route", rule.route.label().to_string()));
        attributes.push(KeyValue::new("sluice.rule", i64::try_from(rule.index).unwrap_or(i64::MAX)));
    }
    if let Some(b) = &outcome.backend {
        attributes.push(KeyValue::new("sluice.backend", b.to_string()));
    }
    if let Some(addr) = outcome.upstream {
        attributes.push(KeyValue::new("network.peer.address", addr.ip().to_canonical().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(addr.port())));
    }
    attributes
}

/// The method as the semantic conventions want it; `None` for a method
/// outside the standard set (`_OTHER`).
pub(crate) fn standard_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// The port written in an authority (`host:port`, `[v6]:port`).
fn explicit_port(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        return None; // `[::1]` without a port
    }
    port.parse().ok()
}

/// A short, low-cardinality name for `error.type`.
fn error_type(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::BadRequest(_) => "bad_request",
        ProxyError::BodyTooLarge => "body_too_large",
        ProxyError::NoListener => "no_listener",
        ProxyError::NoRoute => "no_route",
        ProxyError::Misdirected => "misdirected",
        ProxyError::InvalidBackend { .. } => "invalid_backend",
        ProxyError::NoBackends { .. } => "no_backends",
        ProxyError::NoEndpoints { .. } => "no_endpoints",
        ProxyError::Connect { .. } => "connect_error",
        ProxyError::Upstream { .. } => "upstream_error",
        ProxyError::Timeout { .. } => "timeout",
        ProxyError::Internal(_) => "internal",
    }
}

/// Parses the single `traceparent` header (W3C Trace Context §3.2: version
/// 00 is exactly 55 characters, later versions may append `-` fields; ids are
/// lowercase hex and not all zeros; version `ff` is invalid). Only the
/// sampled flag is kept.
fn parse_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let v = value.as_bytes();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u128(&v[0..2])?;
    let valid_len = match version {
        0 => v.len() == TRACEPARENT_LEN,
        0xff => false,
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    let trace_id = hex_u128(&v[3..35])?;
    let span_id = hex_u128(&v[36..52])?;
    let flags = hex_u128(&v[53..55])?;
    if !valid_len || trace_id == 0 || span_id == 0 {
        return None;
    }
    let span_id = u64::try_from(span_id).ok()?;
    let flags = u8::try_from(flags).ok()?;
    Some((
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// Lowercase hex (at most 32 digits) to a number.
fn hex_u128(s: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

/// The `tracestate` list (several header lines are one list); an invalid
/// list is dropped, as the spec allows.
fn parse_tracestate(headers: &HeaderMap) -> TraceState {
    let mut values = headers.get_all(TRACESTATE).iter().filter_map(|v| v.to_str().ok());
    let joined: Cow<'_, str> = match (values.next(), values.next()) {
        (None, _) => return TraceState::default(),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let mut all = format!("{first},{second}");
            for v in values {
                all.push(',');
                all.push_str(v);
            }
            Cow::Owned(all)
        }
    };
    joined.parse().unwrap_or_default()
}

/// `00-{trace id}-{span id}-{flags}`.
fn traceparent(sc: &SpanContext) -> HeaderValue {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(TRACEPARENT_LEN);
    let _ = write!(s, "00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
    // Hex digits and dashes only.
    HeaderValue::try_from(s).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            h.append(name, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
        }
        h
    }

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let (t, s, f) = parse_traceparent(&headers(&[("traceparent", VALID)])).unwrap_or_else(|| panic!("valid"));
        assert_eq!(t.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s.to_string(), "b7ad6b7169203331");
        assert!(f.is_sampled());
        let (_, _, f) = parse_traceparent(&headers(&[("traceparent", &VALID.replace("-01", "-00"))]))
            .unwrap_or_else(|| panic!("valid"));
        assert!(!f.is_sampled());
        // A later version may carry more fields.
        let v2 = format!("{}-extra", VALID.replacen("00-", "01-", 1));
        assert!(parse_traceparent(&headers(&[("traceparent", &v2)])).is_some());
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01extra",
            "00-1-2-01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(&headers(&[("traceparent", bad)])).is_none(), "{bad:?}");
        }
        assert!(parse_traceparent(&headers(&[("traceparent", VALID), ("traceparent", VALID)])).is_none());
    }

    #[test]
    fn tracestate_lines_form_one_list() {
        let ts = parse_tracestate(&headers(&[("tracestate", "a=1,b=2"), ("tracestate", "c=3")]));
        assert_eq!(ts.header(), "a=1,b=2,c=3");
        assert_eq!(parse_tracestate(&HeaderMap::new()).header(), "");
    }

    #[test]
    fn formats_traceparent() {
        let sc = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(traceparent(&sc), "00-01010101010101010101010101010101-0202020202020202-01");
    }

    #[test]
    fn ports_come_only_from_the_authority() {
        assert_eq!(explicit_port("example.com:8080"), Some(8080));
        assert_eq!(explicit_port("example.com"), None);
        assert_eq!(explicit_port("[::1]:81"), Some(81));
        assert_eq!(explicit_port("[::1]"), None);
    }
}
