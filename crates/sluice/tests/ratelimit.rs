//! Rate limiting end to end through `sluice run` with curl: accuracy under
//! concurrent clients, burst, key isolation, allow-lists, trusted
//! `X-Forwarded-For` hops, the IETF headers, ingress-nginx annotations,
//! buckets kept across reloads, bad policies, metrics, and `Cluster` mode
//! across three Sluice processes.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Echo, Req, Sluice, TempDir, curl, curl_retry, local_service, require_curl, wait_until, web_config};

/// Status codes of `n` sequential GETs of `path` on one curl process
/// (one keep-alive connection).
fn statuses(addr: SocketAddr, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let url = format!("http://{addr}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-w", "%{http_code}\n"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running curl: {e}"));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn count(codes: &[u16], code: u16) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

/// `clients` threads hammer `path` for `duration`; returns (status counts,
/// seconds from the first request to the last answer).
fn blast(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    clients: usize,
    duration: Duration,
) -> (BTreeMap<u16, usize>, f64) {
    let start = Instant::now();
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(move || {
                    let mut all = Vec::new();
                    while start.elapsed() < duration {
                        all.extend(statuses(addr, path, headers, 25));
                    }
                    all
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| panic!("client thread panicked"))).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut m = BTreeMap::new();
    for c in codes {
        *m.entry(c).or_insert(0) += 1;
    }
    (m, elapsed)
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: policy.sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}"
    )
}

/// Rules: `/limited` (rule named `limited`), `/keyed` (ExtensionRef to
/// `keyed`), `/free`; all to one echo backend.
fn rules() -> String {
    "  - name: limited\n    matches: [{path: {type: PathPrefix, value: /limited}}]\n    backendRefs: [{name: echo, port: 8080}]\n\
     \x20 - matches: [{path: {type: PathPrefix, value: /keyed}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: policy.sluice.dev, kind: RateLimitPolicy, name: keyed}}]\n    backendRefs: [{name: echo, port: 8080}]\n\
     \x20 - matches: [{path: {type: PathPrefix, value: /free}}]\n    backendRefs: [{name: echo, port: 8080}]\n"
        .to_string()
}

struct Env {
    sluice: Sluice,
    addr: SocketAddr,
    config: std::path::PathBuf,
    echo: Echo,
    _dir: TempDir,
}

impl Env {
    fn start(policies: &str) -> Self {
        let dir = TempDir::new("ratelimit");
        let config_dir = dir.subdir("config");
        let log_dir = dir.subdir("logs");
        let echo = Echo::start("echo", "default", &log_dir);
        let config = config_dir.join("web.yaml");
        std::fs::write(&config, format!("{}{policies}", web_config(&rules(), &[("echo", echo.addr.port())])))
            .unwrap_or_else(|e| panic!("writing config: {e}"));
        let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
        let addr = sluice.addr_of("*", 80);
        curl_retry(addr, &Req::get("/free"), Duration::from_secs(10));
        Self { sluice, addr, config, echo, _dir: dir }
    }
}

const RULE_TARGET: &str =
    "  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: limited}]\n";

#[test]
fn concurrent_clients_get_the_quota_within_tolerance() {
    if !require_curl("concurrent_clients_get_the_quota_within_tolerance") {
        return;
    }
    // 20/s, burst 20, one bucket for everyone (empty key).
    let spec = format!("{RULE_TARGET}  limit: {{requests: 20, unit: Second, burst: 20}}\n  key: []\n");
    let env = Env::start(&policy("limited", &spec));
    let (codes, secs) = blast(env.addr, "/limited/x", &[], 4, Duration::from_secs(3));
    let allowed = codes.get(&200).copied().unwrap_or(0) as f64;
    let limited = codes.get(&429).copied().unwrap_or(0);
    // GCRA admits the burst plus the rate over the time the load ran. The
    // window is measured around the curl processes, so allow 10% + 3.
    let expected = 20.0 + 20.0 * secs;
    assert!(
        (allowed - expected).abs() <= expected * 0.10 + 3.0,
        "allowed {allowed}, expected {expected:.1} over {secs:.2}s; codes {codes:?}"
    );
    assert!(limited > 0, "the clients sent faster than the limit: {codes:?}");
    assert_eq!(codes.keys().copied().filter(|c| *c != 200 && *c != 429).count(), 0, "{codes:?}");
    // Unlimited rules stay unlimited.
    assert_eq!(count(&statuses(env.addr, "/free", &[], 50), 200), 50);
}

