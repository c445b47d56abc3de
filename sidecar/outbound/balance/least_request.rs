//! Least request: power of two choices on requests in flight per unit of
//! weight. Candidates are drawn in proportion to weight and compared on
//! `outstanding / weight`, so idle endpoints share traffic by weight and busy
//! ones are avoided in proportion to how busy they are for their size.

use std::sync::Arc;

use super::load::EndpointLoad;
use super::p2c::P2c;
use super::{EndpointIdx, Member, PickContext};

/// See the module docs.
#[derive(Debug)]
pub(super) struct LeastRequest {
    p2c: P2c,
}

impl LeastRequest {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        LeastRequest { p2c: P2c::new(members, true) }
    }

    /// `loads` is indexed by [`EndpointIdx`].
    pub(super) fn pick(&self, ctx: &PickContext<'_>, loads: &[Arc<EndpointLoad>]) -> Option<EndpointIdx> {
        // No "+ 1" here: with nothing in flight both candidates tie at zero
        // and the first, drawn by weight, wins; that keeps a lightly loaded
        // service spread by weight instead of always favouring the heavier.
        self.p2c.pick(ctx, |idx, weight| f64::from(loads[idx.index()].outstanding()) / f64::from(weight))
    }
}
