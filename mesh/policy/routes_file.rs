//! The route format: TOML (a routes file, or the `[[route]]` tables of a
//! gateway's policy document) → [`RouteTable`], validated, with errors naming
//! file, line and field. Control validates policy documents with
//! [`from_tables`]; the gateway builds its table with the same functions.
//!
//! ```toml
//! [[route]]
//! name = "users-v1"
//! path_prefix = "/api/v1/users"      # or path = "/exact", or path_pattern = "/users/{id}"
//! rewrite = "/users"                 # prefix replacement ("" strips), or a {param} template
//! methods = ["GET", "POST"]          # optional
//! host = "api.example.com"           # optional; "*.example.com" for subdomains
//! headers = { "x-canary" = "1" }     # optional, exact values
//! service = "users"
//! subset = { version = "2" }         # optional: instances with this metadata
//! timeout = "5s"                     # optional
//! retry_attempts = 2                 # optional, attempts in total (1: no retry)
//! request_headers_set = { "x-gateway" = "redfire" }
//! request_headers_remove = ["cookie"]
//! response_headers_set = {}
//! response_headers_remove = ["server"]
//! transcode = true                   # optional: HTTP/JSON → gRPC (google.api.http)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use toml::Spanned;

use crate::mesh::policy::route::{HeaderEdits, PathMatch, Rewrite, Route, RouteTable, Segment, parse_pattern};
use crate::mesh::registry::validate_service_name;

/// A routes file could not be used; the message names file, line and field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {field}: {message}")]
pub struct RoutesError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The field (or `route` for the whole entry).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<String>,
    path_prefix: Option<String>,
    path: Option<String>,
    path_pattern: Option<String>,
    rewrite: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    service: Option<String>,
    #[serde(default)]
    subset: BTreeMap<String, String>,
    timeout: Option<String>,
    retry_attempts: Option<u32>,
    #[serde(default)]
    request_headers_set: BTreeMap<String, String>,
    #[serde(default)]
    request_headers_remove: Vec<String>,
    #[serde(default)]
    response_headers_set: BTreeMap<String, String>,
    #[serde(default)]
    response_headers_remove: Vec<String>,
    #[serde(default)]
    transcode: bool,
}

/// Reads and validates `path` into a table tagged `version`.
pub fn load(path: &Path, version: u64) -> Result<RouteTable, RoutesError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| RoutesError {
        file: file.clone(),
        line: 0,
        field: "routes".into(),
        message: e.to_string(),
    })?;
    parse(&file, &text, version)
}

/// Builds a table from the `[[route]]` tables of a policy document (the
/// gateway's routes from control's policy stream); errors read
/// `route[<i>].<field>: <message>`.
pub fn from_tables(tables: &[toml::Table], version: u64, source: &str) -> Result<RouteTable, String> {
    let mut routes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, t) in tables.iter().enumerate() {
        let raw = RawRoute::deserialize(toml::Value::Table(t.clone())).map_err(|e| format!("route[{i}]: {e}"))?;
        let route = convert(raw, i).map_err(|(f, m)| format!("route[{i}].{f}: {m}"))?;
        if !names.insert(route.name.clone()) {
            return Err(format!("route[{i}].name: {:?} is used by an earlier route", route.name));
        }
        routes.push(route);
    }
    Ok(RouteTable { version, source: source.into(), routes })
}

/// Parses routes from `text` (named `file` in errors).
pub fn parse(file: &str, text: &str, version: u64) -> Result<RouteTable, RoutesError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let parsed: File = toml::from_str(text).map_err(|e| RoutesError {
        file: file.into(),
        line: e.span().map(|s| line_of(s.start)).unwrap_or(0),
        field: "toml".into(),
        message: e.message().to_string(),
    })?;
    let mut routes = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, spanned) in parsed.route.into_iter().enumerate() {
        let line = line_of(spanned.span().start);
        let fail = |field: &str, message: String| RoutesError { file: file.into(), line, field: field.into(), message };
        let route = convert(spanned.into_inner(), i).map_err(|(f, m)| fail(f, m))?;
        if !names.insert(route.name.clone()) {
            return Err(fail("name", format!("{:?} is used by an earlier route", route.name)));
        }
        routes.push(route);
    }
    Ok(RouteTable { version, source: file.into(), routes })
}

