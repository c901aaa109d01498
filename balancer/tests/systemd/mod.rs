//! Reading and checking the systemd units in `deploy/`, shared by
//! `balancer/tests/deploy_units.rs` and `agent/tests/deploy_unit.rs` (which
//! includes this file by path: each crate's test can only run its own
//! binary).
//!
//! `systemd-analyze verify` needs no running systemd, but it does check that
//! every `Exec*=` program exists and is executable. The units name the
//! installed paths (`/usr/local/bin/...`), which a build machine lacks, so a
//! copy of the unit, with the install path replaced by the binary Cargo just
//! built, is verified under the unit's own name in a temporary directory.
//! (`--root=` does not help: it then wants a whole unit tree, down to
//! `sysinit.target`, under that root.) Everything else in the copy is the
//! shipped text.
//!
//! `verify` exits 0 on unknown keys and unparsable values, only printing a
//! warning, so any line of its output that names the unit counts as a
//! failure; [`verify`] is tested against a unit with a bogus key to show that
//! it catches one.

#![allow(dead_code)] // each including test uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A unit file from `deploy/`, as text, with its `Key=value` lines.
pub struct Unit {
    /// The file name, e.g. `balancer.service`: systemd derives the unit's
    /// name (and its credentials directory) from it.
    pub name: String,
    pub text: String,
}

impl Unit {
    /// Reads `deploy/<name>` of this workspace.
    pub fn load(name: &str) -> Unit {
        let path = deploy_dir().join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            !text.lines().any(|l| l.trim_end().ends_with('\\')),
            "{name}: continued lines are not read by these tests; keep each setting on one line"
        );
        Unit {
            name: name.to_string(),
            text,
        }
    }

    /// Every value of `key`, in file order (any section; comments skipped).
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The one value of `key`; panics when it is missing or repeated.
    pub fn value(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [v] => v,
            vs => panic!("{}: want one {key}=, found {vs:?}", self.name),
        }
    }

    /// Asserts that each `Key=value` of `settings` is set, exactly so.
    pub fn assert_has(&self, settings: &[&str]) {
        for setting in settings {
            let (key, want) = setting.split_once('=').expect("Key=value");
            assert!(
                self.values(key).contains(&want),
                "{}: missing {setting} (has {key}={:?})",
                self.name,
                self.values(key)
            );
        }
    }
}

/// `deploy/` at the workspace root (both crates sit one level below it).
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `systemd-analyze`, or `None` (with a note) when it is not installed and
/// this is not CI. Under `CI=true` a missing tool fails the test.
pub fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("systemd-analyze");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "systemd-analyze is missing (apt-get install systemd); CI must run this test"
    );
    eprintln!("skipped: systemd-analyze is missing (apt-get install systemd)");
    None
}

/// Runs `systemd-analyze verify` on `text` saved as `name`; `Err` holds the
/// exit status and every output line about the unit.
pub fn verify(tool: &str, name: &str, text: &str) -> Result<(), String> {
    let dir = TempDir::new();
    let path = dir.write(name, text);
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(name) || l.contains(&*dir.0.to_string_lossy()))
        .collect();
    if out.status.success() && about_unit.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n{output}",
            out.status,
            about_unit.join("\n")
        ))
    }
}

/// The "overall exposure level" (0 = locked down .. 10 = unprotected) that
/// `systemd-analyze security --offline=yes` gives `text` saved as `name`.
pub fn exposure(tool: &str, name: &str, text: &str) -> f64 {
    let dir = TempDir::new();
    let path = dir.write(name, text);
    let out = Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = format!("Overall exposure level for {name}:");
    stdout
        .lines()
        .find_map(|l| l.split_once(&marker))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security output:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// A directory of its own under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "deploy-units-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `text` to `name` in this directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The settings both units must carry: the hardening the README promises.
pub const HARDENING: &[&str] = &[
    "DynamicUser=yes",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallFilter=@system-service",
    "Restart=on-failure",
];

/// The worst exposure level accepted. systemd calls 1.0 to 4.9 "OK"; both
/// units score under 2 (balancer 1.6, agent 1.2 with systemd 252), so
/// dropping a few directives shows here.
pub const MAX_EXPOSURE: f64 = 2.0;
