//! Observability through the binary: `/metrics` parsed with a real
//! Prometheus text parser after real traffic, `/config` and `/diagnostics`
//! following swaps, access log lines matching requests, and an admin
//! listener that refuses to open on every interface by accident.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use support::{Echo, Req, Sluice, TempDir, curl, curl_retry, prefix_rule, require_curl, web_config, write_atomic};

fn scrape(sluice: &Sluice) -> Vec<Sample> {
    let (status, body) = sluice.admin_get("/metrics").expect("admin /metrics reachable");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{body}")).samples
}

fn labels_match(s: &Sample, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
}

/// Sum of a counter (or histogram `_count`) over series matching `want`.
fn sum(samples: &[Sample], metric: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric && labels_match(s, want))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

fn histogram_buckets(samples: &[Sample], metric: &str, want: &[(&str, &str)]) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter(|s| s.metric == metric && labels_match(s, want))
        .flat_map(|s| match &s.value {
            Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until `f` holds for a fresh scrape (metrics flush within ~100 ms).
fn eventually(sluice: &Sluice, what: &str, f: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    support::wait_until(Duration::from_secs(5), || {
        let s = scrape(sluice);
        f(&s).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!("{what}; last scrape:\n{}", sluice.admin_get("/metrics").map(|r| r.1).unwrap_or_default())
    })
}

#[test]
fn request_metrics_move_with_real_traffic() {
    if !require_curl("request_metrics_move_with_real_traffic") {
        return;
    }
    let dir = TempDir::new("metrics");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    let dead = closed_port();
    let rules = format!("{}{}", prefix_rule("/app", "blue"), prefix_rule("/dead", "dead"));
    std::fs::write(config_dir.join("c.yaml"), web_config(&rules, &[("blue", blue.addr.port()), ("dead", dead)]))
        .expect("write");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    curl_retry(addr, &Req::get("/app/warm"), Duration::from_secs(5));

    for i in 0..20 {
        assert_eq!(curl(addr, &Req::get(&format!("/app/{i}"))).map(|r| r.status), Ok(200));
    }
    for _ in 0..3 {
        assert_eq!(curl(addr, &Req::get("/app/x").method("POST")).map(|r| r.status), Ok(200));
        assert_eq!(curl(addr, &Req::get("/nothing-here")).map(|r| r.status), Ok(404));
        assert_eq!(curl(addr, &Req::get("/dead")).map(|r| r.status), Ok(502));
    }
    let route = [("route", "default/app"), ("backend", "default/blue:8080")];
    let samples = eventually(&sluice, "GET 200s not counted", |s| {
        sum(s, "http_requests_total", &[("code", "200"), ("method", "GET"), route[0], route[1]]) >= 21.0
    });
    assert_eq!(
        sum(&samples, "http_requests_total", &[("code", "200"), ("method", "GET"), route[0], route[1], ("rule", "0")]),
        21.0
    );
    assert_eq!(sum(&samples, "http_requests_total", &[("code", "200"), ("method", "POST"), route[0]]), 3.0);
    // A request that matched nothing has empty route/backend labels: the
    // label set is bounded by the config, never by request paths.
    assert_eq!(sum(&samples, "http_requests_total", &[("code", "404"), ("route", ""), ("backend", "")]), 3.0);
    assert!(
        samples.iter().all(|s| !s.labels.values().any(|v| v.contains("nothing-here"))),
        "a raw path leaked into labels"
    );
    assert_eq!(sum(&samples, "http_requests_total", &[("code", "502"), ("route", "default/app-dead")]), 0.0);
    assert_eq!(sum(&samples, "http_requests_total", &[("code", "502"), ("backend", "default/dead:8080")]), 3.0);
    assert_eq!(sum(&samples, "sluice_upstream_connect_errors_total", &[("backend", "default/dead:8080")]), 3.0);

    // The histogram agrees with the counter, and its buckets are cumulative.
    let buckets =
        histogram_buckets(&samples, "http_request_duration_seconds", &[("code", "200"), ("method", "GET"), route[0]]);
    assert!(!buckets.is_empty(), "no duration histogram");
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "buckets not cumulative: {buckets:?}");
    assert_eq!(buckets.last().map(|b| (b.0.is_infinite(), b.1)), Some((true, 21.0)));
    assert!(buckets.iter().any(|b| b.0 <= 1.0 && b.1 == 21.0), "loopback requests took over a second? {buckets:?}");

    // The SLO error ratio an existing PrometheusRule computes:
    // sum(rate(http_requests_total{code=~"5.."})) / sum(rate(http_requests_total)).
    let all = sum(&samples, "http_requests_total", &[]);
    let errors: f64 = samples
        .iter()
        .filter(|s| s.metric == "http_requests_total" && s.labels.get("code").is_some_and(|c| c.starts_with('5')))
        .map(|s| if let Value::Counter(v) = s.value { v } else { 0.0 })
        .sum();
    assert_eq!((errors, all), (3.0, 30.0));

    // Config metrics.
    assert_eq!(sum(&samples, "sluice_config_generation", &[]), 1.0);
    assert_eq!(sum(&samples, "sluice_config_applies_total", &[]), 1.0);
    assert!(sum(&samples, "sluice_route_table_matches", &[]) >= 2.0);
}

#[test]
fn open_connections_are_gauged() {
    let dir = TempDir::new("conns");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    std::fs::write(config_dir.join("c.yaml"), web_config(&prefix_rule("/", "blue"), &[("blue", blue.addr.port())]))
        .expect("write");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| keep_alive_request(addr)).collect();
    eventually(&sluice, "3 open client connections not gauged", |s| {
        sum(s, "sluice_downstream_connections", &[("port", "80")]) == 3.0
            && sum(s, "sluice_upstream_connections", &[]) >= 1.0
    });
    conns.clear();
    eventually(&sluice, "closed client connections still gauged", |s| {
        sum(s, "sluice_downstream_connections", &[("port", "80")]) == 0.0
    });
}

