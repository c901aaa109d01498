//! The secrets `lb.toml` names: `[agent] key_file` (the key shared with the
//! agents) and `[admin] token_file` (the bearer token of the mutating admin
//! endpoints). Both files are read when the configuration is loaded, so at
//! start and on SIGHUP, by the agent crate's [`agent::auth::read_secret`]
//! (one line, trailing newline trimmed, at least 16 bytes). Also the rule
//! that an admin listener off loopback needs a token.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml::Spanned;

use super::raw::{RawAdmin, RawAgent};
use super::{err, Check};

/// The bearer token of the mutating admin endpoints. `Debug` never shows
/// it; [`AdminToken::matches`] compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<[u8]>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({} bytes, redacted)", self.0.len())
    }
}

impl AdminToken {
    /// A token of these bytes (tests build configs without files).
    pub fn new(bytes: &[u8]) -> AdminToken {
        AdminToken(bytes.into())
    }

    /// Whether `presented` is the token. Both sides are hashed first, so
    /// that neither the bytes nor the length of the token show in how long
    /// this takes; the digests are compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = Sha256::digest(&self.0);
        let got = Sha256::digest(presented);
        want.ct_eq(&got).into()
    }
}

/// `[agent] key_file`: absent or `""` is no key.
pub(super) fn agent_key(raw: &RawAgent) -> Check<Option<agent::Key>> {
    let Some(path) = named_file(&raw.key_file) else {
        return Ok(None);
    };
    agent::Key::read(Path::new(path.get_ref()))
        .map(Some)
        .or_else(|e| err(path.span(), format!("[agent] key_file: {e}")))
}

/// `[admin] token_file`, which must be set when `listen` is not loopback.
pub(super) fn admin_token(raw: &RawAdmin, listen: SocketAddr) -> Check<Option<AdminToken>> {
    let Some(path) = named_file(&raw.token_file) else {
        if listen.ip().to_canonical().is_loopback() {
            return Ok(None);
        }
        let span = raw.listen.as_ref().map_or(0..0, Spanned::span);
        return err(
            span,
            format!(
                "[admin] listen: {listen} is not a loopback address, so [admin] token_file must \
                 be set (without a token the admin port would be open to whoever reaches it); \
                 set token_file, or listen on 127.0.0.1"
            ),
        );
    };
    agent::auth::read_secret(Path::new(path.get_ref()))
        .map(|bytes| Some(AdminToken(bytes.into())))
        .or_else(|e| err(path.span(), format!("[admin] token_file: {e}")))
}

/// The path a `*_file` key names; `None` when absent or empty.
fn named_file(key: &Option<Spanned<String>>) -> Option<&Spanned<String>> {
    key.as_ref().filter(|p| !p.get_ref().is_empty())
}

impl super::Config {
    /// One line of the `--check` summary: what the secrets protect.
    pub(super) fn secrets_summary(&self) -> String {
        let agents = if self.agent.key.is_some() {
            "agent reports authenticated (LB-HMAC)"
        } else {
            "agent reports not authenticated (no [agent] key_file)"
        };
        let admin = if self.admin.token.is_some() {
            format!(
                "admin changes need the bearer token (registrations too; they heartbeat every {})",
                humantime::format_duration(self.admin.heartbeat)
            )
        } else {
            "admin changes disabled (no [admin] token_file; no registrations either)".to_owned()
        };
        format!("{agents}; {admin}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::Config;

    /// A directory of its own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir()
                .join(format!("balancer-secrets-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(tail: &str) -> Result<Config, String> {
        let text = format!("listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:8000\"]\n{tail}");
        Config::parse(&text, Path::new("lb.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_are_read_trimmed_and_absent_or_empty_means_none() {
        let dir = Dir::new("read");
        let key = dir.write("agent.key", "0123456789abcdef-agent\n");
        let token = dir.write("admin.token", "0123456789abcdef-admin\r\n");
        let c = parse(&format!(
            "[agent]\nkey_file = \"{key}\"\n[admin]\ntoken_file = \"{token}\"\n"
        ))
        .unwrap();
        assert_eq!(c.agent.key, agent::Key::new(b"0123456789abcdef-agent"));
        let t = c.admin.token.unwrap();
        assert!(t.matches(b"0123456789abcdef-admin"));
        assert!(!t.matches(b"0123456789abcdef-admin\r\n"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(22 bytes, redacted)");

        let c = parse("[agent]\nkey_file = \"\"\n[admin]\ntoken_file = \"\"\n").unwrap();
        assert_eq!((&c.agent.key, &c.admin.token), (&None, &None));
        assert!(c.summary().contains("admin changes disabled"));
    }

    #[test]
    fn bad_key_files_are_errors_naming_the_key_line_and_file() {
        let dir = Dir::new("bad");
        let short = dir.write("short.key", "fifteen bytes!!\n");
        let e = parse(&format!("[agent]\nkey_file = \"{short}\"\n")).unwrap_err();
        assert!(
            e.starts_with("lb.toml:4:12: [agent] key_file: ")
                && e.contains(&short)
                && e.contains("15 bytes"),
            "{e}"
        );
        let missing = format!("{}/nope", dir.0.display());
        let e = parse(&format!("[admin]\ntoken_file = \"{missing}\"\n")).unwrap_err();
        assert!(
            e.starts_with("lb.toml:4:14: [admin] token_file: ") && e.contains(&missing),
            "{e}"
        );
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        for listen in ["0.0.0.0:9000", "10.0.0.1:9000", "[::]:9000"] {
            let e = parse(&format!("[admin]\nlisten = \"{listen}\"\n")).unwrap_err();
            assert!(
                e.starts_with("lb.toml:4:10: [admin] listen: ") && e.contains("token_file"),
                "{e}"
            );
        }
        for listen in [
            "127.0.0.1:9000",
            "127.0.0.2:9000",
            "[::1]:9000",
            "[::ffff:127.0.0.1]:9000",
        ] {
            parse(&format!("[admin]\nlisten = \"{listen}\"\n")).unwrap();
        }
        let dir = Dir::new("offloop");
        let token = dir.write("t", "0123456789abcdef\n");
        let c = parse(&format!(
            "[admin]\nlisten = \"0.0.0.0:9000\"\ntoken_file = \"{token}\"\n"
        ))
        .unwrap();
        assert!(c.admin.token.is_some());
    }
}
