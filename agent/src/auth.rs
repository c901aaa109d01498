//! Authenticated load reports: a key shared by the balancer and its agents
//! that never crosses the wire (the `LB-HMAC` scheme).
//!
//! Defined here, once, for both sides: the agent checks requests and signs
//! its answers with it, the balancer signs its polls and checks the
//! answers.
//!
//! # Wire format
//!
//! Every poll carries a fresh [`Nonce`] (16 random bytes, written as 32 hex
//! digits) and a MAC over it, so that the agent can refuse strangers:
//!
//! ```text
//! GET /load HTTP/1.1
//! Authorization: LB-HMAC nonce=<32 hex>, mac=<64 hex>
//! ```
//!
//! with `mac = HMAC-SHA256(key, "LB-HMAC request\n" ‖ nonce)`. An agent
//! with a key answers a request without a valid `Authorization` `401`
//! (with `WWW-Authenticate: LB-HMAC` and a one-line body), whatever the
//! path. Otherwise it answers as usual and authenticates its answer over
//! the poll's nonce and the exact bytes of the body:
//!
//! ```text
//! HTTP/1.1 200 OK
//! X-LB-HMAC: nonce=<32 hex>, mac=<64 hex>
//! ```
//!
//! with `mac = HMAC-SHA256(key, "LB-HMAC response\n" ‖ nonce ‖ body)`
//! (for `HEAD`, the body a `GET` would get). `nonce` and the MAC inputs are
//! the raw 16 bytes, not their hex; hex digits may be of either case.
//!
//! The balancer accepts a report only when the answer names the nonce it
//! has just sent and its MAC checks out under its key: an answer replayed
//! from an earlier poll names an old nonce; an agent with another key, or a
//! fake one without it, cannot compute the MAC. The two prefixes keep a
//! request MAC from ever passing for an answer's. MACs are compared in
//! constant time.
//!
//! What this does not do: encrypt. Reports cross the network in clear (a
//! host's load is not a secret worth TLS here), and a captured request
//! replayed to the agent gets the current report signed for that old nonce,
//! which no balancer will accept.
//!
//! # Key files
//!
//! A key is the bytes of a file, less trailing line ends (CR, LF), at least
//! [`Key::MIN_LEN`] bytes long; the file's text is the key as it stands (a
//! base64 line is used as written, not decoded). Make one with
//! `head -c 32 /dev/urandom | base64 > /etc/balancer/agent.key`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `Authorization` scheme of a poll, and the `WWW-Authenticate`
/// challenge of the agent's `401`.
pub const SCHEME: &str = "LB-HMAC";

/// The header that authenticates an agent's answer.
pub const RESPONSE_HEADER: &str = "x-lb-hmac";

/// The largest key file read: a key is a line, and a path pointing at
/// `/dev/zero` or a log file must not be read forever.
const MAX_FILE: u64 = 4096;

/// What the request MAC is computed over, before the nonce.
const REQUEST_PREFIX: &[u8] = b"LB-HMAC request\n";

/// What the answer's MAC is computed over, before the nonce and the body.
const RESPONSE_PREFIX: &[u8] = b"LB-HMAC response\n";

type HmacSha256 = Hmac<Sha256>;

/// The key shared by the balancer and its agents. Cheap to clone; `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Arc<[u8]>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes, redacted)", self.0.len())
    }
}

/// A fresh random value the balancer sends with one poll only, so that an
/// answer to an earlier poll cannot pass for the answer to this one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce([u8; 16]);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Fewer than [`Key::MIN_LEN`] bytes once line ends are trimmed.
    #[error("{}: the key is {len} bytes; at least {min} are needed (make one with: head -c 32 /dev/urandom | base64 > {})", .path.display(), .path.display(), min = Key::MIN_LEN)]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length, trimmed.
        len: usize,
    },
    /// Longer than a key file can be: probably the wrong file.
    #[error("{}: over {MAX_FILE} bytes; a key file holds one line", .path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
}

/// Why a request or an answer was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error("no {SCHEME} credentials")]
    Missing,
    /// Credentials that do not parse.
    #[error("malformed {SCHEME} credentials: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not made with this key.
    #[error("not signed with this key (bad MAC)")]
    BadMac,
    /// An answer made for another poll's nonce.
    #[error("signed for another poll's nonce (a replayed answer?)")]
    StaleNonce,
}

