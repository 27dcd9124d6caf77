//! Incremental vs full: for real manifests (every conformance test's
//! manifests over the conformance base) and for each of their HTTPRoutes,
//! removing, adding and changing the route incrementally must give the same
//! compiled table (compared as [`RouteTable::canonical`] text, backends by
//! Service name) and the same report (conditions, attachedRoutes,
//! diagnostics) as a full translation and compile of the new objects.

use std::path::PathBuf;

use super::*;
use crate::translate::translate;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/conformance")
}

fn objects_of(texts: &[(&str, String)]) -> Option<Objects> {
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n";
    let mut objects = Objects::default();
    let mut report = Report::default();
    objects.add_yaml(class, "class", &mut report);
    for (name, text) in texts {
        objects.add_yaml(&text.replace("{GATEWAY_CLASS_NAME}", "sluice"), name, &mut report);
    }
    (!report.has_errors()).then_some(objects)
}

/// Sorted text of a report, so that entry order does not count.
fn report_text(r: &Report) -> Vec<String> {
    let mut v: Vec<String> = r.statuses.iter().map(|s| format!("{s:?}")).collect();
    v.extend(r.diagnostics.iter().map(|d| format!("{d:?}")));
    v.sort();
    v
}

/// Asserts equal sequences, showing the first difference.
fn same<T: PartialEq + std::fmt::Debug>(a: impl Iterator<Item = T>, b: impl Iterator<Item = T>, what: &str) {
    let (a, b): (Vec<T>, Vec<T>) = (a.collect(), b.collect());
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!("{what}: first difference at line {i}:\n  {:?}\n  {:?}", a.get(i), b.get(i));
    }
}

fn full(objects: &Objects, options: &Options, generation: u64) -> (RouteTable, Report, bool) {
    let t = translate(objects, options);
    let limits = !t.rate_limits.is_empty();
    (RouteTable::compile(t.input, generation), t.report, limits)
}

/// Applies `steps` (object sets) one after another incrementally, starting
/// from a full translation of `start`, and checks each step against a full
/// translation. Returns how many steps went the incremental way.
fn check(what: &str, options: &Options, start: &Objects, steps: &[Objects]) -> usize {
    let (mut table, report, limits) = full(start, options, 1);
    let mut inc = Incremental::default();
    inc.reset(&table, &report, start, limits);
    let mut old = start;
    let mut incremental = 0;
    for (i, new) in steps.iter().enumerate() {
        let generation = i as u64 + 2;
        let (reference, reference_report, limits) = full(new, options, generation);
        match inc.prepare(old, new, options) {
            Some(p) => {
                incremental += 1;
                let has_errors = p.has_errors();
                table = inc.commit(p, &table, generation);
                assert_eq!(has_errors, reference_report.has_errors(), "{what}, step {i}: errors");
                let (a, b) = (table.canonical(), reference.canonical());
                same(a.lines(), b.lines(), &format!("{what}, step {i}: table (incremental vs full)"));
                let (a, b) = (report_text(inc.report()), report_text(&reference_report));
                same(a.iter(), b.iter(), &format!("{what}, step {i}: report (incremental vs full)"));
            }
            None => {
                inc.reset(&reference, &reference_report, new, limits);
                table = reference;
            }
        }
        old = new;
    }
    incremental
}

