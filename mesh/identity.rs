//! Workload identities: how a service's identity is written as a SPIFFE ID.
//! Control's CA puts it in the certificates it signs; sidecars compare a
//! peer's certificate against it.

/// `spiffe://<td>/ns/<namespace>/sa/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service}")
}
