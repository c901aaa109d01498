//! From runs to the report: the median of each figure over the rounds,
//! one table and one chart per (condition, pace), and issue 7's goals.

use std::collections::BTreeMap;

use anyhow::Result;
use balancer::config::Strategy;
use serde::Serialize;

use super::measure::{Cond, Pace, Run, Spec, STRATEGIES};
use crate::report::{bar_chart, median, ratio, Goal, Report};
use crate::scenarios::ms;

/// One simulated host, as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub id: String,
    /// Its cgroup's CPU quota, in cores.
    pub quota: f64,
}

/// A measured condition: what was run and every run's result.
#[derive(Debug, Serialize)]
pub struct Measured {
    pub spec: Spec,
    pub hosts: Vec<HostInfo>,
    /// Mean CPU milliseconds per request of the mix.
    pub work_ms: f64,
    /// Requests per second the quotas could serve at best.
    pub capacity: f64,
    pub runs: Vec<Run>,
}

/// One strategy's figures in one (condition, pace): medians over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub strategy: &'static str,
    pub rounds: usize,
    /// Answers, summed over the rounds.
    pub ok: u64,
    /// Closed loop: answers per second. Open loop: arrivals per second
    /// over the arrival window (the rate the Poisson schedule realised).
    pub rps: f64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Each host's share of the answers, by host id, over all rounds
    /// together (so that they add up to 100 %).
    pub shares: BTreeMap<String, f64>,
    /// The smallest and the largest share any host had in any round.
    pub share_range: (f64, f64),
    /// Summed over the rounds.
    pub errors: u64,
    pub throttled: u64,
    /// The largest over the rounds.
    pub max_in_flight: u64,
}

impl Measured {
    /// The medians of `strategy` under `pace`, if it was run.
    pub fn figures(&self, pace: Pace, strategy: &'static str) -> Option<Figures> {
        let runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.pace == pace && r.strategy == strategy)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let med = |f: fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect()).unwrap_or(0.0);
        let answered: u64 = runs.iter().map(|r| r.result.ok).sum();
        let shares = self
            .hosts
            .iter()
            .map(|h| {
                let n: u64 = runs
                    .iter()
                    .filter_map(|r| r.result.by_backend.get(&h.id))
                    .sum();
                (h.id.clone(), n as f64 / answered.max(1) as f64)
            })
            .collect();
        let each = || {
            runs.iter()
                .flat_map(|r| self.hosts.iter().map(|h| r.result.share(&h.id)))
        };
        let share_range = (each().fold(1.0, f64::min), each().fold(0.0, f64::max));
        Some(Figures {
            strategy,
            rounds: runs.len(),
            ok: answered,
            rps: med(|r| match r.pace {
                Pace::Closed => r.result.rps,
                Pace::Open => (r.result.ok + r.result.errors) as f64 / r.secs.max(1e-9),
            }),
            mean: med(|r| r.result.latency_ms.mean),
            p50: med(|r| r.result.latency_ms.p50),
            p99: med(|r| r.result.latency_ms.p99),
            p999: med(|r| r.result.latency_ms.p999),
            shares,
            share_range,
            errors: runs.iter().map(|r| r.result.errors).sum(),
            throttled: runs.iter().map(|r| r.result.throttled).sum(),
            max_in_flight: runs
                .iter()
                .map(|r| r.result.max_in_flight)
                .max()
                .unwrap_or(0),
        })
    }
}