/// Sends one keep-alive request and returns the still-open connection.
fn keep_alive_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[test]
fn config_and_diagnostics_follow_swaps_and_rejections() {
    let dir = TempDir::new("adminjson");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    let green = Echo::start("green", "default", &log_dir);
    let services = [("blue", blue.addr.port()), ("green", green.addr.port())];
    let file = config_dir.join("c.yaml");
    std::fs::write(&file, web_config(&prefix_rule("/app", "blue"), &services)).expect("write");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);

    let config = |sluice: &Sluice| -> serde_json::Value {
        let (status, body) = sluice.admin_get("/config").expect("admin /config");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/config is not JSON: {e}\n{body}"))
    };
    let c = config(&sluice);
    assert_eq!(c["generation"], 1);
    assert!(c["appliedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{c}");
    let first_match = &c["binds"][0]["listeners"][0]["hosts"][0]["matches"][0];
    assert_eq!(first_match["path"], serde_json::json!({"type": "PathPrefix", "value": "/app"}));
    assert_eq!(first_match["route"]["name"], "app");
    assert_eq!(first_match["backends"][0]["service"], "default/blue:8080");
    assert_eq!(first_match["backends"][0]["endpoints"][0], format!("127.0.0.1:{}", blue.addr.port()));

    write_atomic(&file, &web_config(&prefix_rule("/app", "green"), &services));
    let swapped = support::wait_until(Duration::from_secs(10), || {
        let c = config(&sluice);
        (c["generation"] == 2).then_some(c)
    })
    .expect("/config never showed generation 2");
    assert_eq!(
        swapped["binds"][0]["listeners"][0]["hosts"][0]["matches"][0]["backends"][0]["service"],
        "default/green:8080"
    );
    let samples = eventually(&sluice, "applies not counted", |s| sum(s, "sluice_config_applies_total", &[]) == 2.0);
    assert_eq!(sum(&samples, "sluice_config_generation", &[]), 2.0);
    assert_eq!(sum(&samples, "sluice_config_apply_duration_seconds", &[]), 2.0, "one apply latency per apply");

    // A rejected change: counted, visible in /diagnostics, table kept.
    write_atomic(&file, &web_config(&prefix_rule("/app", "green").replace("PathPrefix", "Bogus"), &services));
    eventually(&sluice, "rejection not counted", |s| sum(s, "sluice_config_apply_failures_total", &[]) == 1.0);
    let (_, body) = sluice.admin_get("/diagnostics").expect("admin /diagnostics");
    let d: serde_json::Value = serde_json::from_str(&body).expect("diagnostics JSON");
    assert_eq!(d["lastAttemptRejected"], true, "{d}");
    assert_eq!(d["generation"], 2);
    let diag = d["diagnostics"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["severity"] == "Error"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(diag["object"], "HTTPRoute default/app", "{d}");
    assert!(diag["field"].as_str().is_some_and(|f| f.contains("path.type")), "{d}");
    assert_eq!(config(&sluice)["generation"], 2, "the rejected change must not be served");
}

#[test]
fn access_log_lines_match_the_requests() {
    if !require_curl("access_log_lines_match_the_requests") {
        return;
    }
    let dir = TempDir::new("accesslog");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    std::fs::write(config_dir.join("c.yaml"), web_config(&prefix_rule("/app", "blue"), &[("blue", blue.addr.port())]))
        .expect("write");
    let access = log_dir.join("access.log");
    let sluice = Sluice::start(
        &config_dir,
        &log_dir,
        &["--bind", "80=127.0.0.1:0", "--access-log", access.to_str().expect("utf-8")],
    );
    let addr = sluice.addr_of("*", 80);
    curl_retry(addr, &Req::get("/app/warm"), Duration::from_secs(5));
    for i in 0..5 {
        assert_eq!(curl(addr, &Req::get(&format!("/app/{i}?q={i}")).host("shop.example")).map(|r| r.status), Ok(200));
    }
    assert_eq!(curl(addr, &Req::get("/missing")).map(|r| r.status), Ok(404));
    let lines: Vec<serde_json::Value> = support::wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}"))).collect();
        (lines.len() >= 7).then_some(lines)
    })
    .expect("access log lines missing");
    let by_path: BTreeMap<String, &serde_json::Value> =
        lines.iter().map(|l| (l["path"].as_str().unwrap_or_default().to_string(), l)).collect();
    for i in 0..5 {
        let l = by_path.get(&format!("/app/{i}?q={i}")).unwrap_or_else(|| panic!("no line for /app/{i}: {lines:?}"));
        assert_eq!(l["status"], 200);
        assert_eq!(l["method"], "GET");
        assert_eq!(l["host"], "shop.example");
        assert_eq!(l["route"], "default/app");
        assert_eq!(l["rule"], 0);
        assert_eq!(l["backend"], "default/blue:8080");
        assert_eq!(l["upstream"], format!("127.0.0.1:{}", blue.addr.port()));
        assert_eq!(l["client"], "127.0.0.1");
        assert_eq!(l["completed"], true);
        assert!(l["bytes"].as_u64().is_some_and(|b| b > 100), "{l}");
        assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= l["upstream_ms"].as_f64().unwrap_or(f64::MAX)), "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{l}");
    }
    let missing = by_path.get("/missing").expect("no line for the 404");
    assert_eq!(
        (missing["status"].clone(), missing["route"].clone(), missing["backend"].clone()),
        (404.into(), serde_json::Value::Null, serde_json::Value::Null)
    );
}

