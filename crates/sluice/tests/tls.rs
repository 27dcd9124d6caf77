//! TLS termination through the real binary: certificates chosen by SNI
//! (longest match, catch-all without SNI), ALPN h2 with curl, openssl
//! s_client and h2load, session resumption, garbage ClientHellos and bad
//! Secrets that affect nothing else, Ingress `spec.tls`, and certificate
//! rotation under load. Certificates come from an rcgen test CA.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use support::tls::{Leaf, TestCa, curl_https, require_tool, s_client, s_client_with, tls_secret_yaml};
use support::{Echo, Sluice, TempDir, local_service, require_curl, wait_until, write_atomic};

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n";

/// A Gateway `default/{name}` with HTTPS listeners on 443 (`(listener,
/// hostname, secret)`) and an HTTPRoute sending everything to `app`.
fn gateway(name: &str, listeners: &[(&str, Option<&str>, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n"
    );
    for (l, host, secret) in listeners {
        y.push_str(&format!("  - name: {l}\n    port: 443\n    protocol: HTTPS\n"));
        if let Some(h) = host {
            y.push_str(&format!("    hostname: \"{h}\"\n"));
        }
        y.push_str(&format!("    tls:\n      certificateRefs: [{{name: {secret}}}]\n"));
    }
    y.push_str(&format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}-app, namespace: default}}\nspec:\n  parentRefs: [{{name: {name}}}]\n  rules:\n  - backendRefs: [{{name: app, port: 8080}}]\n"
    ));
    y
}

fn metric(sluice: &Sluice, result: &str) -> u64 {
    let (_, body) = sluice.admin_get("/metrics").expect("admin /metrics");
    let want = format!("sluice_tls_handshakes_total{{result=\"{result}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&want)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn wait_metric(sluice: &Sluice, result: &str, at_least: u64) -> u64 {
    wait_until(Duration::from_secs(5), || Some(metric(sluice, result)).filter(|&v| v >= at_least))
        .unwrap_or_else(|| panic!("sluice_tls_handshakes_total{{result={result:?}}} never reached {at_least}"))
}

// ---------------------------------------------------------------------------
// In-process TLS client (rustls, ring) for connections a test holds open.
// ---------------------------------------------------------------------------

fn client_config(ca: &Path, tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    /// The leaf certificate the server presented (DER).
    peer: Vec<u8>,
    resumed: bool,
}

async fn connect(addr: SocketAddr, sni: &str, cfg: &Arc<rustls::ClientConfig>) -> Result<Conn, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, c) = tls.get_ref();
    let peer = c.peer_certificates().and_then(|p| p.first()).map(|d| d.to_vec()).unwrap_or_default();
    let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("http1: {e}"))?;
    tokio::spawn(conn);
    Ok(Conn { sender, peer, resumed })
}

