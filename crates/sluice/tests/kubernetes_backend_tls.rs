//! BackendTLSPolicy in Kubernetes mode, end to end: the real `sluice run
//! --kubernetes` and its kube client against the fake API server
//! (`support/apiserver.rs`) holding the Gateway API conformance manifests
//! `backendtlspolicy.yaml` (+ base), with `sluice echo --tls-cert/--tls-key`
//! standing in for tls-backend (the suite's certificate: abc.example.com,
//! signed by a per-test CA) and the CA ConfigMaps created through the API.
//! Checked: requests reach the TLS backend, the policy's `status.ancestors`
//! written by the leader, a CA ConfigMap rotated through the API, the clear
//! condition without `--watch-configmaps`, a 403 on ConfigMaps and a missing
//! BackendTLSPolicy CRD not holding readiness back, `--configmap-selector`,
//! `wellKnownCACertificates: System`, and the conformance cases on conflicts
//! and invalid CA references with their conditions per ancestor.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::tls::TestCa;
use support::{Echo, INFRA_NS, Req, Sluice, TempDir, curl, require_curl, wait_until};

const SAME_NAMESPACE: &str = "gateway-conformance-infra/same-namespace";
const HTTPS_GATEWAY: &str = "same-namespace-with-https-listener";
const CONTROLLER: &str = "sluice.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(20);
const GOOD_CA: &str = "tls-checks-ca-certificate";
const OTHER_CA: &str = "mismatch-ca-certificate";

/// The fake cluster: conformance manifests `backendtlspolicy` (+ base)
/// applied through the API, with the CA ConfigMaps and the HTTPS listener's
/// Secret.
struct Cluster {
    api: ApiServer,
    _echoes: BTreeMap<String, Echo>,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    /// The CA that signed tls-backend's certificate.
    ca: TestCa,
    /// An unrelated CA.
    other: TestCa,
    _dir: TempDir,
}

impl Cluster {
    /// `extra` docs are applied after the manifests (a foreign status entry,
    /// say); `labels` go on the CA ConfigMaps.
    fn new(extra: &[Value], labels: Value) -> Self {
        Self::with(&["backendtlspolicy"], extra, labels)
    }

    /// [`Cluster::new`] with the conformance manifests `tests/<m>.yaml` for
    /// each `m` in `manifests`.
    fn with(manifests: &[&str], extra: &[Value], labels: Value) -> Self {
        let dir = TempDir::new("kube-btls");
        let log_dir = dir.subdir("logs");
        let ca = TestCa::new(dir.path(), "conformance-ca");
        let other = TestCa::new(dir.path(), "mismatch-ca");
        let leaf = ca.leaf_with_uris(
            "tls-checks-certificate",
            &["abc.example.com", "other.example.com"],
            &["spiffe://abc.example.com/test-identity"],
        );
        let (crt, key) = (dir.path().join("tls-backend.crt"), dir.path().join("tls-backend.key"));
        std::fs::write(&crt, &leaf.cert).expect("writing the tls-backend certificate");
        std::fs::write(&key, &leaf.key).expect("writing the tls-backend key");
        let tls_args = ["--tls-cert", crt.to_str().expect("utf-8"), "--tls-key", key.to_str().expect("utf-8")];
        let (docs, echoes) = support::conformance_docs_with_tls(manifests, &log_dir, &tls_args);
        let api = ApiServer::start();
        for d in &docs {
            api.apply(d);
        }
        // Re-created, so that a status they carry is stored as given.
        for d in extra {
            let meta = |k: &str| d["metadata"][k].as_str().unwrap_or_default().to_string();
            api.delete(d["kind"].as_str().unwrap_or_default(), &meta("namespace"), &meta("name"));
            api.apply(d);
        }
        let https = ca.leaf("tls-validity-checks-certificate", &["abc.example.com", "https-listener.org"]);
        api.apply(&support::tls::tls_secret(INFRA_NS, "tls-validity-checks-certificate", &https));
        let c = Self { kubeconfig: api.kubeconfig(dir.path()), api, _echoes: echoes, log_dir, ca, other, _dir: dir };
        c.set_ca(GOOD_CA, &c.ca, labels.clone());
        c.set_ca(OTHER_CA, &c.other, labels);
        c
    }

