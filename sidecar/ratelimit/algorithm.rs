//! The four limiting algorithms as pure state machines over a nanosecond
//! clock: [`Algorithm::check`] takes the key's state and "now" and returns
//! the verdict. No I/O and no clock of their own: the memory store feeds them
//! `tokio::time::Instant` (so tests can pause time), and the Redis scripts in
//! `redis/*.lua` implement the same arithmetic over Redis's `TIME`.
//!
//! Times are nanoseconds since the store's epoch. Every algorithm answers the
//! same four numbers, which become the response headers:
//! - `limit`: the most requests the key can have at once (limit or burst);
//! - `remaining`: what is left after this request;
//! - `reset`: how long until the quota is fully restored (no more requests);
//! - `retry_after` (when denied): how long until one request is admitted;
//!   exact: a request then is admitted, one nanosecond earlier it is not.

use std::collections::VecDeque;
use std::time::Duration;

use crate::mesh::policy::ratelimit::{Algorithm, Nanos};

/// The state of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The current window's number and count.
    Fixed {
        /// `now / window` when last used.
        index: u64,
        /// Requests admitted in that window.
        count: u64,
    },
    /// Admission times still inside the window, oldest first.
    Sliding(VecDeque<Nanos>),
    /// Tokens × `per` (integer units, so refill is exact) and when counted.
    Bucket {
        /// Tokens × `per`.
        units: u128,
        /// When `units` was computed.
        last: Nanos,
    },
    /// The theoretical arrival time of the next request.
    Gcra {
        /// TAT.
        tat: Nanos,
    },
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Admitted (and counted).
    pub allowed: bool,
    /// The quota: limit or burst.
    pub limit: u64,
    /// Quota left after this request.
    pub remaining: u64,
    /// Until the quota is fully restored if no request comes.
    pub reset: Duration,
    /// When denied: until one request would be admitted. Zero when allowed.
    pub retry_after: Duration,
}

impl Algorithm {
    /// The quota reported as `RateLimit-Limit`.
    pub fn quota(&self) -> u64 {
        match *self {
            Algorithm::FixedWindow { limit, .. } | Algorithm::SlidingWindow { limit, .. } => limit,
            Algorithm::TokenBucket { burst, .. } | Algorithm::Gcra { burst, .. } => burst,
        }
    }

    /// The state of a key never seen (or idle long enough to be forgotten).
    pub fn fresh(&self, now: Nanos) -> State {
        match *self {
            Algorithm::FixedWindow { window, .. } => State::Fixed { index: now / window, count: 0 },
            Algorithm::SlidingWindow { .. } => State::Sliding(VecDeque::new()),
            Algorithm::TokenBucket { per, burst, .. } => {
                State::Bucket { units: u128::from(burst) * u128::from(per), last: now }
            }
            Algorithm::Gcra { .. } => State::Gcra { tat: now },
        }
    }

    /// True when `state` behaves exactly like [`Algorithm::fresh`] at `now`:
    /// forgetting it loses nothing, so the memory store may evict it.
    pub fn idle(&self, state: &State, now: Nanos) -> bool {
        match (*self, state) {
            (Algorithm::FixedWindow { window, .. }, State::Fixed { index, count }) => {
                *count == 0 || *index != now / window
            }
            (Algorithm::SlidingWindow { window, .. }, State::Sliding(log)) => {
                log.back().is_none_or(|&t| t.saturating_add(window) <= now)
            }
            (Algorithm::TokenBucket { rate, per, burst }, State::Bucket { units, last }) => {
                refill(*units, *last, now, rate, per, burst) == full(per, burst)
            }
            (Algorithm::Gcra { .. }, State::Gcra { tat }) => *tat <= now,
            _ => true,
        }
    }

    /// Decides one request at `now` and updates `state`. A state of another
    /// algorithm (the rule changed) is replaced by a fresh one. `now` must
    /// not go backwards for one state (the store's clock is monotonic); if it
    /// does, the earlier time is used.
    pub fn check(&self, state: &mut State, now: Nanos) -> Verdict {
        if !self.matches(state) {
            *state = self.fresh(now);
        }
        let quota = self.quota();
        let (allowed, remaining, reset, retry) = match (*self, state) {
            (Algorithm::FixedWindow { limit, window }, State::Fixed { index, count }) => {
                let current = now / window;
                if *index != current {
                    *index = current;
                    *count = 0;
                }
                let reset = (current + 1) * window - now;
                if *count < limit {
                    *count += 1;
                    (true, limit - *count, reset, 0)
                } else {
                    (false, 0, reset, reset)
                }
            }
            (Algorithm::SlidingWindow { limit, window }, State::Sliding(log)) => {
                let now = now.max(log.back().copied().unwrap_or(0));
                while log.front().is_some_and(|&t| t.saturating_add(window) <= now) {
                    log.pop_front();
                }
                let len = log.len() as u64;
                if len < limit {
                    log.push_back(now);
                    (true, limit - len - 1, window, 0)
                } else {
                    let front = log.front().copied().unwrap_or(now);
                    let back = log.back().copied().unwrap_or(now);
                    (false, 0, back + window - now, front + window - now)
                }
            }
            (Algorithm::TokenBucket { rate, per, burst }, State::Bucket { units, last }) => {
                let now = now.max(*last);
                *units = refill(*units, *last, now, rate, per, burst);
                *last = now;
                let cost = u128::from(per);
                let allowed = *units >= cost;
                if allowed {
                    *units -= cost;
                }
                let full = full(per, burst);
                let reset = ceil_div(full - *units, u128::from(rate));
                let retry = if allowed { 0 } else { ceil_div(cost - *units, u128::from(rate)) };
                (allowed, (*units / cost) as u64, to_nanos(reset), to_nanos(retry))
            }
            (Algorithm::Gcra { rate, per, burst }, State::Gcra { tat }) => {
                let interval = emission_interval(rate, per);
                let tau = interval.saturating_mul(burst);
                let start = (*tat).max(now);
                let next = start.saturating_add(interval);
                if next - now <= tau {
                    *tat = next;
                    (true, (tau - (next - now)) / interval, next - now, 0)
                } else {
                    (false, 0, start - now, next - tau - now)
                }
            }
            _ => unreachable!("state replaced by a fresh one above"),
        };
        Verdict {
            allowed,
            limit: quota,
            remaining,
            reset: Duration::from_nanos(reset),
            retry_after: Duration::from_nanos(retry),
        }
    }

    fn matches(&self, state: &State) -> bool {
        matches!(
            (self, state),
            (Algorithm::FixedWindow { .. }, State::Fixed { .. })
                | (Algorithm::SlidingWindow { .. }, State::Sliding(_))
                | (Algorithm::TokenBucket { .. }, State::Bucket { .. })
                | (Algorithm::Gcra { .. }, State::Gcra { .. })
        )
    }
}

/// GCRA's emission interval `per / rate`, rounded up (never faster than asked).
pub fn emission_interval(rate: u64, per: Nanos) -> Nanos {
    per.div_ceil(rate).max(1)
}

fn full(per: Nanos, burst: u64) -> u128 {
    u128::from(burst) * u128::from(per)
}

fn refill(units: u128, last: Nanos, now: Nanos, rate: u64, per: Nanos, burst: u64) -> u128 {
    let elapsed = u128::from(now.saturating_sub(last));
    units.saturating_add(elapsed * u128::from(rate)).min(full(per, burst))
}

fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

fn to_nanos(n: u128) -> Nanos {
    u64::try_from(n).unwrap_or(u64::MAX)
}
