//! Loading certificate files, checking names, and picking a certificate
//! by SNI; and the `[tls]` config errors, which name the file and key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A fresh directory for one test's files, removed on drop.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lb-tls-unit-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Writes a self-signed certificate for `names` and its key as
/// `<stem>.pem` and `<stem>.key` in `dir`.
fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn a_matching_pair_loads_and_covers_its_names() {
    let dir = scratch();
    let (cert, key) = write_pair(&dir, "a", &["api.example.com", "*.apps.example.com"]);
    let pair = load_pair(&cert, &key).unwrap();
    assert_eq!(pair.certified.cert.len(), 1);
    assert!(covers(&pair, "api.example.com"));
    assert!(covers(&pair, "x.apps.example.com"));
    assert!(covers(&pair, "*.apps.example.com"));
    assert!(!covers(&pair, "www.example.com"));
    assert!(
        !covers(&pair, "*.example.com"),
        "an exact name is no wildcard"
    );
}

#[test]
fn bad_files_are_refused_naming_the_file_at_fault() {
    let dir = scratch();
    let (cert, key) = write_pair(&dir, "a", &["a.example"]);
    let (_, other_key) = write_pair(&dir, "b", &["b.example"]);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello, I am not a certificate\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let junk_der = dir.join("junk.pem");
    std::fs::write(
        &junk_der,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.join("missing.pem");
    for (c, k, file, says) in [
        (&missing, &key, PemFile::Cert, "cannot read"),
        (&garbage, &key, PemFile::Cert, "no certificate found"),
        (&broken, &key, PemFile::Cert, "not a valid PEM certificate"),
        (
            &junk_der,
            &key,
            PemFile::Cert,
            "the first certificate is invalid",
        ),
        (&cert, &missing, PemFile::Key, "cannot read"),
        (&cert, &garbage, PemFile::Key, "no private key found"),
        // The files swapped: the "key" file holds a certificate.
        (&cert, &cert, PemFile::Key, "no private key found"),
        (
            &cert,
            &other_key,
            PemFile::Key,
            "does not belong to the certificate",
        ),
    ] {
        let e = load_pair(c, k)
            .err()
            .unwrap_or_else(|| panic!("{c:?} {k:?} loaded"));
        assert_eq!(e.file, file, "{}", e.message);
        let named = if file == PemFile::Cert { c } else { k };
        assert!(
            e.message.contains(&named.display().to_string()) && e.message.contains(says),
            "{c:?} {k:?}: {}",
            e.message
        );
    }
}

#[test]
fn sni_picks_exact_then_one_level_wildcard_then_the_default() {
    let dir = scratch();
    let (c, k) = write_pair(&dir, "default", &["default.example"]);
    let (ac, ak) = write_pair(&dir, "api", &["api.example.com"]);
    let (wc, wk) = write_pair(&dir, "wild", &["*.example.com"]);
    let default = load_pair(&c, &k).unwrap();
    let api = load_pair(&ac, &ak).unwrap();
    let wild = load_pair(&wc, &wk).unwrap();
    let certs = Certs::new(
        default.clone(),
        vec![
            SniCert {
                names: vec!["api.example.com".into()],
                pair: api.clone(),
            },
            SniCert {
                names: vec!["*.example.com".into()],
                pair: wild.clone(),
            },
        ],
    );
    for (sni, want) in [
        (None, &default),
        (Some("api.example.com"), &api),
        (Some("API.Example.COM"), &api),
        (Some("api.example.com."), &api),
        (Some("www.example.com"), &wild),
        (Some("example.com"), &default),
        (Some("a.b.example.com"), &default),
        (Some("other.test"), &default),
    ] {
        let got = certs.pick(sni);
        assert!(Arc::ptr_eq(got, &want.certified), "{sni:?}");
    }
}

/// `[tls]` over the pair in `dir`, with `extra` lines.
fn config(dir: &Path, tls: &str) -> Result<crate::Config, crate::ConfigError> {
    let text = format!(
        "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n\n[tls]\nlisten = \"127.0.0.1:8443\"\n{tls}"
    );
    crate::Config::parse(&text, &dir.join("lb.toml"))
}

#[test]
fn the_tls_table_loads_relative_paths_and_summarises() {
    let dir = scratch();
    write_pair(&dir, "site", &["site.example"]);
    write_pair(&dir, "api", &["api.example", "*.api.example"]);
    let c = config(
        &dir,
        "cert = \"site.pem\"\nkey = \"site.key\"\nredirect_http = true\nsni = [{ names = [\"API.example\", \"*.api.example\"], cert = \"api.pem\", key = \"api.key\" }]\n",
    )
    .unwrap();
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.listen, "127.0.0.1:8443".parse().unwrap());
    assert!(tls.redirect_http);
    assert_eq!(tls.certs.default.cert, dir.join("site.pem"));
    assert_eq!(tls.certs.sni[0].names, ["api.example", "*.api.example"]);
    let summary = c.summary();
    assert!(summary.contains("tls on 127.0.0.1:8443"), "{summary}");
    assert!(summary.contains("api.example, *.api.example"), "{summary}");
    // Same files re-read: equal, so a reload of an unchanged file is a no-op.
    assert_eq!(
        c,
        config(
            &dir,
            "cert = \"site.pem\"\nkey = \"site.key\"\nredirect_http = true\nsni = [{ names = [\"api.example\", \"*.api.example\"], cert = \"api.pem\", key = \"api.key\" }]\n",
        )
        .unwrap()
    );
    let plain = crate::Config::parse(
        "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n",
        Path::new("lb.toml"),
    )
    .unwrap();
    assert!(plain.tls.is_none());
    assert!(plain.summary().contains("tls off"));
}

