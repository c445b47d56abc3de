//! The gateway's settings (`--mode gateway`): the ingress listener and its
//! limits, TLS, CORS, transcoding descriptors and the WebSocket hub,
//! validated from the flat [`Settings`] into a [`GatewayConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Settings;
use super::values::number;
use crate::mesh::process::settings::{ConfigError, addr, duration, err};

/// Validated gateway settings (see the flags for their meaning).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Ingress listen address.
    pub addr: SocketAddr,
    /// Routes file (none: routes come with the gateway's policy from control).
    pub routes: Option<PathBuf>,
    /// TLS certificate and key files, when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Open connections at most.
    pub max_connections: usize,
    /// Headers per request at most.
    pub max_headers: usize,
    /// Header bytes per request at most.
    pub max_header_bytes: u32,
    /// HTTP/2 streams per connection at most.
    pub max_concurrent_streams: u32,
    /// Request-head read timeout.
    pub header_read_timeout: Duration,
    /// Idle connection timeout.
    pub idle_timeout: Duration,
    /// Trusted proxies in front.
    pub trusted_hops: usize,
    /// CORS origins (`*` allows any).
    pub cors_origins: Vec<String>,
    /// Descriptor sets for HTTP/JSON transcoding (empty: none).
    pub descriptors: Vec<PathBuf>,
    /// The WebSocket topic hub (`None`: off).
    pub ws: Option<HubConfig>,
}

/// Validated settings of the gateway's WebSocket topic hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Request path that opens the hub.
    pub path: String,
    /// Origins allowed at the handshake (empty: any; `*` allows any).
    pub origins: Vec<String>,
    /// Largest client message and frame, bytes.
    pub max_message: usize,
    /// Messages queued per connection before it is closed as a slow consumer.
    pub queue: usize,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Silence after a ping that closes the connection.
    pub pong_timeout: Duration,
    /// Hub connections per user at most.
    pub max_per_user: usize,
    /// Hub connections in all at most (`gateway_max_connections`: an
    /// upgraded connection leaves the listener's count).
    pub max_connections: usize,
    /// Replica name on the event bus (`None`: the instance id).
    pub replica: Option<String>,
}

pub(super) fn gateway_config(s: &Settings) -> Result<GatewayConfig, ConfigError> {
    let routes = s.routes.clone().filter(|r| !r.is_empty()).map(PathBuf::from);
    let tls = match (&s.gateway_tls_cert, &s.gateway_tls_key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(_), None) => return Err(err("gateway_tls_key", "missing: gateway_tls_cert is set")),
        (None, Some(_)) => return Err(err("gateway_tls_cert", "missing: gateway_tls_key is set")),
    };
    let trusted_hops = match s.gateway_trusted_hops.as_deref().unwrap_or("0").parse::<usize>() {
        Ok(n) if n <= 16 => n,
        _ => return Err(err("gateway_trusted_hops", "not a number in 0..=16")),
    };
    let nonzero = |key: &str, d: Duration| if d.is_zero() { Err(err(key, "must be above 0")) } else { Ok(d) };
    let list = |v: Option<&str>| -> Vec<String> {
        v.unwrap_or("").split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect()
    };
    let cors_origins = list(s.gateway_cors_origins.as_deref());
    let ws_path = s.gateway_ws_path.clone().unwrap_or_else(|| "/ws".into());
    let ws = if ws_path.is_empty() {
        None
    } else {
        if !ws_path.starts_with('/') || ws_path.parse::<http::uri::PathAndQuery>().is_err() || ws_path.contains('?') {
            return Err(err("gateway_ws_path", format!("{ws_path:?} is not a path like /ws")));
        }
        let max_message = number("gateway_ws_max_message", s.gateway_ws_max_message.as_ref(), 65_536usize)?;
        if !(128..=16 << 20).contains(&max_message) {
            return Err(err("gateway_ws_max_message", "must be in 128..=16777216"));
        }
        let queue = number("gateway_ws_queue", s.gateway_ws_queue.as_ref(), 256usize)?;
        if queue > 65_536 {
            return Err(err("gateway_ws_queue", "must be in 1..=65536"));
        }
        let replica = s.gateway_ws_replica.clone().filter(|r| !r.is_empty());
        if let Some(r) = &replica {
            crate::mesh::events::validate_name("replica", &format!("gateway-hub.{r}"))
                .map_err(|e| err("gateway_ws_replica", e.to_string()))?;
        }
        Some(HubConfig {
            path: ws_path,
            origins: match s.gateway_ws_origins.as_deref() {
                Some(o) => list(Some(o)),
                None => cors_origins.clone(),
            },
            max_message,
            queue,
            ping_interval: nonzero(
                "gateway_ws_ping_interval",
                duration("gateway_ws_ping_interval", s.gateway_ws_ping_interval.clone(), "20s")?,
            )?,
            pong_timeout: nonzero(
                "gateway_ws_pong_timeout",
                duration("gateway_ws_pong_timeout", s.gateway_ws_pong_timeout.clone(), "20s")?,
            )?,
            max_per_user: number("gateway_ws_max_per_user", s.gateway_ws_max_per_user.as_ref(), 16usize)?,
            max_connections: number("gateway_max_connections", s.gateway_max_connections.as_ref(), 10_000usize)?,
            replica,
        })
    };
    Ok(GatewayConfig {
        addr: addr("gateway_addr", s.gateway_addr.clone(), "0.0.0.0:8000")?,
        routes,
        tls,
        max_connections: number("gateway_max_connections", s.gateway_max_connections.as_ref(), 10_000usize)?,
        max_headers: number("gateway_max_headers", s.gateway_max_headers.as_ref(), 100usize)?,
        max_header_bytes: number("gateway_max_header_bytes", s.gateway_max_header_bytes.as_ref(), 16_384u32)?,
        max_concurrent_streams: number(
            "gateway_max_concurrent_streams",
            s.gateway_max_concurrent_streams.as_ref(),
            100u32,
        )?,
        header_read_timeout: nonzero(
            "gateway_header_read_timeout",
            duration("gateway_header_read_timeout", s.gateway_header_read_timeout.clone(), "10s")?,
        )?,
        idle_timeout: nonzero(
            "gateway_idle_timeout",
            duration("gateway_idle_timeout", s.gateway_idle_timeout.clone(), "60s")?,
        )?,
        trusted_hops,
        descriptors: list(s.gateway_descriptors.as_deref()).into_iter().map(PathBuf::from).collect(),
        cors_origins,
        ws,
    })
}
