//! [`ProxyError`]: every way a request can fail, and the response each one
//! becomes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use sluice_model::{RouteRef, ServiceRef};

use crate::body::ResponseBody;

/// Why a request could not be proxied. [`ProxyError::status`] maps each
/// variant to the status code the client receives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request has no usable Host / `:authority`, or another defect
    /// hyper let through (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `Content-Length` (or the streamed body) exceeds
    /// [`crate::ProxyConfig::max_request_body_bytes`] (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// No listener on this socket accepts the request's host (404).
    #[error("no listener for host")]
    NoListener,
    /// The listener has no rule matching the request (404).
    #[error("no route matched")]
    NoRoute,
    /// HTTPS: the Host belongs to another listener than the one the TLS
    /// handshake's SNI selected (421; the client retries on a new
    /// connection).
    #[error("misdirected request: host does not belong to the SNI's listener")]
    Misdirected,
    /// The picked backendRef is invalid; Gateway API answers its share of
    /// traffic with 500.
    #[error("invalid backendRef in {} {}/{}", .route.kind, .route.namespace, .route.name)]
    InvalidBackend {
        /// The route whose rule holds the backendRef.
        route: Arc<RouteRef>,
    },
    /// The rule has no backend with a non-zero weight and no redirect (500).
    #[error("no backends in {} {}/{}", .route.kind, .route.namespace, .route.name)]
    NoBackends {
        /// The route whose rule has no backends.
        route: Arc<RouteRef>,
    },
    /// The Service has no ready endpoint (503).
    #[error("no ready endpoints for {service}")]
    NoEndpoints {
        /// The Service port without endpoints (`?` when the id is unknown).
        service: ServiceRef,
    },
    /// Connecting to the endpoint failed or timed out (502).
    #[error("upstream {addr}: connect failed")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why: the socket's or the TLS handshake's error, or a timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream connection failed before a response arrived (502).
    #[error("upstream {addr}: request failed")]
    Upstream {
        /// The endpoint.
        addr: SocketAddr,
        /// The connection's error.
        #[source]
        source: hyper::Error,
    },
    /// The upstream did not answer within the rule's or the default timeout
    /// (504).
    #[error("upstream {addr}: no response within {timeout:?}")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// A bug or an impossible value, e.g. a rewrite producing an invalid
    /// path (500).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The client sent something unusable or unroutable.
    Downstream,
    /// The route or endpoint configuration cannot serve the request.
    Config,
    /// The backend could not be reached or did not answer in time.
    Upstream,
    /// The proxy itself.
    Internal,
}

// === impl ProxyError ===

impl ProxyError {
    /// The status code the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoListener | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::InvalidBackend { .. } | Self::NoBackends { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Where the failure came from.
    pub fn fault(&self) -> Fault {
        match self {
            Self::BadRequest(_) | Self::BodyTooLarge | Self::NoListener | Self::NoRoute | Self::Misdirected => {
                Fault::Downstream
            }
            Self::InvalidBackend { .. } | Self::NoBackends { .. } => Fault::Config,
            Self::NoEndpoints { .. } | Self::Connect { .. } | Self::Upstream { .. } | Self::Timeout { .. } => {
                Fault::Upstream
            }
            Self::Internal(_) => Fault::Internal,
        }
    }

    /// Whether another endpoint could be tried: only when nothing of the
    /// request reached the upstream (a failed connect).
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// The short plain-text body sent to the client.
    fn body(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad request\n",
            Self::BodyTooLarge => "request body too large\n",
            Self::NoListener | Self::NoRoute => "no route\n",
            Self::Misdirected => "misdirected request\n",
            Self::InvalidBackend { .. } => "invalid backend\n",
            Self::NoBackends { .. } => "no backends\n",
            Self::NoEndpoints { .. } => "no healthy upstream\n",
            Self::Connect { .. } | Self::Upstream { .. } => "upstream connect error\n",
            Self::Timeout { .. } => "upstream request timeout\n",
            Self::Internal(_) => "internal error\n",
        }
    }

    /// Logs the error: client faults at debug, the rest at warn — at most
    /// one warning per second per worker thread, the next one saying how
    /// many were left out (a dead backend under load would otherwise write
    /// a line per request; the metrics count every failure).
    pub(crate) fn log(&self) {
        let status = self.status().as_u16();
        if self.fault() == Fault::Downstream {
            tracing::debug!(status, error = %self, "request rejected");
            return;
        }
        if let Some(suppressed) = WARN_BUDGET.with(WarnBudget::take) {
            tracing::warn!(
                status,
                error = %self,
                source = ?std::error::Error::source(self),
                suppressed,
                "request failed"
            );
        }
    }

    /// The response the client receives.
    pub(crate) fn to_response(&self) -> Response<ResponseBody> {
        error_response(self.status(), self.body())
    }
}

/// One warning per [`WARN_EVERY`] per thread; counts what it held back.
struct WarnBudget {
    next: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

const WARN_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static WARN_BUDGET: WarnBudget =
        const { WarnBudget { next: std::cell::Cell::new(None), suppressed: std::cell::Cell::new(0) } };
}

impl WarnBudget {
    /// `Some(held back since the last warning)` when a warning may be
    /// written now.
    fn take(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.next.get().is_some_and(|next| now < next) {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.next.set(Some(now + WARN_EVERY));
        Some(self.suppressed.replace(0))
    }
}

/// A short `text/plain` response.
pub(crate) fn error_response(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_limited_per_second_and_count_what_they_held_back() {
        let budget = WarnBudget { next: std::cell::Cell::new(None), suppressed: std::cell::Cell::new(0) };
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), None);
        // The second is over: the next warning reports the two held back.
        budget.next.set(Some(std::time::Instant::now()));
        assert_eq!(budget.take(), Some(2));
        assert_eq!(budget.take(), None);
    }

    #[test]
    fn every_error_maps_to_its_status() {
        let route = Arc::new(RouteRef::new("HTTPRoute", "ns".into(), "r".into()));
        let service = ServiceRef { namespace: "ns".into(), name: "svc".into(), port: 80 };
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let cases = [
            (ProxyError::BadRequest("missing host"), 400),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::NoListener, 404),
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::InvalidBackend { route: route.clone() }, 500),
            (ProxyError::NoBackends { route }, 500),
            (ProxyError::NoEndpoints { service }, 503),
            (ProxyError::Timeout { addr, timeout: Duration::from_millis(1) }, 504),
            (ProxyError::Internal("x"), 500),
        ];
        for (err, want) in cases {
            assert_eq!(err.status().as_u16(), want, "{err}");
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), want);
            assert_eq!(resp.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes), Some(&b"text/plain"[..]));
        }
    }
}
