//! The `[limits]` keys against hostile clients (connections, request rate,
//! request body size) and the client-side `[timeouts]` (`client_body`,
//! `send`, `tunnel`): their typed form and validation. The machinery that
//! enforces them is `crate::limits`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::raw::{RawLimits, RawTimeouts};
use super::{duration, err, int_in, Check, Limits};

/// `[limits] rate_per_ip` and `burst_per_ip`, ready for the token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePerIp {
    /// Requests per second one client address may make, on average.
    pub per_second: f64,
    /// Requests it may make at once (the bucket's size).
    pub burst: u32,
    /// Time per request at the rate: `1 / per_second`.
    pub interval: Duration,
    /// How far ahead of now a client's bucket may be drawn: the burst
    /// less one request (GCRA's tolerance).
    pub tolerance: Duration,
}

impl RatePerIp {
    /// A rate of `per_second` (> 0) with a bucket of `burst` (≥ 1).
    pub fn new(per_second: f64, burst: u32) -> RatePerIp {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        RatePerIp {
            per_second,
            burst,
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
        }
    }
}

/// Lowest and highest `rate_per_ip` (one request per 1,000 s; a million a
/// second).
const RATE_RANGE: (f64, f64) = (0.001, 1_000_000.0);

/// `[limits]`.
pub(super) fn limits(raw: &RawLimits) -> Check<Limits> {
    let max_connections = int_in(
        &raw.max_connections,
        "[limits] max_connections",
        10_000,
        0..=10_000_000,
    )? as u32;
    let max_connections_per_ip = int_in(
        &raw.max_connections_per_ip,
        "[limits] max_connections_per_ip",
        0,
        0..=10_000_000,
    )? as u32;
    let rate_per_ip = rate(raw)?;
    let max_request_body = match &raw.max_request_body {
        None => 0,
        Some(s) => match &s.get_ref().0 {
            Ok(bytes) => *bytes,
            Err(why) => return err(s.span(), format!("[limits] max_request_body: {why}")),
        },
    };
    Ok(Limits {
        max_conns_per_backend: int_in(
            &raw.max_conns_per_backend,
            "[limits] max_conns_per_backend",
            0,
            0..=1_000_000,
        )? as u32,
        max_connections,
        max_connections_per_ip,
        rate_per_ip,
        max_request_body,
    })
}

fn rate(raw: &RawLimits) -> Check<Option<RatePerIp>> {
    let per_second = match &raw.rate_per_ip {
        None => 0.0,
        Some(v) => {
            let r = v.get_ref().0;
            if r != 0.0 && !(RATE_RANGE.0..=RATE_RANGE.1).contains(&r) {
                return err(
                    v.span(),
                    format!(
                        "[limits] rate_per_ip: {r} is out of range; valid: 0 (no limit) or {}..{} requests per second",
                        RATE_RANGE.0, RATE_RANGE.1
                    ),
                );
            }
            r
        }
    };
    let burst = int_in(&raw.burst_per_ip, "[limits] burst_per_ip", 0, 0..=1_000_000)? as u32;
    if per_second == 0.0 {
        return match &raw.burst_per_ip {
            Some(b) if burst > 0 => err(
                b.span(),
                "[limits] burst_per_ip: set rate_per_ip too; a bucket without a rate limits nothing"
                    .into(),
            ),
            _ => Ok(None),
        };
    }
    // 0: the rate's worth of one second, at least one request.
    let burst = if burst == 0 {
        per_second.ceil().max(1.0) as u32
    } else {
        burst
    };
    Ok(Some(RatePerIp::new(per_second, burst)))
}

/// `[timeouts] client_body`, `send` and `tunnel`.
pub(super) fn client_timeouts(raw: &RawTimeouts) -> Check<(Duration, Duration, Duration)> {
    Ok((
        duration(&raw.client_body, "[timeouts] client_body", "30s")?,
        duration(&raw.send, "[timeouts] send", "60s")?,
        duration(&raw.tunnel, "[timeouts] tunnel", "1h")?,
    ))
}

/// `max_request_body` as written: a string such as `"10MiB"` or a bare
/// integer, parsed to bytes when read (the error waits for its span).
pub(super) struct RawSize(pub(super) Result<u64, String>);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size in bytes such as "10MiB", "512KiB" or "1000""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize(
                    u64::try_from(v).map_err(|_| format!("{v} is negative; {SIZE_FORMS}")),
                ))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize(Ok(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize(parse_size(v)))
            }
        }
        d.deserialize_any(V)
    }
}

const SIZE_FORMS: &str = r#"write bytes as a whole number with an optional unit: "1000", "512KiB", "10MiB", "1GiB" (KiB/MiB/GiB and K/M/G: powers of 1024; KB/MB/GB: of 1000); "0": no limit"#;

/// `"10MiB"`, `"512 KiB"`, `"1000"`, `"2MB"`, `"10m"` → bytes.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let bad = || format!("{text:?} is not a size; {SIZE_FORMS}");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large; {SIZE_FORMS}"))
}

impl Default for Limits {
    /// The contract's defaults: `max_connections = 10000`, everything else
    /// off.
    fn default() -> Limits {
        Limits {
            max_conns_per_backend: 0,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            rate_per_ip: None,
            max_request_body: 0,
        }
    }
}

