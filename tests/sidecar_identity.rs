//! The sidecar's identity client against a real control: first certificate
//! from a bootstrap token, renewal at 70 % of the lifetime, the CA going
//! away (keep the current certificate until it expires, then fail closed),
//! and recovery when the CA returns.

mod support;

use std::time::{Duration, SystemTime};

use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::identity::token;
use redfire::sidecar::identity::{self, CredentialsRx, IdentityConfig};
use support::*;

fn short_lived(grpc_addr: &str) -> Settings {
    Settings { grpc_addr: Some(grpc_addr.into()), cert_lifetime: Some("10s".into()), ..settings() }
}

async fn wait_for(rx: &mut CredentialsRx, limit: Duration, what: &str, f: impl Fn(&CredentialsRx) -> bool) {
    let ok = tokio::time::timeout(limit, async {
        while !f(rx) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ok.is_ok() && f(rx), "{what} within {limit:?}");
}

#[tokio::test]
async fn first_certificate_renewal_ca_outage_and_recovery() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let ctl = control(short_lived(&addr)).await;
    let ca = Ca::load(Config::from_settings(short_lived(&addr)).unwrap().ca).await.unwrap();
    let tok = token::create(&ca, "trading", "orders", Duration::from_secs(600)).unwrap();
    let mut config = IdentityConfig::new(format!("http://{addr}"), tok);
    config.max_backoff = Duration::from_millis(500);
    let (mut rx, task) = identity::spawn(config).unwrap();

    wait_for(&mut rx, Duration::from_secs(5), "first certificate", |rx| rx.borrow().is_some()).await;
    let first = rx.borrow().clone().unwrap();
    assert_eq!(first.spiffe_id, "spiffe://redfire.local/ns/trading/sa/orders");
    assert_eq!(first.chain.len(), 2);

    // Renewed at 70 % of the 10 s lifetime, i.e. ~7 s after receipt.
    let first_after = first.not_after;
    let renew_due = first.renew_time(0.7);
    let left = renew_due.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(left > Duration::from_secs(5), "renewal is due at 70 %, not at once: {left:?}");
    tokio::time::sleep(left - Duration::from_millis(500)).await;
    assert_eq!(rx.borrow().as_ref().unwrap().not_after, first_after, "not renewed before 70 %");
    wait_for(&mut rx, Duration::from_secs(3), "renewal", |rx| {
        rx.borrow().as_ref().is_some_and(|c| c.not_after > first_after)
    })
    .await;
    let renewed = rx.borrow().clone().unwrap();
    assert_eq!(renewed.spiffe_id, first.spiffe_id, "renewal keeps the identity");

    // The CA goes away: the current certificate stays until it expires...
    ctl.shutdown();
    ctl.wait().await.unwrap();
    let expiry = rx.borrow().as_ref().unwrap().not_after;
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    if left > Duration::from_millis(500) {
        tokio::time::sleep(left - Duration::from_millis(400)).await;
        assert!(rx.borrow().is_some(), "still serving on the current certificate before expiry");
    }
    // ...then the sidecar fails closed.
    wait_for(&mut rx, Duration::from_secs(3), "fail closed at expiry", |rx| rx.borrow().is_none()).await;

    // The CA returns (same root, same address): a fresh certificate.
    let ctl = control(short_lived(&addr)).await;
    wait_for(&mut rx, Duration::from_secs(5), "recovery", |rx| rx.borrow().is_some()).await;
    assert!(rx.borrow().as_ref().unwrap().not_after > expiry);
    task.abort();
    ctl.shutdown();
}
