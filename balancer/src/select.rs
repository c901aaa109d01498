//! The selection strategies: pure functions from what is known about each
//! backend (a [`View`]) to the index of the one to use.
//!
//! Nothing here reads a clock, an atomic or a random source of its own:
//! views, the round-robin ticket and the random generator are passed in,
//! so every policy is tested with tables of cases.

use std::time::Duration;

use crate::config::Strategy;

/// What a strategy may know about one backend at the moment of choosing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Healthy: may receive new requests.
    pub up: bool,
    /// Configured relative capacity.
    pub weight: u32,
    /// Requests this balancer has in flight there now.
    pub in_flight: u32,
    /// Moving average of its request durations, seconds (0: none yet).
    pub latency: f64,
    /// Time since the last request there finished.
    pub latency_age: Duration,
    /// The latest load report, if one is held.
    pub load: Option<LoadView>,
    /// Slow start: the share of its weight the backend takes now, from
    /// `slow_start::START` for one that just came up to 1.0 (full).
    /// Every strategy scales the weight by it (see [`pick`]).
    pub ramp: f64,
}

impl View {
    /// A placeholder (down, unknown load), for preallocated buffers.
    pub const UNKNOWN: View = View {
        up: false,
        weight: 1,
        in_flight: 0,
        latency: 0.0,
        latency_age: Duration::ZERO,
        load: None,
        ramp: 1.0,
    };

    /// Weight × ramp: the share this backend should take now, relative to
    /// the others.
    pub fn effective_weight(&self) -> f64 {
        f64::from(self.weight.max(1)) * self.clamped_ramp()
    }

    /// The ramp within `MIN_RAMP..=1` (a NaN counts as the minimum).
    fn clamped_ramp(&self) -> f64 {
        if self.ramp >= MIN_RAMP {
            self.ramp.min(1.0)
        } else {
            MIN_RAMP
        }
    }
}

/// The smallest ramp a strategy divides by, so a bad value can never divide
/// by zero.
const MIN_RAMP: f64 = 1e-3;

/// A load report as the selector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadView {
    /// Reported utilization, 0..=1 (CPU, or memory pressure near the limit).
    pub util: f64,
    /// How old the report is.
    pub age: Duration,
    /// Requests/s this balancer sent there during the report's period.
    pub rate: f64,
    /// Utilization one request/s adds at most: the mean request duration
    /// over the host's cores (0 before any request finished).
    pub cost: f64,
    /// Requests sent there since the report.
    pub dispatched: u64,
}

/// Tuning of `least-loaded`, derived from the agent poll interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// The agent poll interval.
    pub interval: Duration,
}

impl Params {
    /// Until this age a report is trusted as it is (one interval plus
    /// slack for a jittered or slow poll).
    pub fn fresh(&self) -> Duration {
        self.interval.mul_f64(1.5)
    }

    /// From this age a report is ignored: the load counts as unknown.
    pub fn expiry(&self) -> Duration {
        self.interval * 4
    }

    /// How fast a backend's measured slowness is forgotten when it gets no
    /// traffic (the time constant of the decay toward "as fast as the
    /// others"), so a host avoided for being slow is tried again.
    pub fn latency_memory(&self) -> Duration {
        self.interval * 10
    }
}

/// Share of `least-loaded` picks made at random among healthy backends, so
/// that a host which looked busy keeps receiving a trickle of traffic and is
/// never starved forever (Traefik #12306). Small, because agents keep the
/// load data of an unused host fresh anyway, and every random pick to a
/// busy host is a slow request.
pub const PROBE_FLOOR: f64 = 0.01;

/// The most that requests sent since a report can add to a host's
/// estimated utilization before the next report.
pub const MAX_EXTRA: f64 = 0.25;

/// The latency factor's dead band: a host counts as slow only beyond this
/// multiple of the pool's median request duration...
const SLOW_RATIO: f64 = 1.5;
/// ...plus this many seconds, so that noise (a cold connection, a
/// scheduler hiccup on sub-millisecond requests) never counts.
const SLOW_SLACK: f64 = 0.005;
/// A slow host counts at most this many times as loaded.
const SLOW_MAX: f64 = 4.0;