/// Adds one condition's section: what ran, then a table and a chart per pace.
pub fn section(rep: &mut Report, m: &Measured, note: &str) -> Result<()> {
    let spec = &m.spec;
    rep.para(&format!("## {}", spec.cond.title()));
    rep.para(note);
    for &pace in &spec.paces {
        rep.para(&format!("### {}", pace.name()));
        let rows: Vec<Figures> = STRATEGIES
            .iter()
            .filter_map(|s| m.figures(pace, s))
            .collect();
        let rate = match pace {
            Pace::Open => "arrivals/s",
            Pace::Closed => "req/s",
        };
        let mut headers = vec!["strategy", rate, "mean", "p50", "p99", "p99.9"];
        let host_heads: Vec<String> = m
            .hosts
            .iter()
            .map(|h| format!("{} ({} core)", h.id, h.quota))
            .collect();
        headers.extend(host_heads.iter().map(String::as_str));
        headers.push("errors");
        if pace == Pace::Open {
            headers.push("max in flight");
        }
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|f| {
                // No answer, no latency (rather than a flattering 0).
                let lat = |v: f64| if f.ok > 0 { ms(v) } else { "—".into() };
                let mut row = vec![
                    f.strategy.to_string(),
                    format!("{:.1}", f.rps),
                    lat(f.mean),
                    lat(f.p50),
                    lat(f.p99),
                    lat(f.p999),
                ];
                row.extend(m.hosts.iter().map(|h| {
                    format!(
                        "{:.1}%",
                        100.0 * f.shares.get(&h.id).copied().unwrap_or(0.0)
                    )
                }));
                row.push(f.errors.to_string());
                if pace == Pace::Open {
                    row.push(f.max_in_flight.to_string());
                }
                row
            })
            .collect();
        rep.table(&headers, &table);
        let cats = ["mean", "p50", "p99", "p99.9"].map(String::from);
        let series: Vec<(String, Vec<f64>)> = rows
            .iter()
            .map(|f| (f.strategy.to_string(), vec![f.mean, f.p50, f.p99, f.p999]))
            .collect();
        let title = format!("{}, {}", spec.cond.title(), pace.name());
        let file = format!(
            "latency-{}-{}",
            spec.cond.slug(),
            if pace == Pace::Open { "open" } else { "closed" }
        );
        rep.chart(
            &file,
            &format!("latency per strategy: {title}"),
            bar_chart(
                &format!("Latency per strategy: {title}"),
                "ms",
                &cats,
                &series,
            ),
        )?;
    }
    Ok(())
}

