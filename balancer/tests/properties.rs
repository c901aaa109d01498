//! Property tests (proptest): no input panics the config parser, the
//! `Accept-Encoding` parser or the selection score, and each keeps its
//! promises on every input: a config is `Ok` or `Err`, never a panic, and
//! an accepted one has its durations within bounds; `q=0` refuses a coding;
//! the chosen backend is always one of the candidates.

use std::path::Path;
use std::time::Duration;

use balancer::compress::{self, Encoding, Settings};
use balancer::config::{Strategy as Policy, MAX_DURATION};
use balancer::select::{self, LoadView, Medians, Params, Pick, View};
use balancer::Config;
use http::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// The config parser

const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n";

/// Every known key, by table ("" for the top level).
const KEYS: &[(&str, &str)] = &[
    ("", "listen"),
    ("", "backends"),
    ("balance", "strategy"),
    ("balance", "retries"),
    ("balance", "slow_start"),
    ("balance", "retry_budget"),
    ("health", "path"),
    ("health", "interval"),
    ("health", "timeout"),
    ("health", "fall"),
    ("health", "rise"),
    ("agent", "port"),
    ("agent", "interval"),
    ("agent", "timeout"),
    ("compression", "gzip"),
    ("compression", "level"),
    ("compression", "min_size"),
    ("compression", "types"),
    ("compression", "encodings"),
    ("timeouts", "connect"),
    ("timeouts", "request"),
    ("timeouts", "idle"),
    ("timeouts", "header"),
    ("timeouts", "drain"),
    ("admin", "listen"),
    ("outlier", "consecutive_failures"),
    ("outlier", "base_ejection"),
    ("outlier", "max_ejected_percent"),
    ("timeouts", "client_body"),
    ("timeouts", "send"),
    ("timeouts", "tunnel"),
    ("limits", "max_conns_per_backend"),
    ("limits", "max_connections"),
    ("limits", "max_connections_per_ip"),
    ("limits", "rate_per_ip"),
    ("limits", "burst_per_ip"),
    ("limits", "max_request_body"),
    ("agent", "key_file"),
    ("admin", "token_file"),
];

/// A float as TOML writes it (NaN and the infinities included).
fn toml_float(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{f:?}")
    }
}

/// A TOML value of any kind, biased towards what the keys expect: numbers
/// at and past every edge, durations with every unit and absurd counts,
/// addresses, lists.
fn value() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "years", "", "x",
    ]);
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            9,
            10,
            100,
            101,
            1000,
            1001,
            65535,
            65536,
            1_000_000,
            1_000_001,
            i64::MAX
        ])
        .prop_map(|n| n.to_string()),
        any::<f64>().prop_map(toml_float),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, -0.0, 1e-300, 1.0000001])
            .prop_map(toml_float),
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("\"{n}{u}\"")),
        (0u64..100_000, unit).prop_map(|(n, u)| format!("\"{n}{u}\"")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,24}".prop_map(|s| format!("{s:?}")),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| format!("\"{}.{}.{}.{}:{port}\"", ip[0], ip[1], ip[2], ip[3])),
        prop::collection::vec("[ -~]{0,12}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("[{ addr = \"10.0.0.1:1\", weight = 0 }]".to_owned()),
        Just("{ a = 1 }".to_owned()),
    ]
}

/// A config file: the minimal one plus some known keys (tables gathered,
/// each key once) set to arbitrary values.
fn known_keys_file() -> impl Strategy<Value = String> {
    prop::collection::btree_map(0..KEYS.len(), value(), 1..8).prop_map(|chosen| {
        let mut top = String::new();
        let mut tables: std::collections::BTreeMap<&str, String> = Default::default();
        for (i, v) in &chosen {
            let (table, key) = KEYS[*i];
            let line = format!("{key} = {v}\n");
            if table.is_empty() {
                top.push_str(&line);
            } else {
                tables.entry(table).or_default().push_str(&line);
            }
        }
        // The minimal file's keys, unless chosen above.
        for line in MINIMAL.lines() {
            let key = line.split(' ').next().unwrap();
            if !top.lines().any(|l| l.starts_with(&format!("{key} "))) {
                top.push_str(line);
                top.push('\n');
            }
        }
        for (table, body) in tables {
            top.push_str(&format!("[{table}]\n{body}"));
        }
        top
    })
}

