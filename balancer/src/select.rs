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
    /// Requests this balancer has open there now, until their response
    /// body ends (what `least-connections` counts, as nginx does).
    pub in_flight: u32,
    /// Of those, the ones waiting on the backend now: before the response
    /// head, or while the body waits for the backend's next bytes. A
    /// response held up by a slow-reading client is not the backend's
    /// work and is not counted (what `least-loaded` counts).
    pub busy: u32,
    /// How much slower than its peers it serves the same kind of request
    /// (1: in line), faded towards 1 by age ([`crate::latency`]).
    pub slowness: f64,
    /// Its mean service time in seconds (0: none measured yet).
    pub service: f64,
    /// Its turn counter among equals (stride scheduling's pass): ties go
    /// to the lowest, which then advances by 1 / its share, so equally
    /// ranked backends take turns in proportion to their shares, as
    /// nginx's and HAProxy's least-connections go round robin among equals.
    pub pass: f64,
    /// No attempt has finished there yet and none is in flight:
    /// `least-loaded` sends it one before trusting anything else about it.
    pub untried: bool,
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
        busy: 0,
        slowness: 1.0,
        service: 0.0,
        untried: false,
        pass: 0.0,
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
    /// CPUs the host has (fractional under a quota).
    pub cpus: f64,
    /// How old the report is.
    pub age: Duration,
    /// Requests/s this balancer sent there during the report's period.
    pub rate: f64,
    /// Utilization one request/s adds at most: the mean service time over
    /// the host's CPUs (0 before any request finished).
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
        self.interval.saturating_mul(3) / 2
    }

    /// From this age a report is ignored: the load counts as unknown.
    pub fn expiry(&self) -> Duration {
        self.interval.saturating_mul(4)
    }
}

/// Share of `least-loaded` picks made at random among healthy backends
/// with nothing waiting on them, so
/// that a host which looked busy keeps receiving a trickle of traffic and is
/// never starved forever (Traefik #12306): its latency is measured afresh
/// and, with [`crate::latency`]'s time-weighted averages, a probe after a
/// silence stands for the host as it is now. Small, because agents keep
/// the load data of an unused host fresh anyway, and every random pick to a
/// busy host is a slow request.
pub const PROBE_FLOOR: f64 = 0.01;

/// The most that requests sent since a report can add to a host's
/// estimated utilization before the next report.
pub const MAX_EXTRA: f64 = 0.25;

/// The smallest spare capacity a host is credited with, so a host reported
/// at 100 % still ranks (as 20 times busier than an idle one) instead of
/// dividing by zero.
const MIN_SPARE: f64 = 0.05;

/// Utilization differences within this many points of the pool's median
/// count as none. An agent's figure is a one-second window of a host's
/// CPU; at ten requests a second of 5–20 ms a quarter-core host reads
/// 0.47 ± 0.17 on the same steady load (± 0.28 when one request in ten
/// takes 50 ms), and ranking by that noise herds each poll interval's
/// traffic onto whichever host drew the low number, then away from it
/// for a second after its burst is over. A host really busier than its
/// peers (a CPU hog beside it: 1.0 against 0.5) keeps all but these 25
/// points of its difference, and its measured slowness besides. (10
/// points were measured to leave least-loaded's open-loop mean 8 % and
/// its p99 22 % behind least-connections' on equal hosts, 23 % and 50 %
/// on the mixed work.)
pub const UTIL_NOISE: f64 = 0.25;

/// Scores within this fraction of the best count as ties, shared in
/// proportion to capacity: differences this small are measurement noise
/// (a utilization a few points apart, a slowness of 1.1), and breaking
/// them deterministically would send every sequential request to whichever
/// host the noise favoured.
pub const TIE_BAND: f64 = 0.25;

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
///    itself: a request keeps at most one CPU busy for as long as the
///    backend takes, so it is the mean service time over the host's CPUs.
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

