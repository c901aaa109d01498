//! Config parsing: defaults, every key, and every error the contract names.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n";

#[test]
fn a_minimal_file_gets_the_contract_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        c.backends,
        [BackendConfig {
            addr: "10.0.0.11:8000".parse().unwrap(),
            agent: "10.0.0.11:9100".parse().unwrap(),
            weight: 1,
        }]
    );
    assert_eq!(c.balance.strategy, Strategy::LeastLoaded);
    assert_eq!(c.health.path, "/health");
    assert_eq!(c.health.interval, Duration::from_secs(1));
    assert_eq!(c.health.timeout, Duration::from_millis(500));
    assert_eq!((c.health.fall, c.health.rise), (2, 2));
    assert_eq!(c.agent.port, 9100);
    assert_eq!(c.agent.interval, Duration::from_secs(1));
    assert_eq!(c.agent.timeout, Duration::from_millis(500));
    assert_eq!(c.compression.encodings, [compress::Encoding::Gzip]);
    assert_eq!((c.compression.level, c.compression.min_size), (6, 1024));
    assert_eq!(c.compression.types.len(), DEFAULT_TYPES.len());
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.timeouts.request, Duration::from_secs(30));
    assert_eq!(c.timeouts.idle, Duration::from_secs(60));
    assert_eq!(c.admin.listen, "127.0.0.1:9000".parse().unwrap());
}

#[test]
fn the_contract_example_parses_with_every_key() {
    let c = parse(
        r#"
listen = "0.0.0.0:8080"
backends = ["10.0.0.11:8000", { addr = "10.0.0.12:8000", agent = "10.0.0.99:9200", weight = 2 }]

[balance]
strategy = "round-robin"

[health]
path = "/healthz"
interval = "2s"
timeout = "250ms"
fall = 3
rise = 4

[agent]
port = 9101
interval = "500ms"
timeout = "100ms"

[compression]
gzip = true
level = 1
min_size = 0
types = ["text/html", "application/json"]
encodings = ["zstd", "gzip"]

[timeouts]
connect = "2s"
request = "1m"
idle = "90s"

[admin]
listen = "127.0.0.1:9999"
"#,
    )
    .unwrap();
    assert_eq!(c.backends[0].agent, "10.0.0.11:9101".parse().unwrap());
    assert_eq!(c.backends[1].agent, "10.0.0.99:9200".parse().unwrap());
    assert_eq!(c.backends[1].weight, 2);
    assert_eq!(c.balance.strategy, Strategy::RoundRobin);
    assert_eq!((c.health.fall, c.health.rise), (3, 4));
    assert_eq!(c.health.path, "/healthz");
    assert_eq!(c.agent.interval, Duration::from_millis(500));
    assert_eq!(
        c.compression.encodings,
        [compress::Encoding::Zstd, compress::Encoding::Gzip]
    );
    assert_eq!(c.timeouts.request, Duration::from_secs(60));
    assert_eq!(c.admin.listen, "127.0.0.1:9999".parse().unwrap());
}

#[test]
fn gzip_false_turns_gzip_off() {
    let c = parse(&format!("{MINIMAL}[compression]\ngzip = false\n")).unwrap();
    assert!(c.compression.encodings.is_empty());
}