/// TOML-ish lines: headers, known keys and junk, in any order.
fn tomlish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        prop::sample::select(KEYS.to_vec()).prop_map(|(t, _)| format!("[{t}]")),
        (prop::sample::select(KEYS.to_vec()), value()).prop_map(|((_, k), v)| format!("{k} = {v}")),
        Just("[[pool]]".to_owned()),
        "[ -~]{0,30}",
        "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

/// Parses `text`; must not panic, and an accepted config must be within
/// every bound and summarize without panicking.
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new("lb.toml")) {
        Ok(c) => {
            let durations = [
                c.health.interval,
                c.health.timeout,
                c.agent.interval,
                c.agent.timeout,
                c.timeouts.connect,
                c.timeouts.request,
                c.timeouts.idle,
                c.timeouts.header,
                c.timeouts.drain,
                c.outlier.base_ejection,
            ];
            for d in durations {
                prop_assert!(!d.is_zero() && d <= MAX_DURATION, "{d:?} in\n{text}");
            }
            prop_assert!(c.balance.slow_start <= MAX_DURATION);
            prop_assert!((0.0..=1.0).contains(&c.balance.retry_budget));
            prop_assert!(!c.summary().is_empty());
            // What the balancer derives from the durations.
            let p = Params {
                interval: c.agent.interval,
            };
            prop_assert!(p.fresh() <= p.expiry());
            let _ = balancer::deadline::from_now(c.timeouts.idle);
        }
        Err(e) => prop_assert!(e.to_string().starts_with("lb.toml"), "{e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
        parse_checked(&text)?;
    }

    #[test]
    fn tomlish_text_parses_or_fails_without_panicking(text in tomlish()) {
        parse_checked(&text)?;
    }

    #[test]
    fn any_value_for_known_keys_parses_or_fails_without_panicking(text in known_keys_file()) {
        parse_checked(&text)?;
    }
}

// ---------------------------------------------------------------------------
// The Accept-Encoding parser

fn settings(encodings: Vec<Encoding>) -> Settings {
    Settings {
        encodings,
        level: 6,
        min_size: 0,
        types: Vec::new(),
    }
}

fn encodings() -> impl Strategy<Value = Vec<Encoding>> {
    prop::sample::subsequence(vec![Encoding::Gzip, Encoding::Br, Encoding::Zstd], 0..=3)
        .prop_shuffle()
}

/// One `Accept-Encoding` element: a coding and, maybe, a `q`.
#[derive(Debug, Clone)]
struct Element {
    coding: &'static str,
    q: Option<&'static str>,
}

/// What a `q` parameter's text means, in thousandths; `None` for a
/// malformed one (which counts as 0).
fn q_value(q: &str) -> Option<u16> {
    match q {
        "1" | "1.0" | "1.000" => Some(1000),
        "0" | "0.0" | "0.00" | "0.000" => Some(0),
        "0.5" => Some(500),
        "0.001" => Some(1),
        "0.999" => Some(999),
        _ => None,
    }
}

fn element() -> impl Strategy<Value = Element> {
    let coding = prop::sample::select(vec![
        "gzip", "GZIP", "x-gzip", "br", "BR", "zstd", "*", "identity", "deflate", "",
    ]);
    let q = prop::option::of(prop::sample::select(vec![
        "1", "1.0", "1.000", "0", "0.0", "0.00", "0.000", "0.5", "0.001", "0.999", "2", "0.5000",
        "abc", "", "-0", "1.001",
    ]));
    (coding, q).prop_map(|(coding, q)| Element { coding, q })
}

fn names(e: Encoding) -> &'static [&'static str] {
    match e {
        Encoding::Gzip => &["gzip", "GZIP", "x-gzip"],
        Encoding::Br => &["br", "BR"],
        Encoding::Zstd => &["zstd"],
    }
}

/// The weight an element gives, in thousandths (no `q` is 1).
fn weight(e: &Element) -> u16 {
    e.q.map_or(1000, |q| q_value(q).unwrap_or(0))
}