/// The `least-loaded` score: the time a new request can expect to take
/// there, in units of "an idle host in line with its peers"; lower is
/// better.
///
/// `score = (1 + busy / concurrency) × slowness × pressure`
///
/// - **busy / concurrency** — local and instant: requests this balancer
///   has waiting on the backend, per request the host can run at once
///   ([`queue`]: weight × the CPUs the agent reports, at least 1 each). It
///   rises with every request sent and falls as soon as the backend has
///   answered, so between two polls traffic
///   cannot pile onto the host that looked idle, and a slow-reading client
///   holding a response open does not count against the host. Half-life:
///   none, it is a count.
/// - **slowness** — measured by this balancer: the host's time-weighted
///   average ratio of its own service time to the pool's on the same
///   classes of request ([`crate::latency`], half-life 2 s, fading back
///   to 1 without samples). It tells apart what utilization cannot: two
///   hosts at 100 %, one of them four times slower per request; a host
///   whose agent lies. Samples are taken per request the host ran at
///   once (a request that shared a CPU with two others is counted at a
///   third of its time), so that slowness is the host's speed and the
///   queue stays the queue term's business. Differences within
///   [`SLOWNESS_NOISE`] of 1 count for nothing ([`beyond_noise`]).
/// - **pressure** — the agent's view, `1 / (1 − utilization)` with the
///   utilization interpreted by age ([`estimated_util`]; a report is
///   trusted for 1.5 poll intervals and forgotten after 4) and differences
///   from the pool's median within [`UTIL_NOISE`] ignored, floored spare
///   5 %: the queueing factor of a host with that share of its capacity
///   busy, covering work the balancer cannot see (other balancers, cron
///   jobs, noisy neighbours). With the noise band taken out, a report of
///   100 % reads 75 % at most (pressure 4) while the pool's median is
///   below that, so no agent alone can make a host more than four times
///   less attractive than one it reports idle: it cannot starve a host
///   that serves well. Half-life: none; a report is replaced whole.
///
/// Scores within [`TIE_BAND`] of the best count as equal, and equals take
/// turns in proportion to capacity ([`lowest`]). With nothing in flight and equal loads, traffic spreads by
/// capacity (weight × CPUs); with a host stressed, its utilization and
/// slowness keep it out until the others are several requests deep.
pub fn score(v: &View, m: Medians, p: &Params) -> f64 {
    score_terms(v, m, p).score
}

/// The factors of a `least-loaded` [`score`], one by one: what
/// `GET /decisions` shows for each candidate. Computing them is the score's
/// own arithmetic, so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreTerms {
    /// The utilization believed now ([`estimated_util`]), before the noise
    /// band is taken out.
    pub util: f64,
    /// `1 + busy / concurrency` ([`queue`]).
    pub queue: f64,
    /// The slowness with its noise band taken out ([`beyond_noise`]).
    pub slowness: f64,
    /// `1 / (1 − denoised utilization)`.
    pub pressure: f64,
    /// Their product: the score.
    pub score: f64,
}

/// The `least-loaded` score of `v` with its terms (see [`score`]).
pub fn score_terms(v: &View, m: Medians, p: &Params) -> ScoreTerms {
    let util = estimated_util(v.load.as_ref(), m.util, p);
    let queue = queue(v, m);
    let slowness = beyond_noise(v.slowness);
    let pressure = pressure(denoised(util, m.util));
    ScoreTerms {
        util,
        queue,
        slowness,
        pressure,
        score: queue * slowness * pressure,
    }
}

/// What `least-connections` ranks by: requests in flight per unit of
/// weight × ramp.
pub fn connections_cost(v: &View) -> f64 {
    f64::from(v.in_flight) / v.effective_weight()
}

/// What `least-loaded` ranks by: the score over the ramp, so a backend in
/// slow start looks busier in proportion.
pub fn loaded_cost(v: &View, m: Medians, p: &Params) -> f64 {
    score(v, m, p) / v.clamped_ramp()
}

/// `1 + busy / concurrency`: how many requests a new one shares the host
/// with, per request it can run at once (weight × its CPUs, at least one
/// per unit of weight: a host with a fraction of a CPU still runs one
/// request at a time, at its quota's pace, which its slowness and its
/// utilization tell).
pub fn queue(v: &View, m: Medians) -> f64 {
    let cpus = v.load.map_or(m.cpus, |l| l.cpus).max(1.0);
    1.0 + f64::from(v.busy) / (f64::from(v.weight.max(1)) * cpus)
}

/// A slowness with the noise band taken out: within [`SLOWNESS_NOISE`] of
/// 1 (either way) it counts as 1, beyond it only by its excess (4 reads
/// 3.2). Two hosts serving alike read a few tens of percent apart on a
/// busy machine or a CPU quota's throttling; ranking by that would herd.
pub fn beyond_noise(slowness: f64) -> f64 {
    let l = slowness.max(RATIO_FLOOR).ln();
    (l.signum() * (l.abs() - SLOWNESS_NOISE.ln()).max(0.0)).exp()
}

