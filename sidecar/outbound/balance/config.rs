//! Balancer settings: which policy, how peak-EWMA weighs latency, and whether
//! to prefer the local zone. Plain values, so per-service overrides from
//! config or policy pushes can be built and compared without a balancer.

use std::time::Duration;

use http::HeaderName;

/// How requests to one upstream service are balanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancing {
    /// The policy.
    pub policy: Policy,
    /// For [`Policy::RingHash`] and [`Policy::Maglev`]: the request header
    /// whose value is the hash key. A request without it is balanced by
    /// least request (power of two random choices) instead.
    pub hash_header: HeaderName,
}

/// How a [`Balancer`](super::Balancer) chooses among endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each endpoint in turn, ignoring weights.
    RoundRobin,
    /// Smooth weighted round robin (nginx): each endpoint `weight` times per
    /// cycle, interleaved rather than in bursts.
    WeightedRoundRobin,
    /// Power of two choices on outstanding requests per unit of weight.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency × (outstanding + 1) / weight:
    /// reacts to a slow or shedding endpoint within a request or two. The
    /// default, as in linkerd.
    #[default]
    PeakEwma,
    /// Consistent hashing on a ketama ring: a request's hash key keeps going
    /// to the same endpoint while that endpoint stays.
    RingHash,
    /// Consistent hashing with a Maglev lookup table: like
    /// [`Policy::RingHash`], with O(1) lookups and a more even spread.
    Maglev,
}

impl Policy {
    /// Whether the policy routes by the request's hash key.
    pub fn is_hash(self) -> bool {
        matches!(self, Policy::RingHash | Policy::Maglev)
    }
}

/// Peak-EWMA tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeakEwmaConfig {
    /// Time constant of the decay: an observation's weight falls to 1/e
    /// after this long, and an idle estimate decays toward zero just as fast,
    /// so an endpoint that was slow a while ago gets tried again.
    pub decay: Duration,
    /// The estimate for an endpoint with no observations yet.
    pub default_rtt: Duration,
    /// Latency recorded for a response that says "overloaded" (HTTP 429,
    /// gRPC RESOURCE_EXHAUSTED) or for a failed connect. Such answers come
    /// back fast; recording their real latency would make the endpoint that
    /// sheds load look like the best one and send it more.
    pub penalty: Duration,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        PeakEwmaConfig {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            penalty: Duration::from_secs(1),
        }
    }
}

/// Prefer endpoints in the caller's own zone while enough of them are up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonePreference {
    /// The zone this sidecar runs in (the registry's `zone` of an instance).
    pub local_zone: String,
    /// Stay in the zone only while at least this percentage (0..=100) of its
    /// endpoints is available, counted against every instance registered
    /// there (also those reporting NOT_SERVING), and at least one. Below
    /// that, the few left would take the whole zone's traffic, so requests
    /// spread over every zone instead.
    pub min_healthy_percent: u8,
}

impl ZonePreference {
    /// The default share of the zone that must be up to stay in it.
    pub const DEFAULT_MIN_HEALTHY_PERCENT: u8 = 50;

    /// Prefer `local_zone` while at least half of its endpoints are available.
    pub fn new(local_zone: impl Into<String>) -> Self {
        ZonePreference { local_zone: local_zone.into(), min_healthy_percent: Self::DEFAULT_MIN_HEALTHY_PERCENT }
    }

    /// How many of a zone of `size` endpoints must be available (at least 1).
    pub fn min_available(&self, size: usize) -> usize {
        (size * usize::from(self.min_healthy_percent.min(100))).div_ceil(100).max(1)
    }
}

/// Everything a [`Balancer`](super::Balancer) is built from besides the
/// endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceConfig {
    /// The policy; [`Policy::PeakEwma`] by default.
    pub policy: Policy,
    /// Latency tracking, used by [`Policy::PeakEwma`] and kept for all.
    pub peak_ewma: PeakEwmaConfig,
    /// Same-zone preference; none by default. Hash policies apply it only
    /// to requests without a hash key: a per-zone table would move keys
    /// every time a zone's health changed, defeating the affinity.
    pub zone: Option<ZonePreference>,
}
