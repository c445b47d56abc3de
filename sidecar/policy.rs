//! Policy enforcement at the sidecar's inbound (and, later, the gateway).
//!
//! A task Watches control's `redfire.policy.v1` for this service's policy,
//! compiles each new snapshot ([`Compiled`]) and swaps it in atomically
//! (`ArcSwap`): requests in flight finish under the policy they started
//! with, connections are never dropped. A snapshot that does not compile is
//! logged and the current policy stays. Until the first snapshot arrives
//! requests wait up to [`FIRST_SYNC_WAIT`], then get 503 (fail closed).
//!
//! Per request, [`Compiled::check`], in order:
//! 1. the path is normalised (`path`), 400 if it cannot be;
//! 2. service authorization by the caller's SPIFFE ID (`authz`), 403;
//! 3. unless the path/method is public: JWT (`jwt`), 401 + `WWW-Authenticate`;
//! 4. RBAC on the verified roles, plus roles kept in Redis when configured
//!    (`rbac`, `roles`), 403.
//!
//! Claim headers are always stripped from the request first, so a client
//! can never forge them; the verified ones are then added.

pub mod authz;
pub mod jwt;
pub mod path;
pub mod rbac;
pub mod roles;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Uri};
use tokio::sync::watch;

use crate::mesh::jwks::JwksRegistry;
use crate::mesh::policy::PolicyDoc;
use crate::mesh::policy::ratelimit::from_policy_tables;
use crate::mesh::policy::route::RouteTable;
use crate::mesh::policy::routes_file;
use crate::mesh::policy::topics::TopicRule;
use crate::proto::policy::v1 as pb;
use crate::proto::policy::v1::policy_client::PolicyClient;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::ratelimit::{RateLimitMetrics, RateLimiter, RedisBackend, RequestFacts};
use crate::sidecar::shared::errors::ProxyError;
use authz::Authz;
use jwt::JwtAuth;
use rbac::Rbac;
use roles::RoleLookup;
use tonic::transport::Channel;

/// How long a request waits for the first policy before failing closed.
pub const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401 / UNAUTHENTICATED; `code` is the metric label.
    Unauthenticated {
        /// Metric label.
        code: &'static str,
        /// Short reason.
        reason: String,
    },
    /// 403 / PERMISSION_DENIED by service authorization (`stage` = `service`) or RBAC (`rbac`).
    Forbidden {
        /// `service` or `rbac`.
        stage: &'static str,
        /// Short reason.
        reason: String,
    },
    /// 400: the path cannot be normalised.
    BadRequest(String),
}

impl From<Rejection> for ProxyError {
    fn from(r: Rejection) -> ProxyError {
        match r {
            Rejection::Unauthenticated { reason, .. } => ProxyError::Unauthenticated(reason),
            Rejection::Forbidden { reason, .. } => ProxyError::PermissionDenied(reason),
            Rejection::BadRequest(reason) => ProxyError::BadRequest(reason),
        }
    }
}

/// What an admitted request gets before it goes on.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Headers removed (claim headers a client may have forged).
    pub strip: Vec<HeaderName>,
    /// Headers added (verified claims).
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// The normalised path and original query, when it differs from the request's.
    pub path_and_query: Option<String>,
    /// The verified token's claims (rate limits may key on them).
    pub claims: Option<jwt::Claims>,
}

impl Admitted {
    /// Applies the changes to the request.
    pub fn apply(self, parts: &mut Parts) {
        for h in &self.strip {
            parts.headers.remove(h);
        }
        for (h, v) in self.add {
            parts.headers.insert(h, v);
        }
        if let Some(pq) = self.path_and_query {
            let mut uri = parts.uri.clone().into_parts();
            if let Ok(pq) = pq.parse() {
                uri.path_and_query = Some(pq);
                if let Ok(u) = Uri::from_parts(uri) {
                    parts.uri = u;
                }
            }
        }
    }
}

