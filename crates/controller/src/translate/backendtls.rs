//! BackendTLSPolicy: TLS from Sluice to backends.
//!
//! Each policy targets Service ports (a whole Service, or one port by
//! `sectionName` = port name). Its CA bundle (ConfigMaps, key `ca.crt`),
//! SNI (`validation.hostname`) and optional `subjectAltNames` become one
//! rustls `ClientConfig`, built here when the config is compiled and never
//! per request. Two policies on the same target: the oldest wins (then
//! `namespace/name`), the other is `Accepted=False/Conflicted`; a policy
//! naming a port wins over one naming the whole Service for that port.
//!
//! `wellKnownCACertificates: System` uses the operating system's trust store
//! (read once, on first use, through `rustls-native-certs`: the usual files
//! under `/etc/ssl`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
//!
//! A policy Sluice cannot meet (no usable CA, an unknown
//! `wellKnownCACertificates` value or an empty system store, a bad
//! hostname) makes its backends invalid: routes to them report
//! `ResolvedRefs=False` and their share of traffic answers 500
//! (`semantics.md` §2, "BackendTLSPolicy present that the implementation
//! cannot meet").
//!
//! Status: the policy's conditions (scope `Object`) and, once routes are
//! translated, the same conditions once per ancestor Gateway (scope
//! `Ancestor`): every Gateway of Sluice's with an accepted HTTPRoute whose
//! backendRef is a Service port the policy targets ([`ancestors`]).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use gateway_api::backendtlspolicies::{BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType as SanType};
use k8s_openapi::api::core::v1::Service;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sluice_model::UpstreamTls;

use crate::objects::{Objects, created, generation, name, namespace};
use crate::report::{Condition, ObjectStatus, Report, Scope, Severity};

/// Kind name in reports.
pub const KIND: &str = "BackendTLSPolicy";

/// Most ancestors one policy lists (the CRD's `maxItems`).
const MAX_ANCESTORS: usize = 16;

/// Resolved policies by target.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// `(namespace, service, port name or "")` → the winning policy.
    by_target: BTreeMap<(String, String, String), Resolved>,
    /// Every policy (conflicted ones too), to find ancestors.
    targets: Vec<PolicyTargets>,
}

/// A policy `(namespace, name)` and its Service targets `(service, port
/// name or "")`.
type PolicyTargets = ((String, String), Vec<(String, String)>);

/// What the winning policy of a target resolved to.
#[derive(Clone, Debug)]
pub(crate) enum Resolved {
    /// Speak TLS with these settings.
    Valid(Arc<UpstreamTls>),
    /// The policy cannot be met: the backend is invalid.
    Invalid {
        /// `namespace/name` of the policy.
        policy: String,
        /// Why.
        message: String,
    },
}

/// A verifier for `subjectAltNames`: the chain must lead to the policy's
/// CAs and the certificate must carry at least one of the listed names
/// (the hostname then only serves as SNI, as the spec requires).
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    hostnames: Vec<ServerName<'static>>,
    uris: Vec<String>,
}

// === impl Policies ===

