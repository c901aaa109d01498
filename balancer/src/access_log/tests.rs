//! The writer and the line formats, without a network.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode, Version};

use super::format::write_line;
use super::{Entry, Sink, Why, DROPPED};
use crate::config::Format;

fn entry() -> Entry {
    Entry {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
        client: "[::ffff:192.0.2.7]:5555".parse().unwrap(),
        method: Method::GET,
        target: "/a/b?x=1".parse().unwrap(),
        version: Version::HTTP_11,
        status: StatusCode::OK,
        bytes: 512,
        total: Duration::from_millis(3),
        backend_time: Some(Duration::from_millis(2)),
        backend: Some("10.0.0.11:8000".parse::<SocketAddr>().unwrap()),
        attempts: 2,
        why: Why {
            strategy: Some("least-loaded"),
            retry: true,
            panic: false,
            none_left: false,
        },
        user_agent: Some(HeaderValue::from_static("curl/8.5.0")),
        referer: None,
    }
}

fn line(e: &Entry, format: Format) -> String {
    let mut out = Vec::new();
    write_line(e, format, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn combined_is_apache_combined_plus_key_values() {
    let mut e = entry();
    e.target = "/a/b?x=1".parse().unwrap();
    assert_eq!(
        line(&e, Format::Combined),
        "192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] \"GET /a/b?x=1 HTTP/1.1\" 200 512 \"-\" \
         \"curl/8.5.0\" rt=0.003 bt=0.002 backend=10.0.0.11:8000 retries=1 why=least-loaded,retry\n"
    );
    e.backend = None;
    e.backend_time = None;
    e.attempts = 0;
    e.why = Why {
        none_left: true,
        ..Why::default()
    };
    e.status = StatusCode::SERVICE_UNAVAILABLE;
    let l = line(&e, Format::Combined);
    assert!(
        l.ends_with(
            " 503 512 \"-\" \"curl/8.5.0\" rt=0.003 bt=- backend=- retries=0 why=no-backend\n"
        ),
        "{l}"
    );
}

#[test]
fn json_is_one_object_per_line_with_named_fields() {
    let mut e = entry();
    e.user_agent = Some(HeaderValue::from_bytes(b"evil\"\\ agent \xff").unwrap());
    e.target = "http://example.com/a/b?x=1".parse().unwrap();
    let l = line(&e, Format::Json);
    assert_eq!(l.matches('\n').count(), 1);
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["time"], "2023-11-14T22:13:20.250Z");
    assert_eq!(v["client"], "192.0.2.7");
    assert_eq!(v["client_port"], 5555);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["target"], "/a/b?x=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 512);
    assert_eq!(v["backend"], "10.0.0.11:8000");
    assert_eq!(v["retries"], 1);
    assert_eq!(v["why"], "least-loaded,retry");
    assert_eq!(v["referer"], serde_json::Value::Null);
    assert_eq!(v["user_agent"], "evil\"\\ agent \u{fffd}");
    assert!((v["request_time"].as_f64().unwrap() - 0.003).abs() < 1e-9);
    assert!((v["backend_time"].as_f64().unwrap() - 0.002).abs() < 1e-9);
}

/// A writer that blocks until told to go on, and keeps what it was given.
struct Gate {
    go: mpsc::Receiver<()>,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.got.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        // Once the writer has a line and finds the channel empty, it
        // stalls here, as on a slow disk.
        if !self.got.lock().unwrap().is_empty() {
            let _ = self.go.recv();
        }
        Ok(())
    }
}

#[test]
fn a_full_channel_drops_and_counts_and_never_blocks() {
    let (go, gate) = mpsc::channel();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink::to_writer(
        Box::new(Gate {
            go: gate,
            got: Arc::clone(&got),
        }),
        Format::Combined,
        4,
    )
    .unwrap();
    // One line in the writer's hands (stalled in its flush), then four
    // fill the channel; the rest are dropped at once.
    assert!(sink.send(entry()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never wrote"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = DROPPED.load(Relaxed);
    let sent = (0..20).filter(|_| sink.send(entry())).count();
    assert_eq!(sent, 4, "the channel holds 4 lines");
    assert!(
        DROPPED.load(Relaxed) - before >= 16,
        "16 lines dropped and counted"
    );
    // Unblocked, the writer writes what it held and ends with the sink.
    drop(sink);
    drop(go);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = got.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
        if n == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} lines written, want 5"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A writer that keeps what it was given.
struct Keep(Arc<Mutex<Vec<u8>>>);

impl Write for Keep {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn close_returns_once_every_line_is_written() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink =
        Arc::new(Sink::to_writer(Box::new(Keep(Arc::clone(&got))), Format::Json, 1000).unwrap());
    for _ in 0..500 {
        assert!(sink.send(entry()));
    }
    sink.close(Duration::from_secs(10));
    let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 500);
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
}
