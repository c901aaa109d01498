//! Slow start in every strategy: a ramping backend takes about weight ×
//! ramp of its share.

use super::*;

fn idle(ramp: f64) -> View {
    View {
        ramp,
        ..View::UNKNOWN
    }
}

fn up(v: View) -> View {
    View { up: true, ..v }
}

/// `n` picks over `views`, counting in-flight requests up when `hold`;
/// returns each backend's share.
fn shares(strategy: Strategy, views: &[View], n: usize, hold: bool) -> Vec<f64> {
    let counts = super::tests::distribution(strategy, &mut views.to_vec(), n, hold);
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

#[test]
fn a_ramping_backend_takes_weight_times_ramp_in_every_strategy() {
    // (strategy, ramp of backend 0 of two equal ones, hold, expected share
    // of backend 0, tolerance)
    let table = [
        // Round robin skips it with probability 1 − ramp: ramp × 1/2.
        (Strategy::RoundRobin, 0.1, false, 0.05, 0.01),
        (Strategy::RoundRobin, 0.5, false, 0.25, 0.02),
        (Strategy::RoundRobin, 1.0, false, 0.5, 0.0),
        // Random draws by weight × ramp: r / (1 + r).
        (Strategy::Random, 0.1, false, 0.1 / 1.1, 0.015),
        (Strategy::Random, 0.5, false, 0.5 / 1.5, 0.02),
        // Least-connections: idle ties shared by weight × ramp...
        (Strategy::LeastConnections, 0.1, false, 0.1 / 1.1, 0.015),
        // ...and in flight per weight × ramp under concurrency.
        (Strategy::LeastConnections, 0.25, true, 0.2, 0.02),
        // Least-loaded: the score divided by the ramp, so under
        // concurrency the share follows weight × ramp as well.
        (Strategy::LeastLoaded, 0.25, true, 0.2, 0.03),
        (Strategy::LeastLoaded, 1.0, true, 0.5, 0.01),
    ];
    for (strategy, ramp, hold, want, tolerance) in table {
        let views = [up(idle(ramp)), up(idle(1.0))];
        let n = if hold { 1000 } else { 20_000 };
        let got = shares(strategy, &views, n, hold)[0];
        assert!(
            (got - want).abs() <= tolerance + 1e-9,
            "{strategy:?} ramp {ramp} hold {hold}: share {got}, want {want}"
        );
    }
}

#[test]
fn least_loaded_composes_the_ramp_with_the_load() {
    let report = |util| {
        Some(LoadView {
            util,
            cpus: 1.0,
            age: Duration::ZERO,
            rate: 0.0,
            cost: 0.0,
            dispatched: 0,
        })
    };
    // A fresh, idle host and a busy one (0 and 1: 0.25 and 0.75 once
    // denoised, scores 1.33 vs 4). Without a ramp the idle one takes all
    // sequential traffic; at ramp 0.5 it still does (2.67 < 4); at ramp 0.2
    // it no longer does (6.67 > 4): the ramp weighs against the load, it
    // does not replace it.
    for (ramp, idle_wins) in [(1.0, true), (0.5, true), (0.2, false)] {
        let views = [
            up(View {
                load: report(0.0),
                ..idle(ramp)
            }),
            up(View {
                load: report(1.0),
                ..idle(1.0)
            }),
        ];
        let share = shares(Strategy::LeastLoaded, &views, 2000, false)[0];
        assert_eq!(share > 0.9, idle_wins, "ramp {ramp}: share {share}");
        // Never starved: the probe floor still samples it.
        assert!(share > 0.0, "ramp {ramp}");
    }
}

#[test]
fn when_every_backend_is_ramping_round_robin_still_picks_one() {
    let views = [up(idle(0.1)), up(idle(0.1))];
    let s = shares(Strategy::RoundRobin, &views, 1000, false);
    assert!((s[0] + s[1] - 1.0).abs() < 1e-9, "{s:?}");
    assert!(s[0] > 0.3 && s[1] > 0.3, "{s:?}");
}

#[test]
fn a_ramp_of_zero_or_garbage_never_divides_by_zero() {
    for ramp in [0.0, -1.0, f64::NAN] {
        let views = [up(idle(ramp)), up(idle(1.0))];
        for strategy in [
            Strategy::LeastLoaded,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Random,
        ] {
            let s = shares(strategy, &views, 200, true);
            assert!((s[0] + s[1] - 1.0).abs() < 1e-9, "{strategy:?} {ramp}");
        }
    }
}