#[test]
fn admin_refuses_every_interface_unless_asked() {
    let dir = TempDir::new("adminany");
    let config = dir.subdir("config");
    std::fs::write(config.join("c.yaml"), web_config(&prefix_rule("/", "x"), &[("x", closed_port())])).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().expect("utf-8"), "--bind", "80=127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-allow-any"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().expect("utf-8"), "--bind", "80=127.0.0.1:0"])
        .args(["--admin", "0.0.0.0:0", "--admin-allow-any"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sluice");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let port = loop {
        line.clear();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            panic!("sluice exited without printing `admin addr=`");
        }
        if let Some(a) = line.trim().strip_prefix("admin addr=") {
            break a.parse::<SocketAddr>().expect("admin addr").port();
        }
    };
    let health = support::raw_get(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz").map(|r| r.0);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health, Some(200), "--admin-allow-any binds every interface");
}

/// The PrometheusRule, ServiceMonitor and Grafana dashboard in
/// `deploy/observability` parse, and every metric they query is one Sluice
/// exports (after traffic, so histograms exist).
#[test]
fn deploy_rules_and_dashboard_query_metrics_sluice_exports() {
    if !require_curl("deploy_rules_and_dashboard_query_metrics_sluice_exports") {
        return;
    }
    let deploy = support::repo_dir().join("deploy/observability");
    let read = |name: &str| std::fs::read_to_string(deploy.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rules = read("prometheusrule.yaml");
    let monitor = read("servicemonitor.yaml");
    let dashboard = read("sluice-dashboard.json");
    let rules_doc: serde_json::Value = serde_saphyr::from_str(&rules).expect("prometheusrule.yaml is YAML");
    assert_eq!(rules_doc["kind"], "PrometheusRule");
    let monitor_doc: serde_json::Value = serde_saphyr::from_str(&monitor).expect("servicemonitor.yaml is YAML");
    assert_eq!(monitor_doc["spec"]["endpoints"][0]["path"], "/metrics");
    let dash: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let mut exprs: Vec<String> = rules_doc["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    exprs.extend(
        dash["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["expr"].as_str().map(str::to_string)),
    );
    // The SLO rules users already run must be there verbatim.
    assert!(
        exprs
            .iter()
            .any(|e| e == r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"#)
    );
    assert!(
        exprs
            .iter()
            .any(|e| e
                == r#"sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m])) > 0.05"#)
    );

    let dir = TempDir::new("deploymetrics");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    let slow = format!("{}    timeouts:\n      backendRequest: 100ms\n", prefix_rule("/slow", "blue"));
    let rules_cfg = format!("{}{}{slow}", prefix_rule("/app", "blue"), prefix_rule("/dead", "dead"));
    std::fs::write(
        config_dir.join("c.yaml"),
        web_config(&rules_cfg, &[("blue", blue.addr.port()), ("dead", closed_port())]),
    )
    .expect("write");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    curl_retry(addr, &Req::get("/app"), Duration::from_secs(5));
    let _ = curl(addr, &Req::get("/dead"));
    assert_eq!(curl(addr, &Req::get("/slow?delay=1s")).map(|r| r.status), Ok(504));
    let samples = eventually(&sluice, "no traffic metrics", |s| sum(s, "http_requests_total", &[]) >= 3.0);
    assert_eq!(sum(&samples, "sluice_upstream_timeouts_total", &[("backend", "default/blue:8080")]), 1.0);
    let exported: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.metric.as_str()).collect();
    let mut referenced = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic()) {
            rest = &rest[i..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let word = &rest[..end];
            if (word.starts_with("http_") || word.starts_with("sluice_")) && !word.contains(':') {
                referenced.insert(word.trim_end_matches("_bucket").to_string());
            }
            rest = &rest[end..];
        }
    }
    assert!(referenced.len() >= 8, "too few metrics referenced: {referenced:?}");
    // The parser reports histograms by base name and counters by full name.
    let missing: Vec<_> = referenced.iter().filter(|m| !exported.contains(m.as_str())).collect();
    assert!(
        missing.is_empty(),
        "deploy/observability queries metrics Sluice does not export: {missing:?}\nexported: {exported:?}"
    );
}

#[test]
fn request_metrics_can_be_turned_off_to_measure_their_cost() {
    if !require_curl("request_metrics_can_be_turned_off_to_measure_their_cost") {
        return;
    }
    let dir = TempDir::new("nometrics");
    let log_dir = dir.subdir("logs");
    let config_dir = dir.subdir("config");
    let blue = Echo::start("blue", "default", &log_dir);
    std::fs::write(config_dir.join("c.yaml"), web_config(&prefix_rule("/", "blue"), &[("blue", blue.addr.port())]))
        .expect("write");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0", "--no-request-metrics"]);
    let addr = sluice.addr_of("*", 80);
    curl_retry(addr, &Req::get("/"), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let samples = scrape(&sluice);
    assert_eq!(sum(&samples, "http_requests_total", &[]), 0.0);
    assert_eq!(sum(&samples, "sluice_config_applies_total", &[]), 1.0, "control-plane metrics stay on");
}
