//! The pure parts of registration: flags, the body, the answer.

use super::*;

#[test]
fn admin_urls_are_http_bases() {
    for (given, want) in [
        ("http://10.0.0.1:9000", "http://10.0.0.1:9000"),
        ("http://10.0.0.1:9000/", "http://10.0.0.1:9000"),
        ("HTTP://lb.internal", "http://lb.internal"),
        ("http://[::1]:9000/admin/", "http://[::1]:9000/admin"),
    ] {
        let url: AdminUrl = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
        assert_eq!(url.to_string(), want, "{given}");
    }
    for (given, says) in [
        ("https://10.0.0.1:9000", "only http://"),
        ("ftp://10.0.0.1", "only http://"),
        ("10.0.0.1:9000", "not a URL"),
        ("", "not a URL"),
        ("http://", "not a URL"),
        ("http://user:pw@10.0.0.1:9000", "--token-file"),
        ("http://10.0.0.1:9000/?x=1", "no query"),
        ("http://10.0.0.1:9000/#top", "no query"),
    ] {
        let err = given.parse::<AdminUrl>().expect_err(given).to_string();
        assert!(err.contains(says), "{given}: {err}");
    }
}

#[test]
fn advertised_addresses_must_be_reachable() {
    assert_eq!(
        reachable_addr("10.0.0.11:8000"),
        Ok("10.0.0.11:8000".parse().unwrap())
    );
    for bad in [
        "0.0.0.0:8000",
        "[::]:8000",
        "10.0.0.11:0",
        "10.0.0.11",
        "host:80",
    ] {
        assert!(reachable_addr(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_agent_address_is_the_listen_ip_or_the_advertised_one() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    let advertise = a("10.0.0.11:8000");
    assert_eq!(
        agent_addr(a("0.0.0.0:9100"), advertise),
        a("10.0.0.11:9100")
    );
    assert_eq!(agent_addr(a("[::]:9100"), advertise), a("10.0.0.11:9100"));
    assert_eq!(
        agent_addr(a("10.0.1.5:9200"), advertise),
        a("10.0.1.5:9200")
    );
}

fn registration(addr: &str, weight: Option<u32>, pool: Option<&str>) -> Registration {
    let token = Token(HeaderValue::from_static("Bearer t"));
    Registration::new(
        "http://10.0.0.1:9000/x/".parse().unwrap(),
        addr.parse().unwrap(),
        "10.0.0.11:9100".parse().unwrap(),
        weight,
        pool,
        token,
    )
}

#[test]
fn the_body_leaves_out_what_was_not_given() {
    let full = registration("10.0.0.11:8000", Some(3), Some("api"));
    let json: serde_json::Value = serde_json::from_slice(full.body()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"addr": "10.0.0.11:8000", "agent": "10.0.0.11:9100", "weight": 3, "pool": "api"})
    );
    let bare = registration("10.0.0.11:8000", None, None);
    let json: serde_json::Value = serde_json::from_slice(bare.body()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"addr": "10.0.0.11:8000", "agent": "10.0.0.11:9100"})
    );
    assert_eq!(full.register, "http://10.0.0.1:9000/x/backends");
    assert_eq!(
        full.withdraw,
        "http://10.0.0.1:9000/x/backends/10.0.0.11:8000"
    );
    let v6 = registration("[fd00::11]:8000", None, None);
    assert_eq!(
        v6.withdraw,
        "http://10.0.0.1:9000/x/backends/%5Bfd00::11%5D:8000"
    );
}

#[test]
fn answers_give_the_period_clamped_or_the_default() {
    let ok = StatusCode::OK;
    let period = |body: &str| Answer::parse(ok, body.as_bytes()).period;
    let ms = Duration::from_millis;
    assert_eq!(period(r#"{"heartbeat_ms": 750}"#), ms(750));
    assert_eq!(period(r#"{"heartbeat_ms": 1}"#), ms(100));
    assert_eq!(period(r#"{"heartbeat_ms": 3600000}"#), ms(60_000));
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"heartbeat_ms": "2s"}"#,
        r#"{"heartbeat_ms": -5}"#,
    ] {
        assert_eq!(period(bad), DEFAULT_HEARTBEAT, "{bad:?}");
    }
    let answer = Answer::parse(StatusCode::CREATED, br#"{"addr":"a","pool":"api"}"#);
    assert!(answer.created);
    assert_eq!(answer.pool.as_deref(), Some("api"));
    assert!(!Answer::parse(ok, b"{}").created);
}

#[test]
fn refusals_are_logged_as_one_bounded_line_with_a_hint() {
    let body = format!(
        "unauthorized: wrong bearer token\nsecond line\n{}",
        "x".repeat(500)
    );
    let failure = Failure::Status(StatusCode::UNAUTHORIZED, line(body.as_bytes()));
    let text = failure.to_string();
    assert!(
        text.contains("401 Unauthorized: unauthorized: wrong bearer token (wrong token"),
        "{text}"
    );
    assert!(!text.contains("second line"), "{text}");
    assert!(line("y".repeat(1000).as_bytes()).len() <= 200);
    assert_eq!(failure.kind(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(Failure::Unreachable("refused".into()).kind(), None);
}

#[test]
fn the_token_is_read_like_the_balancers_and_never_shown() {
    let dir = std::env::temp_dir().join(format!("agent-register-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, "0123456789abcdef-token\n").unwrap();
    let token = Token::read(&good).unwrap();
    assert_eq!(token.0, "Bearer 0123456789abcdef-token");
    assert_eq!(format!("{token:?}"), "Token(..)");
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = Token::read(&empty).unwrap_err().to_string();
    assert!(
        err.contains(&empty.display().to_string()) && err.contains("0 bytes"),
        "{err}"
    );
    let control = dir.join("control");
    std::fs::write(&control, "0123456789abcdef\u{1}x\n").unwrap();
    let err = Token::read(&control).unwrap_err().to_string();
    assert!(err.contains("header"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
