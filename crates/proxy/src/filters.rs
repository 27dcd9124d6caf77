//! Gateway API filters: request side (header modifier, URL rewrite,
//! redirect) before forwarding, response headers after.

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderValue, LOCATION};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use sluice_model::{Filter, PathModifier};

use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::route::host_without_port;

/// What the request-side filters need besides the request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FilterCtx<'a> {
    /// `http` or `https`, from the listener protocol.
    pub(crate) scheme: &'static str,
    /// The listener's port, for redirects without an explicit port.
    pub(crate) listener_port: u16,
    /// The authority as received (before any rewrite).
    pub(crate) authority: &'a HeaderValue,
    /// The PathPrefix that matched, for `ReplacePrefixMatch`.
    pub(crate) matched_prefix: Option<&'a str>,
}

/// Applies the request-side filters in order. A `RequestRedirect` ends the
/// request: its response is returned and later filters do not run.
pub(crate) fn apply_request<B>(
    filters: &[Filter],
    req: &mut Request<B>,
    ctx: &FilterCtx<'_>,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    for filter in filters {
        match filter {
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            // Checked in `server.rs` before any filter runs.
            Filter::ResponseHeaders(_) | Filter::RateLimit(_) => {}
            Filter::Rewrite(rw) => {
                if let Some(host) = &rw.hostname {
                    req.headers_mut().insert(HOST, host.clone());
                }
                if let Some(path) = &rw.path {
                    rewrite_path(req, path, ctx.matched_prefix)?;
                }
            }
            Filter::Redirect(r) => {
                let host = ctx.authority.to_str().map_err(|_| ProxyError::BadRequest("non-ascii host"))?;
                let uri = req.uri();
                let location = r.location(
                    ctx.scheme,
                    host_without_port(host),
                    ctx.listener_port,
                    uri.path(),
                    uri.query(),
                    ctx.matched_prefix,
                );
                let location = HeaderValue::from_maybe_shared(Bytes::from(location))
                    .map_err(|_| ProxyError::Internal("redirect location is not a valid header value"))?;
                let mut resp = Response::new(ResponseBody::full(Bytes::new()));
                *resp.status_mut() = r.status;
                resp.headers_mut().insert(LOCATION, location);
                return Ok(Some(resp));
            }
        }
    }
    Ok(None)
}

/// Applies the `ResponseHeaderModifier` filters, in order.
pub(crate) fn apply_response(filters: &[Filter], headers: &mut HeaderMap) {
    for filter in filters {
        if let Filter::ResponseHeaders(m) = filter {
            m.apply(headers);
        }
    }
}

/// Replaces the request path, keeping the query string.
fn rewrite_path<B>(req: &mut Request<B>, path: &PathModifier, matched_prefix: Option<&str>) -> Result<(), ProxyError> {
    let uri = req.uri();
    let mut new = path.apply(uri.path(), matched_prefix);
    if let Some(q) = uri.query() {
        new.push('?');
        new.push_str(q);
    }
    let pq = PathAndQuery::from_maybe_shared(Bytes::from(new))
        .map_err(|_| ProxyError::Internal("rewritten path is not a valid URI path"))?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::Internal("rewritten URI is invalid"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use sluice_model::{Redirect, Rewrite};

    fn ctx(authority: &HeaderValue) -> FilterCtx<'_> {
        FilterCtx { scheme: "http", listener_port: 8080, authority, matched_prefix: Some("/old") }
    }

    #[test]
    fn prefix_rewrite_keeps_query_and_sets_host() -> Result<(), Box<dyn std::error::Error>> {
        let authority = HeaderValue::from_static("a.example");
        let mut req = Request::get("/old/x?q=1").header("host", "a.example").body(())?;
        let rw = Rewrite {
            hostname: Some(HeaderValue::from_static("b.internal")),
            path: Some(PathModifier::Prefix("/new".into())),
        };
        let out = apply_request(&[Filter::Rewrite(rw)], &mut req, &ctx(&authority))?;
        assert!(out.is_none());
        assert_eq!(req.uri(), "/new/x?q=1");
        assert_eq!(req.headers().get(HOST), Some(&HeaderValue::from_static("b.internal")));
        Ok(())
    }

    #[test]
    fn redirect_uses_listener_port_and_strips_request_port() -> Result<(), Box<dyn std::error::Error>> {
        let authority = HeaderValue::from_static("A.example:8080");
        let mut req = Request::get("/old/x?q=1").body(())?;
        let r = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: Some(PathModifier::Prefix("/new".into())),
            status: StatusCode::MOVED_PERMANENTLY,
        };
        let resp = apply_request(&[Filter::Redirect(r)], &mut req, &ctx(&authority))?.ok_or("no redirect")?;
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            resp.headers().get(LOCATION).map(HeaderValue::as_bytes),
            Some(&b"http://A.example:8080/new/x?q=1"[..])
        );
        Ok(())
    }
}
