//! The resilience keys of `lb.toml`: `[balance] slow_start` and
//! `retry_budget`, and the `[outlier]` table (passive ejection). Their typed
//! form and their validation, apart from the rest of the file's keys.

use std::time::Duration;

use toml::Spanned;

use super::raw::{RawBalance, RawOutlier};
use super::{err, int_in, Check, MAX_DURATION, MAX_DURATION_TEXT};

/// The longest an ejection lasts, whatever the multiplier (the contract's
/// "at most 5 minutes", Envoy's `max_ejection_time` default).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// `[outlier]`: passive ejection of backends that fail live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row (5xx, resets, protocol errors, timeouts, connect
    /// failures) that eject a backend; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th in a row lasts n times this,
    /// at most [`MAX_EJECTION`].
    pub base_ejection: Duration,
    /// The largest share of the pool, in percent, that may be out (down or
    /// ejected) after an ejection; beyond it the pool is in panic mode.
    pub max_ejected_percent: u32,
}

impl Outlier {
    /// Whether ejection can happen at all: with no threshold or no share of
    /// the pool that may be ejected, nothing ever is (and there is no panic
    /// mode to speak of).
    pub fn ejects(&self) -> bool {
        self.consecutive_failures > 0 && self.max_ejected_percent > 0
    }
}

/// `[balance] slow_start` and `retry_budget`.
pub(super) fn balance(raw: &RawBalance) -> Check<(Duration, f64)> {
    let slow_start = duration_or_off(&raw.slow_start, "[balance] slow_start")?;
    let retry_budget = match &raw.retry_budget {
        None => 0.2,
        Some(v) if (0.0..=1.0).contains(&v.get_ref().0) => v.get_ref().0,
        Some(v) => {
            return err(
                v.span(),
                format!(
                    "[balance] retry_budget: {} is out of range; valid: 0.0..1.0 (a share of requests, such as 0.2)",
                    v.get_ref().0
                ),
            )
        }
    };
    Ok((slow_start, retry_budget))
}

/// `[outlier]`.
pub(super) fn outlier(raw: &RawOutlier) -> Check<Outlier> {
    let consecutive_failures = int_in(
        &raw.consecutive_failures,
        "[outlier] consecutive_failures",
        5,
        0..=1000,
    )? as u32;
    let base_ejection = match &raw.base_ejection {
        None => Duration::from_secs(10),
        Some(s) => match duration_or_off(&Some(s.clone()), "[outlier] base_ejection")? {
            d if !d.is_zero() && d <= MAX_EJECTION => d,
            _ => {
                return err(
                    s.span(),
                    format!(
                        "[outlier] base_ejection: {:?} is out of range; valid: longer than zero, at most \"5m\" (no ejection lasts longer)",
                        s.get_ref()
                    ),
                )
            }
        },
    };
    let max_ejected_percent = int_in(
        &raw.max_ejected_percent,
        "[outlier] max_ejected_percent",
        50,
        0..=100,
    )? as u32;
    Ok(Outlier {
        consecutive_failures,
        base_ejection,
        max_ejected_percent,
    })
}

/// A duration where `"0s"` is allowed (and means off); absent is zero.
fn duration_or_off(s: &Option<Spanned<String>>, key: &str) -> Check<Duration> {
    let Some(s) = s else {
        return Ok(Duration::ZERO);
    };
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => err(
            s.span(),
            format!(
                "{key}: {:?} is out of range; valid: \"0s\" (off), or longer, at most \"{MAX_DURATION_TEXT}\"",
                s.get_ref()
            ),
        ),
        Err(_) => err(
            s.span(),
            format!(
                "{key}: {:?} is not a duration; write a number with a unit, such as \"0s\", \"250ms\" or \"30s\"",
                s.get_ref()
            ),
        ),
    }
}

impl super::Config {
    /// One line of the `--check` summary: ejection, slow start, retry budget.
    pub(super) fn resilience_summary(&self) -> String {
        let o = &self.outlier;
        let outlier = if o.ejects() {
            format!(
                "outlier ejection after {} failures in a row for {} x n (at most 5m), at most {}% of the pool",
                o.consecutive_failures,
                humantime::format_duration(o.base_ejection),
                o.max_ejected_percent
            )
        } else {
            "outlier ejection off".to_owned()
        };
        let slow = if self.balance.slow_start.is_zero() {
            "slow start off".to_owned()
        } else {
            format!(
                "slow start {}",
                humantime::format_duration(self.balance.slow_start)
            )
        };
        let conns = match self.limits.max_conns_per_backend {
            0 => "no cap on connections per backend".to_owned(),
            n => format!("at most {n} connections per backend"),
        };
        format!(
            "{outlier}; {slow}; retry budget {}% of requests; {conns}",
            self.balance.retry_budget * 100.0
        )
    }
}
