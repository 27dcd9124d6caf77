//! Config sources. Standalone mode reads manifests from files.

pub mod file;
