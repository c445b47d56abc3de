//! The hash behind consistent hashing: 64-bit FNV-1a, then murmur3's
//! 64-bit finalizer to spread FNV's weak high bits over the whole range.
//!
//! Not `std`'s hasher: every sidecar must place endpoints and keys at the same
//! points, on every build, so the function is fixed here and covered by a
//! test with known values.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of `bytes`.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    fmix64(fnv(FNV_OFFSET, bytes))
}

/// The hash of `bytes` followed by `n`: the `n`th point of one name (a
/// virtual node on the ring, a Maglev offset or skip).
pub(super) fn hash_nth(bytes: &[u8], n: u64) -> u64 {
    fmix64(fnv(fnv(FNV_OFFSET, bytes), &n.to_le_bytes()))
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_across_builds() {
        // FNV-1a("a") is 0xaf63dc4c8601ec8c; these pin the whole function so
        // a change that would remap every key fails here first.
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b""), fmix64(FNV_OFFSET));
        assert_eq!(hash(b"user-42"), 0xa395_32c7_ab05_1e8d);
        assert_eq!(hash_nth(b"orders/a", 1), 0x7265_dc6e_5ad7_2bf6);
        assert_ne!(hash_nth(b"orders/a", 0), hash_nth(b"orders/a", 1));
    }

    #[test]
    fn high_bits_spread_for_similar_keys() {
        // Keys that differ in one trailing character land in all 16 top-4-bit
        // buckets (plain FNV would cluster them).
        let mut buckets = [0u32; 16];
        for i in 0..1600 {
            buckets[(hash(format!("user-{i}").as_bytes()) >> 60) as usize] += 1;
        }
        assert!(buckets.iter().all(|&c| (60..140).contains(&c)), "{buckets:?}");
    }
}
