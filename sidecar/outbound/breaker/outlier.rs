//! Outlier ejection (Envoy's consecutive-5xx detection): an endpoint that
//! fails 5 times in a row is taken out of balancing for 30 s × the number of
//! times it has been ejected (at most 300 s). Then it is let back on
//! probation: one trial request; success makes it healthy, failure ejects it
//! again for longer. At most half of a service's endpoints are ejected at
//! once, so a fault that hits everything (or a bad detector) cannot empty
//! the service.
//!
//! Per-endpoint state is keyed by endpoint id and carried across endpoint-set
//! updates, so an ejected endpoint stays ejected when an unrelated one joins.
//! The per-request checks are atomic loads; locks are taken only to eject or
//! to settle a probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::sidecar::outbound::balance::{Endpoint, EndpointIdx};

/// Ejection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; the nth lasts n times this.
    pub base_ejection: Duration,
    /// No ejection lasts longer.
    pub max_ejection: Duration,
    /// At most this percentage of the endpoints is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// An endpoint's standing, for the admin page and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointHealth {
    /// Takes traffic.
    Healthy,
    /// Out of balancing for this much longer.
    Ejected(Duration),
    /// Its ejection is over and it waits for (or is serving) its trial request.
    Probing,
}

/// `gate` value of a healthy endpoint.
const OPEN: u64 = 0;
/// `gate` value while the trial request is in flight.
const PROBE_IN_FLIGHT: u64 = u64::MAX;

/// One endpoint's state, shared by every detector built for its service.
#[derive(Debug)]
struct EndpointState {
    /// [`OPEN`], [`PROBE_IN_FLIGHT`], or the end of the ejection in
    /// nanoseconds since the service's epoch, plus one (so never [`OPEN`]).
    /// Past that time one probe may be admitted. Read lock-free per request;
    /// changed to or from ejected only under the service lock.
    gate: AtomicU64,
    consecutive: AtomicU32,
    /// Guarded by the service lock in practice; a mutex of its own keeps
    /// the type simple.
    history: Mutex<History>,
}

#[derive(Debug)]
struct History {
    times_ejected: u32,
    healthy_since: Instant,
}

/// What the endpoints of one service share.
#[derive(Debug)]
struct Service {
    epoch: Instant,
    config: OutlierConfig,
    /// The current endpoint set; the lock serializes ejections so the
    /// max-ejection rule counts each one.
    members: Mutex<Vec<Arc<EndpointState>>>,
    /// Ejections so far (first ones and failed probes), for `/metrics`.
    ejections: AtomicU64,
}

impl Service {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    fn ejection_for(&self, times: u32) -> Duration {
        self.config.base_ejection.saturating_mul(times).min(self.config.max_ejection)
    }
}

/// Tracks the failures of one service's endpoints, for one endpoint set
/// (indexed like the balancer built from the same list). See the module docs.
#[derive(Debug)]
pub struct OutlierDetector {
    ids: Vec<String>,
    endpoints: Vec<Arc<EndpointState>>,
    service: Arc<Service>,
}

/// The right to send one request to an endpoint. Report how it went with
/// [`Admission::success`] or [`Admission::failure`]; dropping it reports
/// nothing (a cancelled request says nothing about the endpoint).
#[derive(Debug)]
#[must_use = "report the outcome, or the endpoint's failures go unseen"]
pub struct Admission {
    endpoint: Arc<EndpointState>,
    service: Arc<Service>,
    probe: bool,
}

impl OutlierDetector {
    /// A detector for `endpoints`, all healthy.
    pub fn new(endpoints: &[Endpoint], config: OutlierConfig) -> Self {
        let service =
            Service { epoch: Instant::now(), config, members: Mutex::new(Vec::new()), ejections: AtomicU64::new(0) };
        Self::build(endpoints, Arc::new(service), &HashMap::new())
    }

    /// The detector for a new endpoint set of the same service: endpoints
    /// that stay keep their state, including an ejection in progress.
    pub fn update(&self, endpoints: &[Endpoint]) -> Self {
        let previous = self.ids.iter().map(String::as_str).zip(self.endpoints.iter().cloned()).collect();
        Self::build(endpoints, self.service.clone(), &previous)
    }

    fn build(endpoints: &[Endpoint], service: Arc<Service>, previous: &HashMap<&str, Arc<EndpointState>>) -> Self {
        let states: Vec<Arc<EndpointState>> = endpoints
            .iter()
            .map(|e| {
                previous.get(e.id.as_str()).cloned().unwrap_or_else(|| {
                    Arc::new(EndpointState {
                        gate: AtomicU64::new(OPEN),
                        consecutive: AtomicU32::new(0),
                        history: Mutex::new(History { times_ejected: 0, healthy_since: Instant::now() }),
                    })
                })
            })
            .collect();
        *lock(&service.members) = states.clone();
        OutlierDetector { ids: endpoints.iter().map(|e| e.id.clone()).collect(), endpoints: states, service }
    }

    /// Whether `idx` may be picked now: healthy, or waiting for its trial
    /// request. Lock-free; meant for [`PickContext::with_filter`](crate::sidecar::outbound::balance::PickContext::with_filter).
    pub fn is_available(&self, idx: EndpointIdx) -> bool {
        self.endpoints.get(idx.index()).is_some_and(|e| match e.gate.load(Ordering::Acquire) {
            OPEN => true,
            PROBE_IN_FLIGHT => false,
            until => self.service.stamp(Instant::now()) >= until,
        })
    }

