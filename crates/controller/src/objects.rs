//! The Kubernetes objects Sluice reads, parsed from multi-document YAML.

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::report::{Report, Severity};

/// The desired state: every object translation looks at.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// GatewayClasses.
    pub gateway_classes: Vec<GatewayClass>,
    /// Gateways.
    pub gateways: Vec<Gateway>,
    /// HTTPRoutes. Shared (`Arc`): a config holds thousands, and the copies
    /// of [`Objects`] a source keeps (its per-file cache, the controller's
    /// last good objects) share them instead of cloning each route.
    pub http_routes: Vec<Arc<HttpRoute>>,
    /// ReferenceGrants (v1 or v1beta1).
    pub reference_grants: Vec<ReferenceGrant>,
    /// Ingresses.
    pub ingresses: Vec<Ingress>,
    /// IngressClasses.
    pub ingress_classes: Vec<IngressClass>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// TLS Secrets.
    pub secrets: Vec<Secret>,
    /// Namespaces (for allowedRoutes selectors).
    pub namespaces: Vec<Namespace>,
    /// RateLimitPolicies (policy.sluice.dev).
    pub rate_limit_policies: Vec<crate::ratelimit::RateLimitPolicy>,
    /// BackendTLSPolicies.
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    /// ConfigMaps (CA bundles of BackendTLSPolicies).
    pub config_maps: Vec<ConfigMap>,
    /// Kinds the source could not (fully) see, and why: a reference to an
    /// object of such a kind that is not here may exist all the same
    /// (Kubernetes mode: ConfigMaps not watched, forbidden by RBAC, or
    /// narrowed by a label selector). Empty in file mode.
    pub unseen: std::collections::BTreeMap<&'static str, String>,
}

// === impl Objects ===

impl Objects {
    /// Parses multi-document YAML from `source` (a file name for messages),
    /// adding what it holds. Documents of other kinds are skipped; a
    /// document that does not parse is an error naming the source, the
    /// object and the field.
    pub fn add_yaml(&mut self, text: &str, source: &str, report: &mut Report) {
        // The default budget (1,024 documents, 250,000 nodes) is far below
        // what a table of 10,000 routes needs; keep the anchor/alias and
        // depth protections, raise the size caps.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_documents: 1_000_000,
                max_events: 100_000_000,
                max_nodes: 50_000_000,
            },
        };
        let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple_with_options(text, options) {
            Ok(docs) => docs,
            Err(e) => {
                report.push(Severity::Error, source, "", format!("invalid yaml: {e}"));
                return;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            self.add_value(doc, &format!("{source} (document {})", i + 1), report);
        }
    }

    /// Adds one object given as JSON.
    pub fn add_value(&mut self, doc: serde_json::Value, source: &str, report: &mut Report) {
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let api = doc.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let group = api.rsplit_once('/').map_or("", |(g, _)| g);
        let name = doc.pointer("/metadata/name").and_then(|n| n.as_str()).map_or_else(
            || source.to_string(),
            |n| {
                let ns = doc.pointer("/metadata/namespace").and_then(|n| n.as_str());
                format!("{kind} {}{n}", ns.map(|ns| format!("{ns}/")).unwrap_or_default())
            },
        );
        const GW: &str = "gateway.networking.k8s.io";
        match (group, kind.as_str()) {
            (GW, "GatewayClass") => push(&mut self.gateway_classes, doc, &name, report),
            (GW, "Gateway") => push(&mut self.gateways, doc, &name, report),
            (GW, "HTTPRoute") => push_with(&mut self.http_routes, doc, &name, report, Arc::new),
            (GW, "ReferenceGrant") => push(&mut self.reference_grants, doc, &name, report),
            (GW, "BackendTLSPolicy") => push(&mut self.backend_tls_policies, doc, &name, report),
            ("", "ConfigMap") => push(&mut self.config_maps, doc, &name, report),
            ("networking.k8s.io", "Ingress") => push(&mut self.ingresses, doc, &name, report),
            ("networking.k8s.io", "IngressClass") => push(&mut self.ingress_classes, doc, &name, report),
            ("", "Service") => push(&mut self.services, doc, &name, report),
            ("discovery.k8s.io", "EndpointSlice") => push(&mut self.endpoint_slices, doc, &name, report),
            ("", "Secret") => push(&mut self.secrets, doc, &name, report),
            ("", "Namespace") => push(&mut self.namespaces, doc, &name, report),
            (crate::ratelimit::GROUP, crate::ratelimit::KIND) => {
                push(&mut self.rate_limit_policies, doc, &name, report)
            }
            ("", "List") => {
                if let Some(items) = doc.get("items").and_then(|i| i.as_array()) {
                    for item in items.clone() {
                        self.add_value(item, source, report);
                    }
                }
            }
            _ => tracing::debug!(%kind, %api, %source, "Skipping object of a kind Sluice does not use"),
        }
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.reference_grants.len()
            + self.ingresses.len()
            + self.ingress_classes.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.namespaces.len()
            + self.rate_limit_policies.len()
            + self.backend_tls_policies.len()
            + self.config_maps.len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn push<T: DeserializeOwned>(into: &mut Vec<T>, doc: serde_json::Value, name: &str, report: &mut Report) {
    push_with(into, doc, name, report, |obj| obj);
}

fn push_with<T: DeserializeOwned, U>(
    into: &mut Vec<U>,
    doc: serde_json::Value,
    name: &str,
    report: &mut Report,
    wrap: impl FnOnce(T) -> U,
) {
    match serde_path_to_error::deserialize::<_, T>(doc) {
        Ok(obj) => into.push(wrap(obj)),
        Err(e) => {
            let field = e.path().to_string();
            // Secrets never reach logs: name the field, not the value.
            let message = e.into_inner().to_string();
            let message = if name.starts_with("Secret ") { "invalid secret".to_string() } else { message };
            report.push(Severity::Error, name, field, message);
        }
    }
}

/// Namespace of an object, `default` when unset.
pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
}

