//! Running one condition: its balancers (one per strategy, or three per
//! strategy in the three-balancer condition), then rounds of runs that
//! alternate the strategies, each run as open or closed loop.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use balancer::config::Strategy;
use serde::Serialize;

use crate::cluster::{Host, LbConfig};
use crate::load::{self, Load, LoadResult, Mode};
use crate::procs::Group;

/// The strategies compared, in the order of the first round.
pub const STRATEGIES: [&str; 4] = [
    Strategy::RoundRobin.name(),
    Strategy::LeastConnections.name(),
    Strategy::Random.name(),
    Strategy::LeastLoaded.name(),
];

/// What a condition varies (hosts, stress, mix, balancers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cond {
    Unstressed,
    Mixed,
    Stressed,
    ThreeBalancers,
    Heterogeneous,
}

impl Cond {
    /// The section heading.
    pub fn title(self) -> &'static str {
        match self {
            Cond::Unstressed => "No host stressed",
            Cond::Mixed => "Mixed work, no host stressed",
            Cond::Stressed => "One host stressed",
            Cond::ThreeBalancers => "Three balancers, one host stressed",
            Cond::Heterogeneous => "Heterogeneous hosts",
        }
    }

    /// For file names and labels.
    pub fn slug(self) -> &'static str {
        match self {
            Cond::Unstressed => "no-stress",
            Cond::Mixed => "mixed",
            Cond::Stressed => "stressed",
            Cond::ThreeBalancers => "three-balancers",
            Cond::Heterogeneous => "heterogeneous",
        }
    }
}

/// How a run's requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// Poisson arrivals at the condition's rate.
    Open,
    /// A fixed number of connections sending back to back.
    Closed,
}

impl Pace {
    pub fn name(self) -> &'static str {
        match self {
            Pace::Open => "open loop",
            Pace::Closed => "closed loop",
        }
    }
}

/// One condition to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub cond: Cond,
    pub paces: Vec<Pace>,
    /// The request mix: used in turn, or at random with `shuffle`.
    pub paths: Vec<String>,
    pub shuffle: bool,
    /// Open loop: arrivals per second over all drivers together.
    pub rate: f64,
    /// Closed loop: connections over all drivers together.
    pub conns: usize,
    /// Balancers per strategy, each with its own driver and an equal part
    /// of the load.
    pub balancers: usize,
}

/// Durations and repetitions, from `--quick`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub rounds: usize,
    pub open: Duration,
    pub closed: Duration,
}

/// One run: one strategy, one pace, one round.
#[derive(Debug, Serialize)]
pub struct Run {
    pub pace: Pace,
    pub strategy: &'static str,
    pub round: usize,
    /// Its nominal duration: the open loop's arrival window.
    pub secs: f64,
    /// Over all drivers (merged histograms when there are several).
    pub result: LoadResult,
    /// Each driver's own result, when there are several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<LoadResult>,
}

/// Upper bound on the requests of any run, beside its duration.
const MAX_REQUESTS: u64 = 50_000;
/// Open loop: the most requests in flight per driver. Far above what a
/// run at 45 % of capacity reaches (tens), so arrivals are never held
/// back; the report shows the count that were ([`LoadResult::throttled`]).
const OPEN_CAP: usize = 256;

/// Starts `spec.balancers` balancers per strategy in front of `hosts`,
/// then runs every (round, pace, strategy), rotating the strategies' order
/// each round so that none always follows the same one. Every balancer is
/// stopped before this returns.
pub async fn measure(spec: &Spec, timing: Timing, hosts: &[Host], work: &Path) -> Result<Vec<Run>> {
    let mut procs = Group::default();
    let mut lbs: Vec<(&'static str, Vec<LbConfig>)> = Vec::new();
    for strategy in STRATEGIES {
        let mut these = Vec::new();
        for k in 0..spec.balancers.max(1) {
            let lb = LbConfig {
                strategy,
                agent_interval: "250ms",
                ..LbConfig::local()?
            };
            let name = format!("balancer-{}-{strategy}-{k}", spec.cond.slug());
            procs.push(lb.start(hosts, 1, work, &name).await?);
            these.push(lb);
        }
        lbs.push((strategy, these));
    }
    // Let the first agent polls and health probes land.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut runs = Vec::new();
    for round in 0..timing.rounds {
        for &pace in &spec.paces {
            let mut order = lbs.iter().collect::<Vec<_>>();
            let turn = round % order.len();
            order.rotate_left(turn);
            for (strategy, targets) in order {
                let loads: Vec<Load> = targets
                    .iter()
                    .enumerate()
                    .map(|(k, lb)| load_for(spec, timing, pace, strategy, round, k, lb))
                    .collect();
                let (parts, result) = if loads.len() == 1 {
                    (
                        Vec::new(),
                        load::run(loads.into_iter().next().expect("one")).await?,
                    )
                } else {
                    let label =
                        format!("{strategy}, {}, {} r{round}", spec.cond.slug(), pace.name());
                    load::run_merged(&label, loads).await?
                };
                let secs = match pace {
                    Pace::Open => timing.open,
                    Pace::Closed => timing.closed,
                }
                .as_secs_f64();
                runs.push(Run {
                    pace,
                    strategy,
                    round,
                    secs,
                    result,
                    parts,
                });
            }
        }
    }
    drop(procs);
    Ok(runs)
}

/// Driver `k`'s load against balancer `lb`. Every strategy sees the same
/// seeds in a round (the same arrivals and the same mix); the seeds change
/// from round to round and from driver to driver.
fn load_for(
    spec: &Spec,
    timing: Timing,
    pace: Pace,
    strategy: &str,
    round: usize,
    k: usize,
    lb: &LbConfig,
) -> Load {
    let n = spec.balancers.max(1);
    let (mode, duration) = match pace {
        Pace::Open => (
            Mode::Open {
                rate: spec.rate / n as f64,
                conns: OPEN_CAP,
            },
            timing.open,
        ),
        Pace::Closed => (
            Mode::Closed {
                conns: (spec.conns / n).max(1),
            },
            timing.closed,
        ),
    };
    let driver = if n > 1 {
        format!(" lb{}", k + 1)
    } else {
        String::new()
    };
    Load {
        label: format!(
            "{strategy}, {}, {} r{}{driver}",
            spec.cond.slug(),
            pace.name(),
            round + 1
        ),
        target: lb.listen,
        paths: spec.paths.clone(),
        mode,
        duration,
        max_requests: Some(MAX_REQUESTS),
        gzip: false,
        bucket: Duration::from_secs(1),
        seed: 7919 * (round as u64 + 1) + 104_729 * k as u64,
        shuffle: spec.shuffle,
    }
}
