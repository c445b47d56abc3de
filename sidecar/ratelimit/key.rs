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
use http::HeaderName;

use super::RequestFacts;

/// A store key: the first 16 bytes of SHA-256(rule, algorithm, key material).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// Lower-case hex, for Redis key names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One component of a rule's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// The client IP: the peer address, or the entry of `X-Forwarded-For`
    /// added by the outermost trusted proxy (see [`client_ip`]).
    ClientIp,
    /// A top-level JWT claim (strings as they are, other JSON as JSON text).
    Claim(String),
    /// A request header such as an API key.
    Header(HeaderName),
    /// The route name (the rule's path prefix when the request has none).
    Route,
    /// Nothing: one limit shared by every request the rule matches.
    Global,
}

impl KeyPart {
    /// Parses `ip`, `route`, `global`, `claim:<name>` or `header:<name>`.
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        match s {
            "ip" => Ok(KeyPart::ClientIp),
            "route" => Ok(KeyPart::Route),
            "global" => Ok(KeyPart::Global),
            _ => {
                if let Some(claim) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                    Ok(KeyPart::Claim(claim.to_string()))
                } else if let Some(h) = s.strip_prefix("header:") {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(KeyPart::Header)
                        .map_err(|_| format!("{h:?} is not a valid header name"))
                } else {
                    Err(format!("{s:?} is not a key: use ip, route, global, claim:<name> or header:<name>"))
                }
            }
        }
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

/// The path rules are matched against: the query dropped, `//` collapsed,
/// `.` and `..` segments resolved, and percent-encoded unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §6.2.2.2) decoded, so `/api/%761//./x`
/// is limited as `/api/v1/x`. Other escapes (such as `%2F`) stay encoded.
pub fn normalise(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = decode_unreserved(raw);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

fn decode_unreserved(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_string();
    }
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                i += 3;
                continue;
            }
        }
        // Not a decodable unreserved escape: keep the byte (the input is a
        // &str, so copying char by char keeps it valid UTF-8).
        let ch = seg[i..].chars().next().unwrap_or('%');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Segment-aware prefix match: `/api/v1` matches `/api/v1` and `/api/v1/x`,
/// not `/api/v10`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || path == prefix {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
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

    #[test]
    fn normalise_resolves_what_could_dodge_a_prefix() {
        assert_eq!(normalise("/api/v1/trading"), "/api/v1/trading");
        assert_eq!(normalise("//api/./v1/x/../trading?x=1"), "/api/v1/trading");
        assert_eq!(normalise("/api/%76%31/trading/"), "/api/v1/trading/");
        assert_eq!(normalise("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalise("/%"), "/%");
        assert_eq!(normalise("/%4"), "/%4");
        assert_eq!(normalise("/é%zz"), "/é%zz");
        assert_eq!(normalise(""), "/");
        assert_eq!(normalise("/../.."), "/");
    }

    proptest::proptest! {
        #![proptest_config(crate::sidecar::proptest_config(512))]

        /// Paths and X-Forwarded-For come from peers: any input gives a
        /// clean path (no `//`, no dot segments) or the peer address, never
        /// a panic.
        #[test]
        fn peer_input_never_panics(path in "[/.%a-zA-Z0-9é?#]{0,40}", xff in "[0-9a-f.:, \\[\\]]{0,40}", hops in 0u32..4) {
            let p = normalise(&path);
            proptest::prop_assert!(p.starts_with('/'));
            proptest::prop_assert!(!p.contains("//"));
            proptest::prop_assert!(p.split('/').all(|s| s != "." && s != ".."));
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
            let _ = client_ip(&h, IpAddr::from([10, 0, 0, 1]), hops);
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/api/v1", "/api/v1"));
        assert!(path_matches("/api/v1", "/api/v1/orders"));
        assert!(!path_matches("/api/v1", "/api/v10"));
        assert!(path_matches("/api/", "/api/x"));
        assert!(path_matches("/", "/anything"));
    }
}
