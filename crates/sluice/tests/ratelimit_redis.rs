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

/// Every key in the Redis at `port` (RESP `KEYS *`, spoken directly).
fn redis_keys(port: u16) -> Vec<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("redis: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n").unwrap_or_else(|e| panic!("redis: {e}"));
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The reply ends with a complete array; read until the count is met.
    loop {
        let n = s.read(&mut buf).unwrap_or_else(|e| panic!("redis: {e}"));
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let mut lines = text.split("\r\n");
        let count: usize = lines.next().and_then(|l| l.strip_prefix('*')).and_then(|c| c.parse().ok()).unwrap_or(0);
        let keys: Vec<String> = lines.skip(1).step_by(2).take(count).map(str::to_string).collect();
        if n == 0 || (keys.len() == count && text.ends_with("\r\n")) {
            return keys;
        }
    }
}

/// Two installations sharing one Redis keep apart with their own
/// `--redis-key-prefix`; the keys carry it.
#[test]
fn installations_with_their_own_key_prefix_do_not_share_buckets() {
    if !require_curl("redis_prefix") || !require_redis("redis_prefix") {
        return;
    }
    let dir = TempDir::new("ratelimit-redis-prefix");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("echo", "default", &log_dir);
    let redis = Redis::start(free_port());
    let rules = "  - name: api\n    matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: echo, port: 8080}]\n";
    let policy = "---\napiVersion: policy.sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: api, namespace: default}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]\n  mode: Redis\n  redis: {timeout: 100ms, failureMode: Closed}\n  limit: {requests: 1, unit: Minute, burst: 3}\n  key: []\n";
    std::fs::write(
        config_dir.join("web.yaml"),
        format!("{}{policy}", web_config(rules, &[("echo", echo.addr.port())])),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let prod = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0", "--redis-url", url.as_str()]);
    let staging = Sluice::start(
        &config_dir,
        &log_dir,
        &["--bind", "80=127.0.0.1:0", "--redis-url", url.as_str(), "--redis-key-prefix", "staging"],
    );
    let (a, b) = (prod.addr_of("*", 80), staging.addr_of("*", 80));
    curl_retry(a, &Req::get("/ready"), Duration::from_secs(10));
    curl_retry(b, &Req::get("/ready"), Duration::from_secs(10));
    let codes = |addr| (0..5).map(|_| status(addr, "/api")).collect::<Vec<u16>>();
    assert_eq!(codes(a), [200, 200, 200, 429, 429], "prod uses up its own burst");
    assert_eq!(codes(b), [200, 200, 200, 429, 429], "staging has a bucket of its own");
    let keys = redis_keys(redis.port);
    assert!(keys.iter().any(|k| k.starts_with("sluice:rl:default/api:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("staging:rl:default/api:")), "{keys:?}");
}
