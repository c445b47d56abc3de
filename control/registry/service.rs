//! `redfire.registry.v1.Registry`: the gRPC boundary. Requests are validated
//! and converted to domain types here; store errors become gRPC statuses here.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::memory::unknown_lease;
use super::store::{RegistryStore, StoreError};
use super::view::is_epoch;
use super::watch::{self, WatchSpec};
use crate::control::authz::{Admitted, Authz};
use crate::control::metrics::Metrics;
use crate::mesh::registry::{Health, Instance, validate_service_name};
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_server::Registry;

/// Lease TTL bounds and default.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// TTL when the client asks for none.
    pub default_ttl: Duration,
    /// Shortest TTL a client may ask for.
    pub min_ttl: Duration,
    /// Longest TTL a client may ask for.
    pub max_ttl: Duration,
}

/// The service; generic over the store so both backends share one code path.
#[derive(Debug)]
pub struct RegistryService<S> {
    store: Arc<S>,
    metrics: Arc<Metrics>,
    leases: LeasePolicy,
    authz: Arc<Authz>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl<S: RegistryStore> RegistryService<S> {
    /// A service over `store`. `shutdown` turning true ends every stream.
    pub fn new(
        store: Arc<S>,
        metrics: Arc<Metrics>,
        leases: LeasePolicy,
        authz: Arc<Authz>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        RegistryService { store, metrics, leases, authz, shutdown }
    }

    fn finish<T>(
        &self,
        method: &'static str,
        op: &'static str,
        started: Instant,
        r: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code());
        self.metrics.rpc(method, code, Some(started.elapsed()));
        if let Err(s) = &r
            && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Internal)
        {
            let kind = if s.code() == tonic::Code::Internal { "internal" } else { "unavailable" };
            self.metrics.store_error(op, kind);
        }
        r
    }
}

/// The service the lease `lease` belongs to, from this replica's view (an
/// unknown lease gets the store's NOT_FOUND).
fn lease_service<S: RegistryStore>(store: &S, lease: u64) -> Result<String, Status> {
    store.view().lease_service(lease).ok_or_else(|| unknown_lease(lease).to_status())
}

/// Who is renewing on a KeepAlive stream.
struct Owner {
    authz: Arc<Authz>,
    call: Option<Admitted>,
}

impl Owner {
    fn check<S: RegistryStore>(&self, store: &S, lease: u64) -> Result<(), Status> {
        let lease = lease_arg(lease)?;
        self.authz.lease(self.call.as_ref(), lease, || lease_service(store, lease))
    }
}

fn store_status(e: StoreError) -> Status {
    e.to_status()
}

