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
        Self::with(manifests, false)
    }

    /// Over HTTPS (`tls`), with a CA and a bearer token in the kubeconfig.
    fn with(manifests: &[&str], tls: bool) -> Self {
        let dir = TempDir::new("kube");
        let log_dir = dir.subdir("logs");
        let (docs, echoes) = conformance_docs(manifests, &log_dir);
        let api = if tls { ApiServer::start_tls() } else { ApiServer::start() };
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
        ];
        if !extra.contains(&"--lease-duration") {
            args.extend_from_slice(&["--lease-duration", "2s"]);
        }
        args.extend_from_slice(extra);
        Sluice::start_kube(&self.kubeconfig, &self.log_dir, &args, wait_ready)
    }

    fn echo(&self, key: &str) -> &Echo {
        self.echoes.get(key).unwrap_or_else(|| panic!("no echo {key}"))
    }
}

/// A metric's value (summed over its series) from `/metrics`.
fn metric(s: &Sluice, name: &str) -> f64 {
    metric_opt(s, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// A metric's value (summed over its series), `None` when not exported.
fn metric_opt(s: &Sluice, name: &str) -> Option<f64> {
    let (_, body) = s.admin_get("/metrics")?;
    let values: Vec<f64> = body
        .lines()
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name || n.starts_with(&format!("{name}{{"))).then(|| v.parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
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
fn the_kube_client_speaks_tls_with_ring_and_sends_the_bearer_token() {
    if !require_curl("the_kube_client_speaks_tls_with_ring_and_sends_the_bearer_token") {
        return;
    }
    let c = Cluster::with(&["httproute-simple-same-namespace"], true);
    assert!(c.api.url.starts_with("https://127.0.0.1:"));
    let s = c.sluice("sluice-a", true, &[]);
    let r = curl_retry(s.addr_of(SAME_NAMESPACE, 80), &Req::get("/"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")), "{:?}", r.pod());
    // Status and Leases go over the same client.
    wait_object(&c.api, "GatewayClass", "", "sluice", all_current);
    assert_eq!(c.api.authorizations(), vec![format!("Bearer {}", support::apiserver::TOKEN)]);
}

#[test]
fn a_kind_whose_crd_is_missing_does_not_block_readiness() {
    if !require_curl("a_kind_whose_crd_is_missing_does_not_block_readiness") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    c.api.uninstall("referencegrants");
    let s = c.sluice("sluice-a", true, &[]);
    let r = curl_retry(s.addr_of(SAME_NAMESPACE, 80), &Req::get("/"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")), "{:?}", r.pod());
    assert!(s.stderr().contains("Kind not served"), "stderr:\n{}", s.stderr());
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
    // Wait until this replica's report reached the leader's status (the
    // Gateway is Programmed for its generation): status writes and replica
    // reports never recompile, so the counters below are a stable baseline.
    let reported = wait_until(WAIT, || programmed(&c.api).filter(|p| p["message"] == "applied by 1/1 replicas"));
    assert!(reported.is_some(), "{:?}; stderr:\n{}", programmed(&c.api), s.stderr());
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

    // A later route change recompiles, with the moved endpoints.
    let mut r = c.api.get("HTTPRoute", INFRA_NS, "gateway-conformance-infra-test").expect("route");
    r["spec"]["rules"][0]["matches"] = json!([{"path": {"type": "PathPrefix", "value": "/only"}}]);
    c.api.apply(&r);
    let recompiled = wait_until(WAIT, || (s.config_dump().0 > generation).then_some(()));
    assert!(recompiled.is_some(), "a route change must recompile");
    let r = curl_retry(addr, &Req::get("/only"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v2-")), "{:?}", r.pod());
}

// ---------------------------------------------------------------------------
// Status writeback
// ---------------------------------------------------------------------------

const CONTROLLER: &str = "sluice.dev/gateway-controller";

/// `status.conditions` (or any conditions array) as type → condition.
fn conditions(v: Option<&Value>) -> BTreeMap<String, Value> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("type")?.as_str()?.to_string(), c.clone())))
        .collect()
}

/// Waits until `f` accepts the object `kind ns/name`; returns it.
fn wait_object(api: &ApiServer, kind: &str, ns: &str, name: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(WAIT, || api.get(kind, ns, name).filter(|o| f(o))).unwrap_or_else(|| {
        panic!(
            "{kind} {ns}/{name} never reached the expected status; it is:\n{:#}",
            api.get(kind, ns, name).unwrap_or_default()
        )
    })
}

fn is(c: Option<&Value>, status: &str, reason: &str) -> bool {
    c.is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

fn listener<'a>(gw: &'a Value, name: &str) -> Option<&'a Value> {
    gw.pointer("/status/listeners")?.as_array()?.iter().find(|l| l["name"] == name)
}

/// Our `status.parents` entry of a route (the first, or the one for `gateway`).
fn parent<'a>(route: &'a Value, gateway: &str) -> Option<&'a Value> {
    route
        .pointer("/status/parents")?
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER && p["parentRef"]["name"] == gateway)
}

/// Every condition anywhere in the object's status carries
/// observedGeneration == metadata.generation.
fn all_current(obj: &Value) -> bool {
    fn walk(v: &Value, g: &Value, ok: &mut bool, any: &mut bool) {
        match v {
            Value::Object(m) => {
                if let Some(cs) = m.get("conditions").and_then(Value::as_array) {
                    for c in cs {
                        *any = true;
                        *ok &= c.get("observedGeneration") == Some(g);
                    }
                }
                m.values().for_each(|x| walk(x, g, ok, any));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, g, ok, any)),
            _ => {}
        }
    }
    let (mut ok, mut any) = (true, false);
    if let (Some(status), Some(g)) = (obj.get("status"), obj.pointer("/metadata/generation")) {
        walk(status, g, &mut ok, &mut any);
    }
    ok && any
}

