//! A self-signed certificate for the TLS benchmark, generated with rcgen
//! (ring backend), so that nothing beyond the Rust toolchain is needed: one
//! ECDSA P-256 key, valid for `localhost` and `127.0.0.1`, written as the
//! PEM files each proxy wants.
//!
//! ECDSA P-256 because it is what a modern deployment serves and every
//! proxy compared signs it with an optimised implementation (OpenSSL's and
//! ring's P-256 code): the handshake figures compare the proxies, not RSA
//! implementations.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustls::pki_types::CertificateDer;

/// The names the certificate is valid for; the handshake driver sends the
/// first as SNI.
pub const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The certificate's files, and the certificate itself for the clients
/// that pin it.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate, PEM (our balancer's `[tls] cert`, nginx's
    /// `ssl_certificate`).
    pub cert: PathBuf,
    /// The PKCS#8 private key, PEM (`[tls] key`, `ssl_certificate_key`).
    pub key: PathBuf,
    /// Certificate and key in one PEM file: HAProxy's `crt` wants both.
    pub combined: PathBuf,
    /// The certificate in DER, for clients that pin it.
    pub der: CertificateDer<'static>,
}

impl CertFiles {
    /// Generates a fresh key and certificate into `dir` (`cert.pem`,
    /// `key.pem`, `combined.pem`).
    pub fn generate(dir: &Path) -> Result<CertFiles> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate an ECDSA P-256 key")?;
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .and_then(|p| p.self_signed(&key))
            .context("cannot generate a self-signed certificate")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            combined: dir.join("combined.pem"),
            der: cert.der().clone(),
        };
        for (path, text) in [
            (&files.cert, cert_pem.clone()),
            (&files.key, key_pem.clone()),
            (&files.combined, combined(&cert_pem, &key_pem)),
        ] {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(files)
    }
}

/// HAProxy's `crt` file: the certificate, then the key, each ending in a
/// newline so that the two PEM blocks never share a line.
fn combined(cert_pem: &str, key_pem: &str) -> String {
    let mut s = String::with_capacity(cert_pem.len() + key_pem.len() + 2);
    for block in [cert_pem, key_pem] {
        s.push_str(block);
        if !block.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{combined, CertFiles};

    #[test]
    fn combined_pem_keeps_blocks_on_their_own_lines() {
        assert_eq!(combined("C", "K"), "C\nK\n");
        assert_eq!(combined("C\n", "K\n"), "C\nK\n");
    }

    #[test]
    fn generates_the_files_each_proxy_reads() {
        let dir = std::env::temp_dir().join(format!("bench-certs-{}", std::process::id()));
        let f = CertFiles::generate(&dir).unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        let (cert, key, both) = (read(&f.cert), read(&f.key), read(&f.combined));
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"), "{cert}");
        assert!(cert.trim_end().ends_with("-----END CERTIFICATE-----"));
        // PKCS#8, which OpenSSL (nginx, HAProxy) and rustls all read.
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key}");
        assert_eq!(both, format!("{cert}{key}"));
        // The DER is the certificate the PEM file holds (same length once
        // base64-decoded: 4 characters per 3 bytes, padding aside).
        let b64: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
        let pad = b64.chars().rev().take_while(|&c| c == '=').count();
        assert_eq!(b64.len() / 4 * 3 - pad, f.der.len());
        // A second run makes a different key.
        let g = CertFiles::generate(&dir.join("again")).unwrap();
        assert_ne!(read(&g.key), key);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
