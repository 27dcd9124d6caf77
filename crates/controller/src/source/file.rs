//! Standalone source: Kubernetes manifests read from a file or a directory
//! of multi-document YAML, watched for changes.
//!
//! The directory is watched rather than the files, because Kubernetes
//! updates ConfigMap and Secret mounts by swapping a `..data` symlink.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

pub use gateway_api::httproutes::HttpRoute;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::objects::Objects;
use crate::report::{Report, Severity};

/// Reads every manifest under `path` (a file, or a directory searched
/// recursively for `*.yaml`, `*.yml` and `*.json`, skipping dot-entries),
/// in path order.
pub fn load(path: &Path) -> (Objects, Report) {
    FileSource::new(path).load()
}

/// A config path read repeatedly: files whose content has not changed since
/// the previous [`FileSource::load`] are not parsed again (parsing dominates
/// a reload; a one-file change in a directory of thousands re-parses one).
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    cache: HashMap<PathBuf, Parsed>,
}

#[derive(Debug)]
struct Parsed {
    hash: u64,
    objects: Objects,
    report: Report,
}

/// What [`FileSource::load_changes`] found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per reload, moved once
pub enum Loaded {
    /// No file changed.
    Unchanged,
    /// Only HTTPRoutes changed, in files holding nothing else.
    Routes {
        /// `(namespace, name)` of the routes in the previous version of the
        /// changed files (each left or changed).
        removed: Vec<(String, String)>,
        /// The routes in the new version of the changed files.
        added: Vec<std::sync::Arc<HttpRoute>>,
    },
    /// The whole config (as [`FileSource::load`]).
    Config(Objects, Report),
}

impl FileSource {
    /// A source for `path` with an empty cache.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), cache: HashMap::new() }
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What changed since the previous [`FileSource::load`] or
    /// [`FileSource::load_changes`]: when every file that changed (was
    /// written, created or removed) held only HTTPRoutes before and after
    /// and parses cleanly, just those routes ([`Loaded::Routes`]), without
    /// copying the rest of the config; otherwise the whole config, as
    /// [`FileSource::load`] returns it.
    pub fn load_changes(&mut self) -> Loaded {
        let Ok(files) = manifest_files(&self.path) else { return self.full() };
        let mut next: HashMap<PathBuf, Parsed> = HashMap::with_capacity(files.len());
        let mut old: Vec<Parsed> = Vec::new();
        let mut fresh: Vec<PathBuf> = Vec::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { return self.full() };
            let hash = hash(&text);
            let parsed = match self.cache.remove(&f) {
                Some(p) if p.hash == hash => p,
                previous => {
                    old.extend(previous);
                    fresh.push(f.clone());
                    parse(&f, &text, hash)
                }
            };
            next.insert(f, parsed);
        }
        // Files that disappeared.
        old.extend(std::mem::take(&mut self.cache).into_values());
        let new: Vec<&Parsed> = fresh.iter().filter_map(|f| next.get(f)).collect();
        let routes_only =
            |p: &Parsed| p.objects.len() == p.objects.http_routes.len() && p.report.diagnostics.is_empty();
        let loaded = if old.is_empty() && new.is_empty() {
            Some(Loaded::Unchanged)
        } else if old.iter().all(routes_only)
            && new.iter().all(|p| routes_only(p))
            // An empty config is refused by `load`.
            && next.values().any(|p| !p.objects.is_empty())
        {
            Some(Loaded::Routes {
                removed: old.iter().flat_map(|p| &p.objects.http_routes).map(|r| key(r)).collect(),
                added: new.iter().flat_map(|p| p.objects.http_routes.iter().cloned()).collect(),
            })
        } else {
            None
        };
        self.cache = next;
        loaded.unwrap_or_else(|| self.full())
    }

    fn full(&mut self) -> Loaded {
        let (objects, report) = self.load();
        Loaded::Config(objects, report)
    }

    /// Reads the config; see [`load`].
    pub fn load(&mut self) -> (Objects, Report) {
        let path = self.path.clone();
        let mut objects = Objects::default();
        let mut report = Report::default();
        let files = match manifest_files(&path) {
            Ok(f) => f,
            Err(e) => {
                report.push(Severity::Error, path.display().to_string(), "", format!("cannot read: {e}"));
                return (objects, report);
            }
        };
        if files.is_empty() {
            report.push(
                Severity::Error,
                path.display().to_string(),
                "",
                "no manifest files (*.yaml, *.yml, *.json) found",
            );
        }
        let read_any = !files.is_empty();
        let mut seen = HashMap::with_capacity(files.len());
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(text) => text,
                Err(e) => {
                    report.push(Severity::Error, f.display().to_string(), "", format!("cannot read: {e}"));
                    continue;
                }
            };
            let hash = hash(&text);
            let parsed = match self.cache.remove(&f) {
                Some(p) if p.hash == hash => p,
                _ => parse(&f, &text, hash),
            };
            objects.extend_from(&parsed.objects);
            report.diagnostics.extend(parsed.report.diagnostics.iter().cloned());
            seen.insert(f, parsed);
        }
        // Files that disappeared drop out of the cache.
        self.cache = seen;
        // An empty config is almost always a file caught mid-write or a wrong
        // path; serving nothing is never what was meant.
        if read_any && objects.is_empty() && !report.has_errors() {
            report.push(
                Severity::Error,
                path.display().to_string(),
                "",
                "no Kubernetes objects Sluice uses were found; refusing an empty configuration",
            );
        }
        (objects, report)
    }
}

