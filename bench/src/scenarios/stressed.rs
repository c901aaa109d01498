//! `stressed-host`: four simulated hosts (127.0.0.2..5), each a backend and
//! an agent inside the host's own CPU cgroup with a quota of a quarter of a
//! core; one host also runs a CPU burner in its cgroup. The same fixed
//! batch of `/work?ms=…` requests at the same concurrency goes through the
//! balancer once per strategy; then the same with no host stressed.
//!
//! Quota: four hosts at 0.25 core each take one of this machine's two
//! cores, so the quotas (not the machine) are what limits each host, and
//! the other core is left to the balancer and the load driver.
//!
//! Agent poll interval: 250 ms instead of the default 1 s. A run lasts
//! seconds, so a 1 s poll would leave the balancer blind for a large part
//! of it; four agents polled four times a second cost nothing measurable.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{ms, Ctx};
use crate::cgroup::{self, HostCgroup};
use crate::cluster::{Host, Hosts, LbConfig};
use crate::load::{self, Load, LoadResult, Mode};
use crate::procs::Proc;
use crate::report::{bar_chart, ratio, Goal, Report};

const STRATEGIES: [&str; 4] = ["round-robin", "least-connections", "random", "least-loaded"];
/// The request mix, used in turn: 11.7 ms of CPU per request on average.
const MIX: [&str; 3] = ["/work?ms=5", "/work?ms=10", "/work?ms=20"];
/// Requests in flight at once.
const CONCURRENCY: usize = 6;
/// Spinning processes in the stressed host's cgroup: CPU time there is
/// shared per thread, so three burners leave a backend thread about a
/// quarter of its host, as other work that outnumbers it would.
const BURNERS: usize = 3;
/// CPU quota per host: 25 ms per 100 ms period.
const QUOTA: (u64, u64) = (25_000, 100_000);

