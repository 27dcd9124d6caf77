//! Hop-by-hop and forwarding header tests.

use super::*;

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn names(h: &HeaderMap) -> Vec<&str> {
    let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    n.sort_unstable();
    n
}

#[test]
fn connection_listed_and_fixed_hop_by_hop_headers_are_removed() {
    let mut h = map(&[
        ("connection", "keep-alive, x-custom"),
        ("connection", "x-other"),
        ("x-custom", "1"),
        ("x-other", "2"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "secret"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-t"),
        ("te", "gzip"),
        ("upgrade", "websocket"),
        ("x-kept", "yes"),
    ]);
    let s = strip_request(&mut h, true);
    assert!(!s.upgrade, "no upgrade token in Connection");
    assert_eq!(names(&h), vec!["x-kept"]);
}

#[test]
fn te_trailers_survives() {
    let mut h = map(&[("te", "trailers, deflate")]);
    strip_request(&mut h, false);
    assert_eq!(h.get(TE), Some(&HeaderValue::from_static("trailers")));
}

#[test]
fn upgrade_is_kept_only_when_asked_for_and_allowed() {
    let ws = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let mut h = map(&ws);
    assert!(strip_request(&mut h, true).upgrade);
    assert_eq!(h.get(CONNECTION), Some(&HeaderValue::from_static("upgrade")));
    assert_eq!(h.get(UPGRADE), Some(&HeaderValue::from_static("websocket")));

    let mut h = map(&ws);
    assert!(!strip_request(&mut h, false).upgrade);
    assert!(h.is_empty());
}

#[test]
fn response_keeps_upgrade_only_when_switching() {
    let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket"), ("keep-alive", "x")]);
    strip_response(&mut h, true);
    assert_eq!(names(&h), vec!["connection", "upgrade"]);
    let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    strip_response(&mut h, false);
    assert!(h.is_empty());
}

#[test]
fn forwarded_headers_append_client_ip_and_set_host() {
    let ip = HeaderValue::from_static("10.0.0.9");
    let host = HeaderValue::from_static("Example.com:8080");
    let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
    forwarded(&mut h, &ip, "http", &host);
    assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    assert_eq!(h.get(X_FORWARDED_FOR), Some(&HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.9")));
    assert_eq!(h.get(X_FORWARDED_PROTO), Some(&HeaderValue::from_static("http")));
    assert_eq!(h.get(X_FORWARDED_HOST), Some(&host));
    assert_eq!(h.get(HOST), Some(&host));

    let mut h = HeaderMap::new();
    forwarded(&mut h, &ip, "https", &host);
    assert_eq!(h.get(X_FORWARDED_FOR), Some(&ip));
}

#[test]
fn h2_cookies_are_joined_for_http1() {
    let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
    join_cookies(&mut h);
    assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), vec![&HeaderValue::from_static("a=1; b=2")]);
}

#[test]
fn each_hop_by_hop_header_alone_is_removed() {
    // The strips skip their work when no hop-by-hop name is present; each
    // one alone must still trigger it, in both directions.
    for name in [
        "connection",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
    ] {
        let mut h = map(&[(name, "x"), ("x-kept", "yes")]);
        strip_request(&mut h, true);
        assert_eq!(names(&h), vec!["x-kept"], "request: {name}");
        let mut h = map(&[(name, "x"), ("x-kept", "yes")]);
        strip_response(&mut h, false);
        assert_eq!(names(&h), vec!["x-kept"], "response: {name}");
    }
    let mut h = map(&[("x-kept", "yes"), ("host", "a")]);
    assert!(!strip_request(&mut h, true).upgrade);
    assert_eq!(names(&h), vec!["host", "x-kept"]);
}