fn hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn parse(f: &Path, text: &str, hash: u64) -> Parsed {
    let mut objects = Objects::default();
    let mut report = Report::default();
    objects.add_yaml(text, &f.display().to_string(), &mut report);
    Parsed { hash, objects, report }
}

fn key(r: &HttpRoute) -> (String, String) {
    (crate::objects::namespace(&r.metadata).to_string(), crate::objects::name(&r.metadata).to_string())
}

fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let m = std::fs::metadata(&p)?;
            if m.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the watcher saw, so the reload loop can wait for writers to finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileEvent {
    /// A file is being written in place (truncate, write): do not read it
    /// until it is closed, or it may be seen empty or cut short.
    Writing(PathBuf),
    /// A writer closed the file.
    Closed(PathBuf),
    /// Anything else: creation, rename (atomic replace), removal, symlink
    /// swaps.
    Changed,
}

/// Watches `path` and reports changes under it. Keep the returned watcher
/// alive for as long as changes matter.
pub fn watch(path: &Path, on_event: impl Fn(FileEvent) + Send + 'static) -> notify::Result<RecommendedWatcher> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if !ev.paths.is_empty() && ev.paths.iter().all(|p| irrelevant(p)) {
            return;
        }
        match ev.kind {
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                ev.paths.into_iter().for_each(|p| on_event(FileEvent::Writing(p)))
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                ev.paths.into_iter().for_each(|p| on_event(FileEvent::Closed(p)))
            }
            EventKind::Access(_) => {}
            _ => on_event(FileEvent::Changed),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Paths whose changes cannot affect the config: editor swap files and
