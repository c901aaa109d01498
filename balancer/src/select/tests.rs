//! The strategies as tables of cases: pure functions, seeded randomness.

use super::*;

const P: Params = Params {
    interval: Duration::from_secs(1),
};

fn report(util: f64, age_ms: u64) -> Option<LoadView> {
    Some(LoadView {
        util,
        cpus: 1.0,
        age: Duration::from_millis(age_ms),
        rate: 0.0,
        cost: 0.0,
        dispatched: 0,
    })
}

fn view(util: Option<LoadView>, in_flight: u32) -> View {
    View {
        up: true,
        weight: 1,
        in_flight,
        busy: in_flight,
        slowness: 1.0,
        service: 0.0,
        untried: false,
        pass: 0.0,
        load: util,
        ramp: 1.0,
    }
}

#[test]
fn estimated_util_interprets_a_report_by_its_age() {
    // (report, median, expected)
    let table = [
        (report(0.2, 0), 0.6, 0.2),    // fresh: as reported
        (report(0.2, 1500), 0.6, 0.2), // up to 1.5 intervals: still trusted
        (report(0.2, 2750), 0.6, 0.4), // half-way to expiry: half-way to the median
        (report(0.2, 4000), 0.6, 0.6), // expired: the median
        (None, 0.6, 0.6),              // unknown: the median, never idle
    ];
    for (load, median, want) in table {
        let got = estimated_util(load.as_ref(), median, &P);
        assert!((got - want).abs() < 1e-9, "{load:?}: {got} != {want}");
    }
}

#[test]
fn requests_sent_since_the_report_raise_the_estimate_but_never_lower_it() {
    let base = LoadView {
        util: 0.3,
        cpus: 1.0,
        age: Duration::from_millis(500),
        rate: 100.0,   // 100 requests/s during the report's period
        cost: 0.002,   // each request/s costs 0.2 % (2 ms requests on 1 core)
        dispatched: 0, // none sent since
    };
    // (dispatched in the half second since the report, expected utilization)
    let table = [
        (0, 0.3),     // sending less than before: no change (never looks idler)
        (50, 0.3),    // the same rate (100/s): no change
        (150, 0.5),   // 200/s now, 100/s more than measured: +0.2
        (1000, 0.55), // far more: at most +0.25 before the next report
    ];
    for (dispatched, want) in table {
        let l = LoadView { dispatched, ..base };
        let got = estimated_util(Some(&l), 0.5, &P);
        assert!(
            (got - want).abs() < 1e-9,
            "dispatched {dispatched}: {got} != {want}"
        );
    }
    // Without a learned cost, nothing is added.
    let l = LoadView {
        dispatched: 1000,
        cost: 0.0,
        ..base
    };
    assert_eq!(estimated_util(Some(&l), 0.5, &P), 0.3);
}

const M: Medians = Medians {
    util: 0.5,
    cpus: 1.0,
};

fn with(v: View, f: impl FnOnce(&mut View)) -> View {
    let mut v = v;
    f(&mut v);
    v
}

fn cpus(v: View, cpus: f64) -> View {
    with(v, |v| {
        if let Some(l) = &mut v.load {
            l.cpus = cpus;
        }
    })
}

#[test]
fn utilization_noise_around_the_median_counts_for_nothing() {
    // (util, median, denoised)
    let table = [
        (0.5, 0.5, 0.5),
        (0.7, 0.5, 0.5), // within 25 points: the median
        (0.3, 0.5, 0.5),
        (0.9, 0.5, 0.65), // beyond: all but 25 points of the difference
        (1.0, 0.5, 0.75),
        (0.0, 0.3, 0.25),
    ];
    for (util, median, want) in table {
        let got = denoised(util, median);
        assert!((got - want).abs() < 1e-9, "{util} at {median}: {got}");
    }
}

#[test]
fn slowness_counts_beyond_its_noise_band() {
    // (slowness, what the score uses)
    let table = [
        (1.0, 1.0),
        (1.2, 1.0), // within 25 %: noise
        (0.85, 1.0),
        (2.5, 2.0), // beyond: by its excess
        (4.0, 3.2),
        (0.25, 0.3125),
    ];
    for (s, want) in table {
        let got = beyond_noise(s);
        assert!((got - want).abs() < 1e-9, "{s}: {got}");
    }
}

