//! Table-driven precedence tests, one block per rule of semantics §1–3.

use super::*;
use crate::backend::{BackendId, WeightedBackend};

struct Fixture {
    input: TableInput,
}

fn gw_listener(host: &str) -> ListenerInput {
    ListenerInput {
        bind: BindKey { gateway: None, port: 80 },
        name: format!("ns/gw/{host}").into(),
        hostname: HostPattern::gateway(Some(host)),
        port: 80,
        protocol: Protocol::Http,
        precedence: Precedence::GatewayApi,
        order: 0,
    }
}

fn rule(route: &str, index: usize, backend: u32) -> Arc<Rule> {
    Arc::new(Rule {
        route: Arc::new(RouteRef::new("HTTPRoute", "ns".into(), route.into())),
        index,
        filters: Arc::new([]),
        backends: BackendGroup::new(vec![WeightedBackend {
            target: BackendTarget::Service(BackendId(backend)),
            weight: 1,
            filters: Arc::new([]),
        }]),
        request_timeout: None,
        backend_timeout: None,
    })
}

fn m(path: PathMatch) -> MatchInput {
    MatchInput { path, conditions: Conditions::default() }
}

fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.into())
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::prefix(p)
}

impl Fixture {
    fn new(listeners: Vec<ListenerInput>) -> Self {
        Self { input: TableInput { listeners, ..TableInput::default() } }
    }

    /// Adds a route with one rule per (matches, backend) on `listener`.
    fn route(&mut self, listener: usize, name: &str, created: i64, hosts: &[&str], rules: Vec<(Vec<MatchInput>, u32)>) {
        let lh = self.input.listeners[listener].hostname.clone();
        let hostnames =
            hosts.iter().filter_map(|h| HostPattern::intersect(&lh, &HostPattern::gateway(Some(h)))).collect();
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, (matches, backend))| RuleInput { rule: rule(name, i, backend), matches })
            .collect();
        self.input.routes.push(RouteInput {
            listener,
            route: Arc::new(RouteRef::new("HTTPRoute", "ns".into(), name.into())),
            created,
            hostnames,
            rules,
            fallback: false,
        });
    }

    fn table(&self) -> RouteTable {
        RouteTable::compile(self.input.clone(), 1)
    }
}

/// Routes `method host path?query [headers]` and returns the backend id.
fn route(t: &RouteTable, method: &str, host: &str, target: &str, headers: &[(&str, &str)]) -> Option<u32> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(HeaderName::from_bytes(k.as_bytes()).ok()?, v.parse().ok()?);
    }
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let req = RequestParts { authority: host, path, query, method: &method, headers: &h };
    let bind = t.bind(&BindKey { gateway: None, port: 80 })?;
    let found = bind.lookup(&req).ok()?;
    match found.rule.backends.backends().first()?.target {
        BackendTarget::Service(BackendId(id)) => Some(id),
        BackendTarget::Invalid => None,
    }
}

#[test]
fn path_match_order_conformance() {
    // HTTPRoutePathMatchOrder manifest and expectations (semantics §1.3).
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(
        0,
        "r",
        0,
        &[],
        vec![
            (vec![m(exact("/match/exact/one"))], 3),
            (vec![m(exact("/match/exact"))], 2),
            (vec![m(exact("/match"))], 1),
            (vec![m(prefix("/match/prefix/one"))], 2),
            (vec![m(prefix("/match/prefix/"))], 1),
            (vec![m(prefix("/match/"))], 3),
        ],
    );
    let t = f.table();
    let cases = [
        ("/match/exact/one", 3),
        ("/match/exact", 2),
        ("/match", 1),
        ("/match/prefix/one/any", 2),
        ("/match/prefix/any", 1),
        ("/match/any", 3),
    ];
    for (path, want) in cases {
        assert_eq!(route(&t, "GET", "example.com", path, &[]), Some(want), "{path}");
    }
}

