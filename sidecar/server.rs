//! Assembles `redfire-sidecar`: identity, discovery, app health checks,
//! registration (reporting health), the outbound listeners, the inbound mTLS listener, the admin port and the
//! drain sequence (SIGTERM: report DRAINING, stop accepting, let in-flight
//! requests finish within the grace period, deregister, exit 0).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Endpoint as GrpcEndpoint;

use crate::control::shutdown::Drain;
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_client::RegistryClient;
use crate::sidecar::admin::{self, Admin};
use crate::sidecar::config::Config;
use crate::sidecar::discovery::Discovery;
use crate::sidecar::health::{self, AppHealth};
use crate::sidecar::identity::{self, CredentialsRx, IdentityConfig};
use crate::sidecar::inbound::Inbound;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::pool::{CONNECTION_WINDOW, Pool, STREAM_WINDOW};
use crate::sidecar::outbound::proxy::Outbound;
use crate::sidecar::registration;
use crate::sidecar::transport::tls::server_config;

/// The sidecar failed to start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A listen address could not be bound.
    #[error("bind {what} {addr}: {source}")]
    Bind {
        /// Which setting.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else at start.
    #[error("{0}")]
    Start(String),
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The shared outbound listener.
    pub outbound_addr: SocketAddr,
    /// The per-upstream listeners, in config order.
    pub upstream_addrs: Vec<(String, SocketAddr)>,
    /// The inbound mTLS listener.
    pub inbound_addr: SocketAddr,
    /// The admin port.
    pub admin_addr: SocketAddr,
    drain: Drain,
    task: tokio::task::JoinHandle<()>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr).await.map_err(|source| SidecarError::Bind { what: what.into(), addr, source })
}

fn local(l: &TcpListener) -> Result<SocketAddr, SidecarError> {
    l.local_addr().map_err(|e| SidecarError::Start(e.to_string()))
}

impl Sidecar {
    /// Binds every listener (port 0 picks free ones) and starts.
    pub async fn start(config: Config) -> Result<Sidecar, SidecarError> {
        let outbound_l = bind("outbound_addr", config.outbound_addr).await?;
        let inbound_l = bind("inbound_addr", config.inbound_addr).await?;
        let admin_l = bind("admin_addr", config.admin_addr).await?;
        let mut upstream_ls = Vec::new();
        for (service, addr) in &config.upstreams {
            upstream_ls.push((service.clone(), bind(&format!("upstreams ({service})"), *addr).await?));
        }
        let (outbound_addr, inbound_addr, admin_addr) = (local(&outbound_l)?, local(&inbound_l)?, local(&admin_l)?);
        let upstream_addrs =
            upstream_ls.iter().map(|(s, l)| Ok((s.clone(), local(l)?))).collect::<Result<Vec<_>, SidecarError>>()?;

        if config.dev_plaintext {
            tracing::warn!(
                "dev_plaintext is on: traffic between sidecars is NOT encrypted and callers are NOT \
                 authenticated; for development only, never in production"
            );
        }
        let metrics = Arc::new(Metrics::default());
        let (creds, identity_task) =
            identity::spawn(IdentityConfig::new(config.control_addr.clone(), config.bootstrap_token.clone()))
                .map_err(|e| SidecarError::Start(e.to_string()))?;
        let (discovery, discovery_task) = Discovery::spawn(&config).map_err(SidecarError::Start)?;

        // The inbound TLS config follows the credentials (rotation: new
        // connections get the new certificate; none while there is none).
        let tls = Arc::new(ArcSwapOption::<rustls::ServerConfig>::empty());
        let tls_task = tokio::spawn(follow_credentials(creds.clone(), tls.clone()));

        let drain = Drain::default();
        let (finished_tx, finished_rx) = watch::channel(false);
        let registry = RegistryClient::new(
            GrpcEndpoint::from_shared(config.control_addr.clone())
                .map_err(|e| SidecarError::Start(format!("control_addr: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(5))
                .connect_lazy(),
        );
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("namespace".to_string(), config.namespace.clone());
        let instance = pb::Instance {
            service: config.service.clone(),
            instance_id: config.instance_id.clone(),
            address: config.advertise_address.clone(),
            ports: Some(pb::Ports { grpc: Some(u32::from(inbound_addr.port())), http: None, admin: None }),
            zone: config.zone.clone(),
            metadata,
            ..Default::default()
        };
        let (app_health, health_task) =
            health::spawn(&config.app_health, config.app_addr, config.app_protocol).map_err(SidecarError::Start)?;
        let (serving_tx, serving) = watch::channel(false);
        let serving_task = tokio::spawn(follow_serving(creds.clone(), app_health.clone(), serving_tx));
        let registration = tokio::spawn(registration::run(registry, instance, serving, drain.subscribe(), finished_rx));

        let outbound = Arc::new(Outbound::new(
            discovery.clone(),
            Pool::new(creds.clone(), metrics.clone(), config.dev_plaintext),
            metrics.clone(),
            config.stream_idle_timeout,
        ));
        let inbound = Arc::new(Inbound::new(
            config.service.clone(),
            config.app_addr,
            config.app_protocol,
            tls,
            config.dev_plaintext,
            metrics.clone(),
        ));
        let admin = Arc::new(Admin {
            config: config.clone(),
            metrics: metrics.clone(),
            discovery,
            creds: creds.clone(),
            app_health,
            draining: drain.subscribe(),
        });

        let mut servers = JoinSet::new();
        servers.spawn(serve_outbound(outbound_l, outbound.clone(), None, metrics.clone(), drain.clone()));
        for (service, l) in upstream_ls {
            servers.spawn(serve_outbound(l, outbound.clone(), Some(service), metrics.clone(), drain.clone()));
        }
        servers.spawn(inbound.serve(inbound_l, drain.clone()));
        let admin_stop = Drain::default();
        let admin_task = tokio::spawn(admin::serve(admin_l, admin, started(admin_stop.clone())));

        let grace = config.shutdown_grace;
        let task = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain.started().await;
                tracing::info!(?grace, "draining");
                // Listeners stop accepting; connections already open finish.
                let _ = tokio::time::timeout(grace, async { while servers.join_next().await.is_some() {} }).await;
                finished_tx.send_replace(true);
                let _ = tokio::time::timeout(Duration::from_secs(2), registration).await;
                for t in [identity_task, discovery_task, tls_task, serving_task].into_iter().chain(health_task) {
                    t.abort();
                }
                admin_stop.start();
                let _ = admin_task.await;
                tracing::info!("stopped");
            }
        });
        tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, service = %config.service, "redfire-sidecar serving");
        Ok(Sidecar { outbound_addr, upstream_addrs, inbound_addr, admin_addr, drain, task })
    }

    /// Starts draining (as SIGTERM does).
    pub fn shutdown(&self) {
        self.drain.start();
    }

    /// Waits until the sidecar has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn started(drain: Drain) {
    drain.started().await
}