impl Policies {
    /// Resolves every BackendTLSPolicy, reporting their conditions.
    pub(crate) fn build(objects: &Objects, report: &mut Report) -> Self {
        let mut order: Vec<&BackendTlsPolicy> = objects.backend_tls_policies.iter().collect();
        order.sort_by(|a, b| {
            created(&a.metadata)
                .cmp(&created(&b.metadata))
                .then_with(|| namespace(&a.metadata).cmp(namespace(&b.metadata)))
                .then_with(|| name(&a.metadata).cmp(name(&b.metadata)))
        });
        let mut out = Self::default();
        for p in order {
            let ns = namespace(&p.metadata).to_string();
            let pname = name(&p.metadata).to_string();
            let gen_ = generation(&p.metadata);
            let mut targets = Vec::new();
            let mut conflicted = None;
            for t in &p.spec.target_refs {
                if !(t.group.is_empty() || t.group == "core") || t.kind != "Service" {
                    continue;
                }
                let key = (ns.clone(), t.name.clone(), t.section_name.clone().unwrap_or_default());
                if out.by_target.contains_key(&key) || targets.contains(&key) {
                    conflicted = Some(key);
                } else {
                    targets.push(key);
                }
            }
            let all: Vec<(String, String)> = p
                .spec
                .target_refs
                .iter()
                .filter(|t| (t.group.is_empty() || t.group == "core") && t.kind == "Service")
                .map(|t| (t.name.clone(), t.section_name.clone().unwrap_or_default()))
                .collect();
            out.targets.push(((ns.clone(), pname.clone()), all));
            let mut conditions = Vec::new();
            if let Some((_, svc, section)) = conflicted {
                let target = if section.is_empty() { svc } else { format!("{svc} port {section}") };
                conditions.push(Condition::new(
                    "Accepted",
                    false,
                    "Conflicted",
                    format!("an older BackendTLSPolicy already targets Service {ns}/{target}"),
                    gen_,
                ));
                push_status(report, &ns, &pname, conditions);
                continue;
            }
            let (resolved, conds) = resolve(objects, p, &ns, &pname, gen_, report);
            push_status(report, &ns, &pname, conds);
            for key in targets {
                out.by_target.insert(key, resolved.clone());
            }
        }
        out
    }

    /// The policy for a Service port, if any: one naming the port wins over
    /// one naming the whole Service.
    pub(crate) fn lookup(&self, ns: &str, svc: &str, service: Option<&Service>, port: u16) -> Option<&Resolved> {
        if self.by_target.is_empty() {
            return None;
        }
        let port_name = service
            .and_then(|s| crate::endpoints::service_port(s, port))
            .and_then(|p| p.name.clone())
            .filter(|n| !n.is_empty());
        if let Some(pn) = port_name
            && let Some(r) = self.by_target.get(&(ns.to_string(), svc.to_string(), pn))
        {
            return Some(r);
        }
        self.by_target.get(&(ns.to_string(), svc.to_string(), String::new()))
    }
}

fn push_status(report: &mut Report, ns: &str, name: &str, conditions: Vec<Condition>) {
    report.statuses.push(ObjectStatus {
        kind: KIND,
        namespace: ns.to_string(),
        name: name.to_string(),
        scope: Scope::Object,
        conditions,
    });
}

