//! `Bind::lookup` cost by table size: 1, 100 and 10,000 routes.
//!
//! Each route has its own hostname and three rules (Exact, PathPrefix, and a
//! PathPrefix with a header match); requests hit the middle of the table.

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use sluice_model::{
    BackendGroup, BackendId, BackendTarget, BindKey, Conditions, HeaderMatch, HostPattern, ListenerInput, MatchInput,
    PathMatch, Precedence, Protocol, RequestParts, RouteInput, RouteRef, RouteTable, Rule, RuleInput, TableInput,
    ValueMatch, WeightedBackend,
};

fn table(routes: usize) -> RouteTable {
    let mut input = TableInput {
        listeners: vec![ListenerInput {
            bind: BindKey { gateway: None, port: 80 },
            name: "bench/gw/http".into(),
            hostname: HostPattern::Any,
            port: 80,
            protocol: Protocol::Http,
            precedence: Precedence::GatewayApi,
            order: 0,
        }],
        ..TableInput::default()
    };
    for i in 0..routes {
        let route = Arc::new(RouteRef::new("HTTPRoute", "bench".into(), format!("r{i}")));
        let rule = |index: usize| {
            Arc::new(Rule {
                route: route.clone(),
                index,
                filters: Arc::new([]),
                backends: BackendGroup::new(vec![WeightedBackend {
                    target: BackendTarget::Service(BackendId(index as u32)),
                    weight: 1,
                    filters: Arc::new([]),
                }]),
                request_timeout: None,
                backend_timeout: None,
            })
        };
        let plain = |path: PathMatch| MatchInput { path, conditions: Conditions::default() };
        let with_header = MatchInput {
            path: PathMatch::prefix("/api/v2"),
            conditions: Conditions {
                headers: vec![HeaderMatch {
                    name: HeaderName::from_static("x-canary"),
                    value: ValueMatch::Exact("1".into()),
                }],
                ..Conditions::default()
            },
        };
        input.routes.push(RouteInput {
            listener: 0,
            route: route.clone(),
            created: 0,
            hostnames: vec![HostPattern::gateway(Some(&format!("svc-{i}.example.com")))],
            rules: vec![
                RuleInput { rule: rule(0), matches: vec![plain(PathMatch::Exact("/healthz".into()))] },
                RuleInput { rule: rule(1), matches: vec![with_header] },
                RuleInput { rule: rule(2), matches: vec![plain(PathMatch::prefix("/api"))] },
            ],
            fallback: false,
        });
    }
    RouteTable::compile(input, 1)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for routes in [1usize, 100, 10_000] {
        let t = table(routes);
        let key = BindKey { gateway: None, port: 80 };
        let host = format!("svc-{}.example.com", routes / 2);
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("bench"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let method = Method::GET;
        group.bench_with_input(BenchmarkId::new("prefix_after_failed_header", routes), &routes, |b, _| {
            b.iter(|| {
                let bind = t.bind(&key);
                let req = RequestParts {
                    authority: &host,
                    path: "/api/v2/users/42",
                    query: Some("page=2"),
                    method: &method,
                    headers: &headers,
                };
                black_box(bind.and_then(|b| b.lookup(black_box(&req)).ok()).map(|m| m.rule.index))
            })
        });
        group.bench_with_input(BenchmarkId::new("miss_404", routes), &routes, |b, _| {
            b.iter(|| {
                let bind = t.bind(&key);
                let req = RequestParts {
                    authority: "nope.example.org",
                    path: "/",
                    query: None,
                    method: &method,
                    headers: &headers,
                };
                black_box(bind.and_then(|b| b.lookup(black_box(&req)).ok()).is_none())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
