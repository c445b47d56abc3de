//! Peak EWMA, the default policy: power of two choices on
//! `latency estimate × (outstanding + 1) / weight` (Finagle, linkerd). The
//! estimate (the `RttEstimate` in `load.rs`) jumps up on a slow response and
//! decays over ~10 s, so traffic leaves an endpoint that slows down or sheds
//! load (recorded as a penalty latency) after one response, and comes back
//! gradually once it has been left alone.

use std::sync::Arc;

use tokio::time::Instant;

use super::load::EndpointLoad;
use super::p2c::P2c;
use super::{EndpointIdx, Member, PickContext};

/// See the module docs.
#[derive(Debug)]
pub(super) struct PeakEwma {
    p2c: P2c,
}

impl PeakEwma {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        // Drawn uniformly: weight already divides the cost.
        PeakEwma { p2c: P2c::new(members, false) }
    }

    /// `loads` is indexed by [`EndpointIdx`].
    pub(super) fn pick(&self, ctx: &PickContext<'_>, loads: &[Arc<EndpointLoad>]) -> Option<EndpointIdx> {
        let now = Instant::now();
        self.p2c.pick(ctx, |idx, weight| {
            let load = &loads[idx.index()];
            load.rtt_ns(now) * f64::from(load.outstanding().saturating_add(1)) / f64::from(weight)
        })
    }
}
