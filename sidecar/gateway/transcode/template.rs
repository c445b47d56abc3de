//! `google.api.http` path templates: parsing and matching (pure).
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{user_id}` is `{user_id=*}`: one segment. `**` (zero or more segments)
//! may only be the last segment. A variable's value is its segments joined
//! by `/`, percent-decoded; a multi-segment value keeps `%2F` encoded so
//! the caller's slashes stay apart from the template's.

use percent_encoding::percent_decode_str;

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Exactly this text.
    Literal(String),
    /// `*`: any one non-empty segment.
    Any,
    /// `**`: zero or more segments (last only).
    Rest,
}

/// A variable: the field path it sets and the segments it spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Field names from the request message down (`user.id` → `["user", "id"]`).
    pub field_path: Vec<String>,
    /// First segment index.
    pub start: usize,
    /// One past the last segment index.
    pub end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The segments, variables flattened into them.
    pub segments: Vec<Segment>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
    /// The `:verb` suffix, if any.
    pub verb: Option<String>,
}

/// A variable bound by a match: field path and decoded value.
pub type Binding = (Vec<String>, String);

impl Template {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        let rest = text.strip_prefix('/').ok_or_else(|| format!("{text:?}: must start with /"))?;
        // The verb is after the last ':' outside braces.
        let (body, verb) = split_verb(rest);
        if let Some(v) = &verb
            && (v.is_empty() || v.contains(['/', '{', '}']))
        {
            return Err(format!("{text:?}: bad verb {v:?}"));
        }
        let mut t = Template { segments: Vec::new(), variables: Vec::new(), verb };
        let mut chars = body;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| format!("{text:?}: unclosed {{"))?;
                let var = &inner[..close];
                let (path, segs) = match var.split_once('=') {
                    Some((p, s)) => (p, s),
                    None => (var, "*"),
                };
                let field_path: Vec<String> = path.split('.').map(String::from).collect();
                if field_path.iter().any(|f| !is_ident(f)) {
                    return Err(format!("{text:?}: bad field path {path:?}"));
                }
                if t.variables.iter().any(|v| v.field_path == field_path) {
                    return Err(format!("{text:?}: {path:?} bound twice"));
                }
                let start = t.segments.len();
                for s in segs.split('/') {
                    t.segments.push(segment(text, s, false)?);
                }
                t.variables.push(Variable { field_path, start, end: t.segments.len() });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                t.segments.push(segment(text, &chars[..end], true)?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(r) => chars = r,
                None if chars.is_empty() => break,
                None => return Err(format!("{text:?}: expected / after a variable")),
            }
        }
        if let Some(i) = t.segments.iter().position(|s| *s == Segment::Rest)
            && i + 1 != t.segments.len()
        {
            return Err(format!("{text:?}: ** must be the last segment"));
        }
        Ok(t)
    }

    /// Literal segments: more literals is a more specific template.
    pub fn literals(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }

    /// Matches a request path (no query); returns the variables' values.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let rest_at = match self.segments.last() {
            Some(Segment::Rest) => Some(self.segments.len() - 1),
            _ => None,
        };
        match rest_at {
            Some(n) if parts.len() < n => return None,
            None if parts.len() != self.segments.len() => return None,
            _ => {}
        }
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) if parts[i] == l => {}
                Segment::Any if !parts[i].is_empty() => {}
                Segment::Rest => {}
                _ => return None,
            }
        }
        let mut out = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            let end = if v.end == self.segments.len() && rest_at.is_some() { parts.len() } else { v.end };
            let spanned = &parts[v.start..end];
            let value = if spanned.len() == 1 && !matches!(self.segments[v.start], Segment::Rest) {
                percent_decode_str(spanned[0]).decode_utf8().ok()?.into_owned()
            } else {
                let decoded: Option<Vec<String>> = spanned
                    .iter()
                    .map(|p| {
                        let kept = p.replace("%2F", "%252F").replace("%2f", "%252f");
                        percent_decode_str(&kept).decode_utf8().ok().map(|s| s.into_owned())
                    })
                    .collect();
                decoded?.join("/")
            };
            out.push((v.field_path.clone(), value));
        }
        Some(out)
    }
}

fn split_verb(rest: &str) -> (&str, Option<String>) {
    let last_close = rest.rfind('}').map(|i| i + 1).unwrap_or(0);
    match rest[last_close..].rfind(':') {
        Some(i) => (&rest[..last_close + i], Some(rest[last_close + i + 1..].to_string())),
        None => (rest, None),
    }
}

fn segment(text: &str, s: &str, top: bool) -> Result<Segment, String> {
    match s {
        "*" => Ok(Segment::Any),
        "**" => Ok(Segment::Rest),
        "" => Err(format!("{text:?}: empty segment")),
        l if l.contains(['{', '}', '=', '*']) => {
            Err(format!("{text:?}: bad segment {l:?}{}", if top { "" } else { " in a variable" }))
        }
        l => Ok(Segment::Literal(l.to_string())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars(t: &str, p: &str) -> Option<Vec<(String, String)>> {
        Template::parse(t).unwrap().matches(p).map(|v| v.into_iter().map(|(f, s)| (f.join("."), s)).collect())
    }

    fn pairs(v: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    }

    #[test]
    fn simple_nested_and_multi_segment_variables() {
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/42"), pairs(&[("user_id", "42")]));
        assert_eq!(vars("/v1/users/{user.user_id}", "/v1/users/7"), pairs(&[("user.user_id", "7")]));
        assert_eq!(vars("/v1/{name=shelves/*}", "/v1/shelves/s1"), pairs(&[("name", "shelves/s1")]));
        assert_eq!(
            vars("/v1/{name=shelves/*}/books/{book}", "/v1/shelves/s1/books/b%20c"),
            pairs(&[("name", "shelves/s1"), ("book", "b c")])
        );
        assert_eq!(vars("/v1/{path=files/**}", "/v1/files/a/b/c"), pairs(&[("path", "files/a/b/c")]));
        assert_eq!(vars("/v1/{path=**}", "/v1/a%2Fb/c"), pairs(&[("path", "a%2Fb/c")]));
        assert_eq!(vars("/v1/users/{id}", "/v1/users/a%2Fb"), pairs(&[("id", "a/b")]));
        assert_eq!(vars("/v1/users/{id}:undelete", "/v1/users/9:undelete"), pairs(&[("id", "9")]));
        assert_eq!(vars("/v1/*/x", "/v1/anything/x"), pairs(&[]));
    }

    #[test]
    fn mismatches() {
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v1/users/1/2"), None);
        assert_eq!(vars("/v1/users/{user_id}", "/v2/users/1"), None);
        assert_eq!(vars("/v1/users/{id}:undelete", "/v1/users/9"), None);
        assert_eq!(vars("/v1/users", "v1/users"), None);
    }

    #[test]
    fn parse_errors() {
        for bad in ["v1/x", "/v1/{id", "/v1/{a.}", "/v1/**/x", "/v1//x", "/v1/{a}{b}", "/v1/{a}/{a}", "/v1/x:"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// A path built from the template's own shape always matches and
        /// gives back the values put in (percent-encoded on the way).
        #[test]
        fn generated_paths_match_and_round_trip(
            lits in proptest::collection::vec("[a-z][a-z0-9]{0,6}", 1..4),
            values in proptest::collection::vec("[ -~]{1,10}", 1..4),
        ) {
            let n = lits.len().min(values.len());
            let mut template = String::new();
            let mut path = String::new();
            for i in 0..n {
                template.push_str(&format!("/{}/{{f{i}}}", lits[i]));
                let enc = percent_encoding::utf8_percent_encode(&values[i], percent_encoding::NON_ALPHANUMERIC);
                path.push_str(&format!("/{}/{enc}", lits[i]));
            }
            let t = Template::parse(&template).unwrap();
            let got = t.matches(&path).unwrap();
            for (i, (f, v)) in got.iter().enumerate() {
                prop_assert_eq!(f, &vec![format!("f{i}")]);
                prop_assert_eq!(v, &values[i]);
            }
            // One segment more or less never matches.
            let longer = format!("{path}/x");
            prop_assert!(t.matches(&longer).is_none());
            let shorter = &path[..path.rfind('/').unwrap_or(0)];
            prop_assert!(t.matches(shorter).is_none());
        }
    }
}
