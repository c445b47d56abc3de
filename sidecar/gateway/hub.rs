//! The gateway's WebSocket topic hub at `gateway_ws_path` (default `/ws`):
//! browsers and apps subscribe to event-bus topics and publish to them over
//! one WebSocket, in the JSON protocol of [`protocol`].
//!
//! Flow: `forward::Gateway::handle` hands an upgrade request for the hub
//! path to [`Hub::accept`], which checks, in order, before upgrading:
//! 1. a well-formed WebSocket handshake (else 400);
//! 2. the `Origin` against `gateway_ws_origins` (403) — clients that send
//!    no `Origin` (not browsers) pass;
//! 3. the gateway's own policy, loaded from control (503 until it is): its
//!    `[jwt]` verifies the token from the policy's sources (header, cookie,
//!    query) or else from `Sec-WebSocket-Protocol` (`bearer, <jwt>` or
//!    `redfire.jwt.<jwt>`) — 401;
//! 4. the per-user (`sub`) connection limit (429) and the hub's total
//!    (`gateway_max_connections`, 503).
//!
//! A connection lives no longer than its token: at `exp` (plus the policy's
//! leeway) it is closed with 1008 "token expired".
//!
//! Then [`conn::run`] serves the connection; [`bus::Bus`] bridges topics to
//! control's `redfire.events.v1` and fans events out. Subscribe and
//! publish are authorized per topic by the policy's `[[topics]]` rules and
//! the user's roles (claim `rbac.roles_claim`, plus Redis roles), checked
//! against the policy in force when the message arrives.

pub mod bus;
pub mod conn;
pub mod metrics;
pub mod protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::mesh::process::shutdown::Drain;
use crate::sidecar::Body;
use crate::sidecar::config::HubConfig;
use crate::sidecar::gateway::respond::json_error;
use crate::sidecar::policy::Policy;
use crate::sidecar::shared::upgrade::has_token;
use bus::Bus;
use metrics::HubMetrics;
use tonic::transport::Channel;

/// Most bytes tungstenite may hold for one connection's writes (one large
/// event; it only fills while the socket is blocked).
const MAX_WRITE_BUFFER: usize = 4 << 20;
/// Read buffer per connection (small: most connections are idle).
const READ_BUFFER: usize = 4096;
/// `Sec-WebSocket-Protocol` entries carrying a token start with this.
const TOKEN_PROTOCOL: &str = "redfire.jwt.";

/// A connection's verified user.
#[derive(Debug)]
pub struct Session {
    /// Connection id (unique in this process).
    pub id: u64,
    /// The token's `sub`.
    pub sub: String,
    /// The user's roles at the handshake.
    pub roles: Vec<String>,
    /// When the token stops being valid (`exp` + the policy's leeway): the
    /// connection is closed then (1008 "token expired"); the client
    /// reconnects with a fresh token.
    pub expires: Option<tokio::time::Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Hub {
    /// Settings.
    pub config: HubConfig,
    /// The event bus bridge.
    pub bus: Bus,
    /// The gateway's policy (JWT, roles, topic rules).
    pub policy: Arc<Policy>,
    /// Metrics.
    pub metrics: HubMetrics,
    /// Draining closes every connection with 1001.
    pub drain: Drain,
    users: Mutex<HashMap<String, usize>>,
    next_id: AtomicU64,
}

/// Which connection limit a handshake hit.
enum Full {
    User,
    Hub,
}

/// Holds one of a user's connection slots; released on drop.
struct UserSlot {
    hub: Arc<Hub>,
    sub: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut users = self.hub.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(&self.sub) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.sub);
            }
        }
        self.hub.metrics.connections.dec();
    }
}

