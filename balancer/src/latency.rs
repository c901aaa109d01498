//! The latency signal of `least-loaded`: how much slower than its peers a
//! backend serves *the same kind of request*, on the backend's own time,
//! forgotten as it ages.
//!
//! Three decisions, each against a failure seen in the first version:
//!
//! - **The backend's own time.** A sample is the time from sending the
//!   request to the response head, plus the time the body spent waiting for
//!   the backend. Time the body spent waiting for the *client* (a slow
//!   reader, a full socket buffer) is not the backend's and is never
//!   counted, so no client can make a host look slow ([`crate::proxy`]
//!   keeps that clock).
//! - **Relative to the request's class.** `/work?ms=50` is fifty times
//!   `/work?ms=1` on every host; a host that happened to get the slow
//!   endpoint is not a slow host. Each request falls into one of
//!   [`CLASSES`] classes by a keyed hash of its method, path and query
//!   (requests with a body, paced by the client, are not measured); the pool
//!   keeps a moving baseline per class, and a backend's sample counts as its
//!   ratio to that baseline. A backend's [`Signal::slowness`] is the moving
//!   geometric mean of those ratios: 1 for a host in line with its peers,
//!   4 for one four times slower on whatever it was sent. Geometric, so a
//!   scheduler hiccup that makes one sample 16 times slower moves it as
//!   much as one sample 16 times faster would, not 15 times more. Unique URLs (cache
//!   busters) spread over the classes and their ratios average out near 1:
//!   the signal then says little, and the other signals decide.
//! - **Decay by elapsed time.** Every average here weighs a sample by the
//!   time since the previous one, `1 − 2^(−Δt / half-life)`, as Finagle's
//!   and linkerd's Peak-EWMA do: under steady traffic a sample moves the
//!   average by little, a sample after a long silence replaces it (so a
//!   rare probe measures the host as it is now instead of re-applying an
//!   old verdict), and when no sample arrives the slowness fades back
//!   towards 1 with [`SLOWNESS_HALF_LIFE`] so an avoided host is tried
//!   again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Half-life of a backend's slowness, both for averaging samples and for
/// fading back to 1 without samples. Two seconds: long enough to average a
/// few dozen requests at modest rates, short enough that a host slowed by a
/// neighbour is avoided within a couple of seconds and one that recovered
/// is trusted again within ten.
pub const SLOWNESS_HALF_LIFE: Duration = Duration::from_secs(2);

/// Half-life of the per-class baselines and of a backend's mean service
/// time. Longer than the slowness's: the baseline is what hosts are
/// compared against and should not follow one host's hiccup.
pub const BASELINE_HALF_LIFE: Duration = Duration::from_secs(5);

/// Number of request classes. Collisions only merge two classes' baselines
/// (the ratio then mixes them, as the first version did for all requests).
pub const CLASSES: usize = 64;

/// Added to both sides of a ratio so that millisecond requests, where a
/// scheduler hiccup or a cold connection multiplies the time, do not read
/// as a slow host: a 5 ms hiccup on a 0.5 ms request reads 1.9, 10 ms
/// against 40 ms reads 3, 50 ms against 5 ms reads 5.5. Differences of a
/// few milliseconds on quick requests are left to the in-flight count.
const RATIO_SLACK: f64 = 0.005;

/// The most one sample can weigh in a backend's slowness, however long
/// the silence before it: a probe after a silence moves the verdict by
/// this much (in the logarithm) towards what it measured, so one hiccup
/// cannot exile a host, and three slow answers in a row are believed at
/// two thirds of their measure.
pub const MAX_SAMPLE_WEIGHT: f64 = 0.3;

/// A single sample's ratio is held within these bounds, and so is the
/// average: a timeout or a stall counts as very slow, not as infinitely so.
pub const RATIO_MIN: f64 = 1.0 / 16.0;
/// See [`RATIO_MIN`].
pub const RATIO_MAX: f64 = 16.0;