fn lease_arg(lease_id: u64) -> Result<u64, Status> {
    if lease_id == 0 {
        return Err(Status::invalid_argument("lease_id: missing (0 is never a lease)"));
    }
    Ok(lease_id)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: RegistryStore> Registry for RegistryService<S> {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let service = req.get_ref().instance.as_ref().map(|i| i.service.as_str()).unwrap_or_default();
            self.authz.service(Admitted::of(&req), service)?;
            let req = req.into_inner();
            let instance =
                Instance::try_from(req.instance.ok_or_else(|| Status::invalid_argument("instance: missing"))?)
                    .map_err(Status::invalid_argument)?;
            let ttl = match req.ttl_ms {
                0 => self.leases.default_ttl,
                ms => Duration::from_millis(u64::from(ms)),
            };
            if ttl < self.leases.min_ttl || ttl > self.leases.max_ttl {
                return Err(Status::invalid_argument(format!(
                    "ttl_ms: {} is outside {}..={}",
                    ttl.as_millis(),
                    self.leases.min_ttl.as_millis(),
                    self.leases.max_ttl.as_millis()
                )));
            }
            let reg = self.store.register(instance, ttl).await.map_err(store_status)?;
            Ok(Response::new(pb::RegisterResponse {
                lease_id: reg.lease_id,
                ttl_ms: reg.ttl.as_millis() as u32,
                revision: reg.revision,
            }))
        }
        .await;
        self.finish("Register", "register", started, r)
    }

    type KeepAliveStream = BoxStream<pb::KeepAliveResponse>;

    async fn keep_alive(
        &self,
        req: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        self.metrics.rpc("KeepAlive", tonic::Code::Ok, None);
        // Each renewal is checked against its lease's service.
        let owner = Owner { authz: self.authz.clone(), call: Admitted::of(&req).cloned() };
        let mut inbound = req.into_inner();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("control is shutting down; reconnect to another replica"))).await;
                        return;
                    }
                };
                let reply = match msg {
                    None => return,
                    Some(Err(_)) => return,
                    Some(Ok(m)) => match owner.check(&*store, m.lease_id) {
                        Ok(()) => renew(&*store, &metrics, m).await,
                        Err(s) => Err(s),
                    },
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let lease = lease_arg(req.get_ref().lease_id)?;
            self.authz.lease(Admitted::of(&req), lease, || lease_service(&*self.store, lease))?;
            let revision = self.store.deregister(lease).await.map_err(store_status)?;
            Ok(Response::new(pb::DeregisterResponse { revision }))
        }
        .await;
        self.finish("Deregister", "deregister", started, r)
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        let started = Instant::now();
        let r = (|| {
            let name = req.into_inner().service;
            validate_service_name(&name).map_err(Status::invalid_argument)?;
            let (revision, list) = self.store.view().service(&name);
            Ok(Response::new(pb::GetServiceResponse {
                instances: list.iter().map(Instance::to_proto).collect(),
                revision,
            }))
        })();
        self.finish("GetService", "get", started, r)
    }

    async fn list_services(
        &self,
        _req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let started = Instant::now();
        let snap = self.store.view().snapshot();
        let mut services: Vec<pb::ServiceSummary> = Vec::new();
        for i in &snap.instances {
            if services.last().map(|s| s.service != i.service).unwrap_or(true) {
                services.push(pb::ServiceSummary { service: i.service.clone(), instances: 0, serving: 0 });
            }
            if let Some(s) = services.last_mut() {
                s.instances += 1;
                s.serving += u32::from(i.health == Health::Serving);
            }
        }
        let r = Ok(Response::new(pb::ListServicesResponse { services, revision: snap.revision }));
        self.finish("ListServices", "list", started, r)
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = (|| {
            let req = req.into_inner();
            for s in &req.services {
                validate_service_name(s).map_err(Status::invalid_argument)?;
            }
            let resume = match (req.epoch.is_empty(), req.revision) {
                (true, 0) => None,
                (true, r) => {
                    return Err(Status::invalid_argument(format!(
                        "revision: {r} given without the epoch it belongs to"
                    )));
                }
                (false, r) if is_epoch(&req.epoch) => Some((req.epoch, r)),
                (false, _) => {
                    return Err(Status::invalid_argument(format!(
                        "epoch: {:?} is malformed (16 lowercase hex digits)",
                        req.epoch
                    )));
                }
            };
            let spec = WatchSpec { services: req.services.into_iter().collect::<HashSet<_>>(), resume };
            let rx = watch::spawn(self.store.view().clone(), spec, self.shutdown.clone())?;
            Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::WatchStream))
        })();
        let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code());
        self.metrics.rpc("Watch", code, None);
        r
    }
}

async fn renew<S: RegistryStore>(
    store: &S,
    metrics: &Metrics,
    m: pb::KeepAliveRequest,
) -> Result<pb::KeepAliveResponse, Status> {
    let started = Instant::now();
    let r = async {
        let lease = lease_arg(m.lease_id)?;
        let health = Health::from_proto(m.health).map_err(Status::invalid_argument)?;
        let renewed = store.keep_alive(lease, health).await.map_err(store_status)?;
        Ok(pb::KeepAliveResponse {
            lease_id: lease,
            ttl_ms: renewed.ttl.as_millis() as u32,
            lease_expires_unix_ms: renewed.expires_unix_ms,
        })
    }
    .await;
    let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s: &Status| s.code());
    metrics.rpc("KeepAlive.renew", code, Some(started.elapsed()));
    if code == tonic::Code::Unavailable {
        metrics.store_error("keepalive", "unavailable");
    }
    r
}