/// The smallest spare capacity a host is credited with, so a host reported
/// at 100 % still ranks (as 20 times busier than an idle one) instead of
/// dividing by zero.
const MIN_SPARE: f64 = 0.05;

/// The utilization `least-loaded` believes a backend has now.
///
/// Polled load is stale by nature, and Mitzenmacher ("How useful is old
/// information?", 2000) showed that sending everything to the server that
/// *looked* least loaded on old data can be worse than random. So the
/// report is interpreted by its age (Dahlin, 2000):
///
/// 1. No report, or one older than [`Params::expiry`]: the load is unknown
///    and ranks with `median`, the median of the known loads — never as
///    idle (which would herd traffic onto it) nor as excluded.
/// 2. A report older than [`Params::fresh`] fades linearly toward `median`
///    until it expires, as Envoy's client-side WRR does with stale weights.
/// 3. Requests sent since the report are what the report cannot show yet
///    (the sparse-feedback JSQ idea): if we are sending the host more
///    requests per second than during the period the report measured, its
///    utilization is raised by the extra rate times the cost of one
///    request/s. That cost is bounded from what the balancer measures
///    itself: a request keeps at most one core busy for as long as it
///    takes, so it is the mean request duration over the host's cores.
///    Quick requests barely move the estimate; CPU-heavy ones move it a
///    lot, which is exactly when a poll interval of traffic would
///    otherwise pile onto one host. Only increases count, and at most
///    [`MAX_EXTRA`]: the cost is an upper bound (much of a request's
///    duration is network, not the host's CPU), so it may damp but must
///    not overrule the report; the next report tells the truth.
pub fn estimated_util(load: Option<&LoadView>, median: f64, p: &Params) -> f64 {
    let Some(l) = load else { return median };
    let (fresh, expiry) = (p.fresh(), p.expiry());
    if l.age >= expiry {
        return median;
    }
    let fade = if l.age <= fresh {
        0.0
    } else {
        (l.age - fresh).as_secs_f64() / (expiry - fresh).as_secs_f64()
    };
    let base = (1.0 - fade) * l.util + fade * median;

    // The send rate over the last poll window: what has been sent since the
    // report, topped up with the report period's rate for the part of the
    // window that lies before the report.
    let window = p.interval.as_secs_f64().max(1e-3);
    let age = l.age.as_secs_f64();
    let rate_now = if age < window {
        (l.dispatched as f64 + l.rate * (window - age)) / window
    } else {
        l.dispatched as f64 / age
    };
    let extra = (l.cost * (rate_now - l.rate).max(0.0)).min(MAX_EXTRA);
    (base + extra).clamp(0.0, 1.0)
}

/// How much slower than its peers a backend has been serving, as a
/// multiplier of its score: 1 for a host in line with the pool, up to 4 for
/// one grossly slower, fading back to 1 as its last measurement ages
/// ([`Params::latency_memory`]) so that an avoided host is tried again.
///
/// CPU utilization saturates: a host at 100 % with our requests and a host
/// at 100 % with noisy neighbours report the same number, but requests on
/// the second take several times longer. The balancer measures that itself
/// (the idea behind linkerd's and Finagle's Peak-EWMA, and Prequal's
/// finding that latency is a better signal than CPU). It is a guard, not a
/// ranking: within a dead band (1.5 × the median plus 5 ms) differences are
/// noise and count for nothing, and being faster than the median earns no
/// bonus — otherwise the host with the warmest connections would win every
/// sequential request and the others would never be measured again.
///
/// `factor = 1 + max(0, latency − 1.5 × median − 5 ms) / (median + 5 ms)`,
/// at most 4; 1 when either side has no measurement.
pub fn latency_factor(v: &View, median: f64, p: &Params) -> f64 {
    if v.latency <= 0.0 || median <= 0.0 {
        return 1.0;
    }
    let excess = (v.latency - SLOW_RATIO * median - SLOW_SLACK).max(0.0);
    let raw = (1.0 + excess / (median + SLOW_SLACK)).min(SLOW_MAX);
    let memory = p.latency_memory().as_secs_f64().max(1e-3);
    let fade = (-v.latency_age.as_secs_f64() / memory).exp();
    1.0 + (raw - 1.0) * fade
}