impl Hub {
    /// A hub; `replica` names this gateway on the bus, `source` is the
    /// source of events published through it.
    pub fn new(
        config: HubConfig,
        control: Channel,
        replica: &str,
        source: &str,
        policy: Arc<Policy>,
        metrics: HubMetrics,
        drain: Drain,
    ) -> Result<Hub, String> {
        // An instance id may hold characters a group name may not.
        let replica: String = replica
            .chars()
            .take(180)
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
            .collect();
        Ok(Hub {
            bus: Bus::new(control, &replica, source, metrics.clone()),
            config,
            policy,
            metrics,
            drain,
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// True when `req` is a WebSocket upgrade for the hub.
    pub fn wants<B>(&self, req: &Request<B>) -> bool {
        req.uri().path() == self.config.path && has_token(req.headers(), header::UPGRADE, "websocket")
    }

    /// Checks a handshake and upgrades, or refuses with a JSON error.
    pub async fn accept(self: &Arc<Self>, mut req: Request<Incoming>, request_id: &HeaderValue) -> Response<Body> {
        let refuse = |status: StatusCode, code: &'static str, msg: &str| {
            self.metrics.refuse(code);
            let mut r = json_error(status, code, msg, request_id);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r
        };
        let h = req.headers();
        let key = match h.get(header::SEC_WEBSOCKET_KEY) {
            Some(k)
                if req.method() == http::Method::GET
                    && has_token(h, header::CONNECTION, "upgrade")
                    && h.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13") =>
            {
                derive_accept_key(k.as_bytes())
            }
            _ => return refuse(StatusCode::BAD_REQUEST, "bad_handshake", "not a WebSocket version 13 handshake"),
        };
        if let Some(origin) = h.get(header::ORIGIN)
            && !self.origin_allowed(origin)
        {
            return refuse(StatusCode::FORBIDDEN, "origin", "this Origin may not open the hub");
        }
        if !self.policy.wait_synced().await {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "no_policy", "the gateway has no policy yet");
        }
        let policy = self.policy.current();
        let Some(jwt) = policy.jwt() else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", "the gateway's policy has no [jwt] section");
        };
        let offered = offered_protocols(h);
        let token = match jwt.token(h, req.uri().query()) {
            Ok(t) => t,
            Err(e) if e.code == "missing_token" => match protocol_token(&offered) {
                Some(t) => t.to_string(),
                None => return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", &e.reason),
            },
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", &e.reason),
        };
        let claims = match jwt.verify(&token).await {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", &e.reason),
        };
        let Some(sub) = claims.get("sub").and_then(|s| s.as_str()).filter(|s| !s.is_empty()).map(String::from) else {
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", "the token has no sub");
        };
        if self.drain.is_draining() {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "draining", "the gateway is shutting down");
        }
        let slot = match self.reserve(&sub) {
            Ok(slot) => slot,
            Err(Full::User) => {
                let msg = format!("at most {} hub connections per user", self.config.max_per_user);
                return refuse(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", &msg);
            }
            Err(Full::Hub) => {
                let msg = format!("the hub has {} connections", self.config.max_connections);
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "max_connections", &msg);
            }
        };
        let roles = policy.user_roles(&claims).await;
        // (An `exp` too far away to be an instant never expires the connection.)
        let expires = jwt.expires_at(&claims).and_then(|at| {
            tokio::time::Instant::now().checked_add(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
        });
        let chosen = choose_protocol(&offered);
        let upgrade = hyper::upgrade::on(&mut req);
        let hub = self.clone();
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .max_message_size(Some(self.config.max_message))
            .max_frame_size(Some(self.config.max_message));
        tokio::spawn(async move {
            let _slot = slot;
            match upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
                    conn::run(hub.clone(), ws, Session { id, sub, roles, expires }).await;
                }
                Err(e) => tracing::debug!(error = %e, "hub upgrade failed"),
            }
        });
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let rh = r.headers_mut();
        rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&key) {
            rh.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = chosen.and_then(|p| HeaderValue::from_str(p).ok()) {
            rh.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        r
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let o = &self.config.origins;
        o.is_empty() || o.iter().any(|a| a == "*" || a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    fn reserve(self: &Arc<Self>, sub: &str) -> Result<UserSlot, Full> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if self.metrics.connections.get() >= self.config.max_connections as i64 {
            return Err(Full::Hub);
        }
        let n = users.entry(sub.to_string()).or_insert(0);
        if *n >= self.config.max_per_user {
            return Err(Full::User);
        }
        *n += 1;
        self.metrics.connections.inc();
        Ok(UserSlot { hub: self.clone(), sub: sub.to_string() })
    }
}

/// The subprotocols the client offered, in order.
fn offered_protocols(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A token offered as `redfire.jwt.<jwt>`, or as the entry after `bearer`.
fn protocol_token(offered: &[String]) -> Option<&str> {
    if let Some(t) = offered.iter().find_map(|p| p.strip_prefix(TOKEN_PROTOCOL)) {
        return Some(t);
    }
    let i = offered.iter().position(|p| p.eq_ignore_ascii_case("bearer"))?;
    offered.get(i + 1).map(String::as_str)
}

/// The subprotocol to answer with: the first offered that carries no
/// token (browsers fail a handshake that offered protocols and got none).
fn choose_protocol(offered: &[String]) -> Option<&str> {
    let token = protocol_token(offered);
    offered.iter().map(String::as_str).find(|p| !p.starts_with(TOKEN_PROTOCOL) && Some(*p) != token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(v: &str) -> Vec<String> {
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(v).unwrap());
        offered_protocols(&h)
    }

    #[test]
    fn tokens_in_subprotocols_are_found_and_never_echoed() {
        let o = offered("bearer, eyJ.a.b");
        assert_eq!((protocol_token(&o), choose_protocol(&o)), (Some("eyJ.a.b"), Some("bearer")));
        let o = offered("redfire.v1, redfire.jwt.eyJ.a.b");
        assert_eq!((protocol_token(&o), choose_protocol(&o)), (Some("eyJ.a.b"), Some("redfire.v1")));
        let o = offered("redfire.jwt.eyJ.a.b");
        assert_eq!((protocol_token(&o), choose_protocol(&o)), (Some("eyJ.a.b"), None));
        let o = offered("chat");
        assert_eq!((protocol_token(&o), choose_protocol(&o)), (None, Some("chat")));
    }
}