/// See [`beyond_noise`].
pub const SLOWNESS_NOISE: f64 = 1.25;
const RATIO_FLOOR: f64 = 1e-6;

/// `util` with its difference from the pool's `median` shrunk by
/// [`UTIL_NOISE`] (to nothing when it is smaller).
pub fn denoised(util: f64, median: f64) -> f64 {
    let d = util - median;
    median + d.signum() * (d.abs() - UTIL_NOISE).max(0.0)
}

/// The queueing factor of a host with `util` of its capacity busy.
fn pressure(util: f64) -> f64 {
    1.0 / (1.0 - util).max(MIN_SPARE)
}

/// A backend's capacity: its weight times the CPUs its agent reports (the
/// median of the reported ones while it has no report).
pub fn capacity(v: &View, m: Medians) -> f64 {
    let cpus = v.load.map_or(m.cpus, |l| l.cpus);
    f64::from(v.weight.max(1)) * cpus.max(0.01)
}

/// The pool-wide references a score compares a backend with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    /// Median utilization of the known loads ([`medians`]).
    pub util: f64,
    /// Median CPUs of the backends that reported them.
    pub cpus: f64,
}

/// The median utilization of the backends whose report has not expired
/// (0.5 when none has one: then every backend ranks alike anyway) and the
/// median CPUs of those that ever reported (1 when none has).
pub fn medians(n: usize, view: impl Fn(usize) -> View, p: &Params) -> Medians {
    let known = (0..n).filter_map(|i| view(i).load.filter(|l| l.age < p.expiry()));
    let reported = (0..n).filter_map(|i| view(i).load);
    Medians {
        util: median(known.map(|l| l.util)).unwrap_or(0.5),
        cpus: median(reported.map(|l| l.cpus)).unwrap_or(1.0),
    }
}

/// The median of up to 64 values, without allocating; of an even count,
/// the mean of the two middle ones.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
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
    } else {
        (known[mid - 1] + known[mid]) / 2.0
    })
}

/// What a pick decided: the backend, and its new turn counter when the
/// pick was a turn taken among equals (the caller stores it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The chosen backend.
    pub index: usize,
    /// Its new [`View::pass`], if it changed.
    pub pass: Option<f64>,
    /// Which rule of the strategy chose it (for `GET /decisions`).
    pub why: Why,
}

/// Which rule of a strategy made a pick: the "reason" `GET /decisions`
/// gives for its winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Round robin's turn in the weighted schedule.
    Turn,
    /// Round robin found every eligible backend ramping and skipped, or
    /// outside the schedule: a weighted random draw instead.
    TurnFallback,
    /// A weighted random draw (`random`).
    Random,
    /// The lowest cost, or a turn among those within the tie band.
    Lowest,
    /// `least-loaded`: a backend nobody has measured yet gets one request
    /// first.
    Untried,
    /// `least-loaded`: the [`PROBE_FLOOR`] share sent at random to an idle
    /// backend, so a host that looked busy is measured afresh.
    Probe,
}

impl Why {
    /// A short phrase for operators.
    pub fn describe(self) -> &'static str {
        match self {
            Why::Turn => "round-robin turn",
            Why::TurnFallback => "round-robin: all ramping or off schedule, weighted random",
            Why::Random => "weighted random",
            Why::Lowest => "lowest score",
            Why::Untried => "untried: measured once before its score is trusted",
            Why::Probe => "probe: random pick of an idle backend (1%)",
        }
    }
}