async fn get(conn: &mut Conn, host: &str, path: &str) -> Result<u16, String> {
    let req = http::Request::get(path).header("host", host).body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = conn.sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

struct Env {
    sluice: Sluice,
    ca: TestCa,
    _echo: Echo,
    config_dir: std::path::PathBuf,
    dir: TempDir,
}

/// A config dir with the class and an `app` echo Service (`base.yaml`) and
/// the files `body` returns; sluice running with `--isolate-gateways` and
/// 443 and 80 on free ports.
fn start(tag: &str, body: impl FnOnce(&TestCa) -> Vec<(&'static str, String)>) -> Env {
    let dir = TempDir::new(tag);
    let logs = dir.subdir("logs");
    let cfg_dir = dir.subdir("config");
    let echo = Echo::start("app", "default", &logs);
    let ca = TestCa::new(dir.path(), "test-ca");
    let base = format!("{CLASS}---\n{}", local_service("app", echo.addr.port()));
    std::fs::write(cfg_dir.join("base.yaml"), base).expect("writing config");
    for (file, text) in body(&ca) {
        std::fs::write(cfg_dir.join(file), text).expect("writing config");
    }
    let sluice = Sluice::start(
        &cfg_dir,
        &logs,
        &["--isolate-gateways", "--bind", "443=127.0.0.1:0", "--bind", "80=127.0.0.1:0"],
    );
    Env { sluice, ca, _echo: echo, config_dir: cfg_dir, dir }
}

fn subject_cn(h: &support::tls::Handshake) -> &str {
    h.subject.rsplit("CN = ").next().unwrap_or_default()
}

#[test]
fn sni_selects_the_longest_match_and_no_sni_gets_the_catch_all() {
    let test = "sni_selects_the_longest_match_and_no_sni_gets_the_catch_all";
    if !require_curl(test) || !require_tool("openssl", test) {
        return;
    }
    let env = start("tls-sni", |ca| {
        let names = ["default", "wild", "wild-a", "exact"];
        let sans = [vec!["default.test"], vec!["*.example.com"], vec!["*.a.example.com"], vec!["www.a.example.com"]];
        let mut y = String::new();
        for (n, s) in names.iter().zip(&sans) {
            y.push_str(&tls_secret_yaml("default", n, &ca.leaf(n, s)));
        }
        y.push_str(&gateway(
            "edge",
            &[
                ("any", None, "default"),
                ("wild", Some("*.example.com"), "wild"),
                ("wild-a", Some("*.a.example.com"), "wild-a"),
                ("exact", Some("www.a.example.com"), "exact"),
            ],
        ));
        // A Gateway with no catch-all listener.
        y.push_str(&tls_secret_yaml("default", "strict", &ca.leaf("strict", &["only.strict.test"])));
        y.push_str(&gateway("strict", &[("only", Some("only.strict.test"), "strict")]));
        vec![("body.yaml", y)]
    });
    let edge = env.sluice.addr_of("default/edge", 443);
    let ca = &env.ca.pem_path;
    for (sni, cn) in [
        (Some("www.a.example.com"), "exact"),
        (Some("WWW.A.Example.com"), "exact"),
        (Some("x.a.example.com"), "wild-a"),
        (Some("x.b.example.com"), "wild"),
        (Some("example.com"), "default"),
        (Some("elsewhere.test"), "default"),
        (None, "default"),
    ] {
        let h = s_client(edge, sni, ca, None);
        assert!(h.ok, "SNI {sni:?}: no certificate:\n{}", h.output);
        assert_eq!(subject_cn(&h), cn, "SNI {sni:?}: {}", h.subject);
    }
    // The chosen certificate verifies for the name, and ALPN picks h2 /
    // http/1.1 as offered; TLS 1.2 and 1.3 both work.
    let h = s_client(edge, Some("x.a.example.com"), ca, Some("h2,http/1.1"));
    assert!(h.verify.contains("0 (ok)"), "{}", h.output);
    assert_eq!(h.alpn.as_deref(), Some("h2"), "{}", h.output);
    let h = s_client(edge, Some("x.a.example.com"), ca, Some("http/1.1"));
    assert_eq!(h.alpn.as_deref(), Some("http/1.1"), "{}", h.output);
    let h12 = s_client_with(edge, Some("www.a.example.com"), ca, None, &["-tls1_2"]);
    assert!(h12.ok && h12.output.contains("TLSv1.2"), "{}", h12.output);
    let h13 = s_client_with(edge, Some("www.a.example.com"), ca, None, &["-tls1_3"]);
    assert!(h13.ok && h13.output.contains("TLSv1.3"), "{}", h13.output);

    // curl over h2 and HTTP/1.1, verified against the CA.
    for (extra, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let r = curl_https(edge, "www.a.example.com", None, "/hello", ca, &[extra]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.http_version.as_str()), (200, version), "{r:?}");
        assert!(r.pod().starts_with("app"), "{r:?}");
        let proto = r.echo.as_ref().and_then(|e| e["headers"]["X-Forwarded-Proto"].get(0)).and_then(|v| v.as_str());
        assert_eq!(proto, Some("https"), "{r:?}");
    }

    // Without a catch-all, an unknown SNI or no SNI gets no certificate
    // (handshake refused), and the known name still works.
    let strict = env.sluice.addr_of("default/strict", 443);
    let before = metric(&env.sluice, "no_certificate");
    assert!(!s_client(strict, None, ca, None).ok, "no SNI must be refused without a catch-all");
    assert!(!s_client(strict, Some("other.test"), ca, None).ok, "unknown SNI must be refused");
    wait_metric(&env.sluice, "no_certificate", before + 2);
    let h = s_client(strict, Some("only.strict.test"), ca, None);
    assert_eq!(subject_cn(&h), "strict", "{}", h.output);
    wait_metric(&env.sluice, "ok", 1);
}

#[test]
fn garbage_client_hello_and_bad_secrets_affect_only_themselves() {
    let test = "garbage_client_hello_and_bad_secrets_affect_only_themselves";
    if !require_curl(test) || !require_tool("openssl", test) {
        return;
    }
    let mut mismatched_key = String::new();
    let env = start("tls-bad", |ca| {
        let good = ca.leaf("good", &["good.test"]);
        let other = ca.leaf("other", &["other.test"]);
        // A certificate with somebody else's key.
        let bad = Leaf { cert: good.cert.clone(), key: other.key.clone(), der: good.der.clone() };
        mismatched_key = other.key.clone();
        let mut y = tls_secret_yaml("default", "good", &good);
        y.push_str(&tls_secret_yaml("default", "bad", &bad));
        y.push_str(&gateway("mixed", &[("ok", Some("good.test"), "good"), ("broken", Some("bad.test"), "bad")]));
        vec![("body.yaml", y)]
    });
    let addr = env.sluice.addr_of("default/mixed", 443);
    let ca = &env.ca.pem_path;

    // The broken listener is reported, the good one serves.
    let (conds, attached) = support::tls::listener_conditions(&env.sluice, "default/mixed", "broken");
    assert_eq!(conds.get("ResolvedRefs").cloned(), Some(("False".into(), "InvalidCertificateRef".into())), "{conds:?}");
    assert_eq!(attached, 0);
    let (conds, _) = support::tls::listener_conditions(&env.sluice, "default/mixed", "ok");
    assert_eq!(conds.get("Programmed").map(|c| c.0.as_str()), Some("True"), "{conds:?}");
    assert!(!s_client(addr, Some("bad.test"), ca, None).ok, "the broken listener must not serve");

    let rt = support::runtime();
    rt.block_on(async {
        let cfg = client_config(ca, false);
        let mut held = connect(addr, "good.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&mut held, "good.test", "/").await, Ok(200));
        let errors = metric(&env.sluice, "error");
        // Garbage instead of a ClientHello: that connection is closed...
        for garbage in [&b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0][..]]
        {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
            raw.write_all(garbage).await.expect("write");
            let mut buf = vec![0u8; 256];
            let mut read = 0;
            let closed = tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    match raw.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read = (read + n).min(128),
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "the server must close a connection that sent garbage");
            // Never an HTTP response on a TLS socket.
            assert!(!buf.starts_with(b"HTTP/"), "{:?}", &buf[..read]);
        }
        // ...and nothing else: the held connection and new ones still work.
        assert_eq!(get(&mut held, "good.test", "/again").await, Ok(200));
        let mut fresh = connect(addr, "good.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&mut fresh, "good.test", "/").await, Ok(200));
        wait_metric(&env.sluice, "error", errors + 1);
    });

    // No key material in the logs, the diagnostics or `sluice check`.
    let key_body: String = mismatched_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let needle = &key_body[10..40];
    let stderr = env.sluice.stderr();
    assert!(stderr.contains("InvalidCertificateRef"), "the problem must be logged:\n{stderr}");
    assert!(!stderr.contains(needle) && !stderr.contains("PRIVATE KEY"), "key material in the log");
    let (_, diag) = env.sluice.admin_get("/diagnostics").expect("diagnostics");
    assert!(diag.contains("does not match") && !diag.contains(needle) && !diag.contains("PRIVATE KEY"), "{diag}");
    let (_, check) = support::sluice_check(&env.config_dir);
    assert!(!check.contains(needle) && !check.contains("PRIVATE KEY"), "key material in sluice check output");
}

/// A client session store that counts the TLS 1.3 tickets it receives.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn rustls::client::ClientSessionStore>,
    tickets: AtomicU64,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn one_tls13_ticket_per_handshake_more_on_request_and_it_resumes() {
    let env = start("tls-tickets", |ca| {
        let mut y = tls_secret_yaml("default", "a", &ca.leaf("a", &["a.test"]));
        y.push_str(&gateway("web", &[("a", Some("a.test"), "a")]));
        vec![("body.yaml", y)]
    });
    let addr = env.sluice.addr_of("default/web", 443);
    let rt = support::runtime();
    // (RFC 9149 ticket_request the client sends, tickets expected per handshake)
    let cases = [(None, 1), (Some(5), 2), (Some(0), 0)];
    for (request, want) in cases {
        rt.block_on(async {
            let store = Arc::new(CountingStore {
                inner: Arc::new(rustls::client::ClientSessionMemoryCache::new(32)),
                tickets: AtomicU64::new(0),
            });
            let mut cfg = (*client_config(&env.ca.pem_path, false)).clone();
            cfg.resumption = rustls::client::Resumption::store(store.clone());
            cfg.send_ticket_request =
                request.map(|n| rustls::client::TicketRequest { new_session_count: n, resumption_count: n });
            let cfg = Arc::new(cfg);
            let mut first = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
            // The tickets follow the handshake, before any response.
            assert_eq!(get(&mut first, "a.test", "/").await, Ok(200));
            assert!(!first.resumed);
            assert_eq!(store.tickets.load(Ordering::SeqCst), want, "tickets after a full handshake ({request:?})");
            let mut second = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(second.resumed, want > 0, "resumption with {want} ticket(s)");
            assert_eq!(get(&mut second, "a.test", "/").await, Ok(200));
        });
    }
}

#[test]
fn session_resumption_with_tickets_and_h2load_negotiates_h2() {
    let test = "session_resumption_with_tickets_and_h2load_negotiates_h2";
    if !require_tool("h2load", test) {
        return;
    }
    let env = start("tls-resume", |ca| {
        let mut y = tls_secret_yaml("default", "a", &ca.leaf("a", &["a.test"]));
        y.push_str(&gateway("web", &[("a", Some("a.test"), "a")]));
        vec![("body.yaml", y)]
    });
    let addr = env.sluice.addr_of("default/web", 443);
    let rt = support::runtime();
    for tls12 in [false, true] {
        rt.block_on(async {
            // One client config = one client session store.
            let cfg = client_config(&env.ca.pem_path, tls12);
            let mut first = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(get(&mut first, "a.test", "/").await, Ok(200));
            assert!(!first.resumed);
            let mut second = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(second.resumed, "the second handshake must resume (TLS 1.2 only: {tls12})");
            assert_eq!(get(&mut second, "a.test", "/").await, Ok(200));
        });
    }
    wait_metric(&env.sluice, "resumed", 2);

    // h2load over TLS: ALPN h2, every request answered.
    let url = format!("https://a.test:{}/", addr.port());
    let (ok, out) = support::tls::run_with_timeout(
        std::process::Command::new("h2load")
            .args(["-n", "400", "-c", "4", "-m", "8", "--connect-to"])
            .arg(addr.to_string())
            .arg(&url),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
    assert!(out.contains("status codes: 400 2xx"), "{out}");
}

#[test]
fn ingress_spec_tls_serves_its_hosts_on_443() {
    let test = "ingress_spec_tls_serves_its_hosts_on_443";
    if !require_curl(test) || !require_tool("openssl", test) {
        return;
    }
    let env = start("tls-ingress", |ca| {
        let mut y = tls_secret_yaml("default", "foo-tls", &ca.leaf("foo", &["foo.bar.com", "plain.com"]));
        y.push_str(&tls_secret_yaml("default", "wild-tls", &ca.leaf("wild", &["*.wild.com"])));
        y.push_str(
            r#"---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: sluice}
spec: {controller: sluice.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: sluice
  tls:
  - hosts: [foo.bar.com]
    secretName: foo-tls
  - hosts: ["*.wild.com"]
    secretName: wild-tls
  - hosts: [missing.com]
    secretName: does-not-exist
  rules:
  - host: foo.bar.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 8080}}}}
  - host: "*.wild.com"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: no-redirect
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/ssl-redirect: "false"}
spec:
  ingressClassName: sluice
  tls:
  - hosts: [plain.com]
    secretName: foo-tls
  rules:
  - host: plain.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: forced
  namespace: default
  annotations: {nginx.ingress.kubernetes.io/force-ssl-redirect: "true"}
spec:
  ingressClassName: sluice
  rules:
  - host: forced.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: app, port: {number: 8080}}}}
