//! `throughput`: three backends behind our balancer, nginx and HAProxy
//! (one worker each), and straight to one backend as the ceiling.
//!
//! Runs alternate between the targets (A B C D A B C D …) for three rounds
//! and medians are reported: requests/s from closed-loop runs (64
//! connections, `GET /`), latency from open-loop runs at one fixed rate
//! (half the slowest proxy's throughput, so below saturation for all), the
//! proxy's CPU seconds per 100,000 requests and its peak RSS from `/proc`.
//! Where `wrk` is installed it runs once per target as an outside check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use super::{ms, start_proxies, Ctx};
use crate::cluster::{Host, Hosts};
use crate::load::{self, Load, Mode};
use crate::proxies::{Kind, Opts, Proxy, INSTALL_HINT};
use crate::report::{bar_chart, fmt, median, ratio, Goal, Report};

/// Closed-loop connections, as in the issue's `wrk -c64`.
const CONNS: usize = 64;

/// Per-target figures, one entry per round.
#[derive(Debug, Default, serde::Serialize)]
struct Figures {
    rps: Vec<f64>,
    cpu_per_100k: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    errors: u64,
    peak_rss_mib: Option<f64>,
    wrk_rps: Option<f64>,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "throughput",
        "Throughput: balancer vs nginx vs HAProxy",
    )?;
    let work = rep.dir.join("run");
    let hosts = (1..=3)
        .map(|i| Host::on([127, 0, 0, 1], &format!("b{i}")))
        .collect::<Result<Vec<_>>>()?;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &[]).await?;
    let kinds = [Kind::Ours, Kind::Nginx, Kind::Haproxy, Kind::Direct];
    let (proxies, skipped) = start_proxies(&kinds, &cluster.hosts, &work, Opts::default()).await?;
    let rounds = ctx.pick(3, 1);
    let secs = ctx.secs(5.0, 1.5);

    // Warm-up: connections, pools, caches.
    for p in &proxies {
        load::run(Load::closed(
            &format!("{} warm-up", p.kind.name()),
            p.addr,
            "/",
            CONNS,
            ctx.secs(1.0, 0.3),
        ))
        .await?;
    }
    let mut figs: BTreeMap<&str, Figures> = BTreeMap::new();
    for round in 1..=rounds {
        for p in &proxies {
            let label = format!("{} closed r{round}", p.kind.name());
            let cpu0 = cpu(p);
            let r = load::run(Load::closed(&label, p.addr, "/", CONNS, secs)).await?;
            let f = figs.entry(p.kind.name()).or_default();
            f.rps.push(r.rps);
            f.errors += r.errors;
            if let (Some(a), Some(b)) = (cpu0, cpu(p)) {
                f.cpu_per_100k
                    .push((b - a) / r.ok.max(1) as f64 * 100_000.0);
            }
        }
    }
    // One fixed rate for every target, below the slowest proxy's capacity.
    let slowest = proxies
        .iter()
        .filter(|p| p.kind != Kind::Direct)
        .filter_map(|p| median(figs[p.kind.name()].rps.clone()))
        .fold(f64::INFINITY, f64::min);
    let rate = if slowest.is_finite() {
        (slowest * 0.5).round().max(100.0)
    } else {
        1000.0
    };
    for round in 1..=rounds {
        for p in &proxies {
            let mut l = Load::closed(
                &format!("{} open r{round}", p.kind.name()),
                p.addr,
                "/",
                CONNS,
                secs,
            );
            l.mode = Mode::Open { rate, conns: CONNS };
            let r = load::run(l).await?;
            let f = figs.entry(p.kind.name()).or_default();
            f.p50.push(r.latency_ms.p50);
            f.p99.push(r.latency_ms.p99);
            f.p999.push(r.latency_ms.p999);
            f.errors += r.errors;
        }
    }
    let wrk = crate::procs::system_bin("wrk");
    for p in &proxies {
        let f = figs.entry(p.kind.name()).or_default();
        f.peak_rss_mib = p
            .proc
            .as_ref()
            .and_then(|pr| pr.peak_rss())
            .map(|b| b as f64 / 1048576.0);
        if let Some(wrk) = &wrk {
            f.wrk_rps = run_wrk(wrk, p.addr, secs).await;
        }
    }
    drop(proxies);
    cluster.stop();

    let med =
        |k: &str, f: fn(&Figures) -> &Vec<f64>| figs.get(k).and_then(|x| median(f(x).clone()));
    let mut rows = Vec::new();
    for k in kinds.map(Kind::name) {
        let Some(f) = figs.get(k) else { continue };
        rows.push(vec![
            k.to_string(),
            fmt(med(k, |f| &f.rps), 0),
            med(k, |f| &f.p50).map_or("—".into(), ms),
            med(k, |f| &f.p99).map_or("—".into(), ms),
            med(k, |f| &f.p999).map_or("—".into(), ms),
            fmt(med(k, |f| &f.cpu_per_100k), 2),
            fmt(f.peak_rss_mib, 1),
            f.errors.to_string(),
            fmt(f.wrk_rps, 0),
        ]);
    }
    rep.para(&format!(
        "Three backends (`backend --threads 1`) on 127.0.0.1; each proxy with one worker thread and keep-alive \
         to the backends; `direct` is the load straight to one backend (the ceiling). {rounds} round(s), \
         targets alternating, medians shown. Requests/s: closed loop, {CONNS} connections, `GET /`, {:.1} s per \
         run. Latency: open loop at {rate:.0} requests/s (half the slowest proxy's throughput), {CONNS} \
         connections. CPU: the proxy process's user+system seconds per 100,000 requests (closed-loop runs). \
         The load driver shares this machine's 2 cores with everything else: compare ratios, not absolutes.",
        secs.as_secs_f64()
    ));
    if wrk.is_none() {
        rep.para(&format!(
            "wrk cross-check skipped: not installed ({INSTALL_HINT})."
        ));
    }
    for s in &skipped {
        rep.para(s);
    }
    rep.table(
        &[
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU s / 100k req",
            "peak RSS MiB",
            "errors",
            "wrk req/s",
        ],
        &rows,
    );
    let present: Vec<&str> = kinds
        .map(Kind::name)
        .into_iter()
        .filter(|k| figs.contains_key(k))
        .collect();
    let rps: Vec<f64> = present
        .iter()
        .map(|k| med(k, |f| &f.rps).unwrap_or(0.0))
        .collect();
    let names: Vec<String> = present.iter().map(|s| s.to_string()).collect();
    rep.chart(
        "requests-per-second",
        "requests/s per proxy",
        bar_chart(
            "Requests/s (closed loop, 64 connections)",
            "requests/s",
            &names,
            &[("req/s".into(), rps)],
        ),
    )?;
    let lat_series: Vec<(String, Vec<f64>)> = present
        .iter()
        .map(|k| {
            let v = [med(k, |f| &f.p50), med(k, |f| &f.p99), med(k, |f| &f.p999)];
            (k.to_string(), v.iter().map(|x| x.unwrap_or(0.0)).collect())
        })
        .collect();
    let cats = ["p50", "p99", "p99.9"].map(String::from);
    rep.chart(
        "latency",
        "latency percentiles per proxy",
        bar_chart(
            &format!("Latency at {rate:.0} req/s (open loop)"),
            "ms",
            &cats,
            &lat_series,
        ),
    )?;

    // Goals against the better of nginx and HAProxy.
    let best = |f: fn(&Figures) -> &Vec<f64>, better_high: bool| {
        let v: Vec<f64> = ["nginx", "haproxy"]
            .iter()
            .filter_map(|k| med(k, f))
            .collect();
        let r = v
            .iter()
            .copied()
            .reduce(if better_high { f64::max } else { f64::min });
        r
    };
    let ours = |f: fn(&Figures) -> &Vec<f64>| med("balancer", f);
    let wrk_best = ["nginx", "haproxy"]
        .iter()
        .filter_map(|k| figs.get(k).and_then(|f| f.wrk_rps))
        .reduce(f64::max);
    let wrk_ours = figs.get("balancer").and_then(|f| f.wrk_rps);
    let goals = vec![
        Goal::at_least(
            "requests/s (wrk -t1 -c64): ours / better of nginx, HAProxy",
            1.2,
            ratio(wrk_ours, wrk_best),
        ),
        Goal::at_least(
            "requests/s: ours / better of nginx, HAProxy",
            1.2,
            ratio(ours(|f| &f.rps), best(|f| &f.rps, true)),
        ),
        Goal::at_most(
            "p99: ours / better of nginx, HAProxy",
            1.0,
            ratio(ours(|f| &f.p99), best(|f| &f.p99, false)),
        ),
        Goal::at_most(
            "CPU per request: ours / better of nginx, HAProxy",
            0.8,
            ratio(ours(|f| &f.cpu_per_100k), best(|f| &f.cpu_per_100k, false)),
        ),
    ];
    rep.goals(goals);
    rep.data("rate_open_loop", rate);
    rep.data("figures", &figs);
    rep.data("skipped", &skipped);
    rep.finish()
}

fn cpu(p: &Proxy) -> Option<f64> {
    p.proc.as_ref().and_then(|pr| pr.cpu_seconds())
}

/// `wrk -t1 -c64 -d<secs>` against `addr`; its Requests/sec.
async fn run_wrk(wrk: &std::path::Path, addr: SocketAddr, secs: Duration) -> Option<f64> {
    let mut cmd = std::process::Command::new(wrk);
    cmd.args([
        "-t1",
        &format!("-c{CONNS}"),
        &format!("-d{}s", secs.as_secs().max(1)),
    ])
    .arg(format!("http://{addr}/"));
    eprintln!(
        "  [wrk {addr}] running for {:.0}s",
        secs.as_secs_f64().max(1.0)
    );
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}
