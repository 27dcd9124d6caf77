//! Conditions and diagnostics produced by translation.
//!
//! Conditions follow Gateway API status semantics (types, reasons,
//! `observedGeneration`); the Kubernetes source writes them as status,
//! `sluice check` prints them and `sluice run` logs them.

use std::fmt;

/// One status condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Programmed`, …
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason from the spec.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// `metadata.generation` of the object when the condition was computed.
    pub observed_generation: i64,
}

/// Where a set of conditions belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The object's own `status.conditions`.
    Object,
    /// A Gateway listener's status (`status.listeners[name]`).
    Listener {
        /// Listener name.
        name: String,
        /// `attachedRoutes`.
        attached_routes: u32,
        /// `supportedKinds`.
        supported_kinds: Vec<String>,
    },
    /// A route's `status.parents[]` entry for one parentRef.
    Parent {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// `sectionName`, if set.
        section: Option<String>,
        /// `port`, if set.
        port: Option<u16>,
    },
    /// A policy's `status.ancestors[]` entry for one Gateway (the
    /// conditions are the policy's own, repeated per ancestor).
    Ancestor {
        /// `namespace/name` of the Gateway.
        gateway: String,
    },
}

/// Conditions of one object (or of one listener or parentRef of it).
#[derive(Clone, Debug)]
pub struct ObjectStatus {
    /// Kind, e.g. `HTTPRoute`.
    pub kind: &'static str,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What the conditions describe.
    pub scope: Scope,
    /// The conditions.
    pub conditions: Vec<Condition>,
}

/// Severity of a diagnostic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Input the API server would reject, or that Sluice cannot use: the
    /// config is invalid (`sluice check` fails, `sluice run` keeps the last
    /// good table).
    Error,
    /// Valid input with a problem that status conditions also report (e.g.
    /// a missing backend Service).
    Warning,
}

/// A problem with the input, naming the object, the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Severity.
    pub severity: Severity,
    /// `Kind namespace/name`, or the file for unparseable documents.
    pub object: String,
    /// JSON path of the offending field (`spec.rules[0].matches[1].path`).
    pub field: String,
    /// Reason, lowercase.
    pub message: String,
}

/// Everything translation has to say.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Status conditions per object, listener and parentRef.
    pub statuses: Vec<ObjectStatus>,
    /// Diagnostics.
    pub diagnostics: Vec<Diagnostic>,
}

// === impl Condition ===

impl Condition {
    /// A condition with status `True`/`False` from a bool.
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
        generation: i64,
    ) -> Self {
        Self {
            type_,
            status: if ok { "True" } else { "False" },
            reason,
            message: message.into(),
            observed_generation: generation,
        }
    }
}

// === impl Report ===

impl Report {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Adds a diagnostic.
    pub fn push(
        &mut self,
        severity: Severity,
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            severity,
            object: object.into(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Finds the status of `kind namespace/name` in `scope`.
    pub fn status(&self, kind: &str, namespace: &str, name: &str, scope: &Scope) -> Option<&ObjectStatus> {
        self.statuses.iter().find(|s| s.kind == kind && s.namespace == namespace && s.name == name && &s.scope == scope)
    }

    /// Finds a condition of `kind namespace/name` in `scope`.
    pub fn condition(&self, kind: &str, namespace: &str, name: &str, scope: &Scope, type_: &str) -> Option<&Condition> {
        self.status(kind, namespace, name, scope)?.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.object)?;
        if !self.field.is_empty() {
            write!(f, " {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Display for ObjectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = if self.namespace.is_empty() { String::new() } else { format!("{}/", self.namespace) };
        write!(f, "{} {ns}{}", self.kind, self.name)?;
        match &self.scope {
            Scope::Object => {}
            Scope::Listener { name, attached_routes, .. } => {
                write!(f, " listener {name} (attachedRoutes {attached_routes})")?
            }
            Scope::Parent { gateway, section, port } => {
                write!(f, " parent {gateway}")?;
                if let Some(s) = section {
                    write!(f, " sectionName={s}")?;
                }
                if let Some(p) = port {
                    write!(f, " port={p}")?;
                }
            }
            Scope::Ancestor { gateway } => write!(f, " ancestor {gateway}")?,
        }
        for c in &self.conditions {
            write!(f, " {}={}({})", c.type_, c.status, c.reason)?;
        }
        Ok(())
    }
}
