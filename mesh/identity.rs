//! Workload identities: how a service's identity is written as a SPIFFE ID.
//! Control's CA puts it in the certificates it signs; sidecars compare a
//! peer's certificate against it.

/// `spiffe://<td>/ns/<namespace>/sa/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service}")
}

/// The roles of control's operators: `policy-admin` writes policies (and the
/// event bus ACL), `events-admin` manages topics and consumer groups and
/// passes every topic ACL, `registry-admin` registers and deregisters
/// instances of any service (endpoints outside the mesh).
pub const OPERATOR_ROLES: [&str; 3] = ["policy-admin", "events-admin", "registry-admin"];

/// The SPIFFE ID (URI SAN) in a certificate chain's leaf.
pub fn peer_spiffe_id(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, leaf) = X509Certificate::from_der(chain.first()?).ok()?;
    leaf_spiffe_id(&leaf)
}

/// The SPIFFE ID (URI SAN) of a parsed certificate.
pub fn leaf_spiffe_id(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let san = leaf.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    })
}

/// A workload identity: its SPIFFE ID and the service it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `spiffe://<td>/ns/<namespace>/sa/<service>`.
    pub spiffe_id: String,
    /// The service part of it.
    pub service: String,
}

impl Workload {
    /// The workload named by `spiffe_id` (`None` if it is not a workload ID).
    pub fn from_spiffe_id(spiffe_id: &str) -> Option<Workload> {
        let rest = spiffe_id.strip_prefix("spiffe://")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [_td, "ns", _ns, "sa", service] if !service.is_empty() => {
                Some(Workload { spiffe_id: spiffe_id.to_string(), service: service.to_string() })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_name_their_service() {
        let w = Workload::from_spiffe_id("spiffe://redfire.local/ns/trading/sa/orders").unwrap();
        assert_eq!(w.service, "orders");
        for bad in ["spiffe://t/ns/a/sa/", "spiffe://t/orders", "https://t/ns/a/sa/b", "spiffe://t/ns/a/sa/b/c"] {
            assert!(Workload::from_spiffe_id(bad).is_none(), "{bad}");
        }
    }
}
