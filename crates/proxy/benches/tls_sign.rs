//! The server's signature in a full TLS 1.3 handshake (CertificateVerify),
//! signed the way the handshake signs it: rustls' ring signing key for the
//! certificate's key, the scheme rustls picks, 130 bytes of input (64
//! spaces, the context string, the transcript hash). With an RSA-2048 key
//! this is most of the CPU of a full handshake (see
//! loadtests/results/tls-handshake.md); compare with OpenSSL on the same
//! machine: `openssl speed -seconds 5 rsa2048 ecdsap256` (sign/s).
//!
//! A plain timing loop, not criterion: each case signs for about 3 s and
//! prints the signing thread's CPU time per signature
//! (`/proc/thread-self/schedstat`, updated at scheduler ticks, hence the long
//! runs) next to wall time, because `openssl speed` reports user CPU time
//! unless given `-elapsed`: on a shared machine wall time also counts other
//! processes' slices.
//!
//! Keys are generated per run with `openssl genpkey` (no key in the repo).
//! Run with `cargo bench -p sluice-proxy --bench tls_sign` (`taskset -c 0` to pin it).

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// CPU time this thread has run, if the kernel says.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

fn main() {
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
        let sign = || black_box(signer.sign(black_box(&message)).unwrap_or_else(|e| panic!("sign: {e}")));
        for _ in 0..20 {
            sign();
        }
        let (cpu0, wall0) = (thread_cpu(), Instant::now());
        let mut n = 0u32;
        while wall0.elapsed() < Duration::from_secs(3) || n < 100 {
            sign();
            n += 1;
        }
        let wall = wall0.elapsed() / n;
        let cpu = thread_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a) / n);
        let per_s = |d: Duration| 1.0 / d.as_secs_f64().max(1e-12);
        match cpu {
            Some(cpu) => println!(
                "ring_sign_{name}: {n} signatures, cpu {cpu:.1?}/sign ({:.0}/s), wall {wall:.1?}/sign ({:.0}/s)",
                per_s(cpu),
                per_s(wall)
            ),
            None => println!("ring_sign_{name}: {n} signatures, wall {wall:.1?}/sign ({:.0}/s)", per_s(wall)),
        }
    }
}
