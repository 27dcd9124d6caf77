//! Per-request work outside IO: header filters, weighted backend pick with
//! the proxy's RNG, endpoint round robin, recording request metrics. Inputs
//! are built outside `b.iter`.
//!
//! Run with `cargo bench -p sluice-proxy --bench hot_path`; compare runs with
//! `-- --save-baseline main` / `-- --baseline main`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_model::{BackendGroup, BackendId, BackendTarget, EndpointSet, HeaderModifier, WeightedBackend};
use sluice_proxy::rng;

/// Headers of a typical browser request.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-request-id", "5f1d3c1e-9d1b-4b6e-8f7a-2f0e6d9c4b21"),
        ("x-remove-me", "1"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn header_filters(c: &mut Criterion) {
    let modifier = HeaderModifier {
        set: vec![
            (HeaderName::from_static("x-env"), HeaderValue::from_static("prod")),
            (HeaderName::from_static("x-route"), HeaderValue::from_static("shop")),
        ],
        add: vec![(HeaderName::from_static("x-via"), HeaderValue::from_static("sluice"))],
        remove: vec![HeaderName::from_static("x-remove-me")],
    };
    let headers = request_headers();
    c.bench_function("header_modifier_apply", |b| {
        b.iter_batched_ref(|| headers.clone(), |h| modifier.apply(black_box(h)), BatchSize::SmallInput)
    });
}

fn weighted_pick(c: &mut Criterion) {
    let backend =
        |id, weight| WeightedBackend { target: BackendTarget::Service(BackendId(id)), weight, filters: Arc::new([]) };
    let group = BackendGroup::new(vec![backend(0, 70), backend(1, 20), backend(2, 10)]);
    c.bench_function("weighted_pick_3", |b| b.iter(|| black_box(group.pick(rng::next_u64()))));
    let many = BackendGroup::new((0..32).map(|i| backend(i, i + 1)).collect());
    c.bench_function("weighted_pick_32", |b| b.iter(|| black_box(many.pick(rng::next_u64()))));
}

fn endpoint_pick(c: &mut Criterion) {
    let addrs: Vec<SocketAddr> = (0..10u16).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect();
    let set = EndpointSet::new(addrs);
    c.bench_function("endpoint_pick_10", |b| b.iter(|| black_box(set.pick())));
}

fn metrics_record(c: &mut Criterion) {
    use sluice_proxy::metrics::{Metrics, RequestLabels};
    let registry = prometheus::Registry::new();
    let Ok(metrics) = Metrics::new(&registry) else { return };
    let labels = RequestLabels {
        status: http::StatusCode::OK,
        method: &http::Method::GET,
        route: "shop/storefront",
        rule: "0",
        backend: "shop/web-v2:8080",
    };
    let elapsed = std::time::Duration::from_micros(850);
    // One series, as under steady traffic: counter + histogram, thread-local.
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| metrics.record(black_box(&labels), elapsed, std::time::Instant::now()))
    });
}

criterion_group!(benches, header_filters, weighted_pick, endpoint_pick, metrics_record);
criterion_main!(benches);
