//! The load driver: HTTP/1.1 keep-alive connections (hyper's client
//! connection API, one connection per worker task), closed-loop or
//! open-loop, latencies in an HDR histogram.
//!
//! - **Closed loop** (`Mode::Closed`): each of `conns` workers sends its
//!   next request as soon as the previous answer ends. Measures throughput;
//!   its latencies suffer coordinated omission, so reports take latency
//!   from open-loop runs.
//! - **Open loop** (`Mode::Open`): request *i* is due at `start + i/rate`
//!   whatever happened before; its latency is measured from that due time,
//!   so a stall shows as the queueing it causes (no coordinated omission,
//!   as in wrk2).
//!
//! Every response is attributed to the backend named in its `X-Backend`
//! header, overall and per time bucket (for failover timelines). A line per
//! second goes to stderr while a run lasts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `conns` connections, each sending back to back.
    Closed { conns: usize },
    /// `rate` requests per second over up to `conns` connections.
    Open { rate: f64, conns: usize },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Shown in the progress line and the report.
    pub label: String,
    pub target: SocketAddr,
    /// Request paths, used in turn (a request mix).
    pub paths: Vec<String>,
    pub mode: Mode,
    /// The run stops at this time...
    pub duration: Duration,
    /// ...or after this many requests, whichever comes first.
    pub max_requests: Option<u64>,
    /// Send `Accept-Encoding: gzip`.
    pub gzip: bool,
    /// Width of the timeline buckets.
    pub bucket: Duration,
}

