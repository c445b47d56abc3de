//! Path normalisation before any policy decision (RELIABILITY.md row 14):
//! percent-decoding, `//` collapsed, `.` and `..` segments resolved. The
//! normalised path is the one authorised *and* the one forwarded to the app,
//! so the app can never be asked for a path the policy did not see.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Bytes re-encoded when the normalised path is forwarded.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Why a path cannot be normalised (the request gets 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    /// Decodes to a NUL byte or to bytes that are not UTF-8.
    #[error("the path decodes to a NUL byte or invalid UTF-8")]
    BadBytes,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` strictly (a bad escape is an error, not passed through).
fn decode(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) else {
                return Err(PathError::BadEscape);
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return Err(PathError::BadBytes);
    }
    String::from_utf8(out).map_err(|_| PathError::BadBytes)
}

/// The normalised, decoded path of `raw` (a request path without query).
/// Always starts with `/`; a trailing `/` is kept.
pub fn normalise(raw: &str) -> Result<String, PathError> {
    let decoded = decode(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// `uri`'s path normalised: the decoded normal path, and the path and query
/// to forward instead of the request's (`None` when they are the same).
pub fn normalise_uri(uri: &http::Uri) -> Result<(String, Option<String>), PathError> {
    let raw = uri.path();
    let path = normalise(raw)?;
    let encoded = encode(&path);
    let forward = (encoded != raw).then(|| match uri.query() {
        Some(q) => format!("{encoded}?{q}"),
        None => encoded,
    });
    Ok((path, forward))
}

/// `path` (normalised) encoded for the request line.
pub fn encode(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

/// True when `pattern` (`/exact`, `/prefix/*` or `*`) matches `path`.
pub fn matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => {
            path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
        None => path == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoded_dotted_and_doubled_paths_resolve() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E%2Fadmin", "/admin"),
            ("/public/..%2fadmin", "/admin"),
            ("//admin//users", "/admin/users"),
            ("/./admin/./x/", "/admin/x/"),
            ("/a/b/..", "/a/"),
            ("/../../../etc/passwd", "/etc/passwd"),
            ("/%61dmin", "/admin"),
            ("/orders.v1.Orders/Place", "/orders.v1.Orders/Place"),
            ("/caf%C3%A9", "/café"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw).unwrap(), want, "{raw}");
        }
        assert_eq!(normalise("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalise("/a%00b"), Err(PathError::BadBytes));
        assert_eq!(normalise("/a%ff"), Err(PathError::BadBytes));
    }

    #[test]
    fn forwarded_form_decodes_back_to_the_authorised_path() {
        for p in ["/a%20b/%25/%3F%23", "/caf%C3%A9/x", "/plain/path", "/%5C%5B%5D"] {
            let n = normalise(p).unwrap();
            assert_eq!(normalise(&encode(&n)).unwrap(), n, "{p}");
        }
    }

    #[test]
    fn pattern_matching() {
        assert!(matches("*", "/anything"));
        assert!(matches("/admin/*", "/admin"));
        assert!(matches("/admin/*", "/admin/x/y"));
        assert!(!matches("/admin/*", "/administrator"));
        assert!(matches("/*", "/x"));
        assert!(matches("/a", "/a"));
        assert!(!matches("/a", "/a/"));
    }

    proptest! {
        #![proptest_config(crate::proptest_config(512))]
        /// Peer input: any string normalises or is refused, never panics.
        #[test]
        fn any_path_normalises_or_is_refused(raw in "\\PC{0,64}") {
            if let Ok(n) = normalise(&raw) {
                prop_assert!(n.starts_with('/'));
            }
        }

        #[test]
        fn normalising_is_idempotent_and_leaves_no_dot_segments(raw in "(/|%2[eEfF]|\\.|a|%41|/\\.\\.){0,16}") {
            if let Ok(n) = normalise(&raw) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
                prop_assert_eq!(normalise(&encode(&n)).unwrap(), n.clone());
            }
        }
    }
}