#[test]
fn score_is_queue_times_slowness_times_pressure() {
    let slow = |v: View, s: f64| with(v, |v| v.slowness = s);
    // Pressure of a utilization at median 0.5, once denoised.
    let p = |u: f64| 1.0 / (1.0 - u);
    let pd = |u: f64| p(denoised(u, 0.5));
    // (view, expected score) at median utilization 0.5, median 1 CPU
    let table = [
        (view(report(0.0, 0), 0), pd(0.0)),
        (view(report(0.5, 0), 0), 2.0),
        (view(report(0.7, 0), 0), 2.0), // noise: as the median
        (view(report(0.9, 0), 0), pd(0.9)),
        (view(report(1.0, 0), 0), pd(1.0)),
        // Measured slow as well: beyond the noise band 4 counts 3.2, 9
        // counts 7.2.
        (slow(view(report(0.9, 0), 0), 4.0), pd(0.9) * 3.2),
        (slow(view(report(1.0, 0), 0), 9.0), pd(1.0) * 7.2),
        // Measured slowness alone, as with an agent claiming idle.
        (slow(view(report(0.0, 0), 0), 4.0), 3.2 * pd(0.0)),
        (slow(view(report(0.0, 0), 0), 0.25), 0.3125 * pd(0.0)), // faster
        (slow(view(report(0.0, 0), 0), 1.2), pd(0.0)),           // noise
        // Each request waiting on the backend counts, per request the host
        // runs at once: at least one per unit of weight...
        (view(report(0.0, 0), 3), 4.0 * pd(0.0)),
        (cpus(view(report(0.0, 0), 1), 0.25), 2.0 * pd(0.0)),
        // ...and one per CPU beyond.
        (
            with(cpus(view(report(0.0, 0), 2), 4.0), |v| v.weight = 2),
            1.25 * pd(0.0),
        ),
        // Requests held open by slow readers (not busy) do not count.
        (with(view(report(0.0, 0), 0), |v| v.in_flight = 9), pd(0.0)),
        // Unknown load ranks with the median utilization and CPUs.
        (view(None, 0), 2.0),
        (view(None, 1), 4.0),
    ];
    for (v, want) in table {
        let got = score(&v, M, &P);
        assert!((got - want).abs() < 1e-9, "{v:?}: {got} != {want}");
    }
    // The agent alone can make a host at most four times less attractive
    // than any other: 1.0 reads at most 0.75 once denoised.
    for median in [0.0, 0.3, 0.5, 0.7] {
        let m = Medians { util: median, ..M };
        let ratio = score(&view(report(1.0, 0), 0), m, &P) / score(&view(report(0.0, 0), 0), m, &P);
        assert!(ratio <= 4.0 + 1e-9, "{median}: {ratio}");
    }
    // When every host is busy, the agents' differences count beyond the
    // noise.
    let busy = Medians { util: 0.6, ..M };
    for (util, want) in [(0.6, 2.5), (0.8, 2.5), (1.0, 4.0)] {
        let got = score(&view(report(util, 0), 0), busy, &P);
        assert!((got - want).abs() < 1e-9, "{util}: {got} != {want}");
    }
}

#[test]
fn between_saturated_hosts_the_slower_one_is_avoided() {
    // Both report 100 % CPU; one serves four times slower (noisy
    // neighbours). Utilization cannot tell them apart; latency can.
    let mut views = [view(report(1.0, 0), 0), view(report(1.0, 0), 0)];
    views[0].slowness = 4.0;
    let counts = distribution(Strategy::LeastLoaded, &mut views, 12, true);
    // 64 × (1 + k) against 20 × (1 + k'): four times slower (3.2 beyond
    // the noise band), it gets a request once the fast one is three deep.
    assert!(counts[1] >= 9, "{counts:?}");
}

