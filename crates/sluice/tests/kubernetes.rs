//! Kubernetes mode end to end: the real `sluice run --kubernetes` binary,
//! its real kube client, against the in-process fake API server
//! (`support/apiserver.rs`) holding the Gateway API conformance manifests,
//! with `sluice echo` backends behind generated EndpointSlices and `curl`
//! through Sluice.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::{Echo, INFRA_NS, Req, Sluice, TempDir, conformance_docs, curl, curl_retry, require_curl, wait_until};

const SAME_NAMESPACE: &str = "gateway-conformance-infra/same-namespace";
const WAIT: Duration = Duration::from_secs(20);

/// A fake cluster: the API server with the conformance manifests applied,
/// and the echoes standing in for their Deployments.
struct Cluster {
    api: ApiServer,
    echoes: BTreeMap<String, Echo>,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    fn new(manifests: &[&str]) -> Self {
        let dir = TempDir::new("kube");
        let log_dir = dir.subdir("logs");
        let (docs, echoes) = conformance_docs(manifests, &log_dir);
        let api = ApiServer::start();
        for d in &docs {
            api.apply(d);
        }
        let kubeconfig = api.kubeconfig(dir.path());
        Self { api, echoes, kubeconfig, log_dir, _dir: dir }
    }

    /// Starts a replica named `pod`.
    fn sluice(&self, pod: &str, wait_ready: bool, extra: &[&str]) -> Sluice {
        let mut args = vec![
            "--isolate-gateways",
            "--bind",
            "80=127.0.0.1:0",
            "--bind",
            "8080=127.0.0.1:0",
            "--pod-name",
            pod,
            "--pod-namespace",
            "sluice-system",
            "--lease-duration",
            "2s",
        ];
        args.extend_from_slice(extra);
        Sluice::start_kube(&self.kubeconfig, &self.log_dir, &args, wait_ready)
    }

    fn echo(&self, key: &str) -> &Echo {
        self.echoes.get(key).unwrap_or_else(|| panic!("no echo {key}"))
    }
}

/// A metric's value (the first series of that name) from `/metrics`.
fn metric(s: &Sluice, name: &str) -> f64 {
    let (_, body) = s.admin_get("/metrics").expect("admin /metrics");
    body.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name || n.starts_with(&format!("{name}{{"))).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn route(ns: &str, name: &str, gateway: &str, prefix: &str, backend: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backendRefs": [{"name": backend, "port": 8080}],
            }],
        },
    })
}

fn pod_of(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    curl(addr, &Req::get(path)).ok().filter(|r| r.status == 200).and_then(|r| r.pod().map(str::to_string))
}

