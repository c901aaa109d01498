//! The `balancer` binary with `[tls]`: `--check` loads the certificates and
//! says so; a missing file, a file that is not PEM and a key that is not
//! the certificate's exit 2 naming the config line, the key and the PEM
//! file; a TLS address in use exits 1 naming it; SIGHUP re-reads the
//! certificate files (and keeps the old ones when the new are invalid)
//! without dropping an established connection.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::pki::{echo_backend, tls_connect, Client, Pki};

const BIN: &str = env!("CARGO_BIN_EXE_balancer");

/// A balancer process, killed on drop, its stderr collected as it comes.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start balancer");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit (30 s at most); the status, stdout and stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        (status, stdout, self.stderr())
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits until stderr past `from` bytes says `needle` (20 s at most).
    async fn wait_stderr(&self, from: usize, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .stderr()
            .get(from..)
            .is_some_and(|s| s.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "stderr never said {needle:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with `[tls]` on `tls`, the pair at `cert`/`key`, in `dir`.
fn write_config(dir: &Path, addrs: [SocketAddr; 4], cert: &Path, key: &Path) -> String {
    let [plain, tls, admin, backend] = addrs;
    let text = format!(
        "listen = \"{plain}\"\nbackends = [{{ addr = \"{backend}\", agent = \"127.0.0.1:1\" }}]\n\n[tls]\nlisten = \"{tls}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n",
        cert.display(),
        key.display()
    );
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn free() -> SocketAddr {
    crate::support::dead_addr()
}

#[test]
fn check_loads_the_certificates_and_names_file_and_key_when_they_are_bad() {
    let pki = Pki::new("check");
    let site = pki.leaf("site", &["site.test"]);
    let other = pki.leaf("other", &["other.test"]);
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let missing = pki.dir.join("missing.pem");
    let addrs = [free(), free(), free(), free()];

    let config = write_config(&pki.dir, addrs, &site.cert, &site.key);
    let (status, stdout, stderr) = Proc::spawn(&["--check", "-c", &config]).finish();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&format!("tls on {}", addrs[1])), "{stdout}");
    assert!(
        stdout.contains(&site.cert.display().to_string()),
        "{stdout}"
    );

    // Line 6 holds `cert = ...`, line 7 `key = ...`.
    for (cert, key, line, says) in [
        (
            &missing,
            &site.key,
            6,
            vec!["[tls] cert", "missing.pem", "cannot read"],
        ),
        (
            &garbage,
            &site.key,
            6,
            vec![
                "[tls] cert",
                "garbage.pem",
                "not a valid PEM certificate: no \"-----END NOTHING-----\" line",
            ],
        ),
        (
            &site.cert,
            &garbage,
            7,
            vec!["[tls] key", "garbage.pem", "not a valid PEM private key"],
        ),
        (
            &site.cert,
            &other.key,
            7,
            vec!["[tls] key", "other.key", "does not belong", "site.pem"],
        ),
    ] {
        let config = write_config(&pki.dir, addrs, cert, key);
        let (status, _, stderr) = Proc::spawn(&["--check", "-c", &config]).finish();
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{config}:{line}:")), "{stderr}");
        for s in says {
            assert!(stderr.contains(s), "wants {s:?}:\n{stderr}");
        }
        // Serving refuses it the same way.
        let (status, _, serve_err) = Proc::spawn(&["-c", &config]).finish();
        assert_eq!(status.code(), Some(2), "{serve_err}");
    }
}

#[test]
fn a_tls_address_in_use_exits_1_naming_it() {
    let pki = Pki::new("inuse");
    let site = pki.leaf("site", &["site.test"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls = taken.local_addr().unwrap();
    let config = write_config(
        &pki.dir,
        [free(), tls, free(), free()],
        &site.cert,
        &site.key,
    );
    let (status, _, stderr) = Proc::spawn(&["-c", &config]).finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {tls}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_certificate_files_and_keeps_connections() {
    let pki = Pki::new("sighup");
    let first = pki.leaf("first", &["site.test"]);
    let second = pki.leaf("second", &["site.test"]);
    // The config names these two files; their contents change under it.
    let (cert, key) = (pki.dir.join("live.pem"), pki.dir.join("live.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let backend = echo_backend().await;
    let tls = free();
    let config = write_config(&pki.dir, [free(), tls, free(), backend], &cert, &key);
    let proc = Proc::spawn(&["-c", &config]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(tls).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "never listened: {}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client_config = pki.client(&["http/1.1"], false, None);
    let stream = tls_connect(tls, "site.test", &client_config).await.unwrap();
    assert!(stream.get_ref().1.peer_certificates().unwrap()[0] == first.der);
    let mut kept = Client::over(stream).await;
    assert_eq!(kept.get("site.test", "/").await.status, StatusCode::OK);

    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let from = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_stderr(from, "TLS certificates reloaded").await;
    let stream = tls_connect(tls, "site.test", &client_config).await.unwrap();
    assert!(
        stream.get_ref().1.peer_certificates().unwrap()[0] == second.der,
        "SIGHUP did not bring the new certificate"
    );
    let r = kept.get("site.test", "/").await;
    assert_eq!(r.status, StatusCode::OK, "the established connection broke");
    assert!(r.body.contains("x-forwarded-proto: https\n"));

    // An invalid certificate: logged, the running one stays.
    std::fs::write(&cert, "garbage\n").unwrap();
    let from = proc.stderr().len();
    proc.signal("HUP");
    proc.wait_stderr(from, "keeping the running configuration")
        .await;
    assert!(
        proc.stderr()[from..].contains("[tls] cert"),
        "{}",
        proc.stderr()
    );
    let stream = tls_connect(tls, "site.test", &client_config).await.unwrap();
    assert!(stream.get_ref().1.peer_certificates().unwrap()[0] == second.der);
    assert_eq!(kept.get("site.test", "/").await.status, StatusCode::OK);

    proc.signal("TERM");
    let (status, _, stderr) = tokio::task::spawn_blocking(move || proc.finish())
        .await
        .unwrap();
    assert!(status.success(), "{stderr}");
}
