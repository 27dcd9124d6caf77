//! Hostname patterns: exact names, wildcards (`*.example.com`) and "any".

use std::borrow::Cow;
use std::fmt;

/// A hostname pattern, always stored lowercase.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches every host (an empty or unset hostname).
    Any,
    /// Matches exactly this host.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    ///
    /// Gateway API wildcards match one or more labels; Ingress wildcards
    /// match exactly one (`single_label`).
    Wildcard {
        /// The suffix including its leading dot, e.g. `.example.com`.
        suffix: String,
        /// Whether the wildcard covers exactly one DNS label (Ingress).
        single_label: bool,
    },
}

// === impl HostPattern ===

impl HostPattern {
    /// Parses a Gateway API hostname (`""` or `None` means any).
    pub fn gateway(s: Option<&str>) -> Self {
        Self::parse(s, false)
    }

    /// Parses an Ingress rule host (`*.foo.com` covers a single label).
    pub fn ingress(s: Option<&str>) -> Self {
        Self::parse(s, true)
    }

    fn parse(s: Option<&str>, single_label: bool) -> Self {
        match s.map(str::trim) {
            None | Some("") | Some("*") => Self::Any,
            Some(h) => {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => Self::Wildcard { suffix: suffix.to_string(), single_label },
                    None => Self::Exact(h),
                }
            }
        }
    }

    /// Whether `host` (lowercase, no port) matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(h) => h == host,
            Self::Wildcard { suffix, single_label } => match host.strip_suffix(suffix.as_str()) {
                Some(label) if !label.is_empty() => !*single_label || !label.contains('.'),
                _ => false,
            },
        }
    }

    /// Specificity for ordering: exact beats wildcard beats any; among
    /// wildcards, more dots to the right of `*` win, then a longer suffix.
    pub fn specificity(&self) -> (u8, usize, usize) {
        match self {
            Self::Exact(h) => (2, h.matches('.').count(), h.len()),
            Self::Wildcard { suffix, .. } => (1, suffix.matches('.').count(), suffix.len()),
            Self::Any => (0, 0, 0),
        }
    }

    /// Gateway API hostname intersection of a listener hostname and a route
    /// hostname; `None` when they do not intersect.
    ///
    /// Semantics §1.2: the more specific of the two wins when one covers
    /// the other.
    pub fn intersect(listener: &Self, route: &Self) -> Option<Self> {
        match (listener, route) {
            (Self::Any, r) => Some(r.clone()),
            (l, Self::Any) => Some(l.clone()),
            (Self::Exact(l), Self::Exact(r)) => (l == r).then(|| listener.clone()),
            (Self::Exact(l), w @ Self::Wildcard { .. }) => w.matches(l).then(|| listener.clone()),
            (w @ Self::Wildcard { .. }, Self::Exact(r)) => w.matches(r).then(|| route.clone()),
            (Self::Wildcard { suffix: l, .. }, Self::Wildcard { suffix: r, .. }) => {
                if r.ends_with(l.as_str()) {
                    Some(route.clone())
                } else if l.ends_with(r.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard { suffix, .. } => write!(f, "*{suffix}"),
        }
    }
}

/// The host of an authority without its port, case kept: `Example.com:80`
/// gives `Example.com`, `[::1]:80` gives `::1`.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Normalizes a Host header or `:authority` for matching: drops the port,
/// a trailing dot, and lowercases (borrowing when already lowercase).
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = strip_port(authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> HostPattern {
        HostPattern::gateway(Some(s))
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_in_gateway_api() {
        assert!(g("*.example.com").matches("foo.bar.example.com"));
        assert!(g("*.example.com").matches("bar.example.com"));
        assert!(!g("*.example.com").matches("example.com"));
    }

    #[test]
    fn ingress_wildcard_covers_a_single_label() {
        let w = HostPattern::ingress(Some("*.foo.com"));
        assert!(w.matches("bar.foo.com"));
        assert!(!w.matches("baz.bar.foo.com"));
        assert!(!w.matches("foo.com"));
    }

    #[test]
    fn hostname_intersection_table() {
        // site/content/en/docs/concepts/hostnames.md
        let cases = [
            ("www.example.com", "www.example.com", Some("www.example.com")),
            ("*.example.com", "www.example.com", Some("www.example.com")),
            ("*.example.com", "sub.domain.example.com", Some("sub.domain.example.com")),
            ("www.example.com", "*.example.com", Some("www.example.com")),
            ("sub.domain.example.com", "*.example.com", Some("sub.domain.example.com")),
            ("*.example.com", "*.example.com", Some("*.example.com")),
            ("*.com", "*.example.com", Some("*.example.com")),
            ("", "www.example.com", Some("www.example.com")),
            ("", "", Some("*")),
            ("*.example.com", "example.com", None),
            ("*.example.com", "test.example.net", None),
            ("very.specific.com", "*.nonmatchingwildcard.io", None),
        ];
        for (l, r, want) in cases {
            let got = HostPattern::intersect(&g(l), &g(r)).map(|h| h.to_string());
            assert_eq!(got.as_deref(), want, "listener {l:?} route {r:?}");
        }
    }

    #[test]
    fn host_header_port_is_ignored_and_case_folded() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(strip_port("Example.com:8080"), "Example.com");
        assert_eq!(strip_port("[::1]"), "::1");
    }
}
