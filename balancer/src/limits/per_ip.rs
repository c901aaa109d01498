//! Open connections per client address (`max_connections_per_ip`): a
//! sharded table whose entries exist only while their client has a
//! connection open, so its size follows the open connections, and is
//! bounded besides.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Shards: the accepting listener and the closing workers rarely meet on
/// one lock.
const SHARDS: usize = 64;

/// Addresses one shard tracks at most (about a million in all): with
/// `max_connections = 0` nothing else bounds the table.
const SHARD_CAP: usize = 16 * 1024;

/// Open connections by client key ([`super::ip_key`]).
#[derive(Debug)]
pub(super) struct ConnTable {
    shards: Box<[Mutex<HashMap<u64, u32>>]>,
}

impl ConnTable {
    pub(super) fn new() -> ConnTable {
        ConnTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, u32>> {
        &self.shards[shard_of(key, SHARDS)]
    }

    /// Counts one more connection for `key` unless it has `max` open
    /// already or the table is full. Whether it was counted.
    pub(super) fn add(&self, key: u64, max: u32) -> bool {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = shard.get_mut(&key) {
            if *n >= max {
                return false;
            }
            *n += 1;
            return true;
        }
        if shard.len() >= SHARD_CAP || max == 0 {
            return false;
        }
        shard.insert(key, 1);
        true
    }

    /// One connection of `key` closed.
    pub(super) fn remove(&self, key: u64) {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = shard.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn count(&self, key: u64) -> u32 {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&key).copied().unwrap_or(0)
    }
}

/// The shard of `key` among `n`: a multiplicative hash, so that addresses
/// of one subnet (which differ in their low bits) spread out.
pub(super) fn shard_of(key: u64, n: usize) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % n
}
