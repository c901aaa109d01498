//! The `[tls]` table of `lb.toml`: its typed form and its validation,
//! which loads the certificates (so `--check`, the start and a reload all
//! refuse a missing file, a file that is not PEM, a key that is not the
//! certificate's, or an SNI name listed twice, naming the file and key).
//!
//! Relative certificate paths are resolved against the config file's
//! directory, as nginx resolves them against its configuration prefix.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::raw::{RawSni, RawTls};
use super::{addr, err, Check};
use crate::tls::{self, Certs, Pair, PemFile, SniCert};

/// The contract's defaults.
const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
const DEFAULT_CERT: &str = "/etc/balancer/cert.pem";
const DEFAULT_KEY: &str = "/etc/balancer/key.pem";

/// `[tls]`: the TLS listener and its certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Where TLS clients connect.
    pub listen: SocketAddr,
    /// The certificates, loaded and checked.
    pub certs: Arc<Certs>,
    /// The plain `listen` answers every request with `308` to `https://`.
    pub redirect_http: bool,
}

/// `[tls]`, when present; `base` is the config file's directory.
pub(super) fn tls(raw: Option<Spanned<RawTls>>, base: &Path) -> Check<Option<Tls>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let table = raw.span();
    let raw = raw.into_inner();
    let listen = match &raw.listen {
        Some(s) => addr("[tls] listen", s)?,
        None => DEFAULT_LISTEN.parse().expect("the default is an address"),
    };
    let cert = file_or_default(raw.cert, DEFAULT_CERT, &table);
    let key = file_or_default(raw.key, DEFAULT_KEY, &table);
    let default = load("[tls]", &cert, &key, base)?;

    let mut sni = Vec::with_capacity(raw.sni.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, entry) in raw.sni.into_iter().enumerate() {
        let entry_span = entry.span();
        sni.push(sni_entry(
            i,
            entry.into_inner(),
            entry_span,
            base,
            &mut seen,
        )?);
    }
    Ok(Some(Tls {
        listen,
        certs: Arc::new(Certs::new(default, sni)),
        redirect_http: raw.redirect_http.unwrap_or(false),
    }))
}

/// One `sni` entry: valid, unique names its certificate covers.
fn sni_entry(
    i: usize,
    raw: RawSni,
    span: Range<usize>,
    base: &Path,
    seen: &mut HashMap<String, usize>,
) -> Check<SniCert> {
    let key = format!("[tls] sni[{i}]");
    let pair = load(&key, &raw.cert, &raw.key, base)?;
    let names_span = raw.names.span();
    let raw_names = raw.names.into_inner();
    if raw_names.is_empty() {
        let span = if names_span.is_empty() {
            span
        } else {
            names_span
        };
        return err(
            span,
            format!("{key} names: the list is empty; name at least one host, such as \"api.example.com\" or \"*.example.com\""),
        );
    }
    let mut names = Vec::with_capacity(raw_names.len());
    for name in raw_names {
        let lower = name.get_ref().to_ascii_lowercase();
        if !valid_name(&lower) {
            return err(
                name.span(),
                format!(
                    "{key} names: {:?} is not a host name; write \"api.example.com\" or \"*.example.com\" (a wildcard stands for one whole leftmost label)",
                    name.get_ref()
                ),
            );
        }
        if let Some(first) = seen.insert(lower.clone(), i) {
            return err(
                name.span(),
                format!("{key} names: {lower:?} is already listed in [tls] sni[{first}]; each name gets one certificate"),
            );
        }
        if !tls::covers(&pair, &lower) {
            return err(
                name.span(),
                format!(
                    "{key} names: the certificate in {} is not valid for {lower:?} (no matching subjectAltName)",
                    pair.cert.display()
                ),
            );
        }
        names.push(lower);
    }
    Ok(SniCert { names, pair })
}

/// A DNS name, or `*.` and a DNS name with at least two labels (no
/// wildcard for a whole top-level domain).
fn valid_name(name: &str) -> bool {
    let dns = |n: &str| rustls::pki_types::DnsName::try_from(n).is_ok() && !n.ends_with('.');
    match name.strip_prefix("*.") {
        Some(suffix) => suffix.contains('.') && dns(suffix),
        None => !name.contains('*') && dns(name),
    }
}

/// The configured path, or the contract's default pointing at the table.
fn file_or_default(
    s: Option<Spanned<String>>,
    default: &str,
    table: &Range<usize>,
) -> Spanned<String> {
    s.unwrap_or_else(|| Spanned::new(table.clone(), default.to_owned()))
}

/// Loads the pair named by `cert` and `key`, the error pointing at the one
/// at fault.
fn load(key_name: &str, cert: &Spanned<String>, key: &Spanned<String>, base: &Path) -> Check<Pair> {
    for (which, s) in [("cert", cert), ("key", key)] {
        if s.get_ref().trim().is_empty() {
            return err(
                s.span(),
                format!("{key_name} {which}: empty; name a PEM file"),
            );
        }
    }
    let (cert_path, key_path) = (resolve(base, cert.get_ref()), resolve(base, key.get_ref()));
    tls::load_pair(&cert_path, &key_path).or_else(|e| {
        let (which, at) = match e.file {
            PemFile::Cert => ("cert", cert),
            PemFile::Key => ("key", key),
        };
        err(at.span(), format!("{key_name} {which}: {}", e.message))
    })
}

/// `path`, relative to `base` unless absolute.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl super::Config {
    /// The `--check` summary's TLS line.
    pub(super) fn tls_summary(&self) -> String {
        let Some(tls) = &self.tls else {
            return "tls off".to_owned();
        };
        let certs = &tls.certs;
        let mut s = format!(
            "tls on {} (TLS 1.2/1.3, ALPN h2 + http/1.1): certificate {}",
            tls.listen,
            certs.default.cert.display()
        );
        for entry in &certs.sni {
            s.push_str(&format!(
                "; {} for {}",
                entry.pair.cert.display(),
                entry.names.join(", ")
            ));
        }
        if tls.redirect_http {
            s.push_str("; plain HTTP redirected to https://");
        }
        s
    }
}