async fn follow_credentials(mut creds: CredentialsRx, tls: Arc<ArcSwapOption<rustls::ServerConfig>>) {
    loop {
        let current = creds.borrow_and_update().clone();
        match current.map(|c| server_config(&c)) {
            Some(Ok(config)) => tls.store(Some(config)),
            Some(Err(e)) => tracing::error!(error = %e, "cannot use the workload certificate"),
            None => tls.store(None),
        }
        if creds.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps `serving` true while the sidecar can take traffic: it has a
/// workload certificate (peers cannot complete a handshake without one) and
/// its app is healthy.
async fn follow_serving(mut creds: CredentialsRx, mut app: watch::Receiver<AppHealth>, serving: watch::Sender<bool>) {
    let (mut creds_open, mut app_open) = (true, true);
    loop {
        let now = creds.borrow_and_update().is_some() && *app.borrow_and_update() == AppHealth::Serving;
        serving.send_if_modified(|s| std::mem::replace(s, now) != now);
        tokio::select! {
            r = creds.changed(), if creds_open => creds_open = r.is_ok(),
            r = app.changed(), if app_open => app_open = r.is_ok(),
            else => return,
        }
    }
}

/// Serves one outbound listener (HTTP/1.1 and h2c) until the drain; open
/// connections finish their in-flight requests gracefully.
async fn serve_outbound(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    service: Option<String>,
    metrics: Arc<Metrics>,
    drain: Drain,
) {
    let service: Option<Arc<str>> = service.map(Arc::from);
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            _ = drain.started() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let outbound = outbound.clone();
        let service = service.clone();
        let drain = drain.clone();
        let open = metrics.open_connection("outbound");
        conns.spawn(async move {
            let _open = open;
            let svc = service_fn(move |req| {
                let outbound = outbound.clone();
                let service = service.clone();
                async move { Ok::<_, Infallible>(outbound.handle(service.as_deref(), req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_connection_window_size(CONNECTION_WINDOW)
                .initial_stream_window_size(STREAM_WINDOW)
                .max_concurrent_streams(1024);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = drain.started() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
}