/// temp files written before an atomic rename. Kubernetes' `..data`
/// symlink swaps (names starting with `..`) always count.
fn irrelevant(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    if name.starts_with("..") {
        return false;
    }
    !matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        && !p.is_dir()
        && p.extension().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_directory_in_order_and_skips_dot_entries() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("sluice-file-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub"))?;
        std::fs::create_dir_all(dir.join("..data"))?;
        let svc = |n: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec: {{ports: [{{port: 80}}]}}\n")
        };
        std::fs::write(dir.join("a.yaml"), svc("a"))?;
        std::fs::write(dir.join("sub/b.yml"), svc("b"))?;
        std::fs::write(dir.join("..data/c.yaml"), svc("c"))?;
        std::fs::write(dir.join("notes.txt"), "ignored")?;
        let (objects, report) = load(&dir);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let names: Vec<_> = objects.services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, vec!["a", "b"]);
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn an_empty_file_is_an_error() -> std::io::Result<()> {
        let f = std::env::temp_dir().join(format!("sluice-empty-{}.yaml", std::process::id()));
        std::fs::write(&f, "")?;
        let (_, report) = load(&f);
        assert!(report.has_errors());
        std::fs::remove_file(&f)
    }

    #[test]
    fn in_place_writes_report_writing_then_closed() -> Result<(), Box<dyn std::error::Error>> {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("sluice-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = watch(&dir, move |e| {
            let _ = tx.send(e);
        })?;
        let file = dir.join("a.yaml");
        let mut f = std::fs::File::create(&file)?;
        f.write_all(b"kind: x")?;
        drop(f);
        let mut seen = Vec::new();
        while let Ok(e) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
            let closed = e == FileEvent::Closed(file.clone());
            seen.push(e);
            if closed {
                break;
            }
        }
        let writing = seen.iter().position(|e| *e == FileEvent::Writing(file.clone()));
        let closed = seen.iter().position(|e| *e == FileEvent::Closed(file.clone()));
        assert!(matches!((writing, closed), (Some(w), Some(c)) if w < c), "{seen:?}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn unchanged_files_are_not_parsed_again_and_changes_are_seen() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("sluice-file-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let svc = |n: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec: {{ports: [{{port: 80}}]}}\n")
        };
        std::fs::write(dir.join("a.yaml"), svc("a"))?;
        std::fs::write(dir.join("b.yaml"), svc("b"))?;
        let mut source = FileSource::new(&dir);
        let (first, _) = source.load();
        assert_eq!(first.services.len(), 2);
        let cached_b = source.cache.get(&dir.join("b.yaml")).map(|p| p.hash);
        std::fs::write(dir.join("a.yaml"), svc("a2"))?;
        std::fs::remove_file(dir.join("b.yaml"))?;
        std::fs::write(dir.join("c.yaml"), svc("c"))?;
        let (second, report) = source.load();
        assert!(!report.has_errors());
        let names: Vec<_> = second.services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, vec!["a2", "c"], "changed file re-read, removed file gone, new file added");
        assert!(cached_b.is_some() && !source.cache.contains_key(&dir.join("b.yaml")));
        // A file that breaks is reported; fixing it restores the objects.
        std::fs::write(dir.join("c.yaml"), "kind: [")?;
        assert!(source.load().1.has_errors());
        std::fs::write(dir.join("c.yaml"), svc("c"))?;
        let (third, report) = source.load();
        assert!(!report.has_errors() && third.services.len() == 2);
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn route_only_file_changes_come_as_routes() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("sluice-file-changes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let route = |n: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {n}, namespace: ns}}\nspec: {{}}\n"
            )
        };
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n";
        std::fs::write(dir.join("a.yaml"), svc)?;
        std::fs::write(dir.join("b.yaml"), route("r1"))?;
        let mut source = FileSource::new(&dir);
        assert!(!source.load().1.has_errors());
        assert!(matches!(source.load_changes(), Loaded::Unchanged));
        // A routes-only file changes: the old route leaves, the new comes.
        std::fs::write(dir.join("b.yaml"), format!("{}---\n{}", route("r2"), route("r3")))?;
        match source.load_changes() {
            Loaded::Routes { removed, added } => {
                assert_eq!(removed, vec![("ns".to_string(), "r1".to_string())]);
                let names: Vec<_> = added.iter().filter_map(|r| r.metadata.name.clone()).collect();
                assert_eq!(names, vec!["r2", "r3"]);
            }
            other => panic!("expected routes, got {other:?}"),
        }
        // A file with another kind in it, or a file that no longer parses:
        // the whole config.
        std::fs::write(dir.join("b.yaml"), format!("{}---\n{svc}", route("r2")))?;
        assert!(matches!(source.load_changes(), Loaded::Config(o, _) if o.services.len() == 2));
        std::fs::write(dir.join("b.yaml"), "kind: [")?;
        assert!(matches!(source.load_changes(), Loaded::Config(_, r) if r.has_errors()));
        // A removed routes-only file: its routes leave.
        std::fs::write(dir.join("b.yaml"), route("r4"))?;
        assert!(matches!(source.load_changes(), Loaded::Config(..)), "the previous version did not parse");
        std::fs::remove_file(dir.join("b.yaml"))?;
        assert!(
            matches!(source.load_changes(), Loaded::Routes { removed, added } if removed.len() == 1 && added.is_empty())
        );
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn missing_path_is_an_error() {
        let (_, report) = load(Path::new("/nonexistent/sluice"));
        assert!(report.has_errors());
    }
}
