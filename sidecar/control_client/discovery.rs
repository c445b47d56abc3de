//! Discovery: the registry Watch that keeps the outbound path's
//! [`Upstreams`] current.
//!
//! One task holds a Watch on control and installs every change of a
//! service's instances. When control is unreachable the last-known sets stay
//! in force and the task reconnects with jittered backoff, resuming from its
//! last revision (no lost or repeated change).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use crate::mesh::registry::Instance;
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_client::RegistryClient;
use crate::sidecar::config::Config;
use crate::sidecar::outbound::balance::Balancing;
use crate::sidecar::outbound::breaker::OutlierConfig;
use crate::sidecar::outbound::upstreams::Upstreams;

/// Starts watching control on `channel`, balancing each service as
/// `config` says.
pub fn spawn(config: &Config, channel: Channel) -> (Arc<Upstreams>, tokio::task::JoinHandle<()>) {
    let upstreams = Upstreams::new(
        Balancing { policy: config.balancer, hash_header: config.hash_header.clone() },
        config.service_balancers.clone(),
        config.zone_preference(),
        config.max_in_flight,
        config.trust_domain.clone(),
        OutlierConfig {
            consecutive_failures: config.ejection_failures,
            base_ejection: config.ejection_time,
            ..OutlierConfig::default()
        },
    );
    let task = tokio::spawn(run(upstreams.clone(), RegistryClient::new(channel)));
    (upstreams, task)
}

type Instances = HashMap<String, BTreeMap<String, Instance>>;

async fn run(d: Arc<Upstreams>, mut client: RegistryClient<tonic::transport::Channel>) {
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
                            d.mark_synced();
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
        d.mark_disconnected();
        failures += 1;
        let cap = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
        tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
    }
}

fn apply(d: &Upstreams, instances: &mut Instances, event: Option<pb::watch_response::Event>) {
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
