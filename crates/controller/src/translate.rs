//! Kubernetes objects → [`TableInput`] + [`Report`].
//!
//! One function, [`translate`], used by every source. Gateway API semantics
//! live in `translate/gateway.rs`, Ingress in `translate/ingress.rs`,
//! backendRef resolution (ReferenceGrant, Service ports) in
//! `translate/backend.rs`.

mod backend;
mod backendtls;
mod gateway;
mod incremental;
mod ingress;
mod tls;

pub use incremental::{Incremental, Prepared};
pub use tls::parse_pem;

use std::collections::BTreeMap;

use sluice_model::{BackendId, ServiceRef, TableInput, UpstreamTlsInput};

use crate::objects::Objects;
use crate::report::Report;

/// Service port `appProtocol` that makes Sluice speak HTTP/2 with prior
/// knowledge (h2c) to the backend.
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// Translation settings (static config).
#[derive(Clone, Debug)]
pub struct Options {
    /// GatewayClass `controllerName` Sluice reconciles.
    pub gateway_controller: String,
    /// IngressClass `spec.controller` Sluice reconciles.
    pub ingress_controller: String,
    /// Give every Gateway its own sockets (`BindKey.gateway = Some`). When
    /// false, all Gateway listeners and Ingresses on a port share one
    /// socket, as they share one LoadBalancer Service in a cluster.
    pub isolate_gateways: bool,
}

/// The result of translation.
#[derive(Debug, Default)]
pub struct Translation {
    /// Input for [`sluice_model::RouteTable::compile`].
    pub input: TableInput,
    /// Conditions and diagnostics.
    pub report: Report,
    /// Rate limits attached to rules (the proxy binds their state).
    pub rate_limits: Vec<crate::ratelimit::AttachedLimit>,
}

/// Interns Service ports into [`BackendId`]s, and finds Services.
#[derive(Debug, Default)]
struct Services<'a> {
    ids: BTreeMap<ServiceRef, BackendId>,
    list: Vec<ServiceRef>,
    index: crate::endpoints::Index<'a>,
    /// Service ports with `appProtocol: kubernetes.io/h2c`.
    h2c: Vec<BackendId>,
    /// BackendTLSPolicies by target.
    tls: backendtls::Policies,
    /// Service ports spoken to over TLS.
    upstream_tls: Vec<UpstreamTlsInput>,
    /// Incremental translation: the current table's ids (`list` then holds
    /// only the services appended after them).
    base: Option<&'a BTreeMap<ServiceRef, BackendId>>,
}

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway_controller: crate::GATEWAY_CONTROLLER.to_string(),
            ingress_controller: crate::INGRESS_CONTROLLER.to_string(),
            isolate_gateways: false,
        }
    }
}

// === impl Services ===

impl Services<'_> {
    fn intern(&mut self, svc: ServiceRef) -> BackendId {
        if let Some(id) = self.base.and_then(|b| b.get(&svc)).or_else(|| self.ids.get(&svc)) {
            return *id;
        }
        let offset = self.base.map_or(0, BTreeMap::len);
        let id = BackendId(u32::try_from(offset + self.list.len()).unwrap_or(u32::MAX));
        let service = self.index.service(&svc.namespace, &svc.name);
        let app_protocol =
            service.and_then(|s| crate::endpoints::service_port(s, svc.port)).and_then(|p| p.app_protocol.as_deref());
        if app_protocol == Some(H2C_APP_PROTOCOL) {
            self.h2c.push(id);
        }
        if let Some(backendtls::Resolved::Valid(tls)) = self.tls.lookup(&svc.namespace, &svc.name, service, svc.port) {
            self.upstream_tls.push(UpstreamTlsInput { backend: id, tls: tls.clone() });
        }
        self.ids.insert(svc.clone(), id);
        self.list.push(svc);
        id
    }
}

/// `(namespace, name)` of the Ingresses Sluice serves (their class is one
/// of Sluice's), e.g. to write their `status.loadBalancer`.
pub fn served_ingresses(objects: &Objects, options: &Options) -> Vec<(String, String)> {
    ingress::served(objects, options)
        .into_iter()
        .map(|i| (crate::objects::namespace(&i.metadata).to_string(), crate::objects::name(&i.metadata).to_string()))
        .collect()
}

/// Translates the desired state into a table input and a report.
pub fn translate(objects: &Objects, options: &Options) -> Translation {
    let mut report = Report::default();
    let mut input = TableInput::default();
    let tls = backendtls::Policies::build(objects, &mut report);
    let mut services = Services { index: crate::endpoints::Index::new(objects), tls, ..Services::default() };
    gateway::translate(objects, options, &mut input, &mut services, &mut report);
    ingress::translate(objects, options, &mut input, &mut services, &mut report);
    let rate_limits = crate::ratelimit::attach(objects, &mut input, &mut report);
    backendtls::ancestors(&services.tls, objects, &mut report);
    input.services = services.list;
    input.h2c_backends = services.h2c;
    input.upstream_tls = services.upstream_tls;
    Translation { input, report, rate_limits }
}

#[cfg(test)]
mod tests;