fn header(elements: &[Element], lines: usize, spaces: bool) -> HeaderMap {
    let texts: Vec<String> = elements
        .iter()
        .map(|e| match e.q {
            Some(q) if spaces => format!("{} ; q={q}", e.coding),
            Some(q) => format!("{};q={q}", e.coding),
            None => e.coding.to_owned(),
        })
        .collect();
    let mut h = HeaderMap::new();
    let per_line = texts.len().div_ceil(lines.max(1)).max(1);
    for chunk in texts.chunks(per_line) {
        h.append(
            ACCEPT_ENCODING,
            HeaderValue::from_str(&chunk.join(", ")).unwrap(),
        );
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_accept_encoding_bytes_are_parsed_without_panicking(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        list in encodings(),
    ) {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.append(ACCEPT_ENCODING, v);
            }
        }
        let s = settings(list);
        if let Some(e) = compress::accepted(&h, &s).encoding() {
            prop_assert!(s.encodings.contains(&e));
        }
    }

    #[test]
    fn q_zero_refuses_a_coding_and_only_an_acceptable_one_is_chosen(
        elements in prop::collection::vec(element(), 0..8),
        list in encodings(),
        lines in 1usize..4,
        spaces in any::<bool>(),
    ) {
        let h = header(&elements, lines, spaces);
        let s = settings(list);
        let got = compress::accepted(&h, &s).encoding();
        for &e in &s.encodings {
            let explicit: Vec<u16> = elements
                .iter()
                .filter(|x| names(e).contains(&x.coding))
                .map(weight)
                .collect();
            let star: Vec<u16> = elements.iter().filter(|x| x.coding == "*").map(weight).collect();
            // The weight the coding has: its explicit mentions', else `*`'s.
            let q = if explicit.is_empty() { star.iter().max() } else { explicit.iter().max() };
            if q.map_or(true, |&q| q == 0) {
                prop_assert_ne!(got, Some(e), "{:?} refuses {}", h, e);
            }
        }
        if let Some(e) = got {
            prop_assert!(s.encodings.contains(&e));
        }
        if elements.is_empty() {
            prop_assert_eq!(got, None);
        }
    }
}

// ---------------------------------------------------------------------------
// The score and the pick

/// Any f64 at all, edges first.
fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            1e-300
        ]),
        0.0..2.0f64,
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..100_000).prop_map(Duration::from_millis),
        Just(Duration::ZERO),
        Just(Duration::MAX),
    ]
}

fn load(f: fn() -> BoxedStrategy<f64>) -> impl Strategy<Value = LoadView> {
    (f(), f(), duration(), f(), f(), any::<u64>()).prop_map(
        |(util, cpus, age, rate, cost, dispatched)| LoadView {
            util,
            cpus,
            age,
            rate,
            cost,
            dispatched,
        },
    )
}