#[test]
fn burst_headers_and_retry_after() {
    if !require_curl("burst_headers_and_retry_after") {
        return;
    }
    let spec = format!("{RULE_TARGET}  limit: {{requests: 1, unit: Minute, burst: 5}}\n  remainingHeader: true\n");
    let env = Env::start(&policy("limited", &spec));
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = curl(env.addr, &Req::get("/limited")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy").as_deref(), Some("\"default\";q=1;w=60"));
        remaining.push(r.header("ratelimit").unwrap_or_default());
    }
    assert!(remaining[0].starts_with("\"default\";r=4;"), "{remaining:?}");
    assert!(remaining[4].starts_with("\"default\";r=0;"), "{remaining:?}");
    let r = curl(env.addr, &Req::get("/limited")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(r.header("ratelimit").is_some_and(|v| v.starts_with("\"default\";r=0;t=")));
    assert!(r.echo.is_none(), "a limited request never reaches the backend");
}

#[test]
fn keys_are_isolated_and_allow_list_and_trusted_hops_apply() {
    if !require_curl("keys_are_isolated_and_allow_list_and_trusted_hops_apply") {
        return;
    }
    // ExtensionRef policy keyed by client address behind one trusted proxy
    // plus a header; 198.51.100.0/24 is allow-listed.
    let keyed = "  limit: {requests: 1, unit: Minute, burst: 3}\n  trustedHops: 1\n  key: [{type: ClientAddress}, {type: Header, name: X-Tenant}]\n  allow: [198.51.100.0/24]\n";
    let env = Env::start(&policy("keyed", keyed));
    let go = |xff: &str, tenant: &str| {
        count(&statuses(env.addr, "/keyed", &[("X-Forwarded-For", xff), ("X-Tenant", tenant)], 10), 200)
    };
    assert_eq!(go("203.0.113.1", "a"), 3);
    assert_eq!(go("203.0.113.1", "b"), 3, "another header value: its own bucket");
    assert_eq!(go("203.0.113.2", "a"), 3, "another client: its own bucket");
    assert_eq!(go("203.0.113.1", "a"), 0, "exhausted");
    // Only the last hop is trusted: a spoofed left-most entry does not
    // change the key.
    assert_eq!(go("10.9.9.9, 203.0.113.1", "a"), 0);
    assert_eq!(go("198.51.100.7", "a"), 10, "allow-listed");
}

