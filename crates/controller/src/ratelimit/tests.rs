//! Policy parsing, attachment precedence, ExtensionRef and annotations.

use http::{HeaderMap, Method};
use sluice_model::{BindKey, RequestParts, RouteTable};

use super::*;
use crate::{Options, Translation, translate};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: sluice
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - name: login
    matches: [{path: {type: PathPrefix, value: /login}}]
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters: [{type: ExtensionRef, extensionRef: {group: policy.sluice.dev, kind: RateLimitPolicy, name: ext}}]
    backendRefs: [{name: svc, port: 80}]
  - backendRefs: [{name: svc, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns}
spec: {ports: [{port: 80}]}
"#;

fn policy(name: &str, requests: u64, target: &str) -> String {
    format!(
        "---\napiVersion: policy.sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  limit: {{requests: {requests}, unit: Second}}\n  targetRefs: {target}\n"
    )
}

fn run(extra: &str) -> (Translation, RouteTable) {
    let mut objects = Objects::default();
    let mut report = Report::default();
    objects.add_yaml(&format!("{BASE}{extra}"), "test", &mut report);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let t = translate(&objects, &Options::default());
    let table = RouteTable::compile(t.input.clone(), 1);
    (t, table)
}

/// The policy labels of the limits on the rule `path` lands on.
fn limits(table: &RouteTable, path: &str) -> Vec<String> {
    let headers = HeaderMap::new();
    let req = RequestParts { authority: "a.example", path, query: None, method: &Method::GET, headers: &headers };
    let bind = table.bind(&BindKey { gateway: None, port: 80 }).unwrap_or_else(|| panic!("no bind"));
    let m = bind.lookup(&req).unwrap_or_else(|e| panic!("{path}: {e:?}"));
    m.rule
        .filters
        .iter()
        .filter_map(|f| match f {
            Filter::RateLimit(rl) => Some(rl.policy.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn most_specific_target_wins_and_extension_ref_adds() {
    let gw = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
    let route = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]";
    let rule = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: login}]";
    let extra = [policy("g", 100, gw), policy("rt", 10, route), policy("ru", 1, rule), policy("ext", 5, "[]")].concat();
    let (t, table) = run(&extra);
    assert_eq!(limits(&table, "/login"), vec!["ns/ru"]);
    assert_eq!(limits(&table, "/api"), vec!["ns/rt", "ns/ext"]);
    assert_eq!(limits(&table, "/other"), vec!["ns/rt"]);
    for p in ["g", "rt", "ru", "ext"] {
        let c = t.report.condition(KIND, "ns", p, &Scope::Object, "Accepted");
        assert_eq!(c.map(|c| c.status), Some("True"), "{p}");
    }
    // ns/g applies nowhere (shadowed) but is still accepted; the counters
    // list the routes each limit serves.
    let rt = t.rate_limits.iter().find(|a| &*a.limit.policy == "ns/rt").unwrap_or_else(|| panic!("ns/rt unused"));
    assert_eq!(rt.routes, vec![Arc::<str>::from("ns/r")]);
}

#[test]
fn gateway_target_applies_without_route_policy() {
    let gw = "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]";
    let (_, table) = run(&[policy("g", 100, gw), policy("ext", 5, "[]")].concat());
    assert_eq!(limits(&table, "/other"), vec!["ns/g"]);
}

#[test]
fn missing_extension_ref_answers_500_and_bad_target_is_reported() {
    let bad = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: nope}]";
    let (t, table) = run(&policy("p", 1, bad));
    let c = t.report.condition(KIND, "ns", "p", &Scope::Object, "Accepted").unwrap_or_else(|| panic!("no status"));
    assert_eq!((c.status, c.reason), ("False", "TargetNotFound"));
    let d = t
        .report
        .diagnostics
        .iter()
        .find(|d| d.field.contains("extensionRef"))
        .unwrap_or_else(|| panic!("{:?}", t.report.diagnostics));
    assert_eq!(d.object, "HTTPRoute ns/r");
    assert_eq!(d.field, "spec.rules[1].filters[0].extensionRef");
    let headers = HeaderMap::new();
    let req = RequestParts { authority: "a", path: "/api", query: None, method: &Method::GET, headers: &headers };
    let bind = table.bind(&BindKey { gateway: None, port: 80 }).unwrap_or_else(|| panic!("no bind"));
    let m = bind.lookup(&req).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(matches!(m.rule.backends.backends()[0].target, sluice_model::BackendTarget::Invalid));
}