#[test]
fn prefix_on_element_boundaries_and_exact_strictness() {
    // HTTPRouteMatching / HTTPRouteExactPathMatching.
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(0, "r", 0, &[], vec![(vec![m(prefix("/"))], 1), (vec![m(prefix("/v2"))], 2), (vec![m(exact("/two"))], 3)]);
    let t = f.table();
    for (path, want) in [
        ("/v2", Some(2)),
        ("/v2/", Some(2)),
        ("/v2/example", Some(2)),
        ("/v2example", Some(1)),
        ("/two", Some(3)),
        ("/two/", Some(1)),
        ("/Two", Some(1)),
    ] {
        assert_eq!(route(&t, "GET", "x", path, &[]), want, "{path}");
    }
    let mut only_exact = Fixture::new(vec![gw_listener("")]);
    only_exact.route(0, "r", 0, &[], vec![(vec![m(exact("/one"))], 1)]);
    let t = only_exact.table();
    assert_eq!(route(&t, "GET", "x", "/one/", &[]), None);
    assert_eq!(route(&t, "GET", "x", "/one", &[]), Some(1));
}

#[test]
fn failed_conditions_on_the_deepest_node_fall_back_to_a_shorter_prefix() {
    // The trap from the issue: A = PathPrefix /foo + header x:1, B = PathPrefix /.
    let mut f = Fixture::new(vec![gw_listener("")]);
    let with_header = MatchInput {
        path: prefix("/foo"),
        conditions: Conditions {
            headers: vec![HeaderMatch { name: HeaderName::from_static("x"), value: ValueMatch::Exact("1".into()) }],
            ..Conditions::default()
        },
    };
    f.route(0, "a", 0, &[], vec![(vec![with_header], 1)]);
    f.route(0, "b", 0, &[], vec![(vec![m(prefix("/"))], 2)]);
    let t = f.table();
    assert_eq!(route(&t, "GET", "h", "/foo/bar", &[("x", "1")]), Some(1));
    assert_eq!(route(&t, "GET", "h", "/foo/bar", &[]), Some(2));
    assert_eq!(route(&t, "GET", "h", "/foo", &[("X", "1")]), Some(1), "header names are case-insensitive");
}

#[test]
fn method_then_headers_then_query_count_break_ties() {
    let mut f = Fixture::new(vec![gw_listener("")]);
    let hdr =
        |n: &'static str, v: &str| HeaderMatch { name: HeaderName::from_static(n), value: ValueMatch::Exact(v.into()) };
    let qry = |n: &str, v: &str| QueryMatch { name: n.into(), value: ValueMatch::Exact(v.into()) };
    f.route(
        0,
        "r",
        0,
        &[],
        vec![
            (
                vec![MatchInput {
                    path: prefix("/"),
                    conditions: Conditions { query: vec![qry("a", "1"), qry("b", "2")], ..Default::default() },
                }],
                1,
            ),
            (
                vec![MatchInput {
                    path: prefix("/"),
                    conditions: Conditions { headers: vec![hdr("h", "1")], ..Default::default() },
                }],
                2,
            ),
            (
                vec![MatchInput {
                    path: prefix("/"),
                    conditions: Conditions { method: Some(Method::POST), ..Default::default() },
                }],
                3,
            ),
            (vec![m(prefix("/"))], 4),
        ],
    );
    let t = f.table();
    // POST with header and queries: method wins over header count and query count.
    assert_eq!(route(&t, "POST", "h", "/x?a=1&b=2", &[("h", "1")]), Some(3));
    // Header count beats query count.
    assert_eq!(route(&t, "GET", "h", "/x?a=1&b=2", &[("h", "1")]), Some(2));
    assert_eq!(route(&t, "GET", "h", "/x?a=1&b=2", &[]), Some(1));
    // Query names are case-sensitive; first value counts.
    assert_eq!(route(&t, "GET", "h", "/x?A=1&b=2", &[]), Some(4));
    assert_eq!(route(&t, "GET", "h", "/x?a=1&b=3&b=2", &[]), Some(4));
    assert_eq!(route(&t, "GET", "h", "/x?a=%31&b=2", &[]), Some(1), "values are percent-decoded");
    assert_eq!(route(&t, "HEAD", "h", "/", &[]), Some(4));
}