/// Reads a secret file: its bytes less trailing CR and LF, at least
/// [`Key::MIN_LEN`] of them.
///
/// # Errors
///
/// When the file cannot be read, or is too short or too long.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(KeyError::TooLong {
            path: path.to_owned(),
        });
    }
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.len() < Key::MIN_LEN {
        return Err(KeyError::TooShort {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

impl Key {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// Reads the key in `path` (see [`read_secret`]).
    ///
    /// # Errors
    ///
    /// As [`read_secret`].
    pub fn read(path: &Path) -> Result<Key, KeyError> {
        read_secret(path).map(|bytes| Key(bytes.into()))
    }

    /// A key of these bytes, as they are; `None` when shorter than
    /// [`Key::MIN_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Key> {
        (bytes.len() >= Key::MIN_LEN).then(|| Key(bytes.into()))
    }

    /// The HMAC of the concatenated `parts`.
    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The `Authorization` value of a poll with `nonce`.
    pub fn authorization(&self, nonce: &Nonce) -> String {
        let mac = self
            .mac(&[REQUEST_PREFIX, &nonce.0])
            .finalize()
            .into_bytes();
        format!("{SCHEME} nonce={nonce}, mac={}", hex(&mac))
    }

    /// Checks a request's `Authorization` value (`None`: absent); returns
    /// the nonce to sign the answer over.
    ///
    /// # Errors
    ///
    /// When the credentials are absent, malformed or not made with this key.
    pub fn check_authorization(&self, value: Option<&[u8]>) -> Result<Nonce, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed("not text"))?;
        let (scheme, params) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(AuthError::Missing);
        }
        let (nonce, mac) = params_of(params)?;
        self.mac(&[REQUEST_PREFIX, &nonce.0])
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)?;
        Ok(nonce)
    }

    /// The [`RESPONSE_HEADER`] value of an answer to the poll with `nonce`
    /// whose body is `body`.
    pub fn sign(&self, nonce: &Nonce, body: &[u8]) -> String {
        let mac = self.mac(&[RESPONSE_PREFIX, &nonce.0, body]);
        format!("nonce={nonce}, mac={}", hex(&mac.finalize().into_bytes()))
    }

    /// Checks an answer to the poll that sent `sent`: its
    /// [`RESPONSE_HEADER`] value (`None`: absent) and its body.
    ///
    /// # Errors
    ///
    /// When the header is absent or malformed, names another nonce, or its
    /// MAC was not made with this key over `sent` and `body`.
    pub fn verify(&self, sent: &Nonce, value: Option<&[u8]>, body: &[u8]) -> Result<(), AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed("not text"))?;
        let (nonce, mac) = params_of(value)?;
        if nonce != *sent {
            return Err(AuthError::StaleNonce);
        }
        self.mac(&[RESPONSE_PREFIX, &sent.0, body])
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)
    }
}

impl Nonce {
    /// 16 bytes from the operating system's random source.
    ///
    /// # Errors
    ///
    /// When the OS has no randomness to give (in practice never on Linux).
    pub fn random() -> std::io::Result<Nonce> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Nonce(bytes))
    }

    /// A nonce of these bytes (for tests and test vectors).
    pub fn from_bytes(bytes: [u8; 16]) -> Nonce {
        Nonce(bytes)
    }
}

