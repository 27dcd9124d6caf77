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
                warnings.extend(expiry_warning(&c, ns, &r.name, std::time::SystemTime::now()));
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

/// The certificate's DNS subjectAltNames as host patterns (a TLS wildcard
/// covers one label), parsed once here so that a handshake choosing among
/// several certificates compares names, never DER.
pub(super) fn names(cert: &Certificate) -> Vec<sluice_model::HostPattern> {
    let Some(der) = cert.cert.first() else { return Vec::new() };
    webpki::EndEntityCert::try_from(der)
        .map(|ee| ee.valid_dns_names().map(|n| sluice_model::HostPattern::ingress(Some(n))).collect())
        .unwrap_or_default()
}

/// The warning for a certificate that does not cover a hostname.
pub(super) fn uncovered(ns: &str, secret: &str, host: &sluice_model::HostPattern) -> String {
    format!("the certificate in Secret {ns}/{secret} does not cover {host}: clients that check names will refuse it")
}

/// Certificates whose `notAfter` is closer than this get a warning
/// (cert-manager renews 30 days ahead by default, so a certificate this
/// close to expiry means renewal is failing).
pub(super) const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// The warning for a certificate that has expired or expires within
/// [`EXPIRY_WARNING`] of `now` (Sluice keeps serving it: refusing the
/// handshake would not help the clients that accept it). The text names
/// the date, not a countdown, so it changes only when the certificate does.
pub(super) fn expiry_warning(cert: &Certificate, ns: &str, secret: &str, now: std::time::SystemTime) -> Option<String> {
    let not_after = not_after(cert.cert.first()?)?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let date = format_utc(not_after);
    if not_after <= now {
        Some(format!("the certificate in Secret {ns}/{secret} expired at {date}: clients that check dates refuse it"))
    } else if not_after - now < EXPIRY_WARNING.as_secs() {
        Some(format!("the certificate in Secret {ns}/{secret} expires at {date}, in less than 14 days"))
    } else {
        None
    }
}

/// `notAfter` of an X.509 certificate as Unix seconds, read with a minimal
/// DER walk (Certificate → tbsCertificate → validity).
fn not_after(der: &[u8]) -> Option<u64> {
    let (_, cert, _) = der_element(der)?;
    let (_, tbs, _) = der_element(cert)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = der_element(rest)?.2;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after) = der_element(validity)?;
    let (tag, time, _) = der_element(after)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

/// One DER element: (tag, content, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, tag 0x18) to Unix seconds.
fn parse_time(tag: u8, s: &str) -> Option<u64> {
    let digits = s.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, digits.get(2..)?)
        }
        (0x18, 14) => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3600 + min * 60 + sec).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
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

    fn pair_valid_until(not_after: (i32, u8, u8)) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("rcgen: {e}"));
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap_or_else(|e| panic!("rcgen: {e}"));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("rcgen: {e}"));
        parse_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn expired_and_expiring_certificates_are_named_with_their_date() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        // 2026-11-22T00:00:00Z
        let now = at(1_795_305_600);
        let expired = pair_valid_until((2026, 11, 1));
        let w = expiry_warning(&expired, "ns", "old", now).unwrap_or_default();
        assert!(w.contains("Secret ns/old expired at 2026-11-01T00:00:00Z"), "{w}");
        let soon = pair_valid_until((2026, 12, 1));
        let w = expiry_warning(&soon, "ns", "soon", now).unwrap_or_default();
        assert!(w.contains("expires at 2026-12-01T00:00:00Z, in less than 14 days"), "{w}");
        assert_eq!(expiry_warning(&pair_valid_until((2027, 3, 1)), "ns", "ok", now), None);
        // GeneralizedTime (years from 2050 on).
        let late = pair_valid_until((2051, 2, 28));
        assert_eq!(
            expiry_warning(&late, "ns", "late", at(2_560_000_000)).map(|w| w.contains("2051-02-28")),
            Some(true)
        );
    }

    #[test]
    fn dates_convert_both_ways() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 11, 22), (2051, 12, 31)] {
            let secs = u64::try_from(days_from_civil(y, m, d) * 86_400).unwrap_or(0);
            assert_eq!(format_utc(secs), format!("{y:04}-{m:02}-{d:02}T00:00:00Z"));
        }
        assert_eq!(days_from_civil(2026, 11, 22) * 86_400, 1_795_305_600);
        assert_eq!(parse_time(0x17, "261122000000Z"), Some(1_795_305_600));
        assert_eq!(parse_time(0x17, "2611220000Z"), None);
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
