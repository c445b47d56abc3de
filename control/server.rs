//! Assembles the control process: stores, CA, gRPC server (registry,
//! identity, events, health, reflection), admin port and the drain sequence.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::control::admin::{self, Admin};
use crate::control::authz::Authz;
use crate::control::authz::caller::Authenticator;
use crate::control::authz::event_acl::EventAcl;
use crate::control::authz::layer::AuthzLayer;
use crate::control::authz::oidc::OidcOperators;
use crate::control::authz::token;
use crate::control::config::{Config, StoreKind};
use crate::control::events::memory::MemoryEventStore;
use crate::control::events::redis::{RedisEventConfig, RedisEventStore};
use crate::control::events::service::EventsService;
use crate::control::events::store::EventStore;
use crate::control::identity::ca::Ca;
use crate::control::identity::redeem::Redemptions;
use crate::control::identity::service::IdentityService;
use crate::control::metrics::Metrics;
use crate::control::policy::files::PolicyDir;
use crate::control::policy::service::PolicyService;
use crate::control::policy::store::PolicyStore;
use crate::control::registry::memory::MemoryStore;
use crate::control::registry::redis::{RedisConfig, RedisStore};
use crate::control::registry::service::{LeasePolicy, RegistryService};
use crate::control::registry::store::RegistryStore;
use crate::control::tls::{self, ServingCert};
use crate::mesh::process::control_endpoint::{self, BearerToken, OperatorChannel};
use crate::mesh::process::shutdown::Drain;
use crate::mesh::process::telemetry;
use crate::proto::events::v1::events_server::EventsServer;
use crate::proto::identity::v1::identity_server::IdentityServer;
use crate::proto::policy::v1::policy_server::PolicyServer;
use crate::proto::registry::v1::registry_server::RegistryServer;

