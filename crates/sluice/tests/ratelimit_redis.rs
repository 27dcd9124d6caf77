//! `Redis` rate limiting against a real `redis-server` the test starts on a
//! free port: one global bucket across two Sluice processes, the configured
//! fail-closed / fail-open answers while Redis is down, recovery when it
//! comes back.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Echo, Req, Sluice, TempDir, curl_retry, require_curl, wait_until, web_config};

/// A `redis-server` on 127.0.0.1:`port`, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}"));
        wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).ok())
            .unwrap_or_else(|| panic!("redis-server did not listen on {port}"));
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `true` when redis-server is on PATH; under CI=true its absence fails.
fn require_redis(test: &str) -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: `redis-server` is required (CI=true) but was not found on PATH (apt package redis-server)");
    }
    eprintln!("note: skipping {test}: `redis-server` not found on PATH");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

fn status(addr: SocketAddr, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code}", &format!("http://{addr}{path}")])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn redis_mode_is_global_fails_as_configured_and_recovers() {
    if !require_curl("redis_mode") || !require_redis("redis_mode") {
        return;
    }
    let dir = TempDir::new("ratelimit-redis");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("echo", "default", &log_dir);
    let mut redis = Redis::start(free_port());
    let port = redis.port;
    let rules = "  - name: closed\n    matches: [{path: {type: PathPrefix, value: /closed}}]\n    backendRefs: [{name: echo, port: 8080}]\n\
                 \x20 - name: open\n    matches: [{path: {type: PathPrefix, value: /open}}]\n    backendRefs: [{name: echo, port: 8080}]\n";
    let policy = |name: &str, failure: &str, url: bool| {
        let url = if url { format!("url: redis://127.0.0.1:{port}, ") } else { String::new() };
        format!(
            "---\napiVersion: policy.sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: {name}}}]\n  mode: Redis\n  redis: {{{url}timeout: 100ms, failureMode: {failure}}}\n  limit: {{requests: 1, unit: Minute, burst: 5}}\n  key: []\n"
        )
    };
    // One policy names its URL, the other uses --redis-url.
    let yaml = format!(
        "{}{}{}",
        web_config(rules, &[("echo", echo.addr.port())]),
        policy("closed", "Closed", true),
        policy("open", "Open", false)
    );
    std::fs::write(config_dir.join("web.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://127.0.0.1:{port}");
    let args = ["--bind", "80=127.0.0.1:0", "--redis-url", url.as_str()];
    let a = Sluice::start(&config_dir, &log_dir, &args);
    let b = Sluice::start(&config_dir, &log_dir, &args);
    let (addr_a, addr_b) = (a.addr_of("*", 80), b.addr_of("*", 80));
    curl_retry(addr_a, &Req::get("/nothing-limited-here"), Duration::from_secs(10));
    curl_retry(addr_b, &Req::get("/nothing-limited-here"), Duration::from_secs(10));

    // Exact and global: 5 in total across both processes, alternating.
    for path in ["/closed", "/open"] {
        let codes: Vec<u16> = (0..12).map(|i| status(if i % 2 == 0 { addr_a } else { addr_b }, path)).collect();
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{path}: {codes:?}");
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{path}: {codes:?}");
        assert!(codes[..5].iter().all(|c| *c == 200), "{path}: {codes:?}");
    }

    // Redis dies: fail-closed limits, fail-open admits.
    drop(redis);
    for _ in 0..5 {
        assert_eq!(status(addr_a, "/closed"), 429);
        assert_eq!(status(addr_b, "/open"), 200);
    }
    let (_, metrics) = a.admin_get("/metrics").unwrap_or_else(|| panic!("no /metrics"));
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_ratelimit_requests_total")
            && l.contains("decision=\"failed_closed\"")
            && l.contains("policy=\"default/closed\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Redis is back (empty): decisions are made there again.
    redis = Redis::start(port);
    wait_until(Duration::from_secs(15), || (status(addr_a, "/closed") == 200).then_some(()))
        .unwrap_or_else(|| panic!("no recovery after Redis returned: {}", a.stderr()));
    let codes: Vec<u16> = (0..10).map(|i| status(if i % 2 == 0 { addr_b } else { addr_a }, "/closed")).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 4, "1 + 4 = the burst of 5: {codes:?}");
    drop(redis);
}
