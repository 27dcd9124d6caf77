//! Hop-by-hop header removal (both directions) and the `X-Forwarded-*`
//! headers added to requests.

use http::header::{
    CONNECTION, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// `Keep-Alive` (RFC 9112 §9.6 names it hop-by-hop).
pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The non-standard `Proxy-Connection`.
pub(crate) const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");
const TRAILERS_VALUE: HeaderValue = HeaderValue::from_static("trailers");

/// Hop-by-hop headers that are always removed (RFC 9110 §7.6.1, RFC 9112
/// §9.6); `TE` and `Upgrade` get special treatment.
const HOP_BY_HOP: [HeaderName; 6] =
    [KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TRAILER, TRANSFER_ENCODING];

/// What the request-side strip found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stripped {
    /// The request asks for a protocol upgrade (`Connection: upgrade` plus
    /// `Upgrade`), which was kept for the upstream.
    pub(crate) upgrade: bool,
}

/// Removes the hop-by-hop headers of a request. When `allow_upgrade` (an
/// HTTP/1.1 request) and the client asks for an upgrade, `Upgrade` is kept
/// and `Connection: upgrade` re-added so the upstream sees the handshake.
/// `TE: trailers` survives; any other `TE` is dropped.
pub(crate) fn strip_request(headers: &mut HeaderMap, allow_upgrade: bool) -> Stripped {
    if !any_hop_by_hop(headers) {
        // The common case: one pass over the names instead of a hashed
        // lookup per hop-by-hop name.
        return Stripped { upgrade: false };
    }
    let upgrade_token = strip_connection(headers);
    let te_trailers = headers.get_all(TE).iter().any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("trailers")));
    if te_trailers {
        headers.insert(TE, TRAILERS_VALUE);
    } else {
        headers.remove(TE);
    }
    let upgrade = allow_upgrade && upgrade_token && headers.contains_key(UPGRADE);
    if upgrade {
        headers.insert(CONNECTION, UPGRADE_VALUE);
    } else {
        headers.remove(UPGRADE);
    }
    Stripped { upgrade }
}

/// Removes the hop-by-hop headers of a response. A `101 Switching
/// Protocols` answer to an upgrade keeps `Upgrade` and `Connection: upgrade`.
pub(crate) fn strip_response(headers: &mut HeaderMap, switching: bool) {
    if !switching && !any_hop_by_hop(headers) {
        return;
    }
    strip_connection(headers);
    headers.remove(TE);
    if switching {
        headers.insert(CONNECTION, UPGRADE_VALUE);
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether any header the strips act on is present: `Connection`, `TE`,
/// `Upgrade` or one of [`HOP_BY_HOP`]. Headers a `Connection` value lists
/// only matter when `Connection` itself is present.
fn any_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| *k == CONNECTION || *k == TE || *k == UPGRADE || HOP_BY_HOP.contains(k))
}

/// Removes `Connection`, every header it names and the fixed hop-by-hop
/// list; returns whether `Connection` carried the `upgrade` token.
fn strip_connection(headers: &mut HeaderMap) -> bool {
    let mut upgrade = false;
    let mut values = headers.get_all(CONNECTION).iter();
    match (values.next().cloned(), values.next().is_some()) {
        (None, _) => {}
        (Some(first), false) => {
            headers.remove(CONNECTION);
            upgrade = remove_listed(headers, &first);
        }
        (Some(_), true) => {
            // Rare: several Connection lines; copy them out before removal.
            let all: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
            headers.remove(CONNECTION);
            for v in &all {
                upgrade |= remove_listed(headers, v);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    upgrade
}

/// Removes the headers a `Connection` value lists, except `upgrade`, whose
/// presence is returned.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue) -> bool {
    let mut upgrade = false;
    for token in tokens(connection) {
        if token.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive") {
            // `&str` keys are parsed on the stack; invalid names match nothing.
            headers.remove(token);
        }
    }
    upgrade
}

/// Comma-separated tokens of a list header, trimmed, empty ones skipped.
fn tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str().unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Adds `X-Forwarded-For` (appending `client_ip` to any existing list),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`, and makes `Host` the
/// authority the request was routed by.
pub(crate) fn forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str, host: &HeaderValue) {
    let mut existing = headers.get_all(X_FORWARDED_FOR).iter();
    let xff = match existing.next() {
        None => client_ip.clone(),
        Some(first) => {
            let mut joined = Vec::with_capacity(first.len() + client_ip.len() + 2);
            joined.extend_from_slice(first.as_bytes());
            for v in existing {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            // Joining valid values with ", " keeps the value valid.
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(X_FORWARDED_HOST, host.clone());
    headers.insert(HOST, host.clone());
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one, joined
/// with `"; "` (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests;
