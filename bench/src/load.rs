//! The load driver: HTTP/1.1 keep-alive connections (hyper's client
//! connection API), closed loop or open loop, latencies in an HDR histogram.
//!
//! - **Closed loop** (`Mode::Closed`): each of `conns` workers, one
//!   connection each, sends its next request as soon as the previous answer
//!   ends. It measures throughput, and how a strategy does when the offered
//!   load follows the cluster's speed; its latencies are those of a client
//!   that waits (coordinated omission: a stall delays the requests that would
//!   have suffered it instead of timing them).
//! - **Open loop** (`Mode::Open`): Poisson arrivals at `rate` per second.
//!   The gaps between arrivals are exponential with mean `1/rate`, drawn
//!   before the run from an RNG seeded with [`Load::seed`] (`pace::arrivals`):
//!   the same seed gives the same schedule, and no arrival waits for an
//!   earlier answer. At each due time a dispatcher starts the request on an
//!   idle keep-alive connection, or opens a new one; at most `conns`
//!   requests are in flight, a safety bound set well above the concurrency
//!   of a normal run (a request that had to wait for it is counted in
//!   [`LoadResult::throttled`]). Latency runs from the request's *due time*,
//!   not from when it was sent, so every wait (for the timer, a connection,
//!   the cap, the server) shows as latency: coordinated omission is
//!   accounted for, as in wrk2. Poisson rather than wrk2's even spacing
//!   because independent clients arrive that way: bursts happen, and a
//!   balancer has to absorb them.
//!
//! Paths come from [`Load::paths`] in turn, or with [`Load::shuffle`] each
//! request picks one at random (a list with repeats is a weighted mix),
//! seeded by the seed and the request's number, so reproducible whatever
//! the timing. Every request is bounded (`REQUEST_TIMEOUT`) and every run is
//! bounded in time and count.
//!
//! Every response is attributed to the backend named in its `X-Backend`
//! header, overall and per time bucket (for failover timelines). A line per
//! second goes to stderr while a run lasts. [`run_merged`] runs several
//! loads at once (one driver per balancer) and also merges their
//! histograms, so percentiles over all of them are exact.
//!
//! Here: the types, the drivers' shared state, running and merging, one
//! request on the wire. `pace`: the open loop's schedule and dispatcher and
//! the closed loop's workers. `tally`: outcomes into counts, histograms and
//! timelines, and the summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

mod pace;
mod tally;

use pace::{open_loop, path_index, worker};
use tally::{summarize, Answer, Tally};

/// The longest a request may take before it counts as an error: bounds a
/// run's tail whatever the server does.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `conns` connections, each sending back to back.
    Closed { conns: usize },
    /// Poisson arrivals at `rate` requests per second, at most `conns` in
    /// flight (and so at most `conns` connections).
    Open { rate: f64, conns: usize },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Shown in the progress line and the report.
    pub label: String,
    pub target: SocketAddr,
    /// Request paths, used in turn, or picked at random with `shuffle`.
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
    /// Seeds the open loop's arrival times and the `shuffle` picks, so that
    /// runs compared with each other see the same schedule and mix.
    pub seed: u64,
    /// Each request picks its path at random from `paths` instead of in
    /// turn: a mix without a pattern a strategy could lock onto.
    pub shuffle: bool,
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
            seed: 1,
            shuffle: false,
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
    /// Open loop: requests that found the `conns` cap reached and waited
    /// for a slot (their latency still counts from the due time). Zero
    /// means the arrivals were never shaped by the driver.
    pub throttled: u64,
    /// The most requests in flight at once.
    pub max_in_flight: u64,
    /// Connections opened (reconnections included).
    pub connections: u64,
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

/// What the workers (closed loop) or request tasks (open loop) share.
struct Shared {
    load: Load,
    start: Instant,
    deadline: Instant,
    /// Next request number (closed loop).
    next: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    /// The timeline bucket of a request due at `due`.
    fn bucket_of(&self, due: Instant) -> usize {
        let width = self.load.bucket.as_nanos().max(1);
        (due.duration_since(self.start).as_nanos() / width) as usize
    }

    /// The path of request number `i`.
    fn path(&self, i: u64) -> &str {
        let l = &self.load;
        &l.paths[path_index(l.seed, i, l.paths.len(), l.shuffle)]
    }

    /// Sends one request with the in-flight count and progress kept.
    async fn send(
        &self,
        sender: &mut Option<SendRequest<Empty<Bytes>>>,
        path: &str,
    ) -> Result<Answer, String> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, request(sender, self, path)).await
        {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if answer.is_err() {
            // The connection's state is unknown: start afresh.
            *sender = None;
        }
        let ok = answer
            .as_ref()
            .is_ok_and(|a| (200..300).contains(&a.status));
        let counter = if ok { &self.ok } else { &self.errors };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }
}

