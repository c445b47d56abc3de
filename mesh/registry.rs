//! The registry's wire model: an instance as registered and watched, its
//! health, and service names. Control's registry (`crate::control::registry`)
//! validates requests with it at the API boundary; the sidecar's discovery
//! and balancer read watched instances through it.
//!
//! Generated proto types stop here: `TryFrom<proto::Instance>` checks every
//! field a client controls and names the field that is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::registry::v1 as pb;

/// Longest service name: a DNS-1123 label.
pub const MAX_SERVICE_NAME: usize = 63;
/// Longest instance id.
pub const MAX_INSTANCE_ID: usize = 253;
/// Metadata and tags together may not exceed this many bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Weight given to an instance registered with weight 0.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The health an instance reports through its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Takes traffic.
    Serving,
    /// Up but must not get traffic.
    NotServing,
    /// Finishing in-flight work before it leaves; no new traffic.
    Draining,
}

impl Health {
    /// The wire form, also used as the Redis value.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Draining => "DRAINING",
        }
    }

    /// Parses [`Health::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SERVING" => Some(Health::Serving),
            "NOT_SERVING" => Some(Health::NotServing),
            "DRAINING" => Some(Health::Draining),
            _ => None,
        }
    }

    /// `None` for `HEALTH_UNSPECIFIED` ("keep what it is").
    pub fn from_proto(value: i32) -> Result<Option<Self>, String> {
        match pb::Health::try_from(value) {
            Ok(pb::Health::Unspecified) => Ok(None),
            Ok(pb::Health::Serving) => Ok(Some(Health::Serving)),
            Ok(pb::Health::NotServing) => Ok(Some(Health::NotServing)),
            Ok(pb::Health::Draining) => Ok(Some(Health::Draining)),
            Err(_) => Err(format!("health: unknown value {value}")),
        }
    }

    fn to_proto(self) -> pb::Health {
        match self {
            Health::Serving => pb::Health::Serving,
            Health::NotServing => pb::Health::NotServing,
            Health::Draining => pb::Health::Draining,
        }
    }
}

/// Named ports; `None` means the instance has no such port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// gRPC (or the sidecar's inbound mTLS) port.
    pub grpc: Option<u16>,
    /// Plain HTTP port.
    pub http: Option<u16>,
    /// Admin port (health, metrics).
    pub admin: Option<u16>,
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// DNS-1123 label.
    pub service: String,
    /// Unique within the service.
    pub instance_id: String,
    /// Host name or IP address.
    pub address: String,
    /// Named ports.
    pub ports: Ports,
    /// Relative balancing weight (1..=1,000,000).
    pub weight: u32,
    /// Locality zone, may be empty.
    pub zone: String,
    /// Version label, may be empty.
    pub version: String,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Current health.
    pub health: Health,
    /// The lease the instance lives under. Serialized as a string so that
    /// Lua scripts and JSON consumers never round it through a double.
    #[serde(with = "u64_string")]
    pub lease_id: u64,
    /// When the lease lapses unless renewed, as of the instance's last change
    /// (renewals alone do not produce changes). Unix ms.
    pub lease_expires_unix_ms: u64,
    /// The lease's TTL in ms (kept so a replica can restore a lost store).
    #[serde(default)]
    pub lease_ttl_ms: u64,
}

impl Instance {
    /// The key that identifies an instance: `service/instance_id`.
    pub fn key(&self) -> String {
        instance_key(&self.service, &self.instance_id)
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Instance {
        pb::Instance {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
            address: self.address.clone(),
            ports: Some(pb::Ports {
                grpc: self.ports.grpc.map(u32::from),
                http: self.ports.http.map(u32::from),
                admin: self.ports.admin.map(u32::from),
            }),
            weight: self.weight,
            zone: self.zone.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            tags: self.tags.clone(),
            health: self.health.to_proto() as i32,
            lease_expires_unix_ms: self.lease_expires_unix_ms,
            lease_id: self.lease_id,
        }
    }
}

/// `service/instance_id`; `/` cannot occur in either part.
pub fn instance_key(service: &str, instance_id: &str) -> String {
    format!("{service}/{instance_id}")
}

impl TryFrom<pb::Instance> for Instance {
    type Error = String;

