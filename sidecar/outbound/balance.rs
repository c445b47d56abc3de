//! Load balancing: which endpoint of a service gets the next request.
//!
//! Outbound, after the concurrency limit and before the connection: the data
//! path calls [`Balancer::pick`] with a [`PickContext`] (the request's hash
//! key, and a filter that hides endpoints the outlier detector has ejected),
//! then [`Balancer::start`] when it sends and [`RequestLoad::finish`] when the
//! response comes, which feeds the load-aware policies.
//!
//! A balancer serves one immutable endpoint set. When discovery changes the
//! set, [`Balancer::update`] builds the next one, carrying over the load of
//! endpoints that stay; the data path swaps it in whole. Policies: see
//! [`Policy`].

mod config;
mod endpoint;
mod hash;
mod least_request;
mod load;
mod maglev;
mod p2c;
mod peak_ewma;
mod picker;
mod ring_hash;
mod round_robin;
mod weighted_round_robin;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

pub use config::{BalanceConfig, Balancing, PeakEwmaConfig, Policy, ZonePreference};
pub use endpoint::{Address, Endpoint};
pub use load::{Feedback, RequestLoad};

use load::EndpointLoad;
use picker::Picker;

/// An endpoint's position in the [`Balancer`] that returned it. Meaningful
/// only for that balancer (and for an outlier detector built from the same
/// endpoint list): positions change when the set is rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointIdx(usize);

impl EndpointIdx {
    /// The endpoint at position `index`.
    pub fn new(index: usize) -> Self {
        EndpointIdx(index)
    }

    /// The position, to index the endpoint list.
    pub fn index(self) -> usize {
        self.0
    }
}

/// What a pick may depend on, per request.
#[derive(Clone, Copy, Default)]
pub struct PickContext<'a> {
    hash_key: Option<&'a [u8]>,
    available: Option<&'a dyn Fn(EndpointIdx) -> bool>,
}

impl<'a> PickContext<'a> {
    /// No hash key; every endpoint available.
    pub fn new() -> Self {
        PickContext::default()
    }

    /// The key hash policies route by, e.g. the value of the configured
    /// `x-user-id` header. Ignored by the other policies.
    pub fn with_hash_key(self, key: &'a [u8]) -> Self {
        PickContext { hash_key: Some(key), ..self }
    }

    /// Only endpoints for which `available` is true may be picked (e.g. not
    /// ejected). Called a few times per pick, sometimes under a balancer's
    /// lock: it must be cheap and must not call back into the balancer.
    pub fn with_filter(self, available: &'a dyn Fn(EndpointIdx) -> bool) -> Self {
        PickContext { available: Some(available), ..self }
    }

    /// The hash key, if any.
    pub fn hash_key(&self) -> Option<&'a [u8]> {
        self.hash_key
    }

    /// Whether the filter lets `idx` through.
    pub fn is_available(&self, idx: EndpointIdx) -> bool {
        self.available.is_none_or(|f| f(idx))
    }
}

/// An endpoint as the policies are built from it.
#[derive(Clone, Copy, Debug)]
struct Member<'a> {
    idx: EndpointIdx,
    weight: u32,
    id: &'a str,
}

/// Same-zone endpoints and the policy over them.
#[derive(Debug)]
struct Local {
    members: Vec<EndpointIdx>,
    min_available: usize,
    picker: Picker,
}

/// Chooses endpoints of one service for one endpoint set. See the module docs.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Endpoint>,
    /// Indexed like `endpoints`.
    loads: Vec<Arc<EndpointLoad>>,
    config: BalanceConfig,
    all: Picker,
    local: Option<Local>,
}

impl Balancer {
    /// A balancer over `endpoints`. Later duplicates of an id are dropped:
    /// load state and hash placement are keyed by id.
    pub fn new(endpoints: Vec<Endpoint>, config: BalanceConfig) -> Self {
        Self::with_zone_registered(endpoints, config, 0)
    }

