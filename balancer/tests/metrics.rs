//! `/metrics` read back with a real Prometheus text parser
//! (`prometheus-parse`), after known traffic: request counts, status
//! classes, histogram counts, health, agent report age, and the backends a
//! reload removed.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use prometheus_parse::{LineInfo, Scrape, Value};
use support::*;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` as a client sending `accept` gets it: content type and text.
async fn scrape_as(lb: &Lb, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    let url = format!("http://{}/metrics", lb.admin);
    let r = request(Method::GET, &url, &headers, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers["content-type"].to_str().unwrap().to_owned();
    (ct, r.text())
}

/// Parses `text`, failing on any line the parser does not understand.
/// With `typed`, every sample must also belong to a `# TYPE`d family
/// (true of the Prometheus text format, whose counter families are named
/// with their `_total`).
fn parse(text: &str, typed: bool) -> Scrape {
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "unparsable line {line:?} in\n{text}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    if typed {
        // The parser types a histogram's buckets only; its `_sum` and
        // `_count` come back untyped.
        let histogram = |name: &str| {
            let base = name.trim_end_matches("_sum").trim_end_matches("_count");
            text.contains(&format!("# TYPE {base} histogram\n"))
        };
        for s in &scrape.samples {
            assert!(
                !matches!(s.value, Value::Untyped(_)) || histogram(&s.metric),
                "{} has no # TYPE in\n{text}",
                s.metric
            );
        }
    }
    scrape
}

/// The value of the series `name` whose labels include `labels`; `None`
/// when absent. Histograms give their count.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))?;
    Some(match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map_or(f64::NAN, |b| b.count),
        Value::Summary(_) => f64::NAN,
    })
}

