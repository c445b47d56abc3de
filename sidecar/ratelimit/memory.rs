//! The in-process store: one rule's key states in 64 shards, each a short
//! `std::sync::Mutex` around a `HashMap` (held for one algorithm step, never
//! across an await), so concurrent requests for different keys rarely touch
//! the same lock.
//!
//! Memory is bounded: at most `max_keys` states (spread over the shards).
//! When a shard is full, states that are idle (equal to a fresh state, see
//! [`Algorithm::idle`]) are dropped first, which loses nothing. If that frees
//! less than an eighth of the shard — a flood of distinct keys, all active —
//! arbitrary states are dropped down to seven eighths, so the cost of making
//! room stays amortised O(1); those keys start again with a fresh quota.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::algorithm::{State, Verdict};
use super::key::Key;
use crate::mesh::policy::ratelimit::{Algorithm, Nanos};

const SHARDS: usize = 64;

/// See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<Key, State>>]>,
    per_shard: usize,
    epoch: Instant,
}

impl MemoryStore {
    /// A store holding at most `max_keys` key states (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
            epoch: Instant::now(),
        }
    }

    /// The store's clock: nanoseconds since it was created (tokio time, so
    /// paused in tests).
    pub fn now(&self) -> Nanos {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Decides one request for `key`.
    pub fn check(&self, algorithm: &Algorithm, key: &Key) -> Verdict {
        let now = self.now();
        // The key is a SHA-256 digest: its first bytes are uniform.
        let shard = usize::from(key.0[0]) % SHARDS;
        let mut map = self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = map.get_mut(key) {
            return algorithm.check(state, now);
        }
        if map.len() >= self.per_shard {
            make_room(&mut map, algorithm, now, self.per_shard);
        }
        let mut state = algorithm.fresh(now);
        let verdict = algorithm.check(&mut state, now);
        map.insert(*key, state);
        verdict
    }

    /// Key states held (for tests and the admin page).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    /// True when no key state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn make_room(map: &mut HashMap<Key, State>, algorithm: &Algorithm, now: Nanos, per_shard: usize) {
    map.retain(|_, state| !algorithm.idle(state, now));
    let target = per_shard - per_shard / 8 - 1;
    if map.len() > target {
        let excess = map.len() - target;
        let victims: Vec<Key> = map.keys().take(excess).copied().collect();
        for k in victims {
            map.remove(&k);
        }
    }
}
