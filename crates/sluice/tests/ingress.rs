//! Kubernetes Ingress v1 end to end: the `pathType` examples table of the
//! Kubernetes docs (semantics.md §9.2), the ingress-controller-conformance
//! path/host/default-backend/class scenarios, through the real binary
//! (`sluice run --bind 80=127.0.0.1:0`, no Gateway isolation) with `curl`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Req, Resp, Sluice, TempDir, curl, curl_retry, endpoint_slice_for, require_curl};

const NS: &str = "ingress-e2e";

/// Echo backends (one per Service), their Services and EndpointSlices, an
/// IngressClass for Sluice, the given Ingresses, and `sluice run`.
struct IngressEnv {
    sluice: Sluice,
    addr: SocketAddr,
    _echoes: Vec<Echo>,
    _dir: TempDir,
}

impl IngressEnv {
    fn start(services: &[&str], ingresses: Vec<Value>) -> Self {
        let dir = TempDir::new("ingress");
        let config_dir = dir.subdir("config");
        let log_dir = dir.subdir("logs");
        let pending: Vec<_> = services.iter().map(|s| Echo::spawn(s, NS, &log_dir)).collect();
        let echoes: Vec<Echo> = pending.into_iter().map(|p| p.wait()).collect();
        let mut docs = vec![json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": "sluice"},
            "spec": {"controller": support::INGRESS_CONTROLLER},
        })];
        for e in &echoes {
            let svc = json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": e.deployment, "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 3000, "protocol": "TCP"}]},
            });
            docs.push(endpoint_slice_for(&svc, &format!("{}-local", e.deployment), e.addr));
            docs.push(svc);
        }
        docs.extend(ingresses);
        std::fs::write(config_dir.join("ingress.yaml"), support::to_yaml_docs(&docs)).expect("writing config");
        let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
        let addr = sluice.addr_of("*", 80);
        Self { sluice, addr, _echoes: echoes, _dir: dir }
    }
}

fn ingress(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

fn backend(service: &str) -> Value {
    json!({"service": {"name": service, "port": {"number": 8080}}})
}

/// An Ingress rule for `host` with `(pathType, path, service)` entries.
fn rule(host: Option<&str>, paths: &[(&str, &str, &str)]) -> Value {
    let paths: Vec<Value> =
        paths.iter().map(|(t, p, s)| json!({"path": p, "pathType": t, "backend": backend(s)})).collect();
    let mut r = json!({"http": {"paths": paths}});
    if let Some(h) = host {
        r["host"] = json!(h);
    }
    r
}

/// The Service behind an echo pod name `<service>-<10>-<5>`.
fn service_of(resp: &Resp) -> Option<String> {
    let pod = resp.pod()?;
    let mut parts = pod.rsplitn(3, '-');
    let (_, _, svc) = (parts.next()?, parts.next()?, parts.next()?);
    Some(svc.to_string())
}

/// Sends `req`; checks `want` = Some(service) → 200 from that Service (and
/// the backend saw the same path), None → 404.
fn expect(addr: SocketAddr, label: &str, req: &Req, want: Option<&str>, failures: &mut Vec<String>) {
    let resp = match curl(addr, req) {
        Ok(r) => r,
        Err(e) => {
            failures.push(format!("{label}: {e}"));
            return;
        }
    };
    match want {
        None if resp.status != 404 => {
            failures.push(format!("{label}: expected 404, got {} from {:?}", resp.status, service_of(&resp)));
        }
        None => {}
        Some(svc) => {
            if resp.status != 200 || service_of(&resp).as_deref() != Some(svc) {
                failures.push(format!(
                    "{label}: expected 200 from {svc}, got {} from {:?}",
                    resp.status,
                    service_of(&resp)
                ));
            } else if resp.echo_str("path") != Some(req.path.as_str()) {
                failures.push(format!("{label}: backend saw path {:?}, sent {:?}", resp.echo_str("path"), req.path));
            } else if resp.echo_str("namespace") != Some(NS) {
                failures.push(format!("{label}: backend namespace {:?}", resp.echo_str("namespace")));
            }
        }
    }
}

/// One row of the Kubernetes docs' examples table, as its own Ingress on its
/// own host: paths as (pathType, path), requests as (path, expected path
/// index or None for 404).
struct Row {
    paths: &'static [(&'static str, &'static str)],
    requests: &'static [(&'static str, Option<usize>)],
}

