//! Discovery: the endpoints of every upstream service, from control's Watch.
//!
//! One task holds a Watch on control and keeps, per service, an immutable
//! [`EndpointSet`] (balancer, outlier detector, expected peer identities)
//! that the outbound path loads with one atomic pointer read. On every change
//! to a service the task builds the next set from the previous one, so load
//! and ejection state carry over. When control is unreachable the last-known
//! sets stay in force and the task reconnects with jittered backoff, resuming
//! from its last revision (no lost or repeated change); a service never seen
//! fails fast.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::mesh::identity::spiffe_id;
use crate::mesh::registry::{Health, Instance};
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_client::RegistryClient;
use crate::sidecar::config::{Balancing, Config};
use crate::sidecar::outbound::balance::{BalanceConfig, Balancer, Endpoint, EndpointIdx, ZonePreference};
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

/// See the module docs.
#[derive(Debug)]
pub struct Discovery {
    upstreams: RwLock<HashMap<String, Arc<Upstream>>>,
    synced: watch::Receiver<bool>,
    connected: watch::Receiver<bool>,
    default_balancing: Balancing,
    service_balancing: BTreeMap<String, Balancing>,
    zone: Option<ZonePreference>,
    max_in_flight: usize,
    trust_domain: String,
    outliers: OutlierConfig,
}

impl Discovery {
    /// Starts watching control at `config.control_addr`, balancing each
    /// service as `config` says.
    pub fn spawn(config: &Config) -> Result<(Arc<Discovery>, tokio::task::JoinHandle<()>), String> {
        let channel = crate::sidecar::control_client::channel(&config.control_addr)?;
        let (synced_tx, synced) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let d = Arc::new(Discovery {
            upstreams: RwLock::new(HashMap::new()),
            synced,
            connected,
            default_balancing: Balancing { policy: config.balancer, hash_header: config.hash_header.clone() },
            service_balancing: config.service_balancers.clone(),
            zone: config.zone_preference(),
            max_in_flight: config.max_in_flight,
            trust_domain: config.trust_domain.clone(),
            outliers: OutlierConfig {
                consecutive_failures: config.ejection_failures,
                base_ejection: config.ejection_time,
                ..OutlierConfig::default()
            },
        });
        let task = tokio::spawn(run(d.clone(), RegistryClient::new(channel), synced_tx, connected_tx));
        Ok((d, task))
    }

    /// The upstream named `service`, waiting up to [`FIRST_SYNC_WAIT`] for
    /// the first snapshot.
    pub async fn upstream(&self, service: &str) -> Result<Arc<Upstream>, DiscoveryError> {
        if let Some(u) = self.get(service) {
            return Ok(u);
        }
        let mut synced = self.synced.clone();
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

    /// Installs the instances of one service (all of them, or none).
    fn install(&self, service: &str, instances: &BTreeMap<String, Instance>) {
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

type Instances = HashMap<String, BTreeMap<String, Instance>>;

async fn run(
    d: Arc<Discovery>,
    mut client: RegistryClient<tonic::transport::Channel>,
    synced: watch::Sender<bool>,
    connected: watch::Sender<bool>,
) {
    let mut instances: Instances = HashMap::new();
    let (mut epoch, mut revision) = (String::new(), 0u64);
    let mut failures = 0u32;
    loop {
        let req = pb::WatchRequest { services: vec![], epoch: epoch.clone(), revision };
        match client.watch(req).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            failures = 0;
                            apply(&d, &mut instances, m.event);
                            epoch = m.epoch;
                            revision = m.revision;
                            synced.send_replace(true);
                            connected.send_replace(true);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch ended; keeping the last-known endpoints");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the registry; keeping the last-known endpoints"),
        }
        connected.send_replace(false);
        failures += 1;
        let cap = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
        tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
    }
}

fn apply(d: &Discovery, instances: &mut Instances, event: Option<pb::watch_response::Event>) {
    use pb::watch_response::Event;
    match event {
        Some(Event::Snapshot(s)) => {
            let mut next: Instances = HashMap::new();
            for p in s.instances {
                if let Some(i) = domain(p) {
                    next.entry(i.service.clone()).or_default().insert(i.instance_id.clone(), i);
                }
            }
            // Services that disappeared get an empty set (fail with "no
            // endpoints", never with stale addresses).
            for service in instances.keys().filter(|s| !next.contains_key(*s)) {
                d.install(service, &BTreeMap::new());
            }
            for (service, list) in &next {
                d.install(service, list);
            }
            *instances = next;
        }
        Some(Event::Change(c)) => {
            let Some(i) = c.instance.and_then(domain) else { return };
            let list = instances.entry(i.service.clone()).or_default();
            if c.r#type == pb::ChangeType::Delete as i32 {
                list.remove(&i.instance_id);
            } else {
                list.insert(i.instance_id.clone(), i.clone());
            }
            d.install(&i.service, list);
        }
        None => {}
    }
}

/// The registry's wire instance as a domain instance (the registry validated
/// it; anything malformed is skipped rather than trusted).
fn domain(p: pb::Instance) -> Option<Instance> {
    let (lease_id, health) = (p.lease_id, p.health);
    let mut i = Instance::try_from(p).ok()?;
    i.lease_id = lease_id;
    i.health = crate::mesh::registry::Health::from_proto(health).ok().flatten()?;
    Some(i)
}