/// The `least-loaded` score: lower is better.
///
/// `(1 + in_flight / weight) × slowness / spare`, with
/// `spare = 1 − utilization` and `slowness` the [`latency_factor`]:
/// the time a new request can expect to take if it queues behind the
/// requests already in flight on a host that has `spare` of its capacity
/// free. The weight scales the queue (a weight-2 host serves twice the
/// requests at once), not the utilization, which agents already report as
/// a fraction of each host's own capacity; equal scores are shared in
/// proportion to weight. The utilization term (the agent's view, [`estimated_util`])
/// covers work the balancer cannot see — other balancers, cron jobs,
/// noisy neighbours — while the in-flight term is local and instant: it
/// rises with every request sent and falls with every response finished,
/// so between two polls traffic cannot pile onto the host that looked idle
/// (32 concurrent requests to an idle host and two half-busy ones split
/// about 16/8/8, not 32/0/0). With nothing in flight, as for sequential
/// traffic, the order is the agents' order: the least utilized host wins.
/// `slowness` tells apart hosts that utilization alone cannot: two hosts
/// at 100 %, one of them twice as slow per request.
pub fn score(v: &View, medians: Medians, p: &Params) -> f64 {
    let util = estimated_util(v.load.as_ref(), medians.util, p);
    let spare = (1.0 - util).max(MIN_SPARE);
    let queue = 1.0 + f64::from(v.in_flight) / f64::from(v.weight.max(1));
    queue * latency_factor(v, medians.latency, p) / spare
}

/// The pool-wide references a score compares a backend with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    /// Median utilization of the known loads ([`median_util`]).
    pub util: f64,
    /// Median request duration of the healthy backends that have one.
    pub latency: f64,
}

/// The median utilization of the backends whose report has not expired,
/// or 0.5 when none has one (then every backend ranks alike anyway).
pub fn median_util(n: usize, view: impl Fn(usize) -> View, p: &Params) -> f64 {
    let known = (0..n).filter_map(|i| view(i).load.filter(|l| l.age < p.expiry()));
    median(known.map(|l| l.util), false).unwrap_or(0.5)
}

/// The lower median request duration of the healthy backends that have
/// one (0 when none has): the lower one so that, of two hosts, the slow one
/// is compared with the fast one and not with their average.
pub fn median_latency(n: usize, view: impl Fn(usize) -> View) -> f64 {
    let measured = (0..n).map(&view).filter(|v| v.up && v.latency > 0.0);
    median(measured.map(|v| v.latency), true).unwrap_or(0.0)
}

/// The median of up to 64 values, without allocating; of an even count,
/// the lower middle one when `low`, else the mean of the two.
fn median(values: impl Iterator<Item = f64>, low: bool) -> Option<f64> {
    let mut buf = [0.0f64; 64];
    let mut len = 0;
    for v in values.take(buf.len()) {
        buf[len] = v;
        len += 1;
    }
    let known = &mut buf[..len];
    if known.is_empty() {
        return None;
    }
    known.sort_unstable_by(f64::total_cmp);
    let mid = known.len() / 2;
    Some(if known.len() % 2 == 1 {
        known[mid]
    } else if low {
        known[mid - 1]
    } else {
        (known[mid - 1] + known[mid]) / 2.0
    })
}

/// Everything a pick needs besides the views.
#[derive(Debug)]
pub struct Pick<'a> {
    /// The policy.
    pub strategy: Strategy,
    /// `least-loaded` tuning.
    pub params: Params,
    /// A ticket from the pool's round-robin counter (used by round-robin).
    pub ticket: usize,
    /// The weighted round-robin order, as built by [`wrr_schedule`].
    pub schedule: &'a [u32],
}

