//! Hot swap under load: a quickstart-like config (one Gateway, an HTTPRoute
//! over `blue`/`green`/`decoy`, each with its own `sluice echo`) is rewritten
//! 200 times while 8 keep-alive clients send requests continuously. No
//! request may fail, `decoy` (weight 0) may never answer, and the final
//! config must be the one serving.

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Echo, Sluice, TempDir, fast, write_atomic};

const WRITES: u32 = 200;
const CLIENTS: usize = 8;

/// The config for write `n`: weights rotate blue-only, green-only, 50/50 (by
/// `n % 3`: 1 → blue, 2 → green, 0 → 50/50); an extra route `/extra-n` → blue
/// exists on even `n`; `decoy` is always a weight-0 backend.
fn config(n: u32, ports: &HashMap<&str, u16>) -> String {
    let (blue, green) = match n % 3 {
        1 => (100, 0),
        2 => (0, 100),
        _ => (50, 50),
    };
    let mut y = String::new();
    y.push_str(
        r#"# hot-swap test config
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: sluice
spec:
  controllerName: sluice.dev/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: default
spec:
  gatewayClassName: sluice
  listeners:
  - name: http
    protocol: HTTP
    port: 80
---
"#,
    );
    let _ = write!(
        y,
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
  namespace: default
  annotations:
    write: "{n}"
spec:
  parentRefs:
  - name: web
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /app
    backendRefs:
    - name: blue
      port: 8080
      weight: {blue}
    - name: green
      port: 8080
      weight: {green}
    - name: decoy
      port: 8080
      weight: 0
---
"#
    );
    if n.is_multiple_of(2) {
        let _ = write!(
            y,
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: extra
  namespace: default
spec:
  parentRefs:
  - name: web
  rules:
  - matches:
    - path:
        type: Exact
        value: /extra-{n}
    backendRefs:
    - name: blue
      port: 8080
---
"#
        );
    }
    for svc in ["blue", "green", "decoy"] {
        y.push_str(&support::local_service(svc, ports[svc]));
        y.push_str("---\n");
    }
    y
}

#[derive(Default)]
struct Tally {
    requests: usize,
    pods: HashMap<String, usize>,
    failures: Vec<String>,
}

async fn client_loop(client: fast::Client, addr: SocketAddr, stop: Arc<AtomicBool>, id: usize) -> Tally {
    let mut t = Tally::default();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let path = format!("/app/c{id}/{i}");
        t.requests += 1;
        match client.get(addr, Some("www.example.com"), &path, &[]).await {
            Ok(r) if r.status == 200 => {
                let pod = r.pod().unwrap_or_else(|| "<no echo body>".into());
                let svc = ["blue", "green", "decoy"].into_iter().find(|s| pod.starts_with(s)).unwrap_or("other");
                if svc == "other" {
                    t.failures.push(format!("client {id} {path}: answered by unexpected pod {pod:?}"));
                }
                *t.pods.entry(svc.to_string()).or_default() += 1;
            }
            Ok(r) => t.failures.push(format!(
                "client {id} {path}: status {} body {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => t.failures.push(format!("client {id} {path}: {e}")),
        }
    }
    t
}

fn echo_ports(echoes: &[Echo]) -> HashMap<&'static str, u16> {
    let mut m = HashMap::new();
    for e in echoes {
        let name = ["blue", "green", "decoy"].into_iter().find(|n| *n == e.deployment).expect("known echo");
        m.insert(name, e.addr.port());
    }
    m
}

fn wait_for_config(sluice: &Sluice, timeout: Duration, pred: impl Fn(&str) -> bool) -> (u64, String) {
    support::wait_until(timeout, || {
        let (g, body) = sluice.config_dump();
        pred(&body).then_some((g, body))
    })
    .unwrap_or_else(|| {
        panic!(
            "admin /config never showed the expected table; last:\n{}\nstderr:\n{}",
            sluice.config_dump().1,
            sluice.stderr()
        )
    })
}