/// `nonce=<32 hex>, mac=<64 hex>`, in either order, each exactly once.
fn params_of(params: &str) -> Result<(Nonce, [u8; 32]), AuthError> {
    let (mut nonce, mut mac) = (None, None);
    for param in params.split(',') {
        let (name, value) = param
            .trim()
            .split_once('=')
            .ok_or(AuthError::Malformed("expected nonce=..., mac=..."))?;
        let slot = match name.trim() {
            n if n.eq_ignore_ascii_case("nonce") => &mut nonce,
            n if n.eq_ignore_ascii_case("mac") => &mut mac,
            _ => return Err(AuthError::Malformed("unknown parameter")),
        };
        if slot.replace(value.trim()).is_some() {
            return Err(AuthError::Malformed("a parameter given twice"));
        }
    }
    let nonce = nonce
        .and_then(unhex::<16>)
        .ok_or(AuthError::Malformed("nonce must be 32 hex digits"))?;
    let mac = mac
        .and_then(unhex::<32>)
        .ok_or(AuthError::Malformed("mac must be 64 hex digits"))?;
    Ok((Nonce(nonce), mac))
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Exactly `2 × N` hex digits, of either case.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef-test-key";
    const BODY: &[u8] = br#"{"cpu":0.5,"memory":0.25}"#;

    fn key() -> Key {
        Key::new(KEY).unwrap()
    }

    fn nonce() -> Nonce {
        Nonce::from_bytes(std::array::from_fn(|i| i as u8))
    }

    /// HMAC-SHA256 itself: RFC 4231, test case 1.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let key = Key::new(&[0x0b; 20]).unwrap();
        let mac = key.mac(&[b"Hi ", b"There"]).finalize().into_bytes();
        assert_eq!(
            hex(&mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    /// The wire format, against values computed apart (Python's `hmac`):
    /// `hmac.new(key, b"LB-HMAC request\n" + nonce, sha256)` and
    /// `hmac.new(key, b"LB-HMAC response\n" + nonce + body, sha256)`.
    #[test]
    fn known_vectors() {
        assert_eq!(
            key().authorization(&nonce()),
            "LB-HMAC nonce=000102030405060708090a0b0c0d0e0f, \
             mac=db1c72c68b184a1030050052f34a8aaddc23eb0bfa96259f399c824988702d79"
        );
        assert_eq!(
            key().sign(&nonce(), BODY),
            "nonce=000102030405060708090a0b0c0d0e0f, \
             mac=9ec7d958d5ae02445b118065425b188a2f2b9aa462914e663d8c2d4fda39ccec"
        );
    }

    #[test]
    fn a_poll_signed_with_the_key_passes_and_yields_its_nonce() {
        let n = Nonce::random().unwrap();
        let auth = key().authorization(&n);
        assert_eq!(key().check_authorization(Some(auth.as_bytes())), Ok(n));
        // Scheme and parameter names are case-insensitive, hex of either case.
        let shouted = auth.to_uppercase();
        assert_eq!(key().check_authorization(Some(shouted.as_bytes())), Ok(n));
    }

    #[test]
    fn strangers_are_refused() {
        let other = Key::new(b"another key, 16+ bytes").unwrap();
        let forged = other.authorization(&nonce());
        let good = key().authorization(&nonce());
        let cases: [(Option<&str>, AuthError); 9] = [
            (None, AuthError::Missing),
            (Some("Bearer abc"), AuthError::Missing),
            (Some(&forged), AuthError::BadMac),
            (
                Some("LB-HMAC"),
                AuthError::Malformed("expected nonce=..., mac=..."),
            ),
            (
                Some("LB-HMAC nonce=00, mac=00"),
                AuthError::Malformed("nonce must be 32 hex digits"),
            ),
            (
                Some(&good.replace("mac=", "tag=")),
                AuthError::Malformed("unknown parameter"),
            ),
            (
                Some(&format!("{good}, nonce=00")),
                AuthError::Malformed("a parameter given twice"),
            ),
            (
                Some(&good.replace("mac=db", "mac=zz")),
                AuthError::Malformed("mac must be 64 hex digits"),
            ),
            (Some(&good.replace("mac=db", "mac=dc")), AuthError::BadMac),
        ];
        for (value, want) in cases {
            assert_eq!(
                key().check_authorization(value.map(str::as_bytes)),
                Err(want),
                "{value:?}"
            );
        }
        assert!(key().check_authorization(Some(&[0xff, 0xfe][..])).is_err());
    }

    #[test]
    fn answers_are_checked_against_the_nonce_sent_and_the_body() {
        let sent = nonce();
        let signed = key().sign(&sent, BODY);
        assert_eq!(key().verify(&sent, Some(signed.as_bytes()), BODY), Ok(()));
        // Absent, another key, another body, another poll's answer.
        assert_eq!(key().verify(&sent, None, BODY), Err(AuthError::Missing));
        let other = Key::new(b"another key, 16+ bytes")
            .unwrap()
            .sign(&sent, BODY);
        assert_eq!(
            key().verify(&sent, Some(other.as_bytes()), BODY),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            key().verify(
                &sent,
                Some(signed.as_bytes()),
                br#"{"cpu":0.0,"memory":0.25}"#
            ),
            Err(AuthError::BadMac)
        );
        let later = Nonce::from_bytes([7; 16]);
        assert_eq!(
            key().verify(&later, Some(signed.as_bytes()), BODY),
            Err(AuthError::StaleNonce)
        );
        // A request MAC never passes for an answer's (different prefixes).
        let request = key().authorization(&sent);
        let params = request.split_once(' ').unwrap().1;
        assert_eq!(
            key().verify(&sent, Some(params.as_bytes()), b""),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn nonces_differ() {
        let a = Nonce::random().unwrap();
        let b = Nonce::random().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn key_files_are_trimmed_and_must_be_long_enough() {
        let dir = std::env::temp_dir().join(format!("agent-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let good = write("good", b"0123456789abcdef-test-key\r\n\n");
        assert_eq!(Key::read(&good).unwrap(), key());
        assert_eq!(format!("{:?}", key()), "Key(25 bytes, redacted)");

        let short = write("short", b"0123456789abcde\n");
        let e = Key::read(&short).unwrap_err().to_string();
        assert!(
            e.contains("short") && e.contains("15 bytes") && e.contains("16"),
            "{e}"
        );
        let empty = write("empty", b"\n");
        assert!(matches!(
            Key::read(&empty),
            Err(KeyError::TooShort { len: 0, .. })
        ));
        let long = write("long", &[b'k'; 5000]);
        assert!(matches!(Key::read(&long), Err(KeyError::TooLong { .. })));
        let missing = dir.join("missing");
        let e = Key::read(&missing).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
