//! Limiter behaviour without the network: burst, key cap, cluster split,
//! state kept across binds, headers.

use std::time::Duration;

use prometheus::Registry;
use sluice_model::RouteRef;

use super::*;

fn rule_with(rl: &Arc<RateLimit>) -> Rule {
    Rule {
        route: Arc::new(RouteRef::new("HTTPRoute", "ns".into(), "r".into())),
        index: 0,
        filters: Arc::new([Filter::RateLimit(rl.clone())]),
        backends: sluice_model::BackendGroup::default(),
        request_timeout: None,
        backend_timeout: None,
    }
}

fn limits() -> RateLimits {
    RateLimits::new(&Registry::new(), None, 1).unwrap_or_else(|e| panic!("{e}"))
}

fn bind(l: &RateLimits, rl: &Arc<RateLimit>) {
    let routes: Vec<Arc<str>> = vec!["ns/r".into()];
    l.bind([(rl, routes.as_slice())]);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Sends `n` requests from `ip`; returns how many were admitted.
fn admitted(rule: &Rule, from: &str, headers: &HeaderMap, n: usize) -> usize {
    (0..n).filter(|_| check(rule, ip(from), headers, &mut Checked::default()).is_none()).count()
}

#[test]
fn burst_then_limited_with_retry_after_and_keys_isolated() {
    // 1 per minute, burst 3: exactly 3 pass now, per client.
    let mut rl = RateLimit::new("ns/p", 1, Duration::from_secs(60));
    rl.burst = 3;
    rl.finish();
    let rl = Arc::new(rl);
    let l = limits();
    bind(&l, &rl);
    let rule = rule_with(&rl);
    let h = HeaderMap::new();
    assert_eq!(admitted(&rule, "192.0.2.1", &h, 10), 3);
    assert_eq!(admitted(&rule, "192.0.2.2", &h, 10), 3, "another client has its own bucket");
    let resp = check(&rule, ip("192.0.2.1"), &h, &mut Checked::default()).unwrap_or_else(|| panic!("not limited"));
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()[RETRY_AFTER].to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(resp.headers()["ratelimit-policy"], "\"default\";q=1;w=60");
    assert!(resp.headers()["ratelimit"].to_str().unwrap_or("").starts_with("\"default\";r=0;t="));
}

#[test]
fn state_survives_rebinding_an_unchanged_limit_but_not_a_changed_one() {
    let l = limits();
    let make = |q| Arc::new(RateLimit::new("ns/p", q, Duration::from_secs(60)));
    let h = HeaderMap::new();
    let a = make(2);
    bind(&l, &a);
    assert_eq!(admitted(&rule_with(&a), "192.0.2.1", &h, 5), 2);
    let b = make(2); // a reload compiling the same policy
    bind(&l, &b);
    assert_eq!(admitted(&rule_with(&b), "192.0.2.1", &h, 5), 0, "buckets kept");
    let c = make(3); // the policy changed
    bind(&l, &c);
    assert_eq!(admitted(&rule_with(&c), "192.0.2.1", &h, 5), 3);
}

#[test]
fn key_cap_sends_new_keys_to_one_overflow_bucket() {
    let mut rl = RateLimit::new("ns/p", 1, Duration::from_secs(60));
    rl.burst = 1;
    rl.max_keys = 2;
    rl.key = Box::new([KeyPart::Header(HeaderName::from_static("x-key"))]);
    rl.finish();
    let rl = Arc::new(rl);
    let l = limits();
    bind(&l, &rl);
    let rule = rule_with(&rl);
    let hk = |v: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("x-key", HeaderValue::from_static(v));
        h
    };
    assert_eq!(admitted(&rule, "192.0.2.1", &hk("a"), 3), 1);
    assert_eq!(admitted(&rule, "192.0.2.1", &hk("b"), 3), 1);
    // Cap reached: c and d share the overflow bucket (one request between them).
    assert_eq!(admitted(&rule, "192.0.2.1", &hk("c"), 1) + admitted(&rule, "192.0.2.1", &hk("d"), 1), 1);
    // Known keys keep their own buckets.
    assert_eq!(admitted(&rule, "192.0.2.1", &hk("a"), 1), 0);
    let Some(Limiter::Memory(m)) = rl.state.get().and_then(|s| s.downcast_ref::<Bound>()).map(|b| &*b.limiter) else {
        panic!("not bound")
    };
    assert_eq!(m.current.load().limiter.len(), 2, "memory stays at the cap");
}

#[test]
fn sweep_evicts_idle_keys() {
    // 1000/s, burst 1: a key is indistinguishable from fresh 1 ms after use.
    let mut rl = RateLimit::new("ns/p", 1000, Duration::from_secs(1));
    rl.burst = 1;
    rl.key = Box::new([KeyPart::Header(HeaderName::from_static("x-key"))]);
    rl.finish();
    let rl = Arc::new(rl);
    let l = limits();
    bind(&l, &rl);
    let rule = rule_with(&rl);
    for i in 0..100u32 {
        let mut h = HeaderMap::new();
        h.insert("x-key", HeaderValue::from(i));
        admitted(&rule, "192.0.2.1", &h, 1);
    }
    let Some(Limiter::Memory(m)) = rl.state.get().and_then(|s| s.downcast_ref::<Bound>()).map(|b| &*b.limiter) else {
        panic!("not bound")
    };
    assert_eq!(m.current.load().limiter.len(), 100);
    std::thread::sleep(Duration::from_millis(20));
    m.sweep();
    assert_eq!(m.current.load().limiter.len(), 0);
}

#[test]
fn cluster_mode_divides_quota_by_replicas_and_resplits() {
    let mut rl = RateLimit::new("ns/p", 30, Duration::from_secs(60));
    rl.mode = Mode::Cluster;
    rl.finish();
    let rl = Arc::new(rl);
    let l = RateLimits::new(&Registry::new(), None, 3).unwrap_or_else(|e| panic!("{e}"));
    bind(&l, &rl);
    let rule = rule_with(&rl);
    let h = HeaderMap::new();
    assert_eq!(admitted(&rule, "192.0.2.1", &h, 50), 10, "30 / 3 replicas");
    l.set_replicas(2);
    assert_eq!(admitted(&rule, "192.0.2.1", &h, 50), 15, "30 / 2 replicas, fresh buckets");
}

#[test]
fn allow_list_bypasses_and_remaining_header_counts_down() {
    let mut rl = RateLimit::new("ns/p", 2, Duration::from_secs(1));
    rl.allow = Box::new([sluice_model::ratelimit::Cidr::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"))]);
    rl.headers_on_allowed = true;
    rl.trusted_hops = 1;
    rl.finish();
    let rl = Arc::new(rl);
    let l = limits();
    bind(&l, &rl);
    let rule = rule_with(&rl);
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
    assert_eq!(admitted(&rule, "192.0.2.1", &h, 20), 20, "allow-listed client behind one trusted proxy");
    h.insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3, 203.0.113.9"));
    let mut c = Checked::default();
    assert!(check(&rule, ip("192.0.2.1"), &h, &mut c).is_none());
    let mut out = HeaderMap::new();
    decorate(&c, &mut out);
    assert_eq!(out["ratelimit"], "\"default\";r=1;t=1");
    assert_eq!(out["ratelimit-policy"], "\"default\";q=2;w=1");
}