    /// Creates or replaces ConfigMap `name` with `ca`'s certificate.
    fn set_ca(&self, name: &str, ca: &TestCa, labels: Value) {
        let pem = std::fs::read_to_string(&ca.pem_path).expect("reading a CA PEM");
        self.api.apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": INFRA_NS, "labels": labels},
            "data": {"ca.crt": pem, "unrelated": "x".repeat(4096)},
        }));
    }

    fn sluice(&self, extra: &[&str], env: &[(&str, &str)], wait_ready: bool) -> Sluice {
        let mut args = vec![
            "--kubernetes",
            "--isolate-gateways",
            "--bind",
            "80=127.0.0.1:0",
            "--bind",
            "443=127.0.0.1:0",
            "--pod-name",
            "sluice-a",
            "--pod-namespace",
            "sluice-system",
            "--lease-duration",
            "2s",
        ];
        args.extend_from_slice(extra);
        let mut envs = vec![("KUBECONFIG", self.kubeconfig.to_str().expect("utf-8 path"))];
        envs.extend_from_slice(env);
        Sluice::try_start_with(&args, &envs, &self.kubeconfig, &self.log_dir, wait_ready).unwrap_or_else(|f| {
            panic!("sluice run --kubernetes exited with {}\nstdout:\n{}\nstderr:\n{}", f.status, f.stdout, f.stderr)
        })
    }
}

/// Status and pod of `path` (Host abc.example.com) through `addr`.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>, Option<String>)> {
    let r = curl(addr, &Req::get(path).host("abc.example.com")).ok()?;
    let sni = r.echo.as_ref().and_then(|e| e.pointer("/tls/serverName")).and_then(Value::as_str).map(String::from);
    Some((r.status, r.pod().map(String::from), sni))
}

/// Waits until `path` answers 200 from tls-backend, which saw `abc.example.com` as SNI.
fn wait_tls_ok(s: &Sluice, addr: SocketAddr, path: &str) {
    wait_tls_ok_within(s, addr, path, WAIT);
}

fn wait_tls_ok_within(s: &Sluice, addr: SocketAddr, path: &str, timeout: Duration) {
    let ok = wait_until(timeout, || {
        get(addr, path).filter(|(st, pod, sni)| {
            *st == 200
                && pod.as_deref().is_some_and(|p| p.starts_with("tls-backend"))
                && sni.as_deref() == Some("abc.example.com")
        })
    });
    assert!(ok.is_some(), "{path}: {:?}; stderr:\n{}", get(addr, path), s.stderr());
}

/// Waits until `path` answers `want` (a 5xx class when `want` is 500..).
fn wait_status(s: &Sluice, addr: SocketAddr, path: &str, want: std::ops::RangeInclusive<u16>) {
    let ok = wait_until(WAIT, || get(addr, path).filter(|(st, ..)| want.contains(st)));
    assert!(ok.is_some(), "{path}: {:?}, want {want:?}; stderr:\n{}", get(addr, path), s.stderr());
}

/// Our `status.ancestors` entry for Gateway `gateway` of policy `name`.
fn ancestor(policy: &Value, gateway: &str) -> Option<Value> {
    policy.pointer("/status/ancestors")?.as_array()?.iter().find_map(|a| {
        (a["controllerName"] == CONTROLLER
            && a["ancestorRef"]["name"] == gateway
            && a["ancestorRef"]["namespace"] == INFRA_NS
            && a["ancestorRef"]["kind"] == "Gateway"
            && a["ancestorRef"]["group"] == "gateway.networking.k8s.io")
            .then(|| a.clone())
    })
}

