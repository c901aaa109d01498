//! `throughput`: three backends behind our balancer, nginx and HAProxy,
//! and straight to one backend as the ceiling; the whole scenario once with
//! one worker per proxy and once with two (issue 8).
//!
//! At each worker count runs alternate between the targets (A B C D A B C
//! D …) for three rounds and medians are reported. Every round has a
//! closed-loop run of our driver (64 connections, `GET /`) and a `wrk
//! -tN -c64` run per target, N the worker count, and the proxy's CPU time
//! (user and system, over its process tree) is read around each: requests/s
//! and CPU per request come from both load generators. Latency comes from
//! open-loop runs at one fixed rate (half the slowest proxy's closed-loop
//! throughput at that worker count). Peak RSS is read at the end.
//!
//! Here: starting the targets and measuring ([`crate::wrk`] runs wrk).
//! `summary`: medians, tables, charts and the goals.

mod summary;

pub(crate) use summary::workers_label;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{start_proxies, Ctx};
use crate::cluster::{Host, Hosts};
use crate::load::{self, Load, Mode};
use crate::procs::{stop_all, CpuTimes, Proc};
use crate::proxies::{Kind, Opts, Proxy};
use crate::report::{median, Goal, Report};
use crate::wrk;

/// Closed-loop connections, as in the issue's `wrk -c64`.
const CONNS: usize = 64;
/// The worker counts the issue measures at.
const WORKERS: [usize; 2] = [1, 2];
/// The targets, in the order of every round.
const KINDS: [Kind; 4] = [Kind::Ours, Kind::Nginx, Kind::Haproxy, Kind::Direct];

/// One target's figures at one worker count, one entry per round.
#[derive(Debug, Default, Serialize)]
struct Figures {
    /// Our driver, closed loop.
    rps: Vec<f64>,
    /// The proxy's CPU seconds per 100,000 requests in those runs.
    cpu: Vec<CpuTimes>,
    /// wrk's requests/s.
    wrk_rps: Vec<f64>,
    /// The proxy's CPU seconds per 100,000 requests in the wrk runs.
    wrk_cpu: Vec<CpuTimes>,
    /// Open loop, milliseconds.
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    /// Failed requests of our driver, closed and open loop.
    errors: u64,
    /// wrk's non-2xx/3xx responses and socket errors.
    wrk_errors: u64,
    /// Open-loop arrivals the driver held back at its connection cap: the
    /// target fell behind the rate, and its latency shows saturation.
    throttled: u64,
    /// Summed over the proxy's processes (nginx's master and workers).
    peak_rss_mib: Option<f64>,
}

/// Everything measured at one worker count.
#[derive(Debug, Serialize)]
struct Pass {
    workers: usize,
    /// The open loop's rate, requests/s.
    rate: f64,
    figures: BTreeMap<&'static str, Figures>,
}

impl Pass {
    /// The median over the rounds of one figure of `target`.
    fn med(&self, target: &str, f: fn(&Figures) -> &Vec<f64>) -> Option<f64> {
        self.figures.get(target).and_then(|x| median(f(x).clone()))
    }

    /// The median over the rounds of one CPU figure of `target`.
    fn med_cpu(&self, target: &str, f: fn(&Figures) -> &Vec<CpuTimes>) -> Option<CpuTimes> {
        self.figures
            .get(target)
            .and_then(|x| median_cpu(f(x).clone()))
    }
}

/// The run's shape, for the report's text.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rounds: usize,
    secs: Duration,
    wrk: bool,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "throughput",
        "Throughput: balancer vs nginx vs HAProxy, 1 and 2 workers",
    )?;
    let work = rep.dir.join("run");
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &[]).await?;
    let wrk = crate::procs::system_bin("wrk");
    let shape = Shape {
        rounds: ctx.pick(3, 1),
        secs: ctx.secs(5.0, 1.5),
        wrk: wrk.is_some(),
    };
    let mut passes = Vec::new();
    let mut skipped = Vec::new();
    for workers in WORKERS {
        let dir = work.join(format!("workers-{workers}"));
        let (pass, skip) =
            measure(ctx, &cluster.hosts, &dir, workers, shape, wrk.as_deref()).await?;
        passes.push(pass);
        skipped = skip;
    }
    cluster.stop();
    summary::write(&mut rep, &passes, &skipped, shape)?;
    rep.data("passes", &passes);
    rep.data("skipped", &skipped);
    rep.finish()
}