#[test]
fn conflicting_policies_oldest_wins() {
    let route = "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]";
    let (t, table) = run(&[policy("a", 1, route), policy("b", 2, route), policy("ext", 5, "[]")].concat());
    assert_eq!(limits(&table, "/other"), vec!["ns/a"]);
    let c = t.report.condition(KIND, "ns", "b", &Scope::Object, "Accepted").unwrap_or_else(|| panic!("no status"));
    assert_eq!((c.status, c.reason), ("False", "Conflicted"));
}

#[test]
fn invalid_policy_is_an_error_naming_the_field() {
    let mut objects = Objects::default();
    let mut report = Report::default();
    let yaml = "apiVersion: policy.sluice.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  limit: {requests: 5, unit: Second}\n  allow: [\"10.0.0.0/99\"]\n";
    objects.add_yaml(yaml, "test", &mut report);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let t = translate(&objects, &Options::default());
    let d = t.report.diagnostics.iter().find(|d| d.severity == Severity::Error).unwrap_or_else(|| panic!("no error"));
    assert_eq!((d.object.as_str(), d.field.as_str()), ("RateLimitPolicy ns/p", "spec.allow[0]"));

    // Unknown fields and enum values fail at parse time, naming the path.
    let mut report = Report::default();
    objects.add_yaml(&yaml.replace("Second", "Fortnight"), "test", &mut report);
    assert!(report.has_errors());
    assert!(report.diagnostics[0].field.contains("spec.limit.unit"), "{}", report.diagnostics[0]);
}

#[test]
fn ingress_annotations_follow_ingress_nginx() {
    let mut meta = ObjectMeta::default();
    let ann = [
        ("nginx.ingress.kubernetes.io/limit-rps", "10"),
        ("nginx.ingress.kubernetes.io/limit-rpm", "300"),
        ("nginx.ingress.kubernetes.io/limit-burst-multiplier", "3"),
        ("nginx.ingress.kubernetes.io/limit-whitelist", "10.0.0.0/8, 192.168.1.1"),
    ];
    meta.annotations = Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let v = from_annotations("ns", "ing", &meta).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].requests, v[0].period, v[0].burst), (10, Duration::from_secs(1), 30));
    assert_eq!((v[1].requests, v[1].period, v[1].burst), (300, Duration::from_secs(60), 900));
    assert!(v[0].allowed("10.3.4.5".parse().unwrap_or_else(|e| panic!("{e}"))));
    assert!(v[0].allowed("192.168.1.1".parse().unwrap_or_else(|e| panic!("{e}"))));
    assert!(!v[0].allowed("192.168.1.2".parse().unwrap_or_else(|e| panic!("{e}"))));
    assert_eq!(v[0].key.as_ref(), [KeyPart::ClientAddress]);

    // Default multiplier 5; 0 means no limit.
    meta.annotations = Some([("nginx.ingress.kubernetes.io/limit-rps".to_string(), "2".to_string())].into());
    let v = from_annotations("ns", "ing", &meta).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(v[0].burst, 10);
    meta.annotations = Some([("nginx.ingress.kubernetes.io/limit-rps".to_string(), "0".to_string())].into());
    assert!(from_annotations("ns", "ing", &meta).unwrap_or_else(|e| panic!("{e:?}")).is_empty());
    meta.annotations = Some([("nginx.ingress.kubernetes.io/limit-rps".to_string(), "ten".to_string())].into());
    let e = from_annotations("ns", "ing", &meta).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.0, "metadata.annotations[nginx.ingress.kubernetes.io/limit-rps]");
}
