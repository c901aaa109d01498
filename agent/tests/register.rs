//! `agent --register`, the built binary against a fake balancer admin API
//! on `127.0.0.1:0` that records every request and answers as each test
//! says: the registration's body and token, heartbeats at the period the
//! answer gives, refusals logged once and retried, a balancer that comes up
//! late, the withdrawal on SIGTERM (with `/load` served until it is
//! answered), and the usage errors.

mod fake_admin;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_admin::{Admin, Posts, Seen, BACKEND};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_agent");
const TOKEN: &str = "test-token-0123456789abcdef";

/// The agent binary, killed when dropped; its log collected as it comes.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// The agent on `127.0.0.1:0` with `args`.
    fn start(args: &[&str]) -> Agent {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Agent::start_exactly(&all)
    }

    /// The agent with these `args` and no others.
    fn start_exactly(args: &[&str]) -> Agent {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Agent { child, log }
    }

    /// `--register` with the admin URL `url`, the token and `more`.
    fn register(url: &str, token: &Token, more: &[&str]) -> Agent {
        let path = token.0.to_string_lossy().into_owned();
        let mut args = vec!["--register", url, "--advertise", BACKEND, "--token-file"];
        args.push(&path);
        args.extend_from_slice(more);
        Agent::start(&args)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to `limit` for a log line containing every one of `words`.
    async fn wait_log(&self, limit: Duration, words: &[&str]) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let line = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned();
            if let Some(line) = line {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {words:?} within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address the agent serves `/load` on, from its log.
    async fn load_addr(&self) -> String {
        let line = self.wait_log(Duration::from_secs(20), &["serving"]).await;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next());
        addr.expect("addr= in the serving line").to_owned()
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(killed.expect("run kill").success());
    }

    /// Waits up to `limit` for the agent to exit.
    async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token file in a directory of its own, removed when dropped.
struct Token(PathBuf);

impl Token {
    fn new(name: &str, text: &str) -> Token {
        let dir =
            std::env::temp_dir().join(format!("agent-register-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("admin.token");
        std::fs::write(&path, text).expect("write token");
        Token(path)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `GET /load` on `addr`: the status line and the body.
async fn get_load(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the agent");
    let request = format!("GET /load HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    let read = stream.read_to_string(&mut response);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered in time")
        .expect("read");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_the_body_and_token_then_heartbeats_at_the_answered_period() {
    let admin = Admin::start(Posts::Accept(300)).await;
    let token = Token::new("heartbeat", &format!("{TOKEN}\n"));
    let agent = Agent::register(&admin.url(), &token, &["--pool", "api", "--weight", "7"]);
    let load = agent.load_addr().await;

    let seen = admin
        .wait_for(Duration::from_secs(20), |s| !s.is_empty())
        .await;
    let first = &seen[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        ("POST", "/backends")
    );
    assert_eq!(first.auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    let want = serde_json::json!({"addr": BACKEND, "agent": load, "weight": 7, "pool": "api"});
    assert_eq!(first.body, want);
    agent
        .wait_log(Duration::from_secs(10), &["registered", "300ms"])
        .await;

    // At 300 ms, 3 s hold about 10 heartbeats; the default 2 s period
    // would give at most 2, a loop without a pause hundreds.
    let start = first.at;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let posts: Vec<Seen> = admin
        .posts()
        .into_iter()
        .filter(|p| p.at <= start + Duration::from_secs(3))
        .collect();
    assert!(
        (4..=20).contains(&posts.len()),
        "{} heartbeats in 3 s",
        posts.len()
    );
    for post in &posts {
        assert_eq!(
            (post.body == want, post.auth == first.auth),
            (true, true),
            "{post:?}"
        );
    }
    // Nothing logged per heartbeat.
    assert_eq!(
        agent.log().matches("registered").count(),
        1,
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_logged_once_with_its_status_and_retried() {
    let admin = Admin::start(Posts::Refuse(401, "unauthorized: wrong bearer token")).await;
    let token = Token::new("refused", &format!("{TOKEN}-but-not-the-balancers\n"));
    let agent = Agent::register(&admin.url(), &token, &[]);
    agent.load_addr().await;

    // Back-off from 0.5 s: the third attempt comes about 1.5 s after the first.
    admin
        .wait_for(Duration::from_secs(20), |s| s.len() >= 3)
        .await;
    let line = agent
        .wait_log(Duration::from_secs(5), &["401", "wrong bearer token"])
        .await;
    assert!(line.contains("--token-file"), "{line}");
    assert_eq!(
        agent.log().matches("wrong bearer token").count(),
        1,
        "{}",
        agent.log()
    );
    // Without --pool and --weight the body names neither.
    let body = &admin.posts()[0].body;
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    assert!(
        body.get("weight").is_none() && body.get("pool").is_none(),
        "{body}"
    );

    // Another reason is another state, logged; then the balancer accepts.
    admin.set_posts(Posts::Refuse(404, "unknown pool"));
    agent
        .wait_log(Duration::from_secs(20), &["404", "unknown pool"])
        .await;
    admin.set_posts(Posts::Accept(200));
    agent
        .wait_log(Duration::from_secs(20), &["registered"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_down_at_start_is_retried_until_it_is_up() {
    // A port nobody listens on, until the fake takes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let token = Token::new("down", TOKEN);
    let agent = Agent::register(&format!("http://{port}/"), &token, &[]);
    let line = agent
        .wait_log(
            Duration::from_secs(20),
            &["registration failed", "unreachable"],
        )
        .await;
    assert!(line.contains(&port.to_string()), "{line}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listener = TcpListener::bind(port).await.expect("rebind the free port");
    let admin = Admin::serve(listener, Posts::Accept(500));
    // The back-off is capped at 10 s.
    admin
        .wait_for(Duration::from_secs(15), |s| !s.is_empty())
        .await;
    agent
        .wait_log(Duration::from_secs(10), &["registered again"])
        .await;
    assert_eq!(
        agent.log().matches("unreachable").count(),
        1,
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_withdraws_and_serves_load_until_the_balancer_has_drained() {
    let admin = Admin::start(Posts::Accept(200)).await;
    let token = Token::new("withdraw", TOKEN);
    let mut agent = Agent::register(&admin.url(), &token, &[]);
    let load = agent.load_addr().await;
    agent
        .wait_log(Duration::from_secs(20), &["registered"])
        .await;

    agent.terminate();
    let seen = admin
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().any(|r| r.method == "DELETE")
        })
        .await;
    let delete = seen
        .iter()
        .find(|r| r.method == "DELETE")
        .expect("a DELETE");
    assert_eq!(delete.path, format!("/backends/{BACKEND}"));
    assert_eq!(delete.auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    agent
        .wait_log(Duration::from_secs(5), &["withdrawing", "drain"])
        .await;

    // The balancer drains, polling /load: the agent still answers, and
    // heartbeats have stopped.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let response = get_load(&load).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("\"cpu\""),
        "{response}"
    );
    assert!(
        agent.child.try_wait().expect("try_wait").is_none(),
        "exited before the answer"
    );
    assert!(
        admin.posts().iter().all(|p| p.at < delete.at),
        "heartbeat after the DELETE"
    );

    admin.answer_deletes(200);
    let status = agent.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(agent.log().contains("withdrawn"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_withdrawal_is_logged_and_the_agent_exits_0() {
    let admin = Admin::start(Posts::Accept(200)).await;
    admin.answer_deletes(500);
    let token = Token::new("withdraw-fails", TOKEN);
    let mut agent = Agent::register(&admin.url(), &token, &[]);
    agent.load_addr().await;
    agent
        .wait_log(Duration::from_secs(20), &["registered"])
        .await;
    agent.terminate();
    let status = agent.exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let line = agent
        .wait_log(Duration::from_secs(5), &["withdrawal refused", "500"])
        .await;
    assert!(line.contains("missed heartbeats"), "{line}");
}

/// The commented example in `deploy/agent.service` works as written, once
/// pointed at the fake balancer and at files where systemd would put the
/// credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_registration_example_registers() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.service");
    let unit = std::fs::read_to_string(unit).expect("read deploy/agent.service");
    let line = unit
        .lines()
        .find_map(|l| {
            l.strip_prefix("#ExecStart=")
                .filter(|l| l.contains("--register"))
        })
        .expect("a commented ExecStart= with --register");
    assert!(
        unit.contains("#LoadCredential=admin.token:/etc/balancer/admin.token"),
        "{unit}"
    );

    let admin = Admin::start(Posts::Accept(500)).await;
    let token = Token::new("unit", TOKEN);
    let dir = token
        .0
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    std::fs::write(
        token.0.with_file_name("agent.key"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("write key");
    let line = line
        .replace("${CREDENTIALS_DIRECTORY}", &dir)
        .replace("http://10.0.0.10:9000", &admin.url())
        .replace("0.0.0.0:9100", "127.0.0.1:0");
    let mut args = line.split_whitespace();
    assert_eq!(args.next(), Some("/usr/local/bin/agent"));
    let agent = Agent::start_exactly(&args.collect::<Vec<_>>());
    let load = agent.load_addr().await;

    let seen = admin
        .wait_for(Duration::from_secs(20), |s| !s.is_empty())
        .await;
    assert_eq!(seen[0].auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    let want =
        serde_json::json!({"addr": "10.0.0.11:8000", "agent": load, "weight": 1, "pool": "api"});
    assert_eq!(seen[0].body, want);
}

#[test]
fn bad_flags_and_token_files_are_usage_errors() {
    let token = Token::new("flags", TOKEN);
    let empty = Token::new("flags-empty", "\n");
    let good = token.0.to_string_lossy().into_owned();
    let blank = empty.0.to_string_lossy().into_owned();
    let missing = format!("{good}.missing");
    let url = "http://127.0.0.1:9";
    let with = |register: &str, advertise: &str, token: &str, more: &[&str]| -> Vec<String> {
        let base = [
            "--register",
            register,
            "--advertise",
            advertise,
            "--token-file",
            token,
        ];
        base.iter().chain(more).map(|s| s.to_string()).collect()
    };
    let words = |args: &[&str]| -> Vec<String> { args.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            words(&["--register", url]),
            vec!["--advertise", "--token-file"],
        ),
        (
            words(&["--register", url, "--advertise", BACKEND]),
            vec!["--token-file"],
        ),
        (words(&["--pool", "api"]), vec!["--register"]),
        (words(&["--weight", "5"]), vec!["--register"]),
        (words(&["--token-file", &good]), vec!["--register"]),
        (words(&["--advertise", BACKEND]), vec!["--register"]),
        (
            with(url, BACKEND, &good, &["--weight", "0"]),
            vec!["--weight", "1..=1000"],
        ),
        (
            with(url, BACKEND, &good, &["--weight", "1001"]),
            vec!["--weight", "1..=1000"],
        ),
        (with(url, BACKEND, &good, &["--pool", ""]), vec!["--pool"]),
        (
            with("https://127.0.0.1:9", BACKEND, &good, &[]),
            vec!["--register", "only http://"],
        ),
        (
            with(url, "0.0.0.0:8000", &good, &[]),
            vec!["--advertise", "0.0.0.0:8000"],
        ),
        (
            with(url, BACKEND, &missing, &[]),
            vec!["--token-file", &missing, "cannot read"],
        ),
        (
            with(url, BACKEND, &blank, &[]),
            vec!["--token-file", &blank, "0 bytes"],
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for word in says {
            assert!(
                stderr.contains(word),
                "{args:?}: {word:?} missing from: {stderr}"
            );
        }
    }

    let help = Command::new(BIN).arg("--help").output().expect("run agent");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--register",
        "--advertise",
        "--advertise-agent",
        "--pool",
        "--weight",
        "--token-file",
        "1..=1000",
        "http://",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
