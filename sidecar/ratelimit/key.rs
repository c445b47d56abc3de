//! What a limit is counted per: the client IP (behind a known number of
//! trusted proxies), a JWT claim, an API-key header, the route, or a
//! combination; and the path normalisation used to match rules.
//!
//! A request's key material is hashed with SHA-256 together with the rule
//! name and algorithm, so store keys are fixed-size (an attacker cannot grow
//! them), Redis never holds API keys or user ids in clear, and two rules or
//! algorithms never share state by accident.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::digest::{SHA256, digest};

use super::RequestFacts;
use crate::mesh::policy::ratelimit::KeyPart;

/// A store key: the first 16 bytes of SHA-256(rule, algorithm, key material).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// Lower-case hex, for Redis key names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Stands for an absent claim or header: every request without it shares
/// one limit (absence must not be a way around the limit).
const MISSING: &[u8] = b"\x00missing";

/// The store key of `facts` under a rule. `route` is used when the request
/// carries no route name.
pub fn derive(rule: &str, algorithm: &str, parts: &[KeyPart], facts: &RequestFacts<'_>, hops: u32, route: &str) -> Key {
    let mut material = Vec::with_capacity(64);
    push(&mut material, rule.as_bytes());
    push(&mut material, algorithm.as_bytes());
    for part in parts {
        match part {
            KeyPart::ClientIp => {
                push(&mut material, client_ip(facts.headers, facts.peer_ip, hops).to_string().as_bytes())
            }
            KeyPart::Claim(name) => match facts.claims.and_then(|c| c.get(name)) {
                Some(serde_json::Value::String(s)) => push(&mut material, s.as_bytes()),
                Some(other) => push(&mut material, other.to_string().as_bytes()),
                None => push(&mut material, MISSING),
            },
            KeyPart::Header(name) => {
                let mut values = facts.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    push(&mut material, MISSING);
                }
                for v in values {
                    push(&mut material, v.as_bytes());
                }
            }
            KeyPart::Route => push(&mut material, facts.route.unwrap_or(route).as_bytes()),
            KeyPart::Global => push(&mut material, b"global"),
        }
    }
    let d = digest(&SHA256, &material);
    let mut key = [0u8; 16];
    key.copy_from_slice(&d.as_ref()[..16]);
    Key(key)
}

/// Length-prefixed, so no two different part lists give the same bytes.
fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The client's IP. With `hops` trusted proxies in front of this one, each
/// appending the address it saw to `X-Forwarded-For`, the client is the
/// `hops`-th entry from the right: entries left of it were written by the
/// client and are ignored. With `hops = 0`, or fewer entries than `hops`
/// (the request did not come through the proxies), or an entry that is not
/// an address, the peer address of the connection is used.
pub fn client_ip(headers: &http::HeaderMap, peer: IpAddr, hops: u32) -> IpAddr {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let hops = hops as usize;
    if entries.len() < hops {
        return peer;
    }
    let entry = entries[entries.len() - hops];
    entry.parse::<IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip())).unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_takes_the_entry_of_the_outermost_trusted_proxy() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        assert_eq!(client_ip(&h, peer, 0), peer, "no trusted proxy: XFF is the client's own claim");
        assert_eq!(client_ip(&h, peer, 1), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&h, peer, 2), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&h, peer, 4), peer, "fewer entries than hops");
        let mut bad = http::HeaderMap::new();
        bad.insert("x-forwarded-for", "not-an-ip, [::1]:80".parse().unwrap());
        assert_eq!(client_ip(&bad, peer, 1), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(&bad, peer, 2), peer);
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// X-Forwarded-For comes from peers: any input gives an address,
        /// never a panic.
        #[test]
        fn peer_input_never_panics(xff in "[0-9a-f.:, \\[\\]]{0,40}", hops in 0u32..4) {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
            let _ = client_ip(&h, IpAddr::from([10, 0, 0, 1]), hops);
        }
    }
}
