//! Graceful shutdown: SIGTERM lets an in-flight request finish with 200,
//! stops taking new work, and the process exits with status 0.

mod support;

use std::time::{Duration, Instant};

use support::{Echo, Req, Sluice, TempDir, curl, curl_retry, prefix_rule, require_curl, web_config};

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    if !require_curl("sigterm_drains_in_flight_requests_and_exits_zero") {
        return;
    }
    let dir = TempDir::new("shutdown");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let echo = Echo::start("blue", "default", &log_dir);
    std::fs::write(
        config_dir.join("sluice.yaml"),
        web_config(&prefix_rule("/", "blue"), &[("blue", echo.addr.port())]),
    )
    .expect("config");
    let mut sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let warm = curl_retry(addr, &Req::get("/warm"), Duration::from_secs(5));
    assert_eq!(warm.status, 200);

    // An in-flight request the backend holds for 1 s.
    let started = Instant::now();
    let in_flight = std::thread::spawn(move || {
        let r = curl(addr, &Req::get("/slow?delay=1s"));
        (r, started.elapsed())
    });
    // Give curl time to connect and the proxy time to forward it.
    std::thread::sleep(Duration::from_millis(400));
    assert!(!in_flight.is_finished(), "the delayed request finished before SIGTERM");
    let term_at = started.elapsed();
    sluice.terminate();

    // While draining, Sluice no longer reports ready (or the admin is gone).
    std::thread::sleep(Duration::from_millis(150));
    let ready = sluice.admin_get("/readyz").map(|(s, _)| s);
    assert_ne!(ready, Some(200), "/readyz still 200 while draining");

    let (resp, elapsed) = in_flight.join().expect("client thread");
    let resp = resp.unwrap_or_else(|e| {
        panic!("the in-flight request failed after SIGTERM (sent at {term_at:?}): {e}\nstderr:\n{}", sluice.stderr())
    });
    assert_eq!(resp.status, 200, "in-flight request: {}", resp.body_text());
    assert!(resp.pod().unwrap_or_default().starts_with("blue-"), "served by the backend: {:?}", resp.pod());
    assert_eq!(resp.echo_str("path"), Some("/slow?delay=1s"));
    assert!(
        elapsed >= Duration::from_millis(950),
        "the delayed response came back after {elapsed:?}, before the backend's 1s delay"
    );

    let status = sluice
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("sluice did not exit within 10s of SIGTERM\nstderr:\n{}", sluice.stderr()));
    assert!(
        status.success() && status.code() == Some(0),
        "exit status after SIGTERM: {status}\nstderr:\n{}",
        sluice.stderr()
    );
}
