//! Sluice's control half: turns Kubernetes objects (from files today, from
//! the API server later) into the routing model, with Gateway API and
//! Ingress semantics, and reports per-object conditions.
//!
//! Start at [`translate::translate`]: [`objects::Objects`] in,
//! [`translate::Translation`] (a [`sluice_model::TableInput`], a
//! [`report::Report`], and what endpoints need) out. [`endpoints`] builds the
//! endpoint sets on their own so EndpointSlice churn never recompiles
//! routes. [`source`] reads manifests from files.

pub mod endpoints;
pub mod objects;
pub mod ratelimit;
pub mod report;
pub mod source;
pub mod translate;

pub use objects::Objects;
pub use report::{Condition, Diagnostic, ObjectStatus, Report, Severity};
pub use translate::{Incremental, Options, Prepared, Translation, translate};

/// Sluice's default GatewayClass `spec.controllerName`.
pub const GATEWAY_CONTROLLER: &str = "sluice.dev/gateway-controller";
/// Sluice's default IngressClass `spec.controller`.
pub const INGRESS_CONTROLLER: &str = "sluice.dev/ingress-controller";