/// The weight a new sample gets after `dt` without one.
pub fn sample_weight(dt: Duration, half_life: Duration) -> f64 {
    let h = half_life.as_secs_f64().max(1e-9);
    1.0 - (-dt.as_secs_f64() / h).exp2()
}

/// What is left of an old deviation from `neutral` after `age`.
pub fn fade(value: f64, neutral: f64, age: Duration, half_life: Duration) -> f64 {
    let h = half_life.as_secs_f64().max(1e-9);
    neutral + (value - neutral) * (-age.as_secs_f64() / h).exp2()
}

/// A sample's time against its class baseline (both in seconds), bounded.
pub fn ratio(secs: f64, baseline: f64) -> f64 {
    ((secs + RATIO_SLACK) / (baseline + RATIO_SLACK)).clamp(RATIO_MIN, RATIO_MAX)
}

/// A moving average that decays by elapsed time, readable and writable
/// without a lock. Concurrent writers may lose a sample; an average does
/// not mind, and readers see either the old or the new value.
#[derive(Debug)]
pub struct Decaying {
    /// The average, as `f64` bits.
    value: AtomicU64,
    /// When it last took a sample, in nanoseconds since the owner's epoch
    /// (0: never).
    at: AtomicU64,
}

impl Decaying {
    /// An average with no sample yet.
    pub const fn new() -> Decaying {
        Decaying {
            value: AtomicU64::new(0),
            at: AtomicU64::new(0),
        }
    }

    /// An average that holds `value` as if sampled at the epoch: a prior
    /// that the first real samples outweigh by the time they took to come
    /// (at most `max_weight` each).
    pub fn prior(value: f64) -> Decaying {
        Decaying {
            value: AtomicU64::new(value.to_bits()),
            at: AtomicU64::new(1),
        }
    }

    /// A copy of `other`'s state (for a backend replaced on reload).
    pub fn copy_of(other: &Decaying) -> Decaying {
        Decaying {
            value: AtomicU64::new(other.value.load(Relaxed)),
            at: AtomicU64::new(other.at.load(Relaxed)),
        }
    }

    /// Folds `x` in at `now` (nanoseconds since the epoch), weighing it by
    /// the time since the previous sample but at most `max_weight`; the
    /// first sample is taken as it is.
    pub fn observe(&self, x: f64, now: u64, half_life: Duration, max_weight: f64) {
        let at = self.at.load(Relaxed);
        let new = if at == 0 {
            x
        } else {
            let old = f64::from_bits(self.value.load(Relaxed));
            let dt = Duration::from_nanos(now.saturating_sub(at));
            old + (x - old) * sample_weight(dt, half_life).min(max_weight)
        };
        self.value.store(new.to_bits(), Relaxed);
        self.at.store(now.max(1), Relaxed);
    }

    /// The average and the age of its last sample at `now`, if it has one.
    pub fn get(&self, now: u64) -> Option<(f64, Duration)> {
        let at = self.at.load(Relaxed);
        (at != 0).then(|| {
            (
                f64::from_bits(self.value.load(Relaxed)),
                Duration::from_nanos(now.saturating_sub(at)),
            )
        })
    }
}

impl Default for Decaying {
    fn default() -> Self {
        Decaying::new()
    }
}

/// Nanoseconds from `epoch` to `now` (0 before it).
pub fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The pool-wide baseline time of each request class.
#[derive(Debug)]
pub struct Baselines {
    epoch: Instant,
    /// A random key for [`Baselines::class_of`], so that which requests
    /// share a class cannot be worked out in advance by a client hoping to
    /// pass a slow endpoint off as a quick one.
    seed: u64,
    classes: [Decaying; CLASSES],
}

impl Baselines {
    /// Empty baselines: the first sample of each class sets its baseline.
    pub fn new() -> Baselines {
        Baselines {
            epoch: Instant::now(),
            seed: fastrand::u64(..),
            classes: [const { Decaying::new() }; CLASSES],
        }
    }