/// The whole scenario at one worker count: starts the proxies with
/// `workers` workers, measures, stops them.
async fn measure(
    ctx: &Ctx,
    hosts: &[Host],
    dir: &Path,
    workers: usize,
    shape: Shape,
    wrk: Option<&Path>,
) -> Result<(Pass, Vec<String>)> {
    let opts = Opts {
        workers,
        ..Opts::default()
    };
    let (proxies, skipped) = start_proxies(&KINDS, hosts, dir, opts).await?;
    let name = |p: &Proxy| p.kind.name();
    let secs = shape.secs;

    // Warm-up: connections, pools, caches.
    for p in &proxies {
        let label = format!("{} ×{workers} warm-up", name(p));
        load::run(Load::closed(&label, p.addr, "/", CONNS, ctx.secs(1.0, 0.3))).await?;
    }
    let mut figs: BTreeMap<&'static str, Figures> = BTreeMap::new();
    for round in 1..=shape.rounds {
        for p in &proxies {
            let label = format!("{} ×{workers} closed r{round}", name(p));
            let cpu0 = cpu(p);
            let r = load::run(Load::closed(&label, p.addr, "/", CONNS, secs)).await?;
            let f = figs.entry(name(p)).or_default();
            f.rps.push(r.rps);
            f.errors += r.errors;
            f.cpu.extend(per_100k(cpu0, cpu(p), r.ok));
        }
        let Some(wrk) = wrk else { continue };
        for p in &proxies {
            let label = format!("{} ×{workers} wrk r{round}", name(p));
            let cpu0 = cpu(p);
            let r = wrk::run(wrk, &label, p.addr, workers, CONNS, secs).await?;
            let f = figs.entry(name(p)).or_default();
            f.wrk_rps.push(r.rps);
            f.wrk_errors += r.errors;
            f.wrk_cpu.extend(per_100k(cpu0, cpu(p), r.requests));
        }
    }
    // One fixed rate for every target, below the slowest proxy's capacity.
    let slowest = proxies
        .iter()
        .filter(|p| p.kind != Kind::Direct)
        .filter_map(|p| median(figs[name(p)].rps.clone()))
        .fold(f64::INFINITY, f64::min);
    let rate = if slowest.is_finite() {
        (slowest * 0.5).round().max(100.0)
    } else {
        1000.0
    };
    for round in 1..=shape.rounds {
        for p in &proxies {
            let label = format!("{} ×{workers} open r{round}", name(p));
            let mut l = Load::closed(&label, p.addr, "/", CONNS, secs);
            l.mode = Mode::Open { rate, conns: CONNS };
            let r = load::run(l).await?;
            let f = figs.entry(name(p)).or_default();
            f.p50.push(r.latency_ms.p50);
            f.p99.push(r.latency_ms.p99);
            f.p999.push(r.latency_ms.p999);
            f.errors += r.errors;
            f.throttled += r.throttled;
        }
    }
    for p in &proxies {
        figs.entry(name(p)).or_default().peak_rss_mib = p
            .proc
            .as_ref()
            .and_then(Proc::peak_rss)
            .map(|b| b as f64 / 1_048_576.0);
    }
    let mut procs: Vec<Proc> = proxies.into_iter().filter_map(|p| p.proc).collect();
    stop_all(&mut procs);
    let pass = Pass {
        workers,
        rate,
        figures: figs,
    };
    Ok((pass, skipped))
}

/// The proxy's CPU time so far (its whole process tree); `None` for
/// `direct`.
pub(crate) fn cpu(p: &Proxy) -> Option<CpuTimes> {
    p.proc.as_ref().and_then(Proc::cpu_times)
}

/// CPU seconds per 100,000 requests between two readings.
pub(crate) fn per_100k(
    before: Option<CpuTimes>,
    after: Option<CpuTimes>,
    requests: u64,
) -> Option<CpuTimes> {
    let (a, b) = (before?, after?);
    Some((b - a).scale(100_000.0 / requests.max(1) as f64))
}

/// The median by total: the middle reading (the mean of the middle two
/// for an even count), so that its user and system parts add up to the
/// median total.
pub(crate) fn median_cpu(mut v: Vec<CpuTimes>) -> Option<CpuTimes> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total().total_cmp(&b.total()));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]).scale(0.5)
    })
}

#[cfg(test)]
mod tests {
    use super::{median_cpu, per_100k, CpuTimes};

    fn t(user: f64, system: f64) -> CpuTimes {
        CpuTimes { user, system }
    }

    #[test]
    fn cpu_median_is_one_reading_by_total() {
        let m = median_cpu(vec![t(1.0, 5.0), t(3.0, 1.0), t(0.5, 0.5)]).unwrap();
        assert_eq!(m, t(3.0, 1.0));
        let m = median_cpu(vec![t(1.0, 1.0), t(2.0, 2.0)]).unwrap();
        assert_eq!(m, t(1.5, 1.5));
        assert_eq!(median_cpu(vec![]), None);
    }

    #[test]
    fn cpu_per_100k_requests() {
        let c = per_100k(Some(t(1.0, 2.0)), Some(t(2.0, 4.0)), 200_000).unwrap();
        assert_eq!(c, t(0.5, 1.0));
        assert_eq!(per_100k(None, Some(t(1.0, 1.0)), 1), None);
    }
}
