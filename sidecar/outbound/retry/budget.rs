//! The retry budget (Finagle's `RetryBudget`, linkerd2-proxy's
//! `TpsBudget`): retries may add at most a fixed fraction of the requests
//! (20 %) plus a small floor (10 retries per second), counted over a sliding
//! window (10 s). Without it, a failing service gets every request two or
//! three times exactly when it can least take it.
//!
//! One budget per upstream service, shared by every request to it. Each
//! original request deposits, each retry withdraws; a retry without funds is
//! not made and the failure goes back to the caller.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The window is kept as this many slots; a deposit expires with its slot,
/// between 9/10 and all of the window after it was made.
const SLOTS: usize = 10;
/// A retry costs this many units and a deposit `ratio × UNIT`, so the
/// accounting is exact integer arithmetic for ratios in thousandths.
const UNIT: i64 = 1000;

/// Budget settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request deposited (0.2 = 20 %).
    pub ratio: f64,
    /// Retries allowed per second even with no requests, so a service with
    /// little traffic can still retry.
    pub min_per_second: u32,
    /// How long deposits and withdrawals count.
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig { ratio: 0.2, min_per_second: 10, window: Duration::from_secs(10) }
    }
}

/// Net units (deposits − withdrawals) per slot of the window.
#[derive(Debug)]
struct Window {
    slots: [i64; SLOTS],
    /// The absolute number of the newest slot (time since `start` / slot length).
    head: u64,
}

/// A retry budget. See the module docs. Thread-safe: one short mutex, never
/// held across an await.
#[derive(Debug)]
pub struct RetryBudget {
    window: Mutex<Window>,
    start: Instant,
    slot: Duration,
    deposit: i64,
    /// Always available: `min_per_second × window` retries.
    reserve: i64,
}

impl RetryBudget {
    /// A budget with no deposits yet: only the reserve is available.
    pub fn new(config: RetryBudgetConfig) -> Self {
        // Out-of-range ratios are clamped rather than rejected: 0 disables
        // the proportional part, and more than 10 retries per request is
        // never what anyone meant.
        let deposit = (config.ratio.clamp(0.0, 10.0) * UNIT as f64).round() as i64;
        let reserve_retries = u64::from(config.min_per_second).saturating_mul(config.window.as_secs());
        RetryBudget {
            window: Mutex::new(Window { slots: [0; SLOTS], head: 0 }),
            start: Instant::now(),
            // A zero window would divide by zero below; a nanosecond slot
            // means deposits expire at once, which is what zero asks for.
            slot: (config.window / SLOTS as u32).max(Duration::from_nanos(1)),
            deposit,
            reserve: i64::try_from(reserve_retries).unwrap_or(i64::MAX / 2).saturating_mul(UNIT),
        }
    }

    /// Record an original request (not a retry).
    pub fn deposit(&self) {
        let mut w = self.current();
        let slot = w.1;
        w.0.slots[slot] += self.deposit;
    }

    /// Take one retry from the budget; `false` (and nothing taken) when the
    /// window's retries already reach `ratio × requests + reserve`.
    pub fn try_withdraw(&self) -> bool {
        let (mut w, slot) = self.current();
        let balance: i64 = self.reserve + w.slots.iter().sum::<i64>();
        if balance < UNIT {
            return false;
        }
        w.slots[slot] -= UNIT;
        true
    }

    /// The window with expired slots cleared, and the current slot's index.
    fn current(&self) -> (std::sync::MutexGuard<'_, Window>, usize) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = u64::try_from(Instant::now().saturating_duration_since(self.start).as_nanos() / self.slot.as_nanos())
            .unwrap_or(u64::MAX);
        if now > w.head {
            // Clear every slot that has been skipped since the last call (all
            // of them after a quiet spell longer than the window).
            let stale = (now - w.head).min(SLOTS as u64);
            for n in 0..stale {
                let i = ((now - n) % SLOTS as u64) as usize;
                w.slots[i] = 0;
            }
            w.head = now;
        }
        let slot = (w.head % SLOTS as u64) as usize;
        (w, slot)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(RetryBudgetConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(budget: &RetryBudget) -> u64 {
        // Bounded: no test budget allows anywhere near this many.
        (0..1_000_000).take_while(|_| budget.try_withdraw()).count() as u64
    }

    #[tokio::test(start_paused = true)]
    async fn allows_a_fifth_of_requests_plus_ten_per_second_and_no_more() {
        for n in [0u64, 1, 4, 5, 99, 1000, 12_345] {
            let budget = RetryBudget::default();
            for _ in 0..n {
                budget.deposit();
            }
            assert_eq!(withdraw_all(&budget), n / 5 + 100, "{n} requests");
            assert!(!budget.try_withdraw());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_spread_over_the_window_all_count() {
        let budget = RetryBudget::default();
        // 1000 requests over 9.9 s: every one is still inside the window.
        for _ in 0..99 {
            for _ in 0..10 {
                budget.deposit();
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 200 + 100);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_retries_expire_after_the_window() {
        let budget = RetryBudget::default();
        for _ in 0..500 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 200);
        // Still inside the window: the spent budget stays spent.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!budget.try_withdraw());
        // Past it: deposits and withdrawals are forgotten, the reserve is back.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(withdraw_all(&budget), 100);
        // A long quiet spell clears everything too.
        tokio::time::advance(Duration::from_secs(3600)).await;
        budget.deposit();
        assert_eq!(withdraw_all(&budget), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_floor_retries_track_requests_exactly() {
        let budget = RetryBudget::new(RetryBudgetConfig { min_per_second: 0, ..RetryBudgetConfig::default() });
        assert!(!budget.try_withdraw(), "no requests, no retries");
        for i in 1..=20u64 {
            budget.deposit();
            // Withdraw as soon as funds allow: one retry per five requests.
            let allowed = budget.try_withdraw();
            assert_eq!(allowed, i % 5 == 0, "request {i}");
        }
    }

    #[test]
    fn is_shared_across_threads() {
        let budget = std::sync::Arc::new(RetryBudget::new(RetryBudgetConfig {
            min_per_second: 0,
            ..RetryBudgetConfig::default()
        }));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        budget.deposit();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("depositing thread");
        }
        // Real time here: the test takes far less than a slot.
        assert_eq!(withdraw_all(&budget), 800);
    }
}