#[test]
fn readyz_waits_for_the_first_sync_then_routes_are_served() {
    if !require_curl("readyz_waits_for_the_first_sync_then_routes_are_served") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    c.api.set_unavailable(true);
    let s = c.sluice("sluice-a", false, &[]);
    // The API answers 503: Sluice keeps trying and is not ready.
    let tried = wait_until(WAIT, || (c.api.requests().len() >= 10).then_some(()));
    assert!(tried.is_some(), "sluice never called the API; stderr:\n{}", s.stderr());
    assert_eq!(s.admin_get("/readyz").map(|r| r.0), Some(503), "ready before any sync");
    c.api.set_unavailable(false);
    let ready = wait_until(WAIT, || (s.admin_get("/readyz").map(|r| r.0) == Some(200)).then_some(()));
    assert!(ready.is_some(), "not ready after the API came back; stderr:\n{}", s.stderr());
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let r = curl_retry(addr, &Req::get("/"), WAIT);
    assert_eq!(r.status, 200);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")), "{:?}", r.pod());
    // Lists carry a resourceVersion the watches resume from.
    let reqs = c.api.requests();
    assert!(reqs.iter().any(|r| r.contains("/httproutes?") && r.contains("watch=true")), "{reqs:?}");
    assert!(reqs.iter().any(|r| r.contains("/secrets?") && r.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")));
}

#[test]
fn a_broken_watch_relists_without_losing_changes_and_serves_the_last_table_meanwhile() {
    if !require_curl("a_broken_watch_relists_without_losing_changes_and_serves_the_last_table_meanwhile") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    let s = c.sluice("sluice-a", true, &[]);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    assert!(curl_retry(addr, &Req::get("/"), WAIT).pod().is_some_and(|p| p.starts_with("infra-backend-v1-")));

    // 1. Watches drop; a change made right after is replayed on resume.
    c.api.drop_watches();
    c.api.apply(&route(INFRA_NS, "resumed", "same-namespace", "/resumed", "infra-backend-v2"));
    let seen = wait_until(WAIT, || pod_of(addr, "/resumed").filter(|p| p.starts_with("infra-backend-v2-")));
    assert!(seen.is_some(), "change after a dropped watch lost; stderr:\n{}", s.stderr());

    // 2. The API goes away; meanwhile routes change and history is
    //    compacted, so resuming gets 410 Gone and Sluice must re-list.
    c.api.set_unavailable(true);
    c.api.apply(&route(INFRA_NS, "relisted", "same-namespace", "/relisted", "infra-backend-v3"));
    assert!(c.api.delete("HTTPRoute", INFRA_NS, "resumed"));
    c.api.compact();
    // The last good table keeps serving while the API is down.
    for _ in 0..5 {
        assert_eq!(pod_of(addr, "/resumed").map(|p| p.starts_with("infra-backend-v2-")), Some(true));
        std::thread::sleep(Duration::from_millis(100));
    }
    let lists_before = c.api.requests().iter().filter(|r| r.starts_with("GET ") && !r.contains("watch=")).count();
    c.api.set_unavailable(false);
    let relisted = wait_until(WAIT, || pod_of(addr, "/relisted").filter(|p| p.starts_with("infra-backend-v3-")));
    assert!(relisted.is_some(), "change made during the outage lost; stderr:\n{}", s.stderr());
    let gone = wait_until(WAIT, || {
        curl(addr, &Req::get("/resumed"))
            .ok()
            .filter(|r| r.status != 200 || r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")))
    });
    assert!(gone.is_some(), "a route deleted during the outage still served");
    let lists_after = c.api.requests().iter().filter(|r| r.starts_with("GET ") && !r.contains("watch=")).count();
    assert!(lists_after > lists_before, "no re-list after 410 Gone");
    assert!(s.stderr().contains("Re-listing"), "stderr:\n{}", s.stderr());
    // The original route never stopped working.
    assert!(pod_of(addr, "/").is_some_and(|p| p.starts_with("infra-backend-v1-")));
}

#[test]
fn an_endpoint_change_propagates_without_recompiling_routes() {
    if !require_curl("an_endpoint_change_propagates_without_recompiling_routes") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    let s = c.sluice("sluice-a", true, &[]);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    assert!(curl_retry(addr, &Req::get("/"), WAIT).pod().is_some_and(|p| p.starts_with("infra-backend-v1-")));
    // Let status writes and replica reports settle: none of them recompiles.
    std::thread::sleep(Duration::from_secs(2));
    let applies = metric(&s, "sluice_config_applies_total");
    let updates = metric(&s, "sluice_endpoint_updates_total");
    let (generation, _) = s.config_dump();

    // infra-backend-v1's pods move to where infra-backend-v2 listens.
    let v2 = c.echo(&format!("{INFRA_NS}/infra-backend-v2")).addr;
    let slice = c
        .api
        .all("EndpointSlice")
        .into_iter()
        .find(|e| e.pointer("/metadata/labels/kubernetes.io~1service-name") == Some(&json!("infra-backend-v1")))
        .expect("infra-backend-v1 EndpointSlice");
    let mut moved = slice.clone();
    moved["endpoints"][0]["addresses"] = json!([v2.ip().to_string()]);
    for p in moved["ports"].as_array_mut().into_iter().flatten() {
        p["port"] = json!(v2.port());
    }
    c.api.apply(&moved);
    let followed = wait_until(WAIT, || pod_of(addr, "/").filter(|p| p.starts_with("infra-backend-v2-")));
    assert!(followed.is_some(), "traffic did not follow the EndpointSlice; stderr:\n{}", s.stderr());
    assert!(metric(&s, "sluice_endpoint_updates_total") > updates);
    assert_eq!(metric(&s, "sluice_config_applies_total"), applies, "an endpoint change recompiled routes");
    assert_eq!(s.config_dump().0, generation);
}
