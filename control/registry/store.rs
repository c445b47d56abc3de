//! The registry store trait: the writes that must be shared by every control
//! replica. Reads are served from the store's [`View`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::view::View;
use crate::mesh::registry::{Health, Instance};

/// A registry write failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The lease does not exist (expired, revoked, or lost with the store).
    #[error("{0}")]
    NotFound(String),
    /// The store cannot take writes now; retry later or elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or corrupted data.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// The gRPC status a client sees.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            StoreError::NotFound(m) => tonic::Status::not_found(m.clone()),
            StoreError::Unavailable(m) => tonic::Status::unavailable(m.clone()),
            StoreError::Internal(m) => tonic::Status::internal(m.clone()),
        }
    }

    /// Label for the store-errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Internal(_) => "internal",
        }
    }
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The new lease.
    pub lease_id: u64,
    /// Its TTL.
    pub ttl: Duration,
    /// The revision at which the instance became visible.
    pub revision: u64,
}

/// The outcome of a lease renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The lease's TTL.
    pub ttl: Duration,
    /// New expiry, Unix ms.
    pub expires_unix_ms: u64,
}

/// Registry writes. Implemented by the in-memory and the Redis store.
pub trait RegistryStore: Send + Sync + 'static {
    /// The process-local view this store feeds.
    fn view(&self) -> &Arc<View>;

    /// Adds (or replaces) an instance under a new lease of `ttl`. A replaced
    /// instance's old lease is revoked.
    fn register(
        &self,
        instance: Instance,
        ttl: Duration,
    ) -> impl Future<Output = Result<Registered, StoreError>> + Send;

    /// Renews a lease and, when `health` is given and differs, updates the
    /// instance's health (a change watchers see).
    fn keep_alive(
        &self,
        lease_id: u64,
        health: Option<Health>,
    ) -> impl Future<Output = Result<Renewed, StoreError>> + Send;

    /// Removes the lease's instance; returns the revision of the removal.
    fn deregister(&self, lease_id: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// `Err(reason)` when the store cannot take writes now.
    fn ready(&self) -> Result<(), String>;

    /// Stops the store's background tasks.
    fn close(&self);
}

/// Unix time in ms now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random lease id: 63 bits, never 0. Lease ids are capabilities (whoever
/// holds one can renew or remove the instance), so they are not sequential.
pub fn new_lease_id() -> u64 {
    fastrand::u64(1..i64::MAX as u64)
}

/// A background task that is aborted when its owner is dropped.
#[derive(Debug)]
pub struct Abort(pub tokio::task::JoinHandle<()>);

impl Abort {
    /// Stops the task now.
    pub fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}
