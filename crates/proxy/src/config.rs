//! Static data-plane settings ([`ProxyConfig`]), read once at startup.

use std::time::Duration;

/// Static settings of the data plane. Routes are dynamic and come from the
/// snapshot instead; these never change while the proxy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Upper bound on a graceful drain (shutdown, or a socket removed by
    /// reconcile): connections still open after it are closed. Default 30 s.
    pub drain_timeout: Duration,
    /// Timeout for establishing a TCP connection to an endpoint; exceeding it
    /// answers 502. Default 5 s.
    pub connect_timeout: Duration,
    /// Default time limit for the upstream to answer with response headers,
    /// for rules without `timeouts.request`. A rule's `timeouts.request`
    /// overrides it and zero (here or there) disables it; exceeding it
    /// answers 504. Default `None` (no limit).
    pub request_timeout: Option<Duration>,
    /// How long an idle pooled upstream connection is kept. Default 90 s.
    pub idle_upstream_timeout: Duration,
    /// Limit on request headers: HTTP/1.1 read buffer size (at least 8 KiB)
    /// and HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`. Default 64 KiB.
    pub max_request_header_bytes: usize,
    /// Largest request body accepted. A larger `Content-Length` answers 413
    /// before anything is sent upstream; a streamed body that grows past it
    /// is cut off and answers 413 if no response has started. Default `None`
    /// (no limit).
    pub max_request_body_bytes: Option<u64>,
    /// Record per-request metrics (`http_requests_total`,
    /// `http_request_duration_seconds`). Default `true`; turning it off
    /// exists to measure what the metrics cost.
    pub request_metrics: bool,
}

// === impl ProxyConfig ===

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            idle_upstream_timeout: Duration::from_secs(90),
            max_request_header_bytes: 64 * 1024,
            max_request_body_bytes: None,
            request_metrics: true,
        }
    }
}
