//! Translation of the upstream conformance manifests: conditions, reasons
//! and compiled routes.

use std::path::PathBuf;

use http::{HeaderMap, Method};
use sluice_model::{BackendTarget, BindKey, RequestParts, RouteTable};

use super::*;
use crate::report::{Scope, Severity};

const INFRA: &str = "gateway-conformance-infra";

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/conformance")
}

/// base/manifests.yaml + the test's manifest, with `{GATEWAY_CLASS_NAME}`
/// replaced and a Sluice GatewayClass added.
fn load(test_yaml: &str) -> Objects {
    let dir = conformance_dir();
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n";
    let mut objects = Objects::default();
    let mut report = Report::default();
    objects.add_yaml(class, "class", &mut report);
    for (name, text) in
        [("base", read(dir.join("base/manifests.yaml"))), (test_yaml, read(dir.join("tests").join(test_yaml)))]
    {
        objects.add_yaml(&text.replace("{GATEWAY_CLASS_NAME}", "sluice"), name, &mut report);
    }
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    objects
}

fn run(test_yaml: &str) -> (Translation, RouteTable) {
    let t = translate(&load(test_yaml), &Options { isolate_gateways: true, ..Options::default() });
    let table = RouteTable::compile(t.input.clone(), 1);
    (t, table)
}

fn parent(gw: &str) -> Scope {
    Scope::Parent { gateway: format!("{INFRA}/{gw}"), section: None, port: None }
}

fn cond<'a>(t: &'a Translation, kind: &str, ns: &str, name: &str, scope: &Scope, ty: &str) -> (&'a str, &'a str) {
    let c = t
        .report
        .condition(kind, ns, name, scope, ty)
        .unwrap_or_else(|| panic!("no {ty} on {kind} {ns}/{name} {scope:?}: {:#?}", t.report.statuses));
    (c.status, c.reason)
}

/// Looks a request up on `gateway`'s port 80 socket; returns the backend
/// service name or "invalid".
fn lookup(table: &RouteTable, gateway: &str, host: &str, path: &str) -> Option<String> {
    let key = BindKey { gateway: Some(format!("{INFRA}/{gateway}").into()), port: 80 };
    let headers = HeaderMap::new();
    let req = RequestParts { authority: host, path, query: None, method: &Method::GET, headers: &headers };
    let m = table.bind(&key)?.lookup(&req).ok()?;
    let b = m.rule.backends.backends().first()?;
    Some(match b.target {
        BackendTarget::Service(id) => table.services()[id.0 as usize].name.clone(),
        BackendTarget::Invalid => "invalid".into(),
    })
}

