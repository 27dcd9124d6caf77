//! TLS test helpers: an rcgen CA and leaf certificates, `kubernetes.io/tls`
//! Secrets, and the real clients (`curl --resolve --cacert`,
//! `openssl s_client -servername`, `h2load`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

/// A test certificate authority; its PEM is written to `ca.pem` in `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate file, for `--cacert` / `-CAfile`.
    pub pem_path: PathBuf,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
    /// The certificate, DER (to compare with what a client was served).
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem_path = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_path, issuer.pem()).expect("writing the CA PEM");
        Self { issuer, pem_path }
    }

    /// A leaf with common name `cn` and DNS SANs `sans`, signed by this CA.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        self.leaf_with_uris(cn, sans, &[])
    }

    /// [`TestCa::leaf`] with URI SANs as well.
    pub fn leaf_with_uris(&self, cn: &str, sans: &[&str], uris: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        for u in uris {
            let uri = rcgen::string::Ia5String::try_from(u.to_string()).expect("URI SAN");
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing the leaf");
        Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// [`TestCa::leaf`] with an RSA 2048 key (made by `openssl genpkey`:
    /// ring signs with RSA keys but does not make them).
    pub fn leaf_rsa(&self, cn: &str, sans: &[&str]) -> Leaf {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("running openssl genpkey");
        assert!(out.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
        let pem = String::from_utf8(out.stdout).expect("PEM is text");
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("signing the leaf");
        Leaf { cert: cert.pem(), key: pem, der: cert.der().to_vec() }
    }
}

/// A `kubernetes.io/tls` Secret holding `leaf`.
pub fn tls_secret(ns: &str, name: &str, leaf: &Leaf) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&leaf.cert), "tls.key": b64(&leaf.key)},
    })
}

/// The same Secret as YAML (JSON is YAML).
pub fn tls_secret_yaml(ns: &str, name: &str, leaf: &Leaf) -> String {
    format!("---\n{}\n", tls_secret(ns, name, leaf))
}

/// `true` when `tool` runs. Without it: fails under CI=true, otherwise
/// prints a note and returns `false` (the caller returns early = skip).
pub fn require_tool(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg(if tool == "openssl" { "version" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: `{tool}` is required (CI=true) but was not found on PATH");
    }
    eprintln!("note: skipping {test}: `{tool}` not found on PATH");
    false
}

/// A response over TLS from [`curl_https`].
#[derive(Debug)]
pub struct TlsResp {
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    pub body: String,
    /// The echo's JSON, when the body is JSON.
    pub echo: Option<Value>,
}

impl TlsResp {
    /// The echoed `pod`.
    pub fn pod(&self) -> &str {
        self.echo.as_ref().and_then(|e| e.get("pod")).and_then(Value::as_str).unwrap_or_default()
    }
}

/// `curl https://SNI:PORT/PATH --resolve SNI:PORT:IP --cacert CA` with
/// `Host: host` when given (curl sends it as `:authority` over h2).
/// `extra` is appended (e.g. `--http2`, `--http1.1`).
pub fn curl_https(
    addr: SocketAddr,
    sni: &str,
    host: Option<&str>,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> Result<TlsResp, String> {
    let url = format!("https://{sni}:{}{path}", addr.port());
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code} %{http_version}"])
        .args(["--resolve", &format!("{sni}:{}:{}", addr.port(), addr.ip())])
        .arg("--cacert")
        .arg(ca);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    cmd.args(extra).arg(&url).stdin(Stdio::null());
    let out = cmd.output().map_err(|e| format!("running curl: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl {url} (host {host:?}) failed: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (body, tail) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut parts = tail.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("curl printed {tail:?}"))?;
    let http_version = parts.next().unwrap_or_default().to_string();
    Ok(TlsResp { status, http_version, body: body.to_string(), echo: serde_json::from_str(body).ok() })
}

/// What `openssl s_client` saw.
#[derive(Debug)]
pub struct Handshake {
    /// Whether a certificate was received.
    pub ok: bool,
    /// The leaf's subject line (`subject=CN = ...`).
    pub subject: String,
    /// `Verify return code: 0 (ok)` etc.
    pub verify: String,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    pub protocol: String,
    /// Whole output, for failure messages.
    pub output: String,
}

/// `openssl s_client -connect ADDR [-servername NAME | -noservername]
/// -CAfile CA [-alpn ...]`, then closes.
pub fn s_client(addr: SocketAddr, servername: Option<&str>, ca: &Path, alpn: Option<&str>) -> Handshake {
    s_client_with(addr, servername, ca, alpn, &[])
}

/// [`s_client`] with extra arguments (e.g. `-tls1_2`, `-sess_out F`).
pub fn s_client_with(
    addr: SocketAddr,
    servername: Option<&str>,
    ca: &Path,
    alpn: Option<&str>,
    extra: &[&str],
) -> Handshake {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]).args(extra).arg("-CAfile").arg(ca);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    if let Some(a) = alpn {
        cmd.args(["-alpn", a]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"Q\n");
    }
    let out = child.wait_with_output().expect("openssl s_client output");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = |prefix: &str| {
        output.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(|l| l.to_string()).unwrap_or_default()
    };
    let alpn = line("ALPN protocol:").strip_prefix("ALPN protocol:").map(|s| s.trim().to_string());
    Handshake {
        ok: output.contains("-----BEGIN CERTIFICATE-----") || output.contains("Server certificate"),
        subject: line("subject="),
        verify: line("Verify return code:"),
        alpn,
        protocol: line("Protocol"),
        output,
    }
}

/// Runs a command with a deadline; returns (exit ok, stdout+stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Conditions of Gateway `ns/gw` listener `listener` from `/diagnostics`:
/// (type → (status, reason)) and attachedRoutes.
pub fn listener_conditions(
    sluice: &super::Sluice,
    gateway: &str,
    listener: &str,
) -> (std::collections::BTreeMap<String, (String, String)>, u32) {
    let (_, body) = sluice.admin_get("/diagnostics").expect("admin /diagnostics");
    let d: Value = serde_json::from_str(&body).expect("diagnostics JSON");
    let (ns, name) = gateway.split_once('/').expect("NS/NAME");
    let want = format!("name: \"{listener}\"");
    let status = d["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            s["kind"] == "Gateway"
                && s["namespace"] == ns
                && s["name"] == name
                && s["scope"].as_str().is_some_and(|sc| sc.starts_with("Listener") && sc.contains(&want))
        })
        .unwrap_or_else(|| panic!("no status for {gateway} listener {listener} in {body}"));
    let scope = status["scope"].as_str().unwrap_or_default();
    let attached = scope
        .split("attached_routes: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX);
    let conds = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), (if c["status"] == true { "True".into() } else { s("status") }, s("reason")))
        })
        .collect();
    (conds, attached)
}