/// Issue 7's goals, each with the threshold, from the medians.
/// A comparison with failed requests on either side is not a latency
/// comparison: failures of least-loaded miss the goal, failures of the
/// other side leave it unmeasured; either way the row says so.
pub fn goals(all: &[Measured]) -> Vec<Goal> {
    let ll = Strategy::LeastLoaded.name();
    let lc = Strategy::LeastConnections.name();
    let rr = Strategy::RoundRobin.name();
    let mean: fn(&Figures) -> f64 = |f| f.mean;
    let p99: fn(&Figures) -> f64 = |f| f.p99;
    let (open, closed) = (Pace::Open, Pace::Closed);
    let cmp = |what: String,
               max: f64,
               cond: Cond,
               pace: Pace,
               others: &[&'static str],
               f: fn(&Figures) -> f64| {
        let m = all.iter().find(|m| m.spec.cond == cond);
        let get = |s: &'static str| m.and_then(|m| m.figures(pace, s));
        compare(
            what,
            max,
            get(ll),
            others.iter().map(|s| get(s)).collect(),
            f,
        )
    };
    let throttled: Option<f64> = {
        let open_runs: Vec<&Run> = all
            .iter()
            .flat_map(|m| m.runs.iter())
            .filter(|r| r.pace == Pace::Open)
            .collect();
        (!open_runs.is_empty()).then(|| open_runs.iter().map(|r| r.result.throttled as f64).sum())
    };
    let mut goals = vec![Goal::at_most(
        "1. open loop (Poisson): arrivals held back by the driver's connection cap, all runs",
        0.0,
        throttled,
    )];
    let goal_2 = |cond: Cond, n: &str| {
        let t = cond.title().to_lowercase();
        [
            cmp(
                format!("{n}. {t}, open loop: least-loaded p99 / least-connections p99"),
                0.7,
                cond,
                open,
                &[lc],
                p99,
            ),
            cmp(
                format!("{n}. {t}, open loop: least-loaded mean / least-connections mean"),
                1.0,
                cond,
                open,
                &[lc],
                mean,
            ),
            cmp(
                format!("{n}. {t}, closed loop: least-loaded p99 / round-robin p99"),
                0.5,
                cond,
                closed,
                &[rr],
                p99,
            ),
            cmp(
                format!("{n}. {t}, closed loop: least-loaded p99 / least-connections p99"),
                0.7,
                cond,
                closed,
                &[lc],
                p99,
            ),
        ]
    };
    goals.extend(goal_2(Cond::Stressed, "2"));
    let better = "the better of round-robin and least-connections";
    for pace in [open, closed] {
        let p = pace.name();
        let u = Cond::Unstressed;
        goals.push(cmp(
            format!("3. no host stressed, {p}: least-loaded mean / {better}"),
            1.05,
            u,
            pace,
            &[rr, lc],
            mean,
        ));
        goals.push(cmp(
            format!("3. no host stressed, {p}: least-loaded p99 / {better}"),
            1.10,
            u,
            pace,
            &[rr, lc],
            p99,
        ));
    }
    for pace in [open, closed] {
        let what = format!(
            "4. heterogeneous hosts, {}: least-loaded p99 / least-connections p99",
            pace.name()
        );
        goals.push(cmp(what, 0.7, Cond::Heterogeneous, pace, &[lc], p99));
    }
    let range = all
        .iter()
        .find(|m| m.spec.cond == Cond::Mixed)
        .and_then(|m| m.figures(open, ll))
        .map(|f| f.share_range);
    let mixed = Cond::Mixed;
    goals.extend([
        cmp(
            "5. mixed work, open loop: least-loaded mean / least-connections mean".into(),
            1.05,
            mixed,
            open,
            &[lc],
            mean,
        ),
        cmp(
            "5. mixed work, open loop: least-loaded p99 / least-connections p99".into(),
            1.05,
            mixed,
            open,
            &[lc],
            p99,
        ),
        Goal::at_least(
            "5. mixed work, open loop: least-loaded's smallest share of any host in any round, %",
            15.0,
            range.map(|r| 100.0 * r.0),
        ),
        Goal::at_most(
            "5. mixed work, open loop: least-loaded's largest share of any host in any round, %",
            35.0,
            range.map(|r| 100.0 * r.1),
        ),
    ]);
    goals.extend(goal_2(Cond::ThreeBalancers, "6"));
    goals
}

/// `least-loaded`'s figure over the best of `others`' (at most `max`).
fn compare(
    what: String,
    max: f64,
    ll: Option<Figures>,
    others: Vec<Option<Figures>>,
    f: fn(&Figures) -> f64,
) -> Goal {
    let (Some(ll), Some(others)) = (ll, others.into_iter().collect::<Option<Vec<Figures>>>())
    else {
        return Goal::at_most(&what, max, None);
    };
    let failed: Vec<String> = others
        .iter()
        .filter(|o| o.errors > 0)
        .map(|o| format!("{} {}", o.strategy, o.errors))
        .collect();
    let best = others.iter().map(f).fold(f64::INFINITY, f64::min);
    let measured = (ll.ok > 0)
        .then(|| ratio(Some(f(&ll)), Some(best)))
        .flatten();
    if ll.errors > 0 {
        let mut g = Goal::at_most(
            &format!("{what} (least-loaded: {} failed requests)", ll.errors),
            max,
            measured,
        );
        g.met = Some(false);
        g
    } else if !failed.is_empty() {
        Goal::at_most(
            &format!("{what} (failed requests: {})", failed.join(", ")),
            max,
            None,
        )
    } else {
        Goal::at_most(&what, max, measured)
    }
}

#[cfg(test)]
mod tests {
    use super::{compare, Figures};

    fn fig(strategy: &'static str, p99: f64, ok: u64, errors: u64) -> Option<Figures> {
        Some(Figures {
            strategy,
            rounds: 3,
            ok,
            rps: 40.0,
            mean: p99 / 4.0,
            p50: p99 / 5.0,
            p99,
            p999: p99,
            shares: Default::default(),
            share_range: (0.25, 0.25),
            errors,
            throttled: 0,
            max_in_flight: 5,
        })
    }

    #[test]
    fn failed_requests_never_pass_for_low_latency() {
        let p99: fn(&Figures) -> f64 = |f| f.p99;
        let row = |ll, others| {
            let g = compare("x".into(), 0.7, ll, others, p99);
            (g.measured.map(|m| (m * 100.0).round() / 100.0), g.met)
        };
        let rr = || fig("round-robin", 400.0, 100, 0);
        let lc = || fig("least-connections", 200.0, 100, 0);
        // Against the better of the others.
        assert_eq!(
            row(fig("least-loaded", 100.0, 100, 0), vec![rr(), lc()]),
            (Some(0.5), Some(true))
        );
        assert_eq!(
            row(fig("least-loaded", 180.0, 100, 0), vec![rr(), lc()]),
            (Some(0.9), Some(false))
        );
        // Least-loaded failing: missed, whatever its latency (none at all here).
        assert_eq!(
            row(fig("least-loaded", 0.0, 0, 85), vec![lc()]),
            (None, Some(false))
        );
        assert_eq!(
            row(fig("least-loaded", 100.0, 90, 10), vec![lc()]),
            (Some(0.5), Some(false))
        );
        // The other side failing: no comparison.
        assert_eq!(
            row(
                fig("least-loaded", 100.0, 100, 0),
                vec![fig("least-connections", 0.0, 0, 50)]
            ),
            (None, None)
        );
        // Not run.
        assert_eq!(row(None, vec![lc()]), (None, None));
        assert_eq!(
            row(fig("least-loaded", 100.0, 100, 0), vec![None]),
            (None, None)
        );
    }
}
