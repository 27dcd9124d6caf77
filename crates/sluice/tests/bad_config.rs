//! Invalid configuration: a bad change to a watched config is logged with
//! object, field and reason and the last good table keeps serving; a good
//! change afterwards is applied. `sluice check` and `sluice run` start-up
//! reject invalid files with exit code 78.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    Echo, Req, Sluice, TempDir, curl, curl_retry, prefix_rule, require_curl, sluice_check, web_config, write_atomic,
};

const EX_CONFIG: i32 = 78;

/// The config with the route's path type replaced by an invalid enum value.
fn bad_path_type(services: &[(&str, u16)]) -> String {
    let rules = prefix_rule("/app", "blue").replace("type: PathPrefix", "type: Bogus");
    web_config(&rules, services)
}

/// Valid YAML and types, but a path that does not start with '/'.
fn relative_path(services: &[(&str, u16)]) -> String {
    web_config(&prefix_rule("app", "blue"), services)
}

const INVALID_YAML: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: [unclosed\nmetadata: {name: x\n";

fn pod_at(addr: std::net::SocketAddr, path: &str) -> String {
    let r = curl(addr, &Req::get(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.body_text());
    r.pod().unwrap_or_default().to_string()
}

fn count_ignored(sluice: &Sluice) -> usize {
    sluice.stderr().lines().filter(|l| l.contains("Invalid config change ignored")).count()
}

/// Writes `text`, waits until Sluice has rejected it, and returns the log
/// lines written meanwhile.
fn write_and_expect_rejection(sluice: &Sluice, file: &Path, text: &str) -> Vec<String> {
    let before_lines = sluice.stderr().lines().count();
    let before = count_ignored(sluice);
    write_atomic(file, text);
    let rejected = support::wait_until(Duration::from_secs(10), || (count_ignored(sluice) > before).then_some(()));
    assert!(rejected.is_some(), "no `Invalid config change ignored` within 10s; stderr:\n{}", sluice.stderr());
    // Let any further events of the same write settle.
    std::thread::sleep(Duration::from_millis(300));
    sluice.stderr().lines().skip(before_lines).map(str::to_string).collect()
}

#[test]
fn invalid_change_keeps_the_last_good_table_and_a_good_one_applies() {
    if !require_curl("invalid_change_keeps_the_last_good_table_and_a_good_one_applies") {
        return;
    }
    let dir = TempDir::new("badconfig");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    let blue = Echo::start("blue", "default", &log_dir);
    let green = Echo::start("green", "default", &log_dir);
    let services = [("blue", blue.addr.port()), ("green", green.addr.port())];
    let file = config_dir.join("sluice.yaml");
    std::fs::write(&file, web_config(&prefix_rule("/app", "blue"), &services)).expect("writing config");
    let sluice = Sluice::start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]);
    let addr = sluice.addr_of("*", 80);
    let first = curl_retry(addr, &Req::get("/app/x"), Duration::from_secs(5));
    assert!(first.pod().unwrap_or_default().starts_with("blue-"), "initial config serves blue: {:?}", first.pod());
    let (generation, table) = sluice.config_dump();

    // 1. Not YAML at all.
    let logged = write_and_expect_rejection(&sluice, &file, INVALID_YAML);
    let file_name = file.display().to_string();
    assert!(
        logged.iter().any(|l| l.contains(&file_name) && l.contains("invalid yaml")),
        "the log names the file and says the YAML is invalid; got:\n{}",
        logged.join("\n")
    );
    assert_eq!(sluice.config_dump(), (generation, table.clone()), "an invalid change must not change the table");
    assert!(pod_at(addr, "/app/after-invalid-yaml").starts_with("blue-"), "the last good table keeps serving");

    // 2. Valid YAML, invalid HTTPRoute field (enum value).
    let logged = write_and_expect_rejection(&sluice, &file, &bad_path_type(&services));
    assert!(
        logged.iter().any(|l| {
            l.contains("HTTPRoute default/app")
                && l.contains("spec.rules[0].matches[0].path.type")
                && l.contains("Bogus")
        }),
        "the log names the object (HTTPRoute default/app), the field (spec.rules[0].matches[0].path.type) and the reason; got:\n{}",
        logged.join("\n")
    );
    assert_eq!(sluice.config_dump(), (generation, table.clone()), "an invalid change must not change the table");
    assert!(pod_at(addr, "/app/after-bad-path-type").starts_with("blue-"), "the last good table keeps serving");

    // 3. Valid types, invalid value (a path must start with '/').
    let logged = write_and_expect_rejection(&sluice, &file, &relative_path(&services));
    assert!(
        logged.iter().any(|l| l.contains("HTTPRoute default/app") && l.contains("spec.rules[0].matches[0].path.value")),
        "the log names the object and field of the relative path; got:\n{}",
        logged.join("\n")
    );
    assert_eq!(sluice.config_dump(), (generation, table.clone()), "an invalid change must not change the table");
    assert!(pod_at(addr, "/app/after-relative-path").starts_with("blue-"), "the last good table keeps serving");

    // 4. A good change is applied.
    write_atomic(&file, &web_config(&prefix_rule("/app", "green"), &services));
    let applied = support::wait_until(Duration::from_secs(10), || {
        let (g, body) = sluice.config_dump();
        (g > generation && body.contains("default/green:8080")).then_some(g)
    });
    assert!(
        applied.is_some(),
        "the good config was not applied; /config:\n{}\nstderr:\n{}",
        sluice.config_dump().1,
        sluice.stderr()
    );
    for i in 0..5 {
        assert!(pod_at(addr, &format!("/app/after-fix/{i}")).starts_with("green-"), "the new table serves green");
    }
    assert_eq!(sluice.addr_of("*", 80), addr, "the listener socket is kept across reloads");
}

#[test]
fn invalid_config_at_startup_exits_78() {
    let dir = TempDir::new("badstart");
    let config_dir = dir.subdir("config");
    let log_dir = dir.subdir("logs");
    std::fs::write(config_dir.join("sluice.yaml"), bad_path_type(&[("blue", 9)])).expect("writing config");
    let failure = match Sluice::try_start(&config_dir, &log_dir, &["--bind", "80=127.0.0.1:0"]) {
        Ok(_) => panic!("sluice run started with an invalid config"),
        Err(f) => f,
    };
    assert_eq!(failure.status.code(), Some(EX_CONFIG), "exit status; stderr:\n{}", failure.stderr);
    assert!(
        failure.stderr.contains("HTTPRoute default/app")
            && failure.stderr.contains("spec.rules[0].matches[0].path.type"),
        "stderr names the object and field:\n{}",
        failure.stderr
    );
}

#[test]
fn sluice_check_accepts_the_quickstart_and_rejects_broken_files() {
    let quickstart = support::repo_dir().join("config/quickstart.yaml");
    let (code, out) = sluice_check(&quickstart);
    assert_eq!(code, 0, "sluice check config/quickstart.yaml:\n{out}");
    assert!(out.contains("is ok"), "{out}");
    assert!(
        out.contains("default/blue:8080 weight=90") && out.contains("default/green:8080 weight=10"),
        "compiled routes are printed:\n{out}"
    );

    let dir = TempDir::new("check");
    let cases: [(&str, String, &[&str]); 3] = [
        (
            "bad-path-type.yaml",
            bad_path_type(&[("blue", 9001)]),
            &["HTTPRoute default/app", "spec.rules[0].matches[0].path.type", "Bogus"],
        ),
        (
            "relative-path.yaml",
            relative_path(&[("blue", 9001)]),
            &["HTTPRoute default/app", "spec.rules[0].matches[0].path.value", "'/'"],
        ),
        ("not-yaml.yaml", INVALID_YAML.to_string(), &["not-yaml.yaml", "invalid yaml"]),
    ];
    for (name, text, wants) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("writing broken config");
        let (code, out) = sluice_check(&path);
        assert_eq!(code, EX_CONFIG, "sluice check {name} must exit 78:\n{out}");
        let error_line = out
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no `error:` line for {name}:\n{out}"));
        for w in wants {
            assert!(error_line.contains(w), "{name}: the error line names {w:?}: {error_line}\n{out}");
        }
    }
}
