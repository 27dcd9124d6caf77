//! EndpointSlice-only changes take the fast path: the new endpoints serve
//! without recompiling routes (the route table's generation stays).

mod support;

use std::time::Duration;

use support::{Echo, Req, Sluice, TempDir, curl_retry, prefix_rule, require_curl, web_config, write_atomic};

#[test]
fn endpoint_slice_change_swaps_endpoints_without_recompiling_routes() {
    if !require_curl("endpoint_slice_change_swaps_endpoints_without_recompiling_routes") {
        return;
    }
    let dir = TempDir::new("endpoints");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    // Two pods stand behind Service `app`; first its slice names the first.
    let first = Echo::start("app-one", "default", &log_dir);
    let second = Echo::start("app-two", "default", &log_dir);
    let file = config_dir.join("sluice.yaml");
    let config = |port: u16| web_config(&prefix_rule("/", "app"), &[("app", port)]);
    std::fs::write(&file, config(first.addr.port())).expect("writing config");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let r = curl_retry(addr, &Req::get("/x"), Duration::from_secs(5));
    assert!(r.pod().unwrap_or_default().starts_with("app-one-"), "{:?}", r.pod());
    let (generation, _) = sluice.config_dump();

    // Only the EndpointSlice's port changes: a pod rollout.
    write_atomic(&file, &config(second.addr.port()));
    let moved = support::wait_until(Duration::from_secs(10), || {
        let r = curl_retry(addr, &Req::get("/x"), Duration::from_secs(2));
        r.pod().is_some_and(|p| p.starts_with("app-two-")).then_some(())
    });
    assert!(moved.is_some(), "traffic never moved to the new endpoint; stderr:\n{}", sluice.stderr());
    assert_eq!(sluice.config_dump().0, generation, "an endpoint-only change must not recompile the route table");
    assert!(sluice.stderr().contains("Endpoints updated"), "fast path not taken; stderr:\n{}", sluice.stderr());
    for _ in 0..20 {
        let r = curl_retry(addr, &Req::get("/x"), Duration::from_secs(2));
        assert!(r.pod().unwrap_or_default().starts_with("app-two-"), "{:?}", r.pod());
    }

    // A route change still recompiles.
    write_atomic(&file, &web_config(&prefix_rule("/only", "app"), &[("app", second.addr.port())]));
    let recompiled =
        support::wait_until(Duration::from_secs(10), || (sluice.config_dump().0 > generation).then_some(()));
    assert!(recompiled.is_some(), "a route change must recompile; stderr:\n{}", sluice.stderr());
}
