//! backendRef resolution: kind, ReferenceGrant, Service and port.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use sluice_model::{BackendTarget, Filter, ServiceRef, WeightedBackend};

use super::Services;
use crate::endpoints::service_port;
use crate::objects::{Objects, namespace};

/// Why a backendRef is invalid: a `ResolvedRefs=False` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unresolved {
    pub reason: &'static str,
    pub message: String,
}

/// A backendRef as the translators see it.
pub(super) struct Ref<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Who makes the reference, for ReferenceGrant checks.
pub(super) struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// Resolves a backendRef to a weighted backend; an unresolved one becomes an
/// `Invalid` share (500) and is returned as the error alongside.
pub(super) fn resolve(
    r: &Ref<'_>,
    from: &From<'_>,
    weight: u32,
    filters: Arc<[Filter]>,
    objects: &Objects,
    services: &mut Services<'_>,
) -> (WeightedBackend, Option<Unresolved>) {
    match service_ref(r, from, objects, services) {
        Ok(svc) => (WeightedBackend { target: BackendTarget::Service(services.intern(svc)), weight, filters }, None),
        Err(e) => (WeightedBackend { target: BackendTarget::Invalid, weight, filters }, Some(e)),
    }
}

fn service_ref(
    r: &Ref<'_>,
    from: &From<'_>,
    objects: &Objects,
    services: &Services<'_>,
) -> Result<ServiceRef, Unresolved> {
    let group = r.group.unwrap_or_default();
    let kind = r.kind.unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err(Unresolved {
            reason: "InvalidKind",
            message: format!("backendRef {}: kind {group}/{kind} is not supported (only core Service)", r.name),
        });
    }
    let ns = r.namespace.unwrap_or(from.namespace);
    if ns != from.namespace && !granted(objects, from, ns, "", "Service", r.name) {
        return Err(Unresolved {
            reason: "RefNotPermitted",
            message: format!(
                "backendRef {ns}/{}: no ReferenceGrant in {ns} allows {} from {}",
                r.name, from.kind, from.namespace
            ),
        });
    }
    let Some(service) = services.index.service(ns, r.name) else {
        return Err(Unresolved { reason: "BackendNotFound", message: format!("Service {ns}/{} not found", r.name) });
    };
    let Some(port) = r.port.and_then(|p| u16::try_from(p).ok()) else {
        return Err(Unresolved {
            reason: "BackendNotFound",
            message: format!("backendRef {ns}/{}: port is required for a Service", r.name),
        });
    };
    check_service(service, port, ns, r.name)?;
    check_tls(services, service, port, ns, r.name)?;
    Ok(ServiceRef { namespace: ns.to_string(), name: r.name.to_string(), port })
}

/// Checks that a Service is usable and has `port`.
pub(super) fn check_service(service: &Service, port: u16, ns: &str, svc: &str) -> Result<(), Unresolved> {
    if service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(Unresolved {
            reason: "InvalidKind",
            message: format!("Service {ns}/{svc} is an ExternalName Service, which Sluice does not support"),
        });
    }
    if service_port(service, port).is_none() {
        return Err(Unresolved {
            reason: "BackendNotFound",
            message: format!("Service {ns}/{svc} has no port {port}"),
        });
    }
    Ok(())
}

/// Checks that a BackendTLSPolicy on the Service port, if any, can be met.
pub(super) fn check_tls(
    services: &Services<'_>,
    service: &Service,
    port: u16,
    ns: &str,
    svc: &str,
) -> Result<(), Unresolved> {
    match services.tls.lookup(ns, svc, Some(service), port) {
        Some(super::backendtls::Resolved::Invalid { policy, message }) => Err(Unresolved {
            reason: "InvalidBackendTLSPolicy",
            message: format!("Service {ns}/{svc} port {port}: BackendTLSPolicy {policy} cannot be met: {message}"),
        }),
        _ => Ok(()),
    }
}

/// Whether a ReferenceGrant in `to_ns` lets `from` refer to `to_group/to_kind`
/// named `to_name`.
pub(super) fn granted(
    objects: &Objects,
    from: &From<'_>,
    to_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_name: &str,
) -> bool {
    objects.reference_grants.iter().filter(|g| namespace(&g.metadata) == to_ns).any(|g| {
        let from_ok =
            g.spec.from.iter().any(|f| f.group == from.group && f.kind == from.kind && f.namespace == from.namespace);
        let to_ok = g.spec.to.iter().any(|t| {
            let group_ok = t.group == to_group || (to_group.is_empty() && t.group == "core");
            group_ok && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name)
        });
        from_ok && to_ok
    })
}