fn view(f: fn() -> BoxedStrategy<f64>) -> impl Strategy<Value = View> {
    (
        (any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (f(), f(), f(), any::<bool>(), prop::option::of(load(f)), f()),
    )
        .prop_map(
            |((up, weight, in_flight, busy), (slowness, service, pass, untried, load, ramp))| {
                View {
                    up,
                    weight,
                    in_flight,
                    busy: busy.min(in_flight),
                    slowness,
                    service,
                    pass,
                    untried,
                    load,
                    ramp,
                }
            },
        )
}

fn wild_boxed() -> BoxedStrategy<f64> {
    wild().boxed()
}

/// Values the balancer itself produces: finite, not negative, utilizations
/// in 0..1, but otherwise extreme.
fn sane_boxed() -> BoxedStrategy<f64> {
    prop_oneof![0.0..=1.0f64, 0.0..1e12f64, Just(0.0), Just(1e12)].boxed()
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(vec![
        Policy::LeastLoaded,
        Policy::RoundRobin,
        Policy::LeastConnections,
        Policy::Random,
    ])
}

/// Picks from `views` (allowed by `mask`) and checks the choice.
fn check_pick(
    strategy: Policy,
    views: &[View],
    mask: &[bool],
    interval: Duration,
    ticket: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let n = views.len();
    let weights: Vec<u32> = views.iter().map(|v| v.weight).collect();
    let schedule = select::wrr_schedule(&weights);
    let how = Pick {
        strategy,
        params: Params { interval },
        ticket,
        schedule: &schedule,
    };
    let allowed = |i: usize| mask[i % mask.len()];
    let candidate = |i: usize| i < n && allowed(i) && views[i].up;
    let mut rng = fastrand::Rng::with_seed(seed);
    let got = select::pick(&how, n, |i| views[i], allowed, &mut rng);
    match got {
        Some(c) => {
            prop_assert!(
                candidate(c.index),
                "{strategy:?} chose {} of {views:?}",
                c.index
            );
            if let Some(pass) = c.pass {
                prop_assert!(!pass.is_nan(), "a NaN turn counter from {views:?}");
            }
        }
        None => prop_assert!(
            !(0..n).any(candidate),
            "{strategy:?} chose nothing though some are candidates: {views:?} {mask:?}"
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_views_pick_a_candidate_or_none_when_there_is_none(
        strategy in policy(),
        views in prop::collection::vec(view(wild_boxed), 0..20),
        mask in prop::collection::vec(any::<bool>(), 1..20),
        interval in duration(),
        ticket in prop_oneof![any::<usize>(), (usize::MAX - 64)..=usize::MAX],
        seed in any::<u64>(),
    ) {
        check_pick(strategy, &views, &mask, interval, ticket, seed)?;
    }

    /// Weights as `lb.toml` allows them (1..1000), many backends, a few of
    /// them candidates: round robin's schedule is capped, and must not
    /// leave out the one backend that can take the request.
    #[test]
    fn round_robin_finds_any_candidate_whatever_the_weights(
        weights in prop::collection::vec(prop_oneof![Just(1u32), Just(1000u32), 1u32..=1000], 1..40),
        up in prop::collection::vec(any::<bool>(), 1..40),
        ticket in any::<usize>(),
        seed in any::<u64>(),
    ) {
        let views: Vec<View> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| View { up: up[i % up.len()], weight, ramp: 1.0, ..View::UNKNOWN })
            .collect();
        check_pick(Policy::RoundRobin, &views, &[true], Duration::from_secs(1), ticket, seed)?;
    }

}

proptest! {
    // Fewer: each case builds a 10,000-entry round-robin schedule.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pools_past_the_stack_buffer_pick_a_candidate(
        strategy in policy(),
        views in prop::collection::vec(view(sane_boxed), 60..80),
        mask in prop::collection::vec(any::<bool>(), 1..4),
        seed in any::<u64>(),
    ) {
        check_pick(strategy, &views, &mask, Duration::from_secs(1), 0, seed)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_score_of_values_the_balancer_produces_is_a_positive_number(
        v in view(sane_boxed),
        util in 0.0..=1.0f64,
        cpus in 0.0..1e6f64,
        interval in duration(),
    ) {
        let m = Medians { util, cpus };
        let s = select::score(&v, m, &Params { interval });
        prop_assert!(!s.is_nan() && s > 0.0, "score {} for {:?} {:?}", s, v, m);
        let e = select::estimated_util(v.load.as_ref(), util, &Params { interval });
        prop_assert!((0.0..=1.0).contains(&e), "estimated {}", e);
    }
}

/// The case the round-robin properties found: weights so far apart that
/// the capped schedule never names the light backend, and the heavy one
/// down. Round robin must still find the light one.
#[test]
fn round_robin_reaches_a_backend_its_capped_schedule_leaves_out() {
    let views = [
        View {
            up: false,
            weight: u32::MAX,
            ramp: 1.0,
            ..View::UNKNOWN
        },
        View {
            up: true,
            weight: 1,
            ramp: 1.0,
            ..View::UNKNOWN
        },
    ];
    assert!(!select::wrr_schedule(&[u32::MAX, 1]).contains(&1));
    check_pick(
        Policy::RoundRobin,
        &views,
        &[true],
        Duration::from_secs(1),
        0,
        1,
    )
    .unwrap();
}
