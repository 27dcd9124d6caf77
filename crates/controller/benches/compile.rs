//! Full control-path cost at 5,000 HTTPRoutes: translate (Gateway API
//! semantics, backend resolution) and compile (radix trees, candidate lists).

#![allow(missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_controller::{Objects, Options, Report, translate};
use sluice_model::RouteTable;

fn yaml(routes: usize) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: bench}\nspec:\n  gatewayClassName: sluice\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n",
    );
    for i in 0..routes {
        // Every route has its own Services, as apps do.
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: canary-{i}, namespace: bench}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n"
        );
        let _ = write!(
            y,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: bench}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [svc-{i}.example.com]\n  rules:\n  - matches: [{{path: {{type: Exact, value: /healthz}}}}]\n    backendRefs: [{{name: svc-{i}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: '1'}}]}}]\n    backendRefs: [{{name: svc-{i}, port: 8080, weight: 90}}, {{name: canary-{i}, port: 8080, weight: 10}}]\n"
        );
    }
    y
}

fn objects(routes: usize) -> Objects {
    let y = yaml(routes);
    let mut o = Objects::default();
    let mut r = Report::default();
    o.add_yaml(&y, "bench", &mut r);
    assert!(!r.has_errors(), "{:?}", r.diagnostics.first());
    o
}

fn compile(c: &mut Criterion) {
    let o = objects(5_000);
    let options = Options::default();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("translate_and_compile_5000_httproutes", |b| {
        b.iter(|| {
            let t = translate(black_box(&o), &options);
            black_box(RouteTable::compile(t.input, 1).candidate_count())
        })
    });
    let text = yaml(5_000);
    group.bench_function("parse_yaml_5000_httproutes", |b| {
        b.iter(|| {
            let mut o = Objects::default();
            let mut r = Report::default();
            o.add_yaml(black_box(&text), "bench", &mut r);
            black_box(o.len())
        })
    });
    let t = translate(&o, &options);
    group.bench_function("compile_only_5000_httproutes", |b| {
        b.iter(|| black_box(RouteTable::compile(t.input.clone(), 1).candidate_count()))
    });
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
