//! The `balancer` binary as users run it: flags, `--check`, the exit codes
//! and messages of every bad-config case, a listen address in use, and the
//! signals (SIGTERM drains, SIGHUP reloads or keeps the old config).
//!
//! Config files go to a fresh directory under the system temp dir; every
//! child process is killed by a guard, so a failing test leaves none behind.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use support::{get, Host};

const BIN: &str = env!("CARGO_BIN_EXE_balancer");

// ---------------------------------------------------------------------------
// Helpers

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "balancer-cli-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `name` in this directory and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a finished run printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary to completion (bounded by 30 s).
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start balancer");
    let mut child = Running::adopt(child);
    let status = child.wait(Duration::from_secs(30));
    let mut stdout = String::new();
    if let Some(mut out) = child.child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    Output {
        status,
        stdout,
        stderr: child.stderr(),
    }
}

/// A balancer process; killed on drop. Its stderr is collected as it comes.
struct Running {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; joined once the process has exited, so
    /// that everything it wrote is in `stderr`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts `balancer -c path`, serving.
    fn start(path: &Path) -> Running {
        let child = Command::new(BIN)
            .arg("-c")
            .arg(path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start balancer");
        Running::adopt(child)
    }

    fn adopt(mut child: std::process::Child) -> Running {
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = child.stderr.take().map(|mut pipe| {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        Running {
            child,
            stderr,
            reader,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Everything written to stderr so far.
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (such as "TERM") with `kill`.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipe is at its end: let the reader drain it. (A fixed
                // pause here lost the message on a loaded machine.)
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "balancer still running after {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until both listeners accept connections (10 s at most).
    async fn wait_ready(&mut self, listen: SocketAddr, admin: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [listen, admin] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    self.is_running(),
                    "balancer exited early; stderr:\n{}",
                    self.stderr()
                );
                assert!(
                    Instant::now() < deadline,
                    "{addr} never accepted; stderr:\n{}",
                    self.stderr()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits until stderr, past its first `from` bytes, contains `needle`.
    async fn wait_stderr(&self, from: usize, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let err = self.stderr();
            if err.get(from..).is_some_and(|s| s.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never said {needle:?}:\n{err}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address that was free a moment ago.
fn free_addr() -> SocketAddr {
    support::dead_addr()
}

/// A minimal valid config serving `backends` on the given addresses.
fn config(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\", agent = \"127.0.0.1:1\" }}"))
        .collect();
    format!(
        "listen = \"{listen}\"\nbackends = [{}]\n[admin]\nlisten = \"{admin}\"\n",
        list.join(", ")
    )
}

/// Whether `text` contains `line:column` for `line` (any column from 1 to
/// `max_col`), not as part of a longer number.
fn has_line_col(text: &str, line: usize, max_col: usize) -> bool {
    (1..=max_col).any(|col| {
        let needle = format!("{line}:{col}");
        text.match_indices(&needle).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + needle.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
    })
}

// ---------------------------------------------------------------------------
// Flags and --check

#[test]
fn help_and_version_exit_zero() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("--config") && out.stdout.contains("--check"),
        "{}",
        out.stdout
    );

    let out = run(&["--version"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        out.stdout
    );
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
}

#[test]
fn check_accepts_a_valid_file_and_prints_a_summary() {
    let dir = TempDir::new("check-ok");
    let path = dir.write(
        "lb.toml",
        "listen = \"127.0.0.1:8080\"\n\
         backends = [\"127.0.0.1:8001\", { addr = \"127.0.0.1:8002\", agent = \"127.0.0.1:9102\", weight = 2 }]\n\
         [balance]\nstrategy = \"round-robin\"\n\
         [health]\ninterval = \"250ms\"\nfall = 3\nrise = 1\n\
         [compression]\nlevel = 9\n\
         [timeouts]\nrequest = \"2m\"\n\
         [admin]\nlisten = \"127.0.0.1:9000\"\n",
    );
    let out = run(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for expected in [
        "127.0.0.1:8080",
        "127.0.0.1:8001",
        "127.0.0.1:8002",
        "round-robin",
    ] {
        assert!(
            out.stdout.contains(expected),
            "summary lacks {expected}:\n{}",
            out.stdout
        );
    }
}

#[test]
fn every_bad_config_case_exits_2_naming_file_line_column_and_key() {
    const HEAD: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:8001\"]\n";
    // (case, file, 1-based line of the fault, what stderr must name)
    let cases: Vec<(&str, String, usize, &[&str])> = vec![
        (
            "unknown key",
            format!("{HEAD}colour = \"blue\"\n"),
            3,
            &["colour"],
        ),
        (
            "unknown key in a table",
            format!("{HEAD}[health]\nintervall = \"1s\"\n"),
            4,
            &["intervall"],
        ),
        (
            "unknown strategy",
            format!("{HEAD}[balance]\nstrategy = \"fastest\"\n"),
            4,
            &["strategy", "fastest"],
        ),
        (
            "unparsable listen address",
            "listen = \"not-an-address\"\nbackends = [\"127.0.0.1:8001\"]\n".into(),
            1,
            &["listen", "not-an-address"],
        ),
        (
            "unparsable backend address",
            "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1\"]\n".into(),
            2,
            &["backends", "127.0.0.1"],
        ),
        (
            "unparsable agent address",
            "listen = \"127.0.0.1:8080\"\nbackends = [{ addr = \"127.0.0.1:8001\", agent = \"nowhere\" }]\n".into(),
            2,
            &["agent", "nowhere"],
        ),
        (
            "empty backends",
            "listen = \"127.0.0.1:8080\"\nbackends = []\n".into(),
            2,
            &["backends"],
        ),
        (
            "level 0",
            format!("{HEAD}[compression]\nlevel = 0\n"),
            4,
            &["level"],
        ),
        (
            "level 10",
            format!("{HEAD}[compression]\nlevel = 10\n"),
            4,
            &["level", "10"],
        ),
        (
            "fall 0",
            format!("{HEAD}[health]\nfall = 0\n"),
            4,
            &["fall"],
        ),
        (
            "rise 0",
            format!("{HEAD}[health]\nrise = 0\n"),
            4,
            &["rise"],
        ),
        (
            "bad duration",
            format!("{HEAD}[timeouts]\nrequest = \"soon\"\n"),
            4,
            &["request", "soon"],
        ),
        (
            "duration without a unit",
            format!("{HEAD}[health]\ninterval = \"5\"\n"),
            4,
            &["interval"],
        ),
    ];
    let dir = TempDir::new("bad");
    let mut failures = Vec::new();
    for (i, (case, text, line, needles)) in cases.iter().enumerate() {
        let path = dir.write(&format!("case{i}.toml"), text);
        let path_text = path.to_str().unwrap();
        let line_len = text.lines().nth(line - 1).unwrap().chars().count();
        for args in [&["--check", "-c", path_text][..], &["-c", path_text][..]] {
            let out = run(args);
            let err = &out.stderr;
            let mut wrong = Vec::new();
            if out.status.code() != Some(2) {
                wrong.push(format!("exit {:?}, not 2", out.status.code()));
            }
            if !err.contains(path_text) {
                wrong.push("no file path".into());
            }
            if !has_line_col(err, *line, line_len + 1) {
                wrong.push(format!("no {line}:column"));
            }
            for needle in *needles {
                if !err.contains(needle) {
                    wrong.push(format!("does not name {needle:?}"));
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{case} ({args:?}): {}\n--- file\n{text}--- stderr\n{err}",
                    wrong.join(", ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn a_missing_listen_is_a_config_error() {
    let dir = TempDir::new("no-listen");
    let path = dir.write("lb.toml", "backends = [\"127.0.0.1:8001\"]\n");
    let out = run(&["--check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains(path.to_str().unwrap()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("listen"), "{}", out.stderr);
}

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("absent.toml");
    for args in [
        &["--check", "-c", path.to_str().unwrap()][..],
        &["-c", path.to_str().unwrap()][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(path.to_str().unwrap()),
            "{args:?}: {}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// Serving

#[test]
fn a_listen_address_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let dir = TempDir::new("in-use");
    let backend = free_addr();

    // The client listener taken.
    let path = dir.write("lb.toml", &config(busy, free_addr(), &[backend]));
    let out = run(&["-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&busy.to_string()), "{}", out.stderr);

    // The admin listener taken.
    let path = dir.write("lb2.toml", &config(free_addr(), busy, &[backend]));
    let out = run(&["-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&busy.to_string()), "{}", out.stderr);
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_0() {
    let host = Host::start("a");
    let (listen, admin) = (free_addr(), free_addr());
    let dir = TempDir::new("term");
    let path = dir.write("lb.toml", &config(listen, admin, &[host.addr]));
    let mut lb = Running::start(&path);
    lb.wait_ready(listen, admin).await;

    let slow = tokio::spawn(async move { get(&format!("http://{listen}/delay?ms=1000")).await });
    // Wait until the balancer counts it in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = get(&format!("http://{admin}/status.json")).await;
        let s: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        if s["backends"][0]["in_flight"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "request never in flight: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    lb.signal("TERM");
    // New connections are refused soon after the signal, while the slow
    // request is still running.
    loop {
        if tokio::net::TcpStream::connect(listen).await.is_err() {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(800),
            "still accepting connections {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!slow.is_finished(), "the slow request ended early");

    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the in-flight request never finished")
        .expect("the in-flight request failed");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "delayed 1000 ms\n");
    let status = lb.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", lb.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_traffic_to_the_new_backends_and_keeps_the_old_config_when_invalid() {
    let old = Host::start("old");
    let new = Host::start("new");
    let (listen, admin) = (free_addr(), free_addr());
    let dir = TempDir::new("hup");
    let path = dir.write("lb.toml", &config(listen, admin, &[old.addr]));
    let mut lb = Running::start(&path);
    lb.wait_ready(listen, admin).await;
    let url = format!("http://{listen}/");
    assert_eq!(get(&url).await.backend(), "old");

    // A new backend list: traffic moves within a second.
    std::fs::write(&path, config(listen, admin, &[new.addr])).unwrap();
    let signalled = Instant::now();
    lb.signal("HUP");
    loop {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.backend() == "new" {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "traffic still on the old backend a second after SIGHUP; stderr:\n{}",
            lb.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(&url).await.backend(), "new");
    }

    // An invalid file: logged, and the running config stays.
    std::fs::write(
        &path,
        format!("listen = \"{listen}\"\nbackends = []\n[admin]\nlisten = \"{admin}\"\n"),
    )
    .unwrap();
    let logged_so_far = lb.stderr().len();
    lb.signal("HUP");
    lb.wait_stderr(
        logged_so_far,
        path.to_str().unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let log = lb.stderr()[logged_so_far..].to_owned();
    assert!(
        log.contains("ERROR") && log.contains("backends"),
        "the reload error is not logged as an error naming the key:\n{log}"
    );
    assert!(lb.is_running(), "exited on an invalid reload:\n{log}");
    for _ in 0..5 {
        let r = get(&url).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), "new");
    }
    assert_eq!(
        get(&format!("http://{admin}/healthz")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_balancer_with_exit_0() {
    let host = Host::start("a");
    let (listen, admin) = (free_addr(), free_addr());
    let dir = TempDir::new("int");
    let path = dir.write("lb.toml", &config(listen, admin, &[host.addr]));
    let mut lb = Running::start(&path);
    lb.wait_ready(listen, admin).await;
    assert_eq!(
        get(&format!("http://{listen}/")).await.status,
        StatusCode::OK
    );

    lb.signal("INT");
    let status = lb.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", lb.stderr());
}
