//! The route table of the policy language: pure data and pure matching, no
//! I/O. [`super::routes_file`] builds it from a routes file or from the
//! `[[route]]` tables of a policy document (control validates with the same
//! function); the gateway (`crate::sidecar::gateway`) swaps a whole table in
//! behind an `ArcSwap`, so the request path only reads snapshots. Routes are
//! tried in order; the first whose every condition holds wins.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// How a route matches the request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The path is this prefix or continues it at a `/` (`/api` matches
    /// `/api` and `/api/x`, not `/apix`). `/` matches everything.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// Segments, literal or `{param}` (one whole segment each).
    Pattern(Vec<Segment>),
}

/// One segment of a [`PathMatch::Pattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this.
    Literal(String),
    /// Any non-empty segment, captured under this name.
    Param(String),
}

/// How the matched path is rewritten before forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the path as is.
    None,
    /// Replace the matched prefix (or the whole exact path) by this; `""` strips it.
    Prefix(String),
    /// A template for pattern routes: `{param}` is replaced by the captured segment.
    Template(String),
}

/// Header changes applied on the way through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set (replacing any value).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits: removals first, then sets.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for h in &self.remove {
            headers.remove(h);
        }
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
    }
}

/// One route.
#[derive(Clone, Debug)]
pub struct Route {
    /// Name (metrics label, `/admin/routes`).
    pub name: String,
    /// Host to match (without port, lower case); `*.example.com` matches
    /// any subdomain; `None` matches every host.
    pub host: Option<String>,
    /// Path condition.
    pub path: PathMatch,
    /// Methods; empty matches every method.
    pub methods: Vec<Method>,
    /// Headers that must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Request header edits.
    pub request_headers: HeaderEdits,
    /// Response header edits.
    pub response_headers: HeaderEdits,
    /// Target service.
    pub service: String,
    /// Only instances with this metadata key = value.
    pub subset: Option<(String, String)>,
    /// Total timeout (gRPC's `grpc-timeout` applies too, whichever is shorter).
    pub timeout: Option<Duration>,
    /// Attempts in total (1..=5, the first included); `None` uses the
    /// mesh default retry policy.
    pub retry_attempts: Option<u32>,
    /// HTTP/JSON requests are transcoded to gRPC (`google.api.http`
    /// bindings from `gateway_descriptors`); gRPC and gRPC-Web pass as usual.
    pub transcode: bool,
}

/// A route table and the version it was loaded as.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Increases with every successful load.
    pub version: u64,
    /// Where it came from (file path, or the policy stream).
    pub source: String,
    /// The routes, tried in order.
    pub routes: Vec<Route>,
}

/// The winning route and the rewritten path (query excluded).
#[derive(Debug)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// Path to forward.
    pub path: String,
}

impl RouteTable {
    /// The first route matching the request, with its rewritten path.
    pub fn find<'a>(
        &'a self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Matched<'a>> {
        let host = host.map(|h| strip_port(h).to_ascii_lowercase());
        self.routes
            .iter()
            .find_map(|r| r.matches(host.as_deref(), method, path, headers).map(|path| Matched { route: r, path }))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..=h.len()]).unwrap_or(host);
    }
    host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host)
}

impl Route {
    /// The forwarded path if this route matches.
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str, headers: &HeaderMap) -> Option<String> {
        if let Some(want) = &self.host {
            let host = host?;
            let ok = match want.strip_prefix("*.") {
                Some(domain) => {
                    host.len() > domain.len() + 1
                        && host.ends_with(domain)
                        && host[..host.len() - domain.len()].ends_with('.')
                }
                None => host == want,
            };
            if !ok {
                return None;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return None;
        }
        if !self.headers.iter().all(|(k, v)| headers.get_all(k).iter().any(|x| x == v)) {
            return None;
        }
        match &self.path {
            PathMatch::Exact(p) => (path == p).then(|| match &self.rewrite {
                Rewrite::Prefix(to) | Rewrite::Template(to) => non_empty(to.clone()),
                Rewrite::None => path.to_string(),
            }),
            PathMatch::Prefix(p) => {
                let rest = if p == "/" { Some(path) } else { path.strip_prefix(p.as_str()) }?;
                if p != "/" && !(rest.is_empty() || rest.starts_with('/') || p.ends_with('/')) {
                    return None;
                }
                Some(match &self.rewrite {
                    Rewrite::Prefix(to) | Rewrite::Template(to) => join(to, rest),
                    Rewrite::None => path.to_string(),
                })
            }
            PathMatch::Pattern(segs) => {
                let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
                if parts.len() != segs.len() {
                    return None;
                }
                let mut params = BTreeMap::new();
                for (seg, part) in segs.iter().zip(&parts) {
                    match seg {
                        Segment::Literal(l) if l == part => {}
                        Segment::Param(name) if !part.is_empty() => {
                            params.insert(name.as_str(), *part);
                        }
                        _ => return None,
                    }
                }
                Some(match &self.rewrite {
                    Rewrite::Template(t) | Rewrite::Prefix(t) => {
                        let mut out = t.clone();
                        for (k, v) in params {
                            out = out.replace(&format!("{{{k}}}"), v);
                        }
                        non_empty(out)
                    }
                    Rewrite::None => path.to_string(),
                })
            }
        }
    }
}