/// `type → (status, reason, message)` of an ancestor entry, if every
/// condition carries the policy's current generation.
fn current_conditions(policy: &Value, entry: &Value) -> Option<BTreeMap<String, (String, String, String)>> {
    let generation = policy.pointer("/metadata/generation")?;
    let conds = entry["conditions"].as_array()?;
    if conds.is_empty() || conds.iter().any(|c| &c["observedGeneration"] != generation) {
        return None;
    }
    Some(
        conds
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("type"), (s("status"), s("reason"), s("message")))
            })
            .collect(),
    )
}

/// Waits until policy `name`'s entry for `gateway` has Accepted and
/// ResolvedRefs with these (status, reason); returns the conditions.
fn wait_policy(
    api: &ApiServer,
    s: &Sluice,
    name: &str,
    gateway: &str,
    accepted: (&str, &str),
    resolved: (&str, &str),
) -> BTreeMap<String, (String, String, String)> {
    wait_policy_with(api, s, name, gateway, accepted, Some(resolved))
}

/// [`wait_policy`]; `resolved: None` checks that there is no ResolvedRefs.
fn wait_policy_with(
    api: &ApiServer,
    s: &Sluice,
    name: &str,
    gateway: &str,
    accepted: (&str, &str),
    resolved: Option<(&str, &str)>,
) -> BTreeMap<String, (String, String, String)> {
    let matches = |c: &BTreeMap<String, (String, String, String)>, t: &str, want: Option<(&str, &str)>| match want {
        Some((st, r)) => c.get(t).is_some_and(|(a, b, _)| a == st && b == r),
        None => !c.contains_key(t),
    };
    let found = wait_until(WAIT, || {
        let p = api.get("BackendTLSPolicy", INFRA_NS, name)?;
        let c = current_conditions(&p, &ancestor(&p, gateway)?)?;
        (matches(&c, "Accepted", Some(accepted)) && matches(&c, "ResolvedRefs", resolved)).then_some(c)
    });
    found.unwrap_or_else(|| {
        panic!(
            "policy {name} ancestor {gateway}: want Accepted={accepted:?} ResolvedRefs={resolved:?}, have {:#?}\nstderr:\n{}",
            api.get("BackendTLSPolicy", INFRA_NS, name).and_then(|p| p.get("status").cloned()),
            s.stderr()
        )
    })
}

