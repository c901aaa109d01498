//! The admin listener under `[admin] token_file` and `[timeouts]`: reading
//! is open, every other method needs the bearer token (`403` when none is
//! configured, `401` when it is missing or wrong); slow heads and idle
//! connections are closed; and `--check` refuses an admin listener off
//! loopback without a token.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::{closed_within, dead_addr, read_response, request, Resp};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "Zm9yIHRoZSBhZG1pbiB0ZXN0cyBvbmx5Cg";

/// A file in a directory of this test binary's own.
fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balancer-admin-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    write_whole(&path, text);
    path
}

/// A balancer in this runtime whose `[admin]` table holds `admin` besides
/// its listen address, and with `tail` after it; returns the admin address.
async fn start(admin: &str, tail: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let config = support::config(&format!(
        "listen = \"{}\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
         [admin]\nlisten = \"{admin_addr}\"\n{admin}\n{tail}",
        listener.local_addr().unwrap(),
        dead_addr()
    ));
    let balancer = balancer::Balancer::start(config);
    tokio::spawn(async move {
        balancer
            .serve(listener, admin_listener, std::future::pending())
            .await;
    });
    admin_addr
}

async fn call(admin: SocketAddr, method: Method, path: &str, auth: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let url = format!("http://{admin}{path}");
    request(method, &url, &headers, Bytes::new()).await
}

fn assert_one_line(r: &Resp) {
    let text = r.text();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
}

#[tokio::test]
async fn without_a_token_reading_works_and_every_change_is_forbidden() {
    let admin = start("", "").await;
    assert_eq!(call(admin, Method::GET, "/healthz", None).await.status, 200);
    assert_eq!(
        call(admin, Method::HEAD, "/status.json", None).await.status,
        200
    );
    for (method, path, auth) in [
        (Method::POST, "/status", None),
        (
            Method::POST,
            "/backends/127.0.0.1:1/drain",
            Some("Bearer guess"),
        ),
        (Method::PUT, "/backends/127.0.0.1:1/weight", None),
        (Method::DELETE, "/backends/127.0.0.1:1", None),
        (Method::OPTIONS, "/", None),
    ] {
        let r = call(admin, method.clone(), path, auth).await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert_one_line(&r);
        assert!(r.text().contains("token_file"), "{}", r.text());
    }
}

#[tokio::test]
async fn with_a_token_changes_need_it_and_reading_does_not() {
    let token = file("admin.token", &format!("{TOKEN}\n"));
    let admin = start(&format!("token_file = \"{}\"", token.display()), "").await;
    assert_eq!(call(admin, Method::GET, "/healthz", None).await.status, 200);

    let missing = call(admin, Method::POST, "/backends", None).await;
    assert_eq!(missing.status, 401);
    assert_one_line(&missing);
    let challenge = missing.headers.get("www-authenticate").unwrap();
    assert!(
        challenge.to_str().unwrap().starts_with("Bearer"),
        "{challenge:?}"
    );

    for wrong in [
        "Bearer nope".to_owned(),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        format!("Bearer {}", &TOKEN[1..]),
    ] {
        let r = call(admin, Method::POST, "/backends", Some(&wrong)).await;
        assert_eq!(r.status, 401, "{wrong}");
        assert!(r.headers.contains_key("www-authenticate"), "{wrong}");
        assert_one_line(&r);
    }

    // The right token passes the check; no mutating endpoint exists yet,
    // so the router's own answer follows.
    let right = format!("Bearer {TOKEN}");
    let r = call(admin, Method::POST, "/status", Some(&right)).await;
    assert_eq!(r.status, 405, "{}", r.text());
    let r = call(admin, Method::DELETE, "/backends/127.0.0.1:1", Some(&right)).await;
    assert!(r.status == 404 || r.status == 405, "{}", r.status);
}

/// A client that sends part of a head and stalls is dropped after
/// `[timeouts] header`, even with a long idle timeout.
#[tokio::test]
async fn a_slow_head_is_cut_off_after_the_header_timeout() {
    let admin = start("", "[timeouts]\nheader = \"1s\"\nidle = \"60s\"\n").await;
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(10)).await;
    assert!(took.is_ok(), "{took:?}");
}

/// A keep-alive connection with nothing moving is closed after
/// `[timeouts] idle` (to twice that), even with a long header timeout.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let admin = start("", "[timeouts]\nheader = \"60s\"\nidle = \"1s\"\n").await;
    let mut idle = TcpStream::connect(admin).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut idle).await;
    assert_eq!(r.status, 200);
    let took = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(took.is_ok(), "{took:?}");
}

/// `balancer --check` with `lb.toml` text `text`: (exit code, stderr).
fn check(name: &str, text: &str) -> (Option<i32>, String, String) {
    let path = file(name, text);
    let out = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .arg("--check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_an_admin_listener_off_loopback_without_a_token() {
    let base = "listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:8000\"]\n";
    let (code, _, stderr) = check(
        "open.toml",
        &format!("{base}[admin]\nlisten = \"0.0.0.0:9000\"\n"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("open.toml:4:10: [admin] listen:") && stderr.contains("token_file"),
        "{stderr}"
    );

    let token = file("check.token", &format!("{TOKEN}\n"));
    let (code, stdout, stderr) = check(
        "guarded.toml",
        &format!(
            "{base}[admin]\nlisten = \"0.0.0.0:9000\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("admin changes need the bearer token"),
        "{stdout}"
    );

    let short = file("short.token", "short\n");
    let (code, _, stderr) = check(
        "short.toml",
        &format!("{base}[admin]\ntoken_file = \"{}\"\n", short.display()),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("short.toml:4:14: [admin] token_file:")
            && stderr.contains(&short.display().to_string())
            && stderr.contains("5 bytes"),
        "{stderr}"
    );
}

/// Writes `text` to `path` by renaming a complete file over it: tests run
/// in parallel and may write the same file, and a config read between
/// another test's truncate and write would see it empty.
fn write_whole(path: &std::path::Path, text: &str) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{n}"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