/// Resolves one (non-conflicting) policy: its conditions and what its
/// targets get.
fn resolve(
    objects: &Objects,
    p: &BackendTlsPolicy,
    ns: &str,
    pname: &str,
    gen_: i64,
    report: &mut Report,
) -> (Resolved, Vec<Condition>) {
    let invalid = |message: String| Resolved::Invalid { policy: format!("{ns}/{pname}"), message };
    let v = &p.spec.validation;
    let server_name = match ServerName::try_from(v.hostname.clone()) {
        Ok(n @ ServerName::DnsName(_)) => n,
        _ => {
            let msg = format!("validation.hostname {:?} is not a DNS name", v.hostname);
            report.push(Severity::Warning, format!("{KIND} {ns}/{pname}"), "spec.validation.hostname", msg.clone());
            return (invalid(msg.clone()), vec![Condition::new("Accepted", false, "Invalid", msg, gen_)]);
        }
    };
    let mut roots = RootCertStore::empty();
    let mut bundle: Vec<u8> = Vec::new();
    let mut bad: Option<(&'static str, String)> = None;
    if let Some(w) = v.well_known_ca_certificates.as_deref().filter(|w| !w.is_empty()) {
        let store = match w {
            "System" => system_roots(),
            _ => Err(format!(
                "validation.wellKnownCACertificates {w:?} is not supported (Sluice knows \"System\"); \
                 use caCertificateRefs"
            )),
        };
        match store {
            Ok(system) => {
                roots = system.as_ref().clone();
                bundle.extend_from_slice(b"wellKnownCACertificates: System");
            }
            Err(msg) => {
                let field = "spec.validation.wellKnownCACertificates";
                report.push(Severity::Warning, format!("{KIND} {ns}/{pname}"), field, &msg);
                return (invalid(msg.clone()), vec![Condition::new("Accepted", false, "Invalid", msg, gen_)]);
            }
        }
    }
    for (i, r) in v.ca_certificate_refs.iter().flatten().enumerate() {
        let field = format!("spec.validation.caCertificateRefs[{i}]");
        let failure = if !(r.group.is_empty() || r.group == "core") || r.kind != "ConfigMap" {
            Some(("InvalidKind", format!("kind {}/{} is not supported (only core ConfigMap)", r.group, r.kind)))
        } else {
            match ca_certificates(objects, ns, &r.name) {
                Ok((certs, pem)) => {
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        Some((
                            "InvalidCACertificateRef",
                            format!("ConfigMap {ns}/{} holds no usable CA certificate", r.name),
                        ))
                    } else {
                        bundle.extend_from_slice(pem);
                        None
                    }
                }
                Err(e) => Some(("InvalidCACertificateRef", e)),
            }
        };
        if let Some((reason, msg)) = failure {
            let full = format!("{field}: {msg}");
            report.push(Severity::Warning, format!("{KIND} {ns}/{pname}"), field, msg);
            bad.get_or_insert((reason, full));
        }
    }
    if roots.is_empty() {
        let (reason, msg) =
            bad.unwrap_or(("InvalidCACertificateRef", "validation.caCertificateRefs is empty".to_string()));
        return (
            invalid(msg.clone()),
            vec![
                Condition::new("Accepted", false, "NoValidCACertificate", msg.clone(), gen_),
                Condition::new("ResolvedRefs", false, reason, msg, gen_),
            ],
        );
    }
    let sans = v.subject_alt_names.clone().unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&bundle, &v.hostname).hash(&mut hasher);
    for s in &sans {
        (s.hostname.as_deref(), s.uri.as_deref()).hash(&mut hasher);
    }
    let fingerprint = hasher.finish();
    let tls = match client_config(roots, &sans) {
        Ok(config) => UpstreamTls { config, server_name, fingerprint },
        Err(e) => {
            return (invalid(e.clone()), vec![Condition::new("Accepted", false, "Invalid", e, gen_)]);
        }
    };
    let mut conditions = vec![Condition::new("Accepted", true, "Accepted", "policy accepted", gen_)];
    conditions.push(match bad {
        Some((reason, msg)) => Condition::new("ResolvedRefs", false, reason, msg, gen_),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "all references resolved", gen_),
    });
    (Resolved::Valid(Arc::new(tls)), conditions)
}

/// The operating system's trust store, read once (on first use) and kept:
/// every later compile reuses it.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "Reading the system trust store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::info!(added, ignored, "System trust store loaded (wellKnownCACertificates: System)");
            if roots.is_empty() {
                Err("validation.wellKnownCACertificates \"System\": the system trust store holds no usable CA \
                     certificate (install ca-certificates, or set SSL_CERT_FILE / SSL_CERT_DIR)"
                    .to_string())
            } else {
                Ok(Arc::new(roots))
            }
        })
        .clone()
}

