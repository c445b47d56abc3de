//! Keeps this sidecar's instance in the registry: registers at start, renews
//! the lease over a KeepAlive stream (every third of the TTL, ≤ 3 s),
//! registers again when the lease is lost (control restarted, lease expired),
//! reports DRAINING when the drain starts and deregisters at the end.
//!
//! The instance's health follows `serving` (the sidecar has a workload
//! certificate and its app passes its health checks): SERVING or NOT_SERVING
//! at registration, and every change sent at once on the KeepAlive stream,
//! so other sidecars' discovery stops (or resumes) sending to it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_client::RegistryClient;

/// Longest interval between renewals.
const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(3);

fn health(serving: bool) -> pb::Health {
    if serving { pb::Health::Serving } else { pb::Health::NotServing }
}

/// Resolves when `serving` changes; never when its sender is gone.
async fn changed(serving: &mut watch::Receiver<bool>) {
    if serving.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs until the drain is over: `serving` is the health to report,
/// `drain` turning true reports DRAINING, `finished` turning true
/// (in-flight requests done) deregisters.
pub async fn run(
    mut client: RegistryClient<Channel>,
    mut instance: pb::Instance,
    mut serving: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
    mut finished: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if *drain.borrow() {
            return;
        }
        instance.health = health(*serving.borrow_and_update()) as i32;
        let req = pb::RegisterRequest { instance: Some(instance.clone()), ttl_ms: 0 };
        let reg = match client.register(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot register with control; retrying");
                backoff(failures, &mut drain).await;
                continue;
            }
        };
        failures = 0;
        tracing::info!(lease = reg.lease_id, health = instance.health().as_str_name(), "registered with control");
        let interval = (Duration::from_millis(u64::from(reg.ttl_ms)) / 3).min(MAX_RENEW_INTERVAL);
        let (tx, rx) = mpsc::channel(2);
        let mut responses = match client.keep_alive(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "keep-alive stream refused; registering again");
                continue;
            }
        };
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                // A renewal keeps the health; a change of health is sent at once.
                renewal = async {
                    tokio::select! {
                        _ = tick.tick() => 0,
                        () = changed(&mut serving) => health(*serving.borrow_and_update()) as i32,
                    }
                } => {
                    if tx.send(pb::KeepAliveRequest { lease_id: reg.lease_id, health: renewal }).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(interval * 2, responses.message()).await {
                        Ok(Ok(Some(_))) => {
                            if renewal != 0 {
                                tracing::info!(health = ?pb::Health::try_from(renewal), "reported health to control");
                            }
                        }
                        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                            tracing::warn!("lease renewal failed; registering again");
                            break;
                        }
                    }
                }
                () = async { let _ = drain.wait_for(|d| *d).await; } => {
                    let draining = pb::KeepAliveRequest { lease_id: reg.lease_id, health: pb::Health::Draining as i32 };
                    let _ = tx.send(draining).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), responses.message()).await;
                    // Keep the lease (and DRAINING) until in-flight work is done.
                    loop {
                        tokio::select! {
                            () = async { let _ = finished.wait_for(|f| *f).await; } => break,
                            _ = tick.tick() => {
                                let _ = tx.send(pb::KeepAliveRequest { lease_id: reg.lease_id, health: 0 }).await;
                                let _ = responses.message().await;
                            }
                        }
                    }
                    let _ = client.deregister(pb::DeregisterRequest { lease_id: reg.lease_id }).await;
                    tracing::info!("deregistered from control");
                    return;
                }
            }
        }
    }
}

async fn backoff(failures: u32, drain: &mut watch::Receiver<bool>) {
    let cap = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(cap.mul_f64(0.5 + fastrand::f64() / 2.0)) => {}
        () = async { let _ = drain.wait_for(|d| *d).await; } => {}
    }
}
