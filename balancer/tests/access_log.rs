//! The access log against real sockets: one line per request with the
//! right fields, in both formats, for proxied requests and the balancer's
//! own answers; retries; reopening on reload (logrotate); stdout through
//! the real binary; a file that cannot be opened is a config error.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use support::{backends_toml, dead_addr, get, hangup_backend, request, Host, Lb};

const BIN: &str = env!("CARGO_BIN_EXE_balancer");

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "balancer-accesslog-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (10 s at most) until `path` holds `n` complete lines; returns
/// them. More than `n` is a failure too.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_owned).collect();
        if got.len() >= n && text.ends_with('\n') {
            // A moment more: a line too many would show now.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again = std::fs::read_to_string(path).unwrap_or_default();
            assert_eq!(again.lines().count(), n, "{}:\n{again}", path.display());
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} line(s), want {n}:\n{text}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_toml(path: &Path, format: &str) -> String {
    format!(
        "[log]\naccess = {:?}\nformat = \"{format}\"\n",
        path.to_str().unwrap()
    )
}

/// `key=value` from a combined line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 2;
    line[start..].split(' ').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_combined_line_with_its_fields() {
    let dir = TempDir::new("combined");
    let file = dir.path("access.log");
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n{}",
        backends_toml(&[(&host, None)]),
        log_toml(&file, "combined")
    ))
    .await;

    let plain = get(&lb.url("/text/100?x=1")).await;
    assert_eq!(plain.status, StatusCode::OK);
    let gz = request(
        Method::GET,
        &lb.url("/text/5000"),
        &[
            ("accept-encoding", "gzip"),
            ("user-agent", "probe \"quoted\""),
            ("referer", "http://ref.example/page"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(gz.headers["content-encoding"], "gzip");
    let head = request(Method::HEAD, &lb.url("/"), &[], Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK);
    let post = request(Method::POST, &lb.url("/sha1"), &[], Bytes::from("abc")).await;
    assert_eq!(post.status, StatusCode::OK);
    let missing = get(&lb.url("/no/such/path")).await;

    let got = lines(&file, 5).await;
    let want = [
        ("GET /text/100?x=1 HTTP/1.1", plain.status, plain.body.len()),
        ("GET /text/5000 HTTP/1.1", gz.status, gz.body.len()),
        ("HEAD / HTTP/1.1", head.status, 0),
        ("POST /sha1 HTTP/1.1", post.status, post.body.len()),
        (
            "GET /no/such/path HTTP/1.1",
            missing.status,
            missing.body.len(),
        ),
    ];
    for (line, (request_line, status, bytes)) in got.iter().zip(want) {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(&format!("\"{request_line}\" {} {bytes} ", status.as_u16())),
            "want {request_line:?} {status} {bytes}: {line}"
        );
        assert_eq!(field(line, "backend"), host.addr.to_string(), "{line}");
        assert_eq!(field(line, "retries"), "0", "{line}");
        assert_eq!(field(line, "why"), "least-loaded", "{line}");
        let rt: f64 = field(line, "rt").parse().unwrap();
        let bt: f64 = field(line, "bt").parse().unwrap();
        assert!(rt >= bt && bt >= 0.0, "{line}");
    }
    // Compressed: the bytes are those sent, which are fewer than 5000.
    assert!(gz.body.len() < 5000);
    assert!(
        got[1].contains("\"http://ref.example/page\" \"probe \\x22quoted\\x22\" rt="),
        "referer and user agent, quotes escaped: {}",
        got[1]
    );
    assert!(got[0].contains("\"-\" \"-\" rt="), "{}", got[0]);

    let metrics = get(&format!("http://{}/metrics", lb.admin)).await.text();
    assert!(
        metrics
            .contains("# TYPE lb_access_log_dropped_total counter\nlb_access_log_dropped_total 0"),
        "{metrics}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_name_their_fields() {
    let dir = TempDir::new("json");
    let file = dir.path("access.json");
    let host = Host::start("a");
    let lb = Lb::start(&format!(
        "{}\n{}",
        backends_toml(&[(&host, None)]),
        log_toml(&file, "json")
    ))
    .await;
    let n = 6;
    for i in 0..n {
        let r = request(
            Method::GET,
            &lb.url(&format!("/json/{}?i={i}", 10 + i)),
            &[("user-agent", "a \"b\" \\ c")],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let got = lines(&file, n).await;
    for (i, line) in got.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], format!("/json/{}?i={i}", 10 + i));
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 10 + i);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["backend"], host.addr.to_string());
        assert_eq!(v["retries"], 0);
        assert_eq!(v["why"], "least-loaded");
        assert_eq!(v["user_agent"], "a \"b\" \\ c");
        assert!(v["referer"].is_null());
        assert!(v["request_time"].as_f64().unwrap() >= v["backend_time"].as_f64().unwrap());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_no_backend_is_logged_with_backend_dash() {
    let dir = TempDir::new("nobackend");
    let file = dir.path("access.log");
    let dead = dead_addr();
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{dead}\", agent = \"127.0.0.1:1\" }}]\n\
         [health]\ninterval = \"1h\"\n{}",
        log_toml(&file, "combined")
    ))
    .await;
    // The refused connection takes the only backend down (a 503 that names
    // the backend tried); the next request finds none (a 503 with none).
    let first = get(&lb.url("/a")).await;
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.text()
    );
    let second = get(&lb.url("/b")).await;
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    let got = lines(&file, 2).await;
    assert!(got[0].contains("\"GET /a HTTP/1.1\" 503 "), "{}", got[0]);
    assert_eq!(field(&got[0], "backend"), dead.to_string());
    assert_eq!(field(&got[0], "bt"), "-", "no backend answered");
    assert_eq!(
        field(&got[0], "why"),
        "least-loaded,none-left",
        "tried one, none left for a retry"
    );
    assert!(
        got[1].contains(&format!("\"GET /b HTTP/1.1\" 503 {} ", second.body.len())),
        "{}",
        got[1]
    );
    assert_eq!(field(&got[1], "backend"), "-");
    assert_eq!(field(&got[1], "bt"), "-");
    assert_eq!(field(&got[1], "retries"), "0");
    assert_eq!(field(&got[1], "why"), "no-backend");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_shows_the_retry_and_the_second_backend() {
    let dir = TempDir::new("retry");
    let file = dir.path("access.log");
    let hangup = hangup_backend().await;
    let host = Host::start("b");
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{hangup}\", agent = \"127.0.0.1:1\" }}, \
         {{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
         [balance]\nstrategy = \"round-robin\"\n[health]\ninterval = \"1h\"\n{}",
        host.addr,
        log_toml(&file, "combined")
    ))
    .await;
    // Round robin starts with the first backend, which hangs up after
    // reading the request: the GET is retried on the second.
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), "b");
    let got = lines(&file, 1).await;
    assert_eq!(field(&got[0], "retries"), "1", "{}", got[0]);
    assert_eq!(field(&got[0], "backend"), host.addr.to_string());
    assert_eq!(field(&got[0], "why"), "round-robin,retry");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_rename_writes_to_the_new_file_and_takes_a_new_format() {
    let dir = TempDir::new("rotate");
    let file = dir.path("access.log");
    let rotated = dir.path("access.log.1");
    let host = Host::start("a");
    let backends = backends_toml(&[(&host, None)]);
    let lb = Lb::start(&format!("{backends}\n{}", log_toml(&file, "combined"))).await;
    for _ in 0..3 {
        assert_eq!(get(&lb.url("/?before")).await.status, StatusCode::OK);
    }
    lines(&file, 3).await;

    // logrotate: rename, then `kill -HUP` (here: the reload it triggers).
    std::fs::rename(&file, &rotated).unwrap();
    assert_eq!(get(&lb.url("/?between")).await.status, StatusCode::OK);
    lb.reload(&format!("{backends}\n{}", log_toml(&file, "json")));
    for _ in 0..2 {
        assert_eq!(get(&lb.url("/?after")).await.status, StatusCode::OK);
    }

    let old = lines(&rotated, 4).await;
    assert!(old.iter().take(3).all(|l| l.contains("GET /?before")));
    assert!(
        old[3].contains("GET /?between"),
        "the old file until the reload"
    );
    let new = lines(&file, 2).await;
    for line in new {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["target"], "/?after");
    }
    lb.stop().await;
}

