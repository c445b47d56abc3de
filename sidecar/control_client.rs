//! The sidecar's client of control: everything it asks control for, over
//! long-lived streams that survive control restarts.
//! - [`identity`] — the workload certificate: a CSR signed by control's CA
//!   (bootstrap token first, then the current certificate), renewed at 70 %;
//! - [`registration`] — this instance's lease in the registry, with the app's
//!   health on its KeepAlive stream;
//! - [`discovery`] — the endpoints of the services this sidecar calls, from
//!   the registry's Watch, kept while control is unreachable.
//!
//! The policy Watch is `crate::sidecar::policy::fetch`, beside the policy it feeds.

pub mod discovery;
pub mod identity;
pub mod registration;

/// A lazily connected channel to control for a long-lived watch stream
/// (discovery, policy, the gateway hub's event streams): 2 s to connect, no
/// Nagle delay, HTTP/2 keep-alive so a dead control is noticed within ~15 s.
pub fn channel(addr: &str) -> Result<tonic::transport::Channel, String> {
    Ok(tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("control_addr: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(5))
        .connect_lazy())
}
