//! TLS termination: the certificates, the rustls server configuration and
//! the resolver that picks a certificate for each handshake.
//!
//! - [`load_pair`] reads a PEM chain and its private key and checks that
//!   they belong together; `config` calls it, so `--check` and a reload
//!   meet a bad certificate as a config error, before anything is served.
//! - [`Certs`]: the default certificate and the extra ones chosen by SNI
//!   (exact names, then `*.example.com` wildcards), as the validated
//!   configuration holds them.
//! - [`Terminator`]: the `ServerConfig` (rustls with the `ring` provider,
//!   TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, session tickets) and
//!   the resolver that picks from the table, behind an `ArcSwap`: a reload
//!   with other certificates swaps in a new configuration, new handshakes
//!   get the new certificates, established connections keep theirs and
//!   are not dropped.
//!
//! Serving a TLS connection (the handshake under the header timeout, then
//! HTTP/2 or HTTP/1.1 by ALPN) is `server`'s; accepting it is
//! [`crate::listener`]'s.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The largest PEM file read: a chain is a few KiB; the bound keeps a
/// path such as `/dev/zero` from exhausting memory.
const MAX_PEM: u64 = 1 << 20;

/// ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS facts of a connection, for whoever serves its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The name the client asked for (SNI), lower-cased; `None` when it
    /// sent none (a client connecting by IP address).
    pub sni: Option<Box<str>>,
    /// Whether ALPN chose HTTP/2.
    pub h2: bool,
    /// `"TLSv1.2"` or `"TLSv1.3"`.
    pub version: &'static str,
}

impl TlsInfo {
    /// The facts of an established connection.
    pub(crate) fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        TlsInfo {
            sni: conn.server_name().map(Box::from),
            h2: conn.alpn_protocol() == Some(b"h2"),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                _ => "TLSv1.2",
            },
        }
    }
}

/// Which of a certificate's two files a [`LoadError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The PEM certificate chain.
    Cert,
    /// The PEM private key.
    Key,
}

/// A certificate or key that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// The file at fault, so that the config error points at its key.
    pub file: PemFile,
    /// What is wrong, naming the file.
    pub message: String,
}

/// A certificate chain and its key, as loaded from two PEM files.
#[derive(Clone)]
pub struct Pair {
    /// The chain's file (resolved against the config file's directory).
    pub cert: PathBuf,
    /// The key's file.
    pub key: PathBuf,
    /// The chain and the signing key, as rustls serves them.
    pub certified: Arc<CertifiedKey>,
}

impl PartialEq for Pair {
    /// Same files and the same certificates: a reload that re-reads
    /// unchanged files compares equal.
    fn eq(&self, other: &Pair) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.certified.cert == other.certified.cert
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("chain_len", &self.certified.cert.len())
            .finish()
    }
}

/// The provider every certificate and handshake uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM chain at `cert` and the PEM private key at `key` (PKCS#8,
/// PKCS#1 or SEC1) and checks that the key is the certificate's.
///
/// # Errors
///
/// A file that cannot be read, holds no PEM item of the kind expected,
/// holds an unparsable certificate or an unsupported key, or a key that
/// does not match the certificate.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, LoadError> {
    let fail = |file, message| LoadError { file, message };
    let cert_pem = read_bounded(cert).map_err(|m| fail(PemFile::Cert, m))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(PemFile::Cert, pem_error(cert, "certificate", &e)))?;
    let Some(leaf) = chain.first() else {
        return Err(fail(
            PemFile::Cert,
            format!(
                "{}: no certificate found (expected a PEM \"-----BEGIN CERTIFICATE-----\" block)",
                cert.display()
            ),
        ));
    };
    ParsedCertificate::try_from(leaf).map_err(|e| {
        fail(
            PemFile::Cert,
            format!("{}: the first certificate is invalid: {e}", cert.display()),
        )
    })?;
    let key_pem = read_bounded(key).map_err(|m| fail(PemFile::Key, m))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let mut message = pem_error(key, "private key", &e);
        if matches!(e, pem::Error::NoItemsFound) {
            message.push_str(
                " (expected \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
            );
        }
        fail(PemFile::Key, message)
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{}: this key does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
            other => format!("{}: unusable private key: {other}", key.display()),
        };
        fail(PemFile::Key, message)
    })?;
    Ok(Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        certified: Arc::new(certified),
    })
}

/// The file at `path`, at most [`MAX_PEM`] bytes; the error names it.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!(
            "{}: larger than {} KiB, which no PEM certificate or key is",
            path.display(),
            MAX_PEM / 1024
        ));
    }
    Ok(bytes)
}