#[test]
fn older_route_then_name_then_rule_order_break_remaining_ties() {
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(0, "zzz-old", 1, &[], vec![(vec![m(prefix("/a"))], 1)]);
    f.route(0, "aaa-new", 2, &[], vec![(vec![m(prefix("/a"))], 2)]);
    f.route(0, "bbb-same-age", 2, &[], vec![(vec![m(prefix("/b"))], 3)]);
    f.route(0, "aaa-same-age", 2, &[], vec![(vec![m(prefix("/b"))], 4), (vec![m(prefix("/b"))], 5)]);
    let t = f.table();
    assert_eq!(route(&t, "GET", "h", "/a", &[]), Some(1), "oldest wins");
    assert_eq!(route(&t, "GET", "h", "/b", &[]), Some(4), "alphabetical, then first rule");
}

#[test]
fn regex_paths_rank_below_exact_and_prefix() -> Result<(), regex::Error> {
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(
        0,
        "r",
        0,
        &[],
        vec![
            (vec![m(PathMatch::regex("/api/v[0-9]+/.*")?)], 1),
            (vec![m(prefix("/api"))], 2),
            (vec![m(PathMatch::regex("/x[0-9]")?)], 3),
        ],
    );
    let t = f.table();
    assert_eq!(route(&t, "GET", "h", "/api/v1/users", &[]), Some(2));
    assert_eq!(route(&t, "GET", "h", "/x1", &[]), Some(3), "regex reachable where no radix node exists");
    assert_eq!(route(&t, "GET", "h", "/x12", &[]), None);
    Ok(())
}

#[test]
fn listener_isolation_picks_exactly_one_listener() {
    // GatewayHTTPListenerIsolation: a request matching the exact listener
    // never falls through to the wildcard listener's routes.
    let mut f = Fixture::new(vec![
        gw_listener(""),
        gw_listener("*.example.com"),
        gw_listener("*.foo.example.com"),
        gw_listener("abc.foo.example.com"),
    ]);
    f.route(0, "empty", 0, &[], vec![(vec![m(prefix("/empty-hostname"))], 0)]);
    f.route(1, "wc", 0, &[], vec![(vec![m(prefix("/wildcard-example-com"))], 1)]);
    f.route(2, "wcfoo", 0, &[], vec![(vec![m(prefix("/wildcard-foo-example-com"))], 2)]);
    f.route(3, "abc", 0, &[], vec![(vec![m(prefix("/abc-foo-example-com"))], 3)]);
    let t = f.table();
    let cases = [
        ("bar.com", "/empty-hostname", Some(0)),
        ("bar.com", "/wildcard-example-com", None),
        ("bar.example.com", "/wildcard-example-com", Some(1)),
        ("bar.example.com", "/empty-hostname", None),
        ("bar.foo.example.com", "/wildcard-foo-example-com", Some(2)),
        ("bar.foo.example.com", "/wildcard-example-com", None),
        ("abc.foo.example.com", "/abc-foo-example-com", Some(3)),
        ("abc.foo.example.com", "/wildcard-foo-example-com", None),
        ("ABC.foo.example.com:8080", "/abc-foo-example-com", Some(3)),
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&t, "GET", host, path, &[]), want, "{host}{path}");
    }
}

