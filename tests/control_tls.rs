//! Control's gRPC API is TLS by default (RELIABILITY.md rows 29 and 33): a
//! plaintext client, a client certificate from a foreign CA and an expired
//! one are refused at the handshake with nothing registered; control's own
//! certificate (issued by the mesh CA for its SPIFFE ID and `tls_names`)
//! rotates at 70 % of its lifetime while Watch streams stay open, and every
//! watcher sees every change exactly once; `dev_insecure_control` is the
//! only way to plaintext, and says so on `/health`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::Ca;
use redfire::control::server::Control;
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A TLS endpoint of `control` presenting `identity` (chain PEM, key PEM).
fn endpoint_with(control: &Control, identity: Option<(String, String)>) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&control.trust_bundle_pem))
        .domain_name("127.0.0.1");
    if let Some((chain, key)) = identity {
        tls = tls.identity(Identity::from_pem(chain, key));
    }
    Endpoint::from_shared(control.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
}

/// Registers an instance through `endpoint`; the error if that fails at any step.
async fn try_register(endpoint: Endpoint, id: &str) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut c = RegistryClient::new(channel);
    c.register(pb::RegisterRequest { instance: Some(instance("orders", id)), ttl_ms: 0 })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// The instances of `orders` that control holds.
async fn orders(control: &Control) -> Vec<String> {
    let mut c = client(control).await;
    let r = c.get_service(pb::GetServiceRequest { service: "orders".into() }).await.unwrap().into_inner();
    r.instances.into_iter().map(|i| i.instance_id).collect()
}

/// A workload certificate of the mesh's CA for `service`, valid `lifetime`.
async fn workload_cert(settings: &Settings, service: &str, lifetime: Duration) -> (String, String) {
    let ca = Ca::load(Config::from_settings(settings.clone()).unwrap().ca).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr.pem().unwrap()).unwrap();
    let spiffe = redfire::mesh::identity::spiffe_id("redfire.local", "default", service);
    let leaf = ca.issue(&csr, &spiffe, lifetime).unwrap();
    (leaf.chain_pem, key.serialize_pem())
}