#[test]
fn an_agent_alone_cannot_starve_or_flood_a_host() {
    // Claims 100 % while serving as fast as its peers: sequential traffic
    // avoids it (but for the probe floor), and under concurrency it takes
    // its part once the others are a request deep (1.0 reads 0.75 once
    // denoised: 4 against 2 × (1 + 1)).
    let mut views = [
        view(report(1.0, 0), 0),
        view(report(0.5, 0), 0),
        view(report(0.5, 0), 0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 24, true);
    assert!(counts[0] >= 2, "{counts:?}");
    // Claims 0 % while four times slower: it does not take the lion's
    // share of sequential traffic (no more than its fair share)...
    let slow = |s: f64| {
        [
            with(view(report(0.0, 0), 0), |v| v.slowness = s),
            view(report(0.5, 0), 0),
            view(report(0.5, 0), 0),
        ]
    };
    let counts = distribution(Strategy::LeastLoaded, &mut slow(4.0), 900, false);
    assert!(counts[0] <= 310, "{counts:?}");
    // ...and ten times slower, it gets none but the probe floor's.
    let counts = distribution(Strategy::LeastLoaded, &mut slow(10.0), 900, false);
    assert!(counts[0] < 20, "{counts:?}");
}

#[test]
fn medians_ignore_unknown_and_expired_reports() {
    let views = [
        cpus(view(report(0.9, 0), 0), 2.0),
        cpus(view(report(0.1, 0), 0), 0.5),
        view(None, 0),
        cpus(view(report(0.0, 9000), 0), 0.25),
        view(report(0.5, 0), 0),
    ];
    let m = |n| medians(n, |i| views[i], &P);
    // Utilization: 0.9, 0.1, 0.5 known (one expired); CPUs: all four that
    // reported, the expired one included (capacity does not go stale).
    let medians = |util, cpus| Medians { util, cpus };
    assert_eq!(m(5), medians(0.5, 0.75));
    assert_eq!(m(2), medians(0.5, 1.25)); // (0.9 + 0.1) / 2
    assert_eq!(m(0), medians(0.5, 1.0)); // nothing known
}

/// Runs `n` picks, updating in-flight counts as `hold` says, and returns
/// how many went to each backend.
pub(super) fn distribution(
    strategy: Strategy,
    views: &mut [View],
    n: usize,
    hold: bool,
) -> Vec<usize> {
    let schedule = wrr_schedule(&views.iter().map(|v| v.weight).collect::<Vec<_>>());
    let mut rng = fastrand::Rng::with_seed(7);
    let mut counts = vec![0; views.len()];
    for ticket in 0..n {
        let how = Pick {
            strategy,
            params: P,
            ticket,
            schedule: &schedule,
        };
        let snapshot = views.to_vec();
        let choice = pick(&how, views.len(), |i| snapshot[i], |_| true, &mut rng).unwrap();
        let i = choice.index;
        if let Some(pass) = choice.pass {
            views[i].pass = pass;
        }
        counts[i] += 1;
        if hold {
            views[i].in_flight += 1;
            views[i].busy += 1;
        }
    }
    counts
}

#[test]
fn least_loaded_sends_sequential_traffic_to_the_idlest_host() {
    let mut views = [
        view(report(0.9, 0), 0),
        view(report(0.1, 0), 0),
        view(report(0.5, 0), 0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 1000, false);
    assert!(counts[1] >= 950, "{counts:?}");
    // The probe floor keeps the others sampled.
    assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
}

#[test]
fn least_loaded_does_not_herd_concurrent_traffic_onto_the_idle_host() {
    let mut views = [
        view(report(0.0, 0), 0),
        view(report(0.5, 0), 0),
        view(report(0.5, 0), 0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 32, true);
    assert!(counts[0] <= 22, "{counts:?}");
    assert!(counts[0] > counts[1] && counts[0] > counts[2], "{counts:?}");
}

#[test]
fn unknown_load_ranks_with_the_median() {
    let mut views = [
        view(report(0.05, 0), 0),
        view(None, 0),
        view(report(0.95, 0), 0),
    ];
    // Median 0.5: the unknown host is second, neither first nor excluded.
    let counts = distribution(Strategy::LeastLoaded, &mut views, 1000, false);
    assert!(counts[0] > 900, "{counts:?}");
    // ...and ahead of a busy one (the third, down, only sets the median).
    let mut views = [
        view(report(0.95, 0), 0),
        view(None, 0),
        with(view(report(0.1, 0), 0), |v| v.up = false),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 1000, false);
    assert!(counts[1] > 900, "{counts:?}"); // median 0.525 < 0.95
}

#[test]
fn equal_backends_share_traffic_through_random_ties() {
    let mut views = [view(None, 0), view(None, 0), view(None, 0)];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 3000, false);
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}

#[test]
fn near_equal_scores_are_shared_and_capacity_sets_the_shares() {
    // 0.05 against 0.10 utilization: noise, not a reason to herd.
    let mut views = [view(report(0.05, 0), 0), view(report(0.10, 0), 0)];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 2000, false);
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    // Idle hosts of a quarter, half and one CPU share by capacity.
    let mut views = [
        cpus(view(report(0.0, 0), 0), 0.25),
        cpus(view(report(0.0, 0), 0), 0.5),
        cpus(view(report(0.0, 0), 0), 1.0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 7000, false);
    for (c, want) in counts.iter().zip([1000, 2000, 4000]) {
        assert!(c.abs_diff(want) < 300, "{counts:?}");
    }
    // Under concurrency, once their speeds are measured (a quarter-CPU
    // host serves a request at its quota's pace), the one-CPU host absorbs
    // the most.
    let speed = |v: View, s: f64| with(v, |v| v.slowness = s);
    let mut views = [
        speed(cpus(view(report(0.0, 0), 0), 0.25), 2.0),
        speed(cpus(view(report(0.0, 0), 0), 0.5), 1.0),
        speed(cpus(view(report(0.0, 0), 0), 1.0), 0.5),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 14, true);
    assert!(counts[2] > counts[1] && counts[1] > counts[0], "{counts:?}");
}

#[test]
fn probes_never_queue_behind_work() {
    // A busy host (two requests waiting) and an idle one far better
    // ranked: the probe floor still samples only the idle ones.
    let mut views = [view(report(0.0, 0), 0), view(report(0.95, 0), 0)];
    views[1].busy = 2;
    views[1].in_flight = 2;
    let counts = distribution(Strategy::LeastLoaded, &mut views, 2000, false);
    assert_eq!(counts[1], 0, "{counts:?}");
    // Idle, it is probed now and then.
    views[1].busy = 0;
    let counts = distribution(Strategy::LeastLoaded, &mut views, 2000, false);
    assert!(counts[1] > 0, "{counts:?}");
}

#[test]
fn untried_backends_are_tried_first() {
    let mut views = [
        view(report(0.0, 0), 0),
        view(report(0.9, 0), 0),
        view(report(0.9, 0), 0),
    ];
    views[1].untried = true;
    views[2].untried = true;
    let counts = distribution(Strategy::LeastLoaded, &mut views, 100, false);
    assert_eq!(counts[0], 0, "{counts:?}");
}

#[test]
fn round_robin_is_weighted_and_smooth() {
    assert_eq!(wrr_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(wrr_schedule(&[1, 1, 1]), [0, 1, 2]);
    let mut views = [view(None, 0), view(None, 0), view(None, 0)];
    views[0].weight = 2;
    assert_eq!(
        distribution(Strategy::RoundRobin, &mut views, 400, false),
        [200, 100, 100]
    );
}

#[test]
fn least_connections_fills_the_emptiest_per_weight() {
    let mut views = [view(None, 4), view(None, 0), view(None, 0)];
    views[2].weight = 2;
    // The busy one (4 in flight) waits until the others reach 4 per unit
    // of weight: b after 4 requests, c (weight 2) after 8, so 12 requests
    // never reach it, and c takes twice b's share.
    let counts = distribution(Strategy::LeastConnections, &mut views, 12, true);
    assert_eq!(counts, [0, 4, 8]);
}

#[test]
fn random_is_weighted() {
    let mut views = [view(None, 0), view(None, 0)];
    views[0].weight = 3;
    let counts = distribution(Strategy::Random, &mut views, 4000, false);
    assert!((2800..3200).contains(&counts[0]), "{counts:?}");
}

#[test]
fn down_and_excluded_backends_are_never_picked() {
    let views = [
        View {
            up: false,
            ..view(report(0.0, 0), 0)
        },
        view(report(0.9, 0), 0),
        view(report(0.5, 0), 0),
    ];
    let schedule = wrr_schedule(&[1, 1, 1]);
    let mut rng = fastrand::Rng::with_seed(1);
    for strategy in [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::Random,
    ] {
        for ticket in 0..100 {
            let how = Pick {
                strategy,
                params: P,
                ticket,
                schedule: &schedule,
            };
            let got = pick(&how, 3, |i| views[i], |i| i != 2, &mut rng);
            assert_eq!(got.map(|c| c.index), Some(1), "{strategy:?}");
            assert_eq!(pick(&how, 3, |i| views[i], |i| i == 0, &mut rng), None);
        }
    }
}

#[test]
fn equals_take_turns_and_a_returning_backend_has_no_backlog() {
    // Sequential picks among four equal idle hosts: a strict rotation
    // (no host twice in a row), for least-connections and least-loaded.
    for strategy in [Strategy::LeastConnections, Strategy::LeastLoaded] {
        let mut views = [view(report(0.3, 0), 0); 4];
        let schedule = wrr_schedule(&[1; 4]);
        let mut rng = fastrand::Rng::with_seed(5);
        let mut last = None;
        let mut counts = [0; 4];
        for ticket in 0..400 {
            let how = Pick {
                strategy,
                params: P,
                ticket,
                schedule: &schedule,
            };
            let snapshot = views;
            let c = pick(&how, 4, |i| snapshot[i], |_| true, &mut rng).unwrap();
            if let Some(pass) = c.pass {
                views[c.index].pass = pass;
                // Probe-floor picks are random and may repeat; turns never do.
                assert_ne!(Some(c.index), last, "{strategy:?}");
                last = Some(c.index);
            }
            counts[c.index] += 1;
        }
        assert!(
            counts.iter().all(|&c| (95..=105).contains(&c)),
            "{counts:?}"
        );
    }
    // Shares by capacity: a quarter, half and whole CPU take 1 : 2 : 4.
    let mut views = [
        cpus(view(report(0.0, 0), 0), 0.25),
        cpus(view(report(0.0, 0), 0), 0.5),
        cpus(view(report(0.0, 0), 0), 1.0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 700, false);
    for (c, want) in counts.iter().zip([100, 200, 400]) {
        assert!(c.abs_diff(want) <= 10, "{counts:?}");
    }
    // A host kept out for a long time (its pass far behind) rejoins the
    // rotation at its back: one turn, not a hundred in a row.
    let mut views = [view(report(0.3, 0), 0); 3];
    views[0].pass = 1000.0;
    views[1].pass = 1000.5;
    let counts = distribution(Strategy::LeastConnections, &mut views, 30, false);
    assert!(counts.iter().all(|&c| (9..=11).contains(&c)), "{counts:?}");
}

#[test]
fn score_terms_multiply_to_the_score() {
    let m = Medians {
        util: 0.5,
        cpus: 2.0,
    };
    let v = with(view(report(0.95, 200), 3), |v| v.slowness = 4.0);
    let t = score_terms(&v, m, &P);
    assert_eq!(t.score, score(&v, m, &P));
    assert!((t.queue * t.slowness * t.pressure - t.score).abs() < 1e-12);
    assert!((t.util - 0.95).abs() < 1e-9, "{t:?}");
    assert!((t.queue - 4.0).abs() < 1e-9, "3 busy on 1 cpu: {t:?}");
}

#[test]
fn a_choice_says_which_rule_made_it() {
    let schedule = wrr_schedule(&[1, 1]);
    let how = |strategy| Pick {
        strategy,
        params: P,
        ticket: 0,
        schedule: &schedule,
    };
    let idle = [view(report(0.1, 0), 1), view(report(0.1, 0), 1)];
    let untried = [idle[0], with(idle[1], |v| v.untried = true)];
    let mut rng = fastrand::Rng::with_seed(1);
    let why = |strategy, views: &[View], rng: &mut fastrand::Rng| {
        pick(&how(strategy), views.len(), |i| views[i], |_| true, rng).map(|c| c.why)
    };
    let table = [
        (Strategy::RoundRobin, &idle, Why::Turn),
        (Strategy::Random, &idle, Why::Random),
        (Strategy::LeastConnections, &idle, Why::Lowest),
        // Both busy: no probe, the score decides.
        (Strategy::LeastLoaded, &idle, Why::Lowest),
        (Strategy::LeastLoaded, &untried, Why::Untried),
    ];
    for (strategy, views, want) in table {
        assert_eq!(why(strategy, views, &mut rng), Some(want), "{strategy:?}");
    }
    // Idle hosts get the probe share now and then.
    let quiet = [view(report(0.1, 0), 0), view(report(0.1, 0), 0)];
    let probes = (0..5000)
        .filter(|_| why(Strategy::LeastLoaded, &quiet, &mut rng) == Some(Why::Probe))
        .count();
    assert!((10..150).contains(&probes), "{probes} probes in 5000");
}
