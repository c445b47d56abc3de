//! Run with: cargo run --release --example authz_bench
//!
//! Control's authorization layer alone, in process, per call: the tower
//! service in front of control's gRPC services (`control/authz/layer.rs`)
//! wrapping a service that answers at once, driven with the requests real
//! callers send, plus the event bus ACL check a Publish adds. Prints one
//! table: ns per call, and the same for the inner service without the layer
//! (the difference is what the layer costs).
//!
//! Callers: a workload (certificate read at connection time, as
//! `control/tls.rs` does) calling Register for its own service; an operator
//! (bearer token, verified once and then cached) calling Policy.Set; an
//! anonymous Health check (public); an anonymous Register (refused: the
//! refusal is counted and rate-limited in the log); and the topic check of a
//! workload's Publish against an ACL of 50 rules whose last one matches.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redfire::control::authz::caller::{Authenticator, Workload};
use redfire::control::authz::event_acl::EventAcl;
use redfire::control::authz::layer::AuthzLayer;
use redfire::control::authz::token;
use redfire::control::authz::{Admitted, Authz};
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::policy::store::PolicyStore;
use redfire::control::tls::{PeerCerts, TlsConnInfo};
use tower_layer::Layer;
use tower_service::Service;

const CALLS: u32 = 1_000_000;

/// A service that answers at once with an empty 200.
#[derive(Clone, Copy)]
struct Inner;

impl Service<http::Request<()>> for Inner {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

fn request(path: &str, token: Option<&str>, conn: &TlsConnInfo) -> http::Request<()> {
    let mut req = http::Request::builder().uri(format!("http://control{path}")).body(()).unwrap();
    if let Some(t) = token {
        req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
    }
    req.extensions_mut().insert(conn.clone());
    req
}

/// ns per call of `f`, best of 3 runs.
fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..CALLS {
            f();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(CALLS));
    }
    best
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("redfire-authz-bench-{}", std::process::id()));
    let config = Config::from_settings(Settings { ca_dir: Some(dir.display().to_string()), ..Default::default() })?;
    let ca = Ca::load(config.ca.clone()).await?;
    let policies = PolicyStore::memory();
    let mut acl_doc = String::new();
    for i in 0..49 {
        acl_doc.push_str(&format!("[[event_acl]]\nname = \"topic{i}.*\"\npublish = [\"svc{i}\"]\n"));
    }
    acl_doc.push_str("[[event_acl]]\nname = \"orders.*\"\npublish = [\"billing\", \"orders\"]\n");
    let doc = redfire::mesh::policy::parse_toml(&acl_doc, "bench", "redfire-control")?;
    policies.set("redfire-control", &serde_json::to_string(&doc)?, "bench").await?;
    let acl = Arc::new(EventAcl::default());
    let follower = redfire::control::policy::event_acl::follow(&policies, acl.clone());
    let authz = Arc::new(Authz::new(
        Some(Authenticator::new(token::Verifier::new(&ca).map_err(anyhow::Error::msg)?, None)),
        acl,
        Default::default(),
    ));
    let operator = token::create_operator(&ca, "bench", &["policy-admin"], Duration::from_secs(3600))
        .map_err(anyhow::Error::msg)?;
    let workload = Arc::new(Workload::from_spiffe_id("spiffe://redfire.local/ns/default/sa/orders").unwrap());
    let remote = "127.0.0.1:40000".parse()?;
    let with_cert = TlsConnInfo { remote, certs: PeerCerts::default(), workload: Some(workload) };
    let without = TlsConnInfo { remote, certs: PeerCerts::default(), workload: None };

    let mut layered = AuthzLayer(authz.clone()).layer(Inner);
    let mut bare = Inner;
    let cases: [(&str, &str, Option<&str>, &TlsConnInfo); 4] = [
        ("workload Register (own service)", "/redfire.registry.v1.Registry/Register", None, &with_cert),
        ("operator Policy.Set (cached token)", "/redfire.policy.v1.Policy/Set", Some(&operator), &without),
        ("anonymous Health.Check (public)", "/grpc.health.v1.Health/Check", None, &without),
        ("anonymous Register (refused)", "/redfire.registry.v1.Registry/Register", None, &without),
    ];
    println!("authorization layer alone, {CALLS} calls per row, best of 3 (one core)\n");
    println!("| call | through the layer ns | inner service alone ns | layer ns/call |");
    println!("|---|---|---|---|");
    for (name, path, token, conn) in cases {
        // Both sides build the same request, so the difference is the layer.
        let with = time(|| {
            let r = layered.call(request(path, token, conn));
            black_box(futures::executor::block_on(r).ok());
        });
        let alone = time(|| {
            let r = bare.call(request(path, token, conn));
            black_box(futures::executor::block_on(r).ok());
        });
        println!("| {name} | {with:.0} | {alone:.0} | {:.0} |", with - alone);
    }
    // The topic check a Publish adds, on what the layer admitted.
    let admitted = authz
        .admit("/redfire.events.v1.Events/Publish", &http::HeaderMap::new(), with_cert.workload.as_ref())
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let check = time(|| {
        black_box(authz.topics(Some(black_box(&admitted as &Admitted)), ["orders.created"]).is_ok());
    });
    println!("| workload Publish topic check (50-rule ACL, last rule matches) | {check:.0} | - | {check:.0} |");
    follower.abort();
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
