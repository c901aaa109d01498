//! `tls`: what TLS costs our balancer next to nginx and HAProxy (issue 9),
//! with 1 and with 2 workers, as `throughput` does for plain HTTP.
//!
//! Each proxy listens twice, plain and TLS (one self-signed ECDSA P-256
//! certificate for all, from [`crate::certs`]), in front of the same three
//! backends with keep-alive to them. Every round runs, per proxy in turn
//! (A B C A B C …):
//!
//! - `wrk -tN -c64` over plain HTTP: the reference, so that the report can
//!   tell TLS's cost from the proxy's own;
//! - `wrk -tN -c64` over `https://`, keep-alive (64 handshakes, then
//!   requests): the record layer's cost;
//! - full TLS 1.3 handshakes from [`crate::handshake`], 64 at a time, one
//!   `GET /` each with `Connection: close`: the handshake's cost.
//!
//! The proxy's CPU time is read from `/proc` around each run. Three rounds,
//! medians. A proxy that does not start (our balancer before it has
//! `[tls]`), or whose run fails, gets its error in the report instead of
//! figures: the others are still measured.
//!
//! Why a scenario of its own rather than part of `throughput`: the three
//! runs per proxy per round would add about five minutes to `throughput`'s
//! six, and TLS is compared on its own terms (handshakes, TLS against plain
//! on the same process); `bench all` runs both.
//!
//! Here: starting the proxies and measuring. `summary`: medians, tables,
//! charts and the goals.

mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::throughput::{cpu, per_100k};
use super::Ctx;
use crate::certs::CertFiles;
use crate::cluster::{Host, Hosts};
use crate::handshake::{self, Handshakes};
use crate::procs::{stop_all, system_bin, CpuTimes, Proc};
use crate::proxies::{self, Kind, Opts, Proxy};
use crate::report::{Goal, Report};
use crate::wrk;

/// Concurrent connections of every run, as in `throughput`.
const CONNS: usize = 64;
/// The worker counts, as in `throughput`.
const WORKERS: [usize; 2] = [1, 2];
/// The proxies, in the order of every round (no `direct`: the backends
/// speak plain HTTP only).
const KINDS: [Kind; 3] = [Kind::Ours, Kind::Nginx, Kind::Haproxy];

/// The three kinds of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// wrk, plain HTTP, keep-alive.
    Plain,
    /// wrk, TLS, keep-alive.
    Tls,
    /// Our driver, a full handshake per request.
    Handshakes,
}

impl RunKind {
    const ALL: [RunKind; 3] = [RunKind::Plain, RunKind::Tls, RunKind::Handshakes];

    fn name(self) -> &'static str {
        match self {
            RunKind::Plain => "plain",
            RunKind::Tls => "TLS",
            RunKind::Handshakes => "handshakes",
        }
    }
}

/// One kind of run's figures, one entry per round.
#[derive(Debug, Default, Serialize)]
struct Series {
    /// Requests (or handshakes) per second.
    rps: Vec<f64>,
    /// The proxy's CPU seconds per 100,000 requests (or handshakes).
    cpu: Vec<CpuTimes>,
    /// wrk's non-2xx/3xx and socket errors, or the driver's failed
    /// connections, over all rounds.
    errors: u64,
}

/// One proxy's figures at one worker count.
#[derive(Debug, Default, Serialize)]
struct Figures {
    plain: Series,
    tls: Series,
    handshakes: Series,
    /// Protocol, suite, group and ALPN, as the handshake driver saw them.
    negotiated: Option<String>,
    /// The handshake driver's first failure.
    handshake_error: Option<String>,
    /// Why the proxy was not (fully) measured: it did not start, or a run
    /// failed (it is left out of the later runs).
    failed: Option<String>,
}

impl Figures {
    fn series(&self, k: RunKind) -> &Series {
        match k {
            RunKind::Plain => &self.plain,
            RunKind::Tls => &self.tls,
            RunKind::Handshakes => &self.handshakes,
        }
    }

    fn series_mut(&mut self, k: RunKind) -> &mut Series {
        match k {
            RunKind::Plain => &mut self.plain,
            RunKind::Tls => &mut self.tls,
            RunKind::Handshakes => &mut self.handshakes,
        }
    }
}

/// Everything measured at one worker count.
#[derive(Debug, Serialize)]
struct Pass {
    workers: usize,
    figures: BTreeMap<&'static str, Figures>,
}

/// The run's shape, for the report's text.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rounds: usize,
    secs: Duration,
    wrk: bool,
}

/// What every run needs besides the proxy.
struct Env {
    wrk: Option<PathBuf>,
    /// Pins wrk's OpenSSL to the handshake driver's settings.
    openssl_conf: PathBuf,
    certs: CertFiles,
}

/// One run's outcome.
struct Outcome {
    rps: f64,
    /// The CPU figure's denominator.
    count: u64,
    errors: u64,
    negotiated: Option<String>,
    first_error: Option<String>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "tls",
        "TLS: balancer vs nginx vs HAProxy, 1 and 2 workers",
    )?;
    let work = rep.dir.join("run");
    let env = Env {
        wrk: system_bin("wrk"),
        openssl_conf: work.join("openssl.cnf"),
        certs: CertFiles::generate(&work.join("certs"))?,
    };
    std::fs::write(&env.openssl_conf, handshake::openssl_conf())?;
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &[]).await?;
    let shape = Shape {
        rounds: ctx.pick(3, 1),
        secs: ctx.secs(5.0, 1.0),
        wrk: env.wrk.is_some(),
    };
    let mut passes = Vec::new();
    let mut skipped = Vec::new();
    for workers in WORKERS {
        let dir = work.join(format!("workers-{workers}"));
        let (pass, skip) = measure(ctx, &cluster.hosts, &dir, workers, shape, &env).await?;
        passes.push(pass);
        skipped = skip;
    }
    cluster.stop();
    summary::write(&mut rep, &passes, &skipped, shape)?;
    rep.data("passes", &passes);
    rep.data("skipped", &skipped);
    rep.finish()
}