    /// Validates a client's instance. The registry sets `lease_id` and
    /// `lease_expires_unix_ms`; whatever the client sent there is ignored.
    fn try_from(p: pb::Instance) -> Result<Self, String> {
        validate_service_name(&p.service)?;
        validate_instance_id(&p.instance_id)?;
        validate_address(&p.address)?;
        let ports = p.ports.unwrap_or_default();
        let ports = Ports {
            grpc: port("ports.grpc", ports.grpc)?,
            http: port("ports.http", ports.http)?,
            admin: port("ports.admin", ports.admin)?,
        };
        if ports == Ports::default() {
            return Err("ports: the instance has no port; set ports.grpc, ports.http or ports.admin (1..65535)".into());
        }
        let weight = match p.weight {
            0 => DEFAULT_WEIGHT,
            w if w > MAX_WEIGHT => return Err(format!("weight: {w} is above the maximum {MAX_WEIGHT}")),
            w => w,
        };
        short_text("zone", &p.zone)?;
        short_text("version", &p.version)?;
        let mut bytes = 0usize;
        for (k, v) in &p.metadata {
            if k.is_empty() {
                return Err("metadata: empty key".into());
            }
            bytes += k.len() + v.len();
        }
        for t in &p.tags {
            if t.is_empty() {
                return Err("tags: empty tag".into());
            }
            bytes += t.len();
        }
        if bytes > MAX_METADATA_BYTES {
            return Err(format!(
                "metadata: metadata and tags total {bytes} bytes, over the {MAX_METADATA_BYTES}-byte limit"
            ));
        }
        let health = Health::from_proto(p.health)?.unwrap_or(Health::Serving);
        Ok(Instance {
            service: p.service,
            instance_id: p.instance_id,
            address: p.address,
            ports,
            weight,
            zone: p.zone,
            version: p.version,
            metadata: p.metadata.into_iter().collect(),
            tags: p.tags,
            health,
            lease_id: 0,
            lease_expires_unix_ms: 0,
            lease_ttl_ms: 0,
        })
    }
}

/// DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("service: name is empty".into());
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(format!(
            "service: name is {} characters, over the DNS-1123 limit of {MAX_SERVICE_NAME}",
            name.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(c) = name.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "service: {name:?} has {c:?}; a DNS-1123 label has only lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("service: {name:?} must start and end with a letter or digit"));
    }
    Ok(())
}

fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("instance_id: empty".into());
    }
    if id.len() > MAX_INSTANCE_ID {
        return Err(format!("instance_id: {} characters, over the limit of {MAX_INSTANCE_ID}", id.len()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if let Some(c) = id.chars().find(|c| !ok_char(*c)) {
        return Err(format!("instance_id: {id:?} has {c:?}; allowed are letters, digits and . _ : -"));
    }
    Ok(())
}

fn validate_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("address: empty".into());
    }
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host_ok = addr.len() <= 253
        && addr
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if host_ok { Ok(()) } else { Err(format!("address: {addr:?} is neither an IP address nor a host name")) }
}

fn port(field: &str, value: Option<u32>) -> Result<Option<u16>, String> {
    match value {
        None => Ok(None),
        Some(0) => Err(format!("{field}: 0 is not a valid port (1..65535)")),
        Some(p) => u16::try_from(p).map(Some).map_err(|_| format!("{field}: {p} is not a valid port (1..65535)")),
    }
}

fn short_text(field: &str, value: &str) -> Result<(), String> {
    if value.len() > 128 {
        return Err(format!("{field}: {} characters, over the limit of 128", value.len()));
    }
    Ok(())
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A valid instance of service `svc` for unit tests.
#[cfg(test)]
pub(crate) fn test_instance(id: &str) -> Instance {
    Instance {
        service: "svc".into(),
        instance_id: id.into(),
        address: "127.0.0.1".into(),
        ports: Ports { grpc: Some(1), http: None, admin: None },
        weight: DEFAULT_WEIGHT,
        zone: String::new(),
        version: String::new(),
        metadata: BTreeMap::new(),
        tags: vec![],
        health: Health::Serving,
        lease_id: 0,
        lease_expires_unix_ms: 0,
        lease_ttl_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::Instance {
        pb::Instance {
            service: "orders".into(),
            instance_id: "orders-1".into(),
            address: "127.0.0.1".into(),
            ports: Some(pb::Ports { grpc: Some(9000), http: None, admin: None }),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_valid_instance_and_fills_defaults() {
        let i = Instance::try_from(valid()).unwrap();
        assert_eq!(i.weight, DEFAULT_WEIGHT);
        assert_eq!(i.health, Health::Serving);
        assert_eq!(i.ports.grpc, Some(9000));
    }

    #[test]
    fn rejects_bad_fields_naming_the_field() {
        type Mutate = fn(&mut pb::Instance);
        let cases: Vec<(Mutate, &str)> = vec![
            (|p| p.service = String::new(), "service: name is empty"),
            (|p| p.service = "a".repeat(64), "over the DNS-1123 limit"),
            (|p| p.service = "Orders".into(), "lowercase"),
            (|p| p.service = "-orders".into(), "start and end"),
            (|p| p.instance_id = "a/b".into(), "instance_id"),
            (|p| p.address = "not an address".into(), "address"),
            (|p| p.ports = Some(pb::Ports { grpc: Some(0), http: None, admin: None }), "ports.grpc: 0"),
            (|p| p.ports = Some(pb::Ports { grpc: None, http: Some(70000), admin: None }), "ports.http: 70000"),
            (|p| p.ports = None, "has no port"),
            (|p| p.weight = MAX_WEIGHT + 1, "weight"),
            (
                |p| {
                    p.metadata.insert("k".into(), "v".repeat(MAX_METADATA_BYTES));
                },
                "over the 65536-byte limit",
            ),
            (|p| p.health = 42, "health: unknown value 42"),
        ];
        for (mutate, want) in cases {
            let mut p = valid();
            mutate(&mut p);
            let err = Instance::try_from(p).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn lease_id_survives_json_as_a_string() {
        let mut i = Instance::try_from(valid()).unwrap();
        i.lease_id = u64::MAX - 1;
        let json = serde_json::to_string(&i).unwrap();
        assert!(json.contains("\"18446744073709551614\""));
        assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), i);
    }
}