#[test]
fn status_is_written_with_the_conformance_conditions_and_reasons() {
    let c = Cluster::new(&[
        "gateway-invalid-route-kind",
        "gateway-with-attached-routes",
        "httproute-invalid-cross-namespace-parent-ref",
        "httproute-invalid-nonexistent-backendref",
        "httproute-partially-invalid-via-invalid-reference-grant",
    ]);
    // The LoadBalancer Service fronting Sluice, an Ingress Sluice serves, and
    // another controller's entry on a route's status.
    c.api.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sluice", "namespace": "sluice-system"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.10", "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    }));
    c.api.apply(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"},
    }));
    c.api.apply(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": INFRA_NS},
        "spec": {"ingressClassName": "sluice", "defaultBackend": {"service": {"name": "infra-backend-v1", "port": {"number": 8080}}}},
    }));
    let mut foreign = c.api.get("HTTPRoute", INFRA_NS, "http-route-1").expect("http-route-1");
    let other = json!({"parentRef": {"name": "elsewhere"}, "controllerName": "other.example/controller",
                       "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                                       "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
    foreign["status"] = json!({"parents": [other.clone()]});
    c.api.delete("HTTPRoute", INFRA_NS, "http-route-1");
    c.api.apply(&foreign);
    let s = c.sluice("sluice-a", true, &["--publish-service", "sluice-system/sluice"]);

    // GatewayClass: Accepted, and exactly the supported features, sorted.
    let gc = wait_object(&c.api, "GatewayClass", "", "sluice", |o| {
        is(conditions(o.pointer("/status/conditions")).get("Accepted"), "True", "Accepted")
    });
    let features: Vec<&str> = gc
        .pointer("/status/supportedFeatures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        features.contains(&"HTTPRoute") && features.contains(&"Gateway") && features.contains(&"ReferenceGrant"),
        "{features:?}"
    );
    assert!(!features.contains(&"HTTPRouteRequestMirror"), "a feature Sluice does not implement: {features:?}");
    assert!(features.windows(2).all(|w| w[0] < w[1]), "unsorted: {features:?}");

    // GatewayInvalidRouteKind.
    let only_bad =
        wait_object(&c.api, "Gateway", INFRA_NS, "gateway-only-invalid-route-kind", |o| listener(o, "http").is_some());
    let l = listener(&only_bad, "http").expect("listener");
    assert!(is(conditions(l.get("conditions")).get("ResolvedRefs"), "False", "InvalidRouteKinds"), "{l:#}");
    assert_eq!(l["supportedKinds"], json!([]));
    assert_eq!(l["attachedRoutes"], 0);
    let mixed = wait_object(&c.api, "Gateway", INFRA_NS, "gateway-supported-and-invalid-route-kind", |o| {
        listener(o, "http").is_some()
    });
    let l = listener(&mixed, "http").expect("listener");
    assert!(is(conditions(l.get("conditions")).get("ResolvedRefs"), "False", "InvalidRouteKinds"), "{l:#}");
    assert_eq!(l["supportedKinds"], json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]));

    // GatewayWithAttachedRoutes.
    let one = wait_object(&c.api, "Gateway", INFRA_NS, "gateway-with-one-attached-route", |o| {
        listener(o, "http").is_some_and(|l| l["attachedRoutes"] == 1)
    });
    let l = listener(&one, "http").expect("listener");
    let lc = conditions(l.get("conditions"));
    assert!(is(lc.get("Accepted"), "True", "Accepted") && is(lc.get("ResolvedRefs"), "True", "ResolvedRefs"), "{l:#}");
    assert!(
        is(lc.get("Conflicted"), "False", "NoConflicts") && is(lc.get("Programmed"), "True", "Programmed"),
        "{l:#}"
    );
    wait_object(&c.api, "Gateway", INFRA_NS, "gateway-with-two-attached-routes", |o| {
        listener(o, "http").is_some_and(|l| l["attachedRoutes"] == 2)
    });
    let not_accepted = wait_object(&c.api, "HTTPRoute", INFRA_NS, "http-route-not-accepted", |o| {
        parent(o, "gateway-with-two-attached-routes").is_some()
    });
    let p = parent(&not_accepted, "gateway-with-two-attached-routes").expect("parent");
    assert!(is(conditions(p.get("conditions")).get("Accepted"), "False", "NoMatchingListenerHostname"), "{p:#}");
    assert_eq!(p["parentRef"]["group"], "gateway.networking.k8s.io");
    assert_eq!(p["parentRef"]["kind"], "Gateway");
    assert_eq!(p["parentRef"]["namespace"], INFRA_NS);
    // The other controller's entry survives Sluice's writes.
    let r1 = wait_object(&c.api, "HTTPRoute", INFRA_NS, "http-route-1", |o| {
        parent(o, "gateway-with-one-attached-route").is_some()
    });
    assert!(r1.pointer("/status/parents").and_then(Value::as_array).is_some_and(|ps| ps.contains(&other)), "{r1:#}");

    // HTTPRouteInvalidCrossNamespaceParentRef.
    let cross = wait_object(
        &c.api,
        "HTTPRoute",
        "gateway-conformance-web-backend",
        "invalid-cross-namespace-parent-ref",
        |o| parent(o, "same-namespace").is_some(),
    );
    let p = parent(&cross, "same-namespace").expect("parent");
    assert!(is(conditions(p.get("conditions")).get("Accepted"), "False", "NotAllowedByListeners"), "{p:#}");

    // HTTPRouteInvalidNonExistentBackendRef.
    let missing = wait_object(&c.api, "HTTPRoute", INFRA_NS, "invalid-nonexistent-backend-ref", |o| {
        parent(o, "same-namespace").is_some()
    });
    let pc = conditions(parent(&missing, "same-namespace").and_then(|p| p.get("conditions")));
    assert!(
        is(pc.get("ResolvedRefs"), "False", "BackendNotFound") && is(pc.get("Accepted"), "True", "Accepted"),
        "{pc:#?}"
    );

    // HTTPRoutePartiallyInvalidViaInvalidReferenceGrant.
    let partial = wait_object(&c.api, "HTTPRoute", INFRA_NS, "invalid-reference-grant", |o| {
        parent(o, "same-namespace").is_some()
    });
    let pc = conditions(parent(&partial, "same-namespace").and_then(|p| p.get("conditions")));
    assert!(
        is(pc.get("ResolvedRefs"), "False", "RefNotPermitted") && is(pc.get("Accepted"), "True", "Accepted"),
        "{pc:#?}"
    );

    // Gateway conditions, addresses from the publish Service, propagation.
    let gw = wait_object(&c.api, "Gateway", INFRA_NS, "same-namespace", |o| {
        is(conditions(o.pointer("/status/conditions")).get("Programmed"), "True", "Programmed")
    });
    let gc = conditions(gw.pointer("/status/conditions"));
    assert!(is(gc.get("Accepted"), "True", "Accepted"), "{gc:#?}");
    assert_eq!(gc["Programmed"]["message"], "applied by 1/1 replicas");
    assert_eq!(gw.pointer("/status/addresses"), Some(&json!([{"type": "IPAddress", "value": "203.0.113.7"}])));
    let ing = wait_object(&c.api, "Ingress", INFRA_NS, "web", |o| o.pointer("/status/loadBalancer/ingress").is_some());
    assert_eq!(ing.pointer("/status/loadBalancer/ingress"), Some(&json!([{"ip": "203.0.113.7"}])));

    // Every condition Sluice wrote is for the current generation.
    for (kind, ns, name) in [
        ("GatewayClass", "", "sluice"),
        ("Gateway", INFRA_NS, "same-namespace"),
        ("Gateway", INFRA_NS, "gateway-with-one-attached-route"),
        ("HTTPRoute", INFRA_NS, "invalid-reference-grant"),
    ] {
        let o = c.api.get(kind, ns, name).expect("object");
        assert!(all_current(&o), "{kind} {ns}/{name}: {o:#}");
    }

    // Nothing is rewritten once status is current: writes stop.
    let writes = || metric(&s, "sluice_status_writes_total");
    let settled = wait_until(WAIT, || {
        let before = writes();
        std::thread::sleep(Duration::from_millis(1500));
        (writes() == before).then_some(())
    });
    assert!(settled.is_some(), "status writes never stop; stderr:\n{}", s.stderr());
    // And status writes never recompile routes.
    let applies = metric(&s, "sluice_config_applies_total");
    assert!(applies <= 2.0, "status writes recompiled the table {applies} times");

    // The Ingress moves to another controller's class: Sluice takes its
    // address back out of the Ingress's status.
    let mut moved = c.api.get("Ingress", INFRA_NS, "web").expect("ingress");
    moved["spec"]["ingressClassName"] = json!("other");
    c.api.apply(&moved);
    let cleared = wait_object(&c.api, "Ingress", INFRA_NS, "web", |o| {
        o.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).is_some_and(Vec::is_empty)
    });
    assert_eq!(cleared["spec"]["ingressClassName"], "other");
}