#[test]
fn hostname_intersection_conformance() {
    // HTTPRouteHostnameIntersection (semantics §1.2).
    let mut f = Fixture::new(vec![
        gw_listener("very.specific.com"),
        gw_listener("*.wildcard.io"),
        gw_listener("*.anotherwildcard.io"),
    ]);
    for l in 0..3 {
        f.route(l, "r1", 0, &["very.specific.com", "*.nonmatchingwildcard.io"], vec![(vec![m(prefix("/s1"))], 1)]);
        f.route(l, "r3", 0, &["*.specific.com"], vec![(vec![m(prefix("/s3"))], 3)]);
    }
    // A route whose hostnames intersect nothing is not attached: the
    // translator drops it; simulate by only attaching where intersecting.
    f.input.routes.retain(|r| !r.hostnames.is_empty());
    let t = f.table();
    assert_eq!(route(&t, "GET", "very.specific.com", "/s1", &[]), Some(1));
    assert_eq!(route(&t, "GET", "very.specific.com:1234", "/s1", &[]), Some(1));
    assert_eq!(route(&t, "GET", "foo.wildcard.io", "/s1", &[]), None);
    assert_eq!(route(&t, "GET", "very.specific.com", "/s3", &[]), Some(3));
    assert_eq!(route(&t, "GET", "foo.specific.com", "/s3", &[]), None);
}

#[test]
fn more_specific_route_hostname_wins_then_falls_through() {
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(0, "wild", 0, &["*.example.com"], vec![(vec![m(prefix("/"))], 1)]);
    f.route(0, "exact", 5, &["foo.example.com"], vec![(vec![m(prefix("/only"))], 2)]);
    let t = f.table();
    assert_eq!(route(&t, "GET", "foo.example.com", "/only/x", &[]), Some(2));
    assert_eq!(route(&t, "GET", "foo.example.com", "/other", &[]), Some(1));
    assert_eq!(route(&t, "GET", "bar.example.com", "/only", &[]), Some(1));
    assert_eq!(route(&t, "GET", "example.com", "/only", &[]), None);
}

