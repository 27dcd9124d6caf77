//! Gateway API conformance cases (v1.6.1 manifests and cases, written by the
//! Gateway API project, not by us) run end to end: real `sluice echo`
//! backends, a real `sluice run --isolate-gateways`, real HTTP with `curl`.
//!
//! One Sluice per test; every socket on 127.0.0.1 port 0, so tests run in
//! parallel.

mod support;

use std::collections::HashMap;

use support::cases::{self, Case, Target};
use support::golit::{self, Env};
use support::{ConformanceEnv, INFRA_NS, require_curl};

const SAME_NAMESPACE: &str = "gateway-conformance-infra/same-namespace";

/// Runs every case of `go_file` against Gateway `gateway` (port 80 listener).
fn run_on_gateway(test: &str, manifests: &[&str], go_file: &str, gateway: &str, min_cases: usize) {
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(manifests);
    let target = Target { addr: env.addr_of(gateway, 80), listener_port: 80 };
    let loaded = cases::load(go_file, &[]);
    let outcome = cases::run(&loaded, &|_| target);
    cases::assert_outcome(test, &loaded, &outcome, min_cases);
}

#[test]
fn go_literal_parser_handles_the_case_forms() {
    let env = Env::default().with("ns", "infra");
    let m = golit::parse(r#"map[string]string{ "Some-Other-Header": "val", "X": "a,b", }"#)
        .and_then(|e| e.string_map(&env));
    assert_eq!(m, Ok(vec![("Some-Other-Header".into(), "val".into()), ("X".into(), "a,b".into())]));
    let r = golit::parse(r#"http.Request{ Path: "/set", Host: ns, Headers: nil, }"#)
        .and_then(|e| e.struct_fields("http.Request"));
    assert_eq!(r.as_ref().map(Vec::len), Ok(3));
    let host = r.ok().and_then(|f| f.into_iter().find(|(k, _)| k == "Host")).map(|(_, v)| v.string(&env));
    assert_eq!(host, Some(Ok("infra".into())));
    assert_eq!(golit::parse("[]int{200, 204}").and_then(|e| e.int_list(&env)), Ok(vec![200, 204]));
    assert_eq!(
        golit::parse(r#"[]string{"X-A", "x-b"}"#).and_then(|e| e.string_list(&env)),
        Ok(vec!["X-A".into(), "x-b".into()])
    );
    assert_eq!(golit::parse(r#""/" + path"#).and_then(|e| e.string(&env.clone().with("path", "x"))), Ok("/x".into()));
    assert_eq!(golit::parse(r#""a\"b\\c""#).and_then(|e| e.string(&env)), Ok("a\"b\\c".into()));
    assert_eq!(golit::parse("`raw\\n`").and_then(|e| e.string(&env)), Ok("raw\\n".into()));
    // Unevaluable forms are errors, never guesses.
    assert!(golit::parse(r#""/" + path"#).and_then(|e| e.string(&env)).is_err());
    assert!(
        golit::parse(r#"path + "?" + values.Encode()"#).and_then(|e| e.string(&env.clone().with("path", "/"))).is_err()
    );
    assert!(golit::parse("tc.statusCode").and_then(|e| e.int(&env)).is_err());
    assert!(golit::parse(r#"map[string]string{"a": "b""#).is_err());
    // Forms that only need to parse.
    assert!(golit::parse(r#"[]http.MirroredBackend{ { BackendRef: http.BackendRef{ Name: a.B, Namespace: ns, }, Percent: new(int32(20)), }, }"#).is_ok());
    assert!(golit::parse(r#"map[string][]string{ "a": { "x", "y", }, "b": {"z"}, }"#).is_ok());

    // And the whole cases.json: every case of the tests below evaluates.
    for (file, loops) in [
        ("httproute-matching.go", &[][..]),
        ("httproute-request-header-modifier.go", &[][..]),
        ("httproute-response-header-modifier.go", &[][..]),
        ("httproute-rewrite-host.go", &[][..]),
        ("httproute-redirect-path.go", &[][..]),
        ("httproute-service-types.go", &[("path", &["headless"][..])][..]),
    ] {
        let loaded = cases::load(file, loops);
        assert!(loaded.skipped.is_empty(), "{file}: {:?}", loaded.skipped);
        assert!(!loaded.cases.is_empty(), "{file}: no cases");
    }
    let rh = cases::load("httproute-request-header-modifier.go", &[]);
    let c = &rh.cases[3];
    assert_eq!(c.request.path, "/add");
    let er = c.expected_request.as_ref().expect("expected request");
    assert!(er.headers.contains(&("X-Header-Add".into(), "some-other-value,add-appends-values".into())), "{er:?}");
    assert_eq!(c.backend, "infra-backend-v1");
    assert_eq!(c.namespace, INFRA_NS);
    let redirect = cases::load("httproute-redirect-port.go", &[]);
    assert_eq!(redirect.cases[1].redirect.as_ref().and_then(|r| r.port.clone()), Some("8083".into()));
    assert_eq!(redirect.cases[1].statuses, vec![302]);
}

/// The checker must be able to fail: mutated expectations are rejected.
#[test]
fn runner_rejects_wrong_expectations() {
    if !require_curl("runner_rejects_wrong_expectations") {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-request-header-modifier", "httproute-redirect-path"]);
    let target = Target { addr: env.addr_of(SAME_NAMESPACE, 80), listener_port: 80 };
    let send = |c: &Case| support::curl_retry(target.addr, &cases::request_for(c), std::time::Duration::from_secs(5));

    let loaded = cases::load("httproute-request-header-modifier.go", &[]);
    let good = loaded.cases[3].clone();
    let resp = send(&good);
    assert_eq!(cases::check(&good, target, &resp), Ok(()));
    let mut wrong = Vec::new();
    let mut c = good.clone();
    c.backend = "infra-backend-v2".into();
    wrong.push(("backend", c));
    let mut c = good.clone();
    c.namespace = "elsewhere".into();
    wrong.push(("namespace", c));
    let mut c = good.clone();
    c.statuses = vec![404];
    wrong.push(("status", c));
    let mut c = good.clone();
    if let Some(er) = c.expected_request.as_mut() {
        er.path = Some("/other".into());
    }
    wrong.push(("path", c));
    let mut c = good.clone();
    if let Some(er) = c.expected_request.as_mut() {
        er.headers.push(("X-Not-Sent".into(), "x".into()));
    }
    wrong.push(("header", c));
    let mut c = good.clone();
    if let Some(er) = c.expected_request.as_mut() {
        er.absent.push("Some-Other-Header".into());
    }
    wrong.push(("absent header", c));
    let mut c = good.clone();
    c.response_headers.push(("X-Not-There".into(), "x".into()));
    wrong.push(("response header", c));
    for (what, c) in &wrong {
        assert!(cases::check(c, target, &resp).is_err(), "a wrong {what} was not detected");
    }

    let loaded = cases::load("httproute-redirect-path.go", &[]);
    let good = loaded.cases[2].clone(); // /path-and-host -> 302 example.org/replacement-prefix
    let resp = send(&good);
    assert_eq!(cases::check(&good, target, &resp), Ok(()));
    for mutate in [
        |r: &mut cases::ExpectedRedirect| r.host = Some("example.com".into()),
        |r: &mut cases::ExpectedRedirect| r.path = Some("/elsewhere".into()),
        |r: &mut cases::ExpectedRedirect| r.scheme = Some("https".into()),
        |r: &mut cases::ExpectedRedirect| r.port = Some("8080".into()),
    ] {
        let mut c = good.clone();
        if let Some(r) = c.redirect.as_mut() {
            mutate(r);
        }
        assert!(
            cases::check(&c, target, &resp).is_err(),
            "a wrong redirect expectation was not detected: {:?}",
            c.redirect
        );
    }
}

#[test]
fn http_route_exact_path_matching() {
    run_on_gateway(
        "HTTPRouteExactPathMatching",
        &["httproute-exact-path-matching"],
        "httproute-exact-path-matching.go",
        SAME_NAMESPACE,
        6,
    );
}

#[test]
fn http_route_matching() {
    run_on_gateway("HTTPRouteMatching", &["httproute-matching"], "httproute-matching.go", SAME_NAMESPACE, 9);
}

#[test]
fn http_route_matching_across_routes() {
    run_on_gateway(
        "HTTPRouteMatchingAcrossRoutes",
        &["httproute-matching-across-routes"],
        "httproute-matching-across-routes.go",
        SAME_NAMESPACE,
        8,
    );
}

#[test]
fn http_route_header_matching() {
    run_on_gateway(
        "HTTPRouteHeaderMatching",
        &["httproute-header-matching"],
        "httproute-header-matching.go",
        SAME_NAMESPACE,
        11,
    );
}

#[test]
fn http_route_query_param_matching() {
    run_on_gateway(
        "HTTPRouteQueryParamMatching",
        &["httproute-query-param-matching"],
        "httproute-query-param-matching.go",
        SAME_NAMESPACE,
        19,
    );
}

#[test]
fn http_route_method_matching() {
    run_on_gateway(
        "HTTPRouteMethodMatching",
        &["httproute-method-matching"],
        "httproute-method-matching.go",
        SAME_NAMESPACE,
        12,
    );
}

#[test]
fn http_route_hostname_intersection() {
    let test = "HTTPRouteHostnameIntersection";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-hostname-intersection"]);
    let main = Target {
        addr: env.addr_of("gateway-conformance-infra/httproute-hostname-intersection", 80),
        listener_port: 80,
    };
    let all = Target {
        addr: env.addr_of("gateway-conformance-infra/httproute-hostname-intersection-all", 80),
        listener_port: 80,
    };
    // The Go test's last sub-test ("intersects with an unspecified hostname
    // listener") talks to the second Gateway.
    let to_all = ["first.com", "sub.first.com", "second.com", "sub.second.com", "third.com", "sub.third.com"];
    let loaded = cases::load("httproute-hostname-intersection.go", &[]);
    let outcome = cases::run(&loaded, &|c: &Case| {
        if to_all.contains(&c.request.host.as_deref().unwrap_or_default()) { all } else { main }
    });
    cases::assert_outcome(test, &loaded, &outcome, 33);
}

#[test]
fn http_route_listener_hostname_matching() {
    run_on_gateway(
        "HTTPRouteListenerHostnameMatching",
        &["httproute-listener-hostname-matching"],
        "httproute-listener-hostname-matching.go",
        "gateway-conformance-infra/httproute-listener-hostname-matching",
        8,
    );
}

#[test]
fn gateway_http_listener_isolation() {
    let test = "GatewayHTTPListenerIsolation";
    if !require_curl(test) {
        return;
    }
    // Both manifests of the test; the same cases run against each Gateway.
    let env = ConformanceEnv::start(&[
        "gateway-http-listener-isolation",
        "gateway-http-listener-isolation-with-hostname-intersection",
    ]);
    let loaded = cases::load("gateway-http-listener-isolation.go", &[]);
    let mut ran = 0;
    let mut failures = Vec::new();
    for gw in ["http-listener-isolation", "http-listener-isolation-with-hostname-intersection"] {
        let target = Target { addr: env.addr_of(&format!("{INFRA_NS}/{gw}"), 80), listener_port: 80 };
        let outcome = cases::run(&loaded, &|_| target);
        ran += outcome.ran;
        failures.extend(outcome.failures.into_iter().map(|f| format!("[{gw}] {f}")));
    }
    cases::assert_outcome(test, &loaded, &cases::Outcome { ran, failures }, 32);
}

#[test]
fn http_route_weight() {
    let test = "HTTPRouteWeight";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-weight"]);
    let addr = env.addr_of(SAME_NAMESPACE, 80);
    // The case from cases.json (GET / -> 200) first.
    let loaded = cases::load("httproute-weight.go", &[]);
    let outcome = cases::run(&loaded, &|_| Target { addr, listener_port: 80 });
    cases::assert_outcome(test, &loaded, &outcome, 1);

    // Then the distribution: 70/30/0 over 1,200 requests, 10 concurrent,
    // each with a random X-Jitter header (conformance/utils/weight).
    const TOTAL: usize = 1200;
    const CONCURRENCY: usize = 10;
    let rt = support::runtime();
    let (pods, errors) = rt.block_on(async move {
        let client = support::fast::Client::new();
        let mut tasks = Vec::new();
        for t in 0..CONCURRENCY {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut pods = Vec::new();
                let mut errors = Vec::new();
                for _ in 0..TOTAL / CONCURRENCY {
                    let jitter = format!("{:016x}", support::random_u64());
                    match client.get(addr, None, "/", &[("X-Jitter", jitter)]).await {
                        Ok(r) if r.status == 200 => match r.pod() {
                            Some(p) => pods.push(p),
                            None => errors.push(format!("task {t}: 200 without echo pod: {:?}", r.body)),
                        },
                        Ok(r) => errors.push(format!("task {t}: status {}", r.status)),
                        Err(e) => errors.push(format!("task {t}: {e}")),
                    }
                }
                (pods, errors)
            }));
        }
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            let (p, e) = t.await.expect("client task");
            pods.extend(p);
            errors.extend(e);
        }
        (pods, errors)
    });
    assert!(errors.is_empty(), "{} of {TOTAL} requests failed: {:?}", errors.len(), &errors[..errors.len().min(10)]);
    let mut by_backend: HashMap<&str, usize> = HashMap::new();
    for p in &pods {
        let b = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"]
            .into_iter()
            .find(|b| p.starts_with(b))
            .unwrap_or("other");
        *by_backend.entry(b).or_default() += 1;
    }
    let share = |b: &str| by_backend.get(b).copied().unwrap_or(0) as f64 / TOTAL as f64;
    eprintln!("{test}: distribution over {TOTAL}: {by_backend:?}");
    assert_eq!(by_backend.get("other"), None, "answers from unexpected pods: {by_backend:?}");
    assert_eq!(
        by_backend.get("infra-backend-v3"),
        None,
        "weight-0 backend infra-backend-v3 got traffic: {by_backend:?}"
    );
    assert!(
        (share("infra-backend-v1") - 0.70).abs() <= 0.05,
        "infra-backend-v1 share {:.3}, want 0.70±0.05: {by_backend:?}",
        share("infra-backend-v1")
    );
    assert!(
        (share("infra-backend-v2") - 0.30).abs() <= 0.05,
        "infra-backend-v2 share {:.3}, want 0.30±0.05: {by_backend:?}",
        share("infra-backend-v2")
    );
    drop(rt);
    // The backends and Sluice live until here.
    drop(env);
}

#[test]
fn http_route_request_header_modifier() {
    run_on_gateway(
        "HTTPRouteRequestHeaderModifier",
        &["httproute-request-header-modifier"],
        "httproute-request-header-modifier.go",
        SAME_NAMESPACE,
        7,
    );
}

#[test]
fn http_route_response_header_modification() {
    run_on_gateway(
        "HTTPRouteResponseHeaderModification",
        &["httproute-response-header-modifier"],
        "httproute-response-header-modifier.go",
        SAME_NAMESPACE,
        8,
    );
}

#[test]
fn http_route_redirect_host_and_status() {
    run_on_gateway(
        "HTTPRouteRedirectHostAndStatus",
        &["httproute-redirect-host-and-status"],
        "httproute-redirect-host-and-status.go",
        SAME_NAMESPACE,
        2,
    );
}

#[test]
fn http_route_redirect_path() {
    run_on_gateway(
        "HTTPRouteRedirectPath",
        &["httproute-redirect-path"],
        "httproute-redirect-path.go",
        SAME_NAMESPACE,
        6,
    );
}

#[test]
fn http_route_redirect_port() {
    run_on_gateway(
        "HTTPRouteRedirectPort",
        &["httproute-redirect-port"],
        "httproute-redirect-port.go",
        SAME_NAMESPACE,
        4,
    );
}

#[test]
fn http_route_redirect_scheme() {
    run_on_gateway(
        "HTTPRouteRedirectScheme",
        &["httproute-redirect-scheme"],
        "httproute-redirect-scheme.go",
        SAME_NAMESPACE,
        4,
    );
}

#[test]
fn http_route_rewrite_path() {
    run_on_gateway("HTTPRouteRewritePath", &["httproute-rewrite-path"], "httproute-rewrite-path.go", SAME_NAMESPACE, 6);
}

#[test]
fn http_route_rewrite_host() {
    run_on_gateway("HTTPRouteRewriteHost", &["httproute-rewrite-host"], "httproute-rewrite-host.go", SAME_NAMESPACE, 3);
}

#[test]
fn http_route_invalid_cross_namespace_backend_ref() {
    run_on_gateway(
        "HTTPRouteInvalidCrossNamespaceBackendRef",
        &["httproute-invalid-cross-namespace-backend-ref"],
        "httproute-invalid-cross-namespace-backend-ref.go",
        SAME_NAMESPACE,
        1,
    );
}

#[test]
fn http_route_service_types() {
    let test = "HTTPRouteServiceTypes";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-service-types"]);
    // The Go test loops `for _, path := range serviceTypes` over the Services
    // of the v1.6.1 manifest (its `manual-endpoints` kinds are not in it).
    let services = ["headless", "manual-endpointslices", "headless-manual-endpointslices"];
    for s in services {
        assert!(
            env.docs.iter().any(|d| d["kind"] == "Service" && d["metadata"]["name"] == s),
            "Service {s} is not in tests/httproute-service-types.yaml"
        );
    }
    let target = Target { addr: env.addr_of(SAME_NAMESPACE, 80), listener_port: 80 };
    let loaded = cases::load("httproute-service-types.go", &[("path", &services)]);
    let outcome = cases::run(&loaded, &|_| target);
    cases::assert_outcome(test, &loaded, &outcome, 3);
}

/// Not a conformance test of its own: the HTTPRouteExactPathMatching cases
/// again, over HTTP/2 with prior knowledge (h2c), to check that both
/// protocols reach the same routing.
#[test]
fn http_route_exact_path_matching_over_h2c() {
    let test = "HTTPRouteExactPathMatching (h2c)";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-exact-path-matching"]);
    let target = Target { addr: env.addr_of(SAME_NAMESPACE, 80), listener_port: 80 };
    let loaded = cases::load("httproute-exact-path-matching.go", &[]);
    let mut failures = Vec::new();
    for case in &loaded.cases {
        let mut req = cases::request_for(case);
        req.http2 = true;
        let result = support::curl(target.addr, &req).and_then(|r| cases::check(case, target, &r));
        if let Err(e) = result {
            failures.push(format!("{}: {e}", case.label()));
        }
    }
    assert!(loaded.cases.len() >= 6, "only {} cases", loaded.cases.len());
    assert!(failures.is_empty(), "{test}: {} failed:\n  {}", failures.len(), failures.join("\n  "));
}

// ---------------------------------------------------------------------------
// HTTPS listeners and certificateRefs. The Go tests drive these from tables
// of `tc` structs (not in cases.json), so the matrices below are the ones
// INDEX.md records for httproute-https-listener.go and
// httproute-https-listener-detect-misdirected-requests.go. The TLS Secrets
// the suite generates are generated by ConformanceEnv with rcgen.
// ---------------------------------------------------------------------------

const HTTPS_GATEWAY: &str = "gateway-conformance-infra/same-namespace-with-https-listener";

/// (SNI, Host, path, status, backend prefix or "") over `extra` (e.g. h2).
fn run_tls_matrix(test: &str, env: &ConformanceEnv, matrix: &[(&str, &str, &str, u16, &str)], extra: &[&str]) {
    let addr = env.addr_of(HTTPS_GATEWAY, 443);
    let mut failures = Vec::new();
    for &(sni, host, path, status, backend) in matrix {
        let got = support::wait_until(std::time::Duration::from_secs(5), || {
            support::tls::curl_https(addr, sni, Some(host), path, &env.ca.pem_path, extra).ok()
        });
        let Some(r) = got else {
            failures.push(format!("SNI {sni} Host {host}: no response"));
            continue;
        };
        if r.status != status || !r.pod().starts_with(backend) {
            failures.push(format!(
                "SNI {sni} Host {host} {path}: got {} from {:?}, want {status} from {backend:?}",
                r.status,
                r.pod()
            ));
        }
        if extra.contains(&"--http2") && r.http_version != "2" {
            failures.push(format!("SNI {sni} Host {host}: HTTP/{} instead of h2 (ALPN)", r.http_version));
        }
    }
    assert!(failures.is_empty(), "{test}: {} of {} failed:\n  {}", failures.len(), matrix.len(), failures.join("\n  "));
}

#[test]
fn http_route_https_listener() {
    let test = "HTTPRouteHTTPSListener";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-https-listener"]);
    let (conds, attached) = support::tls::listener_conditions(&env.sluice, HTTPS_GATEWAY, "https");
    assert_eq!(conds.get("ResolvedRefs").map(|c| c.0.as_str()), Some("True"), "{conds:?}");
    assert_eq!(conds.get("Programmed").map(|c| c.0.as_str()), Some("True"), "{conds:?}");
    assert_eq!(attached, 1);
    let v1 = "infra-backend-v1";
    let v2 = "infra-backend-v2";
    let matrix = [
        ("example.org", "example.org", "/", 200, v1),
        ("second-example.org", "second-example.org", "/", 200, v2),
        ("unknown-example.org", "unknown-example.org", "/", 404, ""),
    ];
    run_tls_matrix(test, &env, &matrix, &["--http1.1"]);
    run_tls_matrix(test, &env, &matrix, &["--http2"]);
}

#[test]
fn http_route_https_listener_detect_misdirected_requests() {
    let test = "HTTPRouteHTTPSListenerDetectMisdirectedRequests";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-https-listener-detect-misdirected-requests"]);
    let p = "/detect-misdirected-requests";
    let (v1, v2, v3) = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3");
    let matrix = [
        ("example.org", "example.org", p, 200, v1),
        ("example.org", "second-example.org", p, 421, ""),
        ("example.org", "unknown-example.org", p, 404, ""),
        ("second-example.org", "second-example.org", p, 200, v2),
        ("second-example.org", "example.org", p, 421, ""),
        ("second-example.org", "unknown-example.org", p, 421, ""),
        ("third-example.wildcard.org", "third-example.wildcard.org", p, 200, v3),
        ("third-example.wildcard.org", "fith-example.wildcard.org", p, 200, v3),
        ("third-example.wildcard.org", "fourth-example.wildcard.org", p, 421, ""),
        ("third-example.wildcard.org", "example.org", p, 421, ""),
        ("third-example.wildcard.org", "second-example.org", p, 421, ""),
        ("third-example.wildcard.org", "unknown-example.org", p, 421, ""),
        ("fourth-example.wildcard.org", "fourth-example.wildcard.org", p, 200, v1),
        ("fourth-example.wildcard.org", "fith-example.wildcard.org", p, 421, ""),
        ("unknown-example.org", "example.org", p, 200, v1),
        ("unknown-example.org", "unknown-example.org", p, 404, ""),
    ];
    // The Go test uses HTTP/2 (roundtripper.H2Protocol).
    run_tls_matrix(test, &env, &matrix, &["--http2"]);
}

/// Listener `https` conditions of each `(gateway, status, reason)` through
/// the binary (`/diagnostics`): ResolvedRefs and Programmed follow
/// `status`, and an unresolved listener has no attached routes.
fn check_https_listeners(test: &str, env: &ConformanceEnv, expect: &[(&str, &str, &str)]) {
    let mut failures = Vec::new();
    for &(name, status, reason) in expect {
        let (conds, attached) = support::tls::listener_conditions(&env.sluice, &format!("{INFRA_NS}/{name}"), "https");
        let resolved = conds.get("ResolvedRefs").cloned().unwrap_or_default();
        if resolved != (status.to_string(), reason.to_string()) {
            failures.push(format!("{name}: ResolvedRefs {resolved:?}, want ({status}, {reason})"));
        }
        let programmed = conds.get("Programmed").map(|c| c.0.clone()).unwrap_or_default();
        if programmed != status {
            failures.push(format!("{name}: Programmed {programmed}, want {status}"));
        }
        if status == "False" && attached != 0 {
            failures.push(format!("{name}: attachedRoutes {attached}, want 0"));
        }
    }
    assert!(failures.is_empty(), "{test}:\n  {}", failures.join("\n  "));
}

/// GatewayInvalidTLSConfiguration: missing Secret, wrong group, wrong kind,
/// malformed Secret → InvalidCertificateRef; the valid HTTPS Gateway keeps
/// serving beside them.
#[test]
fn gateway_invalid_tls_configuration() {
    let test = "GatewayInvalidTLSConfiguration";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["gateway-invalid-tls-configuration", "httproute-https-listener"]);
    let bad = "InvalidCertificateRef";
    check_https_listeners(
        test,
        &env,
        &[
            ("gateway-certificate-nonexistent-secret", "False", bad),
            ("gateway-certificate-unsupported-group", "False", bad),
            ("gateway-certificate-unsupported-kind", "False", bad),
            ("gateway-certificate-malformed-secret", "False", bad),
            ("same-namespace-with-https-listener", "True", "ResolvedRefs"),
        ],
    );
    let ok = support::tls::curl_https(env.addr_of(HTTPS_GATEWAY, 443), "example.org", None, "/", &env.ca.pem_path, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((ok.status, ok.pod().starts_with("infra-backend-v1")), (200, true), "{ok:?}");
}

/// GatewaySecret*ReferenceGrant*: a cross-namespace certificateRef needs a
/// ReferenceGrant for Secrets (all, or that one by name); a permitted one is
/// served.
#[test]
fn gateway_secret_reference_grants() {
    let test = "GatewaySecret*ReferenceGrant*";
    if !require_curl(test) || !support::tls::require_tool("openssl", test) {
        return;
    }
    for (manifest, status, reason) in [
        ("gateway-secret-invalid-reference-grant", "False", "RefNotPermitted"),
        ("gateway-secret-missing-reference-grant", "False", "RefNotPermitted"),
        ("gateway-secret-reference-grant-all-in-namespace", "True", "ResolvedRefs"),
        ("gateway-secret-reference-grant-specific", "True", "ResolvedRefs"),
    ] {
        let env = ConformanceEnv::start(&[manifest]);
        check_https_listeners(&format!("{test} ({manifest})"), &env, &[(manifest, status, reason)]);
        if status == "True" {
            let addr = env.addr_of(&format!("{INFRA_NS}/{manifest}"), 443);
            let hs = support::tls::s_client(addr, Some("example.org"), &env.ca.pem_path, None);
            assert!(hs.ok && hs.subject.contains("CN = certificate"), "{manifest}: {}", hs.output);
        }
    }
}

/// HTTPRouteBackendProtocolH2C: the backendRef's Service port has
/// `appProtocol: kubernetes.io/h2c`, so Sluice speaks HTTP/2 with prior
/// knowledge to the echo (which reports the protocol it received). The one
/// case of the Go test (`GET /` → 200 from infra-backend-v1, client over h2c
/// prior knowledge) is written out: the runner does not evaluate its
/// `Protocol` field. Also sent over HTTP/1.1: the upstream protocol follows
/// the backend, not the client.
#[test]
fn http_route_backend_protocol_h2c() {
    let test = "HTTPRouteBackendProtocolH2C";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["httproute-backend-protocol-h2c"]);
    let addr = env.addr_of(SAME_NAMESPACE, 80);
    for http2 in [true, false] {
        let mut req = support::Req::get("/");
        req.http2 = http2;
        let r = support::curl_retry(addr, &req, std::time::Duration::from_secs(5));
        assert_eq!(r.status, 200, "{test} (client h2c: {http2}): {r:?}");
        assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1")), "{test}: {r:?}");
        assert_eq!(r.echo_str("proto"), Some("HTTP/2.0"), "{test} (client h2c: {http2}): the backend must see h2c");
    }
}

// ---------------------------------------------------------------------------
// BackendTLSPolicy. The Go tests check these with hand-written requests and
// condition waits (not in cases.json); the expectations below are the ones
// INDEX.md records (entries 91–96). ConformanceEnv stands `sluice echo
// --tls-cert/--tls-key` in for tls-backend, with the suite's certificate
// (abc.example.com, other.example.com, spiffe://abc.example.com/test-identity)
// signed by its CA, and generates the ConfigMaps `tls-checks-ca-certificate`
// (that CA) and `mismatch-ca-certificate` (an unrelated one).
// ---------------------------------------------------------------------------

/// Conditions (type → (status, reason)) of `kind` `gateway-conformance-infra/name`
/// from `/diagnostics`.
fn object_conditions(env: &ConformanceEnv, kind: &str, name: &str) -> HashMap<String, (String, String)> {
    let (_, body) = env.sluice.admin_get("/diagnostics").expect("admin /diagnostics");
    let d: serde_json::Value = serde_json::from_str(&body).expect("diagnostics JSON");
    d["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind && s["namespace"] == INFRA_NS && s["name"] == name)
        .flat_map(|s| s["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), (s("status"), s("reason")))
        })
        .collect()
}

/// Checks each `(policy, Accepted, reason, ResolvedRefs or "")`.
fn check_policies(test: &str, env: &ConformanceEnv, expect: &[(&str, &str, &str, &str)]) {
    let mut failures = Vec::new();
    for &(name, accepted, reason, resolved) in expect {
        let c = object_conditions(env, "BackendTLSPolicy", name);
        let got = c.get("Accepted").cloned().unwrap_or_default();
        if got != (accepted.to_string(), reason.to_string()) {
            failures.push(format!("{name}: Accepted {got:?}, want ({accepted}, {reason})"));
        }
        if !resolved.is_empty() {
            let got = c.get("ResolvedRefs").map(|r| r.1.clone()).unwrap_or_default();
            if got != resolved {
                failures.push(format!("{name}: ResolvedRefs reason {got:?}, want {resolved}"));
            }
        }
    }
    assert!(failures.is_empty(), "{test}:\n  {}", failures.join("\n  "));
}

/// `(path, Some(SNI the TLS backend must see) → 200 from tls-backend | None → 5xx)`
/// with Host abc.example.com on Gateway same-namespace.
fn run_backend_tls_matrix(test: &str, env: &ConformanceEnv, matrix: &[(&str, Option<&str>)]) {
    let addr = env.addr_of(SAME_NAMESPACE, 80);
    let mut failures = Vec::new();
    for &(path, sni) in matrix {
        let req = support::Req::get(path).host("abc.example.com");
        let got = support::wait_until(std::time::Duration::from_secs(5), || {
            support::curl(addr, &req).ok().filter(|r| r.status != 404)
        });
        let Some(r) = got else {
            failures.push(format!("{path}: no routed response"));
            continue;
        };
        match sni {
            Some(sni) => {
                let seen = r.echo.as_ref().and_then(|e| e.pointer("/tls/serverName")).and_then(|v| v.as_str());
                if r.status != 200 || !r.pod().is_some_and(|p| p.starts_with("tls-backend")) || seen != Some(sni) {
                    failures.push(format!(
                        "{path}: got {} from {:?} with SNI {seen:?}, want 200 with {sni}",
                        r.status,
                        r.pod()
                    ));
                }
            }
            None if r.status < 500 => failures.push(format!("{path}: got {}, want 5xx", r.status)),
            None => {}
        }
    }
    assert!(failures.is_empty(), "{test}: {} of {} failed:\n  {}", failures.len(), matrix.len(), failures.join("\n  "));
}

/// BackendTLSPolicy: valid CA + hostname → 200 from tls-backend, which saw
/// the hostname as SNI; a hostname not in the certificate or a foreign CA →
/// error; a CA change is reconciled (here: the reconcile-test policy moved
/// to the mismatching ConfigMap starts failing, the others keep serving).
#[test]
fn backend_tls_policy() {
    let test = "BackendTLSPolicy";
    if !require_curl(test) {
        return;
    }
    let mut env = ConformanceEnv::start(&["backendtlspolicy"]);
    let ok = Some("abc.example.com");
    run_backend_tls_matrix(
        test,
        &env,
        &[
            ("/backendtlspolicy", ok),
            ("/backendtlspolicy-host-mismatch", None),
            ("/backendtlspolicy-cert-mismatch", None),
            ("/backendtlspolicy-reconcile-test", ok),
        ],
    );
    let (a, r) = ("Accepted", "ResolvedRefs");
    check_policies(test, &env, &[("normative-test", "True", a, r), ("host-mismatch", "True", a, r)]);

    for d in env.docs.iter_mut() {
        if d["kind"] == "BackendTLSPolicy" && d["metadata"]["name"] == "reconcile-test" {
            d["spec"]["validation"]["caCertificateRefs"][0]["name"] = "mismatch-ca-certificate".into();
        }
    }
    support::write_atomic(&env.config_file, &support::to_yaml_docs(&env.docs));
    let addr = env.addr_of(SAME_NAMESPACE, 80);
    let req = support::Req::get("/backendtlspolicy-reconcile-test").host("abc.example.com");
    let failed = support::wait_until(std::time::Duration::from_secs(10), || {
        support::curl(addr, &req).ok().filter(|r| r.status >= 500)
    });
    assert!(failed.is_some(), "{test}: the changed CA reference was never reconciled");
    run_backend_tls_matrix(test, &env, &[("/backendtlspolicy", ok)]);
}

/// BackendTLSPolicySANValidation: subjectAltNames (Hostname, URI, both)
/// decide; the hostname is only SNI then.
#[test]
fn backend_tls_policy_san_validation() {
    let test = "BackendTLSPolicySANValidation";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["backendtlspolicy-san"]);
    let ok = Some("abc.example.com");
    run_backend_tls_matrix(
        test,
        &env,
        &[
            ("/backendtlspolicy-san-dns", ok),
            ("/backendtlspolicy-san-dns-mismatch", None),
            ("/backendtlspolicy-san-uri", ok),
            ("/backendtlspolicy-san-uri-mismatch", None),
            ("/backendtlspolicy-multiple-sans", ok),
            ("/backendtlspolicy-multiple-mismatch-sans", None),
        ],
    );
    let a = "Accepted";
    check_policies(
        test,
        &env,
        &[("san-dns", "True", a, ""), ("san-uri", "True", a, ""), ("multiple-sans", "True", a, "")],
    );
}

/// BackendTLSPolicyInvalidCACertificateRef and BackendTLSPolicyInvalidKind:
/// no usable CA → Accepted=False/NoValidCACertificate with the ResolvedRefs
/// reason, and 5xx for the targeted backend.
#[test]
fn backend_tls_policy_invalid_ca_certificate_ref_and_kind() {
    let test = "BackendTLSPolicyInvalidCACertificateRef/InvalidKind";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["backendtlspolicy-invalid-ca-certificate-ref", "backendtlspolicy-invalid-kind"]);
    run_backend_tls_matrix(
        test,
        &env,
        &[
            ("/backendtlspolicy-nonexistent-ca-certificate-ref", None),
            ("/backendtlspolicy-malformed-ca-certificate-ref", None),
            ("/backendtlspolicy-invalid-kind", None),
        ],
    );
    let no_ca = "NoValidCACertificate";
    check_policies(
        test,
        &env,
        &[
            ("nonexistent-ca-certificate-ref", "False", no_ca, "InvalidCACertificateRef"),
            ("malformed-ca-certificate-ref", "False", no_ca, "InvalidCACertificateRef"),
            ("invalid-kind", "False", no_ca, "InvalidKind"),
        ],
    );
}

/// BackendTLSPolicyConflictResolution: of two policies on the same target
/// the older (here, without creation timestamps: the first by name) wins
/// and traffic flows through it; a port-specific and a whole-Service policy
/// do not conflict (the port-specific one wins for its port).
#[test]
fn backend_tls_policy_conflict_resolution() {
    let test = "BackendTLSPolicyConflictResolution";
    if !require_curl(test) {
        return;
    }
    let env = ConformanceEnv::start(&["backendtlspolicy-conflict-resolution"]);
    let other = Some("other.example.com");
    run_backend_tls_matrix(
        test,
        &env,
        &[
            ("/backendtlspolicy-conflicted-without-section-name", other),
            ("/backendtlspolicy-conflicted-with-section-name", other),
            ("/backendtlspolicy-not-conflicted-with-section-name", other),
            ("/backendtlspolicy-not-conflicted-without-section-name", Some("abc.example.com")),
        ],
    );
    let (a, c) = ("Accepted", "Conflicted");
    check_policies(
        test,
        &env,
        &[
            ("conflicted-without-section-name-1", "True", a, ""),
            ("conflicted-without-section-name-2", "False", c, ""),
            ("conflicted-with-section-name-1", "True", a, ""),
            ("conflicted-with-section-name-2", "False", c, ""),
            ("not-conflicted-with-section-name", "True", a, ""),
            ("not-conflicted-without-section-name", "True", a, ""),
        ],
    );
}