fn non_empty(p: String) -> String {
    if p.is_empty() { "/".into() } else { p }
}

/// `to` + `rest` with exactly one `/` between them.
fn join(to: &str, rest: &str) -> String {
    let out = match (to.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{to}{}", &rest[1..]),
        (false, false) if !rest.is_empty() && !to.is_empty() => format!("{to}/{rest}"),
        _ => format!("{to}{rest}"),
    };
    if out.starts_with('/') { out } else { format!("/{out}") }
}

/// Splits `/a/{b}/c` into segments; `Err` names what is wrong.
pub fn parse_pattern(p: &str) -> Result<Vec<Segment>, String> {
    let rest = p.strip_prefix('/').ok_or("must start with /")?;
    rest.split('/')
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Segment::Param(name.to_string()))
            }
            Some(_) => Err(format!("bad parameter segment {s:?}: use {{name}} with letters, digits, _")),
            None if s.contains(['{', '}']) => Err(format!("segment {s:?}: a parameter must be a whole segment")),
            None => Ok(Segment::Literal(s.to_string())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(path: PathMatch, rewrite: Rewrite) -> Route {
        Route {
            name: "r".into(),
            host: None,
            path,
            methods: vec![],
            headers: vec![],
            rewrite,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            service: "users".into(),
            subset: None,
            timeout: None,
            retry_attempts: None,
            transcode: false,
        }
    }

    fn m(r: &Route, path: &str) -> Option<String> {
        r.matches(None, &Method::GET, path, &HeaderMap::new())
    }

    #[test]
    fn prefix_matches_at_segment_boundaries_and_rewrites() {
        let r = route(PathMatch::Prefix("/api/v1".into()), Rewrite::Prefix("".into()));
        assert_eq!(m(&r, "/api/v1/users/42").as_deref(), Some("/users/42"));
        assert_eq!(m(&r, "/api/v1").as_deref(), Some("/"));
        assert_eq!(m(&r, "/api/v10"), None);
        let r = route(PathMatch::Prefix("/api/v1/users".into()), Rewrite::Prefix("/users".into()));
        assert_eq!(m(&r, "/api/v1/users/42").as_deref(), Some("/users/42"));
        let r = route(PathMatch::Prefix("/".into()), Rewrite::None);
        assert_eq!(m(&r, "/anything").as_deref(), Some("/anything"));
    }

    #[test]
    fn exact_and_pattern() {
        let r = route(PathMatch::Exact("/login".into()), Rewrite::Prefix("/v2/login".into()));
        assert_eq!(m(&r, "/login").as_deref(), Some("/v2/login"));
        assert_eq!(m(&r, "/login/x"), None);
        let r = route(
            PathMatch::Pattern(parse_pattern("/api/v1/users/{id}/orders/{order}").unwrap()),
            Rewrite::Template("/orders/{order}?user={id}".into()),
        );
        assert_eq!(m(&r, "/api/v1/users/42/orders/7").as_deref(), Some("/orders/7?user=42"));
        assert_eq!(m(&r, "/api/v1/users//orders/7"), None, "a parameter is never empty");
        assert_eq!(m(&r, "/api/v1/users/42/orders"), None);
        assert!(parse_pattern("/a/x{id}").is_err());
        assert!(parse_pattern("a/{id}").is_err());
    }

    #[test]
    fn host_method_and_headers() {
        let mut r = route(PathMatch::Prefix("/".into()), Rewrite::None);
        r.host = Some("*.example.com".into());
        r.methods = vec![Method::POST];
        r.headers = vec![(HeaderName::from_static("x-canary"), HeaderValue::from_static("1"))];
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        let t = RouteTable { version: 1, source: "t".into(), routes: vec![r] };
        assert!(t.find(Some("api.example.com:8000"), &Method::POST, "/x", &h).is_some());
        assert!(t.find(Some("example.com"), &Method::POST, "/x", &h).is_none());
        assert!(t.find(Some("evilexample.com"), &Method::POST, "/x", &h).is_none());
        assert!(t.find(Some("api.example.com"), &Method::GET, "/x", &h).is_none());
        assert!(t.find(Some("api.example.com"), &Method::POST, "/x", &HeaderMap::new()).is_none());
        assert!(t.find(None, &Method::POST, "/x", &h).is_none());
    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]
        /// A prefix route with a prefix rewrite forwards exactly the new
        /// prefix followed by what came after the old one.
        #[test]
        fn prefix_rewrite_keeps_the_rest(rest in "(/[a-z0-9]{1,5}){0,4}") {
            let r = route(PathMatch::Prefix("/api/v1".into()), Rewrite::Prefix("/svc".into()));
            let out = m(&r, &format!("/api/v1{rest}")).unwrap();
            prop_assert_eq!(out, format!("/svc{rest}"));
        }
    }
}
