//! `redfire.policy.v1.Policy`: the gRPC boundary of the policy store.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::snapshot::Snapshot;
use super::store::PolicyStore;
use crate::control::authz::{Admitted, Authz};
use crate::mesh::policy::parse_toml;
use crate::mesh::process::shutdown::Drain;
use crate::proto::policy::v1 as pb;
use crate::proto::policy::v1::policy_server::Policy;

/// Largest TOML document accepted through the API.
const MAX_DOC: usize = 1024 * 1024;

/// The service.
#[derive(Debug)]
pub struct PolicyService {
    store: Arc<PolicyStore>,
    authz: Arc<Authz>,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl PolicyService {
    /// Serves `store`; Watch streams end when the drain starts.
    pub fn new(store: Arc<PolicyStore>, authz: Arc<Authz>, drain: &Drain) -> Self {
        PolicyService { store, authz, draining: drain.subscribe() }
    }
}

fn to_pb(service: &str, s: Option<&Snapshot>) -> pb::PolicySnapshot {
    match s {
        Some(s) => pb::PolicySnapshot {
            service: s.service.clone(),
            version: s.version,
            document_json: s.document_json.clone(),
            source: s.source.clone(),
        },
        None => pb::PolicySnapshot { service: service.into(), ..Default::default() },
    }
}

fn validate(service: &str, toml: &str) -> Result<String, Status> {
    crate::mesh::registry::validate_service_name(service).map_err(Status::invalid_argument)?;
    if toml.len() > MAX_DOC {
        return Err(Status::invalid_argument(format!("toml: over {MAX_DOC} bytes")));
    }
    let doc = parse_toml(toml, "api", service).map_err(|e| Status::invalid_argument(e.to_string()))?;
    serde_json::to_string(&doc).map_err(|e| Status::internal(e.to_string()))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::PolicySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        crate::mesh::registry::validate_service_name(&req.get_ref().service).map_err(Status::invalid_argument)?;
        self.authz.service(Admitted::of(&req), &req.get_ref().service)?;
        let service = req.into_inner().service;
        let mut rx = self.store.subscribe();
        let mut draining = self.draining.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = None;
            loop {
                let snap = rx.borrow_and_update().get(&service).cloned();
                let version = snap.as_ref().map(|s| s.version).unwrap_or(0);
                if last != Some(version) {
                    last = Some(version);
                    if tx.send(Ok(to_pb(&service, snap.as_deref()))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = draining.wait_for(|d| *d) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::PolicySnapshot>, Status> {
        self.authz.service(Admitted::of(&req), &req.get_ref().service)?;
        let service = req.into_inner().service;
        Ok(Response::new(to_pb(&service, self.store.get(&service).as_deref())))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::PolicySnapshot>, Status> {
        let req = req.into_inner();
        let json = validate(&req.service, &req.toml)?;
        let snap = self.store.set(&req.service, &json, "api").await.map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(service = %req.service, version = snap.version, "policy set through the API");
        Ok(Response::new(to_pb(&req.service, Some(&snap))))
    }

    async fn validate(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(pb::ValidateResponse { document_json: validate(&req.service, &req.toml)? }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::PolicySnapshot>, Status> {
        let service = req.into_inner().service;
        self.store.delete(&service).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(to_pb(&service, None)))
    }
}

/// A stream fed by a task through a small channel (ends when the task does).
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::PolicySnapshot, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
