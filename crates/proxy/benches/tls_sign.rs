//! The server's signature in a full TLS 1.3 handshake (CertificateVerify),
//! signed the way the handshake signs it: rustls' ring signing key for the
//! certificate's key, the scheme rustls picks, 130 bytes of input (64
//! spaces, the context string, the transcript hash). With an RSA-2048 key
//! this is most of the CPU of a full handshake (see
//! loadtests/results/tls-handshake.md); compare with OpenSSL on the same
//! machine: `openssl speed -seconds 5 rsa2048 ecdsap256` (sign/s).
//!
//! Keys are generated per run with `openssl genpkey` (no key in the repo).
//! Run with `cargo bench -p sluice-proxy --bench tls_sign`.

use std::hint::black_box;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::SignatureScheme;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// A fresh private key from `openssl genpkey` with these arguments.
fn key(args: &[&str]) -> PrivateKeyDer<'static> {
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl genpkey (apt-get install openssl): {e}"));
    assert!(out.status.success(), "openssl genpkey {args:?} failed");
    PrivateKeyDer::from_pem_slice(&out.stdout).unwrap_or_else(|e| panic!("openssl key: {e:?}"))
}

fn sign(c: &mut Criterion) {
    let message = [0x20u8; 130];
    let cases = [
        (
            "rsa2048_pss_sha256",
            key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            SignatureScheme::RSA_PSS_SHA256,
        ),
        (
            "ecdsa_p256_sha256",
            key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ),
    ];
    for (name, der, scheme) in cases {
        let key = rustls::crypto::ring::sign::any_supported_type(&der).unwrap_or_else(|e| panic!("{name}: {e}"));
        let signer = key.choose_scheme(&[scheme]).unwrap_or_else(|| panic!("{name}: scheme {scheme:?} refused"));
        c.bench_function(&format!("ring_sign_{name}"), |b| {
            b.iter(|| signer.sign(black_box(&message)).unwrap_or_else(|e| panic!("sign: {e}")));
        });
    }
}

criterion_group!(benches, sign);
criterion_main!(benches);
