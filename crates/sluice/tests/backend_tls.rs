//! Upstream TLS (BackendTLSPolicy) through the real binary: `sluice echo
//! --tls-cert/--tls-key` is a TLS-only backend with a certificate from an
//! rcgen CA; policies pick the CA (ConfigMap `ca.crt`), the SNI / name to
//! check (`validation.hostname`) or `subjectAltNames`. Bad certificates
//! answer 502, a policy that cannot be met 500 with conditions, other
//! routes keep serving, and a rotated CA ConfigMap applies to new
//! connections.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::tls::TestCa;
use support::{Echo, Req, Sluice, TempDir, curl, curl_retry, local_service, require_curl, wait_until, write_atomic};

const SAN_URI: &str = "spiffe://sluice.test/ns/default/sa/backend";

/// Services on the TLS echo, with (route path, CA ConfigMap, hostname,
/// subjectAltNames as `(type, value)`, sectionName).
struct Case {
    path: &'static str,
    ca: &'static str,
    hostname: &'static str,
    sans: &'static [(&'static str, &'static str)],
    section: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case { path: "valid", ca: "ca-good", hostname: "backend.test", sans: &[], section: Some("http") },
    Case { path: "wrong-ca", ca: "ca-other", hostname: "backend.test", sans: &[], section: None },
    Case { path: "wrong-host", ca: "ca-good", hostname: "nothere.test", sans: &[], section: None },
    Case {
        path: "san-mismatch",
        ca: "ca-good",
        hostname: "backend.test",
        sans: &[("Hostname", "nothere.test"), ("URI", "spiffe://sluice.test/other")],
        section: None,
    },
    Case { path: "san-uri", ca: "ca-good", hostname: "sni-only.test", sans: &[("URI", SAN_URI)], section: None },
    Case {
        path: "san-host",
        ca: "ca-good",
        hostname: "sni-only.test",
        sans: &[("Hostname", "alt.test")],
        section: None,
    },
    Case { path: "missing-ca", ca: "ca-missing", hostname: "backend.test", sans: &[], section: None },
];

fn config_map(name: &str, pem: &str) -> String {
    let data = serde_json::json!({"ca.crt": pem});
    format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata: {data}\n")
}

fn policy(c: &Case) -> String {
    let section = c.section.map(|s| format!(", sectionName: {s}")).unwrap_or_default();
    let mut y = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {p}, namespace: default}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: svc-{p}{section}}}]\n  validation:\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {ca}}}]\n    hostname: {h}\n",
        p = c.path,
        ca = c.ca,
        h = c.hostname
    );
    if !c.sans.is_empty() {
        y.push_str("    subjectAltNames:\n");
        for (t, v) in c.sans {
            let field = if *t == "URI" { "uri" } else { "hostname" };
            y.push_str(&format!("    - {{type: {t}, {field}: \"{v}\"}}\n"));
        }
    }
    y
}

/// The whole config: Gateway `web` :80, one rule per case plus `/plain`
/// to a plain echo; `good_pem` / `other_pem` fill the two CA ConfigMaps.
fn config(tls_port: u16, plain_port: u16, good_pem: &str, other_pem: &str) -> String {
    let mut rules = String::new();
    for c in CASES {
        rules.push_str(&support::prefix_rule(&format!("/{}", c.path), &format!("svc-{}", c.path)));
    }
    rules.push_str(&support::prefix_rule("/plain", "plain"));
    let mut y = support::web_config(&rules, &[("plain", plain_port)]);
    for c in CASES {
        y.push_str("---\n");
        y.push_str(&local_service(&format!("svc-{}", c.path), tls_port));
        y.push_str(&policy(c));
    }
    y.push_str(&config_map("ca-good", good_pem));
    y.push_str(&config_map("ca-other", other_pem));
    y
}

/// Conditions (type → (status, reason)) of an object's own status, from
/// `/diagnostics`; for a route, of its parentRef entry.
fn conditions(sluice: &Sluice, kind: &str, name: &str) -> BTreeMap<String, (String, String)> {
    let (_, body) = sluice.admin_get("/diagnostics").expect("admin /diagnostics");
    let d: Value = serde_json::from_str(&body).expect("diagnostics JSON");
    let status = d["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["kind"] == kind && s["namespace"] == "default" && s["name"] == name)
        .unwrap_or_else(|| panic!("no status for {kind} default/{name} in {body}"));
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), (s("status"), s("reason")))
        })
        .collect()
}

fn cond(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

fn metric_sum(sluice: &Sluice, name: &str) -> u64 {
    let (_, body) = sluice.admin_get("/metrics").expect("admin /metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// A WebSocket through Sluice to `path`: 101, then a masked "Hello" frame
/// comes back from the echo.
fn websocket_roundtrip(addr: std::net::SocketAddr, path: &str) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]).expect("send text");
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).expect("read text");
    assert_eq!(reply, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
}