/// The control service failed to start or to run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("bind {what} {addr}: {source}")]
    Bind {
        /// `grpc_addr` or `admin_addr`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(String),
    /// The mesh CA could not be loaded.
    #[error("{0}")]
    Ca(#[from] crate::control::identity::ca::CaError),
    /// A policy file is invalid (at start there is no last good one to keep).
    #[error("{0}")]
    Policy(#[from] crate::mesh::policy::PolicyError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(String),
    /// TLS on the gRPC listener could not be set up.
    #[error("tls: {0}")]
    Tls(String),
}

/// A running control service.
#[derive(Debug)]
pub struct Control {
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where the admin port listens.
    pub admin_addr: SocketAddr,
    /// Every root a client should trust for control's certificate, PEM.
    pub trust_bundle_pem: String,
    /// Where the bundle was written, if anywhere.
    pub trust_bundle_file: Option<std::path::PathBuf>,
    /// TLS and authorization on the gRPC API (false only with
    /// `dev_insecure_control`).
    pub tls: bool,
    ca: Arc<Ca>,
    drain: Drain,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Control {
    /// Binds both ports (port 0 picks free ones) and starts serving.
    pub async fn start(config: Config) -> Result<Control, ServerError> {
        let metrics = Arc::new(Metrics::default());
        let grpc = TcpListener::bind(config.grpc_addr).await.map_err(|source| ServerError::Bind {
            what: "grpc_addr",
            addr: config.grpc_addr,
            source,
        })?;
        let admin = TcpListener::bind(config.admin_addr).await.map_err(|source| ServerError::Bind {
            what: "admin_addr",
            addr: config.admin_addr,
            source,
        })?;
        let grpc_addr = grpc.local_addr().map_err(|e| ServerError::Grpc(e.to_string()))?;
        let admin_addr = admin.local_addr().map_err(|e| ServerError::Grpc(e.to_string()))?;
        let ca = Arc::new(Ca::load(config.ca.clone()).await?);
        let trust_bundle_pem = ca.bundle_pem().to_string();
        if let Some(path) = &config.trust_bundle_file {
            tls::write_bundle(path, &trust_bundle_pem)
                .map_err(|e| ServerError::Tls(format!("trust_bundle_file {}: {e}", path.display())))?;
        }
        let (tls_on, trust_bundle_file) = (!config.dev_insecure_control, config.trust_bundle_file.clone());
        let tls = if config.dev_insecure_control {
            tracing::warn!(
                "dev_insecure_control: the gRPC API is PLAINTEXT and anyone on the network can read and change \
                 what it serves; for local experiments only"
            );
            None
        } else {
            let cert = ServingCert::issue(&ca, &config.tls_names).map_err(ServerError::Tls)?;
            let server_config = tls::server_config(&ca, cert.clone()).map_err(ServerError::Tls)?;
            Some(TlsParts { server_config, cert, ca: ca.clone() })
        };
        let drain = Drain::default();
        let events: Arc<dyn EventStore> = match config.store {
            StoreKind::Memory => Arc::new(MemoryEventStore::new(config.events.store.clone())),
            StoreKind::Redis => Arc::new(
                RedisEventStore::new(
                    config.events.store.clone(),
                    RedisEventConfig {
                        url: config.redis_url.clone(),
                        prefix: config.redis_prefix.clone(),
                        timeout: config.redis_timeout,
                        poll_interval: config.events.poll_interval,
                    },
                )
                .map_err(ServerError::Store)?,
            ),
        };
        let policies = match config.store {
            StoreKind::Memory => PolicyStore::memory(),
            StoreKind::Redis => {
                let p = PolicyStore::redis(&config.redis_url, &config.redis_prefix, config.redis_timeout)
                    .map_err(ServerError::Store)?;
                if let Err(e) = p.refresh().await {
                    tracing::warn!(error = %e, "policies not loaded from Redis yet; the poller keeps trying");
                }
                p
            }
        };
        // Authorization: callers named by certificate or token, the event
        // bus ACL following the policy store (so every replica on one Redis
        // enforces the same rules).
        let authenticator = match config.dev_insecure_control {
            true => None,
            false => Some(Authenticator::new(
                token::Verifier::new(&*ca).map_err(ServerError::Tls)?,
                config.operator_oidc.clone().map(OidcOperators::new),
            )),
        };
        let acl = Arc::new(EventAcl::default());
        let authz = Arc::new(Authz::new(authenticator, acl.clone(), metrics.authz_denied.clone()));
        let redemptions = match config.store {
            StoreKind::Memory => Redemptions::memory(),
            StoreKind::Redis => Redemptions::redis(&config.redis_url, &config.redis_prefix, config.redis_timeout)
                .map_err(ServerError::Store)?,
        };
        let identity = IdentityService::new(ca.clone(), redemptions, authz.clone(), metrics.clone())
            .map_err(|e| ServerError::Grpc(e.to_string()))?;
        let policy_dir = match &config.policy_dir {
            Some(dir) => {
                Some(PolicyDir::load(dir.clone(), policies.clone(), metrics.policy_load_errors.clone()).await?)
            }
            None => None,
        };
        let registry = match config.store {
            StoreKind::Memory => RegistryBackend::Memory(MemoryStore::new(config.watch_history, config.sweep_interval)),
            StoreKind::Redis => {
                let store = RedisStore::new(RedisConfig {
                    url: config.redis_url.clone(),
                    prefix: config.redis_prefix.clone(),
                    timeout: config.redis_timeout,
                    sweep: config.sweep_interval,
                    history: config.watch_history,
                    outage_grace_after: config.outage_grace_after,
                })
                .map_err(ServerError::Store)?;
                // Serve at once even if Redis is down (not ready until it is
                // reachable); give a reachable Redis a moment so a fresh
                // replica starts with the registry already loaded.
                store.wait_synced(config.redis_timeout).await;
                RegistryBackend::Redis(store)
            }
        };
        // Nothing fails from here on: start the background tasks.
        let background = policy_dir
            .map(|d| tokio::spawn(d.watch(config.policy_poll_interval)))
            .into_iter()
            .chain([crate::control::policy::event_acl::follow(&policies, acl)])
            .collect();
        let parts =
            Parts { grpc, admin, metrics, identity, events, policies, background, tls, authz, drain: drain.clone() };
        let task = match registry {
            RegistryBackend::Memory(store) => tokio::spawn(serve(Arc::new(store), parts, config)),
            RegistryBackend::Redis(store) => tokio::spawn(serve(Arc::new(store), parts, config)),
        };
        tracing::info!(%grpc_addr, %admin_addr, tls = tls_on, "redfire-control serving");
        Ok(Control { grpc_addr, admin_addr, trust_bundle_pem, trust_bundle_file, tls: tls_on, ca, drain, task })
    }

    /// An operator token with `roles` signed by this control's CA, valid for
    /// an hour (embedding, tests, examples; operators use `redfire-control
    /// token operator`).
    pub fn operator_token(&self, subject: &str, roles: &[&str]) -> Result<String, String> {
        token::create_operator(&*self.ca, subject, roles, std::time::Duration::from_secs(3600))
    }

    /// A one-use bootstrap token for `service` in `namespace` signed by this
    /// control's CA, valid for 10 minutes (embedding, tests, examples;
    /// operators use `redfire-control token create`).
    pub fn bootstrap_token(&self, namespace: &str, service: &str) -> Result<String, String> {
        token::create(&*self.ca, namespace, service, std::time::Duration::from_secs(600))
    }

    /// A connected channel to this control whose calls carry an operator
    /// token with `roles` ([`Control::operator_token`]).
    pub async fn operator_channel(&self, subject: &str, roles: &[&str]) -> Result<OperatorChannel, String> {
        let token = BearerToken::new(self.operator_token(subject, roles)?.as_str())?;
        let channel = self.endpoint().connect().await.map_err(|e| format!("connect {}: {e}", self.grpc_url()))?;
        Ok(OperatorChannel::new(channel, token))
    }

    /// The gRPC API's URL: `https://<addr>` (or `http://` with
    /// `dev_insecure_control`); a wildcard listen address is dialed as
    /// 127.0.0.1.
    pub fn grpc_url(&self) -> String {
        let mut addr = self.grpc_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{}://{addr}", if self.tls { "https" } else { "http" })
    }

    /// A client endpoint for this control (embedding, tests, examples): TLS
    /// verified against its trust bundle, or plaintext with
    /// `dev_insecure_control`.
    pub fn endpoint(&self) -> tonic::transport::Endpoint {
        // The URL is built from a socket address and the bundle is the CA's
        // own PEM: neither can be refused.
        control_endpoint::endpoint(&self.grpc_url(), Some(&self.trust_bundle_pem))
            .unwrap_or_else(|e| unreachable!("control's own endpoint: {e}"))
    }

    /// Starts draining (as SIGTERM does); [`Control::wait`] returns when done.
    pub fn shutdown(&self) {
        self.drain.start();
    }

    /// Waits until the service has stopped.
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(|e| ServerError::Grpc(e.to_string()))?
    }
}

/// The gRPC server running, over TLS or plaintext connections.
type ServeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Topics whose lag gauges are refreshed each `events_trim_interval`.
const MAX_LAG_TOPICS: usize = 1000;

/// The registry store the configuration chose.
enum RegistryBackend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// What `serve` needs besides the store.
struct Parts {
    grpc: TcpListener,
    admin: TcpListener,
    metrics: Arc<Metrics>,
    identity: IdentityService,
    events: Arc<dyn EventStore>,
    policies: Arc<PolicyStore>,
    /// The policy directory's watcher and the event ACL's follower.
    background: Vec<JoinHandle<()>>,
    /// TLS on the gRPC listener (`None`: plaintext, `dev_insecure_control`).
    tls: Option<TlsParts>,
    authz: Arc<Authz>,
    drain: Drain,
}

/// The listener's TLS config and the certificate it renews (`serve` starts
/// the renewal, so a start that fails earlier leaves no task behind).
struct TlsParts {
    server_config: Arc<rustls::ServerConfig>,
    cert: Arc<ServingCert>,
    ca: Arc<Ca>,
}

async fn serve<S: RegistryStore>(store: Arc<S>, parts: Parts, config: Config) -> Result<(), ServerError> {
    let Parts { grpc, admin: admin_listener, metrics, identity, events, policies, background, tls, authz, drain } =
        parts;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegistryServer<RegistryService<S>>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Grpc(e.to_string()))?;
    let leases =
        LeasePolicy { default_ttl: config.lease_ttl, min_ttl: config.lease_ttl_min, max_ttl: config.lease_ttl_max };
    let registry = RegistryService::new(store.clone(), metrics.clone(), leases, authz.clone(), drain.subscribe());
    let events_service =
        EventsService::new(events.clone(), metrics.clone(), config.events.limits, authz.clone(), drain.subscribe());
    // Retention (trims only what every group has acked), then the lag and
    // pending gauges of every topic.
    let trimmer = tokio::spawn({
        let (events, every, gauges) = (events.clone(), config.events.trim_interval, metrics.events.clone());
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match events.trim().await {
                    Ok(n) if n > 0 => tracing::debug!(removed = n, "event retention applied"),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "event retention failed"),
                }
                for topic in events.topics().await.unwrap_or_default().into_iter().take(MAX_LAG_TOPICS) {
                    if let Ok(info) = events.describe(&topic).await {
                        gauges.described(&info);
                    }
                }
            }
        }
    });

    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        view: store.view().clone(),
        store_ready: Box::new({
            let (store, events) = (store.clone(), events.clone());
            move || store.ready().and_then(|()| events.ready())
        }),
        drain: drain.clone(),
        policies: policies.clone(),
        insecure: tls.is_none(),
    });
    let (admin_stop_tx, admin_stop) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin, async {
        let _ = admin_stop.await;
    }));

    // Drain: mark NOT_SERVING first so health-checking clients move away,
    // then stop accepting; streams end on the same flag.
    let stop_accepting = {
        let drain = drain.clone();
        let health = health.clone();
        async move {
            drain.started().await;
            tracing::info!(grace = ?config.shutdown_grace, "draining");
            health.set_not_serving::<RegistryServer<RegistryService<S>>>().await;
            health.set_service_status("", ServingStatus::NotServing).await;
        }
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .trace_fn(telemetry::request_span)
        .layer(AuthzLayer(authz.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RegistryServer::new(registry))
        .add_service(IdentityServer::new(identity))
        .add_service(
            EventsServer::new(events_service)
                .max_decoding_message_size(config.events.limits.max_payload.saturating_mul(2).max(16 << 20)),
        )
        .add_service(PolicyServer::new(PolicyService::new(policies.clone(), authz, &drain)));
    let (server, accept_task, renewal_task): (ServeFuture, _, _) = match tls {
        Some(TlsParts { server_config, cert, ca }) => {
            let renewal = cert.spawn_renewal(ca, config.tls_names.clone());
            let (incoming, accept) = tls::incoming(grpc, server_config, metrics.tls_handshake_failures.clone());
            (Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)), Some(accept), Some(renewal))
        }
        None => {
            // With our own listener, tonic's `tcp_nodelay` does not apply:
            // set it per connection, or small stream messages (Subscribe
            // deliveries, Watch changes) wait ~40 ms for delayed ACKs (Nagle).
            let incoming = TcpListenerStream::new(grpc).map(|s| {
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            });
            (Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting)), None, None)
        }
    };
    let grace = async {
        drain.started().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    let result = tokio::select! {
        r = server => r.map_err(|e| ServerError::Grpc(e.to_string())),
        _ = grace => {
            tracing::warn!("grace period over; closing the remaining connections");
            Ok(())
        }
    };
    store.close();
    trimmer.abort();
    for t in [accept_task, renewal_task].into_iter().flatten() {
        t.abort();
    }
    policies.close();
    for t in background {
        t.abort();
    }
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("stopped");
    result
}
