//! The sidecar's connection to control: where control is and which roots its
//! certificate must chain to ([`ControlTarget`]), and the channel every
//! long-lived watch stream uses (discovery, policy, the gateway hub's event
//! streams). Control's gRPC API is TLS by default; plaintext (`http://`)
//! needs `dev_insecure_control` and is for local experiments only.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::mesh::process::control_endpoint;

/// Where control is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlTarget {
    /// `https://host:port` (or `http://host:port` with `dev_insecure_control`).
    pub url: String,
    /// The mesh trust bundle (PEM) control's certificate must chain to;
    /// required for `https://`.
    pub ca_pem: Option<String>,
}

impl ControlTarget {
    /// A target, checked: `https://` needs the trust bundle.
    pub fn new(url: impl Into<String>, ca_pem: Option<String>) -> Result<ControlTarget, String> {
        let t = ControlTarget { url: url.into(), ca_pem };
        t.endpoint()?;
        Ok(t)
    }

    /// True when the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// An endpoint for this target: for `https://`, TLS verified against the
    /// trust bundle, the server name being the URL's host (a DNS name or IP
    /// in control's certificate).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        control_endpoint::endpoint(&self.url, self.ca_pem.as_deref())
    }
}

/// A lazily connected channel to control for a long-lived watch stream:
/// 2 s to connect, no Nagle delay, HTTP/2 keep-alive so a dead control is
/// noticed within ~15 s.
pub fn channel(target: &ControlTarget) -> Result<Channel, String> {
    Ok(target
        .endpoint()?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}
