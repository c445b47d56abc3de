//! Full-jitter exponential backoff (the AWS architecture blog's "full
//! jitter"): the wait before retry `n` is uniform in
//! `[0, min(cap, base × 2ⁿ)]`. The randomness spreads the retries of many
//! callers that failed together instead of sending them back in a wave.

use std::time::Duration;

/// Backoff settings: 25 ms base, 250 ms cap by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling for the first retry.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(25), cap: Duration::from_millis(250) }
    }
}

impl Backoff {
    /// The longest wait before retry number `retry` (0 for the first):
    /// `min(cap, base × 2^retry)`, without overflow for any `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        // In u128 nanoseconds: base × 2^retry overflows only far above any cap.
        let doubled = 1u128.checked_shl(retry).and_then(|factor| self.base.as_nanos().checked_mul(factor));
        match doubled.filter(|&d| d < self.cap.as_nanos()).and_then(|d| u64::try_from(d).ok()) {
            Some(d) => Duration::from_nanos(d),
            None => self.cap,
        }
    }

    /// A random wait before retry number `retry`, in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        Duration::from_nanos(fastrand::u64(0..=self.ceiling_nanos(retry)))
    }

    /// [`Backoff::delay`] with a given random source, for reproducible tests.
    pub fn delay_with(&self, rng: &mut fastrand::Rng, retry: u32) -> Duration {
        Duration::from_nanos(rng.u64(0..=self.ceiling_nanos(retry)))
    }

    fn ceiling_nanos(&self, retry: u32) -> u64 {
        // Only a cap above 584 years does not fit.
        u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff::default();
        let ceilings: Vec<Duration> = (0..6).map(|n| b.ceiling(n)).collect();
        assert_eq!(ceilings, [25 * MS, 50 * MS, 100 * MS, 200 * MS, 250 * MS, 250 * MS]);
        assert_eq!(b.ceiling(u32::MAX), 250 * MS, "no overflow for absurd retry counts");
    }

    #[test]
    fn delays_fill_the_whole_range() {
        // Full jitter: waits near 0 and near the ceiling both occur.
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(11);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay_with(&mut rng, 0)).collect();
        assert!(delays.iter().any(|&d| d < 3 * MS));
        assert!(delays.iter().any(|&d| d > 22 * MS));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!(mean > 11 * MS && mean < 14 * MS, "uniform on [0, 25 ms] averages 12.5 ms, got {mean:?}");
    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn delay_stays_within_zero_and_the_cap(
            seed: u64,
            retry in 0u32..100,
            base_ms in 0u64..1000,
            cap_ms in 0u64..10_000,
        ) {
            let b = Backoff { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) };
            let d = b.delay_with(&mut fastrand::Rng::with_seed(seed), retry);
            prop_assert!(d <= b.cap);
            prop_assert!(d <= b.ceiling(retry));
            if retry <= 20 {
                prop_assert_eq!(b.ceiling(retry), (b.base * 2u32.pow(retry)).min(b.cap));
            }
        }
    }
}
