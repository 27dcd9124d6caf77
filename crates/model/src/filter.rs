//! Gateway API HTTPRoute filters, precompiled: header names and values are
//! parsed once at compile time, never per request.

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::path::replace_prefix;

/// One filter of a rule (or of a backendRef), applied in order.
#[derive(Clone, Debug)]
pub enum Filter {
    /// `RequestHeaderModifier`.
    RequestHeaders(HeaderModifier),
    /// `ResponseHeaderModifier`.
    ResponseHeaders(HeaderModifier),
    /// `RequestRedirect`: answers the request without a backend.
    Redirect(Redirect),
    /// `URLRewrite`: changes Host and/or path before forwarding.
    Rewrite(Rewrite),
    /// A rate limit (`RateLimitPolicy` or Ingress annotations), checked
    /// before every other filter of the rule.
    RateLimit(std::sync::Arc<crate::ratelimit::RateLimit>),
}

/// `set`, `add` and `remove` actions on a header map.
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    /// Overwrites the header with this value.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appends a value to any existing ones.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Removes the header (names are case-insensitive).
    pub remove: Vec<HeaderName>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug)]
pub enum PathModifier {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: replaces the matched PathPrefix.
    Prefix(String),
}

/// `RequestRedirect`.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's scheme.
    pub scheme: Option<String>,
    /// `None` keeps the request's host.
    pub hostname: Option<String>,
    /// Explicit port; `None` derives it (semantics §3.2).
    pub port: Option<u16>,
    /// Path change; `None` keeps the path.
    pub path: Option<PathModifier>,
    /// Status code, 302 by default.
    pub status: StatusCode,
}

/// `URLRewrite`.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    /// Replacement Host header.
    pub hostname: Option<HeaderValue>,
    /// Path change.
    pub path: Option<PathModifier>,
}

// === impl HeaderModifier ===

impl HeaderModifier {
    /// Applies set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

// === impl PathModifier ===

impl PathModifier {
    /// The new path for `path`, given the PathPrefix that matched (without
    /// trailing slash), if any.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix(repl) => match matched_prefix {
                Some(prefix) => replace_prefix(path, prefix, repl),
                // Translation only allows ReplacePrefixMatch with a
                // PathPrefix match; without one the path is kept.
                None => path.to_string(),
            },
        }
    }
}

// === impl Redirect ===

impl Redirect {
    /// Builds the `Location` value.
    ///
    /// `scheme` is the request's scheme, `host` the request host without
    /// port, `listener_port` the Gateway listener's port.
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        // "If redirect scheme is not-empty, the redirect port MUST be the
        // well-known port associated with the redirect scheme ... If redirect
        // scheme is empty, the redirect port MUST be the Gateway Listener port."
        let port = self.port.unwrap_or(match self.scheme.as_deref() {
            Some("http") => 80,
            Some("https") => 443,
            _ => listener_port,
        });
        let host = self.hostname.as_deref().unwrap_or(host);
        let new_path = match &self.path {
            Some(m) => m.apply(path, matched_prefix),
            None => path.to_string(),
        };
        let default_port = matches!((scheme_out, port), ("http", 80) | ("https", 443));
        let mut loc = String::with_capacity(scheme_out.len() + host.len() + new_path.len() + 16);
        loc.push_str(scheme_out);
        loc.push_str("://");
        if host.contains(':') {
            loc.push('[');
            loc.push_str(host);
            loc.push(']');
        } else {
            loc.push_str(host);
        }
        if !default_port {
            loc.push(':');
            loc.push_str(&port.to_string());
        }
        loc.push_str(&new_path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect { scheme: scheme.map(str::to_string), hostname: None, port, path: None, status: StatusCode::FOUND }
    }

    #[test]
    fn redirect_port_and_scheme_rules() {
        // HTTPRouteRedirectPortAndScheme expectations (semantics §3.2).
        let cases = [
            ("http", 80, None, None, "http://example.org/"),
            ("http", 80, None, Some(8080), "http://example.org:8080/"),
            ("http", 80, Some("https"), None, "https://example.org/"),
            ("http", 80, Some("https"), Some(8443), "https://example.org:8443/"),
            ("http", 8080, None, None, "http://example.org:8080/"),
            ("http", 8080, Some("https"), None, "https://example.org/"),
            ("https", 443, None, None, "https://example.org/"),
            ("https", 443, Some("http"), None, "http://example.org/"),
        ];
        for (req_scheme, lport, scheme, port, want) in cases {
            let r = redirect(scheme, port);
            assert_eq!(r.location(req_scheme, "example.org", lport, "/", None, None), want);
        }
    }

    #[test]
    fn redirect_prefix_replacement_keeps_query() {
        let mut r = redirect(None, None);
        r.path = Some(PathModifier::Prefix("/new".into()));
        let loc = r.location("http", "a.com", 80, "/old/x", Some("q=1"), Some("/old"));
        assert_eq!(loc, "http://a.com/new/x?q=1");
    }

    #[test]
    fn header_modifier_sets_adds_and_removes_case_insensitively() {
        let m = HeaderModifier {
            set: vec![(HeaderName::from_static("x-header-set"), HeaderValue::from_static("set"))],
            add: vec![(HeaderName::from_static("x-header-add"), HeaderValue::from_static("b"))],
            remove: vec![HeaderName::from_static("x-header-remove")],
        };
        let mut h = HeaderMap::new();
        h.insert("X-Header-Set", HeaderValue::from_static("old"));
        h.insert("x-header-add", HeaderValue::from_static("a"));
        h.insert("X-HEADER-REMOVE", HeaderValue::from_static("gone"));
        m.apply(&mut h);
        assert_eq!(h.get("x-header-set").map(HeaderValue::as_bytes), Some(&b"set"[..]));
        let added: Vec<_> = h.get_all("x-header-add").iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(added, vec![&b"a"[..], &b"b"[..]]);
        assert!(!h.contains_key("x-header-remove"));
    }
}