/// The sum over backends of `name{code?}`.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Scrapes (Prometheus text) until `pred` holds, up to 10 s; returns the
/// last scrape, failing with it when `pred` never held.
async fn until(lb: &Lb, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = scrape_as(lb, None).await;
        let scrape = parse(&text, true);
        if pred(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn backend(addr: SocketAddr) -> String {
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_reads_back_through_a_prometheus_parser() {
    let (a, b) = (Host::start("a"), Host::start("b"));
    let agent = FakeAgent::start(0.25).await;
    let lb = Lb::start(&format!(
        "{}\n[balance]\nstrategy = \"round-robin\"\n[agent]\ninterval = \"100ms\"\n",
        backends_toml(&[(&a, Some(&agent)), (&b, Some(&agent))])
    ))
    .await;
    lb.wait_for_reports().await;

    for _ in 0..5 {
        assert_eq!(get(&lb.url("/")).await.status, StatusCode::OK);
    }
    assert_eq!(
        get(&lb.url("/no/such/path")).await.status,
        StatusCode::NOT_FOUND
    );
    // The balancer's own error: it refuses CONNECT with a 405.
    let refused = raw_exchange(
        lb.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(refused.status, 405, "{}", refused.text());

    let s = until(&lb, "six 2xx/4xx from backends and seven durations", |s| {
        value(s, "lb_request_duration_seconds", &[]) == Some(7.0)
    })
    .await;
    // What clients got, the balancer's own 405 included.
    assert_eq!(
        value(&s, "lb_responses_total", &[("code", "2xx")]),
        Some(5.0)
    );
    assert_eq!(
        value(&s, "lb_responses_total", &[("code", "4xx")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "lb_responses_total", &[("code", "5xx")]),
        Some(0.0)
    );
    // What the backends answered: six heads, the 405 never reached one.
    assert_eq!(total(&s, "lb_backend_requests_total", &[]), 6.0);
    assert_eq!(
        total(&s, "lb_backend_responses_total", &[("code", "2xx")]),
        5.0
    );
    assert_eq!(
        total(&s, "lb_backend_responses_total", &[("code", "4xx")]),
        1.0
    );
    assert_eq!(total(&s, "lb_backend_response_duration_seconds", &[]), 6.0);
    assert_eq!(total(&s, "lb_backend_request_duration_seconds", &[]), 6.0);
    // Round robin: three to one, three to the other.
    for h in [&a, &b] {
        let l = [("backend", &*backend(h.addr))];
        assert_eq!(value(&s, "lb_backend_requests_total", &l), Some(3.0));
        assert_eq!(value(&s, "lb_backend_up", &l), Some(1.0));
        assert_eq!(value(&s, "lb_backend_cpu", &l), Some(0.25));
        assert_eq!(value(&s, "lb_backend_agent_up", &l), Some(1.0));
        let age = value(&s, "lb_backend_agent_report_age_seconds", &l).unwrap();
        assert!((0.0..30.0).contains(&age), "report age {age}");
        assert_eq!(value(&s, "lb_backend_weight", &l), Some(1.0));
        assert_eq!(value(&s, "lb_backend_ejected", &l), Some(0.0));
        assert_eq!(value(&s, "lb_backend_errors_total", &l), Some(0.0));
    }
    // Every family the README lists before this change, by its old name.
    for name in [
        "lb_backend_in_flight",
        "lb_backend_memory",
        "lb_backend_ejections_total",
        "lb_backend_connections",
        "lb_backend_connections_idle",
        "lb_panic",
        "lb_retries_total",
        "lb_retries_denied_total",
        "lb_connections",
    ] {
        assert!(value(&s, name, &[]).is_some(), "no {name}");
    }
    assert_eq!(
        value(&s, "lb_limited_total", &[("reason", "rate")]),
        Some(0.0)
    );

    // The same numbers as OpenMetrics, for a client that asks for it.
    let (ct, text) = scrape_as(
        &lb,
        Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.1"),
    )
    .await;
    assert_eq!(ct, OPENMETRICS);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE lb_backend_requests counter\n"),
        "{text}"
    );
    let om = parse(&text, false);
    assert_eq!(
        value(&om, "lb_responses_total", &[("code", "2xx")]),
        Some(5.0)
    );
    assert_eq!(value(&om, "lb_request_duration_seconds", &[]), Some(7.0));
    // Without it, or refusing it, Prometheus text 0.0.4.
    for accept in [None, Some("*/*"), Some("application/openmetrics-text;q=0")] {
        let (ct, text) = scrape_as(&lb, accept).await;
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "{accept:?}");
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE lb_backend_requests_total counter\n"));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_reads_down_and_a_removed_one_disappears() {
    let (mut a, b) = (Host::start("a"), Host::start("b"));
    let health = "[health]\ninterval = \"100ms\"\nfall = 1\nrise = 1\n";
    let lb = Lb::start(&format!(
        "{}\n{health}",
        backends_without_agents(&[a.addr, b.addr])
    ))
    .await;
    let (la, lb_) = (backend(a.addr), backend(b.addr));
    until(&lb, "both up", |s| {
        value(s, "lb_backend_up", &[("backend", &la)]) == Some(1.0)
            && value(s, "lb_backend_up", &[("backend", &lb_)]) == Some(1.0)
    })
    .await;
    a.kill();
    let s = until(&lb, "the killed backend down", |s| {
        value(s, "lb_backend_up", &[("backend", &la)]) == Some(0.0)
    })
    .await;
    assert_eq!(value(&s, "lb_backend_up", &[("backend", &lb_)]), Some(1.0));

    // Reloaded without it: none of its series remain.
    lb.reload(&format!("{}\n{health}", backends_without_agents(&[b.addr])));
    let (_, text) = scrape_as(&lb, None).await;
    let s = parse(&text, true);
    assert!(!text.contains(&la), "{la} is still in\n{text}");
    assert_eq!(value(&s, "lb_backend_up", &[("backend", &lb_)]), Some(1.0));
    lb.stop().await;
}

/// The sum of the histogram `name` (all its series).
fn sum(scrape: &Scrape, name: &str) -> f64 {
    total(scrape, &format!("{name}_sum"), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_time_runs_to_the_end_of_the_body_or_the_client_leaving() {
    let host = Host::start("a");
    let lb = Lb::start(&backends_without_agents(&[host.addr])).await;

    // Three chunks 300 ms apart: the head comes first, the body ends at
    // least 600 ms after it.
    let r = get(&lb.url("/stream?chunks=3&ms=300")).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = until(&lb, "one request timed", |s| {
        value(s, "lb_request_duration_seconds", &[]) == Some(1.0)
    })
    .await;
    let (total_time, backend_time) = (
        sum(&s, "lb_request_duration_seconds"),
        sum(&s, "lb_backend_response_duration_seconds"),
    );
    assert!(
        total_time - backend_time >= 0.55,
        "total {total_time} s, backend {backend_time} s: the body's time is missing"
    );
    assert_eq!(sum(&s, "lb_backend_request_duration_seconds"), total_time);

    // A client that leaves mid-body: counted once the balancer notices,
    // and no longer in flight.
    let mut stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /stream?chunks=100&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut stream).await;
    assert_eq!(head.status, 200);
    drop(stream);
    let s = until(&lb, "the abandoned request timed", |s| {
        value(s, "lb_request_duration_seconds", &[]) == Some(2.0)
    })
    .await;
    assert_eq!(total(&s, "lb_backend_in_flight", &[]), 0.0);
    assert_eq!(
        value(&s, "lb_responses_total", &[("code", "2xx")]),
        Some(2.0)
    );
    lb.stop().await;
}