"#,
        );
        vec![("body.yaml", y)]
    });
    let https = env.sluice.addr_of("*", 443);
    let http = env.sluice.addr_of("*", 80);
    let ca = &env.ca.pem_path;
    let r = curl_https(https, "foo.bar.com", None, "/x", ca, &["--http2"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "{r:?}");
    assert!(r.pod().starts_with("app"), "{r:?}");
    assert_eq!(subject_cn(&s_client(https, Some("a.wild.com"), ca, None)), "wild");
    let r = curl_https(https, "a.wild.com", None, "/", ca, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    // Ingress wildcards cover one label; no catch-all certificate.
    assert!(!s_client(https, Some("a.b.wild.com"), ca, None).ok);
    // Plain HTTP: the TLS hosts redirect to HTTPS (ingress-nginx's
    // ssl-redirect default), unless the annotation turns it off;
    // force-ssl-redirect redirects without spec.tls.
    let plain = |host: &str| {
        support::curl(http, &support::Req::get("/p?q=1").host(host)).unwrap_or_else(|e| panic!("{host}: {e}"))
    };
    let r = plain("foo.bar.com");
    assert_eq!((r.status, r.header("location")), (308, Some("https://foo.bar.com/p?q=1".into())), "{r:?}");
    let r = plain("forced.com");
    assert_eq!((r.status, r.header("location")), (308, Some("https://forced.com/p?q=1".into())), "{r:?}");
    let r = plain("plain.com");
    assert_eq!((r.status, r.pod().is_some_and(|p| p.starts_with("app"))), (200, true), "{r:?}");
    let r = curl_https(https, "plain.com", None, "/", ca, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    // The missing Secret is reported by name.
    let (_, diag) = env.sluice.admin_get("/diagnostics").expect("diagnostics");
    assert!(diag.contains("Secret default/does-not-exist not found"), "{diag}");
}

/// Rotation under load: while clients make new TLS connections (a full
/// handshake each) and keep-alive requests without pause, the Secret file
/// is rewritten with a new certificate. No request fails, handshakes after
/// the swap see the new certificate, and a connection established before
/// it keeps working (with the certificate it negotiated).
#[test]
fn certificate_rotation_under_load() {
    let env = start("tls-rotate", |ca| {
        vec![
            ("gateway.yaml", gateway("web", &[("a", Some("a.test"), "a")])),
            ("secret.yaml", tls_secret_yaml("default", "a", &ca.leaf("gen1", &["a.test"]))),
        ]
    });
    let addr = env.sluice.addr_of("default/web", 443);
    let gen2 = env.ca.leaf("gen2", &["a.test"]);
    let rt = support::runtime();
    rt.block_on(async {
        let cfg = client_config(&env.ca.pem_path, false);
        let mut held = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&mut held, "a.test", "/").await, Ok(200));
        let gen1_der = held.peer.clone();

        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            // Fresh config per task: no resumption, every connection does a
            // full handshake against the current certificate.
            let cfg = client_config(&env.ca.pem_path, i % 2 == 1);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = async {
                        let mut c = connect(addr, "a.test", &cfg).await?;
                        for _ in 0..3 {
                            let s = get(&mut c, "a.test", "/").await?;
                            if s != 200 {
                                return Err(format!("status {s}"));
                            }
                        }
                        Ok::<_, String>(())
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().expect("failures").push(e),
                    }
                }
            }));
        }
        // The load is running: some requests completed before the rotation.
        let running = async {
            while ok.load(Ordering::Relaxed) < 20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), running).await.expect("load never started");
        let before = ok.load(Ordering::Relaxed);
        // Rotate: same Secret, new certificate and key (an atomic rename,
        // as a Kubernetes Secret mount or cert-manager would do).
        write_atomic(&env.config_dir.join("secret.yaml"), &tls_secret_yaml("default", "a", &gen2));
        let seen = {
            let cfg = client_config(&env.ca.pem_path, false);
            let mut seen = false;
            for _ in 0..100 {
                if let Ok(c) = connect(addr, "a.test", &cfg).await
                    && c.peer == gen2.der
                {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        };
        assert!(seen, "new handshakes never saw the rotated certificate");
        // Keep the load on until more requests completed after the swap.
        let after_swap = ok.load(Ordering::Relaxed);
        let more = async {
            while ok.load(Ordering::Relaxed) < after_swap + 20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), more).await.expect("load stopped after the rotation");
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("load task");
        }
        let failures = failures.lock().expect("failures").clone();
        let total = ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} connections failed: {:?}",
            failures.len(),
            total,
            &failures[..failures.len().min(5)]
        );
        assert!(before > 0 && total > before, "load did not run across the swap ({before} then {total})");
        // The connection from before the swap still works, on its old
        // certificate; a new one gets the new certificate.
        assert_eq!(get(&mut held, "a.test", "/after").await, Ok(200));
        assert_eq!(held.peer, gen1_der);
        assert_ne!(gen1_der, gen2.der);
        let fresh =
            connect(addr, "a.test", &client_config(&env.ca.pem_path, false)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fresh.peer, gen2.der);
    });
    drop(env.dir);
}

