//! Why a request went where it went: the last choices made, each with
//! every candidate's score terms and the winner, for `GET /decisions` and
//! the status page.
//!
//! Recording is sampled by time, so the request path pays next to nothing:
//! a choice is recorded when at least [`GAP`] has passed since the last
//! recorded one (at most 20 a second, every choice at a lower rate). The
//! check is one relaxed load of a word written at most 20 times a second,
//! against the clock reading the pick takes anyway; a sampled choice wins
//! a compare-and-swap, recomputes the candidates' terms from the views
//! the pick used, allocates one [`Decision`] and stores it in a ring of
//! [`RING`] `ArcSwapOption` slots (no lock: readers copy the slots out).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::config::Strategy;
use crate::select::{self, Choice, Medians, Pick, View, Why};

/// How many decisions are kept.
pub const RING: usize = 64;

/// The least time between two recorded decisions.
pub const GAP: Duration = Duration::from_millis(50);

/// Request targets are cut to this many bytes.
const MAX_TARGET: usize = 120;

/// The request a choice is made for.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// Its method.
    pub method: &'a http::Method,
    /// Its path and query.
    pub target: &'a str,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
}

/// One recorded choice, as `GET /decisions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Its number: decisions recorded before it, since the start.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Method and target, cut to 120 bytes.
    pub request: String,
    /// 1 for a first attempt, more for retries.
    pub attempt: u32,
    /// The pool chosen in (`"default"`: the top-level `backends`).
    pub pool: String,
    /// The pool's strategy.
    pub strategy: &'static str,
    /// The chosen backend; `None`: there was none (`503`).
    pub winner: Option<SocketAddr>,
    /// Why the winner, in a phrase.
    pub reason: String,
    /// Whether panic mode let ejected backends in.
    pub panic: bool,
    /// Every backend of the pool, in configuration order.
    pub candidates: Vec<Candidate>,
}

/// One backend as the choice saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The backend.
    pub addr: SocketAddr,
    /// What the strategy ranks by (lower wins): `least-loaded`'s score over
    /// the ramp, `least-connections`' in-flight per weight; `None` for
    /// round robin and random, which do not rank.
    pub score: Option<f64>,
    /// Agent-reported CPU (`None`: no report).
    pub cpu: Option<f64>,
    /// The report's age.
    pub load_age_ms: Option<u64>,
    /// The utilization `least-loaded` believes now (faded by age, raised
    /// by what was sent since the report, the median when unknown).
    pub util: Option<f64>,
    /// `least-loaded`'s queue term, `1 + busy / concurrency`.
    pub queue: Option<f64>,
    /// `least-loaded`'s pressure term, `1 / (1 - utilization)` (noise band
    /// out).
    pub pressure: Option<f64>,
    /// Requests open there.
    pub in_flight: u32,
    /// Of those, waiting on the backend.
    pub busy: u32,
    /// Measured slowness against its peers (1: in line).
    pub slowness: f64,
    /// Slow-start ramp (1: full share).
    pub slow_start: f64,
    /// Configured weight.
    pub weight: u32,
    /// Not measured yet (`least-loaded` tries it first).
    pub untried: bool,
    /// `up`, `down`, `ejected`, `ejected (panic: allowed)`, `tried`, or
    /// the operator's `disabled`, `draining`, `drained`.
    pub state: &'static str,
    /// Whether it could have been chosen.
    pub eligible: bool,
}

/// The ring of recent decisions.
#[derive(Debug)]
pub struct Decisions {
    slots: Box<[ArcSwapOption<Decision>]>,
    /// Decisions recorded, ever (the next slot is this modulo [`RING`]).
    seq: AtomicU64,
    /// Milliseconds since `origin` before which nothing is recorded.
    next_ms: AtomicU64,
    origin: Instant,
}

