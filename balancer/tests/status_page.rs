//! The status page in a real browser (contract: `GET /status`, "updating
//! live"): a headless Chromium, driven over the DevTools protocol, loads
//! the page from a running cluster (three listed backends, each with a real
//! agent, in two pools, a fourth that registers itself through `POST
//! /backends`, and the balancer, in-process), waits for live numbers, sees
//! the registered backend's badge and every backend's pool, sees a killed
//! backend turn down with its reason, sees the decisions and the admin
//! buttons, and finds no error in the console. A screenshot is saved to
//! `target/status-page.png` (the path is printed).
//!
//! Under `CI=true` a missing browser fails the test (`.ci/run` installs
//! Debian's `chromium`); elsewhere the test is skipped with a loud note.
//! `$CHROMIUM` names another binary.

mod support;

#[path = "status_page/cdp.rs"]
mod cdp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Host, Lb};

/// A real agent (the `agent` library) reporting a fixed load, with the
/// machine's host name.
async fn agent(cpu: f64) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = format!(r#"{{"cpu": {cpu}, "memory": 0.4, "cores": 2}}"#);
    let monitor = agent::Monitor::fixed(agent::LoadReport::parse(body.as_bytes()).unwrap());
    tokio::spawn(agent::serve(listener, monitor, std::future::pending()));
    addr
}

const TOKEN: &str = "c3RhdHVzLXBhZ2UtdGVzdHMtb25seQ";

/// The admin token file ([`support::token_file`]).
fn token_file() -> PathBuf {
    support::token_file(TOKEN)
}

/// The rows of the backends table, as the page shows them.
const ROWS: &str = r#"JSON.stringify([...document.querySelectorAll('#rows tr[data-addr]')].map(r => ({
    addr: r.dataset.addr, state: r.dataset.state,
    reason: r.querySelector('.reason').textContent,
    host: r.querySelector('.host').textContent,
    origin: r.querySelector('.origin')?.textContent ?? '',
    pool: r.querySelector('.pool')?.textContent ?? null,
    cpu: r.querySelector('td.cpu').textContent,
    rps: r.querySelector('td.rps').textContent,
    charts: r.querySelectorAll('svg.chart path').length })))"#;

async fn rows(page: &mut cdp::Page) -> Vec<Value> {
    let text = page.eval(ROWS).await;
    serde_json::from_str(text.as_str().unwrap_or("[]")).unwrap()
}