#[test]
fn simple_same_namespace_route_is_accepted_and_compiled() {
    let (t, table) = run("httproute-simple-same-namespace.yaml");
    assert_eq!(cond(&t, "GatewayClass", "", "sluice", &Scope::Object, "Accepted"), ("True", "Accepted"));
    assert_eq!(
        cond(&t, "HTTPRoute", INFRA, "gateway-conformance-infra-test", &parent("same-namespace"), "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        cond(&t, "HTTPRoute", INFRA, "gateway-conformance-infra-test", &parent("same-namespace"), "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    assert_eq!(lookup(&table, "same-namespace", "anything", "/").as_deref(), Some("infra-backend-v1"));
}

#[test]
fn cross_namespace_backend_without_grant_is_ref_not_permitted() {
    let (t, table) = run("httproute-invalid-cross-namespace-backend-ref.yaml");
    let p = parent("same-namespace");
    assert_eq!(
        cond(&t, "HTTPRoute", INFRA, "invalid-cross-namespace-backend-ref", &p, "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        cond(&t, "HTTPRoute", INFRA, "invalid-cross-namespace-backend-ref", &p, "ResolvedRefs"),
        ("False", "RefNotPermitted")
    );
    assert_eq!(lookup(&table, "same-namespace", "x", "/").as_deref(), Some("invalid"));
}

#[test]
fn reference_grant_permits_cross_namespace_backend() {
    let (t, table) = run("httproute-reference-grant.yaml");
    let resolved: Vec<_> = t
        .report
        .statuses
        .iter()
        .filter(|s| s.kind == "HTTPRoute")
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ == "ResolvedRefs")
        .collect();
    assert!(!resolved.is_empty() && resolved.iter().all(|c| c.status == "True"), "{resolved:?}");
    assert_eq!(lookup(&table, "same-namespace", "x", "/").as_deref(), Some("web-backend"));
}

#[test]
fn invalid_backend_kinds_and_missing_services_keep_the_route_accepted() {
    let (t, _) = run("httproute-invalid-backendref-unknown-kind.yaml");
    let s = t.report.statuses.iter().find(|s| s.kind == "HTTPRoute").map(|s| (s.name.clone(), s.scope.clone()));
    let (name, scope) = s.unwrap_or_default_pair();
    assert_eq!(cond(&t, "HTTPRoute", INFRA, &name, &scope, "Accepted"), ("True", "Accepted"));
    assert_eq!(cond(&t, "HTTPRoute", INFRA, &name, &scope, "ResolvedRefs"), ("False", "InvalidKind"));

    let (t, table) = run("httproute-invalid-nonexistent-backendref.yaml");
    let s = t.report.statuses.iter().find(|s| s.kind == "HTTPRoute").map(|s| (s.name.clone(), s.scope.clone()));
    let (name, scope) = s.unwrap_or_default_pair();
    assert_eq!(cond(&t, "HTTPRoute", INFRA, &name, &scope, "ResolvedRefs"), ("False", "BackendNotFound"));
    assert!(t.report.diagnostics.iter().any(|d| d.severity == Severity::Warning && d.message.contains("not found")));
    assert_eq!(lookup(&table, "same-namespace", "x", "/").as_deref(), Some("invalid"));
}

trait PairExt {
    fn unwrap_or_default_pair(self) -> (String, Scope);
}

impl PairExt for Option<(String, Scope)> {
    fn unwrap_or_default_pair(self) -> (String, Scope) {
        self.unwrap_or((String::new(), Scope::Object))
    }
}

#[test]
fn cross_namespace_parent_not_allowed_by_listeners() {
    let (t, table) = run("httproute-invalid-cross-namespace-parent-ref.yaml");
    let c = t
        .report
        .condition(
            "HTTPRoute",
            "gateway-conformance-web-backend",
            "invalid-cross-namespace-parent-ref",
            &parent("same-namespace"),
            "Accepted",
        )
        .map(|c| (c.status, c.reason));
    assert_eq!(c, Some(("False", "NotAllowedByListeners")));
    let l = Scope::Listener { name: "http".into(), attached_routes: 0, supported_kinds: vec!["HTTPRoute".into()] };
    assert!(t.report.status("Gateway", INFRA, "same-namespace", &l).is_some(), "attachedRoutes must be 0");
    assert_eq!(lookup(&table, "same-namespace", "x", "/"), None);
}

#[test]
fn parent_ref_section_name_matching_no_listener_is_no_matching_parent() {
    let (t, _) = run("httproute-invalid-parentref-not-matching-section-name.yaml");
    let route = t.report.statuses.iter().find(|s| s.kind == "HTTPRoute");
    let c = route.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted")).map(|c| (c.status, c.reason));
    assert_eq!(c, Some(("False", "NoMatchingParent")));
}

#[test]
fn invalid_route_kinds_on_listeners() {
    let (t, _) = run("gateway-invalid-route-kind.yaml");
    let only = Scope::Listener { name: "http".into(), attached_routes: 0, supported_kinds: vec![] };
    assert_eq!(
        cond(&t, "Gateway", INFRA, "gateway-only-invalid-route-kind", &only, "ResolvedRefs"),
        ("False", "InvalidRouteKinds")
    );
    let mixed = Scope::Listener { name: "http".into(), attached_routes: 0, supported_kinds: vec!["HTTPRoute".into()] };
    assert_eq!(
        cond(&t, "Gateway", INFRA, "gateway-supported-and-invalid-route-kind", &mixed, "ResolvedRefs"),
        ("False", "InvalidRouteKinds")
    );
}

#[test]
fn attached_routes_are_counted_per_listener() {
    let (t, _) = run("gateway-with-attached-routes.yaml");
    let attached = |gw: &str| {
        t.report.statuses.iter().find_map(|s| match &s.scope {
            Scope::Listener { name, attached_routes, .. } if s.name == gw && name == "http" => Some(*attached_routes),
            _ => None,
        })
    };
    assert_eq!(attached("gateway-with-one-attached-route"), Some(1));
    assert_eq!(attached("gateway-with-two-attached-routes"), Some(2));
    let c = t.report.condition(
        "HTTPRoute",
        INFRA,
        "http-route-not-accepted",
        &parent("gateway-with-two-attached-routes"),
        "Accepted",
    );
    assert_eq!(c.map(|c| (c.status, c.reason)), Some(("False", "NoMatchingListenerHostname")));
}

#[test]
fn every_condition_carries_the_object_generation() {
    let mut objects = load("httproute-simple-same-namespace.yaml");
    for r in &mut objects.http_routes {
        std::sync::Arc::make_mut(r).metadata.generation = Some(7);
    }
    let t = translate(&objects, &Options::default());
    let route_conds: Vec<_> =
        t.report.statuses.iter().filter(|s| s.kind == "HTTPRoute").flat_map(|s| &s.conditions).collect();
    assert!(!route_conds.is_empty() && route_conds.iter().all(|c| c.observed_generation == 7));
}

#[test]
fn other_controllers_classes_are_ignored() {
    let mut objects = load("httproute-simple-same-namespace.yaml");
    let t = translate(&objects, &Options { gateway_controller: "example.com/other".into(), ..Options::default() });
    assert!(t.input.listeners.is_empty() && t.report.statuses.is_empty());
    objects.gateway_classes.clear();
    assert!(translate(&objects, &Options::default()).input.routes.is_empty());
}

#[test]
fn matching_manifest_compiles_to_the_expected_routes() {
    // HTTPRouteMatching: / → v1, /v2 → v2 (element-wise), /v2example → v1.
    let (_, table) = run("httproute-matching.yaml");
    assert_eq!(lookup(&table, "same-namespace", "x", "/").as_deref(), Some("infra-backend-v1"));
    assert_eq!(lookup(&table, "same-namespace", "x", "/v2").as_deref(), Some("infra-backend-v2"));
    assert_eq!(lookup(&table, "same-namespace", "x", "/v2example").as_deref(), Some("infra-backend-v1"));
}

#[test]
fn invalid_regex_is_an_error_naming_object_and_field() {
    let mut objects = load("httproute-simple-same-namespace.yaml");
    let mut report = Report::default();
    objects.add_yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
"#,
        "bad",
        &mut report,
    );
    let t = translate(&objects, &Options::default());
    let d = t.report.diagnostics.iter().find(|d| d.severity == Severity::Error);
    let d = d.map(|d| (d.object.as_str(), d.field.as_str()));
    assert_eq!(d, Some(("HTTPRoute gateway-conformance-infra/bad-regex", "spec.rules[0].matches[0].path.value")));
    let c = t.report.condition("HTTPRoute", INFRA, "bad-regex", &parent("same-namespace"), "Accepted");
    assert_eq!(c.map(|c| (c.status, c.reason)), Some(("False", "UnsupportedValue")));
}

/// A Gateway listener that holds port 80 as HTTPS (or 443 as HTTP) keeps
/// the shared socket: the Ingress listener of the other kind stays off it,
/// each Ingress is told why, and no rule redirects to an HTTPS port that
/// serves no Ingress.
#[test]
fn ingress_listeners_yield_to_gateway_listeners_holding_their_port_with_the_other_protocol() {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let params = rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    // A JSON string is a YAML string: the PEM's newlines stay escaped.
    let quoted = |s: String| serde_json::to_string(&s).unwrap_or_else(|e| panic!("{e}"));
    let common = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: v1
kind: Secret
metadata: {{name: a-tls, namespace: default}}
type: kubernetes.io/tls
stringData: {{tls.crt: {}, tls.key: {}}}
---
apiVersion: v1
kind: Service
metadata: {{name: blue, namespace: default}}
spec: {{ports: [{{name: http, port: 8080}}]}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: sluice}}
spec: {{controller: sluice.dev/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: default}}
spec:
  ingressClassName: sluice
  tls: [{{hosts: [a.example.com], secretName: a-tls}}]
  rules: [{{host: a.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: blue, port: {{number: 8080}}}}}}}}]}}}}]
