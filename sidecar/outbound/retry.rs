//! Retries: whether a failed attempt may be tried again, whether the
//! service's budget allows it, and how long to wait first.
//!
//! Outbound, after a response head (or a connect failure) comes back: the
//! data path classifies it as an [`Outcome`], asks [`RetryPolicy::decide`]
//! (pure: request facts and outcome in, [`Decision`] out), then
//! [`RetryBudget::try_withdraw`] so retries stay a bounded fraction of
//! traffic when a service is failing, then sleeps [`Backoff::delay`] and
//! picks an endpoint again. Every original request calls
//! [`RetryBudget::deposit`].

mod backoff;
mod budget;
mod outcome;
mod policy;

pub use backoff::Backoff;
pub use budget::{RetryBudget, RetryBudgetConfig};
pub use outcome::Outcome;
pub use policy::{Decision, GrpcCodes, RETRY_BUFFER_BYTES, RetryPolicy, RetryRequest, Stop, is_idempotent};
