//! `stressed-host`: least-loaded against round-robin, least-connections and
//! random on simulated hosts whose CPU is limited by cgroup quotas; it
//! measures each goal of issue 7 as a `Goal` row with the threshold.
//!
//! # Hosts
//!
//! A simulated host is a `backend` (one worker thread; `/work` burns CPU on
//! its blocking pool) and an `agent`, on their own loopback address
//! (127.0.0.2 and up), both inside the host's own CPU cgroup. The agent
//! reports the cgroup's quota as `cpus` (and `cores`, rounded up).
//!
//! # Conditions
//!
//! Each is run with every strategy (no weights configured anywhere):
//!
//! | condition | hosts | paced |
//! |---|---|---|
//! | no host stressed | four of 0.25 core | open and closed loop |
//! | mixed work | the same; 90 % `/work?ms=1`, 10 % `/work?ms=50`, drawn at random per request (seeded) | open loop |
//! | one host stressed | the same; host-1's cgroup also runs three spinning shells | open and closed loop |
//! | three balancers | as stressed; three `balancer`s per strategy (the same `lb.toml` but their listen and admin ports), each with its own concurrent driver sending a third of the load | open and closed loop, figures over the merged histograms |
//! | heterogeneous | three of 0.25, 0.5 and 1 core | open and closed loop |
//!
//! Otherwise the mix is `/work?ms=5`, `10`, `20` in turn (11.7 ms of CPU per
//! request on average). Closed loop: 6 connections (2 per driver with three
//! balancers). Open loop: Poisson arrivals ([`crate::load`]) at 45 % of the
//! hosts' *nominal* capacity, `Σ quota / mean CPU per request`: 1 core /
//! 11.7 ms = 86 req/s for four quarter-core hosts, so 39 req/s. The stressed
//! host's quota counts whole, as in the issue's own measurement (4 × 0.45
//! core at 80 req/s of 10 ms); its backend really gets about a quarter of
//! it (three burners and the backend's thread share it), so the load is
//! about 55 % of what is left. The per-request work outside `/work`
//! (HTTP, the hand-off to the blocking pool: tenths of a millisecond) is
//! not counted, which matters most for the mixed work's 1 ms requests.
//!
//! # Why these quotas (two shared cores)
//!
//! Four hosts of 0.25 core take one of the machine's two cores, leaving the
//! other to the balancer(s), the load driver and the agents, so the quotas
//! and not the machine limit each host. The heterogeneous hosts keep the
//! issue's 0.25, 0.5 and 1 core: 1.75 cores of quota. In the open loop at
//! 45 % they use about 0.8 core, which leaves more than a core for the
//! rest; in the closed loop all three can be busy at once, and the
//! balancer and the driver at these rates (under 200 req/s: a few percent
//! of a core) still fit in the quarter core left. Halving the quotas
//! (0.125 / 0.25 / 0.5) would fit more easily but would make the small host
//! serve 12.5 ms per 100 ms period, turning each 20 ms request into a wait
//! of several periods: a different experiment from the issue's.
//!
//! # Rounds and medians
//!
//! On this shared machine a single figure swings by ±25 %, so a full run
//! repeats every (condition, pace, strategy) three times, rotating the
//! strategies' order each round, and reports the median of each figure;
//! goals are ratios of medians. Each round gives every strategy the same
//! seeds (arrivals and mix), and a fresh set of balancers serves each
//! condition. Host shares are counted over all rounds together; goal 5's
//! share bounds hold for every host in every round. A full run takes about 11 minutes, `--quick` (one round of
//! short runs) under 2.
//!
//! Agent poll interval: 250 ms instead of the default 1 s. A run lasts
//! seconds, so a 1 s poll would leave the balancer blind for a large part
//! of it; a dozen agents polled four times a second cost nothing measurable.

mod measure;
mod summary;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::Ctx;
use crate::cgroup::{self, HostCgroup};
use crate::cluster::{Host, Hosts};
use crate::procs::Proc;
use crate::report::{Goal, Report};
use measure::{Cond, Pace, Spec, Timing};
use summary::{HostInfo, Measured};

/// The usual request mix, used in turn: 11.7 ms of CPU per request.
const MIX: [&str; 3] = ["/work?ms=5", "/work?ms=10", "/work?ms=20"];
/// Quota of each of the four equal hosts, in cores.
const EQUAL: f64 = 0.25;
/// Quotas of the heterogeneous hosts, in cores.
const HETEROGENEOUS: [f64; 3] = [0.25, 0.5, 1.0];
/// The CFS period every quota is expressed in (the kernel's default).
const PERIOD_US: u64 = 100_000;
/// Open loop: the offered load, as a fraction of the nominal capacity.
const LOAD: f64 = 0.45;
/// Closed loop: requests in flight at once (over all drivers).
const CONCURRENCY: usize = 6;
/// Spinning processes in the stressed host's cgroup: CPU time there is
/// shared per thread, so three burners leave a backend thread about a
/// quarter of its host, as other work that outnumbers it would.
const BURNERS: usize = 3;