/// An expired certificate still serves (clients that skip date checks keep
/// working) but `sluice check` names the Secret and the date; a valid one
/// next to it gets no such warning.
#[test]
fn expired_certificates_are_reported_by_check() {
    let dir = TempDir::new("tls-expiry");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["old.example".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 6, 30);
    let cert = params.self_signed(&key).expect("self-signed");
    let expired = Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() };
    let ca = TestCa::new(dir.path(), "expiry-ca");
    let fresh = ca.leaf("new.example", &["new.example"]);
    let mut yaml = String::from(CLASS);
    yaml.push_str(&gateway("web", &[("old", Some("old.example"), "old-tls"), ("new", Some("new.example"), "new-tls")]));
    yaml.push_str(&tls_secret_yaml("default", "old-tls", &expired));
    yaml.push_str(&tls_secret_yaml("default", "new-tls", &fresh));
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let (code, out) = support::sluice_check(&path);
    assert_eq!(code, 0, "a warning does not fail check:\n{out}");
    assert!(out.contains("Secret default/old-tls expired at 2021-06-30T00:00:00Z"), "{out}");
    assert!(!out.contains("default/new-tls expire"), "{out}");
}

/// Sluice shares one socket per port across Gateways, and a socket speaks
/// TLS or not for every listener on it. When two Gateways disagree about a
/// port, the older one keeps it (age decides, not the name: the younger one
/// here sorts first by name) and the younger one's listener is a protocol
/// conflict, reported on it, instead of being "programmed" on a socket that
/// would answer it with a TLS handshake.
#[test]
fn gateways_that_disagree_about_tls_on_a_shared_port_conflict() {
    let test = "gateways_that_disagree_about_tls_on_a_shared_port_conflict";
    if !require_curl(test) {
        return;
    }
    let dir = TempDir::new("tls-port-conflict");
    let logs = dir.subdir("logs");
    let cfg_dir = dir.subdir("config");
    let echo = Echo::start("app", "default", &logs);
    let ca = TestCa::new(dir.path(), "conflict-ca");
    let mut y = format!("{CLASS}---\n{}", local_service("app", echo.addr.port()));
    y.push_str(&tls_secret_yaml("default", "edge-tls", &ca.leaf("edge", &["edge.example"])));
    y.push_str(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: z-edge, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  gatewayClassName: sluice
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: edge-tls}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a-plain, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  gatewayClassName: sluice
  listeners:
  - {name: http, port: 443, protocol: HTTP}
  - {name: other, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-app, namespace: default}
spec:
  parentRefs: [{name: z-edge}, {name: a-plain}]
  rules:
  - backendRefs: [{name: app, port: 8080}]
"#,
    );
    let path = cfg_dir.join("config.yaml");
    std::fs::write(&path, y).expect("writing config");

    let (code, out) = support::sluice_check(&path);
    assert_eq!(code, 0, "a listener conflict is reported, not fatal:\n{out}");
    let line = |prefix: &str| {
        out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?}:\n{out}")).to_string()
    };
    let plain = line("Gateway default/a-plain listener http ");
    for want in ["Accepted=False(ProtocolConflict)", "Conflicted=True(ProtocolConflict)", "Programmed=False"] {
        assert!(plain.contains(want), "{want}: {plain}");
    }
    assert!(
        out.contains("port 443 is served as HTTPS by the older Gateway default/z-edge"),
        "the warning names the port and the Gateway holding it:\n{out}"
    );
    let other = line("Gateway default/a-plain listener other ");
    assert!(other.contains("Accepted=True(Accepted)") && other.contains("Conflicted=False"), "{other}");
    let edge = line("Gateway default/z-edge listener https ");
    assert!(edge.contains("Accepted=True(Accepted)") && edge.contains("Programmed=True"), "{edge}");

    let sluice = Sluice::start(&cfg_dir, &logs, &["--bind", "443=127.0.0.1:0", "--bind", "8080=127.0.0.1:0"]);
    let tls_addr = sluice.addr_of("*", 443);
    let r = curl_https(tls_addr, "edge.example", None, "/", &ca.pem_path, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.pod().starts_with("app"), "{r:?}");
    let plain_addr = sluice.addr_of("*", 8080);
    let r = support::curl(plain_addr, &support::Req::get("/").host("any.example")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "the younger Gateway's other listener serves: {r:?}");
    // The shared socket holds only the listener that owns it.
    let (_, body) = sluice.admin_get("/config").expect("admin /config");
    let table: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    let bind = table["binds"].as_array().and_then(|b| b.iter().find(|b| b["port"] == 443)).expect("bind 443");
    let names: Vec<&str> =
        bind["listeners"].as_array().into_iter().flatten().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["default/z-edge/https"], "{bind}");
}

