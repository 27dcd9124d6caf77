//! Access log: one JSON line per request, formatted and written by a
//! background task fed through a bounded queue. When the writer falls
//! behind, lines are dropped and counted (`sluice_access_log_dropped_total`),
//! never waited for.
//!
//! Fields: `time` (RFC 3339, UTC, ms), `client` (peer IP), `method`,
//! `host` (as received), `path` (path and query as received), `proto`,
//! `status`, `bytes` (response body bytes sent), `duration_ms` (arrival to
//! last byte), `upstream_ms` (time to the upstream's response headers, or
//! null), `route` (`namespace/name`), `rule`, `backend`
//! (`namespace/name:port`), `upstream` (endpoint address), `completed`
//! (false when the response was cut short), `trace_id` (32 hex digits when
//! the request's span is sampled, else null).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode, Uri, Version};
use opentelemetry::trace::TraceId;
use sluice_model::RouteRef;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Queue length before lines are dropped.
pub const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// Handle to the access log writer.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessLine>,
}

/// One request, as queued for the writer (formatting happens there).
#[derive(Debug)]
pub(crate) struct AccessLine {
    pub(crate) time: SystemTime,
    pub(crate) client: HeaderValue,
    pub(crate) method: Method,
    pub(crate) host: HeaderValue,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) status: StatusCode,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream_duration: Option<Duration>,
    pub(crate) route: Option<(Arc<RouteRef>, usize)>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) completed: bool,
    pub(crate) trace_id: Option<TraceId>,
}

// === impl AccessLog ===

impl AccessLog {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(target: AccessLogTarget) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, mut rx) = mpsc::channel::<AccessLine>(QUEUE);
        tokio::task::spawn_blocking(move || {
            let mut buf = String::with_capacity(64 * 1024);
            while let Some(line) = rx.blocking_recv() {
                buf.clear();
                line.write_json(&mut buf);
                // Batch whatever else is already queued into one write.
                while buf.len() < 60 * 1024 {
                    match rx.try_recv() {
                        Ok(next) => next.write_json(&mut buf),
                        Err(_) => break,
                    }
                }
                if out.write_all(buf.as_bytes()).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        });
        Ok(Self { tx })
    }

    pub(crate) fn send(&self, line: AccessLine, metrics: &Metrics) {
        if self.tx.try_send(line).is_err() {
            metrics.access_log_dropped.inc();
        }
    }
}

// === impl AccessLine ===

impl AccessLine {
    /// Appends the JSON line (with newline) to `out`.
    pub(crate) fn write_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"time\":\"");
        rfc3339(self.time, out);
        out.push_str("\",\"client\":");
        json_str(self.client.to_str().unwrap_or(""), out);
        out.push_str(",\"method\":");
        json_str(self.method.as_str(), out);
        out.push_str(",\"host\":");
        json_str(&String::from_utf8_lossy(self.host.as_bytes()), out);
        out.push_str(",\"path\":");
        json_str(self.uri.path_and_query().map_or("/", |p| p.as_str()), out);
        out.push_str(",\"proto\":");
        json_str(&format!("{:?}", self.version), out);
        let _ = write!(
            out,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"upstream_ms\":",
            self.status.as_u16(),
            self.bytes,
            self.duration.as_secs_f64() * 1e3
        );
        match self.upstream_duration {
            Some(d) => {
                let _ = write!(out, "{:.3}", d.as_secs_f64() * 1e3);
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"route\":");
        match &self.route {
            Some((r, i)) => {
                json_str(r.label(), out);
                let _ = write!(out, ",\"rule\":{i}");
            }
            None => out.push_str("null,\"rule\":null"),
        }
        out.push_str(",\"backend\":");
        match &self.backend {
            Some(b) => json_str(b, out),
            None => out.push_str("null"),
        }
        out.push_str(",\"upstream\":");
        match &self.upstream {
            Some(a) => json_str(&a.to_string(), out),
            None => out.push_str("null"),
        }
        let _ = write!(out, ",\"completed\":{},\"trace_id\":", self.completed);
        match &self.trace_id {
            Some(t) => {
                let _ = write!(out, "\"{t}\"");
            }
            None => out.push_str("null"),
        }
        out.push_str("}\n");
    }
}

fn json_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
pub fn rfc3339(t: SystemTime, out: &mut String) {
    use std::fmt::Write as _;
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since_epoch.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        let mut s = String::new();
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_305_600_123), &mut s);
        assert_eq!(s, "2026-11-22T00:00:00.123Z");
        s.clear();
        rfc3339(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_line_is_one_json_object() -> Result<(), Box<dyn std::error::Error>> {
        let line = AccessLine {
            time: UNIX_EPOCH + Duration::from_secs(1),
            client: HeaderValue::from_static("127.0.0.1"),
            method: Method::POST,
            host: HeaderValue::from_static("a\"b"),
            uri: "/x?q=1".parse()?,
            version: Version::HTTP_11,
            status: StatusCode::CREATED,
            bytes: 12,
            duration: Duration::from_micros(1500),
            upstream_duration: None,
            route: Some((Arc::new(RouteRef::new("HTTPRoute", "ns".into(), "r".into())), 2)),
            backend: Some("ns/svc:80".into()),
            upstream: Some("127.0.0.1:9".parse()?),
            completed: true,
            trace_id: Some(TraceId::from_bytes([0xab; 16])),
        };
        let mut s = String::new();
        line.write_json(&mut s);
        assert!(s.ends_with("}\n") && s.matches('\n').count() == 1, "{s}");
        for want in [
            "\"time\":\"1970-01-01T00:00:01.000Z\"",
            "\"method\":\"POST\"",
            "\"path\":\"/x?q=1\"",
            "\"host\":\"a\\\"b\"",
            "\"status\":201",
            "\"duration_ms\":1.500",
            "\"upstream_ms\":null",
            "\"route\":\"ns/r\",\"rule\":2",
            "\"backend\":\"ns/svc:80\"",
            "\"upstream\":\"127.0.0.1:9\"",
            "\"completed\":true,\"trace_id\":\"abababababababababababababababab\"}",
        ] {
            assert!(s.contains(want), "{want} missing in {s}");
        }
        let untraced = AccessLine { trace_id: None, ..line };
        s.clear();
        untraced.write_json(&mut s);
        assert!(s.ends_with(",\"completed\":true,\"trace_id\":null}\n"), "{s}");
        Ok(())
    }
}