/// Starts the proxies with `workers` workers and TLS, measures, stops
/// them.
async fn measure(
    ctx: &Ctx,
    hosts: &[Host],
    dir: &Path,
    workers: usize,
    shape: Shape,
    env: &Env,
) -> Result<(Pass, Vec<String>)> {
    let (proxies, skipped, mut figs) = start_all(hosts, dir, workers, env).await;
    // Warm-up: connections, pools, the TLS libraries' lazy set-up.
    let warm = ctx.secs(1.0, 0.3);
    for p in &proxies {
        let label = format!("{} ×{workers} warm-up", p.kind.name());
        for k in [RunKind::Tls, RunKind::Handshakes] {
            if let Err(e) = one_run(k, p, env, workers, warm, &label).await {
                figs.entry(p.kind.name()).or_default().failed =
                    Some(format!("{} warm-up failed: {e:#}", k.name()));
            }
        }
    }
    for round in 1..=shape.rounds {
        for k in RunKind::ALL {
            for p in &proxies {
                let f = figs.entry(p.kind.name()).or_default();
                if f.failed.is_some() {
                    continue;
                }
                let label = format!("{} ×{workers} {} r{round}", p.kind.name(), k.name());
                let cpu0 = cpu(p);
                match one_run(k, p, env, workers, shape.secs, &label).await {
                    Ok(Some(o)) => {
                        let c = per_100k(cpu0, cpu(p), o.count);
                        record(f, k, o, c);
                    }
                    Ok(None) => {}
                    Err(e) => f.failed = Some(format!("{} run failed: {e:#}", k.name())),
                }
            }
        }
    }
    let mut procs: Vec<Proc> = proxies.into_iter().filter_map(|p| p.proc).collect();
    stop_all(&mut procs);
    let pass = Pass {
        workers,
        figures: figs,
    };
    Ok((pass, skipped))
}

/// Starts every proxy of [`KINDS`] with TLS. Returns the started ones, the
/// notes of those skipped (not installed), and the figures with a failure
/// recorded for each that did not start (our balancer without `[tls]`).
async fn start_all(
    hosts: &[Host],
    dir: &Path,
    workers: usize,
    env: &Env,
) -> (Vec<Proxy>, Vec<String>, BTreeMap<&'static str, Figures>) {
    let opts = Opts {
        workers,
        tls: Some(env.certs.clone()),
        ..Opts::default()
    };
    let mut figs: BTreeMap<&'static str, Figures> = BTreeMap::new();
    let mut proxies = Vec::new();
    let mut skipped = Vec::new();
    for kind in KINDS {
        match proxies::start(kind, hosts, dir, opts.clone()).await {
            Ok(Ok(p)) => proxies.push(p),
            Ok(Err(why)) => {
                eprintln!("  {why}");
                skipped.push(why);
            }
            Err(e) => {
                eprintln!("  {} ×{workers} did not start: {e:#}", kind.name());
                figs.entry(kind.name()).or_default().failed = Some(format!("did not start: {e:#}"));
            }
        }
    }
    (proxies, skipped, figs)
}

/// One run of kind `k` against `p`; `None` when it needs wrk and wrk is
/// not installed.
async fn one_run(
    k: RunKind,
    p: &Proxy,
    env: &Env,
    workers: usize,
    secs: Duration,
    label: &str,
) -> Result<Option<Outcome>> {
    let tls = p
        .tls
        .ok_or_else(|| anyhow::anyhow!("{} has no TLS listener", p.kind.name()))?;
    if k == RunKind::Handshakes {
        let r = handshake::run(&Handshakes {
            label: label.to_string(),
            addr: tls,
            conns: CONNS,
            duration: secs,
            cert: env.certs.der.clone(),
        })
        .await?;
        if r.ok == 0 {
            anyhow::bail!(
                "no handshake succeeded ({} failed; the first: {})",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
        return Ok(Some(Outcome {
            rps: r.rps,
            count: r.ok,
            errors: r.errors,
            negotiated: r.negotiated,
            first_error: r.first_error,
        }));
    }
    let Some(bin) = &env.wrk else {
        return Ok(None);
    };
    let spec = wrk::Run {
        addr: if k == RunKind::Tls { tls } else { p.addr },
        tls: k == RunKind::Tls,
        threads: workers,
        conns: CONNS,
        secs,
        openssl_conf: Some(env.openssl_conf.clone()),
    };
    let r = wrk::run_spec(bin, label, &spec).await?;
    if r.requests == 0 {
        anyhow::bail!("wrk got no answer ({} errors)", r.errors);
    }
    Ok(Some(Outcome {
        rps: r.rps,
        count: r.requests,
        errors: r.errors,
        negotiated: None,
        first_error: None,
    }))
}

/// Adds one run's outcome (and the proxy's CPU per 100,000 over it) to
/// the proxy's figures.
fn record(f: &mut Figures, k: RunKind, o: Outcome, cpu: Option<CpuTimes>) {
    let s = f.series_mut(k);
    s.rps.push(o.rps);
    s.cpu.extend(cpu);
    s.errors += o.errors;
    if o.negotiated.is_some() {
        f.negotiated = o.negotiated;
    }
    if f.handshake_error.is_none() {
        f.handshake_error = o.first_error;
    }
}
