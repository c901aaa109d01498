//! Every duration and number of `lb.toml` is range-checked, with an error
//! naming the file, line, key and valid range; the largest value accepted
//! is exactly the documented maximum.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n";

/// Every duration key, as `(table, key)`.
pub(super) const DURATION_KEYS: &[(&str, &str)] = &[
    ("health", "interval"),
    ("health", "timeout"),
    ("agent", "interval"),
    ("agent", "timeout"),
    ("timeouts", "connect"),
    ("timeouts", "request"),
    ("timeouts", "idle"),
    ("timeouts", "header"),
    ("timeouts", "drain"),
    ("balance", "slow_start"),
];

#[test]
fn every_duration_is_at_most_a_week_and_says_so() {
    assert_eq!(MAX_DURATION, Duration::from_secs(7 * 24 * 3600));
    for (table, key) in DURATION_KEYS {
        for accepted in ["7d", "168h", "1ms"] {
            let text = format!("{MINIMAL}[{table}]\n{key} = \"{accepted}\"\n");
            parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        }
        // The value, which used to pass and then panic every request.
        for refused in ["100000000000y", "7d 1ms", "8d", "1y"] {
            let text = format!("{MINIMAL}[{table}]\n{key} = \"{refused}\"\n");
            let e = parse(&text).expect_err(&text);
            let col = key.len() + 4;
            for want in [
                format!("lb.toml:4:{col}"),
                format!("[{table}] {key}"),
                format!("{refused:?}"),
                "out of range".to_owned(),
                "at most \"7d\"".to_owned(),
            ] {
                assert!(e.contains(&want), "error for {text:?}\n{e}\nlacks {want:?}");
            }
        }
    }
}

#[test]
fn the_largest_durations_are_taken_as_written() {
    let mut text = MINIMAL.to_owned();
    let mut table = "";
    for (t, key) in DURATION_KEYS {
        if *t != table {
            text.push_str(&format!("[{t}]\n"));
            table = t;
        }
        text.push_str(&format!("{key} = \"7d\"\n"));
    }
    // Sections must not repeat: group by table.
    let c = parse(&grouped(&text)).unwrap();
    let w = MAX_DURATION;
    assert_eq!((c.health.interval, c.health.timeout), (w, w));
    assert_eq!((c.agent.interval, c.agent.timeout), (w, w));
    let t = c.timeouts;
    assert_eq!([t.connect, t.request, t.idle, t.header, t.drain], [w; 5]);
    assert_eq!(c.balance.slow_start, w);
}

/// `text` with every `[table]`'s lines gathered under one header, in first
/// appearance order (TOML refuses a table defined twice).
fn grouped(text: &str) -> String {
    let mut top = String::new();
    let mut tables: Vec<(String, String)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[') {
            let name = name.trim_end_matches(']').to_owned();
            current = Some(match tables.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    tables.push((name, String::new()));
                    tables.len() - 1
                }
            });
        } else {
            let into = match current {
                Some(i) => &mut tables[i].1,
                None => &mut top,
            };
            into.push_str(line);
            into.push('\n');
        }
    }
    for (name, body) in tables {
        top.push_str(&format!("[{name}]\n{body}"));
    }
    top
}

/// Every number key: `(table and key, the largest accepted, the smallest
/// accepted, the expected range in the error)`.
pub(super) const NUMBER_KEYS: &[(&str, &str, i64, i64, &str)] = &[
    ("agent", "port", 65535, 1, "1..65535"),
    ("health", "fall", 1000, 1, "1..1000"),
    ("health", "rise", 1000, 1, "1..1000"),
    ("balance", "retries", 10, 0, "0..10"),
    ("compression", "level", 9, 1, "1..9"),
    ("compression", "min_size", i64::MAX, 0, "at least 0"),
    ("outlier", "consecutive_failures", 1000, 0, "0..1000"),
    ("outlier", "max_ejected_percent", 100, 0, "0..100"),
    (
        "limits",
        "max_conns_per_backend",
        1_000_000,
        0,
        "0..1000000",
    ),
];

#[test]
fn every_number_is_range_checked_at_both_ends() {
    for &(table, key, max, min, range) in NUMBER_KEYS {
        for ok in [min, max] {
            let text = format!("{MINIMAL}[{table}]\n{key} = {ok}\n");
            parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        }
        let mut refused = vec![min - 1];
        if max < i64::MAX {
            refused.push(max + 1);
        }
        for bad in refused {
            let text = format!("{MINIMAL}[{table}]\n{key} = {bad}\n");
            let e = parse(&text).expect_err(&text);
            let col = key.len() + 4;
            for want in [
                format!("lb.toml:4:{col}"),
                format!("[{table}] {key}"),
                bad.to_string(),
                range.to_owned(),
            ] {
                assert!(e.contains(&want), "error for {text:?}\n{e}\nlacks {want:?}");
            }
        }
        // Past i64: TOML itself refuses it, with the place.
        let text = format!("{MINIMAL}[{table}]\n{key} = 99999999999999999999\n");
        let e = parse(&text).expect_err(&text);
        assert!(e.contains("lb.toml:4:"), "{e}");
    }
    // A backend's weight.
    for (weight, ok) in [(1, true), (1000, true), (0, false), (1001, false)] {
        let text = format!(
            "listen = \"127.0.0.1:8080\"\nbackends = [{{ addr = \"10.0.0.11:8000\", weight = {weight} }}]\n"
        );
        match parse(&text) {
            Ok(_) => assert!(ok, "{text}"),
            Err(e) => {
                assert!(!ok, "{text}\n{e}");
                assert!(
                    e.contains("backends[0] weight") && e.contains("1..1000"),
                    "{e}"
                );
            }
        }
    }
    // The one fraction.
    for (v, ok) in [
        ("0.0", true),
        ("1.0", true),
        ("1.0000001", false),
        ("inf", false),
        ("-inf", false),
        ("nan", false),
    ] {
        let text = format!("{MINIMAL}[balance]\nretry_budget = {v}\n");
        assert_eq!(parse(&text).is_ok(), ok, "{text}");
    }
}