pub async fn run(ctx: &Ctx) -> Result<Vec<Goal>> {
    let mut rep = Report::new(
        &ctx.out,
        "stressed-host",
        "Stressed host: least-loaded vs the other strategies",
    )?;
    if let Some(why) = cgroup::unavailable() {
        let msg = format!("stressed-host skipped: {why}");
        eprintln!("  {msg}");
        rep.para(&msg);
        rep.data("skipped", &msg);
        rep.goals(summary::goals(&[]));
        return rep.finish();
    }
    let others = cgroup::others();
    if !others.is_empty() {
        let msg = format!(
            "Another bench run (PID {}) has simulated hosts on this machine right now: both compete \
             for the same two cores, so these figures are disturbed.",
            others.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
        eprintln!("  warning: {msg}");
        rep.para(&format!("**Warning.** {msg}"));
    }
    let began = Instant::now();
    let timing = Timing {
        rounds: ctx.pick(3, 1),
        open: ctx.secs(7.0, 2.0),
        closed: ctx.secs(4.0, 1.5),
    };
    let work = rep.dir.join("run");
    let mix: Vec<String> = MIX.iter().map(|s| s.to_string()).collect();
    let mut mixed = vec!["/work?ms=1".to_string(); 9];
    mixed.push("/work?ms=50".to_string());
    let both = vec![Pace::Open, Pace::Closed];

    let mut all = Vec::new();
    let (groups, cluster) = start_hosts(&[EQUAL; 4], &work).await?;
    let version = groups[0].version;
    let hosts = &cluster.hosts;
    for s in [
        spec(Cond::Unstressed, &both, &mix, false, &[EQUAL; 4], 1),
        spec(Cond::Mixed, &[Pace::Open], &mixed, true, &[EQUAL; 4], 1),
    ] {
        all.push(condition(s, timing, hosts, &work).await?);
    }
    let mut burners = Vec::new();
    for _ in 0..BURNERS {
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", "while :; do :; done"]);
        burners.push(Proc::spawn("burner", groups[0].wrap(&sh), None)?);
    }
    // Let host-1's agent see the burn before the first run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in [
        spec(Cond::Stressed, &both, &mix, false, &[EQUAL; 4], 1),
        spec(Cond::ThreeBalancers, &both, &mix, false, &[EQUAL; 4], 3),
    ] {
        all.push(condition(s, timing, hosts, &work).await?);
    }
    crate::procs::stop_all(&mut burners);
    cluster.stop();
    drop(groups);

    let (groups, cluster) = start_hosts(&HETEROGENEOUS, &work).await?;
    let reports = agent_reports(&cluster.hosts).await;
    let s = spec(Cond::Heterogeneous, &both, &mix, false, &HETEROGENEOUS, 1);
    all.push(condition(s, timing, &cluster.hosts, &work).await?);
    cluster.stop();
    drop(groups);
    let took = began.elapsed().as_secs_f64();

    rep.para(&format!(
        "Simulated hosts on 127.0.0.2 and up, each a `backend` and an `agent` in its own CPU cgroup \
         ({version}, {PERIOD_US} µs period), behind `balancer --threads 1` with each strategy (agent \
         polls every 250 ms, no weights). Closed loop: {CONCURRENCY} connections sending back to back. \
         Open loop: Poisson arrivals at {:.0} % of the nominal capacity, Σ quota ÷ mean CPU ms per request \
         (the stressed host's quota counted whole), latency from each arrival's due time. {} round(s) of \
         {:.1} s (open) and {:.1} s (closed) runs, strategies rotated each round; rates and latencies \
         are medians over the rounds, host shares are over all rounds together, and goals are ratios \
         of medians. Latencies in ms. The whole scenario \
         took {took:.0} s.",
        LOAD * 100.0,
        timing.rounds,
        timing.open.as_secs_f64(),
        timing.closed.as_secs_f64(),
    ));
    for m in &all {
        let note = note(m, &reports);
        summary::section(&mut rep, m, &note)?;
    }
    rep.goals(summary::goals(&all));
    rep.data("timing", timing);
    rep.data("cgroup", version);
    rep.data("heterogeneous_agent_reports", &reports);
    rep.data("took_s", took);
    rep.data("conditions", &all);
    rep.finish()
}

/// One cgroup per quota (`bench-host1.<PID>`, …) and a host in each.
async fn start_hosts(quotas: &[f64], work: &Path) -> Result<(Vec<HostCgroup>, Hosts)> {
    let mut groups = Vec::new();
    let mut hosts = Vec::new();
    for (i, q) in (1u8..).zip(quotas) {
        let quota_us = (q * PERIOD_US as f64).round() as u64;
        groups.push(HostCgroup::create(
            &format!("bench-host{i}"),
            quota_us,
            PERIOD_US,
        )?);
        hosts.push(Host::on([127, 0, 0, 1 + i], &format!("host-{i}"))?);
    }
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &groups).await?;
    Ok((groups, cluster))
}