/// Runs `load` to completion and returns what it measured.
pub async fn run(load: Load) -> Result<LoadResult> {
    let (tally, shared, elapsed) = drive(load).await?;
    Ok(summarize(
        shared.load.label.clone(),
        describe(&shared.load.mode),
        tally,
        elapsed,
        &[&shared],
    ))
}

/// Runs `loads` at the same time (say, one driver per balancer) and
/// returns each one's result and one result over all of them, `label`led,
/// whose percentiles come from the merged histograms.
pub async fn run_merged(label: &str, loads: Vec<Load>) -> Result<(Vec<LoadResult>, LoadResult)> {
    let handles: Vec<_> = loads.into_iter().map(|l| tokio::spawn(drive(l))).collect();
    let mut parts = Vec::new();
    for h in handles {
        parts.push(h.await??);
    }
    let width = parts
        .first()
        .map_or(Duration::from_secs(1), |p| p.1.load.bucket);
    let mut all = Tally::new(width);
    let mut results = Vec::new();
    let mut elapsed: f64 = 0.0;
    let mut modes = Vec::new();
    let mut shared = Vec::new();
    for (tally, s, secs) in parts {
        all.merge(tally.clone());
        elapsed = elapsed.max(secs);
        modes.push(describe(&s.load.mode));
        results.push(summarize(
            s.load.label.clone(),
            describe(&s.load.mode),
            tally,
            secs,
            &[&s],
        ));
        shared.push(s);
    }
    let refs: Vec<&Shared> = shared.iter().map(|s| &**s).collect();
    let mode = format!("{} drivers at once: {}", refs.len(), modes.join("; "));
    let merged = summarize(label.to_string(), mode, all, elapsed, &refs);
    Ok((results, merged))
}

fn describe(mode: &Mode) -> String {
    match mode {
        Mode::Closed { conns } => format!("closed loop, {conns} connections"),
        Mode::Open { rate, conns } => {
            format!("open loop, Poisson arrivals at {rate:.1} req/s, at most {conns} in flight")
        }
    }
}

/// Runs one load: its tallies, its shared state and its elapsed seconds.
async fn drive(load: Load) -> Result<(Tally, Arc<Shared>, f64)> {
    anyhow::ensure!(!load.paths.is_empty(), "a load needs at least one path");
    let start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: start + load.duration,
        start,
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        load,
    });
    let progress = tokio::spawn(progress(shared.clone()));
    let tally = match shared.load.mode {
        Mode::Closed { conns } => {
            let workers: Vec<_> = (0..conns.max(1))
                .map(|_| tokio::spawn(worker(shared.clone())))
                .collect();
            let mut total = Tally::new(shared.load.bucket);
            for w in workers {
                total.merge(w.await?);
            }
            total
        }
        Mode::Open { rate, conns } => open_loop(shared.clone(), rate, conns.max(1)).await,
    };
    let elapsed = start.elapsed().as_secs_f64();
    // Stopped at once: waiting for its next tick would add up to a second
    // to every run.
    progress.abort();
    Ok((tally, shared, elapsed))
}

/// Prints a line per second until aborted.
async fn progress(s: Arc<Shared>) {
    let mut tick =
        tokio::time::interval_at(s.start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_ok, mut last_err) = (0, 0);
    let total = s.load.duration.as_secs_f64();
    loop {
        tick.tick().await;
        let ok = s.ok.load(Ordering::Relaxed);
        let err = s.errors.load(Ordering::Relaxed);
        eprintln!(
            "  [{}] {:>4.0}s/{total:.0}s  {:>8} req/s  {:>5} errors/s  {:>4} in flight  ({ok} ok, {err} errors so far)",
            s.load.label,
            s.start.elapsed().as_secs_f64(),
            ok - last_ok,
            err - last_err,
            s.in_flight.load(Ordering::Relaxed),
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

/// Sends one request (connecting first when needed) and reads the whole
/// response.
async fn request(
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    s: &Shared,
    path: &str,
) -> Result<Answer> {
    if sender.as_ref().map_or(true, SendRequest::is_closed) {
        *sender = Some(connect(s.load.target).await?);
        s.connections.fetch_add(1, Ordering::Relaxed);
    }
    let Some(tx) = sender.as_mut() else {
        unreachable!("connected above")
    };
    tx.ready().await?;
    let mut req = http::Request::get(path).header(http::header::HOST, "bench.local");
    if s.load.gzip {
        req = req.header(http::header::ACCEPT_ENCODING, "gzip");
    }
    let resp = tx.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let backend = resp.headers().get("x-backend").cloned();
    let gzipped = resp
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
    Ok(Answer {
        status,
        backend,
        bytes,
        gzipped,
    })
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

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