#[test]
fn status_follows_spec_changes_with_the_new_observed_generation() {
    if !require_curl("status_follows_spec_changes_with_the_new_observed_generation") {
        return;
    }
    let c = Cluster::new(&[
        "gateway-observed-generation-bump",
        "httproute-observed-generation-bump",
        "gateway-modify-listeners",
    ]);
    let s = c.sluice("sluice-a", true, &[]);

    // GatewayObservedGenerationBump: add a listener.
    let gw = wait_object(&c.api, "Gateway", INFRA_NS, "gateway-observed-generation-bump", all_current);
    assert_eq!(gw["metadata"]["generation"], 1);
    let mut changed = gw.clone();
    changed["spec"]["listeners"].as_array_mut().expect("listeners").push(json!({
        "name": "http-2", "hostname": "foo.com", "port": 8080, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}},
    }));
    assert_eq!(c.api.apply(&changed).map(|o| o["metadata"]["generation"].clone()), Some(json!(2)));
    let gw = wait_object(&c.api, "Gateway", INFRA_NS, "gateway-observed-generation-bump", |o| {
        all_current(o) && listener(o, "http-2").is_some()
    });
    assert!(is(conditions(gw.pointer("/status/conditions")).get("Accepted"), "True", "Accepted"), "{gw:#}");

    // HTTPRouteObservedGenerationBump: change the route.
    let r = wait_object(&c.api, "HTTPRoute", INFRA_NS, "observed-generation-bump", |o| {
        parent(o, "same-namespace").is_some() && all_current(o)
    });
    let mut changed = r.clone();
    changed["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("infra-backend-v2");
    // Another writer races Sluice: its next status patches conflict, and it
    // retries (with backoff) until one lands.
    c.api.conflict_next_status_patches(2);
    c.api.apply(&changed);
    let r = wait_object(&c.api, "HTTPRoute", INFRA_NS, "observed-generation-bump", |o| {
        o["metadata"]["generation"] == 2 && parent(o, "same-namespace").is_some() && all_current(o)
    });
    let pc = conditions(parent(&r, "same-namespace").and_then(|p| p.get("conditions")));
    assert!(
        is(pc.get("Accepted"), "True", "Accepted") && is(pc.get("ResolvedRefs"), "True", "ResolvedRefs"),
        "{pc:#?}"
    );
    assert_eq!(metric_opt(&s, "sluice_status_writes_total{result=\"conflict\"}"), Some(2.0));

    // GatewayModifyListeners: add an HTTP listener; it is accepted, the
    // route attaches, traffic flows.
    let add = c.api.get("Gateway", INFRA_NS, "gateway-add-listener").expect("gateway-add-listener");
    let mut changed = add.clone();
    changed["spec"]["listeners"].as_array_mut().expect("listeners").push(json!({
        "name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}},
    }));
    c.api.apply(&changed);
    let gw = wait_object(&c.api, "Gateway", INFRA_NS, "gateway-add-listener", |o| {
        all_current(o) && listener(o, "http").is_some_and(|l| l["attachedRoutes"] == 1)
    });
    let lc = conditions(listener(&gw, "http").and_then(|l| l.get("conditions")));
    assert!(
        is(lc.get("Accepted"), "True", "Accepted") && is(lc.get("ResolvedRefs"), "True", "ResolvedRefs"),
        "{lc:#?}"
    );
    let addr = s.addr_of("gateway-conformance-infra/gateway-add-listener", 80);
    assert!(curl_retry(addr, &Req::get("/"), WAIT).pod().is_some_and(|p| p.starts_with("infra-backend-v1-")));

    // ...and remove one: it leaves status, its traffic stops.
    let addr = s.addr_of("gateway-conformance-infra/gateway-remove-listener", 80);
    assert!(curl_retry(addr, &Req::get("/"), WAIT).pod().is_some_and(|p| p.starts_with("infra-backend-v1-")));
    let remove = c.api.get("Gateway", INFRA_NS, "gateway-remove-listener").expect("gateway-remove-listener");
    let mut changed = remove.clone();
    changed["spec"]["listeners"].as_array_mut().expect("listeners").retain(|l| l["name"] != "http");
    c.api.apply(&changed);
    wait_object(&c.api, "Gateway", INFRA_NS, "gateway-remove-listener", |o| {
        all_current(o) && listener(o, "http").is_none()
    });
    let stopped = wait_until(WAIT, || curl(addr, &Req::get("/")).map_or(Some(()), |r| (r.status != 200).then_some(())));
    assert!(stopped.is_some(), "traffic still served by a removed listener");
}

