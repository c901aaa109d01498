//! `[timeouts] send`: a client that stops reading its response.
//!
//! Each client connection has a [`SendWatch`], which its connection loop
//! ticks with the connection's one timer (see `server::IdleCheck`). A tick
//! finds the connection stalled when, since the previous tick (a whole
//! period, at most `send`), a response waited on the client and got
//! nowhere:
//!
//! - a write to the socket would block and no byte has been written since
//!   (HTTP/1 and HTTP/2: the client's receive buffer is full), or
//! - HTTP/2: a stream's response body handed hyper a frame that hyper has
//!   not been able to send since, because the client keeps that stream's
//!   flow-control window shut (`INITIAL_WINDOW_SIZE = 0` and no
//!   `WINDOW_UPDATE`): the socket is then free, and other streams may even
//!   be moving. As nginx's `send_timeout` on an HTTP/2 stream; since hyper
//!   cannot reset one stream from outside, the connection is closed.
//!
//! Closing the connection drops every response body on it, which releases
//! their in-flight counts and their backend connections. A slow reader
//! that keeps reading is not stalled. A stall is caught between one and two
//! periods after it began.
//!
//! HTTP/2 frames are counted in two epoch slots: a frame handed during
//! epoch `e` counts in slot `e % 2` until hyper polls the body again; a tick
//! looks at the previous epoch's slot (anything there has waited a whole
//! epoch), then opens the next epoch on that same, now empty, slot.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// What the send timeout watches on one client connection.
#[derive(Debug, Default)]
pub struct SendWatch {
    /// HTTP/2: streams are watched one by one too.
    per_stream: bool,
    /// Ticks so far; its parity is the slot frames are handed in.
    epoch: AtomicU32,
    /// HTTP/2 response frames hyper holds, unsent, by the epoch they were
    /// handed in.
    handed: [AtomicUsize; 2],
    /// The last write to the socket would have blocked.
    blocked: AtomicBool,
    /// Writes that moved bytes, ever.
    writes: AtomicU64,
    /// `writes` at the last tick.
    seen: AtomicU64,
}

impl SendWatch {
    /// A watch for an HTTP/2 connection (`per_stream`) or an HTTP/1 one.
    pub fn new(per_stream: bool) -> SendWatch {
        SendWatch {
            per_stream,
            ..SendWatch::default()
        }
    }

    /// A write moved bytes.
    pub fn wrote(&self) {
        self.writes.fetch_add(1, Relaxed);
        if self.blocked.load(Relaxed) {
            self.blocked.store(false, Relaxed);
        }
    }

    /// A write would have blocked: the client is not reading.
    pub fn write_blocked(&self) {
        self.blocked.store(true, Relaxed);
    }

    /// Writes that moved bytes, ever.
    pub fn writes(&self) -> u64 {
        self.writes.load(Relaxed)
    }

    /// A response body handed hyper a frame: it is the client's turn until
    /// [`SendWatch::take_back`] with the returned slot. `None` on HTTP/1,
    /// where the socket tells.
    pub fn hand(&self) -> Option<u8> {
        if !self.per_stream {
            return None;
        }
        let slot = (self.epoch.load(Relaxed) & 1) as u8;
        self.handed[usize::from(slot)].fetch_add(1, Relaxed);
        Some(slot)
    }

    /// hyper polled the body again (or dropped it): the frame handed in
    /// `slot` has gone.
    pub fn take_back(&self, slot: u8) {
        self.handed[usize::from(slot)].fetch_sub(1, Relaxed);
    }

    /// One period has passed: whether a response has waited on the client
    /// all along. Called by the connection loop only.
    pub fn tick(&self) -> bool {
        let writes = self.writes.load(Relaxed);
        let moved = self.seen.swap(writes, Relaxed) != writes;
        let socket_stalled = self.blocked.load(Relaxed) && !moved;
        let e = self.epoch.load(Relaxed);
        let previous = usize::from(e & 1 == 0);
        let stream_stalled = self.handed[previous].load(Relaxed) > 0;
        self.epoch.store(e.wrapping_add(1), Relaxed);
        socket_stalled || stream_stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_socket_with_no_write_for_a_period_is_stalled() {
        let w = SendWatch::new(false);
        w.wrote();
        w.write_blocked();
        // Bytes moved during this period: not yet.
        assert!(!w.tick());
        assert!(w.tick());
        // A slow reader: a write gets through each period.
        w.wrote();
        w.write_blocked();
        assert!(!w.tick());
        // Not blocked: waiting on the backend, not the client.
        let w = SendWatch::new(false);
        assert!(!w.tick());
        assert!(!w.tick());
        assert_eq!(w.hand(), None);
    }

    #[test]
    fn an_http2_frame_unsent_for_a_whole_epoch_is_stalled() {
        let w = SendWatch::new(true);
        let a = w.hand().unwrap();
        // Handed during this epoch: it has not waited a whole one yet.
        assert!(!w.tick());
        // Taken back in time by the next tick: fine.
        w.take_back(a);
        assert!(!w.tick());
        let b = w.hand().unwrap();
        assert!(!w.tick());
        // Other writes moving do not matter: this stream is stuck.
        w.wrote();
        assert!(w.tick());
        w.take_back(b);
        assert!(!w.tick());
        assert!(!w.tick());
    }
}
