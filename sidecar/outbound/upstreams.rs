//! Every upstream service the outbound path can call, as discovery last saw
//! it: per service an immutable [`EndpointSet`] (balancer, outlier detector,
//! expected peer identities, pooled connections) that a request loads with
//! one atomic pointer read.
//!
//! Discovery (`crate::sidecar::control_client::discovery`, the registry
//! Watch) installs each change; the next set is built from the previous one,
//! so load and ejection state carry over. When control is unreachable the
//! last-known sets stay in force; a service never seen fails fast (after
//! [`FIRST_SYNC_WAIT`] for the first snapshot).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::mesh::identity::spiffe_id;
use crate::mesh::registry::{Health, Instance};
use crate::sidecar::outbound::balance::{BalanceConfig, Balancer, Balancing, Endpoint, EndpointIdx, ZonePreference};
use crate::sidecar::outbound::breaker::{ConcurrencyLimit, OutlierConfig, OutlierDetector};
use crate::sidecar::outbound::pool::{Pool, Slot};
use crate::sidecar::outbound::retry::RetryBudget;

/// How long a request for a service waits for discovery's first snapshot
/// before failing (DESIGN.md: unknown services fail within 3 s).
pub const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);

/// One service's endpoints at one moment.
#[derive(Debug)]
pub struct EndpointSet {
    /// Picks an endpoint.
    pub balancer: Balancer,
    /// Ejects failing endpoints.
    pub outliers: OutlierDetector,
    /// The SPIFFE ID each endpoint must present, by endpoint index.
    pub identities: Vec<String>,
    /// Each endpoint's instance metadata, by endpoint index (route subsets
    /// such as `version=2` select on it).
    pub metadata: Vec<BTreeMap<String, String>>,
    /// Each endpoint's pooled connection, looked up on first use.
    conns: Vec<OnceLock<Arc<Slot>>>,
}

impl EndpointSet {
    fn new(
        balancer: Balancer,
        outliers: OutlierDetector,
        identities: Vec<String>,
        metadata: Vec<BTreeMap<String, String>>,
    ) -> Self {
        let conns = (0..identities.len()).map(|_| OnceLock::new()).collect();
        EndpointSet { balancer, outliers, identities, metadata, conns }
    }

    /// True when the endpoint at `idx` belongs to `subset` (metadata
    /// key = value), or when there is no subset.
    pub fn in_subset(&self, idx: EndpointIdx, subset: Option<&(String, String)>) -> bool {
        match subset {
            None => true,
            Some((k, v)) => self.metadata.get(idx.index()).and_then(|m| m.get(k)).is_some_and(|x| x == v),
        }
    }

    /// The connection slot of the endpoint at `idx`, from `pool`.
    pub fn conn(&self, idx: EndpointIdx, pool: &Pool) -> Option<&Slot> {
        let cell = self.conns.get(idx.index())?;
        if let Some(slot) = cell.get() {
            return Some(slot);
        }
        let address = &self.balancer.endpoint(idx)?.address;
        Some(cell.get_or_init(|| pool.slot(address, &self.identities[idx.index()])))
    }
}

/// An upstream service as the outbound path sees it.
#[derive(Debug)]
pub struct Upstream {
    /// Service name.
    pub service: String,
    /// The service name as the `:authority` of requests to its sidecars.
    pub authority: Option<http::uri::Authority>,
    /// The current endpoints.
    pub set: ArcSwap<EndpointSet>,
    /// Requests in flight to this service.
    pub limit: ConcurrencyLimit,
    /// Retries allowed to this service (20 % of requests + 10/s).
    pub budget: RetryBudget,
    /// The header whose value is the hash key, when the service is balanced
    /// by a hash policy.
    pub hash_header: Option<http::HeaderName>,
}

/// Why a service cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    /// Never registered (or discovery has no data at all yet).
    #[error("service {0:?} is unknown to the registry")]
    Unknown(String),
}

/// Every upstream service as discovery last saw it. See the module docs.
#[derive(Debug)]
pub struct Upstreams {
    upstreams: RwLock<HashMap<String, Arc<Upstream>>>,
    synced: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    default_balancing: Balancing,
    service_balancing: BTreeMap<String, Balancing>,
    zone: Option<ZonePreference>,
    max_in_flight: usize,
    trust_domain: String,
    outliers: OutlierConfig,
}

