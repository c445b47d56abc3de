//! A gateway in front of a small mesh for tests: control, one sidecar per
//! service app (with optional instance metadata), and `redfire-sidecar
//! --mode gateway` with a routes file written to a temporary path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use redfire::control::authz::token;
use redfire::control::config::Config;
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;

use super::mesh::{BoxBody, serve_app};
use super::{control, eventually, http_get, settings};

/// A user service app: answers JSON naming the instance `version` it was
/// started as, the path and query it received, each of `headers` (keyed by
/// name) and the caller's mesh identity (`peer`), with `Server:
/// users-app/1.0`.
pub async fn users_app(version: &'static str, headers: &'static [&'static str]) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    serve_app(true, move |req: http::Request<hyper::body::Incoming>| async move {
        let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let mut body = serde_json::json!({
            "version": version,
            "path": req.uri().path(),
            "query": req.uri().query(),
            "peer": h("x-redfire-peer-identity"),
        });
        for name in headers {
            body[*name] = h(name).into();
        }
        let body: BoxBody = Full::new(bytes::Bytes::from(body.to_string())).map_err(|n| match n {}).boxed_unsync();
        let mut resp = http::Response::new(body);
        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
        resp.headers_mut().insert("server", http::HeaderValue::from_static("users-app/1.0"));
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await
}

/// One service behind the gateway.
pub struct Service<'a> {
    pub name: &'a str,
    pub app: SocketAddr,
    /// `h2c` or `http1`.
    pub protocol: &'a str,
    /// `key=value,...` instance metadata.
    pub metadata: &'a str,
}

pub struct GatewayMesh {
    pub control: Control,
    pub sidecars: Vec<Sidecar>,
    pub gateway: Sidecar,
    pub addr: SocketAddr,
    pub routes: TempFile,
}

/// A file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("redfire-{}-{:08x}-{name}", std::process::id(), fastrand::u32(..)));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }

    /// Replaces the contents so that a poller sees a new modification time.
    pub fn rewrite(&self, contents: &str) {
        let before = std::fs::metadata(&self.0).and_then(|m| m.modified()).ok();
        loop {
            std::fs::write(&self.0, contents).unwrap();
            if std::fs::metadata(&self.0).and_then(|m| m.modified()).ok() != before {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn gateway_mesh(services: &[Service<'_>], routes_text: &str, extra: SidecarSettings) -> GatewayMesh {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let control_settings = settings();
    let control = control(control_settings.clone()).await;
    let ca = Ca::load(Config::from_settings(control_settings).unwrap().ca).await.unwrap();
    let base = |service: &str| SidecarSettings {
        control_addr: Some(control.grpc_url()),
        control_ca_file: control.trust_bundle_file.as_ref().map(|p| p.display().to_string()),
        service: Some(service.into()),
        bootstrap_token: Some(token::create(&ca, "default", service, Duration::from_secs(600)).unwrap()),
        inbound_addr: Some("127.0.0.1:0".into()),
        outbound_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        shutdown_grace: Some("2s".into()),
        log_level: Some("warn".into()),
        ..Default::default()
    };
    let mut sidecars = Vec::new();
    for (i, s) in services.iter().enumerate() {
        let config = SidecarConfig::from_settings(SidecarSettings {
            app_addr: Some(s.app.to_string()),
            app_protocol: Some(s.protocol.into()),
            metadata: Some(s.metadata.into()),
            instance_id: Some(format!("{}-{i}", s.name)),
            ..base(s.name)
        })
        .unwrap();
        sidecars.push(Sidecar::start(config).await.unwrap());
    }
    let routes = TempFile::new("routes.toml", routes_text);
    let config = SidecarConfig::from_settings(extra.or(SidecarSettings {
        mode: Some("gateway".into()),
        gateway_addr: Some("127.0.0.1:0".into()),
        // No routes text: the routes come with the gateway's policy from control.
        routes: (!routes_text.is_empty()).then(|| routes.0.display().to_string()),
        ..base("gateway")
    }))
    .unwrap();
    let gateway = Sidecar::start(config).await.unwrap();
    let addr = gateway.gateway_addr.expect("gateway mode binds the gateway listener");
    let ready = eventually(Duration::from_secs(10), || async {
        let (_, body) = http_get(gateway.admin_addr, "/admin/endpoints").await;
        let mut ok = http_get(gateway.admin_addr, "/ready").await.0 == 200;
        for s in &sidecars {
            ok = ok
                && http_get(s.admin_addr, "/ready").await.0 == 200
                && body.contains(&format!("\"address\": \"127.0.0.1:{}\"", s.inbound_addr.port()));
        }
        ok
    })
    .await;
    assert!(ready, "gateway and sidecars ready, every service endpoint discovered by the gateway");
    GatewayMesh { control, sidecars, gateway, addr, routes }
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
pub async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path).header("host", "api.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect()).await.unwrap().unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, body.to_vec())
}
