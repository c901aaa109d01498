//! How an [`Entry`] is written: Apache/nginx `combined` with the
//! balancer's fields appended as `key=value`, or one JSON object.
//!
//! ```text
//! 192.0.2.7 - - [02/Dec/2026:07:11:14 +0000] "GET /api?x=1 HTTP/1.1" 200 512 "-" "curl/8.5.0" rt=0.003 bt=0.002 backend=10.0.0.11:8000 retries=0 why=least-loaded
//! ```

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Version};
use serde::Serialize;

use super::Entry;
use crate::config::Format;

/// Appends `entry` as one line (with its `\n`) to `out`.
pub fn write_line(entry: &Entry, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::Combined => combined(entry, out),
        Format::Json => json(entry, out),
    }
    out.push(b'\n');
}

fn combined(e: &Entry, out: &mut Vec<u8>) {
    let t = Civil::of(e.time);
    let _ = write!(
        out,
        "{} - - [{:02}/{}/{}:{:02}:{:02}:{:02} +0000] \"{} ",
        e.client.ip().to_canonical(),
        t.day,
        MONTHS[t.month as usize - 1],
        t.year,
        t.hour,
        t.minute,
        t.second,
        e.method
    );
    escaped(target(e).as_bytes(), out);
    let _ = write!(
        out,
        " {}\" {} {} \"",
        protocol(e.version),
        e.status.as_u16(),
        e.bytes
    );
    quoted_header(e.referer.as_ref(), out);
    out.extend_from_slice(b"\" \"");
    quoted_header(e.user_agent.as_ref(), out);
    let _ = write!(out, "\" rt={:.3} bt=", e.total.as_secs_f64());
    match e.backend_time {
        Some(bt) => _ = write!(out, "{:.3}", bt.as_secs_f64()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" backend=");
    match e.backend {
        Some(b) => _ = write!(out, "{b}"),
        None => out.push(b'-'),
    }
    let _ = write!(out, " retries={} why={}", e.retries(), e.why.tag());
}

/// `-` for a missing header, as Apache and nginx write it.
fn quoted_header(v: Option<&HeaderValue>, out: &mut Vec<u8>) {
    match v {
        Some(v) => escaped(v.as_bytes(), out),
        None => out.push(b'-'),
    }
}

/// nginx's escaping inside a quoted field: `"`, `\`, control characters
/// and bytes beyond ASCII as `\xHH`, so a line is always one line and its
/// quotes always pair.
fn escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    client_port: u16,
    method: &'a str,
    target: &'a str,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    request_time: f64,
    backend_time: Option<f64>,
    backend: Option<String>,
    retries: u32,
    why: String,
    referer: Option<std::borrow::Cow<'a, str>>,
    user_agent: Option<std::borrow::Cow<'a, str>>,
}

fn json(e: &Entry, out: &mut Vec<u8>) {
    let t = Civil::of(e.time);
    let line = JsonLine {
        time: format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
        ),
        client: e.client.ip().to_canonical().to_string(),
        client_port: e.client.port(),
        method: e.method.as_str(),
        target: target(e),
        protocol: protocol(e.version),
        status: e.status.as_u16(),
        bytes: e.bytes,
        request_time: e.total.as_secs_f64(),
        backend_time: e.backend_time.map(|d| d.as_secs_f64()),
        backend: e.backend.map(|b| b.to_string()),
        retries: e.retries(),
        why: e.why.tag(),
        referer: e
            .referer
            .as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes())),
        user_agent: e
            .user_agent
            .as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes())),
    };
    // Serializing plain fields into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &line);
}

/// Path and query, whatever form the client sent the target in.
fn target(e: &Entry) -> &str {
    e.target
        .path_and_query()
        .map_or_else(|| e.target.path(), |p| p.as_str())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Civil {
    /// `t` in UTC (Howard Hinnant's `civil_from_days`); times before 1970
    /// read as 1970.
    fn of(t: SystemTime) -> Civil {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let days = (secs / 86_400) as i64;
        let rem = (secs % 86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            millis: since.subsec_millis(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_time_matches_known_dates() {
        for (secs, want) in [
            (0, (1970, 1, 1, 0, 0, 0)),
            (951_782_400, (2000, 2, 29, 0, 0, 0)),
            (1_700_000_000, (2023, 11, 14, 22, 13, 20)),
            (4_102_444_799, (2099, 12, 31, 23, 59, 59)),
        ] {
            let c = Civil::of(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(
                (c.year, c.month, c.day, c.hour, c.minute, c.second),
                want,
                "{secs}"
            );
        }
    }

    #[test]
    fn quoted_fields_cannot_break_the_line() {
        let mut out = Vec::new();
        escaped(b"a\"b\\c\nd\xffe", &mut out);
        assert_eq!(out, b"a\\x22b\\x5Cc\\x0Ad\\xFFe");
    }
}
