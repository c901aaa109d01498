//! Self-registration end to end: the real agent (its server and its
//! `--register` loop, in process; the agent's own tests run the binary
//! and its SIGTERM) announces a real backend to the real balancer, which
//! probes it, polls the agent and sends it traffic; when the agent stops,
//! the backend is drained and leaves the table, and no client request
//! fails at any point (with retries off, so that none could be hidden).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::register::{AdminUrl, Registration, Token};
use support::{backend_status, get, Host, Lb};
use tokio::net::TcpListener;

const TOKEN: &str = "c2VsZi1yZWdpc3RyYXRpb24tZW5kLXRvLWVuZA";

/// The admin token file ([`support::token_file`]).
fn token_file() -> PathBuf {
    support::token_file(TOKEN)
}

/// A running agent that registered `backend` with the balancer at
/// `admin`; `stop` is its SIGTERM.
struct Agent {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Agent {
    async fn start(admin: SocketAddr, backend: SocketAddr, pool: &str) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url: AdminUrl = format!("http://{admin}").parse().unwrap();
        let token = Token::read(&token_file()).unwrap();
        let registration = Registration::new(url, backend, addr, Some(1), Some(pool), token);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(agent::run_with(
            listener,
            agent::Options::default(),
            registration.run(shutdown),
        ));
        Agent {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// SIGTERM: withdraw, wait for the drain, exit.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the agent exits after its withdrawal")
            .unwrap()
            .unwrap();
    }
}

/// Requests sent one after another until `stop`, counting the backends
/// that answered and every failure.
struct Traffic {
    failures: Arc<AtomicUsize>,
    by_new: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String, new_id: &'static str) -> Traffic {
        let failures = Arc::new(AtomicUsize::new(0));
        let by_new = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, n, t, s) = (
            Arc::clone(&failures),
            Arc::clone(&by_new),
            Arc::clone(&total),
            Arc::clone(&stop),
        );
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let r = get(&url).await;
                t.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    f.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {} {}", r.status, r.text());
                } else if r.backend() == new_id {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Traffic {
            failures,
            by_new,
            total,
            stop,
            task,
        }
    }

    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.failures.load(Ordering::Relaxed),
            self.by_new.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_appears_with_its_agent_takes_traffic_and_leaves_with_it_without_a_failed_request(
) {
    let listed = Host::start("listed");
    let mut joining = Host::start("joining");
    let toml = format!(
        "backends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
         [balance]\nstrategy = \"round-robin\"\nretries = 0\n\
         [health]\ninterval = \"100ms\"\n[agent]\ninterval = \"100ms\"\n\
         [[pool]]\nname = \"web\"\nbackends = [{{ addr = \"{}\", agent = \"127.0.0.1:1\" }}]\n\
         strategy = \"round-robin\"\n\
         [[route]]\npath_prefix = \"/\"\npool = \"web\"\n",
        support::dead_addr(),
        listed.addr,
    );
    let admin = format!(
        "token_file = \"{}\"\nheartbeat = \"200ms\"\n",
        token_file().display()
    );
    let lb = Lb::start_with_admin(&toml, &admin).await;
    let traffic = Traffic::start(lb.url("/"), "joining");

    // The agent starts and announces its host's backend into pool "web".
    let agent = Agent::start(lb.admin, joining.addr, "web").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = lb.status().await;
        let b = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == joining.addr.to_string())
            .cloned()
            .unwrap_or_default();
        // Registered, probed healthy, its agent polled: load known.
        if b["origin"] == "registered" && b["healthy"] == true && !b["cpu"].is_null() {
            assert_eq!(b["pool"], "web", "{b}");
            assert_eq!(b["agent"], agent.addr.to_string(), "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "never joined: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It takes its share of the traffic, and heartbeats keep it there
    // for many times the three-missed window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = lb.status().await;
    let served = backend_status(&s, joining.addr)["requests"]
        .as_u64()
        .unwrap();
    assert!(served >= 10, "{s}");

    // SIGTERM: the agent withdraws it; the balancer drains it first. Then
    // its host goes down, as a host being shut down does: with no retries
    // configured, any request still sent there would fail.
    agent.stop().await;
    joining.kill();
    let s = lb.status().await;
    assert!(
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["addr"] != joining.addr.to_string()),
        "still there after the agent stopped: {s}"
    );
    let before = traffic.by_new.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (failures, by_new, total) = traffic.finish().await;
    assert_eq!(by_new, before, "requests reached it after it left");
    assert!(total > 50, "only {total} requests");
    assert_eq!(failures, 0, "{failures} of {total} requests failed");
    lb.stop().await;
}
