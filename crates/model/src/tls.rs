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
//!
//! One hostname entry may hold several certificates (a listener with several
//! `certificateRefs`, Ingress `spec.tls` entries for the same host): the
//! handshake takes the one whose subjectAltNames match the SNI best (exact
//! name, then the most specific wildcard), and among equally good ones the
//! first whose key can sign with a scheme the client offers, so an ECDSA and
//! an RSA certificate for the same names serve each client the one it can
//! use (ECDSA first when listed first).

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
    /// The certificate's DNS subjectAltNames (wildcards cover one label),
    /// for choosing among several certificates of one hostname entry.
    pub names: Vec<HostPattern>,
}

/// The certificates one hostname entry answers with, in configuration
/// order, each with its subjectAltNames.
#[derive(Debug, Default)]
struct Choice {
    certs: Vec<(Vec<HostPattern>, Certificate)>,
}

/// The SNI → certificate index of one socket.
#[derive(Debug, Default)]
pub struct SniCerts {
    exact: HashMap<String, Choice>,
    /// Most specific first.
    wildcards: Vec<(HostPattern, Choice)>,
    default: Option<Choice>,
    len: usize,
}

// === impl SniCerts ===

impl SniCerts {
    /// Builds the index from `(host, listener order, certificate, its
    /// names)`; among equal hostnames the lowest order wins, and the
    /// certificates of that order (in input order) are chosen from per
    /// handshake.
    pub(crate) fn build(mut certs: Vec<(HostPattern, u32, Certificate, Vec<HostPattern>)>) -> Self {
        certs.sort_by(|a, b| b.0.specificity().cmp(&a.0.specificity()).then(a.1.cmp(&b.1)));
        let mut out = Self { len: certs.len(), ..Self::default() };
        let mut exact: HashMap<String, (u32, Choice)> = HashMap::new();
        let mut wildcards: Vec<(HostPattern, u32, Choice)> = Vec::new();
        let mut default: Option<(u32, Choice)> = None;
        for (host, order, cert, names) in certs {
            let slot = match host {
                HostPattern::Exact(h) => exact.entry(h).or_insert_with(|| (order, Choice::default())),
                HostPattern::Any => default.get_or_insert_with(|| (order, Choice::default())),
                w @ HostPattern::Wildcard { .. } => {
                    let i = wildcards.iter().position(|(p, ..)| *p == w).unwrap_or_else(|| {
                        wildcards.push((w, order, Choice::default()));
                        wildcards.len() - 1
                    });
                    let (_, o, c) = &mut wildcards[i];
                    if *o == order {
                        c.certs.push((names, cert));
                    }
                    continue;
                }
            };
            if slot.0 == order {
                slot.1.certs.push((names, cert));
            }
        }
        out.exact = exact.into_iter().map(|(h, (_, c))| (h, c)).collect();
        out.wildcards = wildcards.into_iter().map(|(w, _, c)| (w, c)).collect();
        out.default = default.map(|(_, c)| c);
        out
    }

