//! What accepting does when `accept` fails (out of file descriptors, out
//! of memory for a socket): pause, so the loop does not spin on an error
//! that only time can clear, and log at most once a second with the count
//! of failures since, so that the log does not grow by the pause rate
//! (20 lines a second per listener) for as long as it lasts.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

/// The pause after a failed `accept`.
pub(crate) const PAUSE: Duration = Duration::from_millis(50);

/// At most one log line per this, for all listeners together.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Failures not logged since the last line.
static UNLOGGED: AtomicU64 = AtomicU64::new(0);

/// When the next line may be logged, in milliseconds since [`epoch`].
static NEXT_LOG_MS: AtomicU64 = AtomicU64::new(0);

/// The origin of [`NEXT_LOG_MS`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Notes that accepting on `listener` failed with `e`: logs it, unless a
/// line went out less than [`LOG_EVERY`] ago (then counts it for the next).
pub(crate) fn accept_failed(listener: &TcpListener, e: &io::Error) {
    let now = Instant::now()
        .saturating_duration_since(epoch())
        .as_millis() as u64;
    let next = NEXT_LOG_MS.load(Relaxed);
    let due = now >= next
        && NEXT_LOG_MS
            .compare_exchange(next, now + LOG_EVERY.as_millis() as u64, Relaxed, Relaxed)
            .is_ok();
    if !due {
        UNLOGGED.fetch_add(1, Relaxed);
        return;
    }
    let since = UNLOGGED.swap(0, Relaxed);
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    if since == 0 {
        tracing::warn!("accept on {addr} failed: {e}; retrying every {PAUSE:?}");
    } else {
        tracing::warn!(
            "accept on {addr} failed: {e}; retrying every {PAUSE:?} ({since} more accept failures since the last report)"
        );
    }
}
