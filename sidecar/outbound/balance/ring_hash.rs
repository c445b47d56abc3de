//! Ketama-style consistent hashing: each endpoint owns points on a 64-bit
//! ring, in proportion to its weight (256 per 100 of weight, the registry's
//! default); a key goes to the first point at or after its hash. Where the
//! points fall depends only on the endpoint's id and how many it has depends
//! only on its own weight, so when one endpoint leaves only the keys on its
//! arcs move, and one that joins only takes keys.
//!
//! Lookups are a binary search over the points; the spread is coarser than
//! Maglev's (about ±20 % for an endpoint of the reference weight, more for
//! lighter ones) in exchange for exact stability.

use std::sync::Arc;

use super::hash::{hash, hash_nth};
use super::least_request::LeastRequest;
use super::load::EndpointLoad;
use super::{EndpointIdx, Member, PickContext};
use crate::mesh::registry::DEFAULT_WEIGHT;

/// Points for an endpoint of the reference weight: its share of the keys
/// then stays within about ±20 % of fair (the spread shrinks as 1/√points).
const POINTS_PER_ENDPOINT: u64 = 256;
/// Bounds the ring's memory (16 bytes a point) for very large services.
const MAX_POINTS: u64 = 1 << 20;

/// See the module docs.
#[derive(Debug)]
pub(super) struct RingHash {
    /// Sorted by hash.
    ring: Vec<(u64, EndpointIdx)>,
    /// For requests without a key.
    fallback: LeastRequest,
}

impl RingHash {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        let reference = reference_weight(members);
        let wanted: u64 = members.iter().map(|m| points(m.weight, reference, 1)).sum();
        // Scale down only when the ring would be too large (a few thousand
        // endpoints, or wildly uneven weights).
        let shrink = wanted.div_ceil(MAX_POINTS).max(1);
        let mut ring = Vec::with_capacity(usize::try_from(wanted / shrink).unwrap_or(0) + members.len());
        for m in members {
            let n = points(m.weight, reference, shrink);
            ring.extend((0..n).map(|i| (hash_nth(m.id.as_bytes(), i), m.idx)));
        }
        // Ties between two ids' points are broken by index; with 64-bit
        // hashes they do not happen in practice.
        ring.sort_unstable();
        RingHash { ring, fallback: LeastRequest::new(members) }
    }

    /// The owner of the first point at or after the key's hash, walking on
    /// past unavailable endpoints; without a key, least request.
    pub(super) fn pick(&self, ctx: &PickContext<'_>, loads: &[Arc<EndpointLoad>]) -> Option<EndpointIdx> {
        let Some(key) = ctx.hash_key() else { return self.fallback.pick(ctx, loads) };
        let h = hash(key);
        let start = self.ring.partition_point(|&(point, _)| point < h);
        let n = self.ring.len();
        // Walking on (rather than rehashing) keeps a key that lost its
        // endpoint to an ejection on one stable substitute, and spreads the
        // ejected endpoint's keys over the owners of the following points.
        (0..n).map(|step| self.ring[(start + step) % n].1).find(|&idx| ctx.is_available(idx))
    }
}

/// The weight that gets [`POINTS_PER_ENDPOINT`] points: the registry's
/// default weight, so that at the registry's scale each endpoint's points
/// depend on its own weight only, and an endpoint leaving or joining moves no
/// key between the others. A set whose weights are all below that is scaled
/// up to its largest weight, or its light endpoints would get a handful of
/// points and a very uneven share.
fn reference_weight(members: &[Member<'_>]) -> u64 {
    let largest = members.iter().map(|m| m.weight).max().unwrap_or(1);
    u64::from(largest.clamp(1, DEFAULT_WEIGHT))
}

/// Points for an endpoint of `weight`, at least one.
fn points(weight: u32, reference: u64, shrink: u64) -> u64 {
    let exact = u128::from(POINTS_PER_ENDPOINT) * u128::from(weight) / u128::from(reference * shrink);
    u64::try_from(exact).unwrap_or(MAX_POINTS).max(1)
}
