//! The agent's wire format: one JSON object per `GET /load`.
//!
//! Defined once here and used by both the agent (which serializes it) and the
//! balancer (which deserializes and validates it), so the two cannot drift.

use serde::{Deserialize, Serialize};

/// One load report about the host (or the cgroup) the agent runs in.
///
/// `cpu` and `memory` are required; every other field is optional on the
/// wire so that a balancer accepts reports from older or leaner agents, and
/// unknown fields are ignored so that newer agents can add fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Fraction (0.0..=1.0) of the CPU available to the host or cgroup that
    /// was busy over the last sampling window.
    pub cpu: f64,
    /// Fraction (0.0..=1.0) of the memory available to the host or cgroup
    /// that is in use.
    pub memory: f64,
    /// CPUs available: the host's count, or the cgroup quota rounded up.
    #[serde(default)]
    pub cores: u32,
    /// CPUs available as a fraction where a quota gives one (a quota of a
    /// quarter core is `0.25`, where `cores` says 1); the host's count
    /// otherwise. This is what the balancer weighs a host's capacity by
    /// (`0`: not reported, as from older agents; `cores` stands in).
    #[serde(default)]
    pub cpus: f64,
    /// The host's one-minute load average (not cgroup-aware; informative).
    #[serde(default)]
    pub load1: f64,
    /// Memory available: the host's total, or the cgroup limit.
    #[serde(default)]
    pub mem_total_bytes: u64,
    /// Memory in use, in the same scope as `mem_total_bytes`.
    #[serde(default)]
    pub mem_used_bytes: u64,
}

/// Why a report was rejected by [`LoadReport::parse`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    /// Not JSON, or `cpu`/`memory` missing or not numbers.
    #[error("not a load report: {0}")]
    Malformed(String),
    /// `cpu` or `memory` outside 0..=1 (or NaN).
    #[error("{field} = {value} is outside 0..1")]
    OutOfRange {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

impl LoadReport {
    /// The CPUs this host has to serve with: `cpus` when reported and
    /// sane, else `cores`, else 1.
    pub fn capacity(&self) -> f64 {
        if self.cpus.is_finite() && self.cpus > 0.0 {
            self.cpus.min(4096.0)
        } else {
            f64::from(self.cores.clamp(1, 4096))
        }
    }

    /// Parses and validates a report as the balancer must: a body that is not
    /// JSON, lacks `cpu` or `memory`, or has them outside 0..1 is an error.
    pub fn parse(body: &[u8]) -> Result<Self, ReportError> {
        let report: LoadReport =
            serde_json::from_slice(body).map_err(|e| ReportError::Malformed(e.to_string()))?;
        for (field, value) in [("cpu", report.cpu), ("memory", report.memory)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ReportError::OutOfRange { field, value });
            }
        }
        Ok(report)
    }
}

/// The longest host name kept (a DNS name is at most 253 bytes).
pub const MAX_HOSTNAME: usize = 253;

/// The report on the wire: the [`LoadReport`] and the host's name beside
/// it, so an operator sees which host an address is. Kept apart from
/// [`LoadReport`], which is `Copy` and is what the balancer ranks by.
#[derive(Debug, Serialize)]
pub struct Wire<'a> {
    /// The load.
    #[serde(flatten)]
    pub report: &'a LoadReport,
    /// The host's name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<&'a str>,
}

/// The `hostname` of a report's body, if it has a usable one (a string
/// of printable characters, cut to [`MAX_HOSTNAME`] bytes); anything else
/// is ignored, never an error: the field is informative.
pub fn hostname(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        hostname: Option<String>,
    }
    let name = serde_json::from_slice::<Named>(body).ok()?.hostname?;
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= MAX_HOSTNAME).then_some(c)
        })
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let r = LoadReport::parse(
            br#"{"cpu": 0.42, "memory": 0.63, "cores": 2, "load1": 0.80,
                 "mem_total_bytes": 25000000000, "mem_used_bytes": 15750000000}"#,
        )
        .unwrap();
        assert_eq!(r.cpu, 0.42);
        assert_eq!(r.memory, 0.63);
        assert_eq!(r.cores, 2);
        assert_eq!(r.mem_total_bytes, 25_000_000_000);
    }

    #[test]
    fn ignores_unknown_fields_and_defaults_optional_ones() {
        let r = LoadReport::parse(br#"{"cpu": 0, "memory": 1, "disk": 0.5}"#).unwrap();
        assert_eq!((r.cpu, r.memory, r.cores, r.cpus), (0.0, 1.0, 0, 0.0));
    }

    #[test]
    fn rejects_what_the_contract_calls_a_failed_poll() {
        for body in [
            &b"not json"[..],
            br#"{"memory": 0.5}"#,
            br#"{"cpu": 0.5}"#,
            br#"{"cpu": "0.5", "memory": 0.5}"#,
            br#"{"cpu": 1.5, "memory": 0.5}"#,
            br#"{"cpu": 0.5, "memory": -0.1}"#,
            b"",
        ] {
            assert!(
                LoadReport::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_hostname_travels_beside_the_report() {
        let r = LoadReport::parse(br#"{"cpu": 0.5, "memory": 0.5}"#).unwrap();
        let body = serde_json::to_vec(&Wire {
            report: &r,
            hostname: Some("host-1"),
        })
        .unwrap();
        assert_eq!(LoadReport::parse(&body).unwrap(), r);
        assert_eq!(hostname(&body).as_deref(), Some("host-1"));
        let none = serde_json::to_vec(&Wire {
            report: &r,
            hostname: None,
        })
        .unwrap();
        assert_eq!(hostname(&none), None);
    }

    #[test]
    fn odd_hostnames_are_cleaned_or_ignored() {
        assert_eq!(hostname(br#"{"hostname": 5}"#), None);
        assert_eq!(hostname(br#"{"hostname": ""}"#), None);
        assert_eq!(hostname(b"nonsense"), None);
        assert_eq!(hostname(br#"{"hostname": "a\nb"}"#).as_deref(), Some("ab"));
        let long = format!(r#"{{"hostname": "{}"}}"#, "x".repeat(1000));
        assert_eq!(hostname(long.as_bytes()).unwrap().len(), MAX_HOSTNAME);
    }
}
