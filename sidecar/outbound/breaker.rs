//! Circuit breaking: stop sending to what is failing, and stop queueing
//! behind a service that is saturated.
//!
//! Outbound, around the balancer: [`ConcurrencyLimit::try_acquire`] first,
//! so a service with too many requests in flight fails fast with
//! UNAVAILABLE / 503 instead of queueing; then the balancer picks among the
//! endpoints [`OutlierDetector::is_available`] lets through,
//! [`OutlierDetector::try_admit`] claims the pick, and the [`Admission`] it
//! returns is told whether the attempt succeeded.

mod concurrency;
mod outlier;

pub use concurrency::{ConcurrencyLimit, DEFAULT_MAX_IN_FLIGHT, InFlight, LimitReached};
pub use outlier::{Admission, EndpointHealth, OutlierConfig, OutlierDetector};