    /// The certificate for `sni` (lowercase, no trailing dot): exact, most
    /// specific wildcard, then the catch-all; within that entry the best
    /// subjectAltName match a key offered `schemes` can sign. `None`
    /// refuses the handshake.
    pub fn resolve(&self, sni: Option<&str>, schemes: &[rustls::SignatureScheme]) -> Option<&Certificate> {
        let choice = sni
            .and_then(|name| {
                self.exact.get(name).or_else(|| self.wildcards.iter().find(|(p, _)| p.matches(name)).map(|(_, c)| c))
            })
            .or(self.default.as_ref())?;
        choice.pick(sni, schemes)
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

// === impl Choice ===

impl Choice {
    fn pick(&self, sni: Option<&str>, schemes: &[rustls::SignatureScheme]) -> Option<&Certificate> {
        match self.certs.as_slice() {
            [] => None,
            [(_, only)] => Some(only),
            all => {
                let rank = |names: &[HostPattern]| {
                    sni.and_then(|s| names.iter().filter(|n| n.matches(s)).map(HostPattern::specificity).max())
                };
                let best = all.iter().map(|(n, _)| rank(n)).max().flatten();
                let mut equal = all.iter().filter(|(n, _)| rank(n) == best);
                let signs = equal.clone().find(|(_, c)| c.key.choose_scheme(schemes).is_some());
                signs.or_else(|| equal.next()).map(|(_, c)| c)
            }
        }
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
    use rustls::{SignatureAlgorithm, SignatureScheme};

    use super::*;

    /// A certificate tagged `tag` (its DER's first byte) whose key signs
    /// with the schemes of `algorithm`.
    fn keyed(tag: u8, algorithm: SignatureAlgorithm) -> Certificate {
        #[derive(Debug)]
        struct Key(SignatureAlgorithm);
        #[derive(Debug)]
        struct Signs(SignatureScheme);
        impl rustls::sign::Signer for Signs {
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, rustls::Error> {
                Ok(Vec::new())
            }
            fn scheme(&self) -> SignatureScheme {
                self.0
            }
        }
        impl rustls::sign::SigningKey for Key {
            fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
                let mine: &[SignatureScheme] = match self.0 {
                    SignatureAlgorithm::ECDSA => &[SignatureScheme::ECDSA_NISTP256_SHA256],
                    _ => &[SignatureScheme::RSA_PSS_SHA256, SignatureScheme::RSA_PKCS1_SHA256],
                };
                offered.iter().find(|s| mine.contains(s)).map(|&s| Box::new(Signs(s)) as Box<dyn rustls::sign::Signer>)
            }
            fn algorithm(&self) -> SignatureAlgorithm {
                self.0
            }
        }
        let der = rustls::pki_types::CertificateDer::from(vec![tag]);
        Arc::new(rustls::sign::CertifiedKey::new(vec![der], Arc::new(Key(algorithm))))
    }

    fn cert(tag: u8) -> Certificate {
        keyed(tag, SignatureAlgorithm::ECDSA)
    }

    fn tag(c: Option<&Certificate>) -> Option<u8> {
        c.and_then(|c| c.cert.first()).and_then(|d| d.as_ref().first().copied())
    }

    const ANY: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::RSA_PSS_SHA256];

    #[test]
    fn longest_match_wins_then_catch_all() {
        let g = |h: &str| HostPattern::gateway(Some(h));
        let sni = SniCerts::build(vec![
            (HostPattern::Any, 0, cert(0), vec![]),
            (g("*.example.com"), 1, cert(1), vec![]),
            (g("*.a.example.com"), 2, cert(2), vec![]),
            (g("www.a.example.com"), 3, cert(3), vec![]),
            (g("www.a.example.com"), 4, cert(4), vec![]),
        ]);
        let r = |name| tag(sni.resolve(name, ANY));
        assert_eq!(r(Some("www.a.example.com")), Some(3), "exact, lowest order");
        assert_eq!(r(Some("x.a.example.com")), Some(2), "more specific wildcard");
        assert_eq!(r(Some("x.b.example.com")), Some(1));
        assert_eq!(r(Some("example.com")), Some(0), "wildcard never matches its apex");
        assert_eq!(r(None), Some(0), "no SNI: catch-all");
        assert_eq!(sni.len(), 5);
    }

    #[test]
    fn without_catch_all_unknown_names_are_refused() {
        let sni = SniCerts::build(vec![(HostPattern::ingress(Some("*.foo.com")), 0, cert(7), vec![])]);
        assert_eq!(tag(sni.resolve(Some("bar.foo.com"), ANY)), Some(7));
        assert_eq!(tag(sni.resolve(Some("baz.bar.foo.com"), ANY)), None, "Ingress wildcards cover one label");
        assert_eq!(tag(sni.resolve(None, ANY)), None);
        assert!(SniCerts::default().is_empty());
    }

    #[test]
    fn several_certificates_of_one_entry_are_chosen_by_their_names_then_by_key_type() {
        let n = |names: &[&str]| names.iter().map(|h| HostPattern::ingress(Some(h))).collect::<Vec<_>>();
        let sni = SniCerts::build(vec![
            // One listener without hostname (order 0), four certificateRefs.
            (HostPattern::Any, 0, cert(1), n(&["a.example.com"])),
            (HostPattern::Any, 0, cert(2), n(&["*.example.com"])),
            (HostPattern::Any, 0, keyed(3, SignatureAlgorithm::ECDSA), n(&["b.example.com", "c.example.com"])),
            (HostPattern::Any, 0, keyed(4, SignatureAlgorithm::RSA), n(&["b.example.com", "c.example.com"])),
            // A later listener's certificate for the same entry never wins.
            (HostPattern::Any, 1, cert(9), n(&["d.other.test"])),
        ]);
        let ecdsa = &[SignatureScheme::ECDSA_NISTP256_SHA256][..];
        let rsa = &[SignatureScheme::RSA_PSS_SHA256][..];
        let r = |name, schemes| tag(sni.resolve(name, schemes));
        assert_eq!(r(Some("a.example.com"), ANY), Some(1), "exact name before the wildcard");
        assert_eq!(r(Some("x.example.com"), ANY), Some(2), "wildcard name");
        assert_eq!(r(Some("b.example.com"), ANY), Some(3), "both keys usable: the first listed");
        assert_eq!(r(Some("c.example.com"), rsa), Some(4), "an RSA-only client gets the RSA certificate");
        assert_eq!(r(Some("c.example.com"), ecdsa), Some(3));
        assert_eq!(r(Some("x.y.example.com"), ANY), Some(1), "no name matches: the first certificate");
        assert_eq!(r(Some("d.other.test"), ANY), Some(1), "only the first listener's certificates");
        assert_eq!(r(None, ANY), Some(1), "no SNI: the first certificate");
        assert_eq!(r(None, rsa), Some(4), "no SNI, RSA-only client: the first RSA certificate");
    }
}