impl Default for Decisions {
    fn default() -> Decisions {
        Decisions {
            slots: (0..RING).map(|_| ArcSwapOption::empty()).collect(),
            seq: AtomicU64::new(0),
            next_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

/// What a pick saw, for recording it.
pub struct Seen<'a> {
    /// The pick's parameters.
    pub how: &'a Pick<'a>,
    /// The pool's name.
    pub pool: &'a str,
    /// The pool's backends.
    pub backends: &'a [Arc<Backend>],
    /// Each backend's view, whether it was ejected, and whether it is in
    /// rotation (an operator's drain or disable takes it out).
    pub states: &'a [(View, bool, bool)],
    /// Whether a retry already tried it.
    pub tried: &'a dyn Fn(usize) -> bool,
    /// Panic mode.
    pub panic: bool,
}

impl Decisions {
    /// Whether a choice made at `now` is to be recorded (claims the turn).
    pub fn sample(&self, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        ms >= next
            && self
                .next_ms
                .compare_exchange(next, ms + GAP.as_millis() as u64, Relaxed, Relaxed)
                .is_ok()
    }

    /// Records a sampled choice.
    pub fn record(&self, asked: &Asked<'_>, seen: &Seen<'_>, choice: Option<Choice>) {
        let seq = self.seq.fetch_add(1, Relaxed);
        let decision = Decision {
            seq,
            ..describe(asked, seen, choice)
        };
        self.slots[(seq % RING as u64) as usize].store(Some(Arc::new(decision)));
    }

    /// The decisions held, newest first.
    pub fn recent(&self) -> Vec<Arc<Decision>> {
        let mut all: Vec<Arc<Decision>> = self.slots.iter().filter_map(|s| s.load_full()).collect();
        all.sort_by_key(|d| std::cmp::Reverse(d.seq));
        all
    }
}

fn describe(asked: &Asked<'_>, seen: &Seen<'_>, choice: Option<Choice>) -> Decision {
    let n = seen.states.len();
    let view = |i: usize| seen.states[i].0;
    let params = &seen.how.params;
    let medians = select::medians(n, view, params);
    let candidates: Vec<Candidate> = (0..n).map(|i| candidate(seen, i, medians)).collect();
    let eligible = candidates.iter().filter(|c| c.eligible).count();
    let reason = match choice {
        None => "no eligible backend: every one is down, ejected or already tried".to_owned(),
        Some(_) if eligible == 1 => "the only eligible backend".to_owned(),
        Some(c) if c.why == Why::Lowest => lowest_reason(seen.how.strategy, &candidates),
        Some(c) => c.why.describe().to_owned(),
    };
    let reason = if seen.panic {
        format!("{reason}; panic mode: ejected backends allowed")
    } else {
        reason
    };
    Decision {
        seq: 0,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        request: request_line(asked),
        attempt: asked.attempt,
        pool: seen.pool.to_owned(),
        strategy: seen.how.strategy.name(),
        winner: choice
            .and_then(|c| seen.backends.get(c.index))
            .map(|b| b.addr),
        reason,
        panic: seen.panic,
        candidates,
    }
}

/// "lowest score", saying when others were within the tie band and the
/// winner took its turn among them.
fn lowest_reason(strategy: Strategy, candidates: &[Candidate]) -> String {
    let scores = || {
        candidates
            .iter()
            .filter(|c| c.eligible)
            .filter_map(|c| c.score)
    };
    let best = scores().fold(f64::INFINITY, f64::min);
    let band = match strategy {
        Strategy::LeastLoaded => select::TIE_BAND,
        _ => 0.0,
    };
    let tied = scores()
        .filter(|&s| s <= best + best.abs() * band.max(1e-9))
        .count();
    match (tied, strategy) {
        (0 | 1, _) => "lowest score".to_owned(),
        (n, Strategy::LeastLoaded) => format!(
            "lowest score, tied with {} other(s) within {:.0}% of the best: their turn, shared by capacity",
            n - 1,
            band * 100.0
        ),
        (n, _) => format!("lowest score, tied with {} other(s): their turn, shared by weight", n - 1),
    }
}

fn candidate(seen: &Seen<'_>, i: usize, m: Medians) -> Candidate {
    let (v, ejected, rotating) = seen.states[i];
    let addr = seen.backends[i].addr;
    let params = &seen.how.params;
    let state = match () {
        () if !rotating => seen.backends[i].rotation.reported(v.in_flight).name(),
        () if !v.up => "down",
        () if (seen.tried)(i) => "tried",
        () if ejected && seen.panic => "ejected (panic: allowed)",
        () if ejected => "ejected",
        () => "up",
    };
    let eligible = matches!(state, "up" | "ejected (panic: allowed)");
    let terms =
        (seen.how.strategy == Strategy::LeastLoaded).then(|| select::score_terms(&v, m, params));
    let score = match seen.how.strategy {
        Strategy::LeastLoaded => Some(select::loaded_cost(&v, m, params)),
        Strategy::LeastConnections => Some(select::connections_cost(&v)),
        Strategy::RoundRobin | Strategy::Random => None,
    };
    Candidate {
        addr,
        score: score.filter(|s| s.is_finite()),
        cpu: v.load.map(|l| l.util),
        load_age_ms: v.load.map(|l| l.age.as_millis() as u64),
        util: terms.map(|t| t.util),
        queue: terms.map(|t| t.queue),
        pressure: terms.map(|t| t.pressure),
        in_flight: v.in_flight,
        busy: v.busy,
        slowness: v.slowness,
        slow_start: v.ramp,
        weight: v.weight,
        untried: v.untried,
        state,
        eligible,
    }
}

/// `METHOD target`, cut to [`MAX_TARGET`] bytes on a character boundary.
fn request_line(asked: &Asked<'_>) -> String {
    let t = asked.target;
    let mut end = t.len().min(MAX_TARGET);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < t.len() { "…" } else { "" };
    format!("{} {}{cut}", asked.method, &t[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sampling_keeps_at_most_one_choice_per_gap() {
        let d = Decisions::default();
        let now = Instant::now();
        assert!(d.sample(now));
        assert!(!d.sample(now));
        assert!(!d.sample(now + GAP / 2));
        assert!(d.sample(now + GAP));
        assert!(!d.sample(now + GAP));
    }

    #[test]
    fn long_targets_are_cut_on_a_character_boundary() {
        let target = format!("/{}", "é".repeat(100));
        let line = request_line(&Asked {
            method: &http::Method::GET,
            target: &target,
            attempt: 1,
        });
        assert!(line.starts_with("GET /é"));
        assert!(line.ends_with('…'));
        assert!(line.len() <= 4 + MAX_TARGET + '…'.len_utf8());
    }
}