/// Every write is a temp file + rename (what Kubernetes and careful tools do).
#[test]
fn hot_swap_under_load_with_atomic_renames_drops_nothing() {
    hot_swap_under_load(None);
}

/// Every fifth write is a plain in-place write (truncate + write, what many
/// editors and `echo > file` do); the others are renames.
#[test]
fn hot_swap_under_load_with_in_place_writes_drops_nothing() {
    hot_swap_under_load(Some(5));
}

fn hot_swap_under_load(in_place_every: Option<u32>) {
    let dir = TempDir::new("hotswap");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let pending: Vec<_> = ["blue", "green", "decoy"].iter().map(|s| Echo::spawn(s, "default", &log_dir)).collect();
    let echoes: Vec<Echo> = pending.into_iter().map(|p| p.wait()).collect();
    let ports = echo_ports(&echoes);
    let file = config_dir.join("sluice.yaml");
    std::fs::write(&file, config(1, &ports)).expect("initial config");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let (first_generation, _) = sluice.config_dump();

    let rt = support::runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let (tallies, writes_done) = rt.block_on({
        let stop = stop.clone();
        let ports = ports.clone();
        let file = file.clone();
        async move {
            let client = fast::Client::new();
            // Warm up: the listener answers before the load starts.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match client.get(addr, Some("www.example.com"), "/app/warmup", &[]).await {
                    Ok(r) if r.status == 200 => break,
                    other if Instant::now() > deadline => {
                        panic!("warm-up request failed: {:?}", other.map(|r| r.status))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let tasks: Vec<_> =
                (0..CLIENTS).map(|id| tokio::spawn(client_loop(client.clone(), addr, stop.clone(), id))).collect();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut writes = 0;
            for n in 2..=WRITES + 1 {
                let text = config(n, &ports);
                if in_place_every.is_some_and(|k| n.is_multiple_of(k)) {
                    // A plain in-place write (truncate + write), as an editor might.
                    std::fs::write(&file, &text).expect("in-place write");
                } else {
                    write_atomic(&file, &text);
                }
                writes += 1;
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
            // Keep the load on while the last write settles.
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::Relaxed);
            let mut tallies = Vec::new();
            for t in tasks {
                tallies.push(t.await.expect("client task"));
            }
            (tallies, writes)
        }
    });
    assert_eq!(writes_done, WRITES);
    let last = WRITES + 1; // the last write of the loop
    let requests: usize = tallies.iter().map(|t| t.requests).sum();
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    let mut pods: HashMap<String, usize> = HashMap::new();
    for t in &tallies {
        for (k, v) in &t.pods {
            *pods.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!("hot swap: {requests} requests during {WRITES} writes, by backend {pods:?}");
    assert!(
        requests >= 2 * WRITES as usize,
        "too few requests under load ({requests}); the test did not exercise the swaps"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during hot swaps (in-place writes: {in_place_every:?}), e.g.:\n  {}\nsluice log lines about sockets and empty tables:\n  {}",
        failures.len(),
        failures.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        sluice
            .stderr()
            .lines()
            .filter(|l| l.contains("listening") || l.contains("candidates=0"))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert_eq!(pods.get("decoy"), None, "weight-0 backend `decoy` answered: {pods:?}");
    assert!(
        pods.get("blue").copied().unwrap_or(0) > 0 && pods.get("green").copied().unwrap_or(0) > 0,
        "both blue and green must have served: {pods:?}"
    );

    // Settle on a final single-backend config (green only, extra route
    // `/extra-{final}`) and check the table it produced.
    let final_n = (last + 1..).find(|n| n % 3 == 2 && n.is_multiple_of(2)).expect("a final write number");
    write_atomic(&file, &config(final_n, &ports));
    let (final_generation, table) = wait_for_config(&sluice, Duration::from_secs(10), |body| {
        body.contains(&format!("Exact /extra-{final_n} "))
            && body.contains("default/green:8080 weight=100")
            && body.contains("default/blue:8080 weight=0")
    });
    assert!(
        final_generation > first_generation,
        "generation did not advance: {first_generation} -> {final_generation}\n{table}"
    );
    // The generation stays put once the final config is in.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sluice.config_dump().0, final_generation, "generation kept changing after the final write");

    let rt2 = support::runtime();
    rt2.block_on(async {
        let client = fast::Client::new();
        let mut seen = HashMap::new();
        for i in 0..100 {
            let r = client
                .get(addr, Some("www.example.com"), &format!("/app/final/{i}"), &[])
                .await
                .expect("final request");
            assert_eq!(r.status, 200, "final request {i}");
            *seen.entry(r.pod().unwrap_or_default().split('-').next().unwrap_or_default().to_string()).or_insert(0) +=
                1;
        }
        assert_eq!(seen.get("green"), Some(&100), "after the final write every request must reach green: {seen:?}");
        let extra =
            client.get(addr, Some("www.example.com"), &format!("/extra-{final_n}"), &[]).await.expect("extra route");
        assert_eq!(extra.status, 200, "/extra-{final_n} of the final config");
        assert!(
            extra.pod().unwrap_or_default().starts_with("blue"),
            "/extra-{final_n} goes to blue, got {:?}",
            extra.pod()
        );
        for removed in [last - 1, 2] {
            let r = client
                .get(addr, Some("www.example.com"), &format!("/extra-{removed}"), &[])
                .await
                .expect("removed route");
            assert_eq!(r.status, 404, "/extra-{removed} was removed by later writes");
        }
    });
    drop(rt);
    drop(rt2);
    drop(sluice);
    drop(echoes);
}

/// What a reader sees in the middle of a truncating in-place write: an empty
/// file. It must not replace the running table (the directory form already
/// rejects "no manifest files"); before this is fixed, Sluice applies an empty
/// table, closes its listener, and rebinds elsewhere on the next good write.
#[test]
fn emptied_config_file_is_rejected_and_the_listener_keeps_serving() {
    let dir = TempDir::new("emptied");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let pending: Vec<_> = ["blue", "green", "decoy"].iter().map(|s| Echo::spawn(s, "default", &log_dir)).collect();
    let echoes: Vec<Echo> = pending.into_iter().map(|p| p.wait()).collect();
    let ports = echo_ports(&echoes);
    let file = config_dir.join("sluice.yaml");
    std::fs::write(&file, config(1, &ports)).expect("initial config");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let (generation, table) = sluice.config_dump();
    let rt = support::runtime();
    rt.block_on(async {
        let client = fast::Client::new();
        let r = client.get(addr, Some("www.example.com"), "/app/before", &[]).await.expect("request before");
        assert_eq!(r.status, 200);

        let seen_lines = sluice.stderr().lines().count();
        std::fs::write(&file, "").expect("truncating the config in place");
        // Wait until Sluice has reacted (a new generation or a rejection).
        let reacted = support::wait_until(Duration::from_secs(5), || {
            let fresh: Vec<String> = sluice.stderr().lines().skip(seen_lines).map(str::to_string).collect();
            fresh
                .iter()
                .any(|l| l.contains("Invalid config change ignored") || l.contains("Route table applied"))
                .then_some(fresh)
        });
        let fresh =
            reacted.unwrap_or_else(|| panic!("Sluice did not react to the emptied file; stderr:\n{}", sluice.stderr()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (g, body) = sluice.config_dump();
        let r = client.get(addr, Some("www.example.com"), "/app/after", &[]).await;
        assert!(
            g == generation && body == table && r.as_ref().is_ok_and(|r| r.status == 200),
            "an emptied config file replaced the running table: generation {generation} -> {g}, request after: {:?}\n\
             /config now:\n{body}\nlog after the truncation:\n  {}",
            r.map(|r| r.status),
            fresh.join("\n  ")
        );
    });
}
