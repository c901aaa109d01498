//! The health counter, passive health and the in-flight guard.

use std::time::Duration;

use super::*;
use crate::outcome::Outcome;

fn backend(rise: u32, fall: u32) -> Backend {
    Backend::new(
        &BackendConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            agent: "127.0.0.1:2".parse().unwrap(),
            weight: 1,
        },
        rise,
        fall,
        &Arc::new(Baselines::new()),
    )
}

/// Feeds probe results ("+" ok, "-" failed) and returns the up/down
/// state after each, as a string of "U"/"D".
fn run(b: &Backend, rise: u32, fall: u32, seq: &str) -> String {
    seq.chars()
        .map(|c| {
            b.record_probe(c == '+', rise, fall);
            if b.is_up() {
                'U'
            } else {
                'D'
            }
        })
        .collect()
}

#[test]
fn rise_and_fall_count_strictly_consecutive_results() {
    // (rise, fall, probes, expected states)
    let table = [
        (2, 2, "-", "U"),           // starts fully up: one failure is not enough
        (2, 2, "--", "UD"),         // fall = 2
        (2, 3, "---", "UUD"),       // fall = 3
        (2, 2, "-+-+-+", "UUUUUU"), // interrupted failures never take it down
        (2, 2, "--+", "UDD"),       // one success is not rise
        (2, 2, "--++", "UDDU"),     // rise = 2
        (3, 2, "--+++", "UDDDU"),   // rise = 3
        (2, 2, "--+-+", "UDDDD"),   // interrupted successes reset
        (2, 2, "--++-", "UDDUU"),   // back up means fully up: fall again needed
        (1, 1, "-+-+", "DUDU"),     // the most eager settings
    ];
    for (rise, fall, seq, want) in table {
        let b = backend(rise, fall);
        assert_eq!(
            run(&b, rise, fall, seq),
            want,
            "rise {rise} fall {fall} {seq}"
        );
    }
}

#[test]
fn transitions_are_reported_once() {
    let b = backend(2, 2);
    assert_eq!(b.record_probe(false, 2, 2), None);
    assert_eq!(b.record_probe(false, 2, 2), Some(Transition::WentDown));
    assert_eq!(b.record_probe(false, 2, 2), None);
    assert_eq!(b.record_probe(true, 2, 2), None);
    assert_eq!(b.record_probe(true, 2, 2), Some(Transition::WentUp));
    assert_eq!(b.record_probe(true, 2, 2), None);
}

#[test]
fn a_refused_connection_takes_it_down_at_once_and_rise_brings_it_back() {
    let b = backend(2, 3);
    assert_eq!(b.mark_down(), Some(Transition::WentDown));
    assert_eq!(b.mark_down(), None);
    assert_eq!(run(&b, 2, 3, "++"), "DU");
}

#[test]
fn report_marks_down_on_refusal_counts_errors_and_trips_on_a_streak() {
    use http::StatusCode;
    let b = backend(2, 2);
    let now = Instant::now();
    let report = |o| b.report(o, None, 3, now);
    // (outcome, tripped, up after, errors after)
    let table = [
        (
            Outcome::Response(StatusCode::INTERNAL_SERVER_ERROR),
            false,
            true,
            0,
        ),
        (Outcome::Timeout, false, true, 1),
        (Outcome::Client, false, true, 1), // not the backend's doing
        (Outcome::Saturated, false, true, 1), // nor is our own limit
        (Outcome::Reset, true, true, 2),   // third failure in a row
        (Outcome::Response(StatusCode::OK), false, true, 2),
        (Outcome::Protocol, false, true, 3),
        (Outcome::ConnectFailed { refused: false }, false, true, 4),
        (Outcome::ConnectFailed { refused: true }, true, false, 5),
    ];
    for (i, (outcome, tripped, up, errors)) in table.into_iter().enumerate() {
        assert_eq!(report(outcome), tripped, "row {i}: {outcome}");
        assert_eq!(b.is_up(), up, "row {i}: {outcome}");
        assert_eq!(b.stats().errors, errors, "row {i}: {outcome}");
    }
    assert_eq!(b.stats().last_error.unwrap().message, "connection refused");
}

#[test]
fn coming_back_up_starts_a_slow_start_and_the_start_does_not() {
    let b = backend(1, 1);
    let slow = Duration::from_secs(60);
    assert_eq!(b.ramp(Instant::now(), slow), None);
    b.record_probe(false, 1, 1);
    assert_eq!(b.ramp(Instant::now(), slow), None, "down: no ramp yet");
    b.record_probe(true, 1, 1);
    let ramp = b.ramp(Instant::now(), slow).expect("ramping");
    assert!((0.1..0.11).contains(&ramp), "{ramp}");
    assert_eq!(b.ramp(Instant::now(), Duration::ZERO), None, "off");
}

#[test]
fn the_in_flight_guard_counts_until_dropped() {
    let b = Arc::new(backend(2, 2));
    let g1 = b.start_request(Some(0));
    let g2 = b.start_request(None);
    assert_eq!(b.stats().in_flight, 2);
    drop(g1);
    assert_eq!(b.stats().in_flight, 1);
    drop(g2);
    assert_eq!((b.stats().in_flight, b.stats().requests), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn the_backend_time_leaves_out_the_client_and_bodies_are_no_measure() {
    use tokio::time::advance;
    let b = Arc::new(backend(2, 2));
    let mut g = b.start_request(Some(0));
    assert_eq!(b.stats().busy, 1);
    advance(Duration::from_millis(10)).await; // the backend works
    g.head_arrived(Instant::now());
    assert_eq!(b.stats().busy, 0);
    advance(Duration::from_secs(5)).await; // the client does not read
    g.waiting_on_backend();
    assert_eq!(b.stats().busy, 1);
    advance(Duration::from_millis(5)).await; // the backend's next bytes
    g.finish();
    assert_eq!(b.stats().busy, 0);
    drop(g);
    // 15 ms of the backend's own time; the five seconds are the client's.
    let service = b.stats().service;
    assert!((service - 0.015).abs() < 1e-6, "{service}");
    assert!(!b.signal.untried());

    // A request with a body (paced by the client) is no measure of the
    // host: it ends the untried state and leaves the signal alone.
    let c = Arc::new(backend(2, 2));
    let mut g = c.start_request(None);
    advance(Duration::from_secs(9)).await;
    g.head_arrived(Instant::now());
    g.finish();
    drop(g);
    assert!(!c.signal.untried());
    assert_eq!(c.stats().service, 0.0);
    assert_eq!(c.stats().slowness, 1.0);

    // A failed attempt (dropped before its head) is tried as well, so a
    // backend that only ever fails does not stay first in line.
    let d = Arc::new(backend(2, 2));
    drop(d.start_request(Some(0)));
    assert!(!d.signal.untried());
    assert_eq!(d.stats().service, 0.0);
}

#[test]
fn memory_counts_only_near_exhaustion() {
    let r = |cpu, memory| LoadReport {
        cpu,
        memory,
        cores: 2,
        cpus: 2.0,
        load1: 0.0,
        mem_total_bytes: 0,
        mem_used_bytes: 0,
    };
    assert_eq!(utilization(&r(0.3, 0.8)), 0.3);
    assert!((utilization(&r(0.3, 0.95)) - 0.5).abs() < 1e-9);
    assert!((utilization(&r(0.3, 1.0)) - 1.0).abs() < 1e-9);
}