/// The spec of `cond`, its open-loop rate at [`LOAD`] of the hosts'
/// nominal capacity.
fn spec(
    cond: Cond,
    paces: &[Pace],
    paths: &[String],
    shuffle: bool,
    quotas: &[f64],
    balancers: usize,
) -> Spec {
    Spec {
        cond,
        paces: paces.to_vec(),
        paths: paths.to_vec(),
        shuffle,
        rate: LOAD * capacity(quotas, paths),
        conns: CONCURRENCY,
        balancers,
    }
}

/// Requests per second `quotas` (in cores) can serve at best: their sum
/// over the mix's mean CPU time per request.
fn capacity(quotas: &[f64], paths: &[String]) -> f64 {
    quotas.iter().sum::<f64>() * 1000.0 / work_ms(paths)
}

/// The mean `ms=` of `/work` paths (a list with repeats is a weighted mix).
fn work_ms(paths: &[String]) -> f64 {
    let ms: Vec<f64> = paths
        .iter()
        .filter_map(|p| p.split_once("ms=")?.1.split('&').next()?.parse().ok())
        .collect();
    (ms.iter().sum::<f64>() / ms.len().max(1) as f64).max(1e-3)
}

async fn condition(spec: Spec, timing: Timing, hosts: &[Host], work: &Path) -> Result<Measured> {
    eprintln!("\n  -- {} --", spec.cond.title());
    let runs = measure::measure(&spec, timing, hosts, work).await?;
    let quotas: Vec<f64> = match spec.cond {
        Cond::Heterogeneous => HETEROGENEOUS.to_vec(),
        _ => vec![EQUAL; hosts.len()],
    };
    Ok(Measured {
        work_ms: work_ms(&spec.paths),
        capacity: capacity(&quotas, &spec.paths),
        hosts: hosts
            .iter()
            .zip(quotas)
            .map(|(h, quota)| HostInfo {
                id: h.id.clone(),
                quota,
            })
            .collect(),
        spec,
        runs,
    })
}

/// Each agent's `/load` answer (for the report: what capacity it tells).
async fn agent_reports(hosts: &[Host]) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for h in hosts {
        let v = match crate::load::get(h.agent, "/load").await {
            Ok((200, body)) => serde_json::from_slice(&body).unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        out.push((h.id.clone(), v));
    }
    out
}

/// The paragraph under a condition's heading.
fn note(m: &Measured, reports: &[(String, serde_json::Value)]) -> String {
    let s = &m.spec;
    let quotas: Vec<String> = m.hosts.iter().map(|h| format!("{}", h.quota)).collect();
    let mix = if s.shuffle {
        "90 % `/work?ms=1`, 10 % `/work?ms=50`, drawn at random per request (seeded)".to_string()
    } else {
        format!("`{}` in turn", s.paths.join("`, `"))
    };
    let mut text = format!(
        "{} hosts of {} core; {mix}: {:.1} ms of CPU per request, so a nominal capacity of \
         {:.2} cores ÷ {:.1} ms = {:.0} req/s; open loop at {:.1} req/s.",
        m.hosts.len(),
        quotas.join(", "),
        m.work_ms,
        m.hosts.iter().map(|h| h.quota).sum::<f64>(),
        m.work_ms,
        m.capacity,
        s.rate,
    );
    match s.cond {
        Cond::Stressed | Cond::ThreeBalancers => text.push_str(&format!(
            " host-1's cgroup also runs {BURNERS} spinning shells, which leave its backend about a \
             quarter of its quota."
        )),
        _ => {}
    }
    if s.cond == Cond::ThreeBalancers {
        text.push_str(&format!(
            " Three balancers per strategy, each with its own driver: {:.1} req/s each in the open \
             loop, {} connections each in the closed loop. Figures are over the three drivers' \
             merged histograms; each balancer sees only its own requests in flight.",
            s.rate / 3.0,
            CONCURRENCY / 3
        ));
    }
    if s.cond == Cond::Heterogeneous {
        let told: Vec<String> = reports
            .iter()
            .map(|(id, v)| format!("{id}: cpus {}, cores {}", v["cpus"], v["cores"]))
            .collect();
        text.push_str(&format!(
            " No weights are configured: the capacity is what the agents tell ({}).",
            told.join("; ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{capacity, work_ms, EQUAL, HETEROGENEOUS, MIX};

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capacity_is_the_quotas_over_the_mean_work() {
        let mix = paths(&MIX);
        assert!((work_ms(&mix) - 35.0 / 3.0).abs() < 1e-9);
        assert!((capacity(&[EQUAL; 4], &mix) - 1000.0 / (35.0 / 3.0)).abs() < 1e-6);
        assert!((capacity(&HETEROGENEOUS, &mix) - 1750.0 / (35.0 / 3.0)).abs() < 1e-6);
        let mut mixed = vec!["/work?ms=1"; 9];
        mixed.push("/work?ms=50&x=1");
        assert!((work_ms(&paths(&mixed)) - 5.9).abs() < 1e-9);
    }
}
