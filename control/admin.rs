//! The admin HTTP port: `/health` (alive), `/ready` (store reachable and not
//! draining), `/metrics` (Prometheus text), `/admin/services` (JSON) and
//! `/admin/policy` (policies in force with versions, and policy files that
//! failed to load).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::control::metrics::Metrics;
use crate::control::registry::view::View;
use crate::mesh::process::admin_http::serve_http1;
use crate::mesh::process::shutdown::Drain;

/// What the admin endpoints read.
pub struct Admin {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// The registry view.
    pub view: Arc<View>,
    /// `Err(reason)` when the store cannot take writes.
    pub store_ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Draining makes `/ready` fail.
    pub drain: Drain,
    /// Policies in force, for `/admin/policy`.
    pub policies: Arc<crate::control::policy::store::PolicyStore>,
    /// The gRPC API is plaintext (`dev_insecure_control`): said on `/health`.
    pub insecure: bool,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    fn ready(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        (self.store_ready)()
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/health" if self.insecure => text(
                StatusCode::OK,
                "ok\nWARNING: dev_insecure_control: the gRPC API is plaintext; for local experiments only\n".into(),
            ),
            "/health" => text(StatusCode::OK, "ok\n".into()),
            "/ready" => match self.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            },
            "/metrics" => {
                let snap = self.view.snapshot();
                let services = snap.instances.iter().map(|i| i.service.as_str());
                let body =
                    self.metrics.render(services, self.view.watchers(), snap.revision, (self.store_ready)().is_ok());
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            "/admin/services" => {
                let snap = self.view.snapshot();
                let mut services = serde_json::Map::new();
                for i in snap.instances {
                    let entry = services.entry(i.service.clone()).or_insert_with(|| serde_json::json!([]));
                    if let (Some(list), Ok(v)) = (entry.as_array_mut(), serde_json::to_value(&i)) {
                        list.push(v);
                    }
                }
                let body = serde_json::json!({ "epoch": snap.epoch, "revision": snap.revision, "services": services });
                let mut r = text(StatusCode::OK, format!("{body:#}\n"));
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                r
            }
            "/admin/policy" => {
                let services: serde_json::Map<String, serde_json::Value> = self
                    .policies
                    .all()
                    .values()
                    .map(|p| {
                        let doc = serde_json::from_str::<serde_json::Value>(&p.document_json).unwrap_or_default();
                        let v = serde_json::json!({ "version": p.version, "source": p.source, "document": doc });
                        (p.service.clone(), v)
                    })
                    .collect();
                let body = serde_json::json!({ "services": services, "errors": self.policies.errors() });
                let mut r = text(StatusCode::OK, format!("{body:#}\n"));
                r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                r
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /health, /ready, /metrics, /admin/services, /admin/policy\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Serves the admin port until `stop` resolves.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: impl std::future::Future<Output = ()>) {
    serve_http1(listener, move |req| admin.handle(req), stop).await
}
