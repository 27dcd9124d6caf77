//! What happened to a request, recorded once its response body ends (or is
//! dropped): metrics, the trace span and the access log line when enabled.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Method, StatusCode, Uri};
use hyper::body::{Body, Frame, SizeHint};
use sluice_model::Rule;

use crate::access_log::AccessLine;
use crate::body::ResponseBody;
use crate::metrics::RequestLabels;
use crate::server::Shared;
use crate::trace::RequestTrace;

/// Routing facts gathered while a request is handled.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The matched rule.
    pub(crate) rule: Option<Arc<Rule>>,
    /// `namespace/name:port` of the picked backend.
    pub(crate) backend: Option<Arc<str>>,
    /// The picked endpoint.
    pub(crate) upstream: Option<SocketAddr>,
    /// Time until the upstream's response headers arrived.
    pub(crate) upstream_elapsed: Option<Duration>,
    /// `http` or `https`: the matched listener's protocol.
    pub(crate) scheme: Option<&'static str>,
    /// Rate limit results still needed (Redis decisions, response headers).
    pub(crate) ratelimit: crate::ratelimit::Checked,
}

/// Request facts only the access log needs (captured only when it is on).
#[derive(Debug)]
pub(crate) struct AccessFields {
    pub(crate) time: SystemTime,
    pub(crate) client: HeaderValue,
    pub(crate) host: HeaderValue,
    pub(crate) uri: Uri,
    pub(crate) version: http::Version,
}

/// Everything needed to record the request at the end.
pub(crate) struct Finish {
    pub(crate) shared: Arc<Shared>,
    pub(crate) start: Instant,
    pub(crate) method: Method,
    pub(crate) status: StatusCode,
    pub(crate) outcome: Outcome,
    pub(crate) access: Option<AccessFields>,
    /// The request's span state, when tracing is on.
    pub(crate) trace: Option<Box<RequestTrace>>,
}

/// The response body handed to hyper: streams the inner body, counts its
/// bytes and records the request when the stream ends or is dropped.
pub(crate) struct ObservedBody {
    inner: ResponseBody,
    bytes: u64,
    finish: Option<Finish>,
}

// === impl Finish ===

impl Finish {
    fn record(self, bytes: u64, completed: bool) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let o = &self.outcome;
        let labels = RequestLabels {
            status: self.status,
            method: &self.method,
            route: o.rule.as_ref().map_or("", |r| r.route.label()),
            rule: o.rule.as_ref().map_or("", |r| r.index_label()),
            backend: o.backend.as_deref().unwrap_or(""),
        };
        if self.shared.config.request_metrics {
            self.shared.metrics.record(&labels, elapsed, now);
        }
        let trace_id = match (self.trace, &self.shared.tracer) {
            (Some(t), Some(tracer)) => t.finish(tracer, &self.method, self.status, &self.outcome),
            _ => None,
        };
        if let (Some(log), Some(a)) = (&self.shared.access_log, self.access) {
            let line = AccessLine {
                time: a.time,
                client: a.client,
                method: self.method,
                host: a.host,
                uri: a.uri,
                version: a.version,
                status: self.status,
                bytes,
                duration: elapsed,
                upstream_duration: self.outcome.upstream_elapsed,
                route: self.outcome.rule.as_ref().map(|r| (r.route.clone(), r.index)),
                backend: self.outcome.backend,
                upstream: self.outcome.upstream,
                completed,
                trace_id,
            };
            log.send(line, &self.shared.metrics);
        }
    }
}

// === impl ObservedBody ===

impl ObservedBody {
    pub(crate) fn new(inner: ResponseBody, finish: Finish) -> Self {
        // Inline, not boxed: no allocation per request for recording it.
        Self { inner, bytes: 0, finish: Some(finish) }
    }

    fn done(&mut self, completed: bool) {
        if let Some(f) = self.finish.take() {
            f.record(self.bytes, completed);
        }
    }
}

impl std::fmt::Debug for ObservedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").field("inner", &self.inner).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.remaining() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done(true);
                }
            }
            Some(Err(_)) => this.done(false),
            None => this.done(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body hyper never polled to the end (HEAD, 304, client gone):
        // still counted, as completed only if nothing was left to send.
        let complete = self.inner.is_end_stream();
        self.done(complete);
    }
}