impl Load {
    /// A closed-loop run of `GET path` for `duration`.
    pub fn closed(
        label: &str,
        target: SocketAddr,
        path: &str,
        conns: usize,
        duration: Duration,
    ) -> Load {
        Load {
            label: label.to_string(),
            target,
            paths: vec![path.to_string()],
            mode: Mode::Closed { conns },
            duration,
            max_requests: None,
            gzip: false,
            bucket: Duration::from_secs(1),
        }
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Responses and errors within one timeline bucket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bucket {
    /// Start of the bucket, from the start of the run.
    pub t_ms: u64,
    pub ok: u64,
    pub errors: u64,
    pub by_backend: BTreeMap<String, u64>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub label: String,
    pub mode: String,
    /// Successful (2xx) responses.
    pub ok: u64,
    /// Transport errors and non-2xx responses.
    pub errors: u64,
    pub elapsed_s: f64,
    /// Successful responses per second.
    pub rps: f64,
    pub latency_ms: Latency,
    pub by_backend: BTreeMap<String, u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Response body bytes as received (compressed where gzipped).
    pub body_bytes: u64,
    /// Responses with `Content-Encoding: gzip`.
    pub gzipped: u64,
    pub timeline: Vec<Bucket>,
    /// The first few error messages, for the report.
    pub error_samples: Vec<String>,
}

impl LoadResult {
    /// Fraction of successful responses that came from `backend`.
    pub fn share(&self, backend: &str) -> f64 {
        let n = self.by_backend.get(backend).copied().unwrap_or(0);
        n as f64 / self.ok.max(1) as f64
    }
}

/// One worker's tallies, merged at the end.
struct Tally {
    /// Width of a timeline bucket.
    width: Duration,
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    by_backend: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    body_bytes: u64,
    gzipped: u64,
    timeline: Vec<Bucket>,
    error_samples: Vec<String>,
}

impl Tally {
    fn new(width: Duration) -> Tally {
        Tally {
            width,
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            by_backend: BTreeMap::new(),
            statuses: BTreeMap::new(),
            body_bytes: 0,
            gzipped: 0,
            timeline: Vec::new(),
            error_samples: Vec::new(),
        }
    }

    fn bucket(&mut self, idx: usize) -> &mut Bucket {
        while self.timeline.len() <= idx {
            let t_ms = (self.timeline.len() as u128 * self.width.as_millis()) as u64;
            self.timeline.push(Bucket {
                t_ms,
                ..Bucket::default()
            });
        }
        &mut self.timeline[idx]
    }

    fn error(&mut self, idx: usize, msg: String) {
        self.errors += 1;
        self.bucket(idx).errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(msg);
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.ok += o.ok;
        self.errors += o.errors;
        for (k, v) in o.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.body_bytes += o.body_bytes;
        self.gzipped += o.gzipped;
        for (i, b) in o.timeline.into_iter().enumerate() {
            let mine = self.bucket(i);
            mine.ok += b.ok;
            mine.errors += b.errors;
            for (k, v) in b.by_backend {
                *mine.by_backend.entry(k).or_default() += v;
            }
        }
        for e in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

/// What the workers share.
struct Shared {
    load: Load,
    start: Instant,
    deadline: Instant,
    /// Next request number (closed loop: a budget; open loop: a schedule).
    next: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Runs `load` to completion and returns what it measured.
pub async fn run(load: Load) -> Result<LoadResult> {
    let conns = match load.mode {
        Mode::Closed { conns } | Mode::Open { conns, .. } => conns.max(1),
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: start + load.duration,
        start,
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        load,
    });
    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress(shared.clone(), done.clone()));
    let workers: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut total = Tally::new(shared.load.bucket);
    for w in workers {
        total.merge(w.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let h = &total.hist;
    let ms = |us: u64| us as f64 / 1000.0;
    let latency_ms = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    };
    let l = &shared.load;
    Ok(LoadResult {
        label: l.label.clone(),
        mode: match l.mode {
            Mode::Closed { conns } => format!("closed loop, {conns} connections"),
            Mode::Open { rate, conns } => {
                format!("open loop, {rate:.0} req/s over up to {conns} connections")
            }
        },
        ok: total.ok,
        errors: total.errors,
        elapsed_s: elapsed,
        rps: total.ok as f64 / elapsed.max(1e-9),
        latency_ms,
        by_backend: total.by_backend,
        statuses: total.statuses,
        body_bytes: total.body_bytes,
        gzipped: total.gzipped,
        timeline: total.timeline,
        error_samples: total.error_samples,
    })
}

/// Prints a line per second until `done`.
async fn progress(s: Arc<Shared>, done: Arc<AtomicBool>) {
    let mut tick =
        tokio::time::interval_at(s.start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_ok, mut last_err) = (0, 0);
    let total = s.load.duration.as_secs_f64();
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            return;
        }
        let ok = s.ok.load(Ordering::Relaxed);
        let err = s.errors.load(Ordering::Relaxed);
        eprintln!(
            "  [{}] {:>4.0}s/{total:.0}s  {:>8} req/s  {:>5} errors/s  ({ok} ok, {err} errors so far)",
            s.load.label,
            s.start.elapsed().as_secs_f64(),
            ok - last_ok,
            err - last_err,
        );
        (last_ok, last_err) = (ok, err);
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection's loop: take the next request, (open loop: wait for its
/// due time), send it, read the whole answer, tally it.
async fn worker(s: Arc<Shared>) -> Tally {
    let mut t = Tally::new(s.load.bucket);
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let width = s.load.bucket;
    let max = s.load.max_requests.unwrap_or(u64::MAX);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= max {
            break;
        }
        let due = match s.load.mode {
            Mode::Closed { .. } => Instant::now(),
            Mode::Open { rate, .. } => s.start + Duration::from_secs_f64(i as f64 / rate),
        };
        if due >= s.deadline || Instant::now() >= s.deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        let idx = (due.duration_since(s.start).as_nanos() / width.as_nanos().max(1)) as usize;
        let path = &s.load.paths[i as usize % s.load.paths.len()];
        match request(&mut sender, &s.load, path).await {
            Ok((status, backend, bytes, gz)) => {
                *t.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    let us = due.elapsed().as_micros() as u64;
                    t.hist.saturating_record(us.max(1));
                    t.ok += 1;
                    t.body_bytes += bytes;
                    t.gzipped += u64::from(gz);
                    s.ok.fetch_add(1, Ordering::Relaxed);
                    let name = backend
                        .as_ref()
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let b = t.bucket(idx);
                    b.ok += 1;
                    count(&mut b.by_backend, name);
                    count(&mut t.by_backend, name);
                } else {
                    s.errors.fetch_add(1, Ordering::Relaxed);
                    t.error(idx, format!("HTTP {status}"));
                }
            }
            Err(e) => {
                sender = None;
                s.errors.fetch_add(1, Ordering::Relaxed);
                t.error(idx, format!("{e:#}"));
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

/// Sends one request (connecting first when needed) and reads the whole
/// response: (status, `X-Backend`, body bytes, gzipped).
async fn request(
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    load: &Load,
    path: &str,
) -> Result<(u16, Option<http::HeaderValue>, u64, bool)> {
    if sender.as_ref().map_or(true, SendRequest::is_closed) {
        *sender = Some(connect(load.target).await?);
    }
    let Some(tx) = sender.as_mut() else {
        unreachable!("connected above")
    };
    tx.ready().await?;
    let mut req = http::Request::get(path).header(http::header::HOST, "bench.local");
    if load.gzip {
        req = req.header(http::header::ACCEPT_ENCODING, "gzip");
    }
    let resp = tx.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let backend = resp.headers().get("x-backend").cloned();
    let gz = resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, backend, bytes, gz))
}

/// Adds one to `name`'s count, allocating its key only the first time.
fn count(map: &mut BTreeMap<String, u64>, name: &str) {
    match map.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            map.insert(name.to_string(), 1);
        }
    }
}

/// One `GET path` on a new connection: (status, body). For admin polls.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    let mut tx = connect(addr).await?;
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())?;
    let resp = tx.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A keep-alive connection that has served one `GET path` and is kept
/// open, idle, as long as the returned sender lives.
pub async fn open_idle(addr: SocketAddr, path: &str) -> Result<SendRequest<Empty<Bytes>>> {
    let mut tx = connect(addr).await?;
    let req = http::Request::get(path)
        .header(http::header::HOST, "bench.local")
        .body(Empty::new())?;
    let resp = tx.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
    resp.into_body().collect().await?;
    Ok(tx)
}
