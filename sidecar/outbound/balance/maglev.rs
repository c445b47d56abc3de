//! Maglev consistent hashing (Google's Maglev paper, weighted as in Envoy):
//! a lookup table of prime size M where each endpoint fills slots in the
//! order of its own pseudo-random permutation, taking turns in proportion to
//! weight. Lookups are one array access; the table is nearly evenly split;
//! when an endpoint leaves, the others keep almost all of their slots.

use std::sync::Arc;

use super::hash::{hash, hash_nth};
use super::least_request::LeastRequest;
use super::load::EndpointLoad;
use super::{EndpointIdx, Member, PickContext};

/// Table sizes, each prime. The paper wants M ≫ N (at least 100 × N keeps
/// each endpoint's share within ~1 % of fair); the smallest that fits is used.
pub(super) const TABLE_SIZES: [u64; 5] = [65_537, 131_071, 262_139, 524_287, 1_048_573];

/// Slots tried past an unavailable endpoint's before falling back to a scan.
const PROBES: usize = 64;

/// See the module docs.
#[derive(Debug)]
pub(super) struct Maglev {
    /// Slot → endpoint.
    table: Vec<EndpointIdx>,
    /// For requests without a key, and for keys whose slot and the slots
    /// after it all belong to unavailable endpoints.
    fallback: LeastRequest,
}

impl Maglev {
    pub(super) fn new(members: &[Member<'_>]) -> Self {
        let want = 100 * members.len() as u64;
        let size = TABLE_SIZES.iter().copied().find(|&m| m >= want).unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1]);
        // Filling is order-dependent; sorting by id gives every sidecar the
        // same table whatever order discovery listed the endpoints in.
        let mut sorted = members.to_vec();
        sorted.sort_unstable_by_key(|m| m.id);
        Maglev { table: populate(&sorted, size), fallback: LeastRequest::new(members) }
    }

    /// The slot's endpoint for the key's hash, else the endpoints of the
    /// following slots (stable per key while the ejection lasts); without a
    /// key, least request.
    pub(super) fn pick(&self, ctx: &PickContext<'_>, loads: &[Arc<EndpointLoad>]) -> Option<EndpointIdx> {
        let Some(key) = ctx.hash_key() else { return self.fallback.pick(ctx, loads) };
        if self.table.is_empty() {
            return None;
        }
        let m = self.table.len();
        let slot = (hash(key) % m as u64) as usize;
        (0..PROBES.min(m))
            .map(|step| self.table[(slot + step) % m])
            .find(|&idx| ctx.is_available(idx))
            .or_else(|| self.fallback.pick(ctx, loads))
    }
}

/// Per endpoint: where its permutation starts, its stride, and how far along
/// it is; plus Envoy's weight bookkeeping.
struct Filler {
    idx: EndpointIdx,
    offset: u64,
    skip: u64,
    next: u64,
    weight: u64,
    target: u64,
}

/// Fill all `size` slots. In round `r` an endpoint of weight w takes a turn
/// only if `r × w ≥ its target`, and each turn raises its target by the
/// largest weight: the heaviest endpoint takes a slot every round, one of a
/// third of that weight every third round.
fn populate(members: &[Member<'_>], size: u64) -> Vec<EndpointIdx> {
    let Some(max_weight) = members.iter().map(|m| u64::from(m.weight)).max() else { return Vec::new() };
    let mut fillers: Vec<Filler> = members
        .iter()
        .map(|m| Filler {
            idx: m.idx,
            offset: hash_nth(m.id.as_bytes(), 0) % size,
            skip: hash_nth(m.id.as_bytes(), 1) % (size - 1) + 1,
            next: 0,
            weight: u64::from(m.weight),
            target: 0,
        })
        .collect();
    let mut table: Vec<Option<EndpointIdx>> = vec![None; size as usize];
    let mut filled = 0;
    let mut round = 1u64;
    while filled < size {
        for f in fillers.iter_mut() {
            if filled == size {
                break;
            }
            if round * f.weight < f.target {
                continue;
            }
            f.target += max_weight;
            // Walk the permutation to this endpoint's next free slot. The
            // size is prime and 0 < skip < size, so the walk visits every slot.
            let mut slot = (f.offset + f.skip * f.next) % size;
            while table[slot as usize].is_some() {
                f.next += 1;
                slot = (f.offset + f.skip * f.next) % size;
            }
            table[slot as usize] = Some(f.idx);
            f.next += 1;
            filled += 1;
        }
        round += 1;
    }
    table.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_prime() {
        for m in TABLE_SIZES {
            assert!((2..).take_while(|d| d * d <= m).all(|d| m % d != 0), "{m} is not prime");
        }
    }

    #[test]
    fn weights_split_the_table() {
        let members: Vec<Member<'_>> = [("a", 1), ("b", 3)]
            .iter()
            .enumerate()
            .map(|(i, &(id, weight))| Member { idx: EndpointIdx::new(i), weight, id })
            .collect();
        let table = populate(&members, TABLE_SIZES[0]);
        assert_eq!(table.len() as u64, TABLE_SIZES[0]);
        let a = table.iter().filter(|i| i.index() == 0).count() as f64 / table.len() as f64;
        assert!((a - 0.25).abs() < 0.01, "a owns {a} of the table");
    }
}