/// Evaluates `rows` until `done` holds for them, for up to `within`.
async fn wait_rows(
    page: &mut cdp::Page,
    what: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let r = rows(page).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: the page shows {r:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn browser_or_skip() -> Option<PathBuf> {
    let found = cdp::find_browser();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no chromium on PATH, and CI=true: .ci/run must install it (apt-get install chromium)"
        );
        // Straight to stderr: the test harness captures eprintln!.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the status page browser test needs chromium \
             (apt-get install chromium, or set CHROMIUM=/path/to/chrome) ***\n"
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_data_a_down_backend_and_its_reason() {
    let Some(binary) = browser_or_skip() else {
        return;
    };
    let mut hosts: Vec<Host> = (1..=3).map(|i| Host::start(&format!("host-{i}"))).collect();
    let mut backends = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let a = agent(0.2 + 0.2 * i as f64).await;
        backends.push(format!("{{ addr = \"{}\", agent = \"{a}\" }}", h.addr));
    }
    // Two pools: host-1 and host-2 in the default one (all the traffic),
    // host-3 in "api", where host-4 registers.
    let lb = Lb::start_with_admin(
        &format!(
            "backends = [{}]\n[health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n\
             [agent]\ninterval = \"300ms\"\n[[pool]]\nname = \"api\"\nbackends = [{}]\n",
            backends[..2].join(", "),
            backends[2]
        ),
        // A heartbeat longer than the test: the registration stays.
        &format!(
            "token_file = \"{}\"\nheartbeat = \"1h\"",
            token_file().display()
        ),
    )
    .await;
    // The fourth backend announces itself, with its agent.
    let registered = Host::start("host-4");
    let announcement = format!(
        r#"{{"addr": "{}", "agent": "{}", "pool": "api"}}"#,
        registered.addr,
        agent(0.3).await
    );
    let r = lb
        .admin_call(http::Method::POST, "/backends", Some(TOKEN), &announcement)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    lb.wait_for_reports().await;
    // Steady traffic, so there are rates, latencies and decisions to show.
    let url = lb.url("/");
    let traffic = tokio::spawn(async move {
        loop {
            let _ = support::get(&url).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let browser = cdp::Browser::start(&binary);
    let mut page = cdp::Page::connect(&browser).await;
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        page.call(domain, json!({})).await;
    }
    let status_url = format!("http://{}/status", lb.admin);
    page.call("Page.navigate", json!({ "url": status_url }))
        .await;

    // Live data: every backend up, with its agent's host name, a CPU and a
    // request rate (the rate needs two polls of /status.json).
    let hostname = lb.status().await["backends"][0]["hostname"].clone();
    let live = wait_rows(&mut page, "live data", Duration::from_secs(30), |r| {
        r.len() == 4
            && r.iter().all(|b| {
                b["state"] == "up"
                    && b["cpu"].as_str().is_some_and(|c| c.contains('%'))
                    && b["rps"].as_str().is_some_and(|s| s.parse::<f64>().is_ok())
                    && b["charts"].as_u64() > Some(0)
            })
    })
    .await;
    // The registered backend carries its badge, the listed ones none; two
    // pools, so each backend names its own.
    let reg = registered.addr.to_string();
    let in_api = [hosts[2].addr.to_string(), reg.clone()];
    for b in &live {
        let addr = b["addr"].as_str().unwrap_or_default();
        let want = if addr == reg { "registered" } else { "" };
        assert_eq!(b["origin"], want, "{live:#?}");
        let pool = b["pool"].as_str().unwrap_or_default();
        let want = if in_api.iter().any(|a| a == addr) {
            "api"
        } else {
            "default"
        };
        assert!(pool.ends_with(&format!("pool {want}")), "{live:#?}");
    }
    if let Some(name) = hostname.as_str() {
        assert!(live.iter().all(|b| b["host"] == name), "{live:#?}");
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the agent reported no host name: {hostname}"
        );
    }

    // The decisions: a winner among the candidates, with a reason.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = page
            .eval("document.querySelectorAll('.decision tr.winner').length")
            .await;
        if shown.as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "no decision shown");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A backend killed: down, with the reason.
    let killed = hosts[1].addr.to_string();
    hosts[1].kill();
    let after = wait_rows(
        &mut page,
        "the killed backend",
        Duration::from_secs(30),
        |r| {
            r.iter().any(|b| {
                b["addr"] == killed.as_str()
                    && b["state"] == "down"
                    && b["reason"]
                        .as_str()
                        .is_some_and(|t| t.to_lowercase().contains("refused"))
            })
        },
    )
    .await;
    let others = after.iter().filter(|b| b["addr"] != killed.as_str());
    assert!(others.clone().all(|b| b["state"] == "up"), "{after:#?}");

    // A token shows the admin buttons (not pressed here: the admin API's
    // own tests press them).
    page.eval("document.getElementById('token').value = 'a-token'; document.getElementById('token-save').click()")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let buttons = page
            .eval("document.querySelectorAll('button[data-action=drain]').length")
            .await;
        if buttons.as_u64() == Some(4) {
            break;
        }
        assert!(Instant::now() < deadline, "no admin buttons: {buttons}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    let png = cdp::base64_decode(shot["data"].as_str().expect("screenshot data"));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(
            || PathBuf::from("status-page.png"),
            |t| t.join("status-page.png"),
        );
    std::fs::write(&path, &png).unwrap();
    println!("status page screenshot: {}", path.display());

    // Last: nothing went wrong in the page (a final call collects the
    // events still on the wire).
    page.eval("1").await;
    let errors: Vec<&Value> = page.events.iter().filter(|e| is_error(e)).collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    traffic.abort();
    drop(browser);
    lb.stop().await;
}

/// An uncaught exception, a `console.error`/`assert`, or an error logged
/// by the browser (a failed load, a CSP violation, ...).
fn is_error(event: &Value) -> bool {
    let p = &event["params"];
    match event["method"].as_str() {
        Some("Runtime.exceptionThrown") => true,
        Some("Runtime.consoleAPICalled") => matches!(p["type"].as_str(), Some("error" | "assert")),
        Some("Log.entryAdded") => p["entry"]["level"] == "error",
        _ => false,
    }
}