    /// Folds one sample of `class` in and returns its ratio to the baseline
    /// as it stood before (1 for the first sample of a class).
    pub fn compare(&self, class: u8, secs: f64, now: Instant) -> f64 {
        let now = nanos_since(self.epoch, now);
        let slot = &self.classes[usize::from(class) % CLASSES];
        let r = slot.get(now).map_or(1.0, |(base, _)| ratio(secs, base));
        slot.observe(secs, now, BASELINE_HALF_LIFE, 1.0);
        r
    }
}

impl Baselines {
    /// The class of a request: FNV-1a over its method, path and query,
    /// started from this pool's random key and finished with a 64-bit mix,
    /// folded into [`CLASSES`] buckets. A few dozen nanoseconds for a
    /// typical target.
    pub fn class_of(&self, method: &http::Method, path_and_query: &str) -> u8 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        for b in method
            .as_str()
            .bytes()
            .chain([b' '])
            .chain(path_and_query.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // splitmix64's finaliser: every input bit moves every output bit.
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        (h % CLASSES as u64) as u8
    }
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines::new()
    }
}

/// One backend's latency signal: its slowness (ratio to its peers on the
/// same classes of request) and its mean service time (seconds, for the
/// cost of a request in [`crate::select::estimated_util`]).
#[derive(Debug)]
pub struct Signal {
    epoch: Instant,
    /// The average of the natural logarithm of the ratios.
    log_slowness: Decaying,
    service: Decaying,
    /// An attempt has finished here (answered or not): the backend is no
    /// longer untried.
    tried: AtomicBool,
}

impl Signal {
    /// No samples yet: slowness 1, held as a prior dated now that the
    /// first answers outweigh by the time they took to come, at most half
    /// each ([`MAX_SAMPLE_WEIGHT`]), so a cold connection's first sample
    /// does not decide alone; service time unknown.
    pub fn new() -> Signal {
        Signal {
            epoch: Instant::now(),
            log_slowness: Decaying::prior(0.0),
            service: Decaying::new(),
            tried: AtomicBool::new(false),
        }
    }

    /// A copy of `other` (for a backend replaced on reload).
    pub fn copy_of(other: &Signal) -> Signal {
        Signal {
            epoch: other.epoch,
            log_slowness: Decaying::copy_of(&other.log_slowness),
            service: Decaying::copy_of(&other.service),
            tried: AtomicBool::new(other.tried.load(Relaxed)),
        }
    }

    /// Records one request that took the backend `secs` of its own time.
    ///
    /// A backend's very first answer is a warm-up (a cold connection, cold
    /// caches): it feeds the baseline and the service time and ends the
    /// backend's untried state, but is not taken as a measure of its
    /// slowness, which at start would otherwise be set by whichever host
    /// happened to pay for the slowest handshake.
    pub fn record(&self, baselines: &Baselines, class: u8, secs: f64, now: Instant) {
        let r = baselines.compare(class, secs, now);
        // The first answer is a warm-up (unless a failure came first).
        let r = if self.tried.swap(true, Relaxed) {
            r
        } else {
            1.0
        };
        let t = nanos_since(self.epoch, now);
        let max = MAX_SAMPLE_WEIGHT;
        self.log_slowness
            .observe(r.ln(), t, SLOWNESS_HALF_LIFE, max);
        self.service.observe(secs, t, BASELINE_HALF_LIFE, 1.0);
    }

    /// The slowness at `now`: the geometric mean ratio, faded towards 1 by
    /// the age of its last sample.
    pub fn slowness(&self, now: Instant) -> f64 {
        let t = nanos_since(self.epoch, now);
        self.log_slowness.get(t).map_or(1.0, |(l, age)| {
            fade(l, 0.0, age, SLOWNESS_HALF_LIFE)
                .exp()
                .clamp(RATIO_MIN, RATIO_MAX)
        })
    }