/// One policy version, ready to enforce.
#[derive(Debug)]
pub struct Compiled {
    /// Version from control (0: no policy).
    pub version: u64,
    authz: Option<Authz>,
    jwt: Option<JwtAuth>,
    rbac: Option<Rbac>,
    roles: Option<RoleLookup>,
    /// Rate-limit rules as given.
    pub rate_limits: Vec<toml::Table>,
    /// The limiter built from `rate_limits` (none when there are no rules).
    limiter: Option<RateLimiter>,
    /// Gateway routes from the document's `[[route]]` (empty elsewhere).
    pub routes: Arc<RouteTable>,
    /// WebSocket hub topic rules (gateway).
    topics: Vec<TopicRule>,
}

impl Compiled {
    /// No policy: everything passes unchanged.
    pub fn none() -> Compiled {
        Compiled {
            version: 0,
            authz: None,
            jwt: None,
            rbac: None,
            roles: None,
            rate_limits: Vec::new(),
            limiter: None,
            routes: Arc::default(),
            topics: Vec::new(),
        }
    }

    /// Compiles a document; JWKS caches come from `registry`.
    pub fn new(version: u64, doc: &PolicyDoc, registry: &JwksRegistry) -> Result<Compiled, String> {
        Ok(Compiled {
            version,
            authz: doc.authz.clone().map(Authz::new),
            jwt: doc.jwt.as_ref().map(|j| JwtAuth::new(j, registry)).transpose()?,
            rbac: doc.rbac.as_ref().map(Rbac::new),
            roles: doc.rbac.as_ref().and_then(|r| r.redis.as_ref()).map(RoleLookup::new).transpose()?,
            rate_limits: doc.rate_limits.clone(),
            limiter: None,
            routes: Arc::new(routes_file::from_tables(&doc.route, version, &format!("control policy v{version}"))?),
            topics: doc.topics.clone(),
        })
    }

    /// Builds the limiter of `rate_limits`, carrying counters over from
    /// `previous` (the limiter of the version in force) where rules stay.
    fn with_limiter(
        mut self,
        previous: Option<&RateLimiter>,
        redis: Option<&RedisBackend>,
        metrics: &RateLimitMetrics,
    ) -> Result<Compiled, String> {
        if self.rate_limits.is_empty() {
            return Ok(self);
        }
        let config = from_policy_tables(&self.rate_limits)?;
        let limiter = match previous {
            Some(p) => p.reload(&config),
            None => RateLimiter::with_metrics(&config, redis.cloned(), metrics.clone()),
        }
        .map_err(|e| format!("rate_limits: {e}"))?;
        self.limiter = Some(limiter);
        Ok(self)
    }

    /// The JWT part, if any.
    pub fn jwt(&self) -> Option<&JwtAuth> {
        self.jwt.as_ref()
    }

    /// The WebSocket hub's topic rules.
    pub fn topics(&self) -> &[TopicRule] {
        &self.topics
    }

    /// A verified user's roles: from the roles claim (`rbac.roles_claim`,
    /// else `roles`) plus those kept in Redis when configured.
    pub async fn user_roles(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
        let claim = self.rbac.as_ref().map(|r| r.roles_claim.as_str()).unwrap_or("roles");
        let mut roles: Vec<String> = jwt::roles(claims, claim).into_iter().map(String::from).collect();
        if let (Some(lookup), Some(sub)) = (&self.roles, claims.get("sub").and_then(|s| s.as_str())) {
            roles.extend(lookup.roles(sub).await.iter().cloned());
        }
        roles
    }