const SERVICES: [&str; 3] = ["path-zero", "path-one", "path-two"];

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Prefix `/` : (all paths) → yes
    Row { paths: &[("Prefix", "/")], requests: &[("/", Some(0)), ("/foo", Some(0)), ("/aaa/bbb/ccc", Some(0))] },
    // Exact `/foo`: `/foo` yes, `/bar` no, `/foo/` no (and `/FOO` no, path_rules.feature)
    Row { paths: &[("Exact", "/foo")], requests: &[("/foo", Some(0)), ("/bar", None), ("/foo/", None), ("/FOO", None)] },
    // Exact `/foo/`: `/foo` no
    Row { paths: &[("Exact", "/foo/")], requests: &[("/foo", None), ("/foo/", Some(0))] },
    // Prefix `/foo`: `/foo`, `/foo/` yes
    Row { paths: &[("Prefix", "/foo")], requests: &[("/foo", Some(0)), ("/foo/", Some(0)), ("/FOO", None)] },
    // Prefix `/foo/`: `/foo`, `/foo/` yes
    Row { paths: &[("Prefix", "/foo/")], requests: &[("/foo", Some(0)), ("/foo/", Some(0))] },
    // Prefix `/aaa/bb`: `/aaa/bbb` no
    Row { paths: &[("Prefix", "/aaa/bb")], requests: &[("/aaa/bbb", None)] },
    // Prefix `/aaa/bbb`: `/aaa/bbb` yes
    Row { paths: &[("Prefix", "/aaa/bbb")], requests: &[("/aaa/bbb", Some(0))] },
    // Prefix `/aaa/bbb/`: `/aaa/bbb` yes, ignores trailing slash
    Row { paths: &[("Prefix", "/aaa/bbb/")], requests: &[("/aaa/bbb", Some(0)), ("/aaa/bbb/", Some(0))] },
    // Prefix `/aaa/bbb`: `/aaa/bbb/` yes, matches trailing slash
    Row { paths: &[("Prefix", "/aaa/bbb")], requests: &[("/aaa/bbb/", Some(0))] },
    // Prefix `/aaa/bbb`: `/aaa/bbb/ccc` yes, matches subpath
    Row { paths: &[("Prefix", "/aaa/bbb")], requests: &[("/aaa/bbb/ccc", Some(0))] },
    // Prefix `/aaa/bbb`: `/aaa/bbbxyz` no, does not match string prefix
    Row { paths: &[("Prefix", "/aaa/bbb")], requests: &[("/aaa/bbbxyz", None)] },
    // Prefix `/`, `/aaa`: `/aaa/ccc` yes, matches `/aaa` prefix
    Row { paths: &[("Prefix", "/"), ("Prefix", "/aaa")], requests: &[("/aaa/ccc", Some(1))] },
    // Prefix `/`, `/aaa`, `/aaa/bbb`: `/aaa/bbb` yes, matches `/aaa/bbb` prefix
    Row { paths: &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], requests: &[("/aaa/bbb", Some(2))] },
    // Prefix `/`, `/aaa`, `/aaa/bbb`: `/ccc` yes, matches `/` prefix
    Row { paths: &[("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], requests: &[("/ccc", Some(0))] },
    // Prefix `/aaa`: `/ccc` no (no defaultBackend here → 404), and `/aaaccc` no
    Row { paths: &[("Prefix", "/aaa")], requests: &[("/ccc", None), ("/aaaccc", None)] },
    // Mixed `/foo` (Prefix), `/foo` (Exact): `/foo` yes, prefers Exact
    Row { paths: &[("Prefix", "/foo"), ("Exact", "/foo")], requests: &[("/foo", Some(1)), ("/foo/bar", Some(0))] },
    // Same, declared the other way round: Exact still wins.
    Row { paths: &[("Exact", "/foo"), ("Prefix", "/foo")], requests: &[("/foo", Some(0)), ("/foo/", Some(1))] },
    // Longest path first, whatever the declaration order (path_rules.feature).
    Row { paths: &[("Prefix", "/aaa"), ("Prefix", "/aaa/bbb"), ("Prefix", "/foo")], requests: &[("/aaa/bbb", Some(1)), ("/aaa/bbb/ccc", Some(1)), ("/aaa/ccc", Some(0)), ("/aaaccc", None)] },
    // ImplementationSpecific is documented as Prefix in Sluice.
    Row { paths: &[("ImplementationSpecific", "/impl")], requests: &[("/impl", Some(0)), ("/impl/x", Some(0)), ("/implx", None)] },
];

#[test]
fn ingress_path_type_examples() {
    if !require_curl("ingress_path_type_examples") {
        return;
    }
    let mut ingresses = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        let host = format!("row-{i:02}.example.com");
        let paths: Vec<(&str, &str, &str)> =
            row.paths.iter().enumerate().map(|(j, (t, p))| (*t, *p, SERVICES[j])).collect();
        ingresses.push(ingress(
            &format!("row-{i:02}"),
            json!({"ingressClassName": "sluice", "rules": [rule(Some(&host), &paths)]}),
        ));
    }
    // ingress_class.feature: an Ingress of another class is not served.
    ingresses.push(ingress(
        "foreign-class",
        json!({"ingressClassName": "some-invalid-class-name", "rules": [rule(Some("ingress-class"), &[("Prefix", "/", SERVICES[0])])]}),
    ));
    let env = IngressEnv::start(&SERVICES, ingresses);
    let _ = curl_retry(env.addr, &Req::get("/").host("row-00.example.com"), Duration::from_secs(5));

    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, row) in ROWS.iter().enumerate() {
        let host = format!("row-{i:02}.example.com");
        for (path, want) in row.requests {
            let label = format!("row {i} {:?}: GET {host}{path}", row.paths);
            expect(env.addr, &label, &Req::get(path).host(&host), want.map(|j| SERVICES[j]), &mut failures);
            ran += 1;
        }
    }
    expect(env.addr, "foreign IngressClass", &Req::get("/").host("ingress-class"), None, &mut failures);
    // A host no Ingress names: no defaultBackend anywhere → 404.
    expect(env.addr, "unknown host", &Req::get("/").host("nobody.example.com"), None, &mut failures);
    assert!(ran >= 30, "only {ran} requests");
    assert!(
        failures.is_empty(),
        "{} of {ran} Ingress path checks failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    drop(env.sluice);
}

#[test]
fn ingress_host_wildcard_matches_a_single_label() {
    if !require_curl("ingress_host_wildcard_matches_a_single_label") {
        return;
    }
    // host_rules.feature (without the TLS scenario); `foo-bar-com` is
    // referenced by port *name*.
    let host_rules = ingress(
        "host-rules",
        json!({
            "ingressClassName": "sluice",
            "rules": [
                rule(Some("*.foo.com"), &[("Prefix", "/", "wildcard-foo-com")]),
                {"host": "foo.bar.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "foo-bar-com", "port": {"name": "http"}}}}]}},
            ],
        }),
    );
    let env = IngressEnv::start(&["wildcard-foo-com", "foo-bar-com"], vec![host_rules]);
    let _ = curl_retry(env.addr, &Req::get("/").host("foo.bar.com"), Duration::from_secs(5));
    let mut failures = Vec::new();
    let cases: &[(&str, Option<&str>)] = &[
        ("bar.foo.com", Some("wildcard-foo-com")),
        ("BAR.foo.com", Some("wildcard-foo-com")),
        ("bar.foo.com:8080", Some("wildcard-foo-com")),
        ("baz.bar.foo.com", None),
        ("foo.com", None),
        ("foo.bar.com", Some("foo-bar-com")),
        ("subdomain.bar.com", None),
    ];
    for (host, want) in cases {
        expect(env.addr, &format!("GET {host}/"), &Req::get("/").host(host), *want, &mut failures);
    }
    // "the request host must be" the one sent.
    let r = curl(env.addr, &Req::get("/").host("bar.foo.com")).expect("request");
    if r.echo_str("host") != Some("bar.foo.com") {
        failures.push(format!("backend saw host {:?}, sent bar.foo.com", r.echo_str("host")));
    }
    assert!(failures.is_empty(), "host rule checks failed:\n  {}", failures.join("\n  "));
}

#[test]
fn ingress_default_backend_only_gets_everything() {
    if !require_curl("ingress_default_backend_only_gets_everything") {
        return;
    }
    let ing =
        ingress("default-backend", json!({"ingressClassName": "sluice", "defaultBackend": backend("echo-service")}));
    let env = IngressEnv::start(&["echo-service"], vec![ing]);
    let _ = curl_retry(env.addr, &Req::get("/"), Duration::from_secs(5));
    let mut failures = Vec::new();
    // default_backend.feature examples.
    for (method, host, path) in [
        ("GET", Some("my-host"), "/"),
        ("GET", Some("my-host"), "/sub-path"),
        ("POST", Some("some-host"), "/"),
        ("PUT", None, "/resource"),
        ("DELETE", Some("some-host"), "/resource"),
        ("PATCH", Some("my-host"), "/resource"),
    ] {
        let mut req = Req::get(path).method(method).header("User-Agent", "Go-http-client/1.1");
        req.host = host.map(str::to_string);
        let label = format!("{method} {}{path}", host.unwrap_or("<ip>"));
        let r = match curl(env.addr, &req) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{label}: {e}"));
                continue;
            }
        };
        let mut problems = Vec::new();
        if r.status != 200 {
            problems.push(format!("status {}", r.status));
        }
        if service_of(&r).as_deref() != Some("echo-service") {
            problems.push(format!("served by {:?}", service_of(&r)));
        }
        if r.echo_str("method") != Some(method) {
            problems.push(format!("backend method {:?}", r.echo_str("method")));
        }
        if r.echo_str("path") != Some(path) {
            problems.push(format!("backend path {:?}", r.echo_str("path")));
        }
        if r.echo_str("proto") != Some("HTTP/1.1") {
            problems.push(format!("backend proto {:?}", r.echo_str("proto")));
        }
        if r.echo_headers().get("user-agent").map(|v| v.join(",")).as_deref() != Some("Go-http-client/1.1") {
            problems.push(format!("backend User-Agent {:?}", r.echo_headers().get("user-agent")));
        }
        // The feature also wants `Server`, which is an nginx artefact, not spec.
        for h in ["content-length", "content-type", "date"] {
            if r.header(h).is_none() {
                problems.push(format!("response lacks {h}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "default backend checks failed:\n  {}", failures.join("\n  "));
}

#[test]
fn ingress_default_backend_catches_what_rules_do_not() {
    if !require_curl("ingress_default_backend_catches_what_rules_do_not") {
        return;
    }
    let ing = ingress(
        "rules-and-default",
        json!({
            "ingressClassName": "sluice",
            "defaultBackend": backend("fallback"),
            "rules": [rule(Some("app.example.com"), &[("Prefix", "/api", "api"), ("Exact", "/exact", "api")])],
        }),
    );
    let env = IngressEnv::start(&["api", "fallback"], vec![ing]);
    let _ = curl_retry(env.addr, &Req::get("/api").host("app.example.com"), Duration::from_secs(5));
    let mut failures = Vec::new();
    for (host, path, want) in [
        ("app.example.com", "/api", "api"),
        ("app.example.com", "/api/v1/x", "api"),
        ("app.example.com", "/exact", "api"),
        // "If unspecified, or no rule matches, all traffic is sent to the default backend."
        ("app.example.com", "/exact/", "fallback"),
        ("app.example.com", "/apix", "fallback"),
        ("app.example.com", "/", "fallback"),
        ("other.example.com", "/api", "fallback"),
    ] {
        expect(env.addr, &format!("GET {host}{path}"), &Req::get(path).host(host), Some(want), &mut failures);
    }
    assert!(failures.is_empty(), "rules + defaultBackend checks failed:\n  {}", failures.join("\n  "));
}