#[test]
fn a_file_that_cannot_be_opened_is_a_config_error_naming_it() {
    let dir = TempDir::new("check");
    let bad = dir.path("missing-dir/access.log");
    let config = dir.path("lb.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:9\"]\n{}",
            log_toml(&bad, "combined")
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lb.toml:4:"), "{stderr}");
    assert!(
        stderr.contains("[log] access") && stderr.contains(bad.to_str().unwrap()),
        "{stderr}"
    );
}

/// A balancer process, killed on drop.
struct Child(std::process::Child);

impl Child {
    /// `balancer -c config`, stdout piped, once it listens on `port`.
    async fn start(config: &Path, port: u16) -> Child {
        let child = Child(
            Command::new(BIN)
                .arg("-c")
                .arg(config)
                .arg("--threads")
                .arg("1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the balancer never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// `kill -signal`.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_mode_writes_lines_to_the_binarys_stdout() {
    let dir = TempDir::new("stdout");
    let host = Host::start("a");
    let (port, admin) = (free_port(), free_port());
    let config = dir.path("lb.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
             [log]\naccess = \"stdout\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            host.addr
        ),
    )
    .unwrap();
    let mut child = Child::start(&config, port).await;
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let r = get(&format!("http://127.0.0.1:{port}/?stdout-test")).await;
    assert_eq!(r.status, StatusCode::OK);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a line on stdout");
    assert!(
        line.contains(&format!(
            "\"GET /?stdout-test HTTP/1.1\" 200 {} ",
            r.body.len()
        )),
        "{line}"
    );
    assert_eq!(field(&line, "backend"), host.addr.to_string());
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file_as_logrotate_expects() {
    let dir = TempDir::new("sighup");
    let host = Host::start("a");
    let (port, admin) = (free_port(), free_port());
    let (file, rotated) = (dir.path("access.log"), dir.path("access.log.1"));
    let config = dir.path("lb.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
             {}[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            host.addr,
            log_toml(&file, "combined")
        ),
    )
    .unwrap();
    let child = Child::start(&config, port).await;
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(get(&format!("{url}?one")).await.status, StatusCode::OK);
    lines(&file, 1).await;
    std::fs::rename(&file, &rotated).unwrap();
    child.signal("HUP");
    // Requests until one lands in the new file (config validation creates
    // it a moment before the writer is swapped, so the first may not).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 1;
    loop {
        assert_eq!(get(&format!("{url}?two")).await.status, StatusCode::OK);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let new = std::fs::read_to_string(&file).unwrap_or_default();
        if !new.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reopen the file");
    }
    let new = lines(&file, 1).await;
    assert!(new[0].contains("GET /?two "), "{}", new[0]);
    let old = lines(&rotated, sent - 1).await;
    assert!(old[0].contains("GET /?one "), "{}", old[0]);
    // SIGTERM: the balancer drains and exits cleanly.
    child.signal("TERM");
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