    /// Decides on one request: `parts` as received, `peer` the caller's
    /// SPIFFE ID from mTLS (`None` at an edge without client certificates).
    pub async fn check(&self, parts: &Parts, peer: Option<&str>) -> Result<Admitted, Rejection> {
        if self.version == 0 {
            return Ok(Admitted::default());
        }
        let (path, path_and_query) =
            path::normalise_uri(&parts.uri).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let mut admitted = Admitted { path_and_query, ..Default::default() };
        let method = parts.method.as_str();
        if let Some(a) = &self.authz {
            a.check(peer, method, &path).map_err(|reason| Rejection::Forbidden { stage: "service", reason })?;
        }
        let Some(jwt) = &self.jwt else { return Ok(admitted) };
        admitted.strip = jwt.claim_headers.iter().map(|(_, h)| h.clone()).collect();
        if jwt.is_public(&parts.method, &path) {
            return Ok(admitted);
        }
        let unauth = |e: jwt::AuthError| Rejection::Unauthenticated { code: e.code, reason: e.reason };
        let token = jwt.token(&parts.headers, parts.uri.query()).map_err(unauth)?;
        let claims = jwt.verify(&token).await.map_err(unauth)?;
        if let Some(rbac) = &self.rbac {
            let mut roles = jwt::roles(&claims, &rbac.roles_claim);
            let stored = match (&self.roles, claims.get("sub").and_then(|s| s.as_str())) {
                (Some(lookup), Some(sub)) => lookup.roles(sub).await,
                _ => Arc::default(),
            };
            roles.extend(stored.iter().map(String::as_str));
            rbac.check(method, &path, roles.iter().copied())
                .map_err(|reason| Rejection::Forbidden { stage: "rbac", reason })?;
        }
        admitted.add = jwt.headers(&claims);
        admitted.claims = Some(claims);
        Ok(admitted)
    }
}

/// The policy in force for one service, kept current from control.
#[derive(Debug)]
pub struct Policy {
    service: String,
    current: ArcSwap<Compiled>,
    /// The document in force, as received: a restarted in-memory control
    /// counts versions from 1 again, so a version alone does not identify it.
    document: std::sync::Mutex<String>,
    synced: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

/// What the rate limiters of every policy version share.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Redis for rules with `storage = "redis"` (none: such rules are refused).
    pub redis: Option<RedisBackend>,
    /// Counters, registered once in the sidecar's registry.
    pub metrics: RateLimitMetrics,
}

/// Why a request was refused: a policy decision, or a rate limit (whose
/// response carries `Retry-After` and `RateLimit-*`).
#[derive(Debug)]
pub enum Refused {
    /// Authentication, authorization, or no policy yet.
    Policy(ProxyError),
    /// Limited (429 / RESOURCE_EXHAUSTED) or, fail-closed, the limit store is down (503).
    Limited(http::Response<crate::sidecar::Body>),
}

impl Refused {
    /// The response for the caller.
    pub fn respond(self, grpc: bool) -> http::Response<crate::sidecar::Body> {
        match self {
            Refused::Policy(e) => e.respond(grpc),
            Refused::Limited(r) => r,
        }
    }
}

impl Policy {
    /// A policy that never changes (tests, benchmarks, a gateway without control).
    pub fn fixed(service: &str, compiled: Compiled, metrics: Arc<Metrics>) -> Arc<Policy> {
        Arc::new(Policy {
            service: service.into(),
            current: ArcSwap::from_pointee(compiled),
            document: Default::default(),
            synced: watch::channel(true).1,
            metrics,
            limits: Limits::default(),
        })
    }

