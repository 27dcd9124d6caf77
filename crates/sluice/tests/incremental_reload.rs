//! Incremental reloads through the binary: a config directory whose
//! HTTPRoutes live in their own files is changed route by route (new host,
//! a host shared with older routes, a route moving between files, an invalid
//! route, a file that also holds a Service). After every step the running
//! Sluice serves the change, and at the end its compiled table (`/config`)
//! and conditions (`/diagnostics`) equal those of a second Sluice started
//! from scratch on the same directory (a full compile).

mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use support::{Echo, Req, Sluice, TempDir, curl, local_service, require_curl, wait_until, write_atomic};

const WAIT: Duration = Duration::from_secs(10);

fn route(name: &str, created: &str, host: &str, path: &str, svc: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [{host}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: '{path}'}}}}]\n    backendRefs: [{{name: {svc}, port: 8080}}]\n"
    )
}

fn base(blue: u16, green: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: sluice}}\nspec: {{controllerName: sluice.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: default}}\nspec:\n  gatewayClassName: sluice\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n---\n{}---\n{}",
        local_service("blue", blue),
        local_service("green", green)
    )
}

/// The pod (deployment prefix) answering `host` `path`, if any.
fn pod(addr: std::net::SocketAddr, host: &str, path: &str) -> Option<String> {
    curl(addr, &Req::get(path).host(host)).ok().filter(|r| r.status == 200).and_then(|r| r.pod().map(str::to_string))
}

fn serves(s: &Sluice, host: &str, path: &str, deployment: &str) {
    let addr = s.addr_of("*", 80);
    let got = wait_until(WAIT, || pod(addr, host, path).filter(|p| p.starts_with(deployment)));
    assert!(got.is_some(), "{host}{path} never answered from {deployment}; stderr:\n{}", s.stderr());
}

/// `/config` without its generation line.
fn table(s: &Sluice) -> String {
    s.config_dump().1.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// `/diagnostics` conditions and diagnostics, sorted (entry order may differ).
fn conditions(s: &Sluice) -> Vec<String> {
    let (_, body) = s.admin_get("/diagnostics").unwrap_or_else(|| panic!("admin /diagnostics"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut out: Vec<String> = ["conditions", "diagnostics"]
        .iter()
        .flat_map(|k| v[*k].as_array().cloned().unwrap_or_default())
        .map(|x| x.to_string())
        .collect();
    out.sort();
    out
}

fn write(dir: &Path, file: &str, text: &str) {
    write_atomic(&dir.join(file), text);
}

#[test]
fn route_file_changes_apply_incrementally_and_match_a_full_compile() {
    if !require_curl("route_file_changes_apply_incrementally_and_match_a_full_compile") {
        return;
    }
    let dir = TempDir::new("incremental");
    let config = dir.subdir("config");
    let logs = dir.subdir("logs");
    let blue = Echo::start("blue", "default", &logs);
    let green = Echo::start("green", "default", &logs);
    write(&config, "00-base.yaml", &base(blue.addr.port(), green.addr.port()));
    let mut routes = String::new();
    for i in 0..200 {
        let _ = write!(
            routes,
            "{}",
            route(&format!("app-{i}"), "2024-01-01T00:00:00Z", &format!("app-{i}.example.com"), "/", "blue")
        );
    }
    routes.push_str(&route("shared", "2024-01-01T00:00:00Z", "shared.example.com", "/", "blue"));
    write(&config, "10-routes.yaml", &routes);
    write(&config, "20-change.yaml", &route("change", "2024-01-01T00:00:00Z", "new-0.example.com", "/", "green"));
    let s = Sluice::start(&config, &logs, &["--bind", "80=127.0.0.1:0"]);
    serves(&s, "new-0.example.com", "/", "green");
    serves(&s, "shared.example.com", "/", "blue");

    // 1. The changing route moves to a new host.
    write(&config, "20-change.yaml", &route("change", "2024-01-01T00:00:00Z", "new-1.example.com", "/", "green"));
    serves(&s, "new-1.example.com", "/", "green");
    assert!(pod(s.addr_of("*", 80), "new-0.example.com", "/").is_none(), "the old host still answers");

    // 2. It joins the shared host, older than the route there: it wins `/`.
    write(&config, "20-change.yaml", &route("change", "2020-01-01T00:00:00Z", "shared.example.com", "/", "green"));
    serves(&s, "shared.example.com", "/x", "green");

    // 3. It moves to another file (removed from one, added in another).
    write(&config, "30-moved.yaml", &route("moved", "2024-01-01T00:00:00Z", "shared.example.com", "/m", "blue"));
    std::fs::remove_file(config.join("20-change.yaml")).unwrap_or_else(|e| panic!("{e}"));
    serves(&s, "shared.example.com", "/x", "blue");
    serves(&s, "shared.example.com", "/m/1", "blue");

    // 4. An invalid route is rejected; the last good table keeps serving;
    //    fixing it applies.
    let (generation, _) = s.config_dump();
    write(&config, "30-moved.yaml", &route("moved", "2024-01-01T00:00:00Z", "shared.example.com", "no-slash", "green"));
    let rejected = s.wait_for_stderr(WAIT, |e| e.contains("Invalid config change ignored"));
    assert!(rejected.is_some(), "the invalid route was not rejected:\n{}", s.stderr());
    assert_eq!(s.config_dump().0, generation, "an invalid change replaced the table");
    serves(&s, "shared.example.com", "/m/1", "blue");
    write(&config, "30-moved.yaml", &route("moved", "2024-01-01T00:00:00Z", "shared.example.com", "/m", "green"));
    serves(&s, "shared.example.com", "/m/1", "green");

    // 5. A routes file that also holds another kind (the full way).
    let mut mixed = route("mixed", "2024-01-01T00:00:00Z", "mixed.example.com", "/", "extra");
    mixed.push_str("---\n");
    mixed.push_str(&local_service("extra", green.addr.port()));
    write(&config, "40-mixed.yaml", &mixed);
    serves(&s, "mixed.example.com", "/", "green");

    // 6. Routes only again, on top of the full reload.
    write(&config, "30-moved.yaml", &route("moved", "2024-01-01T00:00:00Z", "other.example.com", "/", "blue"));
    serves(&s, "other.example.com", "/", "blue");

    // Steps 1, 2, 3, the fix in 4 (after a rejected change, the whole config
    // is read again) and 6 went the incremental way.
    let incremental =
        s.stderr().lines().filter(|l| l.contains("Route table applied") && l.contains("incremental=true")).count();
    assert!(incremental >= 4, "only {incremental} incremental applies:\n{}", s.stderr());

    // The same directory compiled from scratch gives the same table and
    // the same conditions.
    let fresh = Sluice::start(&config, &logs, &["--bind", "80=127.0.0.1:0"]);
    assert_eq!(table(&s), table(&fresh), "incrementally updated table differs from a full compile");
    assert_eq!(conditions(&s), conditions(&fresh), "incrementally updated conditions differ from a full translation");
}