"#,
        quoted(cert.pem()),
        quoted(key.serialize_pem())
    );
    let gateway = |listener: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners: [{listener}]\n"
        )
    };
    let run = |gw: String| {
        let mut objects = Objects::default();
        let mut report = Report::default();
        objects.add_yaml(&common, "common", &mut report);
        objects.add_yaml(&gw, "gateway", &mut report);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let t = translate(&objects, &Options::default());
        let table = RouteTable::compile(t.input.clone(), 1);
        (t, table)
    };
    let listener_names = |table: &RouteTable, port: u16| -> Vec<String> {
        table
            .bind(&BindKey { gateway: None, port })
            .map(|b| b.listeners().iter().map(|l| l.name.to_string()).collect())
            .unwrap_or_default()
    };
    let warning = |t: &Translation, port: u16| {
        t.report.diagnostics.iter().any(|d| {
            d.object == "Ingress default/web"
                && d.message.contains(&format!("on port {port}"))
                && d.message.contains("Gateway listener default/edge/")
        })
    };
    let get = |table: &RouteTable, port: u16| {
        let headers = HeaderMap::new();
        let req = RequestParts {
            authority: "a.example.com",
            path: "/",
            query: None,
            method: &Method::GET,
            headers: &headers,
        };
        table.bind(&BindKey { gateway: None, port }).and_then(|b| b.lookup(&req).ok()).map(|m| {
            let redirect = m.rule.filters.iter().any(|f| matches!(f, sluice_model::Filter::Redirect(_)));
            (redirect, m.rule.backends.backends().len())
        })
    };

    // Port 80 held as HTTPS by the Gateway: Ingress serves HTTPS on 443 only.
    let (t, table) = run(gateway("{name: tls80, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: a-tls}]}}"));
    assert_eq!(listener_names(&table, 80), ["default/edge/tls80"]);
    assert_eq!(listener_names(&table, 443), ["ingress/https"]);
    assert!(warning(&t, 80), "{:#?}", t.report.diagnostics);
    assert!(!warning(&t, 443), "{:#?}", t.report.diagnostics);
    assert_eq!(get(&table, 443), Some((false, 1)), "HTTPS forwards to the backend");

    // Port 443 held as plain HTTP: Ingress serves HTTP on 80, without the
    // ssl-redirect its `spec.tls` would ask for (nothing serves its HTTPS).
    let (t, table) = run(gateway("{name: plain443, port: 443, protocol: HTTP}"));
    assert_eq!(listener_names(&table, 443), ["default/edge/plain443"]);
    assert_eq!(listener_names(&table, 80), ["ingress/http"]);
    assert!(warning(&t, 443), "{:#?}", t.report.diagnostics);
    assert_eq!(get(&table, 80), Some((false, 1)), "plain HTTP forwards, no redirect");

    // No conflict: both Ingress listeners, HTTP redirects to HTTPS.
    let (t, table) = run(gateway("{name: other, port: 8080, protocol: HTTP}"));
    assert_eq!(listener_names(&table, 80), ["ingress/http"]);
    assert_eq!(listener_names(&table, 443), ["ingress/https"]);
    assert!(!warning(&t, 80) && !warning(&t, 443));
    assert_eq!(get(&table, 80), Some((true, 0)), "ssl-redirect");
}