    /// Starts watching control on `channel` for `service`'s policy.
    pub fn spawn(
        channel: Channel,
        service: &str,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> (Arc<Policy>, tokio::task::JoinHandle<()>) {
        let (synced_tx, synced) = watch::channel(false);
        let p = Arc::new(Policy {
            service: service.into(),
            current: ArcSwap::from_pointee(Compiled::none()),
            document: Default::default(),
            synced,
            metrics,
            limits,
        });
        let task = tokio::spawn(run(p.clone(), PolicyClient::new(channel), synced_tx));
        (p, task)
    }

    /// The policy now.
    pub fn current(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    /// The version in force (0: none).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// True once a first snapshot arrived from control.
    pub fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Enforces the policy on `parts` (changing headers and path as
    /// admitted), recording refusals in the metrics.
    pub async fn enforce(&self, parts: &mut Parts, peer: Option<&str>, client_ip: IpAddr) -> Result<(), Refused> {
        self.enforce_on_route(parts, peer, client_ip, None).await
    }

    /// Waits up to [`FIRST_SYNC_WAIT`] for the first snapshot; false if
    /// none came.
    pub async fn wait_synced(&self) -> bool {
        if self.synced() {
            return true;
        }
        let mut rx = self.synced.clone();
        tokio::time::timeout(FIRST_SYNC_WAIT, rx.wait_for(|s| *s)).await.is_ok()
    }

    /// [`Policy::enforce`] for a request a router matched to `route` (the
    /// gateway): rate-limit rules with `route = "..."` apply to it.
    pub async fn enforce_on_route(
        &self,
        parts: &mut Parts,
        peer: Option<&str>,
        client_ip: IpAddr,
        route: Option<&str>,
    ) -> Result<(), Refused> {
        if !self.wait_synced().await {
            self.metrics.auth_failure(&self.service, "policy_not_loaded");
            return Err(Refused::Policy(ProxyError::NoPolicy));
        }
        let policy = self.current.load_full();
        match policy.check(parts, peer).await {
            Ok(mut a) => {
                let claims = a.claims.take();
                a.apply(parts);
                let Some(limiter) = &policy.limiter else { return Ok(()) };
                let facts = RequestFacts {
                    method: &parts.method,
                    path: parts.uri.path(),
                    headers: &parts.headers,
                    peer_ip: client_ip,
                    claims: claims.as_deref(),
                    route,
                };
                let decision = limiter.check(&facts).await;
                match decision.respond(crate::sidecar::ratelimit::is_grpc(&parts.headers)) {
                    Some(refused) => Err(Refused::Limited(refused)),
                    None => Ok(()),
                }
            }
            Err(r) => {
                match &r {
                    Rejection::Unauthenticated { code, .. } => self.metrics.auth_failure(&self.service, code),
                    Rejection::Forbidden { stage, .. } => self.metrics.authz_denial(&self.service, stage),
                    Rejection::BadRequest(_) => self.metrics.auth_failure(&self.service, "bad_path"),
                }
                Err(Refused::Policy(r.into()))
            }
        }
    }

    fn install(&self, snap: pb::PolicySnapshot, registry: &JwksRegistry) {
        let mut document = self.document.lock().unwrap_or_else(|e| e.into_inner());
        if snap.version == self.version() && snap.document_json == *document {
            return;
        }
        let compiled = if snap.version == 0 {
            Ok(Compiled::none())
        } else {
            serde_json::from_str::<PolicyDoc>(&snap.document_json)
                .map_err(|e| e.to_string())
                .and_then(|doc| Compiled::new(snap.version, &doc, registry))
                .and_then(|c| {
                    let current = self.current.load();
                    c.with_limiter(current.limiter.as_ref(), self.limits.redis.as_ref(), &self.limits.metrics)
                })
        };
        match compiled {
            Ok(c) => {
                tracing::info!(service = %self.service, version = c.version, source = %snap.source, "policy in force");
                self.metrics.policy_version.set(c.version as i64);
                self.current.store(Arc::new(c));
                *document = snap.document_json;
            }
            Err(e) => {
                self.metrics.auth_failure(&self.service, "policy_rejected");
                tracing::error!(version = snap.version, error = %e, "policy from control does not compile; keeping version {}", self.version());
            }
        }
    }
}

async fn run(p: Arc<Policy>, mut client: PolicyClient<tonic::transport::Channel>, synced: watch::Sender<bool>) {
    let registry = JwksRegistry::default();
    let mut failures = 0u32;
    loop {
        match client.watch(pb::WatchRequest { service: p.service.clone() }).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(snap)) => {
                            failures = 0;
                            p.install(snap, &registry);
                            synced.send_replace(true);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "policy watch ended; keeping the policy in force");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch policy; keeping the policy in force"),
        }
        failures += 1;
        let cap = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
        tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
    }
}
