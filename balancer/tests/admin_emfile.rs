//! Out of file descriptors, the listeners back off instead of spinning, and
//! say so at most once a second (issue 9: with `ulimit -n 256`, 300 idle
//! clients and one admin connection, the admin accept loop burnt 1.4 CPU-s
//! and wrote 36 MiB of log every 2 s).
//!
//! The real `balancer` binary runs under `sh -c 'ulimit -n 64; exec ...'`,
//! so the lower limit is its own and no other test's. Idle clients fill
//! its descriptors, one more connection waits on the admin port; the
//! process's CPU time (from `/proc`) and its log must then stay small, and
//! once the clients leave the admin connection must be served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_balancer");

/// The process's descriptor limit in this test.
const LIMIT: usize = 64;

/// How long the starved process is watched.
const WATCH: Duration = Duration::from_secs(3);

/// A loopback address that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The balancer process, killed on drop; its stderr is kept as it comes.
struct Balancer {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Balancer {
    fn start(config: &std::path::Path) -> Balancer {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(["--threads", "1", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sh");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Balancer { child, log }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// User plus system CPU time so far, from `/proc/PID/stat` (in clock
    /// ticks of 1/100 s, Linux's USER_HZ).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/PID/stat");
        // Fields after the command name, which is in parentheses: state is
        // the first, utime the 12th, stime the 13th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// Waits until `addr` accepts a connection (10 s at most).
    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "balancer exited: {}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "{addr} never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn out_of_file_descriptors_the_listeners_back_off_and_log_little() {
    static N: AtomicUsize = AtomicUsize::new(0);
    let (listen, admin) = (free_addr(), free_addr());
    let dir = std::env::temp_dir().join(format!(
        "balancer-emfile-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lb.toml");
    // Long head and idle timeouts, so the idle clients stay; probes and
    // polls once at start and then not for an hour, so that no socket of
    // theirs frees a descriptor for a moment (the admin listener could
    // take it, and the test would not see it starve).
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
             [timeouts]\nheader = \"60s\"\nidle = \"60s\"\n[admin]\nlisten = \"{admin}\"\n\
             [health]\ninterval = \"1h\"\n[agent]\ninterval = \"1h\"\n",
            free_addr()
        ),
    )
    .unwrap();
    let mut lb = Balancer::start(&config);
    lb.wait_listening(listen);
    lb.wait_listening(admin);

    // More idle clients than the process has descriptors: it takes what it
    // can, the rest wait in the backlog and accepting fails with EMFILE.
    let clients: Vec<TcpStream> = (0..2 * LIMIT)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lb.log().contains("Too many open files") {
        assert!(
            Instant::now() < deadline,
            "never out of descriptors: {}",
            lb.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Now the admin connection: it cannot be accepted either.
    let mut waiting = TcpStream::connect(admin).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (cpu, log) = (lb.cpu(), lb.log().len());
    std::thread::sleep(WATCH);
    let (cpu, log) = (lb.cpu() - cpu, lb.log().len() - log);
    let text = lb.log();
    // The end of the log, for failure messages (a spinning loop writes MiBs).
    let tail: String = {
        let chars: Vec<char> = text.chars().rev().take(2000).collect();
        chars.into_iter().rev().collect()
    };
    eprintln!("starved for {WATCH:?}: {cpu:?} of CPU, {log} bytes of log");
    // Spinning would take a whole core (3 s here, or at least 1 s on this
    // shared machine); backing off takes a few milliseconds.
    assert!(
        cpu < Duration::from_millis(600),
        "{cpu:?} of CPU in {WATCH:?}"
    );
    // One line a second at most: about 3 lines of some 200 bytes, where the
    // 20-a-second pause alone would write some 12 KiB.
    assert!(
        log < 3000,
        "{log} bytes of log in {WATCH:?}, ending:\n{tail}"
    );
    assert!(
        text.contains("more accept failures since the last report"),
        "{tail}"
    );

    // The admin connection did wait (else this test proves nothing)...
    waiting
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = waiting.peek(&mut byte);
    assert!(
        early.is_err(),
        "the admin connection was served: {early:?}\n{text}"
    );
    // ...and is served once the clients leave.
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    drop(clients);
    let mut answer = String::new();
    let _ = waiting.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}\n{tail}");
    let _ = std::fs::remove_dir_all(&dir);
}
