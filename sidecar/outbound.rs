//! The outbound path: requests from the local app to other services.
//!
//! Per request, in order (the layers that run these come with the data path):
//!
//! 1. [`breaker::ConcurrencyLimit`] — fail fast when the service already has
//!    too many requests in flight.
//! 2. [`balance::Balancer::pick`] — choose an endpoint, skipping the ones
//!    [`breaker::OutlierDetector`] has ejected; then
//!    [`breaker::OutlierDetector::try_admit`] and [`balance::Balancer::start`].
//! 3. Send; classify the response as a [`retry::Outcome`] and feed it back to
//!    the balancer (latency, load) and to the outlier detector (success or
//!    failure).
//! 4. [`retry::RetryPolicy::decide`], then [`retry::RetryBudget::try_withdraw`]
//!    and [`retry::Backoff::delay`] before going back to step 2.
//!
//! Everything here is plain data and functions: no sockets, no tasks, and
//! time comes from `tokio::time::Instant` so tests can pause it.

pub mod balance;
pub mod breaker;
pub mod pool;
pub mod proxy;
pub mod replay;
pub mod retry;
pub mod upstreams;
