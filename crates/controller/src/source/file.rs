//! Standalone source: Kubernetes manifests read from a file or a directory
//! of multi-document YAML, watched for changes.
//!
//! The directory is watched rather than the files, because Kubernetes
//! updates ConfigMap and Secret mounts by swapping a `..data` symlink.

use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::objects::Objects;
use crate::report::{Report, Severity};

/// Reads every manifest under `path` (a file, or a directory searched
/// recursively for `*.yaml`, `*.yml` and `*.json`, skipping dot-entries),
/// in path order.
pub fn load(path: &Path) -> (Objects, Report) {
    let mut objects = Objects::default();
    let mut report = Report::default();
    let files = match manifest_files(path) {
        Ok(f) => f,
        Err(e) => {
            report.push(Severity::Error, path.display().to_string(), "", format!("cannot read: {e}"));
            return (objects, report);
        }
    };
    if files.is_empty() {
        report.push(Severity::Error, path.display().to_string(), "", "no manifest files (*.yaml, *.yml, *.json) found");
    }
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => objects.add_yaml(&text, &f.display().to_string(), &mut report),
            Err(e) => report.push(Severity::Error, f.display().to_string(), "", format!("cannot read: {e}")),
        }
    }
    (objects, report)
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

/// Watches `path` and calls `on_change` after any change under it. Keep the
/// returned watcher alive for as long as changes matter.
pub fn watch(path: &Path, on_change: impl Fn() + Send + 'static) -> notify::Result<RecommendedWatcher> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            on_change();
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    Ok(watcher)
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
    fn missing_path_is_an_error() {
        let (_, report) = load(Path::new("/nonexistent/sluice"));
        assert!(report.has_errors());
    }
}