    /// The backend finished an attempt that is no measure of its speed (a
    /// failure, a request with a body): it is no longer untried, its
    /// slowness is left as it is.
    pub fn touch(&self) {
        self.tried.store(true, Relaxed);
    }

    /// Whether no attempt has finished on the backend yet: it has not been
    /// compared with its peers.
    pub fn untried(&self) -> bool {
        !self.tried.load(Relaxed)
    }

    /// The mean service time in seconds (0: none measured).
    pub fn service(&self, now: Instant) -> f64 {
        let t = nanos_since(self.epoch, now);
        self.service.get(t).map_or(0.0, |(s, _)| s)
    }
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn a_sample_weighs_by_the_time_since_the_previous_one() {
        // (Δt since the previous sample, expected weight) at a 2 s half-life
        let table = [
            (Duration::ZERO, 0.0),
            (Duration::from_millis(10), 1.0 - 0.5f64.powf(0.005)),
            (Duration::from_secs(2), 0.5),
            (Duration::from_secs(4), 0.75),
            (Duration::from_secs(60), 1.0 - 0.5f64.powi(30)),
        ];
        for (dt, want) in table {
            let got = sample_weight(dt, SLOWNESS_HALF_LIFE);
            assert!(close(got, want), "{dt:?}: {got} != {want}");
        }
    }

    #[test]
    fn an_old_sample_fades_towards_neutral_by_its_age() {
        // (value, age, expected) at a 2 s half-life, neutral 1
        let table = [
            (4.0, 0, 4.0),
            (4.0, 2, 2.5),
            (4.0, 4, 1.75),
            (4.0, 20, 1.0 + 3.0 / 1024.0),
            (0.5, 2, 0.75), // fast hosts fade back to 1 as well
        ];
        for (v, age, want) in table {
            let got = fade(v, 1.0, Duration::from_secs(age), SLOWNESS_HALF_LIFE);
            assert!(close(got, want), "{v} at {age}s: {got} != {want}");
        }
    }

    #[test]
    fn ratios_ignore_sub_millisecond_noise_and_are_bounded() {
        // (sample s, baseline s, expected ratio)
        let table = [
            (0.010, 0.010, 1.0),
            (0.0055, 0.0005, 10.5 / 5.5), // a hiccup on a tiny request: mild
            (0.495, 0.045, 10.0),         // ten times slower: 10
            (30.0, 0.010, RATIO_MAX),     // a timeout: very slow, bounded
            (0.0, 10.0, RATIO_MIN),
        ];
        for (secs, base, want) in table {
            let got = ratio(secs, base);
            assert!(close(got, want), "{secs}/{base}: {got} != {want}");
        }
    }

