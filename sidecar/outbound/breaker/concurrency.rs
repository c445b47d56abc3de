//! The per-service concurrency limit: at most N requests in flight to one
//! upstream service (1024 by default). Past that, waiting would only add
//! latency and memory while the service is already behind; failing fast
//! lets the caller retry elsewhere or shed load itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// In-flight requests allowed per service unless configured otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// A request was refused because its service is at its limit. The data path
/// answers it with gRPC UNAVAILABLE or HTTP 503, and the message as reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {limit} requests in flight, the limit")]
pub struct LimitReached {
    /// The upstream service.
    pub service: Arc<str>,
    /// Its limit.
    pub limit: usize,
}

/// The limit of one service, shared by all requests to it.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    service: Arc<str>,
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// One request's slot: released when dropped, however the request ends.
#[derive(Debug)]
#[must_use = "dropping it releases the slot at once"]
pub struct InFlight {
    in_flight: Arc<AtomicUsize>,
}

impl ConcurrencyLimit {
    /// A limit of `max` in-flight requests to `service`.
    pub fn new(service: impl Into<Arc<str>>, max: usize) -> Self {
        ConcurrencyLimit { service: service.into(), max, in_flight: Arc::new(AtomicUsize::new(0)) }
    }

    /// A slot for one request, or [`LimitReached`] when all are taken.
    pub fn try_acquire(&self) -> Result<InFlight, LimitReached> {
        // Increment only below the limit, so a burst of refusals never
        // pushes the count over it, even for a moment.
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .map(|_| InFlight { in_flight: self.in_flight.clone() })
            .map_err(|_| LimitReached { service: self.service.clone(), limit: self.max })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_names_the_reason() {
        let limit = ConcurrencyLimit::new("orders", DEFAULT_MAX_IN_FLIGHT);
        let held: Vec<InFlight> = (0..1024).map(|_| limit.try_acquire().expect("below the limit")).collect();
        let err = limit.try_acquire().expect_err("at the limit");
        assert_eq!(err.to_string(), "service orders: 1024 requests in flight, the limit");
        assert_eq!(limit.in_flight(), 1024, "a refusal takes no slot");
        drop(held);
        assert_eq!(limit.in_flight(), 0);
        assert!(limit.try_acquire().is_ok());
    }

    #[test]
    fn a_released_slot_is_free_again() {
        let limit = ConcurrencyLimit::new("orders", 1);
        let first = limit.try_acquire().expect("free");
        assert!(limit.try_acquire().is_err());
        drop(first);
        let _second = limit.try_acquire().expect("released");
        assert!(limit.clone().try_acquire().is_err(), "clones share the count");
    }

    #[test]
    fn holds_under_contention() {
        let limit = ConcurrencyLimit::new("orders", 3);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limit, peak) = (limit.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(_slot) = limit.try_acquire() {
                            peak.fetch_max(limit.in_flight(), Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker");
        }
        assert!(peak.load(Ordering::Acquire) <= 3, "8 threads, never more than 3 slots");
        assert_eq!(limit.in_flight(), 0);
    }
}
