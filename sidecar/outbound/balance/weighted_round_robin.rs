//! Smooth weighted round robin, the nginx algorithm: in every cycle of
//! (sum of weights) picks each endpoint is chosen exactly `weight` times,
//! spread out (weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`),
//! so a heavy endpoint never takes a burst of consecutive requests.

use std::sync::{Mutex, PoisonError};

use super::{EndpointIdx, Member, PickContext};

/// See the module docs.
#[derive(Debug)]
pub(super) struct SmoothWeighted {
    members: Vec<(EndpointIdx, i64)>,
    /// Each member's running "current weight". A short mutex: the pick is a
    /// loop over the members and never waits on anything else.
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        SmoothWeighted {
            members: members.iter().map(|m| (m.idx, i64::from(m.weight))).collect(),
            current: Mutex::new(vec![0; members.len()]),
        }
    }

    /// Every available member gains its weight; the one with the highest
    /// current weight is picked and pays back the total. Unavailable members
    /// neither gain nor pay, so the others share their turns by weight.
    pub(super) fn pick(&self, ctx: &PickContext<'_>) -> Option<EndpointIdx> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &(idx, weight)) in self.members.iter().enumerate() {
            if !ctx.is_available(idx) {
                continue;
            }
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(self.members[best].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example_sequence() {
        let ids = ["a", "b", "c"];
        let members: Vec<Member<'_>> = [5, 1, 1]
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member { idx: EndpointIdx::new(i), weight, id: ids[i] })
            .collect();
        let wrr = SmoothWeighted::new(&members);
        let ctx = PickContext::new();
        let picked: String = (0..7).map(|_| ids[wrr.pick(&ctx).expect("available").index()]).collect();
        assert_eq!(picked, "aabacaa");
    }
}