impl super::Config {
    /// One line of the `--check` summary: the client limits and timeouts.
    pub(super) fn limits_summary(&self) -> String {
        let l = &self.limits;
        let off = |n: u64, what: &str| match n {
            0 => format!("no {what}"),
            n => format!("{what} {n}"),
        };
        let rate = match &l.rate_per_ip {
            None => "no rate limit".to_owned(),
            Some(r) => format!("{}/s per IP (burst {})", r.per_second, r.burst),
        };
        let t = &self.timeouts;
        format!(
            "limits: {}, {}, {rate}, {}; client_body {}, send {}, tunnel {}",
            off(l.max_connections.into(), "max_connections"),
            off(l.max_connections_per_ip.into(), "max_connections_per_ip"),
            off(l.max_request_body, "max_request_body"),
            humantime::format_duration(t.client_body),
            humantime::format_duration(t.send),
            humantime::format_duration(t.tunnel),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!("listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n{extra}");
        Config::parse(&text, std::path::Path::new("lb.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn limits_and_client_timeouts_default_to_the_contract() {
        let c = parse("").unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, 0);
        assert_eq!(c.limits.rate_per_ip, None);
        assert_eq!(c.limits.max_request_body, 0);
        assert_eq!(c.timeouts.client_body, Duration::from_secs(30));
        assert_eq!(c.timeouts.send, Duration::from_secs(60));
        assert_eq!(c.timeouts.tunnel, Duration::from_secs(3600));
        // The contract's example, every key at its default, says the same.
        let c2 = parse(
            "[limits]\nmax_connections = 10000\nmax_connections_per_ip = 0\nrate_per_ip = 0\n\
             burst_per_ip = 0\nmax_request_body = \"0\"\nmax_conns_per_backend = 0\n\
             [timeouts]\nclient_body = \"30s\"\nsend = \"60s\"\ntunnel = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(c2, c);
        assert!(
            c.summary().contains("max_connections 10000"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn every_limit_key_parses() {
        let c = parse(
            "[limits]\nmax_connections = 0\nmax_connections_per_ip = 20\nrate_per_ip = 2.5\n\
             burst_per_ip = 10\nmax_request_body = \"10MiB\"\n\
             [timeouts]\nclient_body = \"5s\"\nsend = \"2m\"\ntunnel = \"10m\"\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 0);
        assert_eq!(c.limits.max_connections_per_ip, 20);
        assert_eq!(c.limits.rate_per_ip, Some(RatePerIp::new(2.5, 10)));
        assert_eq!(c.limits.max_request_body, 10 << 20);
        assert_eq!(c.timeouts.client_body, Duration::from_secs(5));
        assert_eq!(c.timeouts.send, Duration::from_secs(120));
        assert_eq!(c.timeouts.tunnel, Duration::from_secs(600));
        // An integer size, and a burst defaulting to a second's worth.
        let c = parse("[limits]\nmax_request_body = 1000\nrate_per_ip = 2.5\n").unwrap();
        assert_eq!(c.limits.max_request_body, 1000);
        assert_eq!(c.limits.rate_per_ip.unwrap().burst, 3);
        let c = parse("[limits]\nrate_per_ip = 0.1\n").unwrap();
        assert_eq!(c.limits.rate_per_ip.unwrap().burst, 1);
    }

    #[test]
    fn limit_errors_name_the_line_the_key_and_the_valid_values() {
        for (extra, line, needle) in [
            (
                "[limits]\nmax_connections = -1\n",
                4,
                "max_connections: -1 is out of range",
            ),
            (
                "[limits]\nmax_connections_per_ip = 1.5\n",
                4,
                "invalid type",
            ),
            (
                "[limits]\nrate_per_ip = -2\n",
                4,
                "rate_per_ip: -2 is out of range; valid: 0",
            ),
            ("[limits]\nrate_per_ip = 1e9\n", 4, "rate_per_ip"),
            (
                "[limits]\nburst_per_ip = 5\n",
                4,
                "burst_per_ip: set rate_per_ip too",
            ),
            (
                "[limits]\nmax_request_body = \"10 apples\"\n",
                4,
                "max_request_body: \"10 apples\" is not a size",
            ),
            (
                "[limits]\nmax_request_body = -5\n",
                4,
                "max_request_body: -5 is negative",
            ),
            ("[limits]\nmax_request_body = true\n", 4, "a size in bytes"),
            ("[limits]\nmax_conections = 5\n", 4, "unknown field"),
            (
                "[timeouts]\nsend = \"0s\"\n",
                4,
                "[timeouts] send: \"0s\" is out of range; valid: longer than zero",
            ),
            (
                "[timeouts]\nclient_body = \"soon\"\n",
                4,
                "[timeouts] client_body: \"soon\" is not a duration",
            ),
            ("[timeouts]\ntunnel = 5\n", 4, "invalid type"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
            assert!(e.starts_with(&format!("lb.toml:{line}:")), "{extra}: {e}");
        }
    }

    #[test]
    fn sizes_parse_with_their_units() {
        for (text, bytes) in [
            ("0", 0),
            ("1000", 1000),
            ("10MiB", 10 << 20),
            ("512KiB", 512 << 10),
            ("512 KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("10m", 10 << 20),
            ("2MB", 2_000_000),
            ("3kb", 3000),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "10 apples",
            "99999999999999999999",
            "20000000000GiB",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("KiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_burst_defaults_to_a_seconds_worth_of_the_rate() {
        let r = RatePerIp::new(0.5, 1);
        assert_eq!(r.interval, Duration::from_secs(2));
        assert_eq!(r.tolerance, Duration::ZERO);
        let r = RatePerIp::new(100.0, 200);
        assert_eq!(r.interval, Duration::from_millis(10));
        assert_eq!(r.tolerance, Duration::from_millis(1990));
    }
}