/// Adds one `Ancestor` status per Gateway a policy applies through: every
/// Gateway of Sluice's that accepted an HTTPRoute with a backendRef to a
/// Service port the policy targets (`report` already holds the routes'
/// parent statuses). At most [`MAX_ANCESTORS`] per policy, as the CRD allows.
pub(crate) fn ancestors(policies: &Policies, objects: &Objects, report: &mut Report) {
    if policies.targets.is_empty() {
        return;
    }
    // (service namespace, service, port) → Gateways whose routes send there.
    let mut via: BTreeMap<(String, String, u16), BTreeSet<String>> = BTreeMap::new();
    for s in &report.statuses {
        let Scope::Parent { gateway, .. } = &s.scope else { continue };
        if s.kind != "HTTPRoute" || !s.conditions.iter().any(|c| c.type_ == "Accepted" && c.status == "True") {
            continue;
        }
        let Some(route) =
            objects.http_routes.iter().find(|r| namespace(&r.metadata) == s.namespace && name(&r.metadata) == s.name)
        else {
            continue;
        };
        for b in route.spec.rules.iter().flatten().flat_map(|r| r.backend_refs.iter().flatten()) {
            let group = b.group.as_deref().unwrap_or_default();
            if !(group.is_empty() || group == "core") || b.kind.as_deref().unwrap_or("Service") != "Service" {
                continue;
            }
            let Some(port) = b.port.and_then(|p| u16::try_from(p).ok()) else { continue };
            let svc_ns = b.namespace.clone().unwrap_or_else(|| s.namespace.clone());
            via.entry((svc_ns, b.name.clone(), port)).or_default().insert(gateway.clone());
        }
    }
    let index = crate::endpoints::Index::new(objects);
    let mut add = Vec::new();
    for ((ns, pname), targets) in &policies.targets {
        let mut gateways = BTreeSet::new();
        for ((svc_ns, svc, port), gws) in &via {
            if svc_ns != ns {
                continue;
            }
            let port_name = || {
                index
                    .service(svc_ns, svc)
                    .and_then(|s| crate::endpoints::service_port(s, *port))
                    .and_then(|p| p.name.clone())
                    .unwrap_or_default()
            };
            if targets.iter().any(|(t, section)| t == svc && (section.is_empty() || *section == port_name())) {
                gateways.extend(gws.iter().cloned());
            }
        }
        if gateways.is_empty() {
            continue;
        }
        let Some(own) = report.status(KIND, ns, pname, &Scope::Object).map(|s| s.conditions.clone()) else {
            continue;
        };
        if gateways.len() > MAX_ANCESTORS {
            report.push(
                Severity::Warning,
                format!("{KIND} {ns}/{pname}"),
                "status.ancestors",
                format!("applies through {} Gateways; status lists the first {MAX_ANCESTORS}", gateways.len()),
            );
        }
        for gateway in gateways.into_iter().take(MAX_ANCESTORS) {
            add.push(ObjectStatus {
                kind: KIND,
                namespace: ns.clone(),
                name: pname.clone(),
                scope: Scope::Ancestor { gateway },
                conditions: own.clone(),
            });
        }
    }
    report.statuses.extend(add);
}

/// The certificates of ConfigMap `ns/name`'s `ca.crt`, and the raw PEM.
fn ca_certificates<'a>(
    objects: &'a Objects,
    ns: &str,
    cm: &str,
) -> Result<(Vec<CertificateDer<'static>>, &'a [u8]), String> {
    let map = objects.config_maps.iter().find(|c| namespace(&c.metadata) == ns && name(&c.metadata) == cm).ok_or_else(
        || match objects.unseen.get("ConfigMap") {
            // Not found may mean "not visible to Sluice": say why.
            Some(why) => format!("ConfigMap {ns}/{cm} not found: {why}"),
            None => format!("ConfigMap {ns}/{cm} not found"),
        },
    )?;
    let pem = map
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(String::as_bytes)
        .ok_or_else(|| format!("ConfigMap {ns}/{cm} has no ca.crt"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("ConfigMap {ns}/{cm}: ca.crt is not valid PEM"))?;
    if certs.is_empty() {
        return Err(format!("ConfigMap {ns}/{cm}: ca.crt holds no certificate"));
    }
    Ok((certs, pem))
}

/// The rustls client config for a policy: ring, TLS 1.2 and 1.3, ALPN
/// http/1.1, the standard verifier (hostname) or [`SanVerifier`].
fn client_config(
    roots: RootCertStore,
    sans: &[gateway_api::backendtlspolicies::BackendTlsPolicyValidationSubjectAltNames],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let verifier: Arc<dyn ServerCertVerifier> = if sans.is_empty() {
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("CA certificates rejected: {e}"))?
    } else {
        let mut hostnames = Vec::new();
        let mut uris = Vec::new();
        for (i, s) in sans.iter().enumerate() {
            match (&s.r#type, &s.hostname, &s.uri) {
                (SanType::Hostname, Some(h), _) => hostnames.push(
                    ServerName::try_from(h.clone())
                        .map_err(|_| format!("validation.subjectAltNames[{i}].hostname {h:?} is not a DNS name"))?,
                ),
                (SanType::Uri, _, Some(u)) => uris.push(u.clone()),
                _ => return Err(format!("validation.subjectAltNames[{i}]: value missing for its type")),
            }
        }
        Arc::new(SanVerifier { roots, provider: provider.clone(), hostnames, uris })
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// === impl SanVerifier ===

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let host_ok = self.hostnames.iter().any(|h| rustls::client::verify_server_name(&cert, h).is_ok());
        let uri_ok = !self.uris.is_empty() && {
            let present = uri_sans(end_entity.as_ref()).unwrap_or_default();
            self.uris.iter().any(|u| present.contains(&u.as_bytes()))
        };
        if host_ok || uri_ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The `uniformResourceIdentifier` entries of a certificate's
/// subjectAltName extension (RFC 5280 §4.2.1.6).
fn uri_sans(cert: &[u8]) -> Option<Vec<&[u8]>> {
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let (_, certificate, _) = der(cert)?;
    let (_, mut tbs, _) = der(certificate)?;
    // Walk the TBSCertificate fields to the [3] extensions.
    let mut extensions = None;
    while !tbs.is_empty() {
        let (tag, content, rest) = der(tbs)?;
        if tag == 0xa3 {
            extensions = Some(content);
        }
        tbs = rest;
    }
    let (_, mut list, _) = der(extensions?)?;
    while !list.is_empty() {
        let (_, ext, rest) = der(list)?;
        list = rest;
        let (_, oid, mut fields) = der(ext)?;
        if oid != SAN_OID {
            continue;
        }
        // Optional `critical` BOOLEAN, then the OCTET STRING.
        let mut value = None;
        while !fields.is_empty() {
            let (tag, content, rest) = der(fields)?;
            if tag == 0x04 {
                value = Some(content);
            }
            fields = rest;
        }
        let (_, mut names, _) = der(value?)?;
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, content, rest) = der(names)?;
            if tag == 0x86 {
                out.push(content);
            }
            names = rest;
        }
        return Some(out);
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{Options, translate};

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        params.self_signed(&key).unwrap_or_else(|e| panic!("{e}")).pem()
    }

    /// Gateway + HTTPRoute to Services `a` and `b` (port `https` 443) +
    /// the given policies.
    fn objects(policies: &str) -> Objects {
        let pem = ca_pem().replace('\n', "\n    ");
        let yaml = format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: ns}}