#[test]
fn reload_keeps_buckets_and_bad_policy_keeps_last_good_table() {
    if !require_curl("reload_keeps_buckets_and_bad_policy_keeps_last_good_table") {
        return;
    }
    let spec = format!("{RULE_TARGET}  limit: {{requests: 1, unit: Minute, burst: 2}}\n");
    let env = Env::start(&policy("limited", &spec));
    assert_eq!(count(&statuses(env.addr, "/limited", &[], 5), 200), 2);
    let (gen1, _) = env.sluice.config_dump();
    // An unrelated change recompiles the table; the policy is unchanged.
    let base = web_config(&rules(), &[("echo", env.echo.addr.port())]);
    let extra = local_service("other", 1);
    support::write_atomic(&env.config, &format!("{base}---\n{extra}{}", policy("limited", &spec)));
    wait_until(Duration::from_secs(10), || (env.sluice.config_dump().0 > gen1).then_some(()))
        .unwrap_or_else(|| panic!("no reload"));
    assert_eq!(count(&statuses(env.addr, "/limited", &[], 5), 200), 0, "buckets survive the reload");
    // An invalid policy is rejected naming object and field; the last good
    // table (and its limits) keep serving.
    let (gen2, _) = env.sluice.config_dump();
    let bad = spec.replace("burst: 2", "burst: 0");
    support::write_atomic(&env.config, &format!("{base}{}", policy("limited", &bad)));
    env.sluice
        .wait_for_stderr(Duration::from_secs(10), |l| {
            l.contains("RateLimitPolicy default/limited") && l.contains("spec.limit.burst")
        })
        .unwrap_or_else(|| panic!("no diagnostic: {}", env.sluice.stderr()));
    assert_eq!(env.sluice.config_dump().0, gen2);
    assert_eq!(count(&statuses(env.addr, "/limited", &[], 3), 429), 3);
    // Metrics: per route and policy.
    let (_, metrics) = env.sluice.admin_get("/metrics").unwrap_or_else(|| panic!("no /metrics"));
    let line = |d: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("sluice_ratelimit_requests_total")
                    && l.contains("route=\"default/app\"")
                    && l.contains("policy=\"default/limited\"")
                    && l.contains(&format!("decision=\"{d}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(line("allowed"), Some(2), "{metrics}");
    assert_eq!(line("limited"), Some(3 + 5 + 3), "{metrics}");
}

#[test]
fn ingress_nginx_annotations() {
    if !require_curl("ingress_nginx_annotations") {
        return;
    }
    let dir = TempDir::new("ratelimit-ingress");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("echo", "default", &log_dir);
    let ing = |name: &str, path: &str, ann: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n{ann}spec:\n  ingressClassName: sluice\n  rules:\n  - http:\n      paths:\n      - path: {path}\n        pathType: Prefix\n        backend: {{service: {{name: echo, port: {{number: 8080}}}}}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: sluice}}\nspec: {{controller: {}}}\n---\n{}{}{}{}",
        support::INGRESS_CONTROLLER,
        local_service("echo", echo.addr.port()),
        // 1 rpm × multiplier 3 → burst 3.
        ing(
            "rpm",
            "/rpm",
            "    nginx.ingress.kubernetes.io/limit-rpm: \"1\"\n    nginx.ingress.kubernetes.io/limit-burst-multiplier: \"3\"\n"
        ),
        // 1 rps, default multiplier 5 → burst 5 (1 more per second).
        ing("rps", "/rps", "    nginx.ingress.kubernetes.io/limit-rps: \"1\"\n"),
        ing(
            "white",
            "/white",
            "    nginx.ingress.kubernetes.io/limit-rpm: \"1\"\n    nginx.ingress.kubernetes.io/limit-whitelist: \"127.0.0.0/8\"\n"
        ),
    );
    std::fs::write(config_dir.join("ing.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    curl_retry(addr, &Req::get("/white"), Duration::from_secs(10));
    let rpm = statuses(addr, "/rpm", &[], 10);
    assert_eq!((count(&rpm, 200), count(&rpm, 429)), (3, 7), "{rpm:?}");
    let rps = statuses(addr, "/rps", &[], 20);
    // 5 at once plus at most one per second the requests took.
    assert!((5..=7).contains(&count(&rps, 200)), "{rps:?}");
    assert_eq!(count(&rps, 429) + count(&rps, 200), 20);
    assert_eq!(count(&statuses(addr, "/white", &[], 10), 200), 10, "whitelisted");
}

/// Three processes with `--self-service default/sluice`, whose EndpointSlice
/// lists three ready pods, split 30/min; a round-robin client gets 30 in
/// total. One stops and the slice drops it: the two left re-split to 15.
#[test]
fn cluster_mode_splits_across_replicas_and_resplits() {
    if !require_curl("cluster_mode_splits_across_replicas_and_resplits") {
        return;
    }
    let dir = TempDir::new("ratelimit-cluster");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("echo", "default", &log_dir);
    let slice = |n: usize| {
        let eps: String =
            (1..=n).map(|i| format!("- addresses: [\"10.0.0.{i}\"]\n  conditions: {{ready: true}}\n")).collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sluice-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: sluice}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
        )
    };
    let spec = format!("{RULE_TARGET}  mode: Cluster\n  limit: {{requests: 30, unit: Minute, burst: 30}}\n  key: []\n");
    let base = format!("{}{}", web_config(&rules(), &[("echo", echo.addr.port())]), policy("limited", &spec));
    std::fs::write(config_dir.join("web.yaml"), &base).unwrap_or_else(|e| panic!("{e}"));
    let self_path = config_dir.join("self.yaml");
    std::fs::write(&self_path, slice(3)).unwrap_or_else(|e| panic!("{e}"));
    let args = ["--bind", "80=127.0.0.1:0", "--self-service", "default/sluice", "--replicas", "1"];
    let mut fleet: Vec<Sluice> = (0..3).map(|_| Sluice::start(&config_dir, &log_dir, &args)).collect();
    let addrs: Vec<SocketAddr> = fleet.iter().map(|s| s.addr_of("*", 80)).collect();
    // Round robin: each request goes to the next replica.
    let round_robin = |addrs: &[SocketAddr], n: usize| -> usize {
        (0..n).map(|i| count(&statuses(addrs[i % addrs.len()], "/limited", &[], 1), 200)).sum()
    };
    let allowed = round_robin(&addrs, 90);
    // 30 ± 2 (refill at 0.5/s during the run, rounding of the split).
    assert!((30..=33).contains(&allowed), "3 replicas admitted {allowed}, want ~30");

    // Scale down: one replica stops, the EndpointSlice follows.
    drop(fleet.pop());
    support::write_atomic(&self_path, &slice(2));
    for s in &fleet {
        s.wait_for_stderr(Duration::from_secs(10), |l| l.contains("re-split") && l.contains("replicas=2"))
            .unwrap_or_else(|| panic!("no re-split: {}", s.stderr()));
        // Endpoint-only change: the route table was not recompiled.
        assert!(s.stderr().contains("Endpoints updated"), "{}", s.stderr());
    }
    let allowed = round_robin(&addrs[..2], 60);
    assert!((30..=33).contains(&allowed), "2 replicas admitted {allowed}, want ~30");
}

#[test]
fn the_example_config_checks() {
    let (code, out) = support::sluice_check(&support::repo_dir().join("config/ratelimit.yaml"));
    assert_eq!(code, 0, "sluice check config/ratelimit.yaml:\n{out}");
    for p in ["api-login", "api-default", "api-partners"] {
        assert!(out.contains(&format!("RateLimitPolicy default/{p} Accepted=True")), "{out}");
    }
}