#[derive(Debug, Serialize)]
struct Run {
    condition: &'static str,
    strategy: &'static str,
    result: LoadResult,
}

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
        rep.goals(goals(&[]));
        return rep.finish();
    }
    let work = rep.dir.join("run");
    let requests = ctx.pick(600u64, 120);
    let mut groups = Vec::new();
    let mut hosts = Vec::new();
    for i in 1..=4u8 {
        groups.push(HostCgroup::create(
            &format!("bench-host{i}"),
            QUOTA.0,
            QUOTA.1,
        )?);
        hosts.push(Host::on([127, 0, 0, 1 + i], &format!("host-{i}"))?);
    }
    let version = groups[0].version;
    let cluster = Hosts::start(hosts, 1, &work.join("logs"), &groups).await?;
    let mut runs = Vec::new();
    for (condition, stressed) in [("one host stressed", true), ("no host stressed", false)] {
        let mut burners = Vec::new();
        if stressed {
            for _ in 0..BURNERS {
                let mut sh = std::process::Command::new("sh");
                sh.args(["-c", "while :; do :; done"]);
                burners.push(Proc::spawn("burner", groups[0].wrap(&sh), None)?);
            }
            // Let host-1's agent see the burn before the first run.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        for strategy in STRATEGIES {
            let lb = LbConfig {
                strategy,
                agent_interval: "250ms",
                ..LbConfig::local()?
            };
            let _balancer = lb
                .start(&cluster.hosts, 1, &work, &format!("balancer-{strategy}"))
                .await?;
            // Let the first agent polls land.
            tokio::time::sleep(Duration::from_millis(600)).await;
            let label = format!(
                "{strategy}, {}",
                if stressed { "stressed" } else { "no stress" }
            );
            let l = Load {
                label,
                target: lb.listen,
                paths: MIX.iter().map(|s| s.to_string()).collect(),
                mode: Mode::Closed { conns: CONCURRENCY },
                duration: Duration::from_secs(300),
                max_requests: Some(requests),
                gzip: false,
                bucket: Duration::from_secs(1),
                seed: 1,
                shuffle: false,
            };
            let result = load::run(l).await?;
            runs.push(Run {
                condition,
                strategy,
                result,
            });
        }
        crate::procs::stop_all(&mut burners);
    }
    cluster.stop();
    drop(groups);

    rep.para(&format!(
        "Four simulated hosts on 127.0.0.2..5, each a `backend` and an `agent` in its own cgroup ({version}) \
         limited to {:.2} core; host-1's cgroup also runs a CPU burner ({BURNERS} spinning shells) in the \
         stressed condition. {requests} requests of `{}` in turn, {CONCURRENCY} at a time (closed loop), through \
         `balancer --threads 1` with each strategy (agent polls every 250 ms). Latencies in ms.",
        QUOTA.0 as f64 / QUOTA.1 as f64,
        MIX.join("`, `"),
    ));
    for condition in ["one host stressed", "no host stressed"] {
        rep.para(&format!("## {condition}"));
        let rows: Vec<Vec<String>> = runs
            .iter()
            .filter(|r| r.condition == condition)
            .map(|r| {
                let l = &r.result.latency_ms;
                let mut row = vec![
                    r.strategy.to_string(),
                    format!("{:.2}", r.result.elapsed_s),
                    ms(l.mean),
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.p999),
                ];
                row.extend(
                    (1..=4)
                        .map(|i| format!("{:.1}%", 100.0 * r.result.share(&format!("host-{i}")))),
                );
                row.push(r.result.errors.to_string());
                row
            })
            .collect();
        rep.table(
            &[
                "strategy", "total s", "mean", "p50", "p99", "p99.9", "host-1", "host-2", "host-3",
                "host-4", "errors",
            ],
            &rows,
        );
        let cats = ["mean", "p50", "p99", "p99.9"].map(String::from);
        let series: Vec<(String, Vec<f64>)> = runs
            .iter()
            .filter(|r| r.condition == condition)
            .map(|r| {
                let l = &r.result.latency_ms;
                (r.strategy.to_string(), vec![l.mean, l.p50, l.p99, l.p999])
            })
            .collect();
        let file = if condition.starts_with("one") {
            "latency-stressed"
        } else {
            "latency-no-stress"
        };
        rep.chart(
            file,
            &format!("latency per strategy, {condition}"),
            bar_chart(
                &format!("Latency per strategy, {condition}"),
                "ms",
                &cats,
                &series,
            ),
        )?;
    }
    rep.goals(goals(&runs));
    rep.data("runs", &runs);
    rep.data("cgroup", version);
    rep.finish()
}

fn goals(runs: &[Run]) -> Vec<Goal> {
    let get = |cond: &str, strategy: &str, f: fn(&LoadResult) -> f64| {
        runs.iter()
            .find(|r| r.condition == cond && r.strategy == strategy)
            .map(|r| f(&r.result))
    };
    let s = "one host stressed";
    let n = "no host stressed";
    vec![
        Goal::at_most(
            "stressed: least-loaded p99 / round-robin p99",
            0.5,
            ratio(
                get(s, "least-loaded", |r| r.latency_ms.p99),
                get(s, "round-robin", |r| r.latency_ms.p99),
            ),
        ),
        Goal::at_most(
            "stressed: least-loaded mean / round-robin mean",
            0.6,
            ratio(
                get(s, "least-loaded", |r| r.latency_ms.mean),
                get(s, "round-robin", |r| r.latency_ms.mean),
            ),
        ),
        Goal::at_most(
            "stressed: least-loaded total time / round-robin total time",
            0.64,
            ratio(
                get(s, "least-loaded", |r| r.elapsed_s),
                get(s, "round-robin", |r| r.elapsed_s),
            ),
        ),
        Goal::at_most(
            "no stress: least-loaded mean / round-robin mean",
            1.05,
            ratio(
                get(n, "least-loaded", |r| r.latency_ms.mean),
                get(n, "round-robin", |r| r.latency_ms.mean),
            ),
        ),
    ]
}