#[test]
fn a_policy_from_the_api_reaches_the_tls_backend_gets_ancestor_status_and_follows_ca_rotation() {
    if !require_curl("a_policy_from_the_api_reaches_the_tls_backend_gets_ancestor_status_and_follows_ca_rotation") {
        return;
    }
    // Another controller's entry on the policy must survive our writes.
    let foreign = json!({
        "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": INFRA_NS, "name": "theirs"},
        "controllerName": "example.com/other-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z"}],
    });
    let manifest = support::load_conformance_manifest("tests/backendtlspolicy.yaml");
    let mut normative = manifest
        .into_iter()
        .find(|d| d["kind"] == "BackendTLSPolicy" && d["metadata"]["name"] == "normative-test")
        .expect("normative-test policy");
    normative["status"] = json!({"ancestors": [foreign.clone()]});
    // Unrelated ConfigMaps, sorted before the CA bundles: the ConfigMap
    // list takes several pages.
    let mut extra = vec![normative];
    for i in 0..120 {
        extra.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("filler-{i:03}"), "namespace": "aaa-other"},
            "data": {"settings": "x".repeat(2048)},
        }));
    }
    let c = Cluster::new(&extra, json!({}));
    let s = c.sluice(&["--watch-configmaps"], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let reqs = c.api.requests();
    assert!(reqs.iter().any(|r| r.contains("/configmaps?") && r.contains("continue=")), "{reqs:?}");

    // Valid CA + hostname: 200 from tls-backend with the policy hostname as
    // SNI; a hostname the certificate lacks, or a foreign CA: 5xx.
    wait_tls_ok(&s, addr, "/backendtlspolicy");
    wait_tls_ok(&s, addr, "/backendtlspolicy-reconcile-test");
    for path in ["/backendtlspolicy-host-mismatch", "/backendtlspolicy-cert-mismatch"] {
        wait_status(&s, addr, path, 500..=599);
    }

    // With CA bundles watched, the GatewayClass advertises the feature.
    let gc = wait_until(WAIT, || {
        c.api.get("GatewayClass", "", "sluice").and_then(|g| g.pointer("/status/supportedFeatures").cloned())
    });
    let features = gc.unwrap_or_else(|| panic!("no supportedFeatures; stderr:\n{}", s.stderr()));
    assert!(features.as_array().is_some_and(|f| f.contains(&json!({"name": "BackendTLSPolicy"}))), "{features}");

    // Status: one entry per ancestor Gateway (the HTTP Gateway, and the
    // HTTPS one through the re-encrypt route), the foreign entry kept.
    let ok = ("True", "Accepted");
    let resolved = ("True", "ResolvedRefs");
    for gw in ["same-namespace", HTTPS_GATEWAY] {
        wait_policy(&c.api, &s, "normative-test", gw, ok, resolved);
    }
    let p = c.api.get("BackendTLSPolicy", INFRA_NS, "normative-test").expect("policy");
    let ancestors = p["status"]["ancestors"].as_array().cloned().unwrap_or_default();
    assert_eq!(ancestors.len(), 3, "{ancestors:#?}");
    assert!(ancestors.contains(&foreign), "the other controller's entry was dropped: {ancestors:#?}");
    // A policy whose Service only the HTTP Gateway's route reaches has that
    // ancestor alone.
    wait_policy(&c.api, &s, "host-mismatch", "same-namespace", ok, resolved);
    let hm = c.api.get("BackendTLSPolicy", INFRA_NS, "host-mismatch").expect("policy");
    assert!(ancestor(&hm, HTTPS_GATEWAY).is_none(), "{hm:#?}");

    // The CA ConfigMap rotated through the API: reconcile-test (and the
    // others on tls-checks-ca-certificate) stop validating tls-backend,
    // then work again when it is rotated back.
    c.set_ca(GOOD_CA, &c.other, json!({}));
    wait_status(&s, addr, "/backendtlspolicy-reconcile-test", 502..=502);
    wait_status(&s, addr, "/backendtlspolicy", 502..=502);
    c.set_ca(GOOD_CA, &c.ca, json!({}));
    wait_tls_ok(&s, addr, "/backendtlspolicy-reconcile-test");

    // A spec change: the new generation shows up in every condition.
    let mut p = c.api.get("BackendTLSPolicy", INFRA_NS, "reconcile-test").expect("policy");
    p["spec"]["validation"]["caCertificateRefs"][0]["name"] = json!(OTHER_CA);
    c.api.apply(&p);
    wait_status(&s, addr, "/backendtlspolicy-reconcile-test", 502..=502);
    let after = c.api.get("BackendTLSPolicy", INFRA_NS, "reconcile-test").expect("policy");
    assert_eq!(after["metadata"]["generation"], 2);
    wait_policy(&c.api, &s, "reconcile-test", "same-namespace", ok, resolved);

    // A missing CA ConfigMap: the spec's reasons, 500 for that backend.
    assert!(c.api.delete("ConfigMap", INFRA_NS, OTHER_CA));
    let conds = wait_policy(
        &c.api,
        &s,
        "reconcile-test",
        "same-namespace",
        ("False", "NoValidCACertificate"),
        ("False", "InvalidCACertificateRef"),
    );
    assert!(conds["ResolvedRefs"].2.contains(&format!("ConfigMap {INFRA_NS}/{OTHER_CA} not found")), "{conds:?}");
    wait_status(&s, addr, "/backendtlspolicy-reconcile-test", 500..=500);
    // Everything else kept serving.
    wait_tls_ok(&s, addr, "/backendtlspolicy");
}