/// Name of an object.
pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// `metadata.generation`, 0 when unset (files).
pub fn generation(meta: &ObjectMeta) -> i64 {
    meta.generation.unwrap_or(0)
}

/// Creation time in seconds, 0 when unset (files).
pub fn created(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

// === impl Objects (change detection) ===

impl Objects {
    /// Appends copies of everything in `other`.
    pub fn extend_from(&mut self, other: &Self) {
        self.gateway_classes.extend_from_slice(&other.gateway_classes);
        self.gateways.extend_from_slice(&other.gateways);
        self.http_routes.extend_from_slice(&other.http_routes);
        self.reference_grants.extend_from_slice(&other.reference_grants);
        self.ingresses.extend_from_slice(&other.ingresses);
        self.ingress_classes.extend_from_slice(&other.ingress_classes);
        self.services.extend_from_slice(&other.services);
        self.endpoint_slices.extend_from_slice(&other.endpoint_slices);
        self.secrets.extend_from_slice(&other.secrets);
        self.namespaces.extend_from_slice(&other.namespaces);
        self.rate_limit_policies.extend_from_slice(&other.rate_limit_policies);
        self.backend_tls_policies.extend_from_slice(&other.backend_tls_policies);
        self.config_maps.extend_from_slice(&other.config_maps);
        self.unseen.extend(other.unseen.iter().map(|(k, v)| (*k, v.clone())));
    }

    /// Whether `self` and `other` differ only in EndpointSlices, so that only
    /// endpoints need rebuilding (the route table stays).
    pub fn same_except_endpoints(&self, other: &Self) -> bool {
        self.gateway_classes == other.gateway_classes
            && self.gateways == other.gateways
            && self.http_routes == other.http_routes
            && self.reference_grants == other.reference_grants
            && self.ingresses == other.ingresses
            && self.ingress_classes == other.ingress_classes
            && self.services == other.services
            && self.secrets == other.secrets
            && self.namespaces == other.namespaces
            && self.rate_limit_policies == other.rate_limit_policies
            && self.backend_tls_policies == other.backend_tls_policies
            && self.config_maps == other.config_maps
            && self.unseen == other.unseen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_kinds_and_skips_others() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec: {rules: [{matches: [{path: {type: Exact, value: /a}}]}]}
"#;
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml(yaml, "test.yaml", &mut r);
        assert!(!r.has_errors(), "{:?}", r.diagnostics);
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.http_routes.len(), 1);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn bad_field_names_object_and_path() {
        let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec: {rules: [{matches: [{path: {type: Bogus, value: /a}}]}]}
"#;
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml(yaml, "test.yaml", &mut r);
        assert!(r.has_errors());
        let d = &r.diagnostics[0];
        assert_eq!(d.object, "HTTPRoute ns/r");
        assert!(d.field.contains("spec.rules[0].matches[0].path.type"), "{d}");
        assert!(d.message.contains("Bogus"), "{d}");
    }

    #[test]
    fn thousands_of_documents_in_one_file_parse() {
        let doc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{name: http, port: 80}]}\n";
        let yaml = vec![doc; 12_000].join("---\n");
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml(&yaml, "big.yaml", &mut r);
        assert!(!r.has_errors(), "{:?}", r.diagnostics.first());
        assert_eq!(o.services.len(), 12_000);
    }

    #[test]
    fn invalid_yaml_is_an_error() {
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml("kind: [unclosed", "bad.yaml", &mut r);
        assert!(r.has_errors());
        assert_eq!(r.diagnostics[0].object, "bad.yaml");
    }
}
