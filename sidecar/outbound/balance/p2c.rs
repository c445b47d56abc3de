//! Power of two choices: draw two distinct available endpoints at random and
//! take the cheaper one. Nearly as good as scanning for the least loaded, at
//! constant cost, and without every sidecar herding onto the same "best"
//! endpoint (Mitzenmacher; used by linkerd, Finagle and Envoy).

use super::{EndpointIdx, Member, PickContext};

/// Random draws before giving up on luck and scanning for what is available.
/// With at most half the endpoints ejected, eight misses in a row happen on
/// one pick in 256.
const DRAWS: usize = 8;

/// How candidates are drawn.
#[derive(Debug)]
enum Sampling {
    /// Every endpoint equally likely; the cost function accounts for weight.
    Uniform,
    /// In proportion to weight: `starts[i]` is the sum of the weights
    /// before member `i`.
    Weighted { starts: Vec<u64>, total: u64 },
}

/// A power-of-two-choices chooser over a fixed set of members.
#[derive(Debug)]
pub(super) struct P2c {
    members: Vec<(EndpointIdx, u32)>,
    sampling: Sampling,
}

impl P2c {
    /// Candidates drawn uniformly (`weighted == false`) or by weight.
    pub(super) fn new(members: &[Member<'_>], weighted: bool) -> Self {
        let sampling = if weighted {
            let mut starts = Vec::with_capacity(members.len());
            let total = members.iter().fold(0, |sum, m| {
                starts.push(sum);
                sum + u64::from(m.weight)
            });
            Sampling::Weighted { starts, total }
        } else {
            Sampling::Uniform
        };
        P2c { members: members.iter().map(|m| (m.idx, m.weight)).collect(), sampling }
    }

    /// The cheaper of two distinct available candidates by `cost(endpoint,
    /// weight)`; the first drawn on a tie. `None` only when no member is
    /// available.
    pub(super) fn pick(&self, ctx: &PickContext<'_>, cost: impl Fn(EndpointIdx, u32) -> f64) -> Option<EndpointIdx> {
        let a = self.draw(ctx, None);
        let b = a.and_then(|a| self.draw(ctx, Some(a)));
        match (a, b) {
            (Some(a), Some(b)) => Some(self.cheaper(a, b, &cost)),
            _ => self.pick_scanning(ctx, &cost),
        }
    }

    fn cheaper(&self, a: usize, b: usize, cost: &impl Fn(EndpointIdx, u32) -> f64) -> EndpointIdx {
        let ((ia, wa), (ib, wb)) = (self.members[a], self.members[b]);
        if cost(ib, wb) < cost(ia, wa) { ib } else { ia }
    }

    /// A random available member other than `not`, by position.
    fn draw(&self, ctx: &PickContext<'_>, not: Option<usize>) -> Option<usize> {
        let n = self.members.len();
        if n == 0 || (not.is_some() && n < 2) {
            return None;
        }
        for _ in 0..DRAWS {
            let i = match (&self.sampling, not) {
                // Draw among the other n - 1 directly rather than retrying.
                (Sampling::Uniform, Some(not)) => {
                    let i = fastrand::usize(..n - 1);
                    if i >= not { i + 1 } else { i }
                }
                (Sampling::Uniform, None) => fastrand::usize(..n),
                (Sampling::Weighted { starts, total }, _) => weighted_position(starts, *total)?,
            };
            if Some(i) != not && ctx.is_available(self.members[i].0) {
                return Some(i);
            }
        }
        None
    }

    /// Luck ran out: draw among the members that are available right now.
    fn pick_scanning(&self, ctx: &PickContext<'_>, cost: &impl Fn(EndpointIdx, u32) -> f64) -> Option<EndpointIdx> {
        let weight = |i: usize| match self.sampling {
            Sampling::Uniform => 1,
            Sampling::Weighted { .. } => u64::from(self.members[i].1),
        };
        let mut up: Vec<usize> = (0..self.members.len()).filter(|&i| ctx.is_available(self.members[i].0)).collect();
        let a = pick_one(&up, &weight)?;
        up.retain(|&i| i != a);
        Some(match pick_one(&up, &weight) {
            Some(b) => self.cheaper(a, b, cost),
            None => self.members[a].0,
        })
    }
}

/// One of `positions`, drawn in proportion to `weight`.
fn pick_one(positions: &[usize], weight: &impl Fn(usize) -> u64) -> Option<usize> {
    let mut starts = Vec::with_capacity(positions.len());
    let total = positions.iter().fold(0, |sum, &i| {
        starts.push(sum);
        sum + weight(i)
    });
    weighted_position(&starts, total).map(|p| positions[p])
}

/// A random position, each with probability (its weight) / `total`, given
/// the running sums of the weights before each position.
fn weighted_position(starts: &[u64], total: u64) -> Option<usize> {
    if starts.is_empty() || total == 0 {
        return None;
    }
    let x = fastrand::u64(..total);
    // The last start at or below x owns x.
    Some(starts.partition_point(|&s| s <= x) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member<'static>> {
        weights.iter().enumerate().map(|(i, &weight)| Member { idx: EndpointIdx::new(i), weight, id: "" }).collect()
    }

    #[test]
    fn weighted_position_follows_the_weights() {
        fastrand::seed(7);
        let starts = [0, 1, 4]; // weights 1, 3, 6
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[weighted_position(&starts, 10).expect("non-empty")] += 1;
        }
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
        assert!((2700..3300).contains(&counts[1]), "{counts:?}");
        assert!((5600..6400).contains(&counts[2]), "{counts:?}");
        assert_eq!(weighted_position(&[], 0), None);
    }

    #[test]
    fn picks_the_cheaper_candidate_and_never_the_most_expensive() {
        fastrand::seed(1);
        let p2c = P2c::new(&members(&[1, 1, 1, 1]), false);
        let ctx = PickContext::new();
        for _ in 0..1000 {
            let picked = p2c.pick(&ctx, |i, _| i.index() as f64).expect("available");
            assert_ne!(picked.index(), 3, "the costliest endpoint loses every pair it is in");
        }
    }

    #[test]
    fn scans_when_almost_everything_is_unavailable() {
        fastrand::seed(3);
        let p2c = P2c::new(&members(&[5; 100]), true);
        let only = |i: EndpointIdx| i.index() == 97;
        let ctx = PickContext::new().with_filter(&only);
        for _ in 0..100 {
            assert_eq!(p2c.pick(&ctx, |_, _| 0.0), Some(EndpointIdx::new(97)));
        }
        let none = |_: EndpointIdx| false;
        assert_eq!(p2c.pick(&PickContext::new().with_filter(&none), |_, _| 0.0), None);
    }
}
