//! `deploy/balancer.service` and `deploy/lb.toml.example` as an operator
//! installs them: the unit passes `systemd-analyze verify`, carries the
//! hardening and the limits the config needs, and its `ExecStartPre=` check
//! accepts the example (with its secret and certificate paths pointed at
//! generated files) and refuses a broken one.
//!
//! Tools: `systemd-analyze` (Debian: `systemd`) and `openssl` (for a
//! throw-away certificate). Under `CI=true` a missing tool fails the test.

mod systemd;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use systemd::{TempDir, Unit};

const BIN: &str = env!("CARGO_BIN_EXE_balancer");
/// Where the unit expects the binary and the config.
const INSTALLED: &str = "/usr/local/bin/balancer";
const CONFIG: &str = "/etc/balancer/lb.toml";
/// Where systemd puts the unit's `LoadCredential=` files.
const CREDENTIALS: &str = "/run/credentials/balancer.service/";

#[test]
fn the_balancer_unit_passes_systemd_analyze_verify() {
    let Some(tool) = systemd::systemd_analyze() else {
        return;
    };
    let unit = Unit::load("balancer.service");
    assert!(unit.text.contains(INSTALLED), "{}", unit.text);
    let built = unit.text.replace(INSTALLED, BIN);
    if let Err(e) = systemd::verify(tool, &unit.name, &built) {
        panic!("systemd-analyze verify balancer.service: {e}");
    }
    // The check can fail: a key systemd does not know is caught.
    let bogus = format!("{built}\nNoSuchSetting=1\n");
    assert!(systemd::verify(tool, &unit.name, &bogus).is_err());
}

#[test]
fn the_balancer_unit_is_hardened_and_sized_for_the_example() {
    let unit = Unit::load("balancer.service");
    unit.assert_has(systemd::HARDENING);
    // Binding 80 and 443 is the one privilege, and it is all there is.
    unit.assert_has(&[
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "KillSignal=SIGTERM",
    ]);
    let check = format!("{INSTALLED} --check -c {CONFIG}");
    assert_eq!(unit.value("ExecStartPre"), check);
    assert_eq!(unit.value("ExecStart"), format!("{INSTALLED} -c {CONFIG}"));
    assert_eq!(
        unit.values("ExecReload"),
        [check.as_str(), "/bin/kill -HUP $MAINPID"]
    );

    let example = example();
    let max_connections = example
        .get("limits")
        .and_then(|l| l.get("max_connections"))
        .map_or(10_000, |v| v.as_integer().expect("an integer"));
    let nofile: i64 = unit.value("LimitNOFILE").parse().expect("a number");
    assert!(
        nofile >= 2 * max_connections,
        "LimitNOFILE={nofile}: a client and a backend connection each for {max_connections} clients need more"
    );
    let drain = example
        .get("timeouts")
        .and_then(|t| t.get("drain"))
        .map_or("10s", |v| v.as_str().expect("a duration"));
    let drain = humantime::parse_duration(drain).expect("drain");
    let stop = humantime::parse_duration(unit.value("TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} must exceed the drain period {drain:?}"
    );

    if let Some(tool) = systemd::systemd_analyze() {
        let level = systemd::exposure(tool, &unit.name, &unit.text.replace(INSTALLED, BIN));
        assert!(
            level <= systemd::MAX_EXPOSURE,
            "systemd-analyze security rates balancer.service {level}"
        );
    }
}

#[test]
fn the_units_check_accepts_the_example_and_refuses_a_broken_one() {
    if !openssl_present() {
        return;
    }
    let unit = Unit::load("balancer.service");
    let dir = TempDir::new();
    let text = std::fs::read_to_string(systemd::deploy_dir().join("lb.toml.example"))
        .expect("read lb.toml.example");
    let text = with_generated_files(&unit, &dir, text);
    let config = dir.write("lb.toml", &text);

    let out = run_exec_start_pre(&unit, &config);
    assert!(
        out.status.success(),
        "ExecStartPre refused lb.toml.example: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));

    // A bad file stops the start (and `systemctl reload`): exit 2.
    let broken = text.replace(r#"strategy = "least-loaded""#, r#"strategy = "fastest""#);
    assert_ne!(broken, text);
    let out = run_exec_start_pre(&unit, &dir.write("lb.toml", &broken));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fastest"));
}

/// `deploy/lb.toml.example`, parsed.
fn example() -> toml::Table {
    let path = systemd::deploy_dir().join("lb.toml.example");
    let text = std::fs::read_to_string(&path).expect("read lb.toml.example");
    text.parse().expect("lb.toml.example is TOML")
}

/// Points every absolute file path in the example at a generated file in
/// `dir`: credentials (which the unit must load under the same name) get a
/// random secret, `cert.pem`/`key.pem` a fresh self-signed pair. A path this
/// does not know fails the test, so the example cannot grow an unchecked one.
fn with_generated_files(unit: &Unit, dir: &TempDir, mut text: String) -> String {
    let mut paths = Vec::new();
    strings(&toml::Value::Table(example()), &mut paths);
    paths.retain(|s| s.starts_with("/etc/") || s.starts_with("/run/"));
    assert!(!paths.is_empty());
    let (cert, key) = certificate(dir);
    for path in paths {
        let file = if let Some(name) = path.strip_prefix(CREDENTIALS) {
            let credential = format!("{name}:/etc/balancer/{name}");
            unit.assert_has(&[&format!("LoadCredential={credential}")]);
            let secret: String = (0..64).map(|_| fastrand::alphanumeric()).collect();
            private(dir.write(name, &format!("{secret}\n")), 0o400)
        } else if path.ends_with("/cert.pem") {
            cert.clone()
        } else if path.ends_with("/key.pem") {
            key.clone()
        } else {
            panic!("lb.toml.example names {path}: teach this test what file it is");
        };
        text = text.replace(
            &format!("\"{path}\""),
            &format!("{:?}", file.display().to_string()),
        );
    }
    text
}

/// Every string value in `value`, however deep.
fn strings(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        toml::Value::Table(table) => table.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// A self-signed certificate and its key, modes as the README installs them.
fn certificate(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=balancer.test"])
        .args(["-addext", "subjectAltName=DNS:balancer.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, private(key, 0o640))
}

fn private(path: std::path::PathBuf, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

fn openssl_present() -> bool {
    if Command::new("openssl").arg("version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is missing (apt-get install openssl); CI must run this test"
    );
    eprintln!("skipped: openssl is missing");
    false
}

/// Runs the unit's `ExecStartPre=` line with the built binary and `config`,
/// bounded by 30 s.
fn run_exec_start_pre(unit: &Unit, config: &Path) -> Output {
    let line = unit.value("ExecStartPre");
    let mut args = line.split_whitespace();
    assert_eq!(args.next(), Some(INSTALLED));
    let args: Vec<&std::ffi::OsStr> = args
        .map(|a| match a {
            CONFIG => config.as_os_str(),
            a => a.as_ref(),
        })
        .collect();
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start balancer --check");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("balancer --check still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}