/// Variants of `objects` for route `i`: without it, and with it changed in
/// several ways (hostnames, a path, a backend, a rule dropped).
fn variants(objects: &Objects, i: usize) -> Vec<(&'static str, Objects)> {
    let mut out = Vec::new();
    let mut without = objects.clone();
    without.http_routes.remove(i);
    out.push(("removed", without));
    let mut hosts = objects.clone();
    let r = std::sync::Arc::make_mut(&mut hosts.http_routes[i]);
    r.spec.hostnames.get_or_insert_with(Vec::new).push("incremental.example.com".into());
    out.push(("hostname added", hosts));
    let mut no_hosts = objects.clone();
    std::sync::Arc::make_mut(&mut no_hosts.http_routes[i]).spec.hostnames = None;
    out.push(("hostnames cleared", no_hosts));
    let mut path = objects.clone();
    if let Some(rule) = std::sync::Arc::make_mut(&mut path.http_routes[i]).spec.rules.iter_mut().flatten().next() {
        let m = gateway_api::httproutes::HttpRouteRulesMatches {
            path: Some(gateway_api::httproutes::HttpRouteRulesMatchesPath {
                r#type: Some(gateway_api::httproutes::HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some("/incremental".into()),
            }),
            ..Default::default()
        };
        rule.matches.get_or_insert_with(Vec::new).insert(0, m);
        out.push(("path match added", path));
    }
    let mut backend = objects.clone();
    if let Some(b) = std::sync::Arc::make_mut(&mut backend.http_routes[i])
        .spec
        .rules
        .iter_mut()
        .flatten()
        .flat_map(|r| r.backend_refs.iter_mut().flatten())
        .next()
    {
        b.name = format!("{}-other", b.name);
        out.push(("backend renamed", backend));
    }
    let mut fewer = objects.clone();
    if let Some(rules) = std::sync::Arc::make_mut(&mut fewer.http_routes[i]).spec.rules.as_mut().filter(|r| r.len() > 1)
    {
        rules.remove(0);
        out.push(("rule dropped", fewer));
    }
    out
}

#[test]
fn incremental_updates_match_full_compiles_on_conformance_manifests() {
    let dir = conformance_dir();
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let base = read(dir.join("base/manifests.yaml"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut manifests = 0;
    for (fi, f) in files.iter().enumerate() {
        let Some(objects) = objects_of(&[("base", base.clone()), ("test", read(f.clone()))]) else { continue };
        if objects.http_routes.is_empty() {
            continue;
        }
        manifests += 1;
        // Both socket layouts (shared port, one socket per Gateway).
        let options = Options { isolate_gateways: fi % 2 == 0, ..Options::default() };
        for i in 0..objects.http_routes.len() {
            for (change, changed) in variants(&objects, i) {
                let what = format!("{} route {i} {change}", f.display());
                // There and back: the change, then the original again.
                checked += check(&what, &options, &objects, &[changed.clone(), objects.clone()]);
                // The reverse (e.g. a route appearing).
                checked += check(&what, &options, &changed, std::slice::from_ref(&objects));
            }
        }
    }
    assert!(manifests > 50, "only {manifests} conformance manifests with HTTPRoutes");
    assert!(checked > 500, "only {checked} incremental updates checked");
}

#[test]
fn routes_sharing_a_host_keep_their_precedence() {
    let route = |name: &str, created: &str, path: &str, svc: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [shared.example.com, '*.example.com']\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {svc}, port: 80}}]\n"
        )
    };
    let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: sluice\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: default}\nspec: {ports: [{port: 80}]}\n";
    let mut texts = vec![("base", base.to_string())];
    for i in 0..20 {
        texts.push(("r", route(&format!("r{i}"), "2024-01-01T00:00:00Z", "/", if i % 2 == 0 { "a" } else { "b" })));
    }
    let start = objects_of(&texts).unwrap_or_else(|| panic!("invalid manifests"));
    // An older route on the shared host takes over `/`; then a new Service
    // (appended BackendId); then it goes away again.
    let mut older = texts.clone();
    older.push(("r", route("late", "2020-01-01T00:00:00Z", "/", "c")));
    let older = objects_of(&older).unwrap_or_else(|| panic!("invalid manifests"));
    let mut svc = older.clone();
    svc.services.push(svc.services[0].clone());
    let mut with_c = texts.clone();
    with_c[0].1.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: default}\nspec: {ports: [{port: 80}]}\n",
    );
    let with_c_start = objects_of(&with_c).unwrap_or_else(|| panic!("invalid manifests"));
    with_c.push(("r", route("late", "2020-01-01T00:00:00Z", "/api", "c")));
    let with_c_late = objects_of(&with_c).unwrap_or_else(|| panic!("invalid manifests"));
    let options = Options::default();
    assert_eq!(check("older route", &options, &start, &[older.clone(), start.clone(), older.clone()]), 3);
    assert_eq!(check("new service", &options, &with_c_start, &[with_c_late.clone(), with_c_start.clone()]), 2);
    // Another kind changed: the full way.
    assert_eq!(check("service change", &options, &older, &[svc]), 0);
}
