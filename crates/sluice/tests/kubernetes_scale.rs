//! Kubernetes mode with many objects: `SLUICE_KUBE_SCALE` HTTPRoutes, each
//! with its own Service and EndpointSlice (default 300), in the fake API
//! server. Asserts that an EndpointSlice change is served through the
//! endpoint fast path (no recompile) and a route change through a recompile,
//! and prints how long each took from the watch event to the swap (Sluice's
//! `sluice_config_apply_duration_seconds`). No timing is asserted; for
//! figures run it in release with more objects:
//!
//! ```sh
//! SLUICE_KUBE_SCALE=5000 cargo test --release -p sluice --test kubernetes_scale -- --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::apiserver::ApiServer;
use support::{Echo, Req, Sluice, TempDir, curl_retry, require_curl, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn metric(s: &Sluice, name: &str) -> f64 {
    let (_, body) = s.admin_get("/metrics").expect("admin /metrics");
    body.lines()
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// (applies, seconds) of `sluice_config_apply_duration_seconds` so far.
fn applies(s: &Sluice) -> (f64, f64) {
    (metric(s, "sluice_config_apply_duration_seconds_count"), metric(s, "sluice_config_apply_duration_seconds_sum"))
}

#[test]
fn endpoint_and_route_changes_propagate_with_many_objects() {
    if !require_curl("endpoint_and_route_changes_propagate_with_many_objects") {
        return;
    }
    let n: usize = std::env::var("SLUICE_KUBE_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = TempDir::new("kube-scale");
    let log_dir = dir.subdir("logs");
    let one = Echo::start("one", "default", &log_dir);
    let two = Echo::start("two", "default", &log_dir);
    let api = ApiServer::start();
    api.apply(&json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "sluice"}, "spec": {"controllerName": "sluice.dev/gateway-controller"}}));
    api.apply(&json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}}));
    for i in 0..n {
        api.apply(&json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 8080}]}}));
        api.apply(&json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-a"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": one.addr.port()}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}));
        api.apply(&json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": format!("r{i}"), "namespace": "default"},
            "spec": {"parentRefs": [{"name": "web"}], "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/r{i}")}}],
                "backendRefs": [{"name": format!("s{i}"), "port": 8080}]}]}}));
    }
    let kubeconfig = api.kubeconfig(dir.path());
    let started = Instant::now();
    let s = Sluice::start_kube(
        &kubeconfig,
        &log_dir,
        &["--bind", "80=127.0.0.1:0", "--pod-name", "a", "--pod-namespace", "sluice-system"],
        true,
    );
    eprintln!("{n} routes, services and slices: ready after {:?}", started.elapsed());
    let addr = s.addr_of("*", 80);
    let last = format!("/r{}", n - 1);
    assert!(curl_retry(addr, &Req::get(&last), WAIT).pod().is_some_and(|p| p.starts_with("one-")));
    let (generation, _) = s.config_dump();

    // One EndpointSlice moves to the other pod.
    let before = applies(&s);
    let mut slice = api.get("EndpointSlice", "default", &format!("s{}-a", n - 1)).expect("slice");
    slice["ports"][0]["port"] = json!(two.addr.port());
    api.apply(&slice);
    let moved = wait_until(WAIT, || {
        curl_retry(addr, &Req::get(&last), WAIT).pod().filter(|p| p.starts_with("two-")).map(|_| ())
    });
    assert!(moved.is_some(), "the endpoint change was not served");
    assert_eq!(s.config_dump().0, generation, "an endpoint change recompiled routes");
    let after = wait_until(WAIT, || Some(applies(&s)).filter(|a| a.0 > before.0)).expect("apply recorded");
    eprintln!("endpoint change: {:.1} ms from watch event to swap", (after.1 - before.1) / (after.0 - before.0) * 1e3);

    // One route changes its path.
    let before = after;
    let mut route = api.get("HTTPRoute", "default", "r0").expect("route");
    route["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!("/moved");
    api.apply(&route);
    let served = wait_until(WAIT, || curl_retry(addr, &Req::get("/moved"), WAIT).pod().map(|_| ()));
    assert!(served.is_some(), "the route change was not served");
    assert!(s.config_dump().0 > generation, "a route change must recompile");
    let after = wait_until(WAIT, || Some(applies(&s)).filter(|a| a.0 > before.0)).expect("apply recorded");
    eprintln!("route change: {:.1} ms from watch event to swap", (after.1 - before.1) / (after.0 - before.0) * 1e3);
}
