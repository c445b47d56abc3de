//! The channel to control that every long-lived watch stream uses
//! (discovery, policy, the gateway hub's event streams).

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
