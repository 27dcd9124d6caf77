//! Endpoint sets for the services a route table references.
//!
//! Built apart from routes: an EndpointSlice change rebuilds only this and
//! swaps it beside the unchanged route table.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_model::{EndpointSet, Endpoints, ServiceRef};

use crate::objects::{Objects, name, namespace};

/// Label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Services and EndpointSlices indexed by `(namespace, name)`, so lookups
/// stay O(1) with thousands of each.
#[derive(Debug, Default)]
pub struct Index<'a> {
    services: HashMap<&'a str, HashMap<&'a str, &'a Service>>,
    slices: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> Index<'a> {
    /// Indexes `objects`.
    pub fn new(objects: &'a Objects) -> Self {
        let mut index = Self::default();
        for s in &objects.services {
            index.services.entry(namespace(&s.metadata)).or_default().entry(name(&s.metadata)).or_insert(s);
        }
        for slice in &objects.endpoint_slices {
            if let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                index
                    .slices
                    .entry(namespace(&slice.metadata))
                    .or_default()
                    .entry(svc.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        index
    }

    /// The Service `namespace/name`.
    pub fn service(&self, ns: &str, svc: &str) -> Option<&'a Service> {
        self.services.get(ns).and_then(|m| m.get(svc)).copied()
    }

    fn slices(&self, ns: &str, svc: &str) -> &[&'a EndpointSlice] {
        self.slices.get(ns).and_then(|m| m.get(svc)).map_or(&[], Vec::as_slice)
    }
}

/// Builds the endpoint sets for `services`, in order (aligned with
/// [`sluice_model::BackendId`]).
pub fn build(services: &[ServiceRef], objects: &Objects) -> Endpoints {
    let index = Index::new(objects);
    Endpoints::new(services.iter().map(|s| Arc::new(EndpointSet::new(ready_addrs_in(s, &index)))).collect())
}

/// Ready addresses of a Service port, from its EndpointSlices.
pub fn ready_addrs(svc: &ServiceRef, objects: &Objects) -> Vec<SocketAddr> {
    ready_addrs_in(svc, &Index::new(objects))
}

fn ready_addrs_in(svc: &ServiceRef, index: &Index<'_>) -> Vec<SocketAddr> {
    let Some(service) = index.service(&svc.namespace, &svc.name) else {
        return Vec::new();
    };
    let Some(sport) = service_port(service, svc.port) else {
        return Vec::new();
    };
    let port_name = sport.name.as_deref().unwrap_or_default();
    let numeric_target = match &sport.target_port {
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        None => u16::try_from(sport.port).ok(),
        Some(IntOrString::String(_)) => None,
    };
    let mut out = BTreeSet::new();
    for slice in index.slices(&svc.namespace, &svc.name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .or(numeric_target);
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            // "ready ... nil should be interpreted as ready" (discovery/v1).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The port entry of a Service by port number.
pub fn service_port(service: &Service, port: u16) -> Option<&ServicePort> {
    service.spec.as_ref()?.ports.as_ref()?.iter().find(|p| p.port == i32::from(port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  ports:
  - {name: http, port: 8080, targetPort: 3000}
  - {name: admin, port: 9090, targetPort: admin}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 3001}, {name: admin, port: 9999}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.3]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: ns, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 1}]
endpoints: [{addresses: [10.9.9.9]}]
"#;

    fn objects() -> Objects {
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml(YAML, "t", &mut r);
        assert!(!r.has_errors(), "{:?}", r.diagnostics);
        o
    }

    fn svc(port: u16) -> ServiceRef {
        ServiceRef { namespace: "ns".into(), name: "web".into(), port }
    }

    #[test]
    fn only_ready_endpoints_on_the_named_slice_port() {
        let addrs = ready_addrs(&svc(8080), &objects());
        let want: Vec<SocketAddr> =
            vec!["10.0.0.1:3001".parse().ok(), "10.0.0.3:3001".parse().ok()].into_iter().flatten().collect();
        assert_eq!(addrs, want);
    }

    #[test]
    fn named_target_port_resolves_through_the_slice() {
        let addrs = ready_addrs(&svc(9090), &objects());
        assert!(addrs.iter().all(|a| a.port() == 9999) && addrs.len() == 2, "{addrs:?}");
    }

    #[test]
    fn unknown_service_or_port_has_no_endpoints() {
        assert!(ready_addrs(&svc(1234), &objects()).is_empty());
        let none = ServiceRef { namespace: "ns".into(), name: "nope".into(), port: 80 };
        assert!(ready_addrs(&none, &objects()).is_empty());
        let e = build(&[svc(8080), none], &objects());
        assert_eq!(e.len(), 2);
    }
}