#[tokio::test]
async fn plaintext_foreign_and_expired_clients_are_refused_and_nothing_is_registered() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = settings();
    let control = control(s.clone()).await;
    assert!(control.tls && control.grpc_url().starts_with("https://"));

    // Plaintext h2c against the TLS listener.
    let plain = Endpoint::from_shared(format!("http://{}", control.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3));
    let e = try_register(plain, "plain").await.expect_err("plaintext refused");
    assert!(e.contains("connect") || e.contains("Unavailable") || e.contains("Unknown"), "{e}");

    // A client certificate from a CA the mesh does not trust.
    let evil_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut evil_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    evil_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let evil_ca_cert = evil_ca.self_signed(&evil_ca_key).unwrap();
    let evil_issuer = rcgen::Issuer::new(evil_ca, evil_ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names =
        vec![rcgen::SanType::URI("spiffe://redfire.local/ns/default/sa/orders".try_into().unwrap())];
    let leaf = leaf.signed_by(&leaf_key, &evil_issuer).unwrap();
    let foreign = (format!("{}{}", leaf.pem(), evil_ca_cert.pem()), leaf_key.serialize_pem());
    let e = try_register(endpoint_with(&control, Some(foreign)), "foreign").await.expect_err("foreign CA refused");
    assert!(!e.is_empty());

    // A certificate of the mesh's own CA that has expired.
    let expired = workload_cert(&s, "orders", Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = try_register(endpoint_with(&control, Some(expired)), "expired").await.expect_err("expired refused");
    assert!(!e.is_empty());

    // The same CA's valid certificate connects and registers its service;
    // TLS without a certificate (or a token) connects but is refused.
    let valid = workload_cert(&s, "orders", Duration::from_secs(600)).await;
    try_register(endpoint_with(&control, Some(valid)), "valid").await.expect("a valid workload certificate");
    let e = try_register(endpoint_with(&control, None), "anonymous").await.expect_err("no credential");
    assert!(e.starts_with("Unauthenticated"), "{e}");

    let got = orders(&control).await;
    assert_eq!(got, ["valid"], "nothing registered by the refused clients");
    let failures = metric(control.admin_addr, "redfire_control_tls_handshake_failures_total").await;
    assert!(failures >= 3.0, "refused handshakes counted: {failures}");
    control.shutdown();
}

/// The leaf certificate control presents to a new connection now.
async fn serving_leaf(control: &Control) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(control.trust_bundle_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(control.grpc_addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("verified");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

#[tokio::test]
async fn control_certificate_rotates_while_100_watchers_see_every_change_exactly_once() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The shortest lifetime allowed: the serving certificate renews after ~7 s.
    let control = control(Settings { cert_lifetime: Some("10s".into()), ..settings() }).await;
    let first = serving_leaf(&control).await;
    let (_, parsed) = x509_parser::parse_x509_certificate(&first).unwrap();
    let sans: Vec<String> =
        parsed.subject_alternative_name().unwrap().unwrap().value.general_names.iter().map(|n| n.to_string()).collect();
    assert!(sans.iter().any(|n| n.contains("spiffe://redfire.local/ns/redfire-system/sa/redfire-control")), "{sans:?}");
    assert!(
        sans.iter().any(|n| n == "DNSName(localhost)") && sans.iter().any(|n| n == "IPAddress(7f:00:00:01)"),
        "{sans:?}"
    );

    // 100 watchers over 4 connections, opened before the rotation.
    let mut channels: Vec<OperatorChannel> = Vec::new();
    for _ in 0..4 {
        channels.push(channel(&control).await);
    }
    let mut watchers = Vec::new();
    for w in 0..100 {
        let mut c = RegistryClient::new(channels[w % 4].clone());
        let mut watcher =
            Watcher::open(&mut c, pb::WatchRequest { services: vec!["orders".into()], ..Default::default() }).await;
        watcher.snapshot(Duration::from_secs(5)).await;
        watchers.push(watcher);
    }
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(m) = w.next(Duration::from_secs(5)).await {
                    if let Some(pb::watch_response::Event::Change(c)) = m.event {
                        seen.push((m.revision, key(&c)));
                        if seen.len() == 24 {
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();

    // 24 registrations spread over ~9.6 s: the renewal at ~7 s falls among them.
    let mut writer = client(&control).await;
    let mut rotated_at = None;
    for i in 0..24 {
        register(&mut writer, instance("orders", &format!("o-{i:02}")), 60_000).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        if rotated_at.is_none() && serving_leaf(&control).await != first {
            rotated_at = Some(i);
        }
    }
    let rotated_at = rotated_at.expect("the serving certificate was renewed within 10 s");
    assert!(rotated_at > 0 && rotated_at < 23, "the renewal happened mid-stream (after change {rotated_at})");

    for r in readers {
        let seen = r.await.unwrap();
        let keys: Vec<&str> = seen.iter().map(|(_, k)| k.as_str()).collect();
        let want: Vec<String> = (0..24).map(|i| format!("orders/o-{i:02}")).collect();
        assert_eq!(keys, want, "every change once, in order");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "revisions increase");
    }
    control.shutdown();
}

#[tokio::test]
async fn dev_insecure_control_serves_plaintext_and_says_so_on_health() {
    let control = control(Settings { dev_insecure_control: Some("true".into()), ..settings() }).await;
    assert!(!control.tls && control.grpc_url().starts_with("http://"));
    let plain = Endpoint::from_shared(control.grpc_url()).unwrap().timeout(Duration::from_secs(3));
    try_register(plain, "dev").await.expect("plaintext with dev_insecure_control");
    let (status, body) = http_get(control.admin_addr, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("WARNING") && body.contains("plaintext"), "{body}");
    // The default stays TLS, and its /health has no warning.
    let secure = support::control(settings()).await;
    let (_, body) = http_get(secure.admin_addr, "/health").await;
    assert_eq!(body, "ok\n");
    control.shutdown();
    secure.shutdown();
}

#[tokio::test]
async fn the_trust_bundle_is_written_and_printed_and_bad_tls_settings_exit_2() {
    let s = settings();
    let control = control(s.clone()).await;
    let file = control.trust_bundle_file.clone().expect("a bundle file");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), control.trust_bundle_pem);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redfire-control"))
        .args(["--ca-dir", &test_ca_dir(), "trust-bundle"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), control.trust_bundle_pem, "the same bundle, printed");
    for (flag, value) in [("--tls-names", "bad name!"), ("--dev-insecure-control", "maybe")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_redfire-control"))
            .args(["--ca-dir", &test_ca_dir(), flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let key = flag.trim_start_matches("--").replace('-', "_");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&key),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    control.shutdown();
}
