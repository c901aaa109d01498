//! An operator's say over one backend, set through the admin API
//! (`/backends/{addr}/enable|disable|drain|weight`): whether it is in
//! rotation, and a weight that overrides `lb.toml`'s.
//!
//! Two atomics per backend, read by every pick without a lock. A backend
//! out of rotation (disabled or draining) is never chosen, not by a retry
//! and not in panic mode: the operator's word is final, as HAProxy's
//! `maint` and `drain` states are. It goes on being probed, so the status
//! shows its health while it is out, and the requests it has in flight
//! finish on their connections. Draining differs from disabled only in
//! what it reports: `drained` once nothing is in flight, the moment an
//! operator may stop the host.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};

/// The operator's state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In rotation (the default).
    Enabled,
    /// Out of rotation until enabled again.
    Disabled,
    /// Out of rotation; requests in flight finish. Reported as
    /// [`AdminState::Drained`] once none is left.
    Draining,
    /// Draining, with nothing in flight any more (only ever reported, never
    /// stored: it follows from `Draining` and the in-flight count).
    Drained,
}

impl AdminState {
    /// The name `/status.json` and the admin API use.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Disabled => "disabled",
            AdminState::Draining => "draining",
            AdminState::Drained => "drained",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Disabled,
            2 => AdminState::Draining,
            _ => AdminState::Enabled,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            AdminState::Enabled => 0,
            AdminState::Disabled => 1,
            AdminState::Draining | AdminState::Drained => 2,
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The operator's state and weight override of one backend.
#[derive(Debug, Default)]
pub struct Rotation {
    /// [`AdminState`] as a byte (drained is stored as draining).
    state: AtomicU8,
    /// The weight set through the API, 0 when `lb.toml`'s applies.
    weight: AtomicU32,
}

impl Rotation {
    /// Whether new requests may go to the backend.
    pub fn in_rotation(&self) -> bool {
        self.state.load(Relaxed) == 0
    }

    /// The stored state (`Draining`, never `Drained`: see
    /// [`Rotation::reported`]).
    pub fn state(&self) -> AdminState {
        AdminState::from_u8(self.state.load(Relaxed))
    }

    /// The state as operators see it, with `in_flight` requests open:
    /// a draining backend with none left is drained.
    pub fn reported(&self, in_flight: u32) -> AdminState {
        match self.state() {
            AdminState::Draining if in_flight == 0 => AdminState::Drained,
            s => s,
        }
    }

    /// Sets the state; returns the previous one.
    pub fn set(&self, state: AdminState) -> AdminState {
        AdminState::from_u8(self.state.swap(state.to_u8(), Relaxed))
    }

    /// The weight override, if one is set.
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.weight.load(Relaxed)).filter(|&w| w > 0)
    }

    /// Sets the weight override (`None` clears it).
    pub fn set_weight(&self, weight: Option<u32>) {
        self.weight.store(weight.unwrap_or(0), Relaxed);
    }

    /// The state of a backend's successor on reload (see
    /// [`crate::backend::Backend::succeed`]): the admin state carries over;
    /// the weight override too, unless the file changed the backend's
    /// weight from `old_weight` to `new_weight`, in which case the file wins
    /// (an operator who edits the weight in `lb.toml` and reloads means the
    /// file's number) and the dropped override is logged.
    pub fn carried(&self, addr: &dyn fmt::Display, old_weight: u32, new_weight: u32) -> Rotation {
        let weight = match self.weight_override() {
            Some(w) if old_weight != new_weight => {
                tracing::info!(
                    "backend {addr} weight override {w} dropped: lb.toml changed its weight \
                     from {old_weight} to {new_weight}, and the file wins"
                );
                0
            }
            w => w.unwrap_or(0),
        };
        Rotation {
            state: AtomicU8::new(self.state.load(Relaxed)),
            weight: AtomicU32::new(weight),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_reads_as_drained_once_nothing_is_in_flight() {
        let r = Rotation::default();
        assert!(r.in_rotation());
        assert_eq!(r.reported(3), AdminState::Enabled);
        assert_eq!(r.set(AdminState::Draining), AdminState::Enabled);
        assert!(!r.in_rotation());
        assert_eq!(r.reported(1), AdminState::Draining);
        assert_eq!(r.reported(0), AdminState::Drained);
        assert_eq!(r.set(AdminState::Disabled), AdminState::Draining);
        assert_eq!(r.reported(0), AdminState::Disabled);
        assert_eq!(r.set(AdminState::Enabled), AdminState::Disabled);
        assert!(r.in_rotation());
    }

    #[test]
    fn a_reload_keeps_the_state_and_the_override_unless_the_file_changed_the_weight() {
        let r = Rotation::default();
        r.set(AdminState::Draining);
        r.set_weight(Some(7));
        let same = r.carried(&"a", 2, 2);
        assert_eq!(
            (same.state(), same.weight_override()),
            (AdminState::Draining, Some(7))
        );
        let changed = r.carried(&"a", 2, 3);
        assert_eq!(
            (changed.state(), changed.weight_override()),
            (AdminState::Draining, None)
        );
        r.set_weight(None);
        assert_eq!(r.weight_override(), None);
    }
}
