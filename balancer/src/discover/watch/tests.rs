use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;

fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|&p| SocketAddr::from(([10, 0, 0, 1], p)))
        .collect()
}

fn failed() -> Result<Vec<SocketAddr>, DiscoverError> {
    Err(DiscoverError::Failed {
        target: "api:80".into(),
        reason: "the name server answered SERVFAIL".into(),
    })
}

fn nx() -> Result<Vec<SocketAddr>, DiscoverError> {
    Err(DiscoverError::NotFound {
        target: "api:80".into(),
    })
}

/// Feeds `rows` (a lookup result, the set expected to be applied, the log
/// event expected) through one tracker, in order.
type Row = (
    Result<Vec<SocketAddr>, DiscoverError>,
    Option<Vec<SocketAddr>>,
    Option<Event>,
);

fn run(rows: Vec<Row>) {
    let mut tracker = Tracker::default();
    for (i, (result, apply, log)) in rows.into_iter().enumerate() {
        let step = tracker.observe(result);
        assert_eq!(step, Step { apply, log }, "row {i}");
    }
}

#[test]
fn the_first_set_is_applied_then_only_changes() {
    run(vec![
        (Ok(addrs(&[1, 2])), Some(addrs(&[1, 2])), None),
        (Ok(addrs(&[1, 2])), None, None),
        (Ok(addrs(&[1, 2, 3])), Some(addrs(&[1, 2, 3])), None),
        (Ok(addrs(&[2, 3])), Some(addrs(&[2, 3])), None),
        (Ok(addrs(&[2, 3])), None, None),
    ]);
}

#[test]
fn failures_keep_the_set_and_log_once_each_way() {
    let failing = failed().unwrap_err();
    run(vec![
        (Ok(addrs(&[1])), Some(addrs(&[1])), None),
        (failed(), None, Some(Event::Failing(failing))),
        (failed(), None, None),
        (failed(), None, None),
        (Ok(addrs(&[1])), None, Some(Event::Recovered)),
        (Ok(addrs(&[1])), None, None),
    ]);
}

#[test]
fn failing_from_the_start_applies_nothing_until_a_set_is_found() {
    let failing = failed().unwrap_err();
    run(vec![
        (failed(), None, Some(Event::Failing(failing))),
        (failed(), None, None),
        (Ok(addrs(&[1])), Some(addrs(&[1])), Some(Event::Recovered)),
    ]);
}

#[test]
fn not_found_empties_the_set_only_three_times_in_a_row() {
    run(vec![
        (Ok(addrs(&[1])), Some(addrs(&[1])), None),
        (nx(), None, Some(Event::Missing)),
        (nx(), None, None),
        (nx(), Some(vec![]), Some(Event::Emptied)),
        (nx(), None, None),
        (Ok(vec![]), None, None),
        (Ok(addrs(&[1])), Some(addrs(&[1])), Some(Event::Recovered)),
    ]);
}

#[test]
fn a_lone_not_found_changes_nothing() {
    run(vec![
        (Ok(addrs(&[1])), Some(addrs(&[1])), None),
        (nx(), None, Some(Event::Missing)),
        (Ok(addrs(&[1])), None, Some(Event::Recovered)),
        (nx(), None, Some(Event::Missing)),
        (nx(), None, None),
        (
            Ok(addrs(&[1, 2])),
            Some(addrs(&[1, 2])),
            Some(Event::Recovered),
        ),
    ]);
}

#[test]
fn a_failure_restarts_the_count_of_not_found() {
    let failing = failed().unwrap_err();
    run(vec![
        (Ok(addrs(&[1])), Some(addrs(&[1])), None),
        (nx(), None, Some(Event::Missing)),
        (nx(), None, None),
        (failed(), None, Some(Event::Failing(failing))),
        (nx(), None, Some(Event::Missing)),
        (nx(), None, None),
        (nx(), Some(vec![]), Some(Event::Emptied)),
    ]);
}

#[test]
fn an_empty_set_found_first_is_held_too() {
    run(vec![
        (nx(), None, Some(Event::Missing)),
        (nx(), None, None),
        (nx(), Some(vec![]), Some(Event::Emptied)),
    ]);
}

/// A scripted lookup: answers from `script` in order (then the last one
/// again) and counts the calls.
struct Script {
    answers: Mutex<VecDeque<Result<Vec<SocketAddr>, DiscoverError>>>,
    calls: AtomicUsize,
}

impl Script {
    fn new(answers: Vec<Result<Vec<SocketAddr>, DiscoverError>>) -> Arc<Script> {
        Arc::new(Script {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
        })
    }

    fn next(&self) -> Result<Resolved, DiscoverError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap();
        let answer = if answers.len() > 1 {
            answers.pop_front().unwrap()
        } else {
            answers.front().unwrap().clone()
        };
        answer.map(|addrs| Resolved::bounded(addrs, false))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn label() -> Label {
    Label {
        pool: "api".into(),
        target: "api:80".into(),
    }
}

/// The sets a test's `apply` was handed, in order.
type Applied = Arc<Mutex<Vec<Vec<SocketAddr>>>>;

/// Starts `watch` over `script` on the (paused) test runtime; the applied
/// sets are collected, and `apply` answers `keep` for each.
fn start(
    script: &Arc<Script>,
    every: Duration,
    keep: impl Fn(usize) -> bool + Send + 'static,
) -> (Applied, JoinHandle<()>) {
    let applied = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&applied);
    let script = Arc::clone(script);
    let lookup = move || {
        let answer = script.next();
        async move { answer }
    };
    let apply = move |addrs| {
        let mut applied = sink.lock().unwrap();
        applied.push(addrs);
        keep(applied.len())
    };
    let task = tokio::spawn(watch(lookup, every, apply, label()));
    (applied, task)
}

#[tokio::test(start_paused = true)]
async fn watch_resolves_at_once_then_every_period_and_applies_changes() {
    let script = Script::new(vec![
        Ok(addrs(&[1])),
        Ok(addrs(&[1])),
        failed(),
        Ok(addrs(&[1, 2])),
        nx(),
        nx(),
        nx(),
    ]);
    let every = Duration::from_secs(5);
    let (applied, task) = start(&script, every, |_| true);

    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(script.calls(), 1, "the first lookup is at once");
    assert_eq!(*applied.lock().unwrap(), vec![addrs(&[1])]);

    tokio::time::sleep(every * 6).await;
    assert_eq!(script.calls(), 7, "one lookup per period");
    assert_eq!(
        *applied.lock().unwrap(),
        vec![addrs(&[1]), addrs(&[1, 2]), vec![]],
        "the unchanged set and the failure apply nothing; the third not-found empties"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn watch_stops_when_apply_says_the_pool_is_gone() {
    let script = Script::new(vec![Ok(addrs(&[1])), Ok(addrs(&[2])), Ok(addrs(&[3]))]);
    let every = Duration::from_secs(1);
    let (applied, task) = start(&script, every, |n| n < 2);

    tokio::time::sleep(every * 10).await;
    assert!(task.is_finished(), "the task ended");
    assert_eq!(script.calls(), 2, "no lookup after apply said false");
    assert_eq!(*applied.lock().unwrap(), vec![addrs(&[1]), addrs(&[2])]);
}

#[tokio::test(start_paused = true)]
async fn a_zero_period_is_raised_to_the_minimum() {
    let script = Script::new(vec![Ok(addrs(&[1]))]);
    let (_, task) = start(&script, Duration::ZERO, |_| true);
    tokio::time::sleep(MIN_EVERY * 10 + Duration::from_millis(1)).await;
    assert_eq!(script.calls(), 11);
    task.abort();
}