    /// Like [`Balancer::new`], knowing that `zone_registered` instances are
    /// registered in the local zone whatever their health: the zone
    /// preference's healthy share counts those that are not in `endpoints`
    /// (NOT_SERVING) as down.
    pub fn with_zone_registered(endpoints: Vec<Endpoint>, config: BalanceConfig, zone_registered: usize) -> Self {
        Self::build(endpoints, config, &HashMap::new(), zone_registered)
    }

    /// The balancer for a new endpoint set with the same config. Endpoints
    /// that stay keep their load (in-flight count and latency estimate); for
    /// the hash policies, keys whose endpoint stays keep going to it.
    pub fn update(&self, endpoints: Vec<Endpoint>) -> Self {
        self.update_with_zone_registered(endpoints, 0)
    }

    /// [`Balancer::update`] with the local zone's registered count, as in
    /// [`Balancer::with_zone_registered`].
    pub fn update_with_zone_registered(&self, endpoints: Vec<Endpoint>, zone_registered: usize) -> Self {
        let previous = self.endpoints.iter().zip(&self.loads).map(|(e, l)| (e.id.as_str(), l.clone())).collect();
        Self::build(endpoints, self.config.clone(), &previous, zone_registered)
    }

    fn build(
        mut endpoints: Vec<Endpoint>,
        config: BalanceConfig,
        previous: &HashMap<&str, Arc<EndpointLoad>>,
        zone_registered: usize,
    ) -> Self {
        let mut seen = HashSet::new();
        endpoints.retain(|e| seen.insert(e.id.clone()));
        let now = Instant::now();
        let loads = endpoints
            .iter()
            .map(|e| {
                previous
                    .get(e.id.as_str())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointLoad::new(&config.peak_ewma, now)))
            })
            .collect();
        let members: Vec<Member<'_>> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Member { idx: EndpointIdx(i), weight: e.weight, id: &e.id })
            .collect();
        let all = Picker::new(config.policy, &members);
        let local = config.zone.as_ref().and_then(|zone| {
            let in_zone: Vec<Member<'_>> =
                members.iter().copied().filter(|m| endpoints[m.idx.0].zone == zone.local_zone).collect();
            // Nothing to prefer when the zone is empty or is everything.
            if in_zone.is_empty() || in_zone.len() == members.len() {
                return None;
            }
            // A hash policy routes keyed requests over every zone (see
            // `BalanceConfig::zone`); the local picker only serves keyless ones.
            let policy = if config.policy.is_hash() { Policy::LeastRequest } else { config.policy };
            Some(Local {
                members: in_zone.iter().map(|m| m.idx).collect(),
                min_available: zone.min_available(in_zone.len().max(zone_registered)),
                picker: Picker::new(policy, &in_zone),
            })
        });
        Balancer { endpoints, loads, config, all, local }
    }

    /// The endpoint for this request, or `None` when no endpoint is available.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<EndpointIdx> {
        let keyed = ctx.hash_key.is_some() && self.config.policy.is_hash();
        if let Some(local) = self.local.as_ref().filter(|_| !keyed) {
            // Count only as far as needed: the common case stops early.
            let need = local.min_available;
            let up = local.members.iter().filter(|&&idx| ctx.is_available(idx)).take(need).count();
            if up == need {
                // The filter may change between counting and picking.
                if let Some(idx) = local.picker.pick(ctx, &self.loads) {
                    return Some(idx);
                }
            }
        }
        self.all.pick(ctx, &self.loads)
    }

    /// Count a request as in flight on `idx` until the returned guard is
    /// finished or dropped. `None` if `idx` is not one of this balancer's.
    pub fn start(&self, idx: EndpointIdx) -> Option<RequestLoad> {
        self.loads.get(idx.0).map(|load| RequestLoad::start(load.clone()))
    }

    /// The endpoint at `idx`.
    pub fn endpoint(&self, idx: EndpointIdx) -> Option<&Endpoint> {
        self.endpoints.get(idx.0)
    }

    /// All endpoints, in [`EndpointIdx`] order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Requests in flight on `idx` (for the admin page and tests).
    pub fn outstanding(&self, idx: EndpointIdx) -> Option<u32> {
        self.loads.get(idx.0).map(|load| load.outstanding())
    }

    /// The config this balancer was built with.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }
}