// ---------------------------------------------------------------------------
// Leader election and proof of propagation
// ---------------------------------------------------------------------------

fn programmed(api: &ApiServer) -> Option<Value> {
    let gw = api.get("Gateway", INFRA_NS, "same-namespace")?;
    conditions(gw.pointer("/status/conditions")).get("Programmed").cloned()
}

#[test]
fn the_leader_writes_status_once_every_replica_applied_and_hands_over_when_its_lease_expires() {
    if !require_curl("the_leader_writes_status_once_every_replica_applied_and_hands_over_when_its_lease_expires") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    let a = c.sluice("sluice-a", true, &[]);
    let leads = |s: &Sluice| metric_opt(s, "sluice_leader") == Some(1.0);
    assert!(wait_until(WAIT, || leads(&a).then_some(())).is_some(), "sluice-a never led; stderr:\n{}", a.stderr());
    let b = c.sluice("sluice-b", true, &[]);
    // Every replica serves.
    for s in [&a, &b] {
        let r = curl_retry(s.addr_of(SAME_NAMESPACE, 80), &Req::get("/"), WAIT);
        assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")), "{:?}", r.pod());
    }
    let two = wait_until(WAIT, || programmed(&c.api).filter(|p| p["message"] == "applied by 2/2 replicas"));
    assert!(two.is_some_and(|p| p["status"] == "True"), "{:?}; a:\n{}", programmed(&c.api), a.stderr());
    let lease = c.api.get("Lease", "sluice-system", "sluice-leader").expect("leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "sluice-a");
    for pod in ["sluice-a", "sluice-b"] {
        let l = c.api.get("Lease", "sluice-system", &format!("sluice-replica-{pod}")).expect("replica Lease");
        let gws: Value =
            serde_json::from_str(l["metadata"]["annotations"]["sluice.dev/gateways"].as_str().unwrap_or("{}"))
                .expect("gateways annotation");
        assert_eq!(gws[SAME_NAMESPACE], 1, "{l:#}");
    }
    // Only the leader writes.
    assert!(!leads(&b));
    assert_eq!(metric_opt(&b, "sluice_status_writes_total").unwrap_or(0.0), 0.0, "a follower wrote status");
    assert!(metric_opt(&a, "sluice_status_writes_total").unwrap_or(0.0) > 0.0);

    // A replica that has not applied the Gateway (it watches another
    // namespace) holds Programmed back, and the leader exports the lag.
    let lagging = c.sluice("sluice-c", true, &["--watch-namespace", "gateway-conformance-web-backend"]);
    let held = wait_until(WAIT, || programmed(&c.api).filter(|p| p["message"] == "applied by 2/3 replicas"));
    let held = held.unwrap_or_else(|| panic!("Programmed not held back: {:?}", programmed(&c.api)));
    assert_eq!((held["status"].as_str(), held["reason"].as_str()), (Some("False"), Some("Pending")));
    assert_eq!(metric_opt(&a, "sluice_replicas_lagging"), Some(1.0));
    assert!(metric_opt(&a, "sluice_propagation_lag_seconds").is_some_and(|s| s > 0.0));
    // Once it is gone (its Lease expires), the remaining replicas suffice.
    drop(lagging);
    let back = wait_until(WAIT, || programmed(&c.api).filter(|p| p["message"] == "applied by 2/2 replicas"));
    assert!(back.is_some_and(|p| p["status"] == "True"), "{:?}", programmed(&c.api));
    assert!(wait_until(WAIT, || (metric_opt(&a, "sluice_replicas_lagging") == Some(0.0)).then_some(())).is_some());
    // The leader deletes the Lease of the replica that is gone (unchanged
    // for 5 Lease durations of 2 s).
    let deleted =
        wait_until(WAIT, || c.api.get("Lease", "sluice-system", "sluice-replica-sluice-c").is_none().then_some(()));
    assert!(deleted.is_some(), "the stale replica Lease stayed; a:\n{}", a.stderr());
    assert!(
        c.api.get("Lease", "sluice-system", "sluice-replica-sluice-b").is_some(),
        "a live replica's Lease was deleted"
    );

    // The leader dies without releasing its Lease: sluice-b takes over once
    // it expires, and writes status from then on.
    drop(a);
    assert!(
        wait_until(WAIT, || leads(&b).then_some(())).is_some(),
        "sluice-b never took over; stderr:\n{}",
        b.stderr()
    );
    let lease = c.api.get("Lease", "sluice-system", "sluice-leader").expect("leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "sluice-b");
    assert!(lease["spec"]["leaseTransitions"].as_i64().is_some_and(|t| t >= 1), "{lease:#}");
    let mut route = c.api.get("HTTPRoute", INFRA_NS, "gateway-conformance-infra-test").expect("route");
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("infra-backend-v2");
    c.api.apply(&route);
    wait_object(&c.api, "HTTPRoute", INFRA_NS, "gateway-conformance-infra-test", |o| {
        o["metadata"]["generation"] == 2 && parent(o, "same-namespace").is_some() && all_current(o)
    });
    let one = wait_until(WAIT, || programmed(&c.api).filter(|p| p["message"] == "applied by 1/1 replicas"));
    assert!(one.is_some(), "{:?}", programmed(&c.api));
    assert!(metric_opt(&b, "sluice_status_writes_total").unwrap_or(0.0) > 0.0);
    let r = curl_retry(b.addr_of(SAME_NAMESPACE, 80), &Req::get("/"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v2-")), "{:?}", r.pod());

    // Sluice used only what its RBAC grants (deploy/): reads everywhere,
    // patches on status subresources, Lease writes, and deletes of stale
    // replica Leases.
    for r in c.api.requests() {
        let (method, path) = r.split_once(' ').unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        let ok = match method {
            "GET" => true,
            "PATCH" => {
                path.contains("/leases/")
                    || ["gatewayclasses", "gateways", "httproutes", "ingresses"]
                        .iter()
                        .any(|k| path.contains(&format!("/{k}/")) && path.ends_with("/status"))
            }
            "POST" | "PUT" => path.contains("/namespaces/sluice-system/leases"),
            // Only replica Leases of replicas gone for good.
            "DELETE" => path.contains("/namespaces/sluice-system/leases/sluice-replica-"),
            _ => false,
        };
        assert!(ok, "request outside the agreed RBAC: {r}");
    }
}

#[test]
fn a_leader_stopping_gracefully_hands_over_at_once() {
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    // Leases of 30 s: without a release the follower would wait that long.
    let mut a = c.sluice("sluice-a", true, &["--lease-duration", "30s"]);
    let leads = |s: &Sluice| metric_opt(s, "sluice_leader") == Some(1.0);
    assert!(wait_until(WAIT, || leads(&a).then_some(())).is_some(), "sluice-a never led");
    let b = c.sluice("sluice-b", true, &["--lease-duration", "30s"]);
    assert!(wait_until(WAIT, || c.api.get("Lease", "sluice-system", "sluice-replica-sluice-b")).is_some());
    a.terminate();
    assert!(a.wait_exit(WAIT).is_some_and(|s| s.success()), "sluice-a did not exit cleanly");
    let replica = c.api.get("Lease", "sluice-system", "sluice-replica-sluice-a").expect("replica Lease");
    assert!(replica.pointer("/spec/holderIdentity").is_none(), "replica Lease still held: {replica:#}");
    assert!(!c.api.requests().iter().any(|r| r.starts_with("DELETE ")), "Sluice needs no delete verb");
    // sluice-b renews every 10 s and takes the released Lease then.
    assert!(wait_until(WAIT, || leads(&b).then_some(())).is_some(), "no takeover; b:\n{}", b.stderr());
    let lease = c.api.get("Lease", "sluice-system", "sluice-leader").expect("leader Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "sluice-b");
}

#[test]
fn objects_sluice_cannot_use_are_left_out_and_the_rest_still_applies() {
    if !require_curl("objects_sluice_cannot_use_are_left_out_and_the_rest_still_applies") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    // A rule with an invalid regex (Sluice cannot compile it) and a route
    // Sluice cannot parse (a value its API version does not know).
    let mut bad_regex = route(INFRA_NS, "bad-regex", "same-namespace", "/x", "infra-backend-v2");
    bad_regex["spec"]["rules"][0]["matches"][0]["path"] = json!({"type": "RegularExpression", "value": "(["});
    c.api.apply(&bad_regex);
    let mut unparseable = route(INFRA_NS, "unparseable", "same-namespace", "/y", "infra-backend-v2");
    unparseable["spec"]["rules"][0]["matches"][0]["path"]["type"] = json!("FuturePathType");
    c.api.apply(&unparseable);
    let s = c.sluice("sluice-a", true, &[]);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    assert!(curl_retry(addr, &Req::get("/"), WAIT).pod().is_some_and(|p| p.starts_with("infra-backend-v1-")));
    let r = wait_object(&c.api, "HTTPRoute", INFRA_NS, "bad-regex", |o| parent(o, "same-namespace").is_some());
    let pc = conditions(parent(&r, "same-namespace").and_then(|p| p.get("conditions")));
    assert!(is(pc.get("Accepted"), "False", "UnsupportedValue"), "{pc:#?}");
    let (_, diagnostics) = s.admin_get("/diagnostics").expect("/diagnostics");
    assert!(diagnostics.contains("HTTPRoute gateway-conformance-infra/unparseable"), "{diagnostics}");
    assert!(diagnostics.contains("FuturePathType"), "{diagnostics}");
    // Later changes still apply.
    c.api.apply(&route(INFRA_NS, "later", "same-namespace", "/later", "infra-backend-v3"));
    let later = wait_until(WAIT, || pod_of(addr, "/later").filter(|p| p.starts_with("infra-backend-v3-")));
    assert!(later.is_some(), "a valid change after invalid objects was not applied; stderr:\n{}", s.stderr());
}

#[test]
fn watch_namespace_limits_what_is_read_and_served() {
    if !require_curl("watch_namespace_limits_what_is_read_and_served") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    c.api.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sluice", "namespace": "sluice-system"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}},
    }));
    // A route in a namespace Sluice does not watch, on a Gateway that
    // allows all namespaces.
    c.api.apply(&route("gateway-conformance-web-backend", "elsewhere", "all-namespaces", "/", "web-backend"));
    let mut elsewhere = c.api.get("HTTPRoute", "gateway-conformance-web-backend", "elsewhere").expect("route");
    elsewhere["spec"]["parentRefs"][0]["namespace"] = json!(INFRA_NS);
    c.api.apply(&elsewhere);
    let s = c.sluice("sluice-a", true, &["--watch-namespace", INFRA_NS, "--publish-service", "sluice-system/sluice"]);
    let r = curl_retry(s.addr_of(SAME_NAMESPACE, 80), &Req::get("/"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("infra-backend-v1-")), "{:?}", r.pod());
    let all = s.addr_of("gateway-conformance-infra/all-namespaces", 80);
    assert_eq!(curl(all, &Req::get("/")).map(|r| r.status).ok(), Some(404), "a route from an unwatched namespace");
    // The publish Service is read although its namespace is not watched.
    let gw = wait_object(&c.api, "Gateway", INFRA_NS, "same-namespace", |o| o.pointer("/status/addresses").is_some());
    assert_eq!(gw.pointer("/status/addresses"), Some(&json!([{"type": "Hostname", "value": "lb.example.com"}])));
    for r in c.api.requests().iter().filter(|r| r.contains("/httproutes") || r.contains("/services")) {
        let scoped = r.contains(&format!("/namespaces/{INFRA_NS}/"))
            || (r.contains("/services") && r.contains("/namespaces/sluice-system/"));
        assert!(scoped, "request outside the watched namespaces: {r}");
    }
    // (Watching every namespace, the same route is served.)
    let full = c.sluice("sluice-full", true, &[]);
    let r = curl_retry(full.addr_of("gateway-conformance-infra/all-namespaces", 80), &Req::get("/"), WAIT);
    assert!(r.pod().is_some_and(|p| p.starts_with("web-backend-")), "{:?}", r.pod());
}

#[test]
fn without_config_or_cluster_sluice_explains_and_exits_78() {
    let dir = TempDir::new("nokube");
    let out = std::process::Command::new(support::SLUICE)
        .args(["run", "--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("no Kubernetes API") && stderr.contains("--config"), "{stderr}");
}

#[test]
fn a_rate_limit_policy_from_the_api_is_enforced_and_lifted_when_deleted() {
    if !require_curl("a_rate_limit_policy_from_the_api_is_enforced_and_lifted_when_deleted") {
        return;
    }
    let c = Cluster::new(&["httproute-simple-same-namespace"]);
    let s = c.sluice("sluice-a", true, &[]);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    assert_eq!(curl_retry(addr, &Req::get("/"), WAIT).status, 200);
    // One bucket for the whole route: 2 requests per minute.
    c.api.apply(&json!({
        "apiVersion": "policy.sluice.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "slow", "namespace": INFRA_NS},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "gateway-conformance-infra-test"}],
            "limit": {"requests": 2, "unit": "Minute"},
            "key": [],
        },
    }));
    let limited = wait_until(WAIT, || curl(addr, &Req::get("/")).ok().filter(|r| r.status == 429));
    let limited = limited.unwrap_or_else(|| panic!("the policy never applied; stderr:\n{}", s.stderr()));
    assert!(limited.header("retry-after").is_some(), "{:?}", limited.headers);
    assert!(limited.header("ratelimit-policy").is_some_and(|p| p.contains("q=2")), "{:?}", limited.headers);
    assert!(metric(&s, "sluice_ratelimit_requests_total") >= 1.0);
    // The leader writes the policy's status.
    let accepted = |name: &str| {
        wait_until(WAIT, || {
            let p = c.api.get("RateLimitPolicy", INFRA_NS, name)?;
            let cond = p.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "Accepted")?.clone();
            Some((cond["status"].as_str()?.to_string(), cond["reason"].as_str()?.to_string()))
        })
    };
    assert_eq!(accepted("slow"), Some(("True".into(), "Accepted".into())), "stderr:\n{}", s.stderr());
    // A policy aimed at a missing route is not accepted, and says so.
    c.api.apply(&json!({
        "apiVersion": "policy.sluice.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "nowhere", "namespace": INFRA_NS},
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "no-such-route"}],
            "limit": {"requests": 2, "unit": "Minute"},
            "key": [],
        },
    }));
    let rejected = accepted("nowhere");
    assert!(rejected.as_ref().is_some_and(|(st, _)| st == "False"), "{rejected:?}; stderr:\n{}", s.stderr());
    // Deleting the policy through the API lifts the limit.
    assert!(c.api.delete("RateLimitPolicy", INFRA_NS, "slow"));
    let lifted = wait_until(WAIT, || curl(addr, &Req::get("/")).ok().filter(|r| r.status == 200));
    assert!(lifted.is_some(), "still limited after the policy was deleted; stderr:\n{}", s.stderr());
}