/// A listener with several certificateRefs serves, per handshake, the one
/// whose names match the SNI (not just the first), and of an ECDSA and an
/// RSA certificate for the same names, the one the client can verify:
/// checked with openssl s_client (which certificate, which key type), and
/// curl verifying each name against the CA.
#[test]
fn several_certificates_on_one_listener_are_chosen_by_name_and_key_type() {
    let test = "several_certificates_on_one_listener_are_chosen_by_name_and_key_type";
    if !require_curl(test) || !require_tool("openssl", test) {
        return;
    }
    let env = start("tls-multi-cert", |ca| {
        let mut y = String::new();
        y.push_str(&tls_secret_yaml("default", "a-tls", &ca.leaf("a", &["a.example.com"])));
        y.push_str(&tls_secret_yaml("default", "b-tls", &ca.leaf("b", &["b.example.com", "*.b.example.com"])));
        y.push_str(&tls_secret_yaml("default", "c-ecdsa", &ca.leaf("c-ecdsa", &["c.example.com"])));
        y.push_str(&tls_secret_yaml("default", "c-rsa", &ca.leaf_rsa("c-rsa", &["c.example.com"])));
        y.push_str(
            r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: multi, namespace: default}
spec:
  gatewayClassName: sluice
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs: [{name: a-tls}, {name: b-tls}, {name: c-ecdsa}, {name: c-rsa}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: multi-app, namespace: default}
spec:
  parentRefs: [{name: multi}]
  rules:
  - backendRefs: [{name: app, port: 8080}]
"#,
        );
        vec![("multi.yaml", y)]
    });
    let addr = env.sluice.addr_of("default/multi", 443);
    let ca = &env.ca.pem_path;
    for (sni, cn) in [
        (Some("a.example.com"), "a"),
        (Some("b.example.com"), "b"),
        (Some("x.b.example.com"), "b"),
        (Some("c.example.com"), "c-ecdsa"),
        (Some("unknown.test"), "a"),
        (None, "a"),
    ] {
        let h = s_client(addr, sni, ca, None);
        assert!(h.ok, "SNI {sni:?}:\n{}", h.output);
        assert_eq!(subject_cn(&h), cn, "SNI {sni:?}: {}", h.subject);
    }
    // A client that accepts only RSA signatures (TLS 1.3 and 1.2) gets the
    // RSA certificate, one that accepts only ECDSA the ECDSA one.
    for (version, sigalgs, cn) in [
        ("-tls1_3", "rsa_pss_rsae_sha256", "c-rsa"),
        ("-tls1_2", "RSA+SHA256", "c-rsa"),
        ("-tls1_3", "ECDSA+SHA256", "c-ecdsa"),
    ] {
        let h = s_client_with(addr, Some("c.example.com"), ca, None, &[version, "-sigalgs", sigalgs]);
        assert!(h.ok && h.verify.contains("0 (ok)"), "{version} {sigalgs}:\n{}", h.output);
        assert_eq!(subject_cn(&h), cn, "{version} {sigalgs}: {}", h.subject);
    }
    for host in ["a.example.com", "b.example.com", "c.example.com"] {
        let r = curl_https(addr, host, None, "/", ca, &[]).unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
}

