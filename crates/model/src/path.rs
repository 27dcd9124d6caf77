//! Path matching rules (Gateway API `PathMatchType`, Ingress `pathType`).

use regex::Regex;

/// How a route matches the request path (query string excluded).
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Case-sensitive exact match: `/abc` matches only `/abc`.
    Exact(String),
    /// Element-wise prefix; stored without a trailing `/` (`/` itself is
    /// stored as the empty string), since "a trailing `/` is ignored".
    Prefix(String),
    /// A full-match regular expression (anchored at compile time).
    Regex(Regex),
}

// === impl PathMatch ===

impl PathMatch {
    /// A prefix match, normalising the trailing slash away.
    pub fn prefix(p: &str) -> Self {
        Self::Prefix(p.trim_end_matches('/').to_string())
    }

    /// A regular expression that must match the whole path.
    pub fn regex(re: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{re})$")).map(Self::Regex)
    }

    /// Whether `path` (no query) satisfies this match.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

/// Element-wise prefix test: `prefix` carries no trailing slash.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Replaces the matched `prefix` (no trailing slash) of `path` with
/// `replacement`, on element boundaries (semantics §3.3 table).
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = if prefix_matches(prefix, path) { &path[prefix.len()..] } else { path };
    let repl = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(repl.len() + rest.len() + 1);
    out.push_str(repl);
    if rest.is_empty() {
        if out.is_empty() {
            out.push('/');
        }
    } else {
        out.push_str(rest);
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_on_element_boundaries() {
        let p = PathMatch::prefix("/abc");
        for ok in ["/abc", "/abc/", "/abc/def"] {
            assert!(p.matches(ok), "{ok}");
        }
        assert!(!p.matches("/abcd"));
        let slash = PathMatch::prefix("/abc/");
        assert!(slash.matches("/abc"), "trailing slash on the prefix is ignored");
        assert!(PathMatch::prefix("/").matches("/anything"));
        assert!(PathMatch::prefix("/").matches("/"));
    }

    #[test]
    fn exact_is_case_and_slash_sensitive() {
        let p = PathMatch::Exact("/abc".into());
        assert!(p.matches("/abc"));
        for no in ["/abc/", "/Abc", "/abcd"] {
            assert!(!p.matches(no), "{no}");
        }
    }

    #[test]
    fn regex_is_anchored() -> Result<(), regex::Error> {
        let p = PathMatch::regex("/v[0-9]+/.*")?;
        assert!(p.matches("/v1/x"));
        assert!(!p.matches("/api/v1/x"));
        Ok(())
    }

    #[test]
    fn replace_prefix_match_table() {
        // httproute_types.go HTTPPathModifier.ReplacePrefixMatch
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
        ];
        for (path, prefix, repl, want) in cases {
            let prefix = prefix.trim_end_matches('/');
            assert_eq!(replace_prefix(path, prefix, repl), want, "{path} {prefix} {repl}");
        }
    }
}