#[test]
fn backend_tls_policy_validates_the_backend_certificate() {
    if !require_curl("backend_tls_policy_validates_the_backend_certificate") {
        return;
    }
    let dir = TempDir::new("backend-tls");
    let good = TestCa::new(dir.path(), "good-ca");
    let other = TestCa::new(dir.path(), "other-ca");
    let leaf = good.leaf_with_uris("backend.test", &["backend.test", "alt.test"], &[SAN_URI]);
    let (crt, key) = (dir.path().join("backend.crt"), dir.path().join("backend.key"));
    std::fs::write(&crt, &leaf.cert).expect("writing the backend certificate");
    std::fs::write(&key, &leaf.key).expect("writing the backend key");
    let tls_echo = Echo::spawn_with(
        "tls-backend",
        "default",
        dir.path(),
        &["--tls-cert", crt.to_str().expect("utf-8"), "--tls-key", key.to_str().expect("utf-8")],
    )
    .wait();
    let plain = Echo::start("plain", "default", dir.path());
    let good_pem = std::fs::read_to_string(&good.pem_path).expect("CA PEM");
    let other_pem = std::fs::read_to_string(&other.pem_path).expect("CA PEM");

    let cfg = dir.path().join("config.yaml");
    write_atomic(&cfg, &config(tls_echo.addr.port(), plain.addr.port(), &good_pem, &other_pem));
    let sluice = Sluice::start(&cfg, dir.path(), &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);

    // Valid CA + hostname: 200 from the TLS backend, which saw the policy
    // hostname as SNI and ALPN http/1.1.
    let r = curl_retry(addr, &Req::get("/valid"), Duration::from_secs(10));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.pod(), Some(tls_echo.pod.as_str()));
    let body: Value = serde_json::from_str(&r.body_text()).expect("echo JSON");
    assert_eq!(body["tls"]["serverName"], "backend.test", "{body}");
    assert_eq!(body["tls"]["negotiatedProtocol"], "http/1.1", "{body}");
    // Connections are pooled: more requests, still one upstream connection
    // to the TLS backend (plus none to the plain one yet).
    for _ in 0..5 {
        assert_eq!(curl(addr, &Req::get("/valid")).map(|r| r.status), Ok(200));
    }
    assert_eq!(metric_sum(&sluice, "sluice_upstream_connections"), 1, "keep-alive reuse to the TLS backend");

    // subjectAltNames replace the hostname check: the SNI names no SAN of
    // the certificate, yet a listed URI or DNS SAN is enough.
    for path in ["/san-uri", "/san-host"] {
        let r = curl(addr, &Req::get(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        let body: Value = serde_json::from_str(&r.body_text()).expect("echo JSON");
        assert_eq!(body["tls"]["serverName"], "sni-only.test", "{body}");
    }

    // Wrong CA, hostname not in the certificate, SANs not in it: 502,
    // counted as connect errors.
    let errors_before = metric_sum(&sluice, "sluice_upstream_connect_errors_total");
    for path in ["/wrong-ca", "/wrong-host", "/san-mismatch"] {
        let r = curl(addr, &Req::get(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, 502, "{path}: {}", r.body_text());
    }
    assert!(metric_sum(&sluice, "sluice_upstream_connect_errors_total") >= errors_before + 3);

    // A policy whose CA ConfigMap is missing: conditions, the route's
    // ResolvedRefs=False, 500 for that backend; everything else serves.
    let r = curl(addr, &Req::get("/missing-ca")).expect("curl /missing-ca");
    assert_eq!(r.status, 500, "{}", r.body_text());
    assert_eq!(curl(addr, &Req::get("/plain")).map(|r| r.status), Ok(200));
    assert_eq!(curl(addr, &Req::get("/valid")).map(|r| r.status), Ok(200));
    let c = conditions(&sluice, "BackendTLSPolicy", "missing-ca");
    assert_eq!(c.get("Accepted"), Some(&cond("False", "NoValidCACertificate")), "{c:?}");
    assert_eq!(c.get("ResolvedRefs"), Some(&cond("False", "InvalidCACertificateRef")), "{c:?}");
    let c = conditions(&sluice, "BackendTLSPolicy", "valid");
    assert_eq!(c.get("Accepted"), Some(&cond("True", "Accepted")), "{c:?}");
    assert_eq!(c.get("ResolvedRefs"), Some(&cond("True", "ResolvedRefs")), "{c:?}");
    let c = conditions(&sluice, "HTTPRoute", "app");
    assert_eq!(c.get("Accepted").map(|c| c.0.as_str()), Some("True"), "{c:?}");
    assert_eq!(c.get("ResolvedRefs"), Some(&cond("False", "InvalidBackendTLSPolicy")), "{c:?}");

    // WebSocket upgrades ride the TLS connection too.
    websocket_roundtrip(addr, "/valid/ws");

    // Rotation: swap the two CA bundles. New connections use the new
    // bundle: /wrong-ca now validates, and /valid fails even though a
    // pooled connection to the backend was open.
    write_atomic(&cfg, &config(tls_echo.addr.port(), plain.addr.port(), &other_pem, &good_pem));
    let rotated =
        wait_until(Duration::from_secs(10), || curl(addr, &Req::get("/wrong-ca")).ok().filter(|r| r.status == 200));
    assert!(rotated.is_some(), "the rotated CA ConfigMap was never applied");
    let r = curl(addr, &Req::get("/valid")).expect("curl /valid");
    assert_eq!(r.status, 502, "the old pooled connection must not outlive the CA it was validated with");
    assert_eq!(curl(addr, &Req::get("/plain")).map(|r| r.status), Ok(200));
}