spec: {{gatewayClassName: sluice, listeners: [{{name: http, port: 80, protocol: HTTP}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: ns}}
spec:
  parentRefs: [{{name: web}}]
  rules:
  - backendRefs: [{{name: a, port: 443}}]
  - matches: [{{path: {{type: PathPrefix, value: /b}}}}]
    backendRefs: [{{name: b, port: 443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: a, namespace: ns}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: b, namespace: ns}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: ns}}
data:
  ca.crt: |
    {pem}
{policies}"#
        );
        let mut o = Objects::default();
        let mut r = Report::default();
        o.add_yaml(&yaml, "test.yaml", &mut r);
        assert!(!r.has_errors(), "{:?}", r.diagnostics);
        o
    }

    fn policy(name: &str, svc: &str, section: Option<&str>, hostname: &str, validation: &str) -> String {
        let section = section.map(|s| format!(", sectionName: {s}")).unwrap_or_default();
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {svc}{section}}}]\n  validation: {{hostname: {hostname}, {validation}}}\n"
        )
    }

    fn accepted(t: &crate::translate::Translation, name: &str) -> (&'static str, &'static str) {
        let c = t
            .report
            .condition(KIND, "ns", name, &Scope::Object, "Accepted")
            .unwrap_or_else(|| panic!("no Accepted on {name}: {:#?}", t.report.statuses));
        (c.status, c.reason)
    }

    #[test]
    fn unknown_well_known_cas_are_reported_invalid_and_make_the_backend_invalid() {
        let cas = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}]";
        let o = objects(&format!(
            "{}{}",
            policy("custom", "a", None, "a.example", "wellKnownCACertificates: example.com/custom"),
            policy("ok", "b", None, "b.example", cas)
        ));
        let t = translate(&o, &Options::default());
        assert_eq!(accepted(&t, "custom"), ("False", "Invalid"));
        assert_eq!(accepted(&t, "ok"), ("True", "Accepted"));
        let route = t.report.statuses.iter().find(|s| s.kind == "HTTPRoute").expect("route status");
        let rr = route.conditions.iter().find(|c| c.type_ == "ResolvedRefs").expect("ResolvedRefs");
        assert_eq!((rr.status, rr.reason), ("False", "InvalidBackendTLSPolicy"));
        // Service b (valid policy) is spoken to over TLS with its hostname as SNI.
        assert_eq!(t.input.upstream_tls.len(), 1);
        let tls = &t.input.upstream_tls[0];
        assert_eq!(t.input.services[tls.backend.0 as usize].name, "b");
        assert_eq!(tls.tls.server_name.to_str(), "b.example");
    }

    #[test]
    fn ancestors_are_the_gateways_whose_routes_reach_a_targeted_port() {
        let cas = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}]";
        let o = objects(&format!(
            "{}{}{}{}",
            policy("a-port", "a", Some("https"), "a.example", cas),
            policy("a-other-port", "a", Some("metrics"), "a.example", cas),
            policy("b-conflict", "a", Some("https"), "a.example", cas),
            policy("unrouted", "c", None, "c.example", cas),
        ));
        let t = translate(&o, &Options::default());
        let ancestors = |name: &str| -> Vec<(String, Vec<(&str, &str)>)> {
            t.report
                .statuses
                .iter()
                .filter(|s| s.kind == KIND && s.name == name)
                .filter_map(|s| match &s.scope {
                    Scope::Ancestor { gateway } => {
                        Some((gateway.clone(), s.conditions.iter().map(|c| (c.type_, c.reason)).collect()))
                    }
                    _ => None,
                })
                .collect()
        };
        let accepted = vec![("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs")];
        assert_eq!(ancestors("a-port"), vec![("ns/web".to_string(), accepted)]);
        // The conflicted (younger, then by name) policy reports its condition
        // on the same ancestor.
        assert_eq!(ancestors("b-conflict"), vec![("ns/web".to_string(), vec![("Accepted", "Conflicted")])]);
        // A port no route uses, a Service no route uses: no ancestor.
        assert_eq!(ancestors("a-other-port"), vec![]);
        assert_eq!(ancestors("unrouted"), vec![]);
    }

    #[test]
    fn a_config_map_sluice_cannot_see_is_reported_with_the_reason() {
        let cas = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: elsewhere}]";
        let mut o = objects(&policy("p", "a", None, "a.example", cas));
        o.unseen.insert("ConfigMap", "Sluice does not watch ConfigMaps".to_string());
        let t = translate(&o, &Options::default());
        let c = t.report.condition(KIND, "ns", "p", &Scope::Object, "ResolvedRefs").expect("ResolvedRefs");
        assert_eq!((c.status, c.reason), ("False", "InvalidCACertificateRef"));
        assert_eq!(
            c.message,
            "spec.validation.caCertificateRefs[0]: ConfigMap ns/elsewhere not found: Sluice does not watch ConfigMaps"
        );
        assert_eq!(accepted(&t, "p"), ("False", "NoValidCACertificate"));
    }

    #[test]
    fn a_port_policy_wins_over_a_whole_service_policy_and_conflicts_are_oldest_first() {
        let cas = "caCertificateRefs: [{group: \"\", kind: ConfigMap, name: ca}]";
        let o = objects(&format!(
            "{}{}{}",
            policy("whole", "a", None, "whole.example", cas),
            policy("port", "a", Some("https"), "port.example", cas),
            policy("port-2", "a", Some("https"), "other.example", cas),
        ));
        let t = translate(&o, &Options::default());
        assert_eq!(accepted(&t, "whole"), ("True", "Accepted"));
        assert_eq!(accepted(&t, "port"), ("True", "Accepted"));
        assert_eq!(accepted(&t, "port-2"), ("False", "Conflicted"));
        let tls = t.input.upstream_tls.first().expect("a TLS backend");
        assert_eq!(tls.tls.server_name.to_str(), "port.example");
    }

    #[test]
    fn uri_sans_are_read_from_the_extension_only() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.com".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/x/sa/y").unwrap_or_else(|e| panic!("{e}")),
        ));
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let uris = uri_sans(cert.der()).unwrap_or_default();
        assert_eq!(uris, vec![b"spiffe://cluster.local/ns/x/sa/y".as_slice()]);
        assert_eq!(uri_sans(b"\x30\x05garbage"), None);
    }
}
