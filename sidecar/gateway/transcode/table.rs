//! The transcoding table: descriptor sets → one [`Binding`] per HTTP rule
//! of every unary method annotated with `google.api.http` (its
//! `additional_bindings` included), validated when loaded.

use std::path::PathBuf;

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use crate::sidecar::gateway::transcode::template::{self, Template};

/// Where the request body goes.
#[derive(Clone, Debug)]
pub enum BodyRule {
    /// No body (`body` unset): every field comes from the path and query.
    None,
    /// `body: "*"`: the body is the request message, less the path's fields.
    All,
    /// `body: "field"`: the body is that top-level field.
    Field(FieldDescriptor),
}

/// One HTTP rule of one method.
#[derive(Clone, Debug)]
pub struct Binding {
    /// HTTP method to match.
    pub method: Method,
    /// Path template to match.
    pub template: Template,
    /// The template as written (errors, logs).
    pub pattern: String,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    /// The request message.
    pub input: MessageDescriptor,
    /// The response message.
    pub output: MessageDescriptor,
    /// Where the HTTP body goes.
    pub body: BodyRule,
    /// `response_body`: the response field sent instead of the whole message.
    pub response_body: Option<FieldDescriptor>,
}

/// All bindings from the loaded descriptor sets.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Increases with every successful load.
    pub version: u64,
    /// The files it came from.
    pub sources: Vec<PathBuf>,
    /// Bindings in descriptor order.
    pub bindings: Vec<Binding>,
}

/// A descriptor set could not be used; the message names the file or method.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TableError(pub String);

impl Table {
    /// Reads binary `FileDescriptorSet`s (imports included) and builds the table.
    pub fn load(paths: &[PathBuf], version: u64) -> Result<Table, TableError> {
        let mut pool = DescriptorPool::new();
        for p in paths {
            let bytes =
                std::fs::read(p).map_err(|e| TableError(format!("gateway_descriptors: {}: {e}", p.display())))?;
            // Keeps extension options (google.api.http), unlike add_file_descriptor_set.
            pool.decode_file_descriptor_set(bytes.as_slice()).map_err(|e| {
                TableError(format!("gateway_descriptors: {}: not a usable FileDescriptorSet: {e}", p.display()))
            })?;
        }
        let mut t = Table::from_pool(&pool)
            .map_err(|e| TableError(format!("gateway_descriptors: {}: {}", display(paths), e.0)))?;
        t.version = version;
        t.sources = paths.to_vec();
        Ok(t)
    }

    /// Builds the table from a pool holding `google.api.http`.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Table, TableError> {
        let mut t = Table::default();
        let Some(ext) = pool.get_extension_by_name("google.api.http") else {
            return Err(TableError(
                "no google.api.http extension: build the set with --include_imports from a proto that imports \
                 google/api/annotations.proto"
                    .into(),
            ));
        };
        for service in pool.services() {
            for m in service.methods() {
                let options = m.options();
                if !options.has_extension(&ext) {
                    continue;
                }
                let rule = options.get_extension(&ext);
                let Some(rule) = rule.as_message() else { continue };
                if m.is_client_streaming() || m.is_server_streaming() {
                    tracing::warn!(method = m.full_name(), "google.api.http on a streaming method: not transcoded");
                    continue;
                }
                t.bindings.push(binding(&m, rule)?);
                if let Some(list) = rule.get_field_by_name("additional_bindings")
                    && let Some(list) = list.as_list()
                {
                    for extra in list.iter().filter_map(|v| v.as_message()) {
                        t.bindings.push(binding(&m, extra)?);
                    }
                }
            }
        }
        Ok(t)
    }

    /// The binding for a request and its path variables. Of several
    /// matches, the template with the most literal segments wins, then
    /// the first declared.
    pub fn find(&self, method: &Method, path: &str) -> Option<(&Binding, Vec<template::Binding>)> {
        let mut best: Option<(&Binding, Vec<template::Binding>)> = None;
        for b in self.bindings.iter().filter(|b| b.method == method) {
            if let Some(vars) = b.template.matches(path)
                && best.as_ref().is_none_or(|(w, _)| b.template.literals() > w.template.literals())
            {
                best = Some((b, vars));
            }
        }
        best
    }
}

fn display(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")
}

fn string_field(rule: &DynamicMessage, name: &str) -> Option<String> {
    if !rule.has_field_by_name(name) {
        return None;
    }
    rule.get_field_by_name(name).and_then(|v| v.as_str().map(String::from))
}