impl Upstreams {
    /// No upstream yet: discovery fills them in ([`Upstreams::install`]).
    pub fn new(
        default_balancing: Balancing,
        service_balancing: BTreeMap<String, Balancing>,
        zone: Option<ZonePreference>,
        max_in_flight: usize,
        trust_domain: String,
        outliers: OutlierConfig,
    ) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            upstreams: RwLock::new(HashMap::new()),
            synced: watch::channel(false).0,
            connected: watch::channel(false).0,
            default_balancing,
            service_balancing,
            zone,
            max_in_flight,
            trust_domain,
            outliers,
        })
    }

    /// The upstream named `service`, waiting up to [`FIRST_SYNC_WAIT`] for
    /// the first snapshot.
    pub async fn upstream(&self, service: &str) -> Result<Arc<Upstream>, DiscoveryError> {
        if let Some(u) = self.get(service) {
            return Ok(u);
        }
        let mut synced = self.synced.subscribe();
        let _ = tokio::time::timeout(FIRST_SYNC_WAIT, synced.wait_for(|s| *s)).await;
        self.get(service).ok_or_else(|| DiscoveryError::Unknown(service.to_string()))
    }

    fn get(&self, service: &str) -> Option<Arc<Upstream>> {
        self.upstreams.read().unwrap_or_else(|e| e.into_inner()).get(service).cloned()
    }

    /// True while the Watch on control is connected and synced.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Every known upstream, for `/admin/endpoints`.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut v: Vec<_> = self.upstreams.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    /// Discovery has applied a message from control: the first snapshot
    /// has arrived and the Watch is live.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
        self.connected.send_replace(true);
    }

    /// The Watch on control ended; the last-known endpoints stay in force.
    pub fn mark_disconnected(&self) {
        self.connected.send_replace(false);
    }

    /// Installs the instances of one service (all of them, or none).
    pub fn install(&self, service: &str, instances: &BTreeMap<String, Instance>) {
        let mut endpoints = Vec::new();
        let mut identities = Vec::new();
        let mut metadata = Vec::new();
        for i in instances.values() {
            if let Some(ep) = Endpoint::from_instance(i) {
                let ns = i.metadata.get("namespace").map(String::as_str).unwrap_or("default");
                identities.push(spiffe_id(&self.trust_domain, ns, &i.service));
                metadata.push(i.metadata.clone());
                endpoints.push(ep);
            }
        }
        // The zone preference's healthy share counts instances that report
        // NOT_SERVING (absent from `endpoints`) as down; draining ones are
        // leaving on purpose and count no more.
        let zone_registered = self.zone.as_ref().map_or(0, |z| {
            instances.values().filter(|i| i.zone == z.local_zone && i.health != Health::Draining).count()
        });
        let mut map = self.upstreams.write().unwrap_or_else(|e| e.into_inner());
        match map.get(service) {
            Some(u) => {
                let old = u.set.load();
                let next = EndpointSet::new(
                    old.balancer.update_with_zone_registered(endpoints.clone(), zone_registered),
                    old.outliers.update(&endpoints),
                    identities,
                    metadata,
                );
                u.set.store(Arc::new(next));
            }
            None => {
                let balancing = self.service_balancing.get(service).unwrap_or(&self.default_balancing);
                let config =
                    BalanceConfig { policy: balancing.policy, zone: self.zone.clone(), ..BalanceConfig::default() };
                let outliers = OutlierDetector::new(&endpoints, self.outliers);
                let set = EndpointSet::new(
                    Balancer::with_zone_registered(endpoints, config, zone_registered),
                    outliers,
                    identities,
                    metadata,
                );
                map.insert(
                    service.to_string(),
                    Arc::new(Upstream {
                        service: service.to_string(),
                        authority: service.parse().ok(),
                        set: ArcSwap::from_pointee(set),
                        limit: ConcurrencyLimit::new(service, self.max_in_flight),
                        budget: RetryBudget::default(),
                        hash_header: balancing.policy.is_hash().then(|| balancing.hash_header.clone()),
                    }),
                );
            }
        }
    }
}
