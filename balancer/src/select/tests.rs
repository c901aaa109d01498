//! The strategies as tables of cases: pure functions, seeded randomness.

use super::*;

const P: Params = Params {
    interval: Duration::from_secs(1),
};

fn report(util: f64, age_ms: u64) -> Option<LoadView> {
    Some(LoadView {
        util,
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
        latency: 0.0,
        latency_age: Duration::ZERO,
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

#[test]
fn score_ranks_by_spare_capacity_and_queue() {
    // (view, expected score) at median 0.5
    let table = [
        (view(report(0.0, 0), 0), 1.0),
        (view(report(0.5, 0), 0), 2.0),
        (view(report(0.9, 0), 0), 10.0),
        (view(report(1.0, 0), 0), 20.0), // floored spare: still ranked
        (view(report(0.0, 0), 3), 4.0),  // each request in flight counts
        (view(None, 0), 2.0),            // unknown ranks with the median
        (
            View {
                weight: 2,
                ..view(report(0.5, 0), 1)
            },
            3.0, // (1 + 1/2) / 0.5
        ),
    ];
    for (v, want) in table {
        let medians = Medians {
            util: 0.5,
            latency: 0.0,
        };
        let got = score(&v, medians, &P);
        assert!((got - want).abs() < 1e-9, "{v:?}: {got} != {want}");
    }
}

#[test]
fn latency_factor_compares_with_the_median_and_fades_with_age() {
    let v = |latency: f64, age_s: u64| View {
        latency,
        latency_age: Duration::from_secs(age_s),
        ..view(None, 0)
    };
    // (view, median, expected factor); P's memory is 10 s.
    let table = [
        (v(0.010, 0), 0.010, 1.0),                          // as fast as the others
        (v(0.001, 0), 0.010, 1.0),                          // faster: no bonus
        (v(0.020, 0), 0.010, 1.0),                          // within 1.5 × median + 5 ms: noise
        (v(0.0025, 0), 0.0005, 1.0), // a slow sample of a 0.5 ms request: noise
        (v(0.050, 0), 0.010, 3.0),   // 1 + (50 - 15 - 5) / (10 + 5)
        (v(0.500, 0), 0.010, 4.0),   // bounded at 4
        (v(0.050, 10), 0.010, 1.0 + 2.0 * (-1.0f64).exp()), // fading
        (v(0.050, 1000), 0.010, 1.0), // forgotten: tried again
        (v(0.0, 0), 0.010, 1.0),     // never measured
        (v(0.040, 0), 0.0, 1.0),     // nothing to compare with
    ];
    for (view, median, want) in table {
        let got = latency_factor(&view, median, &P);
        assert!((got - want).abs() < 1e-9, "{view:?}: {got} != {want}");
    }
}

#[test]
fn between_saturated_hosts_the_slower_one_is_avoided() {
    // Both report 100 % CPU; one serves four times slower (noisy
    // neighbours). Utilization cannot tell them apart; latency can.
    let mut views = [view(report(1.0, 0), 0), view(report(1.0, 0), 0)];
    views[0].latency = 0.200;
    views[1].latency = 0.040;
    let counts = distribution(Strategy::LeastLoaded, &mut views, 10, true);
    // The fast one takes about four fifths while requests pile up.
    assert!(counts[1] >= 7, "{counts:?}");
}

#[test]
fn median_ignores_unknown_and_expired_reports() {
    let views = [
        view(report(0.9, 0), 0),
        view(report(0.1, 0), 0),
        view(None, 0),
        view(report(0.0, 9000), 0),
        view(report(0.5, 0), 0),
    ];
    assert_eq!(median_util(views.len(), |i| views[i], &P), 0.5);
    assert_eq!(median_util(2, |i| views[i], &P), 0.5); // (0.9 + 0.1) / 2
    assert_eq!(median_util(0, |i| views[i], &P), 0.5); // nothing known
}

/// Runs `n` picks, updating in-flight counts as `hold` says, and returns
/// how many went to each backend.
fn distribution(strategy: Strategy, views: &mut [View], n: usize, hold: bool) -> Vec<usize> {
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
        let i = pick(&how, views.len(), |i| snapshot[i], |_| true, &mut rng).unwrap();
        counts[i] += 1;
        if hold {
            views[i].in_flight += 1;
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
        view(report(0.2, 0), 0),
        view(None, 0),
        view(report(0.8, 0), 0),
    ];
    // Median 0.5: the unknown host is second, neither first nor excluded.
    let counts = distribution(Strategy::LeastLoaded, &mut views, 1000, false);
    assert!(counts[0] > 900, "{counts:?}");
    let mut views = [
        view(report(0.9, 0), 0),
        view(None, 0),
        view(report(0.95, 0), 0),
    ];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 1000, false);
    assert!(counts[0] > 900, "{counts:?}"); // median 0.925 > 0.9
}

#[test]
fn equal_backends_share_traffic_through_random_ties() {
    let mut views = [view(None, 0), view(None, 0), view(None, 0)];
    let counts = distribution(Strategy::LeastLoaded, &mut views, 3000, false);
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
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
            assert_eq!(got, Some(1), "{strategy:?}");
            assert_eq!(pick(&how, 3, |i| views[i], |i| i == 0, &mut rng), None);
        }
    }
}