    #[test]
    fn the_average_replaces_after_silence_and_barely_moves_under_traffic() {
        let a = Decaying::new();
        assert_eq!(a.get(5 * S), None);
        a.observe(1.0, S, SLOWNESS_HALF_LIFE, 1.0);
        assert_eq!(a.get(S), Some((1.0, Duration::ZERO)));
        // One slow sample 10 ms after the last: a small step.
        a.observe(50.0, S + 10_000_000, SLOWNESS_HALF_LIFE, 1.0);
        let (v, _) = a.get(S).unwrap();
        assert!(v > 1.0 && v < 1.2, "{v}");
        // A sample a minute later stands for the host as it is now...
        a.observe(1.0, 61 * S, SLOWNESS_HALF_LIFE, 1.0);
        let (v, _) = a.get(61 * S).unwrap();
        assert!((v - 1.0).abs() < 1e-6, "{v}");
        // ...or moves it part of the way, where one sample's weight is capped.
        a.observe(3.0, 121 * S, SLOWNESS_HALF_LIFE, 0.5);
        let (v, _) = a.get(121 * S).unwrap();
        assert!((v - 2.0).abs() < 1e-6, "{v}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_slow_on_every_class_reads_slow_and_a_slow_class_does_not() {
        let base = Baselines::new();
        let (fast, slow) = (Signal::new(), Signal::new());
        // Two classes that differ (the key is random; find a pair).
        let class = |p: &str| base.class_of(&http::Method::GET, p);
        let quick = class("/work?ms=1");
        let heavy = (50..)
            .map(|ms| class(&format!("/work?ms={ms}")))
            .find(|&c| c != quick)
            .unwrap();
        for i in 0..600 {
            // Both hosts get the heavy class now and then.
            let (class, secs) = if i % 10 == 0 {
                (heavy, 0.050)
            } else {
                (quick, 0.001)
            };
            tokio::time::advance(Duration::from_millis(5)).await;
            fast.record(&base, class, secs, Instant::now());
            tokio::time::advance(Duration::from_millis(5)).await;
            slow.record(&base, class, secs * 4.0, Instant::now());
        }
        let now = Instant::now();
        let (f, s) = (fast.slowness(now), slow.slowness(now));
        // The baseline sits between the two (both get equal traffic), so
        // the fast host reads below 1 and the slow one above (by less than
        // 4: the slack tempers 1 ms against 4 ms to 1.5×).
        assert!(f < 1.0 && s > 1.2 && s / f > 1.5, "fast {f}, slow {s}");

        // A host that only ever got the heavy class, as fast as the fast
        // host, is not slow.
        let heavy_only = Signal::new();
        tokio::time::advance(SLOWNESS_HALF_LIFE).await;
        heavy_only.record(&base, heavy, 0.050, Instant::now()); // warm-up
        tokio::time::advance(SLOWNESS_HALF_LIFE).await;
        heavy_only.record(&base, heavy, 0.050, Instant::now());
        assert!(heavy_only.slowness(Instant::now()) < 1.0);

        // A new backend is untried; its first answer, on a cold connection,
        // is a warm-up; the next ones count, each for at most
        // MAX_SAMPLE_WEIGHT of the verdict.
        let new = Signal::new();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(new.untried());
        assert_eq!(new.slowness(Instant::now()), 1.0);
        new.record(&base, quick, 0.500, Instant::now());
        assert!(!new.untried());
        assert_eq!(new.slowness(Instant::now()), 1.0);
        tokio::time::advance(Duration::from_secs(60)).await;
        let r = ratio(0.030, base_of(&base, quick));
        new.record(&base, quick, 0.030, Instant::now());
        let s = new.slowness(Instant::now());
        let want = r.powf(MAX_SAMPLE_WEIGHT);
        assert!((s - want).abs() < 1e-9, "{s} against {r}");
        // Ten half-lives later without samples the slow host is forgiven.
        tokio::time::advance(SLOWNESS_HALF_LIFE * 10).await;
        assert!((slow.slowness(Instant::now()) - 1.0).abs() < 0.01);
    }

    fn base_of(base: &Baselines, class: u8) -> f64 {
        let slot = &base.classes[usize::from(class)];
        slot.get(u64::MAX).expect("a sample").0
    }

    #[test]
    fn classes_spread_by_method_path_and_query_under_a_random_key() {
        let (a, b) = (Baselines::new(), Baselines::new());
        let get = |p: &str| a.class_of(&http::Method::GET, p);
        assert_eq!(get("/a?x=1"), get("/a?x=1"));
        // 200 targets differing only in their query fill most of the 64
        // classes (about 61 expected)...
        let paths: Vec<String> = (0..200).map(|i| format!("/work?ms={i}")).collect();
        let distinct: std::collections::HashSet<u8> = paths.iter().map(|p| get(p)).collect();
        assert!(distinct.len() >= 50, "{}", distinct.len());
        // ...the method counts...
        let posts = paths
            .iter()
            .filter(|p| a.class_of(&http::Method::POST, p) != get(p))
            .count();
        assert!(posts > 150, "{posts}");
        // ...and another pool (another key) groups them differently.
        let moved = paths
            .iter()
            .filter(|p| b.class_of(&http::Method::GET, p) != get(p))
            .count();
        assert!(moved > 150, "{moved}");
    }
}