impl Choice {
    fn plain(why: Why) -> impl Fn(usize) -> Choice {
        move |index| Choice {
            index,
            pass: None,
            why,
        }
    }
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
) -> Option<Choice> {
    let eligible = |i: usize| allowed(i) && view(i).up;
    let plain = |why: Why, i: Option<usize>| i.map(Choice::plain(why));
    match how.strategy {
        Strategy::RoundRobin => {
            let len = how.schedule.len();
            let mut skipped = None;
            for k in 0..len {
                // The ticket wraps (an atomic counter): no overflow here either.
                let i = how.schedule[(how.ticket % len + k) % len] as usize;
                if i >= n || !eligible(i) {
                    continue;
                }
                let ramp = view(i).ramp;
                if ramp >= 1.0 || rng.f64() < ramp {
                    return plain(Why::Turn, Some(i));
                }
                skipped.get_or_insert(i);
            }
            // Every eligible backend is ramping and each was skipped; or the
            // schedule (capped in length) leaves out the few that are
            // eligible, which only weights far apart can do.
            match skipped {
                Some(i) => plain(Why::Turn, Some(i)),
                None => plain(Why::TurnFallback, weighted_random(n, &view, eligible, rng)),
            }
        }
        Strategy::Random => plain(Why::Random, weighted_random(n, &view, eligible, rng)),
        // nginx's least_conn: requests in flight per unit of weight, ties
        // taken in turn by weight.
        Strategy::LeastConnections => lowest(
            n,
            &view,
            eligible,
            |i| connections_cost(&view(i)),
            0.0,
            |i| view(i).effective_weight(),
        ),
        Strategy::LeastLoaded => {
            // Relative latency finds a slow host only by comparing it with
            // measured peers: a backend nobody has tried yet gets one
            // request first (one at a time: a cold burst is not herded
            // onto it), or a lying agent's host would take every
            // sequential request while the others stay unmeasured.
            let untried = |i: usize| eligible(i) && view(i).untried;
            if (0..n).any(untried) {
                return plain(Why::Untried, weighted_random(n, &view, untried, rng));
            }
            // A probe goes only to a host with nothing waiting on it: it is
            // there to measure hosts the score avoids (and those are idle),
            // not to queue a request behind others at random.
            let idle = |i: usize| eligible(i) && view(i).busy == 0;
            if rng.f64() < PROBE_FLOOR && (0..n).any(idle) {
                return plain(Why::Probe, weighted_random(n, &view, idle, rng));
            }
            let m = medians(n, &view, &how.params);
            lowest(
                n,
                &view,
                eligible,
                |i| loaded_cost(&view(i), m, &how.params),
                TIE_BAND,
                |i| {
                    let v = view(i);
                    capacity(&v, m) * v.clamped_ramp()
                },
            )
        }
    }
}

/// The eligible index with the lowest `cost`. Costs within `band` (a
/// fraction) of the lowest count as equal, and equals take turns in
/// proportion to `share` by stride scheduling: the one with the lowest
/// [`View::pass`] goes, and its pass advances by 1 / share. A backend that
/// was out of the running for a while rejoins at the back of the current
/// round (its pass is raised to the highest among equals less one turn),
/// not with a backlog of turns to catch up. Turns, not dice: equal hosts
/// that are idle get requests spread evenly in time, which random ties do
/// not (two in a row to one host is common, and on a CPU-quota host the
/// second waits for the first).
fn lowest(
    n: usize,
    view: impl Fn(usize) -> View,
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    band: f64,
    share: impl Fn(usize) -> f64,
) -> Option<Choice> {
    // Costs are computed once; pools beyond 64 backends fall back to
    // computing them twice rather than allocating.
    let mut buf = [f64::INFINITY; 64];
    let mut best = f64::INFINITY;
    let mut any = false;
    // A NaN cost (never expected) ranks last instead of poisoning the min.
    let cost = |i| {
        Some(cost(i))
            .filter(|c: &f64| !c.is_nan())
            .unwrap_or(f64::INFINITY)
    };
    for i in (0..n).filter(|&i| eligible(i)) {
        let c = cost(i);
        if i < buf.len() {
            buf[i] = c;
        }
        best = best.min(c);
        any = true;
    }
    if !any {
        return None;
    }
    let limit = if best.is_finite() {
        best + best.abs() * band.max(1e-9)
    } else {
        f64::INFINITY
    };
    let tied = |i: usize| eligible(i) && (if i < buf.len() { buf[i] } else { cost(i) }) <= limit;
    let step = |i: usize| 1.0 / share(i).max(1e-9);
    let (mut top, mut widest) = (f64::NEG_INFINITY, 0.0f64);
    for i in (0..n).filter(|&i| tied(i)) {
        top = top.max(view(i).pass);
        widest = widest.max(step(i));
    }
    let floor = top - widest;
    // Exact ties (a fresh pool in a test) go to the first in order.
    let mut chosen: Option<(usize, f64)> = None;
    for i in (0..n).filter(|&i| tied(i)) {
        let pass = view(i).pass.max(floor);
        if chosen.map_or(true, |(_, p)| pass < p) {
            chosen = Some((i, pass));
        }
    }
    chosen.map(|(i, pass)| Choice {
        index: i,
        pass: Some(pass + step(i)),
        why: Why::Lowest,
    })
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
    if weights.is_empty() {
        return Vec::new();
    }
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