fn binding(m: &MethodDescriptor, rule: &DynamicMessage) -> Result<Binding, TableError> {
    let fail = |msg: String| TableError(format!("{}: google.api.http: {msg}", m.full_name()));
    let mut pattern = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(p) = string_field(rule, name) {
            pattern = Some((method, p));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let kind = string_field(custom, "kind").unwrap_or_default();
        let method = Method::from_bytes(kind.as_bytes()).map_err(|_| fail(format!("custom kind {kind:?}")))?;
        pattern = Some((method, string_field(custom, "path").unwrap_or_default()));
    }
    let (method, pattern) = pattern.ok_or_else(|| fail("no pattern (get, put, post, delete, patch, custom)".into()))?;
    let template = Template::parse(&pattern).map_err(fail)?;
    let input = m.input();
    for v in &template.variables {
        let leaf = resolve(&input, &v.field_path).map_err(|e| fail(format!("{pattern}: {e}")))?;
        if leaf.is_list() || leaf.is_map() || matches!(leaf.kind(), Kind::Message(_)) {
            return Err(fail(format!("{pattern}: {} is not a singular scalar field", v.field_path.join("."))));
        }
    }
    let body = match string_field(rule, "body").as_deref() {
        None | Some("") => BodyRule::None,
        Some("*") => BodyRule::All,
        Some(f) => BodyRule::Field(input.get_field_by_name(f).ok_or_else(|| fail(format!("body: no field {f:?}")))?),
    };
    let response_body = match string_field(rule, "response_body").as_deref() {
        None | Some("") => None,
        Some(f) => Some(m.output().get_field_by_name(f).ok_or_else(|| fail(format!("response_body: no field {f:?}")))?),
    };
    Ok(Binding {
        method,
        template,
        pattern,
        grpc_path: format!("/{}/{}", m.parent_service().full_name(), m.name()),
        input,
        output: m.output(),
        body,
        response_body,
    })
}

/// The field at the end of a dotted path of proto (or JSON) field names;
/// every field before the last is a singular message.
pub fn resolve(msg: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, String> {
    let mut current = msg.clone();
    let mut field = None;
    for (i, name) in path.iter().enumerate() {
        if i > 0 {
            match field.as_ref().map(FieldDescriptor::kind) {
                Some(Kind::Message(m)) if !field.as_ref().is_some_and(|f: &FieldDescriptor| f.is_list()) => current = m,
                _ => return Err(format!("{} is not a message field", path[..i].join("."))),
            }
        }
        let f = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", current.full_name()))?;
        field = Some(f);
    }
    field.ok_or_else(|| "empty field path".to_string())
}

/// The example service's table (`proto/redfire/example/v1/users.proto`).
#[cfg(test)]
pub(crate) fn example() -> Table {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/example_descriptor.bin"));
    let pool = DescriptorPool::decode(bytes.as_slice()).expect("example descriptor set");
    Table::from_pool(&pool).expect("example bindings")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_from_the_example_service() {
        let t = example();
        let found: Vec<(String, String, String)> =
            t.bindings.iter().map(|b| (b.method.to_string(), b.pattern.clone(), b.grpc_path.clone())).collect();
        let svc = "/redfire.example.v1.UserService";
        let want = [
            ("GET", "/v1/users/{user_id}", "GetUser"),
            ("GET", "/v1/{name=people/*}", "GetUser"),
            ("POST", "/v1/users", "CreateUser"),
            ("PATCH", "/v1/users/{user.user_id}", "UpdateUser"),
            ("GET", "/v1/users", "ListUsers"),
        ];
        let want: Vec<_> = want.iter().map(|(m, p, g)| (m.to_string(), p.to_string(), format!("{svc}/{g}"))).collect();
        assert_eq!(found, want);
        let create = &t.bindings[2];
        assert!(matches!(&create.body, BodyRule::Field(f) if f.name() == "user"));
        assert_eq!(t.bindings[4].response_body.as_ref().map(|f| f.name().to_string()), Some("users".into()));
    }

    #[test]
    fn find_by_method_and_path() {
        let t = example();
        let (b, vars) = t.find(&Method::GET, "/v1/users/42").unwrap();
        assert_eq!(b.grpc_path, "/redfire.example.v1.UserService/GetUser");
        assert_eq!(vars, vec![(vec!["user_id".to_string()], "42".to_string())]);
        let (b, _) = t.find(&Method::GET, "/v1/users").unwrap();
        assert!(b.grpc_path.ends_with("/ListUsers"));
        let (_, vars) = t.find(&Method::PATCH, "/v1/users/7").unwrap();
        assert_eq!(vars[0].0, vec!["user".to_string(), "user_id".to_string()]);
        assert!(t.find(&Method::DELETE, "/v1/users/7").is_none());
        assert!(t.find(&Method::GET, "/v2/users/7").is_none());
    }

    #[test]
    fn files_load_together_and_bad_files_are_named() {
        let dir = std::env::temp_dir();
        let good = dir.join(format!("redfire-{}-example.desc", std::process::id()));
        let bad = dir.join(format!("redfire-{}-bad.desc", std::process::id()));
        std::fs::write(&good, include_bytes!(concat!(env!("OUT_DIR"), "/example_descriptor.bin"))).unwrap();
        std::fs::write(&bad, b"\xff\xff not protobuf").unwrap();
        // The same files twice: duplicates are skipped, not an error.
        let t = Table::load(&[good.clone(), good.clone()], 3).unwrap();
        assert_eq!((t.version, t.bindings.len()), (3, 5));
        let e = Table::load(&[good.clone(), bad.clone()], 1).unwrap_err().0;
        assert!(e.starts_with("gateway_descriptors: ") && e.contains(&bad.display().to_string()), "{e}");
        let missing = dir.join("redfire-no-such.desc");
        assert!(Table::load(std::slice::from_ref(&missing), 1).unwrap_err().0.contains(&missing.display().to_string()));
        let _ = std::fs::remove_file(good);
        let _ = std::fs::remove_file(bad);
    }

    #[test]
    fn a_pool_without_the_annotation_is_an_error() {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/redfire_descriptor.bin"));
        let pool = DescriptorPool::decode(bytes.as_slice()).unwrap();
        assert!(Table::from_pool(&pool).unwrap_err().0.contains("google.api.http"));
    }
}
