//! Assembles `redfire-sidecar`: identity, discovery, app health checks,
//! registration (reporting health), the outbound listeners, the inbound mTLS listener, the admin port and the
//! drain sequence (SIGTERM: report DRAINING, stop accepting, let in-flight
//! requests finish within the grace period, deregister, exit 0).
//!
//! In gateway mode ([`crate::sidecar::gateway`]) the same identity,
//! discovery and outbound path serve the gateway listener instead: no app,
//! so no inbound listener, no outbound listeners and no registration.

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

use crate::mesh::process::shutdown::Drain;
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_client::RegistryClient;
use crate::sidecar::admin::{self, Admin};
use crate::sidecar::config::{Config, Mode};
use crate::sidecar::control_client::discovery;
use crate::sidecar::control_client::identity::{self, IdentityConfig};
use crate::sidecar::control_client::registration;
use crate::sidecar::gateway::hub::{Hub, metrics::HubMetrics};
use crate::sidecar::gateway::{self, cors::Cors, forward::Gateway, metrics::GatewayMetrics};
use crate::sidecar::inbound::Inbound;
use crate::sidecar::inbound::app_health::{self as health, AppHealth};
use crate::sidecar::metrics::Metrics;
use crate::sidecar::outbound::pool::{CONNECTION_WINDOW, Pool, STREAM_WINDOW};
use crate::sidecar::outbound::proxy::Outbound;
use crate::sidecar::policy::{self, Policy};
use crate::sidecar::ratelimit::{RateLimitMetrics, RedisBackend};
use crate::sidecar::transport::control;
use crate::sidecar::transport::credentials::CredentialsRx;
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
    /// The shared outbound listener (gateway mode: `0.0.0.0:0`, not bound).
    pub outbound_addr: SocketAddr,
    /// The per-upstream listeners, in config order (none in gateway mode).
    pub upstream_addrs: Vec<(String, SocketAddr)>,
    /// The inbound mTLS listener (gateway mode: `0.0.0.0:0`, not bound).
    pub inbound_addr: SocketAddr,
    /// The gateway ingress listener (gateway mode only).
    pub gateway_addr: Option<SocketAddr>,
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
        let sidecar_mode = config.mode == Mode::Sidecar;
        let (outbound_l, inbound_l) = if sidecar_mode {
            (
                Some(bind("outbound_addr", config.outbound_addr).await?),
                Some(bind("inbound_addr", config.inbound_addr).await?),
            )
        } else {
            (None, None)
        };
        let gateway_l = match &config.gateway {
            Some(g) => Some(bind("gateway_addr", g.addr).await?),
            None => None,
        };
        let admin_l = bind("admin_addr", config.admin_addr).await?;
        let mut upstream_ls = Vec::new();
        if sidecar_mode {
            for (service, addr) in &config.upstreams {
                upstream_ls.push((service.clone(), bind(&format!("upstreams ({service})"), *addr).await?));
            }
        }
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let bound = |l: &Option<TcpListener>| l.as_ref().map(local).transpose();
        let outbound_addr = bound(&outbound_l)?.unwrap_or(unbound);
        let inbound_addr = bound(&inbound_l)?.unwrap_or(unbound);
        let gateway_addr = bound(&gateway_l)?;
        let admin_addr = local(&admin_l)?;
        let upstream_addrs =
            upstream_ls.iter().map(|(s, l)| Ok((s.clone(), local(l)?))).collect::<Result<Vec<_>, SidecarError>>()?;
        let mut metrics = Metrics::default();
        let gateway_metrics = config.gateway.is_some().then(|| GatewayMetrics::register(metrics.registry_mut()));
        let reloads = |what| gateway_metrics.as_ref().map(|m| m.reloads(what)).unwrap_or_default();
        // Gateway: routes and TLS load now, so a bad file fails the start.
        let mut data_tasks = Vec::new();
        let gateway_data = match &config.gateway {
            Some(g) => {
                let routes = match &g.routes {
                    Some(file) => {
                        let (routes, task) =
                            gateway::watch_routes(file.clone(), reloads("routes")).map_err(SidecarError::Start)?;
                        data_tasks.push(task);
                        Some(routes)
                    }
                    None => None,
                };
                let tls = match &g.tls {
                    Some((cert, key)) => {
                        let (tls, task) = gateway::tls::watch(cert.clone(), key.clone(), reloads("tls"))
                            .map_err(SidecarError::Start)?;
                        data_tasks.push(task);
                        Some(tls)
                    }
                    None => None,
                };
                let transcode = if g.descriptors.is_empty() {
                    None
                } else {
                    let (table, task) = gateway::transcode::watch(g.descriptors.clone(), reloads("descriptors"))
                        .map_err(SidecarError::Start)?;
                    data_tasks.push(task);
                    Some(table)
                };
                Some((g.clone(), routes, tls, transcode))
            }
            None => None,
        };

        if !config.control.is_tls() {
            tracing::warn!(
                "dev_insecure_control is on: the connection to control is PLAINTEXT (bootstrap token, policies \
                 and endpoints readable and forgeable on the network); for local experiments only"
            );
        }
        if config.dev_plaintext {
            tracing::warn!(
                "dev_plaintext is on: traffic between sidecars is NOT encrypted and callers are NOT \
                 authenticated; for development only, never in production"
            );
        }
        let hub_metrics =
            config.gateway.as_ref().and_then(|g| g.ws.as_ref()).map(|_| HubMetrics::register(metrics.registry_mut()));
        let limits = policy::Limits {
            redis: match &config.ratelimit_redis_url {
                Some(url) => {
                    Some(RedisBackend::open(url, &config.ratelimit_redis_prefix).map_err(SidecarError::Start)?)
                }
                None => None,
            },
            metrics: RateLimitMetrics::default(),
        };
        limits.metrics.register(metrics.registry_mut());
        let metrics = Arc::new(metrics);
        let mut identity_config = IdentityConfig::new(config.control.clone(), config.bootstrap_token.clone());
        identity_config.key_file = config.identity_key_file.clone();
        let (creds, identity_task) =
            identity::spawn(identity_config).map_err(|e| SidecarError::Start(e.to_string()))?;
        // One channel to control for the watch streams (discovery, policy,
        // the hub's event streams), one with a call timeout for the
        // registration; both present the workload certificate.
        let control = control::channel(&config.control, &creds, None).map_err(SidecarError::Start)?;
        let (discovery, discovery_task) = discovery::spawn(&config, control.clone());

        let (policy, policy_task) = Policy::spawn(control.clone(), &config.service, metrics.clone(), limits);

        // The inbound TLS config follows the credentials (rotation: new
        // connections get the new certificate; none while there is none).
        let tls = Arc::new(ArcSwapOption::<rustls::ServerConfig>::empty());
        let tls_task = tokio::spawn(follow_credentials(creds.clone(), tls.clone()));

        let drain = Drain::default();
        let (finished_tx, finished_rx) = watch::channel(false);
        let registry = RegistryClient::new(
            control::channel(&config.control, &creds, Some(Duration::from_secs(5))).map_err(SidecarError::Start)?,
        );
        let mut metadata: std::collections::HashMap<_, _> = config.metadata.iter().cloned().collect();
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
        let registration = if sidecar_mode {
            tokio::spawn(registration::run(registry, instance, serving, drain.subscribe(), finished_rx))
        } else {
            tokio::spawn(async {})
        };

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
            policy.clone(),
        ));
        let mut servers = JoinSet::new();
        let mut gateway_routes = None;
        let mut hub_at_close: Option<Arc<Hub>> = None;
        if let (Some(l), Some((g, routes, tls, transcode)), Some(gateway_metrics)) =
            (gateway_l, gateway_data, gateway_metrics)
        {
            let routes = match routes {
                Some(file) => gateway::Routes::File(file),
                None => gateway::Routes::Policy(policy.clone()),
            };
            gateway_routes = Some(routes.clone());
            let hub = match (&g.ws, hub_metrics) {
                (Some(ws), Some(m)) => {
                    let replica = ws.replica.clone().unwrap_or_else(|| config.instance_id.clone());
                    let hub = Hub::new(
                        ws.clone(),
                        control.clone(),
                        &replica,
                        &config.service,
                        policy.clone(),
                        m,
                        drain.clone(),
                    )
                    .map_err(SidecarError::Start)?;
                    let hub = Arc::new(hub);
                    hub_at_close = Some(hub.clone());
                    Some(hub)
                }
                _ => None,
            };
            let gw = Arc::new(Gateway {
                routes,
                outbound: outbound.clone(),
                policy: policy.clone(),
                metrics: gateway_metrics,
                cors: Cors::new(g.cors_origins.clone()),
                trusted_hops: g.trusted_hops,
                max_headers: g.max_headers,
                transcode,
                hub,
            });
            servers.spawn(gateway::listener::serve(l, gw, g, tls, drain.clone()));
        }
        let admin = Arc::new(Admin {
            config: config.clone(),
            metrics: metrics.clone(),
            discovery,
            creds: creds.clone(),
            app_health,
            draining: drain.subscribe(),
            policy,
            routes: gateway_routes,
        });
        if let Some(l) = outbound_l {
            servers.spawn(serve_outbound(l, outbound.clone(), None, metrics.clone(), drain.clone()));
        }
        for (service, l) in upstream_ls {
            servers.spawn(serve_outbound(l, outbound.clone(), Some(service), metrics.clone(), drain.clone()));
        }
        if let Some(l) = inbound_l {
            servers.spawn(inbound.serve(l, drain.clone()));
        }
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
                if let Some(hub) = hub_at_close {
                    // Its event-bus groups go with it (bounded).
                    hub.bus.close().await;
                }
                finished_tx.send_replace(true);
                let _ = tokio::time::timeout(Duration::from_secs(2), registration).await;
                for t in [identity_task, discovery_task, tls_task, serving_task, policy_task]
                    .into_iter()
                    .chain(health_task)
                    .chain(data_tasks)
                {
                    t.abort();
                }
                admin_stop.start();
                let _ = admin_task.await;
                tracing::info!("stopped");
            }
        });
        match gateway_addr {
            Some(g) => tracing::info!(gateway_addr = %g, %admin_addr, "redfire-sidecar serving as gateway"),
            None => {
                tracing::info!(%outbound_addr, %inbound_addr, %admin_addr, service = %config.service, "redfire-sidecar serving")
            }
        }
        Ok(Sidecar { outbound_addr, upstream_addrs, inbound_addr, gateway_addr, admin_addr, drain, task })
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
