//! HTTP/JSON request → request message (pure): the body per the rule's
//! `body`, then the path variables, then (unless `body: "*"`) the query
//! parameters, merged into one JSON object and read with the proto3 JSON
//! mapping (unknown fields are errors).
//!
//! Query parameters name fields by dotted path (`filter.kind=KIND_PERSON`,
//! proto or JSON names); a repeated field takes every occurrence. Path
//! variables win over the same field in the body.

use percent_encoding::percent_decode_str;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind};
use serde_json::{Map, Value};

use crate::sidecar::gateway::transcode::table::{Binding, BodyRule, resolve};
use crate::sidecar::gateway::transcode::template;

/// The request message for `binding`, or why the request is bad.
pub fn message(
    binding: &Binding,
    vars: &[template::Binding],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, String> {
    let parse = |body: &[u8]| -> Result<Option<Value>, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(body).map(Some).map_err(|e| format!("body is not JSON: {e}"))
    };
    let mut root = Map::new();
    match &binding.body {
        BodyRule::None => {}
        BodyRule::All => match parse(body)? {
            None => {}
            Some(Value::Object(m)) => root = m,
            Some(_) => return Err("body must be a JSON object".into()),
        },
        BodyRule::Field(f) => {
            if let Some(v) = parse(body)? {
                root.insert(f.json_name().to_string(), v);
            }
        }
    }
    for (path, value) in vars {
        let fields = fields(binding, path)?;
        set(&mut root, &fields, value, false)?;
    }
    if let Some(q) = query.filter(|_| !matches!(binding.body, BodyRule::All)) {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (form_decode(k)?, form_decode(v)?);
            let path: Vec<String> = k.split('.').map(String::from).collect();
            if vars.iter().any(|(p, _)| *p == path) {
                continue;
            }
            if let BodyRule::Field(f) = &binding.body
                && (path[0] == f.name() || path[0] == f.json_name())
            {
                return Err(format!("query parameter {k:?}: the field is sent in the body"));
            }
            let fields = fields(binding, &path).map_err(|e| format!("query parameter {k:?}: {e}"))?;
            set(&mut root, &fields, &v, true).map_err(|e| format!("query parameter {k:?}: {e}"))?;
        }
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(binding.input.clone(), Value::Object(root), &options)
        .map_err(|e| format!("request does not fit {}: {e}", binding.input.full_name()))
}

/// The descriptors along a dotted path.
fn fields(binding: &Binding, path: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::with_capacity(path.len());
    for i in 1..=path.len() {
        out.push(resolve(&binding.input, &path[..i])?);
    }
    Ok(out)
}

/// Puts `text` at the field path, converted for the leaf's type.
fn set(root: &mut Map<String, Value>, fields: &[FieldDescriptor], text: &str, append: bool) -> Result<(), String> {
    let Some((leaf, parents)) = fields.split_last() else { return Ok(()) };
    let mut obj = root;
    for f in parents {
        take_proto_name(obj, f);
        let slot = obj.entry(f.json_name().to_string()).or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        obj = slot.as_object_mut().ok_or_else(|| format!("{} is not an object", f.name()))?;
    }
    take_proto_name(obj, leaf);
    if leaf.is_map() {
        return Err(format!("{} is a map", leaf.name()));
    }
    let value = scalar(leaf, text)?;
    let key = leaf.json_name().to_string();
    if leaf.is_list() {
        let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        match slot {
            Value::Array(items) if append => items.push(value),
            _ => *slot = Value::Array(vec![value]),
        }
    } else {
        obj.insert(key, value);
    }
    Ok(())
}

/// A body may name a field by its proto name; keep one key per field.
fn take_proto_name(obj: &mut Map<String, Value>, f: &FieldDescriptor) {
    if f.name() != f.json_name()
        && let Some(v) = obj.remove(f.name())
    {
        obj.entry(f.json_name().to_string()).or_insert(v);
    }
}

/// Text from a path or query as the JSON the proto3 mapping reads.
fn scalar(f: &FieldDescriptor, text: &str) -> Result<Value, String> {
    Ok(match f.kind() {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{}: {text:?} is not true or false", f.name())),
        },
        Kind::Enum(_) => match text.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(text.to_string()),
        },
        // Well-known types (Timestamp, Duration, wrappers, FieldMask) are strings in JSON.
        Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => Value::String(text.to_string()),
        Kind::Message(m) => return Err(format!("{} is a message ({})", f.name(), m.full_name())),
        // Numbers and bytes are accepted as strings by the proto3 JSON mapping.
        _ => Value::String(text.to_string()),
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space.
fn form_decode(s: &str) -> Result<String, String> {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::gateway::transcode::table::example;
    use http::Method;

    fn json_of(method: Method, path: &str, query: Option<&str>, body: &str) -> Result<serde_json::Value, String> {
        let t = example();
        let (b, vars) = t.find(&method, path).ok_or("no binding")?;
        let m = message(b, &vars, query, body.as_bytes())?;
        Ok(serde_json::to_value(&m).unwrap())
    }

    #[test]
    fn path_query_and_body_merge() {
        let v = json_of(Method::GET, "/v1/users/42", None, "").unwrap();
        assert_eq!(v, serde_json::json!({"userId": "42"}));
        let v = json_of(Method::POST, "/v1/users", Some("request_id=a+b"), r#"{"display_name": "Ann"}"#).unwrap();
        assert_eq!(v, serde_json::json!({"user": {"displayName": "Ann"}, "requestId": "a b"}));
        // The path wins over the body.
        let v = json_of(Method::PATCH, "/v1/users/7", None, r#"{"user": {"userId": "9", "roles": ["x"]}}"#).unwrap();
        assert_eq!(v, serde_json::json!({"user": {"userId": "7", "roles": ["x"]}}));
        let q = "pageSize=5&filter.kind=KIND_SERVICE&filter.prefix=a%2Fb";
        let v = json_of(Method::GET, "/v1/users", Some(q), "").unwrap();
        assert_eq!(v, serde_json::json!({"pageSize": 5, "filter": {"kind": "KIND_SERVICE", "prefix": "a/b"}}));
    }

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            (Method::POST, "/v1/users", None, "{"),
            (Method::POST, "/v1/users", None, r#"{"nope": 1}"#),
            (Method::POST, "/v1/users", Some("user.email=x"), "{}"),
            (Method::GET, "/v1/users/x", None, ""),
            (Method::GET, "/v1/users", Some("filter=1"), ""),
            (Method::GET, "/v1/users", Some("missing=1"), ""),
            (Method::PATCH, "/v1/users/1", None, "[1]"),
        ];
        for (m, p, q, b) in cases {
            assert!(json_of(m.clone(), p, q, b).is_err(), "{m} {p} {q:?} {b}");
        }
    }
}
