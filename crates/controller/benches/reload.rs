//! Where a one-route change goes at 5,000 HTTPRoutes (loadtests scenario 6):
//! the change file is rewritten (temp file + rename), then each step of a
//! reload is timed on its own: `FileSource::load`, the change check, translate,
//! compile, endpoints, and dropping the previous objects and table; then the
//! same through the incremental path (`Incremental::prepare` + `commit`).
//!
//! `cargo bench -p sluice-controller --bench reload` (plain timings, not
//! criterion: the steps only make sense in sequence). Prints the min, median
//! and max wall time of each step over `SLUICE_RELOAD_CHANGES` changes
//! (default 50); on a busy machine the min is the figure to compare.

#![allow(missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_controller::source::file::{FileSource, Loaded};
use sluice_controller::{Objects, Options, endpoints, translate};
use sluice_model::RouteTable;

const BASE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: default}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {name: http, protocol: HTTP, port: 80}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: blue, namespace: default}\nspec: {ports: [{name: http, port: 8080}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: blue-local\n  namespace: default\n  labels: {kubernetes.io/service-name: blue}\naddressType: IPv4\nports: [{name: http, port: 18001}]\nendpoints: [{addresses: [\"127.0.0.1\"]}]\n";

/// The same shape as loadtests/render.py's `sluice_route`.
fn route(name: &str, host: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{{name: web}}]\n  hostnames: [{host}]\n  rules:\n  - backendRefs: [{{name: blue, port: 8080, weight: 1}}]\n"
    )
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
}

#[derive(Default)]
struct Steps(Vec<(&'static str, Vec<Duration>)>);

impl Steps {
    fn add(&mut self, name: &'static str, d: Duration) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => self.0.push((name, vec![d])),
        }
    }

    fn print(&mut self) {
        println!("{:<30} {:>10} {:>10} {:>10}", "step", "min_us", "median_us", "max_us");
        for (name, v) in &mut self.0 {
            v.sort();
            let min = v.first().copied().unwrap_or_default();
            let median = v.get(v.len() / 2).copied().unwrap_or_default();
            let max = v.last().copied().unwrap_or_default();
            println!("{name:<30} {:>10} {:>10} {:>10}", min.as_micros(), median.as_micros(), max.as_micros());
        }
    }
}

fn main() {
    let routes: usize = std::env::var("SLUICE_RELOAD_ROUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let changes: usize = std::env::var("SLUICE_RELOAD_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("sluice-reload-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut big = String::new();
    for i in 0..routes {
        let _ = write!(big, "{}", route(&format!("route-{i}"), &format!("app-{i}.example.com")));
    }
    std::fs::write(dir.join("00-base.yaml"), BASE).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("10-routes.yaml"), big).unwrap_or_else(|e| panic!("{e}"));
    write_atomic(&dir.join("20-change.yaml"), &route("change-0", "new-0.example.com"));

    let options = Options::default();
    let mut source = FileSource::new(&dir);
    let (objects, report) = source.load();
    assert!(!report.has_errors(), "{:?}", report.diagnostics.first());
    let t = translate(&objects, &options);
    let mut table = RouteTable::compile(t.input, 1);
    let mut prev: Objects = objects;
    let mut steps = Steps::default();
    for i in 1..=changes {
        write_atomic(&dir.join("20-change.yaml"), &route("change-0", &format!("new-{i}.example.com")));
        let start = Instant::now();
        let (objects, report) = source.load();
        steps.add("FileSource::load", start.elapsed());
        assert!(!report.has_errors());
        let t0 = Instant::now();
        black_box(objects.same_except_endpoints(&prev));
        steps.add("same_except_endpoints", t0.elapsed());
        let t0 = Instant::now();
        let t = translate(&objects, &options);
        steps.add("translate", t0.elapsed());
        let t0 = Instant::now();
        let next = RouteTable::compile(t.input, i as u64 + 1);
        steps.add("RouteTable::compile", t0.elapsed());
        let t0 = Instant::now();
        let eps = endpoints::build(next.services(), &objects);
        steps.add("endpoints::build", t0.elapsed());
        black_box(eps);
        let t0 = Instant::now();
        drop(std::mem::replace(&mut table, next));
        steps.add("drop previous table", t0.elapsed());
        let t0 = Instant::now();
        drop(std::mem::replace(&mut prev, objects));
        steps.add("drop previous objects", t0.elapsed());
        steps.add("total", start.elapsed());
    }
    steps.print();

    // The same changes through the incremental path (what `sluice run`
    // does for an HTTPRoute-only change).
    let mut steps = Steps::default();
    let mut inc = sluice_controller::Incremental::default();
    let t = translate(&prev, &options);
    let limits = !t.rate_limits.is_empty();
    let mut table = RouteTable::compile(t.input, 1);
    inc.reset(&table, &t.report, &prev, limits);
    for i in 1..=changes {
        write_atomic(&dir.join("20-change.yaml"), &route("change-0", &format!("inc-{i}.example.com")));
        let start = Instant::now();
        let (objects, report) = source.load();
        steps.add("FileSource::load", start.elapsed());
        assert!(!report.has_errors());
        let t0 = Instant::now();
        black_box(objects.same_except_endpoints(&prev));
        steps.add("same_except_endpoints", t0.elapsed());
        let t0 = Instant::now();
        let p = inc.prepare(&prev, &objects, &options).unwrap_or_else(|| panic!("change {i} not incremental"));
        steps.add("Incremental::prepare", t0.elapsed());
        let t0 = Instant::now();
        let next = inc.commit(p, &table, i as u64 + 1);
        steps.add("Incremental::commit", t0.elapsed());
        let t0 = Instant::now();
        let mut r = report.clone();
        r.statuses.extend(inc.report().statuses.iter().cloned());
        r.diagnostics.extend(inc.report().diagnostics.iter().cloned());
        black_box(r);
        steps.add("report clone", t0.elapsed());
        let t0 = Instant::now();
        drop(std::mem::replace(&mut table, next));
        steps.add("drop previous table", t0.elapsed());
        let t0 = Instant::now();
        drop(std::mem::replace(&mut prev, objects));
        steps.add("drop previous objects", t0.elapsed());
        steps.add("total", start.elapsed());
    }
    println!("\nincremental (objects compared):");
    steps.print();

    // The file mode path for changes confined to HTTPRoute-only files
    // (`sluice run`'s `Controller::apply_routes`): only the changed file is
    // read into objects, nothing else is copied or compared.
    let mut steps = Steps::default();
    let _ = source.load();
    for i in 1..=changes {
        write_atomic(&dir.join("20-change.yaml"), &route("change-0", &format!("delta-{i}.example.com")));
        let start = Instant::now();
        let loaded = source.load_changes();
        steps.add("FileSource::load_changes", start.elapsed());
        let Loaded::Routes { removed, added } = loaded else { panic!("change {i}: not a routes change") };
        let t0 = Instant::now();
        let leaving: Vec<usize> = prev
            .http_routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                removed
                    .iter()
                    .any(|(ns, n)| Some(n) == r.metadata.name.as_ref() && Some(ns) == r.metadata.namespace.as_ref())
            })
            .map(|(i, _)| i)
            .collect();
        let old: Vec<_> = leaving.iter().filter_map(|&i| prev.http_routes.get(i)).map(|r| &**r).collect();
        let new: Vec<_> = added.iter().map(|r| &**r).collect();
        steps.add("find old versions", t0.elapsed());
        let t0 = Instant::now();
        let p =
            inc.prepare_changes(&prev, &old, &new, &options).unwrap_or_else(|| panic!("change {i}: not incremental"));
        steps.add("Incremental::prepare_changes", t0.elapsed());
        let t0 = Instant::now();
        let next = inc.commit(p, &table, (changes + i) as u64 + 1);
        steps.add("Incremental::commit", t0.elapsed());
        let t0 = Instant::now();
        let r = inc.report().clone();
        steps.add("report clone", t0.elapsed());
        let t0 = Instant::now();
        for i in leaving.into_iter().rev() {
            prev.http_routes.swap_remove(i);
        }
        prev.http_routes.extend(added);
        drop(std::mem::replace(&mut table, next));
        steps.add("patch objects, drop table", t0.elapsed());
        black_box(r);
        steps.add("total", start.elapsed());
    }
    println!("\nroutes-only files (sluice run's file mode path):");
    steps.print();
    let _ = std::fs::remove_dir_all(&dir);
}
