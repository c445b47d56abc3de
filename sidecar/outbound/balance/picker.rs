//! One policy instance over a set of members: the dispatch from [`Policy`]
//! to the algorithm that implements it.

use std::sync::Arc;

use super::least_request::LeastRequest;
use super::load::EndpointLoad;
use super::maglev::Maglev;
use super::peak_ewma::PeakEwma;
use super::ring_hash::RingHash;
use super::round_robin::RoundRobin;
use super::weighted_round_robin::SmoothWeighted;
use super::{EndpointIdx, Member, PickContext, Policy};

/// See the module docs.
#[derive(Debug)]
pub(super) enum Picker {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(SmoothWeighted),
    LeastRequest(LeastRequest),
    PeakEwma(PeakEwma),
    RingHash(RingHash),
    Maglev(Maglev),
}

impl Picker {
    pub(super) fn new(policy: Policy, members: &[Member<'_>]) -> Self {
        match policy {
            Policy::RoundRobin => Picker::RoundRobin(RoundRobin::new(members)),
            Policy::WeightedRoundRobin => Picker::WeightedRoundRobin(SmoothWeighted::new(members)),
            Policy::LeastRequest => Picker::LeastRequest(LeastRequest::new(members)),
            Policy::PeakEwma => Picker::PeakEwma(PeakEwma::new(members)),
            Policy::RingHash => Picker::RingHash(RingHash::new(members)),
            Policy::Maglev => Picker::Maglev(Maglev::new(members)),
        }
    }

    /// `loads` is indexed by [`EndpointIdx`].
    pub(super) fn pick(&self, ctx: &PickContext<'_>, loads: &[Arc<EndpointLoad>]) -> Option<EndpointIdx> {
        match self {
            Picker::RoundRobin(p) => p.pick(ctx),
            Picker::WeightedRoundRobin(p) => p.pick(ctx),
            Picker::LeastRequest(p) => p.pick(ctx, loads),
            Picker::PeakEwma(p) => p.pick(ctx, loads),
            Picker::RingHash(p) => p.pick(ctx, loads),
            Picker::Maglev(p) => p.pick(ctx, loads),
        }
    }
}