/// Each bad file, and what its error must mention (besides the file name,
/// which every error starts with).
#[test]
fn errors_name_the_file_line_column_and_key() {
    let table: &[(&str, &[&str])] = &[
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\nbogus = 1\n",
            &["lb.toml:3:1", "unknown field `bogus`"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[health]\nintervl = \"1s\"\n",
            &["lb.toml:4:1", "intervl"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[balance]\nstrategy = \"fastest\"\n",
            &["lb.toml:4:12", "[balance] strategy", "\"fastest\"", "least-loaded, round-robin"],
        ),
        (
            "listen = \"localhost\"\nbackends = [\"10.0.0.11:8000\"]\n",
            &["lb.toml:1:10", "listen", "\"localhost\"", "IP:port"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\", \"10.0.0.300:80\"]\n",
            &["lb.toml:2:31", "backends[1]", "10.0.0.300:80"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = []\n",
            &["lb.toml:2:12", "backends", "empty"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[compression]\nlevel = 10\n",
            &["lb.toml:4:9", "[compression] level", "10", "1..9"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[compression]\nlevel = 0\n",
            &["lb.toml:4:9", "[compression] level"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[health]\nfall = 0\n",
            &["lb.toml:4:8", "[health] fall", "0"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[health]\nrise = 0\n",
            &["lb.toml:4:8", "[health] rise"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[health]\ninterval = \"1x\"\n",
            &["lb.toml:4:12", "[health] interval", "\"1x\"", "250ms"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[timeouts]\nconnect = 5\n",
            &["lb.toml:4:11", "connect"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\", \"10.0.0.11:8000\"]\n",
            &["lb.toml:2:31", "listed twice"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [{ addr = \"10.0.0.1:80\", wieght = 2 }]\n",
            &["lb.toml:2", "wieght"],
        ),
        (
            "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n[compression]\nencodings = [\"lz4\"]\n",
            &["lb.toml:4:14", "lz4", "gzip, br, zstd"],
        ),
        ("backends = [\"10.0.0.11:8000\"]\n", &["lb.toml", "listen"]),
        ("listen = \"127.0.0.1:8080\"\nbackends = [\n", &["lb.toml:"]),
    ];
    for (text, wants) in table {
        let e = parse(text).expect_err(text);
        for want in *wants {
            assert!(e.contains(want), "error for {text:?}\n{e}\nlacks {want:?}");
        }
    }
}

#[test]
fn an_unreadable_file_names_the_path() {
    let e = Config::load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/lb.toml: cannot read config"),
        "{e}"
    );
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 3), (2, 1));
}

#[test]
fn resilience_keys_default_to_the_contract() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.balance.slow_start, Duration::ZERO);
    assert_eq!(c.balance.retry_budget, 0.2);
    assert_eq!(
        c.outlier,
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    );
    assert!(c.outlier.ejects());
}

#[test]
fn resilience_keys_parse() {
    let c = parse(&format!(
        "{MINIMAL}[balance]\nslow_start = \"30s\"\nretry_budget = 0.5\n\
         [outlier]\nconsecutive_failures = 3\nbase_ejection = \"250ms\"\nmax_ejected_percent = 100\n"
    ))
    .unwrap();
    assert_eq!(c.balance.slow_start, Duration::from_secs(30));
    assert_eq!(c.balance.retry_budget, 0.5);
    assert_eq!(c.outlier.consecutive_failures, 3);
    assert_eq!(c.outlier.base_ejection, Duration::from_millis(250));
    assert_eq!(c.outlier.max_ejected_percent, 100);

    // Integers are numbers too; "0s" and 0 mean off.
    let c = parse(&format!(
        "{MINIMAL}[balance]\nslow_start = \"0s\"\nretry_budget = 1\n\
         [outlier]\nconsecutive_failures = 0\nbase_ejection = \"5m\"\n"
    ))
    .unwrap();
    assert_eq!(c.balance.retry_budget, 1.0);
    assert_eq!(c.balance.slow_start, Duration::ZERO);
    assert!(!c.outlier.ejects());
    assert_eq!(c.outlier.base_ejection, MAX_EJECTION);
    let c = parse(&format!("{MINIMAL}[outlier]\nmax_ejected_percent = 0\n")).unwrap();
    assert!(!c.outlier.ejects());
    // The longest slow start is a week, as for every duration (the ramp
    // divides by it and never multiplies, but nothing needs longer).
    let c = parse(&format!("{MINIMAL}[balance]\nslow_start = \"7d\"\n")).unwrap();
    assert_eq!(c.balance.slow_start, MAX_DURATION);
    assert!(c.summary().contains("slow start"), "{}", c.summary());
    assert!(parse(&format!("{MINIMAL}[balance]\nslow_start = \"100years\"\n")).is_err());
}

#[test]
fn resilience_errors_name_the_key_and_the_valid_range() {
    let table: &[(&str, &[&str])] = &[
        (
            "[balance]\nslow_start = \"soon\"\n",
            &["lb.toml:4:14", "[balance] slow_start", "\"soon\"", "250ms"],
        ),
        (
            "[balance]\nslow_start = 5\n",
            &["lb.toml:4:14", "slow_start"],
        ),
        (
            "[balance]\nretry_budget = 1.5\n",
            &["lb.toml:4:16", "[balance] retry_budget", "1.5", "0.0..1.0"],
        ),
        (
            "[balance]\nretry_budget = -0.1\n",
            &["lb.toml:4:16", "[balance] retry_budget", "0.0..1.0"],
        ),
        (
            "[balance]\nretry_budget = nan\n",
            &["lb.toml:4:16", "[balance] retry_budget"],
        ),
        (
            "[balance]\nretry_budget = \"20%\"\n",
            &["lb.toml:4:16", "a number such as 0.2"],
        ),
        (
            "[outlier]\nconsecutive_failures = -1\n",
            &["lb.toml:4:24", "[outlier] consecutive_failures", "0..1000"],
        ),
        (
            "[outlier]\nbase_ejection = \"0s\"\n",
            &[
                "lb.toml:4:17",
                "[outlier] base_ejection",
                "longer than zero",
                "5m",
            ],
        ),
        (
            "[outlier]\nbase_ejection = \"6m\"\n",
            &[
                "lb.toml:4:17",
                "[outlier] base_ejection",
                "\"6m\"",
                "at most \"5m\"",
            ],
        ),
        (
            "[outlier]\nbase_ejection = \"99999999999999999999y\"\n",
            &["lb.toml:4:17", "[outlier] base_ejection", "not a duration"],
        ),
        (
            "[outlier]\nmax_ejected_percent = 101\n",
            &[
                "lb.toml:4:23",
                "[outlier] max_ejected_percent",
                "101",
                "0..100",
            ],
        ),
        (
            "[outlier]\nmax_ejection_percent = 10\n",
            &["lb.toml:4:1", "max_ejection_percent"],
        ),
    ];
    for (tail, wants) in table {
        let text = format!("{MINIMAL}{tail}");
        let e = parse(&text).expect_err(&text);
        for want in *wants {
            assert!(e.contains(want), "error for {text:?}\n{e}\nlacks {want:?}");
        }
    }
}

#[test]
fn max_conns_per_backend_defaults_to_no_cap_and_parses() {
    assert_eq!(parse(MINIMAL).unwrap().limits.max_conns_per_backend, 0);
    let c = parse(&format!("{MINIMAL}[limits]\nmax_conns_per_backend = 64\n")).unwrap();
    assert_eq!(c.limits.max_conns_per_backend, 64);
    for (tail, wants) in [
        (
            "[limits]\nmax_conns_per_backend = -1\n",
            &[
                "lb.toml:4:25",
                "[limits] max_conns_per_backend",
                "-1",
                "0..1000000",
            ][..],
        ),
        (
            "[limits]\nmax_conns_per_backend = \"many\"\n",
            &["lb.toml:4", "max_conns_per_backend"][..],
        ),
    ] {
        let text = format!("{MINIMAL}{tail}");
        let e = parse(&text).expect_err(&text);
        for want in wants {
            assert!(e.contains(want), "error for {text:?}\n{e}\nlacks {want:?}");
        }
    }
}

#[test]
fn the_check_summary_prints_every_effective_setting() {
    let c = parse(&format!(
        "{MINIMAL}[agent]\ninterval = \"250ms\"\n[timeouts]\nconnect = \"2s\"\nrequest = \"45s\"\n\
         [compression]\nlevel = 3\ntypes = [\"text/*\"]\n"
    ))
    .unwrap();
    let s = c.summary();
    for want in [
        "retries 2",
        "agent polls every 250ms, timeout 500ms (default agent port 9100)",
        "timeouts: connect 2s, request 45s, idle 1m, header 10s, drain 10s",
        "client_body 30s, send 1m, tunnel 1h",
        "compression gzip level 3, min_size 1024, types text/*",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    // gzip off and nothing else: compression is off, not "[] level 6".
    let c = parse(&format!("{MINIMAL}[compression]\ngzip = false\n")).unwrap();
    assert!(c.summary().ends_with("compression off"), "{}", c.summary());
}

#[test]
fn each_strategy_is_named_once_and_parses_back() {
    for (i, (strategy, name)) in Strategy::ALL.into_iter().enumerate() {
        assert_eq!(strategy as usize, i, "ALL is in the enum's order");
        assert_eq!(strategy.name(), name);
        assert_eq!(name.parse::<Strategy>(), Ok(strategy));
    }
    assert_eq!("fastest".parse::<Strategy>(), Err(()));
    assert_eq!(
        Strategy::NAMES.to_string(),
        "least-loaded, round-robin, least-connections, random"
    );
}