type FieldError = (&'static str, String);

fn header_name(field: &'static str, n: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| (field, format!("{n:?} is not a header name")))
}

fn header_pairs(
    field: &'static str,
    m: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, FieldError> {
    m.into_iter()
        .map(|(k, v)| {
            let value = HeaderValue::from_str(&v).map_err(|_| (field, format!("{v:?} is not a header value")))?;
            Ok((header_name(field, &k)?, value))
        })
        .collect()
}

fn convert(r: RawRoute, index: usize) -> Result<Route, FieldError> {
    let path = match (r.path_prefix, r.path, r.path_pattern) {
        (Some(p), None, None) => PathMatch::Prefix(absolute("path_prefix", p)?),
        (None, Some(p), None) => PathMatch::Exact(absolute("path", p)?),
        (None, None, Some(p)) => PathMatch::Pattern(parse_pattern(&p).map_err(|e| ("path_pattern", e))?),
        _ => return Err(("path_prefix", "give exactly one of path_prefix, path, path_pattern".into())),
    };
    let rewrite = match (r.rewrite, &path) {
        (None, _) => Rewrite::None,
        (Some(t), PathMatch::Pattern(segs)) => {
            let names: Vec<&str> = segs
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) => Some(n.as_str()),
                    _ => None,
                })
                .collect();
            let mut rest = t.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..].find('}').ok_or(("rewrite", format!("{t:?}: unclosed {{")))?;
                let name = &rest[start + 1..start + end];
                if !names.contains(&name) {
                    return Err(("rewrite", format!("{t:?} uses {{{name}}}, which path_pattern does not capture")));
                }
                rest = &rest[start + end + 1..];
            }
            Rewrite::Template(absolute("rewrite", t)?)
        }
        (Some(t), _) if t.is_empty() => Rewrite::Prefix(t),
        (Some(t), _) => Rewrite::Prefix(absolute("rewrite", t)?),
    };
    let service = r.service.ok_or(("service", "missing: the service this route forwards to".to_string()))?;
    validate_service_name(&service).map_err(|e| ("service", e))?;
    let methods = r
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ("methods", format!("{m:?} is not a method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if r.subset.len() > 1 {
        return Err(("subset", "at most one key = value".into()));
    }
    let timeout = match r.timeout {
        None => None,
        Some(t) => match humantime::parse_duration(&t) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => return Err(("timeout", format!("{t:?} is not a duration above 0 like 500ms or 5s"))),
        },
    };
    let retry_attempts = match r.retry_attempts {
        None => None,
        Some(n @ 1..=5) => Some(n),
        Some(n) => return Err(("retry_attempts", format!("{n} is not in 1..=5"))),
    };
    let host = match r.host {
        Some(h) if h.is_empty() || h.contains(['/', ' ', ':']) => {
            return Err(("host", format!("{h:?} is not a host name (no port, no scheme)")));
        }
        h => h.map(|h| h.to_ascii_lowercase()),
    };
    Ok(Route {
        name: r.name.unwrap_or_else(|| format!("route-{index}")),
        host,
        path,
        methods,
        headers: header_pairs("headers", r.headers)?,
        rewrite,
        request_headers: HeaderEdits {
            set: header_pairs("request_headers_set", r.request_headers_set)?,
            remove: r
                .request_headers_remove
                .iter()
                .map(|h| header_name("request_headers_remove", h))
                .collect::<Result<_, _>>()?,
        },
        response_headers: HeaderEdits {
            set: header_pairs("response_headers_set", r.response_headers_set)?,
            remove: r
                .response_headers_remove
                .iter()
                .map(|h| header_name("response_headers_remove", h))
                .collect::<Result<_, _>>()?,
        },
        service,
        subset: r.subset.into_iter().next(),
        timeout,
        retry_attempts,
        transcode: r.transcode,
    })
}

fn absolute(field: &'static str, p: String) -> Result<String, FieldError> {
    if p.starts_with('/') { Ok(p) } else { Err((field, format!("{p:?} must start with /"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_route_parses() {
        let t = parse(
            "r.toml",
            r#"
[[route]]
name = "users"
path_prefix = "/api/v1/users"
rewrite = "/users"
methods = ["get"]
service = "users"
subset = { version = "2" }
timeout = "5s"
retry_attempts = 1
request_headers_set = { "X-Gateway" = "redfire" }
response_headers_remove = ["server"]

[[route]]
path_pattern = "/u/{id}"
rewrite = "/users/{id}"
service = "users"
"#,
            3,
        )
        .unwrap();
        assert_eq!(t.version, 3);
        assert_eq!(t.routes.len(), 2);
        let r = &t.routes[0];
        assert_eq!(r.methods, vec![Method::GET]);
        assert_eq!(r.subset, Some(("version".into(), "2".into())));
        assert_eq!(r.retry_attempts.unwrap(), 1);
        assert_eq!(r.request_headers.set[0].0, "x-gateway");
        assert_eq!(t.routes[1].name, "route-1");
    }

    #[test]
    fn the_sample_in_deploy_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/gateway-routes.toml"));
        let t = load(path, 1).unwrap();
        assert_eq!(t.routes.len(), 3);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            ("[[route]]\nservice = \"users\"\n", 1, "path_prefix"),
            (
                "[[route]]\npath = \"/a\"\nservice = \"users\"\n\n[[route]]\npath = \"/b\"\nservice = \"Bad_Name\"\n",
                5,
                "service",
            ),
            ("[[route]]\npath = \"/a\"\nservice = \"u\"\ntimeout = \"soon\"\n", 1, "timeout"),
            ("[[route]]\npath_pattern = \"/a/{id}\"\nrewrite = \"/b/{x}\"\nservice = \"u\"\n", 1, "rewrite"),
            ("[[route]]\npath = \"/a\"\nservice = \"u\"\nmethods = [\"GE T\"]\n", 1, "methods"),
            ("\n\n[[route]]\npath = \"/a\"\nservice = \"u\"\nbogus = 1\n", 6, "toml"),
            (
                "[[route]]\nname = \"x\"\npath = \"/a\"\nservice = \"u\"\n[[route]]\nname = \"x\"\npath = \"/b\"\nservice = \"u\"\n",
                5,
                "name",
            ),
        ];
        for (text, line, field) in cases {
            let e = parse("r.toml", text, 1).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
            assert!(e.to_string().starts_with(&format!("r.toml:{line}: {field}: ")), "{e}");
        }
    }
}