/// Chooses a backend among those that are up and `allowed` (a retry
/// excludes the ones already tried; the pool excludes ejected ones).
/// `None` when there is none.
///
/// A backend in slow start ([`View::ramp`] below 1) takes weight × ramp
/// of its share in every strategy: round robin skips it with probability
/// 1 − ramp (the request goes to the next in the schedule), random draws
/// by weight × ramp, least-connections ranks by in-flight / (weight ×
/// ramp), least-loaded divides the load score by the ramp, so the ramp
/// composes with the load instead of overriding it; ties are shared by
/// weight × ramp.
pub fn pick(
    how: &Pick<'_>,
    n: usize,
    view: impl Fn(usize) -> View,
    allowed: impl Fn(usize) -> bool,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let eligible = |i: usize| allowed(i) && view(i).up;
    match how.strategy {
        Strategy::RoundRobin => {
            let len = how.schedule.len();
            let mut skipped = None;
            for k in 0..len {
                let i = how.schedule[(how.ticket + k) % len] as usize;
                if i >= n || !eligible(i) {
                    continue;
                }
                let ramp = view(i).ramp;
                if ramp >= 1.0 || rng.f64() < ramp {
                    return Some(i);
                }
                skipped.get_or_insert(i);
            }
            // Every eligible backend is ramping and each was skipped.
            skipped
        }
        Strategy::Random => weighted_random(n, &view, eligible, rng),
        // nginx's least_conn: requests in flight per unit of weight, ties
        // shared by weight (so idle backends take turns).
        Strategy::LeastConnections => lowest(n, &view, eligible, rng, |i| {
            let v = view(i);
            f64::from(v.in_flight) / v.effective_weight()
        }),
        Strategy::LeastLoaded => {
            if rng.f64() < PROBE_FLOOR {
                return weighted_random(n, &view, eligible, rng);
            }
            let medians = Medians {
                util: median_util(n, &view, &how.params),
                latency: median_latency(n, &view),
            };
            lowest(n, &view, eligible, rng, |i| {
                let v = view(i);
                score(&v, medians, &how.params) / v.clamped_ramp()
            })
        }
    }
}

/// The eligible index with the lowest `cost`. Ties are broken at random in
/// proportion to weight × ramp (weighted reservoir sampling), so equal
/// backends share traffic as their weights say.
fn lowest(
    n: usize,
    view: impl Fn(usize) -> View,
    eligible: impl Fn(usize) -> bool,
    rng: &mut fastrand::Rng,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    let mut tied_weight = 0.0;
    for i in (0..n).filter(|&i| eligible(i)) {
        let c = cost(i);
        let w = view(i).effective_weight();
        match best {
            Some((_, b)) if c > b + b.abs() * 1e-9 => {}
            Some((_, b)) if c >= b - b.abs() * 1e-9 => {
                tied_weight += w;
                if rng.f64() * tied_weight < w {
                    best = Some((i, b));
                }
            }
            _ => {
                best = Some((i, c));
                tied_weight = w;
            }
        }
    }
    best.map(|(i, _)| i)
}

fn weighted_random(
    n: usize,
    view: impl Fn(usize) -> View,
    eligible: impl Fn(usize) -> bool,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let total: f64 = (0..n)
        .filter(|&i| eligible(i))
        .map(|i| view(i).effective_weight())
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut ticket = rng.f64() * total;
    let mut last = None;
    for i in (0..n).filter(|&i| eligible(i)) {
        let w = view(i).effective_weight();
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
        last = Some(i);
    }
    // Rounding left the ticket just past the end.
    last
}

/// The order weighted round robin walks, computed once per configuration
/// with nginx's smooth algorithm: weights 5/1/1 give `0 0 1 0 2 0 0`
/// rather than five 0s in a row. Capped at 10,000 entries.
pub fn wrr_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w.max(1))).sum();
    let len = total.clamp(1, 10_000) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w.max(1));
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod slow_start_tests;