    /// Claim `idx` for one request: always for a healthy endpoint; for one
    /// on probation only if no other request has taken its trial. `None`
    /// means pick again without it.
    pub fn try_admit(&self, idx: EndpointIdx) -> Option<Admission> {
        let endpoint = self.endpoints.get(idx.index())?;
        let probe = match endpoint.gate.load(Ordering::Acquire) {
            OPEN => false,
            PROBE_IN_FLIGHT => return None,
            until if self.service.stamp(Instant::now()) < until => return None,
            // Exactly one caller wins the trial.
            until => {
                endpoint.gate.compare_exchange(until, PROBE_IN_FLIGHT, Ordering::AcqRel, Ordering::Acquire).ok()?;
                true
            }
        };
        Some(Admission { endpoint: endpoint.clone(), service: self.service.clone(), probe })
    }

    /// The standing of `idx`.
    pub fn health(&self, idx: EndpointIdx) -> Option<EndpointHealth> {
        let endpoint = self.endpoints.get(idx.index())?;
        Some(match endpoint.gate.load(Ordering::Acquire) {
            OPEN => EndpointHealth::Healthy,
            PROBE_IN_FLIGHT => EndpointHealth::Probing,
            until => {
                let now = self.service.stamp(Instant::now());
                if now >= until {
                    EndpointHealth::Probing
                } else {
                    EndpointHealth::Ejected(Duration::from_nanos(until - now))
                }
            }
        })
    }

    /// How many of this set's endpoints are ejected or on probation.
    pub fn ejected(&self) -> usize {
        self.endpoints.iter().filter(|e| e.gate.load(Ordering::Acquire) != OPEN).count()
    }

    /// Ejections of the service's endpoints since its first detector was
    /// built (counting re-ejections after a failed probe); carried across
    /// updates.
    pub fn ejections(&self) -> u64 {
        self.service.ejections.load(Ordering::Relaxed)
    }
}

impl Admission {
    /// The request succeeded: a healthy endpoint's failure streak ends; an
    /// endpoint on probation is healthy again.
    pub fn success(self) {
        self.report(false);
    }

    /// The request failed (see `Outcome::is_endpoint_failure`): the streak
    /// grows and may eject the endpoint; a failed trial ejects it again, for
    /// longer.
    pub fn failure(self) {
        self.report(true);
    }

    /// [`Admission::success`] or [`Admission::failure`], by `failed`.
    pub fn report(mut self, failed: bool) {
        let probe = std::mem::take(&mut self.probe);
        let (endpoint, service) = (&self.endpoint, &self.service);
        if probe {
            let _members = lock(&service.members);
            let now = Instant::now();
            let mut history = lock(&endpoint.history);
            if failed {
                history.times_ejected = history.times_ejected.saturating_add(1);
                let until = now + service.ejection_for(history.times_ejected);
                endpoint.gate.store(service.stamp(until), Ordering::Release);
                service.ejections.fetch_add(1, Ordering::Relaxed);
            } else {
                history.healthy_since = now;
                endpoint.consecutive.store(0, Ordering::Release);
                endpoint.gate.store(OPEN, Ordering::Release);
            }
        } else if endpoint.gate.load(Ordering::Acquire) != OPEN {
            // Sent before the ejection, answered after: the ejection already
            // accounts for it.
        } else if !failed {
            endpoint.consecutive.store(0, Ordering::Release);
        } else if endpoint.consecutive.fetch_add(1, Ordering::AcqRel).saturating_add(1)
            >= service.config.consecutive_failures
        {
            try_eject(endpoint, service);
        }
    }
}

impl Drop for Admission {
    /// A trial request dropped without a report frees the trial for another
    /// request; otherwise the endpoint would wait on probation forever.
    fn drop(&mut self) {
        if self.probe {
            let _ = self.endpoint.gate.compare_exchange(PROBE_IN_FLIGHT, 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// Eject `endpoint` unless that would put more than the allowed share of the
/// service's endpoints out. Refused, it stays in and its streak continues,
/// so the next failure tries again (perhaps after another one came back).
fn try_eject(endpoint: &Arc<EndpointState>, service: &Service) {
    let members = lock(&service.members);
    if endpoint.gate.load(Ordering::Acquire) != OPEN || !members.iter().any(|m| Arc::ptr_eq(m, endpoint)) {
        // Another failure ejected it first, or it left the set.
        return;
    }
    let out = members.iter().filter(|m| m.gate.load(Ordering::Acquire) != OPEN).count();
    let allowed = members.len() * service.config.max_ejected_percent.min(100) as usize / 100;
    if out >= allowed {
        return;
    }
    let now = Instant::now();
    let mut history = lock(&endpoint.history);
    // A long healthy spell earns back one ejection per base period, so an
    // endpoint that fails once a day is not ejected for 300 s every time.
    let healthy_for = now.saturating_duration_since(history.healthy_since);
    let earned = healthy_for.as_nanos() / service.config.base_ejection.as_nanos().max(1);
    history.times_ejected = history.times_ejected.saturating_sub(u32::try_from(earned).unwrap_or(u32::MAX));
    history.times_ejected = history.times_ejected.saturating_add(1);
    let until = now + service.ejection_for(history.times_ejected);
    endpoint.consecutive.store(0, Ordering::Release);
    endpoint.gate.store(service.stamp(until), Ordering::Release);
    service.ejections.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
