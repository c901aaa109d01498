//! A backend's passive health: the outcome of each attempt, outlier
//! ejection and slow start, on the backend's own clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::outlier::Ejection;

use super::{Backend, Transition};

/// Passive health: attempt outcomes, outlier ejection and slow start.
impl Backend {
    /// Takes one attempt's outcome (the proxy reports each attempt once):
    /// counts errors, marks the backend down at once when a connection is
    /// refused, and feeds the outlier detector. Returns true when this
    /// failure completes a streak of `threshold`: the pool then ejects the
    /// backend if it has room (a pool-wide decision, see
    /// [`crate::upstream::Upstream::report`]).
    pub fn report(
        &self,
        outcome: Outcome,
        note: Option<String>,
        threshold: u32,
        now: Instant,
    ) -> bool {
        if let Outcome::Response(status) = outcome {
            self.metrics.responses.add(status);
        }
        if outcome.is_error() {
            self.record_error(note.unwrap_or_else(|| outcome.to_string()));
        }
        if outcome == (Outcome::ConnectFailed { refused: true })
            && self.mark_down() == Some(Transition::WentDown)
        {
            tracing::warn!(backend = %self.addr, "backend down: connection refused");
            self.set_down_reason("connection refused (a request's connect)".to_owned());
        }
        // Neither the client's fault nor our own connection limit says
        // anything about the backend: the streak is left as it was.
        if matches!(outcome, Outcome::Client | Outcome::Saturated) {
            return false;
        }
        self.outlier
            .record(outcome.is_failure(), threshold, self.clock(now))
    }

    /// Whether outlier ejection keeps this backend out of rotation at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected(self.clock(now))
    }

    /// Ejects the backend at `now` for `base` × its multiplier.
    pub fn eject(&self, now: Instant, base: Duration) -> Ejection {
        self.outlier.eject(self.clock(now), base)
    }

    /// True once per ejection, at or after its end: the caller logs the
    /// return.
    pub fn take_return(&self, now: Instant) -> bool {
        self.outlier.take_return(self.clock(now))
    }

    /// How long the current ejection still lasts (`None`: not ejected), and
    /// the ejections so far.
    pub fn ejection(&self, now: Instant) -> (Option<Duration>, u64) {
        (
            self.outlier.remaining(self.clock(now)),
            self.outlier.ejections(),
        )
    }

    /// Starts a slow start at `now` (on coming up, or on being added by a
    /// reload).
    pub fn begin_slow_start(&self, now: Instant) {
        self.slow_start.begin(self.clock(now));
    }

    /// The share of its weight the backend gets at `now` during a slow start
    /// of length `over`; `None` when it takes its full share.
    pub fn ramp(&self, now: Instant, over: Duration) -> Option<f64> {
        self.slow_start.ramp(self.clock(now), over)
    }

    /// `now` in nanoseconds since the backend entered the pool: the clock of
    /// its outlier and slow-start state.
    pub(super) fn clock(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }
}