/// An idle HTTP/1.1 keep-alive connection over TLS drops its hyper state
/// and buffers (parked, as plain HTTP/1.1 connections are) and keeps only
/// its TLS session; its next requests are served as before, several
/// rounds in a row. A request written while parked wakes it.
#[test]
fn idle_tls_http1_connections_are_parked_and_serve_again() {
    let env = start("tls-park", |ca| {
        let mut y = tls_secret_yaml("default", "a", &ca.leaf("a", &["a.test"]));
        y.push_str(&gateway("web", &[("a", Some("a.test"), "a")]));
        vec![("body.yaml", y)]
    });
    let addr = env.sluice.addr_of("default/web", 443);
    let rt = support::runtime();
    rt.block_on(async {
        let cfg = client_config(&env.ca.pem_path, false);
        let mut a = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
        let mut b = connect(addr, "a.test", &cfg).await.unwrap_or_else(|e| panic!("{e}"));
        for round in 0..3 {
            assert_eq!(get(&mut a, "a.test", &format!("/a{round}")).await, Ok(200), "round {round}");
            assert_eq!(get(&mut b, "a.test", &format!("/b{round}")).await, Ok(200), "round {round}");
            let sluice = &env.sluice;
            tokio::task::block_in_place(|| sluice.wait_parked(2, &format!("round {round}")));
        }
        // A TLS 1.2 connection parks too.
        let mut c =
            connect(addr, "a.test", &client_config(&env.ca.pem_path, true)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(&mut c, "a.test", "/c").await, Ok(200));
        tokio::task::block_in_place(|| env.sluice.wait_parked(3, "with TLS 1.2"));
        assert_eq!(get(&mut c, "a.test", "/c2").await, Ok(200));
    });
}