fn pem_error(path: &Path, what: &str, e: &pem::Error) -> String {
    let why = match e {
        pem::Error::NoItemsFound => return format!("{}: no {what} found", path.display()),
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "bad \"-----BEGIN\" line {:?}",
            String::from_utf8_lossy(line).trim()
        ),
        other => other.to_string(),
    };
    format!("{}: not a valid PEM {what}: {why}", path.display())
}

/// Whether the certificate of `pair` is valid for `name`: an exact DNS
/// name, or `*.suffix` (then checked with a name under `suffix`, which only
/// a wildcard certificate covers).
pub fn covers(pair: &Pair, name: &str) -> bool {
    let probe = match name.strip_prefix("*.") {
        Some(suffix) => format!("wildcard-probe.{suffix}"),
        None => name.to_owned(),
    };
    let Ok(server_name) = ServerName::try_from(probe) else {
        return false;
    };
    pair.certified
        .end_entity_cert()
        .ok()
        .and_then(|leaf| ParsedCertificate::try_from(leaf).ok())
        .is_some_and(|parsed| rustls::client::verify_server_name(&parsed, &server_name).is_ok())
}

/// One `[[tls.sni]]` entry: the names it serves and its certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct SniCert {
    /// Lower-cased exact names and `*.suffix` wildcards.
    pub names: Vec<String>,
    /// The certificate those names get.
    pub pair: Pair,
}

/// The certificates a TLS listener serves: the default and those chosen by
/// SNI, indexed for the handshake.
#[derive(Clone)]
pub struct Certs {
    /// Served when the client sent no SNI or a name no entry lists.
    pub default: Pair,
    /// The extra certificates, in file order.
    pub sni: Vec<SniCert>,
    /// Exact name → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `suffix` of `*.suffix` → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    /// The table for `default` and `sni`, whose names are valid, lower-case
    /// and listed once (the config checks that).
    pub fn new(default: Pair, sni: Vec<SniCert>) -> Certs {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for entry in &sni {
            for name in &entry.names {
                let certified = Arc::clone(&entry.pair.certified);
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_owned(), certified),
                    None => exact.insert(name.clone(), certified),
                };
            }
        }
        Certs {
            default,
            sni,
            exact,
            wildcard,
        }
    }

    /// The certificate for a client that asked for `name`: an exact entry,
    /// else a wildcard one for its parent (one label only, as RFC 6125
    /// §6.4.3 matches `*`), else the default.
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default.certified;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default.certified)
    }
}

impl PartialEq for Certs {
    /// The indexes follow from `default` and `sni`.
    fn eq(&self, other: &Certs) -> bool {
        self.default == other.default && self.sni == other.sni
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("default", &self.default)
            .field("sni", &self.sni)
            .finish()
    }
}

/// Picks each handshake's certificate from one table.
#[derive(Debug)]
struct Resolver(Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.pick(hello.server_name())))
    }
}

/// The TLS side of a listener: the rustls configuration every handshake
/// runs with, swapped whole when a reload brings other certificates.
///
/// Whole, not only the certificates: the new configuration comes with new
/// session-ticket keys and an empty session cache, so no client resumes a
/// session made under the old certificate (a key replaced after a leak
/// must stop vouching for anyone at once), as nginx's reload does. A
/// reload that leaves the certificates as they were keeps the
/// configuration, and so the clients' resumption.
pub struct Terminator {
    current: ArcSwap<Served>,
}

/// A rustls configuration and the certificates it serves.
struct Served {
    config: Arc<ServerConfig>,
    certs: Arc<Certs>,
}

impl Terminator {
    /// A terminator serving `certs`.
    pub fn new(certs: Arc<Certs>) -> Terminator {
        Terminator {
            current: ArcSwap::from_pointee(Served::new(certs)),
        }
    }

    /// Serves `certs` to new handshakes from now on; established
    /// connections keep the certificate they were given. Returns whether
    /// they differ from those served until now.
    pub fn set_certs(&self, certs: Arc<Certs>) -> bool {
        if *self.current.load().certs == *certs {
            return false;
        }
        self.current.store(Arc::new(Served::new(certs)));
        true
    }

    /// The certificates served now.
    pub fn certs(&self) -> Arc<Certs> {
        Arc::clone(&self.current.load().certs)
    }

    /// The acceptor a new connection's handshake runs through.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.load().config))
    }
}

impl Served {
    fn new(certs: Arc<Certs>) -> Served {
        let resolver = Arc::new(Resolver(Arc::clone(&certs)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption (TLS 1.2 tickets; TLS 1.3 tickets then carry
        // the state too), with keys rotated every 6 hours; without it a
        // returning client resumes only from the 256-entry session cache.
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(e) => tracing::warn!("TLS session tickets off: {e}"),
        }
        Served {
            config: Arc::new(config),
            certs,
        }
    }
}

impl fmt::Debug for Terminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminator")
            .field("certs", &self.current.load().certs)
            .finish()
    }
}

#[cfg(test)]
mod tests;