#[test]
fn ingress_path_examples_table() {
    // kubernetes.io ingress.md "Examples" (semantics §9.2); ImplementationSpecific = Prefix.
    let ingress = |paths: Vec<(PathMatch, u32)>| {
        let mut l = gw_listener("");
        l.precedence = Precedence::Ingress;
        let mut f = Fixture::new(vec![l]);
        f.route(0, "ing", 0, &[], paths.into_iter().map(|(p, b)| (vec![m(p)], b)).collect());
        f.table()
    };
    type Row = (Vec<(PathMatch, u32)>, &'static str, Option<u32>);
    let cases: Vec<Row> = vec![
        (vec![(prefix("/"), 1)], "/anything", Some(1)),
        (vec![(exact("/foo"), 1)], "/foo", Some(1)),
        (vec![(exact("/foo"), 1)], "/bar", None),
        (vec![(exact("/foo"), 1)], "/foo/", None),
        (vec![(exact("/foo/"), 1)], "/foo", None),
        (vec![(prefix("/foo"), 1)], "/foo", Some(1)),
        (vec![(prefix("/foo"), 1)], "/foo/", Some(1)),
        (vec![(prefix("/foo/"), 1)], "/foo", Some(1)),
        (vec![(prefix("/foo/"), 1)], "/foo/", Some(1)),
        (vec![(prefix("/aaa/bb"), 1)], "/aaa/bbb", None),
        (vec![(prefix("/aaa/bbb"), 1)], "/aaa/bbb", Some(1)),
        (vec![(prefix("/aaa/bbb/"), 1)], "/aaa/bbb", Some(1)),
        (vec![(prefix("/aaa/bbb"), 1)], "/aaa/bbb/", Some(1)),
        (vec![(prefix("/aaa/bbb"), 1)], "/aaa/bbb/ccc", Some(1)),
        (vec![(prefix("/aaa/bbb"), 1)], "/aaa/bbbxyz", None),
        (vec![(prefix("/"), 1), (prefix("/aaa"), 2)], "/aaa/ccc", Some(2)),
        (vec![(prefix("/"), 1), (prefix("/aaa"), 2), (prefix("/aaa/bbb"), 3)], "/aaa/bbb", Some(3)),
        (vec![(prefix("/"), 1), (prefix("/aaa"), 2), (prefix("/aaa/bbb"), 3)], "/ccc", Some(1)),
        (vec![(prefix("/aaa"), 1)], "/ccc", None),
        (vec![(prefix("/foo"), 1), (exact("/foo"), 2)], "/foo", Some(2)),
    ];
    for (paths, req, want) in cases {
        let desc = format!("{paths:?} {req}");
        let t = ingress(paths);
        assert_eq!(route(&t, "GET", "h", req, &[]), want, "{desc}");
    }
}

#[test]
fn describe_lists_every_candidate() {
    let mut f = Fixture::new(vec![gw_listener("")]);
    f.route(0, "r", 0, &["a.com"], vec![(vec![m(prefix("/x")), m(exact("/y"))], 1)]);
    let t = f.table();
    let d = t.describe();
    assert!(d.contains("host a.com"), "{d}");
    assert!(d.contains("PathPrefix /x -> HTTPRoute ns/r rule 0"), "{d}");
    assert!(d.contains("Exact /y"), "{d}");
    assert_eq!(t.candidate_count(), 2);
}

#[test]
fn catch_all_only_hosts_route_every_slash_path_without_a_radix_tree() {
    // Hosts whose candidates are all PathPrefix / skip the matchit tree:
    // every path starting with `/` matches in precedence order (conditions
    // still checked), other request targets do not, as with the tree.
    let mut f = Fixture::new(vec![gw_listener("")]);
    let with_header = MatchInput {
        path: prefix("/"),
        conditions: Conditions {
            headers: vec![HeaderMatch { name: HeaderName::from_static("x"), value: ValueMatch::Exact("1".into()) }],
            ..Conditions::default()
        },
    };
    f.route(0, "plain", 0, &["a.example"], vec![(vec![m(prefix("/"))], 1)]);
    f.route(0, "header", 0, &["a.example"], vec![(vec![with_header], 2)]);
    f.route(0, "mixed", 0, &["b.example"], vec![(vec![m(prefix("/")), m(exact("/x"))], 3)]);
    let t = f.table();
    for path in ["/", "/a", "/a/b/", "//", "/%7B"] {
        assert_eq!(route(&t, "GET", "a.example", path, &[]), Some(1), "{path}");
        assert_eq!(route(&t, "GET", "a.example", path, &[("x", "1")]), Some(2), "{path} with the header");
        assert_eq!(route(&t, "GET", "b.example", path, &[]), Some(3), "{path} (tree)");
    }
    for target in ["*", "", "a"] {
        assert_eq!(route(&t, "GET", "a.example", target, &[]), None, "{target:?}");
        assert_eq!(route(&t, "GET", "b.example", target, &[]), None, "{target:?} (tree)");
    }
}

#[test]
fn node_lists_follow_element_prefixes_for_odd_paths() -> Result<(), regex::Error> {
    // Compiling asserts (in this crate's tests) that every node's list is
    // exactly the candidates that apply to it; these paths stress the cuts.
    let mut f = Fixture::new(vec![gw_listener("*.example.com")]);
    let paths = ["/", "/a", "/a/b", "/a/b/c", "/ab", "/a//b", "/a/b/", "/x/{y}", "/%2F", "/a/bc", "nodash", "/a.b/c"];
    let mut rules = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let backend = u32::try_from(i).unwrap_or(u32::MAX);
        rules.push((vec![m(prefix(p))], backend));
        rules.push((vec![m(exact(p))], backend + 100));
    }
    rules.push((vec![m(PathMatch::regex("/a/.*")?)], 999));
    f.route(0, "odd", 0, &["www.example.com"], rules);
    let t = f.table();
    assert_eq!(route(&t, "GET", "www.example.com", "/a/b/c/d", &[]), Some(3));
    assert_eq!(route(&t, "GET", "www.example.com", "/a/b", &[]), Some(102));
    assert_eq!(route(&t, "GET", "www.example.com", "/a/bcd", &[]), Some(1));
    assert_eq!(route(&t, "GET", "www.example.com", "/zzz", &[]), Some(0));
    Ok(())
}