#[test]
fn tls_config_errors_name_the_line_the_key_and_the_file() {
    let dir = scratch();
    write_pair(&dir, "site", &["site.example"]);
    write_pair(&dir, "other", &["other.example"]);
    write_pair(&dir, "api", &["api.example"]);
    std::fs::write(dir.join("garbage.pem"), "garbage\n").unwrap();
    let lb = dir.join("lb.toml").display().to_string();
    let ok = "cert = \"site.pem\"\nkey = \"site.key\"\n";
    let api = "cert = \"api.pem\", key = \"api.key\"";
    for (tls, line, says) in [
        ("cert = \"nope.pem\"\nkey = \"site.key\"\n", 6, vec!["[tls] cert", "nope.pem", "cannot read"]),
        ("cert = \"garbage.pem\"\nkey = \"site.key\"\n", 6, vec!["[tls] cert", "garbage.pem", "no certificate"]),
        ("cert = \"site.pem\"\nkey = \"garbage.pem\"\n", 7, vec!["[tls] key", "garbage.pem", "no private key"]),
        ("cert = \"site.pem\"\nkey = \"other.key\"\n", 7, vec!["[tls] key", "other.key", "does not belong", "site.pem"]),
        ("cert = \"\"\nkey = \"site.key\"\n", 6, vec!["[tls] cert", "empty"]),
        (&format!("{ok}sni = [{{ names = [\"api.example\"], {api} }},\n  {{ names = [\"API.example\"], {api} }}]\n"), 9, vec!["[tls] sni[1] names", "\"api.example\" is already listed in [tls] sni[0]"]),
        (&format!("{ok}sni = [{{ names = [\"www.example\"], {api} }}]\n"), 8, vec!["[tls] sni[0] names", "api.pem", "not valid for \"www.example\""]),
        (&format!("{ok}sni = [{{ names = [\"a.*.example\"], {api} }}]\n"), 8, vec!["[tls] sni[0] names", "not a host name"]),
        (&format!("{ok}sni = [{{ names = [\"*.com\"], {api} }}]\n"), 8, vec!["not a host name"]),
        (&format!("{ok}sni = [{{ names = [], {api} }}]\n"), 8, vec!["[tls] sni[0] names: the list is empty"]),
        (&format!("{ok}sni = [{{ names = [\"api.example\"], cert = \"api.pem\", key = \"site.key\" }}]\n"), 8, vec!["[tls] sni[0] key", "site.key", "does not belong"]),
        (&format!("{ok}sni = [{{ names = [\"api.example\"], cert = \"api.pem\" }}]\n"), 8, vec!["missing field `key`"]),
        (&format!("{ok}ciphers = \"all\"\n"), 8, vec!["unknown field `ciphers`"]),
        (&format!("{ok}listen = \"127.0.0.1:8080\"\n"), 7, vec!["[tls] listen", "already the plain or the admin"]),
    ] {
        // The test's `listen` already sits on line 5; a second one is a
        // duplicate key, so that case replaces it.
        let result = if tls.contains("listen") {
            crate::Config::parse(
                &format!("listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n\n[tls]\n{tls}"),
                &dir.join("lb.toml"),
            )
        } else {
            config(&dir, tls)
        };
        let e = result.err().unwrap_or_else(|| panic!("accepted: {tls}")).to_string();
        assert!(e.starts_with(&format!("{lb}:{line}:")), "{tls}\n{e}");
        for s in says {
            assert!(e.contains(s), "{tls}\nwants {s:?} in:\n{e}");
        }
    }
}

#[test]
fn without_cert_keys_the_contract_defaults_are_read() {
    let e = crate::Config::parse(
        "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n[tls]\nredirect_http = false\n",
        Path::new("lb.toml"),
    )
    .expect_err("no certificate in /etc/balancer on a test machine")
    .to_string();
    assert!(e.contains("/etc/balancer/cert.pem"), "{e}");
    assert!(e.starts_with("lb.toml:"), "{e}");
}
