//! Round robin: every available endpoint in turn, weights ignored.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{EndpointIdx, Member, PickContext};

/// See the module docs.
#[derive(Debug)]
pub(super) struct RoundRobin {
    members: Vec<EndpointIdx>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        RoundRobin {
            members: members.iter().map(|m| m.idx).collect(),
            // A random starting point, so that sidecars started together (or a
            // balancer rebuilt on every sidecar at once after a discovery
            // change) do not all send their next request to the same endpoint.
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    /// The next available endpoint after the last one picked.
    pub(super) fn pick(&self, ctx: &PickContext<'_>) -> Option<EndpointIdx> {
        let n = self.members.len();
        for _ in 0..n {
            let idx = self.members[self.next.fetch_add(1, Ordering::Relaxed) % n];
            if ctx.is_available(idx) {
                return Some(idx);
            }
        }
        None
    }
}
