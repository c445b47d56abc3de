//! The sidecar's admin port: `/health` (alive), `/ready` (has a workload
//! certificate and a discovery connection, the app passes its health checks
//! when they are configured, not draining), `/metrics`,
//! `/admin/endpoints` (every upstream's endpoints with load and health) and
//! `/admin/config` (settings, identity and the policy version in force).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::sidecar::config::Config;
use crate::sidecar::inbound::app_health::AppHealth;
use crate::sidecar::metrics::{Metrics, UpstreamState};
use crate::sidecar::outbound::upstreams::Upstreams;
use crate::sidecar::transport::credentials::CredentialsRx;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct Admin {
    /// Settings in force.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Discovery.
    pub discovery: Arc<Upstreams>,
    /// Workload credentials.
    pub creds: CredentialsRx,
    /// The app's health from its health checks (always serving without).
    pub app_health: tokio::sync::watch::Receiver<AppHealth>,
    /// Draining makes `/ready` fail.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// The policy in force.
    pub policy: Arc<crate::sidecar::policy::Policy>,
    /// The gateway's route table (gateway mode only): `/admin/routes`, `/admin/services`.
    pub routes: Option<crate::sidecar::gateway::Routes>,
}

impl Admin {
    fn ready(&self) -> Result<(), String> {
        if *self.draining.borrow() {
            return Err("draining".into());
        }
        if self.creds.borrow().is_none() {
            return Err("no workload certificate".into());
        }
        if !self.discovery.connected() {
            return Err("no discovery connection to control".into());
        }
        if *self.app_health.borrow() != AppHealth::Serving {
            return Err("the app fails its health checks".into());
        }
        if !self.policy.synced() {
            return Err("no policy from control yet".into());
        }
        Ok(())
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into(), "text/plain");
        }
        match req.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
            "/ready" => match self.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), "text/plain"),
            },
            "/metrics" => {
                if let Some(c) = self.creds.borrow().as_ref() {
                    let left = match c.not_after.duration_since(std::time::SystemTime::now()) {
                        Ok(d) => d.as_secs() as i64,
                        Err(e) => -(e.duration().as_secs() as i64),
                    };
                    self.metrics.cert_expiry_seconds.set(left);
                }
                self.metrics.app_serving.set(i64::from(*self.app_health.borrow() == AppHealth::Serving));
                self.metrics.set_upstreams(self.discovery.upstreams().iter().map(|u| {
                    let set = u.set.load();
                    let state = UpstreamState {
                        ejections: set.outliers.ejections(),
                        ejected: set.outliers.ejected(),
                        endpoints: set.balancer.endpoints().len(),
                        in_flight: u.limit.in_flight(),
                    };
                    (u.service.clone(), state)
                }));
                text(
                    StatusCode::OK,
                    self.metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            }
            "/admin/endpoints" => {
                let mut out = serde_json::Map::new();
                for u in self.discovery.upstreams() {
                    let set = u.set.load();
                    let eps: Vec<_> = set
                        .balancer
                        .endpoints()
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let idx = crate::sidecar::outbound::balance::EndpointIdx::new(i);
                            serde_json::json!({
                                "id": e.id,
                                "address": e.address.to_string(),
                                "weight": e.weight,
                                "zone": e.zone,
                                "identity": set.identities.get(i),
                                "outstanding": set.balancer.outstanding(idx),
                                "health": format!("{:?}", set.outliers.health(idx)),
                            })
                        })
                        .collect();
                    out.insert(
                        u.service.clone(),
                        serde_json::json!({ "in_flight": u.limit.in_flight(), "endpoints": eps }),
                    );
                }
                text(StatusCode::OK, format!("{:#}\n", serde_json::Value::Object(out)), "application/json")
            }
            "/admin/routes" if self.routes.is_some() => {
                let table = self.routes.as_ref().map(|r| r.current()).unwrap_or_default();
                text(
                    StatusCode::OK,
                    format!("{:#}\n", crate::sidecar::gateway::routes_json(&table)),
                    "application/json",
                )
            }
            "/admin/services" if self.routes.is_some() => {
                // Every service the routes name, with what discovery knows of it.
                let table = self.routes.as_ref().map(|r| r.current()).unwrap_or_default();
                let mut out = serde_json::Map::new();
                for r in &table.routes {
                    let entry = out.entry(r.service.clone()).or_insert_with(|| {
                        let known = self.discovery.upstreams().into_iter().find(|u| u.service == r.service);
                        let (endpoints, available, in_flight) = match &known {
                            Some(u) => {
                                let set = u.set.load();
                                let n = set.balancer.endpoints().len();
                                let ok = (0..n)
                                    .filter(|i| {
                                        set.outliers
                                            .is_available(crate::sidecar::outbound::balance::EndpointIdx::new(*i))
                                    })
                                    .count();
                                (n, ok, u.limit.in_flight())
                            }
                            None => (0, 0, 0),
                        };
                        serde_json::json!({
                            "known": known.is_some(), "endpoints": endpoints, "available": available,
                            "in_flight": in_flight, "routes": [],
                        })
                    });
                    if let Some(list) = entry.get_mut("routes").and_then(|v| v.as_array_mut()) {
                        list.push(serde_json::Value::String(r.name.clone()));
                    }
                }
                text(StatusCode::OK, format!("{:#}\n", serde_json::Value::Object(out)), "application/json")
            }
            "/admin/config" => {
                let c = &self.config;
                let identity =
                    self.creds.borrow().as_ref().map(|c| (c.spiffe_id.clone(), format!("{:?}", c.not_after)));
                let body = serde_json::json!({
                    "service": c.service, "namespace": c.namespace, "instance_id": c.instance_id,
                    "control_addr": c.control.url, "inbound_addr": c.inbound_addr.to_string(),
                    "outbound_addr": c.outbound_addr.to_string(), "app_addr": c.app_addr.to_string(),
                    "app_protocol": format!("{:?}", c.app_protocol), "balancer": format!("{:?}", c.balancer),
                    "max_in_flight": c.max_in_flight,
                    "hash_header": c.hash_header.as_str(), "zone": c.zone,
                    "service_balancers": c.service_balancers.iter()
                        .map(|(s, b)| (s.clone(), format!("{:?}:{}", b.policy, b.hash_header))).collect::<Vec<_>>(),
                    "app_health_check": format!("{:?}", c.app_health.kind),
                    "app_health": format!("{:?}", *self.app_health.borrow()), "trust_domain": c.trust_domain, "worker_threads": c.worker_threads,
                    "dev_plaintext": c.dev_plaintext, "stream_idle_timeout": format!("{:?}", c.stream_idle_timeout),
                    "ejection_failures": c.ejection_failures, "ejection_time": format!("{:?}", c.ejection_time),
                    "upstreams": c.upstreams.iter().map(|(s, a)| (s.clone(), a.to_string())).collect::<Vec<_>>(),
                    "identity": identity,
                    "policy_version": self.policy.version(),
                });
                text(StatusCode::OK, format!("{body:#}\n"), "application/json")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /health, /ready, /metrics, /admin/endpoints, /admin/config\n".into(),
                "text/plain",
            ),
        }
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Serves the admin port until `stop` resolves.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: impl std::future::Future<Output = ()>) {
    crate::mesh::process::admin_http::serve_http1(listener, move |req| admin.handle(req), stop).await
}
