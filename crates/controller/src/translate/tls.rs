//! TLS Secrets → parsed, checked certificates (at compile time, never per
//! handshake), Gateway listener `certificateRefs` resolution with
//! ReferenceGrant, and Ingress `spec.tls`.
//!
//! Messages name the Secret and the key (`tls.crt`, `tls.key`) and the
//! reason; they never contain Secret data.

use std::sync::Arc;

use gateway_api::gateways::GatewayListeners;
use k8s_openapi::api::core::v1::Secret;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_model::Certificate;

use super::backend::{From, granted};
use crate::objects::{Objects, name, namespace};

/// Why a certificateRef cannot be used: the listener's `ResolvedRefs=False`
/// reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Resolves every certificateRef of an HTTPS listener of Gateway `gw_ns`.
/// Returns the usable certificates, the problems (in ref order) and
/// warnings (a certificate that does not cover the listener hostname).
pub(super) fn listener_certificates(
    listener: &GatewayListeners,
    gw_ns: &str,
    objects: &Objects,
) -> (Vec<Certificate>, Vec<Invalid>, Vec<String>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let hostname = sluice_model::HostPattern::gateway(listener.hostname.as_deref());
    let refs = listener.tls.as_ref().and_then(|t| t.certificate_refs.as_ref());
    for r in refs.into_iter().flatten() {
        let group = r.group.as_deref().unwrap_or_default();
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let result = if !(group.is_empty() || group == "core") || kind != "Secret" {
            Err(Invalid {
                reason: "InvalidCertificateRef",
                message: format!("certificateRef {}: kind {group}/{kind} is not supported (only core Secret)", r.name),
            })
        } else if ns != gw_ns
            && !granted(
                objects,
                &From { group: "gateway.networking.k8s.io", kind: "Gateway", namespace: gw_ns },
                ns,
                "",
                "Secret",
                &r.name,
            )
        {
            Err(Invalid {
                reason: "RefNotPermitted",
                message: format!(
                    "certificateRef {ns}/{}: no ReferenceGrant in {ns} allows Gateways from {gw_ns}",
                    r.name
                ),
            })
        } else {
            secret_certificate(objects, ns, &r.name)
                .map_err(|message| Invalid { reason: "InvalidCertificateRef", message })
        };
        match result {
            Ok(c) => {
                if !covers(&c, &hostname) {
                    warnings.push(uncovered(ns, &r.name, &hostname));
                }
                certs.push(c);
            }
            Err(e) => problems.push(e),
        }
    }
    if certs.is_empty() && problems.is_empty() {
        problems.push(Invalid {
            reason: "InvalidCertificateRef",
            message: "an HTTPS listener in Terminate mode needs at least one certificateRef".into(),
        });
    }
    (certs, problems, warnings)
}

/// Whether the certificate's names cover `host` (for a wildcard, any one
/// name under it). Unparsable names count as covered: this only feeds a
/// warning.
pub(super) fn covers(cert: &Certificate, host: &sluice_model::HostPattern) -> bool {
    use sluice_model::HostPattern;
    let name = match host {
        HostPattern::Any => return true,
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Wildcard { suffix, .. } => format!("sluice-name-check{suffix}"),
    };
    let (Some(der), Ok(name)) = (cert.cert.first(), rustls::pki_types::ServerName::try_from(name)) else {
        return true;
    };
    match webpki::EndEntityCert::try_from(der) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => true,
    }
}

/// The warning for a certificate that does not cover a hostname.
pub(super) fn uncovered(ns: &str, secret: &str, host: &sluice_model::HostPattern) -> String {
    format!("the certificate in Secret {ns}/{secret} does not cover {host}: clients that check names will refuse it")
}

/// Finds Secret `ns/name` and parses its `tls.crt`/`tls.key`.
pub(super) fn secret_certificate(objects: &Objects, ns: &str, secret: &str) -> Result<Certificate, String> {
    let s = objects
        .secrets
        .iter()
        .find(|s| namespace(&s.metadata) == ns && name(&s.metadata) == secret)
        .ok_or_else(|| format!("Secret {ns}/{secret} not found"))?;
    parse_secret(s).map_err(|e| format!("Secret {ns}/{secret}: {e}"))
}

fn secret_key<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let data = s.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice());
    data.or_else(|| s.string_data.as_ref().and_then(|d| d.get(key)).map(String::as_bytes)).filter(|b| !b.is_empty())
}

fn parse_secret(s: &Secret) -> Result<Certificate, String> {
    if let Some(t) = s.type_.as_deref().filter(|t| *t != "kubernetes.io/tls" && *t != "Opaque") {
        return Err(format!("type {t} is not kubernetes.io/tls"));
    }
    let crt = secret_key(s, "tls.crt").ok_or("tls.crt is missing or empty")?;
    let key = secret_key(s, "tls.key").ok_or("tls.key is missing or empty")?;
    parse_pem(crt, key)
}

/// Parses a PEM certificate chain and private key and checks that the key
/// belongs to the first certificate. Errors never quote the input.
pub fn parse_pem(crt: &[u8], key: &[u8]) -> Result<Certificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|_| "tls.crt is not valid PEM".to_string())?;
    if chain.is_empty() {
        return Err("tls.crt holds no PEM CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| "tls.key holds no PEM private key".to_string())?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "tls.key does not match the certificate in tls.crt".to_string()
        }
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            "tls.crt: the first certificate does not parse as X.509".to_string()
        }
        // Key loading errors name the algorithms tried, not the key.
        other => format!("tls.key: {other}"),
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names).unwrap_or_else(|e| panic!("rcgen: {e}"));
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn valid_pair_parses_and_mismatch_is_named_without_key_material() {
        let (crt, key) = pair(&["a.example"]);
        assert!(parse_pem(crt.as_bytes(), key.as_bytes()).is_ok());
        let (_, other_key) = pair(&["b.example"]);
        let e = parse_pem(crt.as_bytes(), other_key.as_bytes()).err().unwrap_or_default();
        assert!(e.contains("does not match"), "{e}");
        assert!(!e.contains("PRIVATE KEY") && !e.contains(&other_key[30..60]), "{e}");
        let e = parse_pem(b"Hello world\n", b"Hello world\n").err().unwrap_or_default();
        assert!(e.contains("tls.crt"), "{e}");
        let e = parse_pem(crt.as_bytes(), crt.as_bytes()).err().unwrap_or_default();
        assert!(e.contains("tls.key"), "{e}");
    }

    #[test]
    fn coverage_of_listener_hostnames() {
        use sluice_model::HostPattern;
        let (crt, key) = pair(&["a.example", "*.w.example"]);
        let c = parse_pem(crt.as_bytes(), key.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let g = |h: &str| HostPattern::gateway(Some(h));
        assert!(covers(&c, &g("a.example")));
        assert!(covers(&c, &g("x.w.example")));
        assert!(covers(&c, &g("*.w.example")));
        assert!(covers(&c, &HostPattern::Any));
        assert!(!covers(&c, &g("b.example")));
        assert!(!covers(&c, &g("*.example")));
    }
}
