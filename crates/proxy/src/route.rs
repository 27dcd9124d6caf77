//! Routing: the request's authority, and the lookup in the route table.

use http::header::{HOST, HeaderValue};
use http::{Request, Version};
use sluice_model::{BindKey, NoRoute, RequestParts, RouteMatch, RouteTable};

use crate::error::ProxyError;

/// The authority a request is routed by and forwarded with: the URI's
/// authority when present (HTTP/2 `:authority`, HTTP/1.1 absolute-form,
/// where RFC 9112 §3.2.2 says Host is ignored), else the single `Host`
/// header. Its value is kept exactly as received, port and case included.
pub(crate) fn authority<B>(req: &Request<B>) -> Result<HeaderValue, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest("invalid authority"));
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) if !h.is_empty() => Ok(h.clone()),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("multiple host headers")),
        _ if req.version() == Version::HTTP_2 => Err(ProxyError::BadRequest("missing :authority")),
        _ => Err(ProxyError::BadRequest("missing host header")),
    }
}

/// Looks the request up in the table for socket `key`. `sni` is the
/// server name of the connection's TLS handshake (`None` on plain HTTP or
/// without SNI); on a TLS socket it enables the 421 misdirected check.
pub(crate) fn lookup<'t, B>(
    table: &'t RouteTable,
    key: &BindKey,
    req: &Request<B>,
    authority: &HeaderValue,
    sni: Option<&str>,
) -> Result<RouteMatch<'t>, ProxyError> {
    let bind = table.bind(key).ok_or(ProxyError::NoListener)?;
    let authority = authority.to_str().map_err(|_| ProxyError::BadRequest("non-ascii host"))?;
    let parts = RequestParts {
        authority,
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
    };
    let found = if sni.is_some() { bind.lookup_tls(&parts, sni) } else { bind.lookup(&parts) };
    found.map_err(|e| match e {
        NoRoute::NoListener => ProxyError::NoListener,
        NoRoute::NoMatch => ProxyError::NoRoute,
        NoRoute::Misdirected => ProxyError::Misdirected,
    })
}

pub(crate) use sluice_model::host::strip_port as host_without_port;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_or_uri_authority() -> Result<(), http::Error> {
        let req = Request::get("/x").header("host", "Example.com:8080").body(())?;
        assert_eq!(authority(&req).ok(), Some(HeaderValue::from_static("Example.com:8080")));
        let req = Request::get("http://h2.example/x").version(Version::HTTP_2).body(())?;
        assert_eq!(authority(&req).ok(), Some(HeaderValue::from_static("h2.example")));
        let req = Request::get("/x").body(())?;
        assert!(matches!(authority(&req), Err(ProxyError::BadRequest(_))));
        let req = Request::get("/x").header("host", "a").header("host", "b").body(())?;
        assert!(matches!(authority(&req), Err(ProxyError::BadRequest(_))));
        Ok(())
    }

    #[test]
    fn port_is_stripped_case_is_kept() {
        assert_eq!(host_without_port("Example.com:8080"), "Example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
    }
}
