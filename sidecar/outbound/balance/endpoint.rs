//! One endpoint of an upstream service, as the balancer sees it.
//!
//! Discovery (the control Watch) hands the sidecar registry
//! [`Instance`]s; [`Endpoint::from_instance`] keeps the ones that may take
//! traffic and reduces them to what balancing and dialing need.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::mesh::registry::{Health, Instance};

/// Where to dial an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A literal IP address and port: dial it as is.
    Socket(SocketAddr),
    /// A host name the dialer resolves, and a port.
    Host {
        /// DNS name.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl Address {
    /// An IP literal becomes [`Address::Socket`], anything else a
    /// [`Address::Host`] to resolve at dial time.
    pub fn new(host: &str, port: u16) -> Self {
        // Registries hand out bracketed IPv6 literals as often as bare ones.
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => Address::Socket(SocketAddr::new(ip, port)),
            Err(_) => Address::Host { host: host.to_owned(), port },
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(addr) => addr.fmt(f),
            Address::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One endpoint a request can be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable identity (the registry's `service/instance_id`). Hash policies
    /// place endpoints by it, and load and ejection state follow it across
    /// endpoint-set updates, so it must not change while the instance lives.
    pub id: String,
    /// Where to dial.
    pub address: Address,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Locality zone; empty when unknown.
    pub zone: String,
}

impl Endpoint {
    /// An endpoint; a weight of 0 is raised to 1 so that every policy can
    /// divide by it and a misconfigured instance still gets some traffic.
    pub fn new(id: impl Into<String>, address: Address, weight: u32, zone: impl Into<String>) -> Self {
        Endpoint { id: id.into(), address, weight: weight.max(1), zone: zone.into() }
    }

    /// The endpoint for a registered instance, or `None` when it must get no
    /// traffic: not `SERVING`, or without a gRPC port (the peer sidecar's
    /// inbound mTLS port is registered as the gRPC port).
    pub fn from_instance(instance: &Instance) -> Option<Self> {
        if instance.health != Health::Serving {
            return None;
        }
        let port = instance.ports.grpc?;
        Some(Endpoint::new(instance.key(), Address::new(&instance.address, port), instance.weight, &instance.zone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::registry::Ports;

    fn instance(health: Health, grpc: Option<u16>) -> Instance {
        Instance {
            service: "orders".into(),
            instance_id: "a".into(),
            address: "10.0.0.7".into(),
            ports: Ports { grpc, http: Some(8080), admin: None },
            weight: 0,
            zone: "eu-1a".into(),
            version: String::new(),
            metadata: Default::default(),
            tags: vec![],
            health,
            lease_id: 1,
            lease_expires_unix_ms: 0,
            lease_ttl_ms: 0,
        }
    }

    #[test]
    fn serving_instance_becomes_endpoint_on_its_grpc_port() {
        let e = Endpoint::from_instance(&instance(Health::Serving, Some(15006))).expect("serving");
        assert_eq!(e.id, "orders/a");
        assert_eq!(e.address, Address::Socket("10.0.0.7:15006".parse().expect("addr")));
        assert_eq!(e.weight, 1, "weight 0 is raised to 1");
        assert_eq!(e.zone, "eu-1a");
    }

    #[test]
    fn draining_or_portless_instances_get_no_traffic() {
        assert_eq!(Endpoint::from_instance(&instance(Health::Draining, Some(1))), None);
        assert_eq!(Endpoint::from_instance(&instance(Health::NotServing, Some(1))), None);
        assert_eq!(Endpoint::from_instance(&instance(Health::Serving, None)), None);
    }

    #[test]
    fn addresses_parse_ip_literals_and_keep_names() {
        assert_eq!(Address::new("[::1]", 80).to_string(), "[::1]:80");
        assert_eq!(Address::new("::1", 80), Address::Socket("[::1]:80".parse().expect("addr")));
        assert_eq!(Address::new("orders.svc", 80), Address::Host { host: "orders.svc".into(), port: 80 });
        assert_eq!(Address::new("orders.svc", 80).to_string(), "orders.svc:80");
    }
}