#[test]
fn without_watch_configmaps_a_policy_says_why_its_ca_cannot_be_seen() {
    if !require_curl("without_watch_configmaps_a_policy_says_why_its_ca_cannot_be_seen") {
        return;
    }
    let c = Cluster::new(&[], json!({}));
    let s = c.sluice(&[], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let conds = wait_policy(
        &c.api,
        &s,
        "normative-test",
        "same-namespace",
        ("False", "NoValidCACertificate"),
        ("False", "InvalidCACertificateRef"),
    );
    let msg = &conds["ResolvedRefs"].2;
    assert!(msg.contains("does not watch ConfigMaps") && msg.contains("--watch-configmaps"), "{msg}");
    assert!(msg.contains("deploy/components/backend-tls-ca"), "{msg}");
    wait_status(&s, addr, "/backendtlspolicy", 500..=500);
    // ConfigMaps were never asked for, and the feature is not advertised.
    let reqs = c.api.requests();
    assert!(!reqs.iter().any(|r| r.contains("/configmaps")), "{reqs:?}");
    let gc = c.api.get("GatewayClass", "", "sluice").expect("GatewayClass");
    let features = gc.pointer("/status/supportedFeatures").cloned().unwrap_or_default();
    assert!(features.as_array().is_some_and(|f| f.contains(&json!({"name": "HTTPRoute"}))), "{features}");
    assert!(!features.as_array().is_some_and(|f| f.contains(&json!({"name": "BackendTLSPolicy"}))), "{features}");
}

#[test]
fn forbidden_configmaps_do_not_block_readiness_and_are_picked_up_once_granted() {
    if !require_curl("forbidden_configmaps_do_not_block_readiness_and_are_picked_up_once_granted") {
        return;
    }
    let c = Cluster::new(&[], json!({}));
    c.api.forbid("configmaps", true);
    // Ready although every ConfigMap request gets 403.
    let s = c.sluice(&["--watch-configmaps"], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let conds = wait_policy(
        &c.api,
        &s,
        "normative-test",
        "same-namespace",
        ("False", "NoValidCACertificate"),
        ("False", "InvalidCACertificateRef"),
    );
    assert!(conds["ResolvedRefs"].2.contains("403 Forbidden"), "{conds:?}");
    assert!(s.stderr().contains("Listing forbidden by RBAC"), "stderr:\n{}", s.stderr());
    wait_status(&s, addr, "/backendtlspolicy", 500..=500);
    // The grant arrives (RBAC applied later): the watch, retried with
    // backoff (up to 30 s apart), picks the ConfigMaps up.
    c.api.forbid("configmaps", false);
    wait_tls_ok_within(&s, addr, "/backendtlspolicy", Duration::from_secs(60));
    wait_policy(&c.api, &s, "normative-test", "same-namespace", ("True", "Accepted"), ("True", "ResolvedRefs"));
}

#[test]
fn a_missing_backend_tls_policy_crd_does_not_block_readiness() {
    if !require_curl("a_missing_backend_tls_policy_crd_does_not_block_readiness") {
        return;
    }
    let c = Cluster::new(&[], json!({}));
    c.api.uninstall("backendtlspolicies");
    let s = c.sluice(&["--watch-configmaps"], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    // No policy: the Service port is spoken to in plain HTTP, which the
    // TLS-only backend refuses (a 5xx), while the route itself is served.
    wait_status(&s, addr, "/backendtlspolicy", 500..=599);
    assert!(s.stderr().contains("Kind not served"), "stderr:\n{}", s.stderr());
}

#[test]
fn a_configmap_selector_limits_the_watch_and_the_condition_names_it() {
    if !require_curl("a_configmap_selector_limits_the_watch_and_the_condition_names_it") {
        return;
    }
    let c = Cluster::new(&[], json!({}));
    let s = c.sluice(&["--watch-configmaps", "--configmap-selector", "sluice.dev/ca-bundle=true"], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let conds = wait_policy(
        &c.api,
        &s,
        "normative-test",
        "same-namespace",
        ("False", "NoValidCACertificate"),
        ("False", "InvalidCACertificateRef"),
    );
    assert!(conds["ResolvedRefs"].2.contains("--configmap-selector \"sluice.dev/ca-bundle=true\""), "{conds:?}");
    let reqs = c.api.requests();
    assert!(
        reqs.iter().any(|r| r.contains("/configmaps?") && r.contains("labelSelector=sluice.dev%2Fca-bundle%3Dtrue")),
        "{reqs:?}"
    );
    // Labelled, it is seen.
    c.set_ca(GOOD_CA, &c.ca, json!({"sluice.dev/ca-bundle": "true"}));
    wait_tls_ok(&s, addr, "/backendtlspolicy");
}

#[test]
fn well_known_system_ca_certificates_use_the_os_trust_store() {
    if !require_curl("well_known_system_ca_certificates_use_the_os_trust_store") {
        return;
    }
    let c = Cluster::new(&[], json!({}));
    let mut p = c.api.get("BackendTLSPolicy", INFRA_NS, "normative-test").expect("policy");
    p["spec"]["validation"] = json!({"wellKnownCACertificates": "System", "hostname": "abc.example.com"});
    c.api.apply(&p);
    // The "system" trust store of this process is the test CA
    // (rustls-native-certs honours SSL_CERT_FILE, as OpenSSL does).
    let ca = c.ca.pem_path.to_str().expect("utf-8").to_string();
    let s = c.sluice(&[], &[("SSL_CERT_FILE", &ca)], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    wait_tls_ok(&s, addr, "/backendtlspolicy");
    wait_policy(&c.api, &s, "normative-test", "same-namespace", ("True", "Accepted"), ("True", "ResolvedRefs"));
    assert!(s.stderr().contains("System trust store loaded"), "stderr:\n{}", s.stderr());
}

/// The conformance cases BackendTLSPolicyConflictResolution,
/// BackendTLSPolicyInvalidCACertificateRef and BackendTLSPolicyInvalidKind
/// (INDEX.md 91–93) through the API: the conditions land in each policy's
/// `status.ancestors` entry for Gateway same-namespace, and traffic follows
/// the winning policies.
#[test]
fn conformance_policy_cases_report_per_ancestor() {
    if !require_curl("conformance_policy_cases_report_per_ancestor") {
        return;
    }
    let manifests = [
        "backendtlspolicy-conflict-resolution",
        "backendtlspolicy-invalid-ca-certificate-ref",
        "backendtlspolicy-invalid-kind",
    ];
    let c = Cluster::with(&manifests, &[], json!({}));
    let s = c.sluice(&["--watch-configmaps"], &[], true);
    let addr = s.addr_of(SAME_NAMESPACE, 80);
    let gw = "same-namespace";
    let (ok, resolved) = (("True", "Accepted"), Some(("True", "ResolvedRefs")));
    let conflicted = ("False", "Conflicted");
    for (name, accepted, refs) in [
        ("conflicted-without-section-name-1", ok, resolved),
        ("conflicted-without-section-name-2", conflicted, None),
        ("conflicted-with-section-name-1", ok, resolved),
        ("conflicted-with-section-name-2", conflicted, None),
        ("not-conflicted-with-section-name", ok, resolved),
        ("not-conflicted-without-section-name", ok, resolved),
        (
            "nonexistent-ca-certificate-ref",
            ("False", "NoValidCACertificate"),
            Some(("False", "InvalidCACertificateRef")),
        ),
        ("malformed-ca-certificate-ref", ("False", "NoValidCACertificate"), Some(("False", "InvalidCACertificateRef"))),
        ("invalid-kind", ("False", "NoValidCACertificate"), Some(("False", "InvalidKind"))),
    ] {
        wait_policy_with(&c.api, &s, name, gw, accepted, refs);
    }
    // Traffic: the winners' hostnames as SNI; unusable CAs answer 5xx.
    for (path, sni) in [
        ("/backendtlspolicy-conflicted-without-section-name", "other.example.com"),
        ("/backendtlspolicy-not-conflicted-without-section-name", "abc.example.com"),
    ] {
        let r = wait_until(WAIT, || get(addr, path).filter(|(st, ..)| *st == 200));
        assert_eq!(r.and_then(|r| r.2).as_deref(), Some(sni), "{path}; stderr:\n{}", s.stderr());
    }
    for path in ["/backendtlspolicy-nonexistent-ca-certificate-ref", "/backendtlspolicy-invalid-kind"] {
        wait_status(&s, addr, path, 500..=599);
    }
}
