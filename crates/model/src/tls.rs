//! TLS certificate selection data: which certificate a socket serves for
//! a given SNI name.
//!
//! Certificates are parsed and checked (key matches certificate) by the
//! controller when the config is compiled; the table only indexes them, so
//! a handshake costs one hash lookup (or a short wildcard scan) and an `Arc`
//! clone, never a parse.
//!
//! Selection (`semantics.md` §1.1, "the longest matching SNI out of all
//! available certificates"): an exact hostname first, then the most specific
//! wildcard (most labels, then longest suffix), then the certificate of a
//! listener without a hostname. Without SNI, or with an SNI no hostname
//! covers, only that last one can answer; without it the handshake is
//! refused (see README, "TLS").

use std::collections::HashMap;
use std::sync::Arc;

use crate::host::HostPattern;

/// A parsed certificate chain with its signing key.
pub type Certificate = Arc<rustls::sign::CertifiedKey>;

/// A certificate served by a listener for SNI names matching `host`.
#[derive(Clone, Debug)]
pub struct CertInput {
    /// Index into [`crate::TableInput::listeners`] (must be an HTTPS
    /// listener).
    pub listener: usize,
    /// SNI names this certificate answers for: the listener hostname for a
    /// Gateway listener, an Ingress `spec.tls[].hosts` entry, or
    /// [`HostPattern::Any`] for the catch-all.
    pub host: HostPattern,
    /// The certificate.
    pub cert: Certificate,
}

/// The SNI → certificate index of one socket.
#[derive(Debug, Default)]
pub struct SniCerts {
    exact: HashMap<String, Certificate>,
    /// Most specific first.
    wildcards: Vec<(HostPattern, Certificate)>,
    default: Option<Certificate>,
    len: usize,
}

// === impl SniCerts ===

impl SniCerts {
    /// Builds the index from `(host, listener order, certificate)`; among
    /// equal hostnames the lowest order wins.
    pub(crate) fn build(mut certs: Vec<(HostPattern, u32, Certificate)>) -> Self {
        certs.sort_by(|a, b| b.0.specificity().cmp(&a.0.specificity()).then(a.1.cmp(&b.1)));
        let mut out = Self { len: certs.len(), ..Self::default() };
        for (host, _, cert) in certs {
            match host {
                HostPattern::Exact(h) => {
                    out.exact.entry(h).or_insert(cert);
                }
                w @ HostPattern::Wildcard { .. } => out.wildcards.push((w, cert)),
                HostPattern::Any => {
                    out.default.get_or_insert(cert);
                }
            }
        }
        out
    }

    /// The certificate for `sni` (lowercase, no trailing dot): exact, most
    /// specific wildcard, then the catch-all. `None` refuses the handshake.
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Certificate> {
        if let Some(name) = sni {
            if let Some(c) = self.exact.get(name) {
                return Some(c);
            }
            if let Some((_, c)) = self.wildcards.iter().find(|(p, _)| p.matches(name)) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }

    /// Whether the socket has no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of certificates indexed (a certificate shared by several
    /// hostnames counts once per hostname).
    pub fn len(&self) -> usize {
        self.len
    }
}

/// TLS to a backend (a Service port with a valid BackendTLSPolicy), built
/// by the controller when the config is compiled: the proxy dials with this
/// client config and SNI and never parses anything per connection.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Client config: trust anchors from the policy's CA ConfigMaps, the
    /// certificate verifier (hostname or `subjectAltNames`), ALPN http/1.1.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI (the policy's `validation.hostname`).
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Fingerprint of the policy content (CA bundle, hostname, SANs): part
    /// of the upstream pool's key, so that a rotated CA opens new
    /// connections while unchanged policies keep their pooled ones.
    pub fingerprint: u64,
}

/// How a backend is spoken to, as far as TLS goes.
#[derive(Clone, Debug)]
pub struct UpstreamTlsInput {
    /// The backend.
    pub backend: crate::BackendId,
    /// Its TLS settings.
    pub tls: Arc<UpstreamTls>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(tag: u8) -> Certificate {
        #[derive(Debug)]
        struct NoKey;
        impl rustls::sign::SigningKey for NoKey {
            fn choose_scheme(&self, _: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        let der = rustls::pki_types::CertificateDer::from(vec![tag]);
        Arc::new(rustls::sign::CertifiedKey::new(vec![der], Arc::new(NoKey)))
    }

    fn tag(c: Option<&Certificate>) -> Option<u8> {
        c.and_then(|c| c.cert.first()).and_then(|d| d.as_ref().first().copied())
    }

    #[test]
    fn longest_match_wins_then_catch_all() {
        let g = |h: &str| HostPattern::gateway(Some(h));
        let sni = SniCerts::build(vec![
            (HostPattern::Any, 0, cert(0)),
            (g("*.example.com"), 1, cert(1)),
            (g("*.a.example.com"), 2, cert(2)),
            (g("www.a.example.com"), 3, cert(3)),
            (g("www.a.example.com"), 4, cert(4)),
        ]);
        assert_eq!(tag(sni.resolve(Some("www.a.example.com"))), Some(3), "exact, lowest order");
        assert_eq!(tag(sni.resolve(Some("x.a.example.com"))), Some(2), "more specific wildcard");
        assert_eq!(tag(sni.resolve(Some("x.b.example.com"))), Some(1));
        assert_eq!(tag(sni.resolve(Some("example.com"))), Some(0), "wildcard never matches its apex");
        assert_eq!(tag(sni.resolve(None)), Some(0), "no SNI: catch-all");
        assert_eq!(sni.len(), 5);
    }

    #[test]
    fn without_catch_all_unknown_names_are_refused() {
        let sni = SniCerts::build(vec![(HostPattern::ingress(Some("*.foo.com")), 0, cert(7))]);
        assert_eq!(tag(sni.resolve(Some("bar.foo.com"))), Some(7));
        assert_eq!(tag(sni.resolve(Some("baz.bar.foo.com"))), None, "Ingress wildcards cover one label");
        assert_eq!(tag(sni.resolve(None)), None);
        assert!(SniCerts::default().is_empty());
    }
}
