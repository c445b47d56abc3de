//! The sidecar's identity client against a real control: first certificate
//! from a bootstrap token, renewal at 70 % of the lifetime, the CA going
//! away (keep the current certificate until it expires, then fail closed),
//! and recovery when the CA returns.

mod support;

use std::time::{Duration, SystemTime};

use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::sidecar::control_client::identity::{self, IdentityConfig};
use redfire::sidecar::transport::control::ControlTarget;
use redfire::sidecar::transport::credentials::CredentialsRx;
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
    let target = ControlTarget::new(ctl.grpc_url(), Some(ctl.trust_bundle_pem.clone())).unwrap();
    let mut config = IdentityConfig::new(target, tok);
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

/// Both sidecars of a pair renew their 10 s certificates (at ~7 s and ~14 s)
/// while four callers keep unary calls flowing: not one call fails. After
/// each renewal the caller's pool dials a new connection with the new
/// certificate while calls on the old one finish there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_no_request() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use support::mesh::*;

    let ctl = Settings { cert_lifetime: Some("10s".into()), ..settings() };
    let app = unary_app().await;
    let m = mesh_full(ctl, app, "h2c", Default::default(), Default::default()).await;
    let identity = |addr| async move {
        let (_, body) = http_get(addr, "/admin/config").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["identity"][1].as_str().unwrap_or_default().to_string()
    };
    let (client_cert, server_cert) =
        (identity(m.client_side.admin_addr).await, identity(m.server_side.admin_addr).await);

    let listener = m.client_side.upstream_addrs[0].1;
    let until = tokio::time::Instant::now() + Duration::from_secs(16);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4u8 {
        workers.spawn(async move {
            let mut c = h2c_client(listener).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while tokio::time::Instant::now() < until {
                let payload = Bytes::from(vec![w; 64]);
                let req = http::Request::post("http://echo/echo.Echo/Say")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(payload.clone()).map_err(|n| match n {}).boxed_unsync())
                    .unwrap();
                let outcome = async {
                    let resp = c.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.headers().get("grpc-status").cloned();
                    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
                    let code = body.trailers().and_then(|t| t.get("grpc-status").cloned()).or(status);
                    if code.as_ref().map(|c| c.as_bytes()) != Some(b"0") || body.to_bytes() != payload {
                        return Err(format!("grpc-status {code:?}"));
                    }
                    Ok(())
                }
                .await;
                match outcome {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        });
    }
    let mut total = 0;
    while let Some(r) = workers.join_next().await {
        let (ok, failed) = r.unwrap();
        assert!(failed.is_empty(), "{} calls failed during rotation, e.g. {:?}", failed.len(), failed.first());
        total += ok;
    }
    assert!(total > 400, "the load kept flowing: {total} calls");
    let (client_after, server_after) =
        (identity(m.client_side.admin_addr).await, identity(m.server_side.admin_addr).await);
    assert_ne!(client_after, client_cert, "the caller's certificate was renewed during the run");
    assert_ne!(server_after, server_cert, "the server's certificate was renewed during the run");
}

#[tokio::test]
async fn a_restarted_sidecar_brings_its_one_use_token_back_with_its_kept_key() {
    let ctl = control(settings()).await;
    let tok = ctl.bootstrap_token("default", "orders").unwrap();
    let target = ControlTarget::new(ctl.grpc_url(), Some(ctl.trust_bundle_pem.clone())).unwrap();
    let dir = std::env::temp_dir().join(format!("redfire-key-{}-{}", std::process::id(), free_port()));
    let key_file = dir.join("key.pem");
    let start = |key_file: Option<std::path::PathBuf>| {
        let mut config = IdentityConfig::new(target.clone(), tok.clone());
        config.max_backoff = Duration::from_millis(200);
        config.key_file = key_file;
        identity::spawn(config).unwrap()
    };

    // First start: a key is created (0600) and the token certifies it.
    let (mut rx, task) = start(Some(key_file.clone()));
    wait_for(&mut rx, Duration::from_secs(5), "first certificate", |rx| rx.borrow().is_some()).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    task.abort();

    // Restarted with the same key file: the same token works again.
    let (mut rx, task) = start(Some(key_file.clone()));
    wait_for(&mut rx, Duration::from_secs(5), "certificate after a restart", |rx| rx.borrow().is_some()).await;
    task.abort();

    // Restarted without it (a new key): the spent token is refused.
    let (rx, task) = start(None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rx.borrow().is_none(), "a new key with a spent one-use token gets no certificate");
    task.abort();

    // A key file that is not a key is a start error naming the setting.
    std::fs::write(&key_file, "not a key").unwrap();
    let mut config = IdentityConfig::new(target.clone(), tok.clone());
    config.key_file = Some(key_file.clone());
    let e = identity::spawn(config).unwrap_err().to_string();
    assert!(e.starts_with("identity_key_file:") && e.contains("not a PEM private key"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
