//! The mesh CA (`redfire.identity.v1`) over real gRPC: bootstrap tokens,
//! CSR signing, renewal with the current certificate, bad credentials, and
//! one CA shared by replicas on Redis.

mod support;

use std::process::Command;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use redfire::control::authz::token;
use redfire::control::config::{Config, Settings};
use redfire::control::identity::ca::{Ca, generate_root, pem_blocks};
use redfire::proto::identity::v1 as pb;
use redfire::proto::identity::v1::identity_client::IdentityClient;
use support::*;
use tonic::Code;
use tonic::transport::Channel;
use x509_parser::prelude::*;

async fn identity_client(control: &redfire::control::server::Control) -> IdentityClient<Channel> {
    IdentityClient::new(anonymous_channel(control).await)
}

/// A CSR for a fresh key, asking (uselessly) for `san`.
fn csr(san: Option<&str>) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    if let Some(san) = san {
        params.subject_alt_names = vec![SanType::URI(san.to_string().try_into().unwrap())];
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn csr_for(key: &KeyPair) -> String {
    CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(key).unwrap().pem().unwrap()
}

async fn ca_of(settings: Settings) -> Ca {
    Ca::load(Config::from_settings(settings).unwrap().ca).await.unwrap()
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

fn issue_req(csr_pem: String, cred: pb::issue_certificate_request::Credential) -> pb::IssueCertificateRequest {
    pb::IssueCertificateRequest { csr_pem, credential: Some(cred), lifetime_s: 0 }
}

use pb::issue_certificate_request::Credential::{BootstrapToken, CurrentCertificatePem};

#[tokio::test]
async fn token_gets_a_spiffe_certificate_chained_to_the_root() {
    let ctl = control(settings()).await;
    let tok = token::create(&ca_of(settings()).await, "trading", "orders", Duration::from_secs(600)).unwrap();
    let mut c = identity_client(&ctl).await;
    // A CSR asking for another identity is refused (and does not spend the
    // token); one naming its own, or none, gets the token's identity.
    let (_key, csr_pem) = csr(Some("spiffe://redfire.local/ns/kube-system/sa/admin"));
    let e = c.issue_certificate(issue_req(csr_pem, BootstrapToken(tok.clone()))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("sa/admin") && e.message().contains("sa/orders"), "{}", e.message());
    let (_key, csr_pem) = csr(Some("spiffe://redfire.local/ns/trading/sa/orders"));
    let r = c.issue_certificate(issue_req(csr_pem, BootstrapToken(tok))).await.unwrap().into_inner();
    assert_eq!(r.spiffe_id, "spiffe://redfire.local/ns/trading/sa/orders");

    let chain = pem_blocks(&r.certificate_chain_pem);
    assert_eq!(chain.len(), 2, "leaf then root");
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(uris(&leaf), vec![r.spiffe_id.clone()]);
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let roots = pem_blocks(&r.trust_bundle_pem);
    let (_, root) = X509Certificate::from_der(&roots[0]).unwrap();
    leaf.verify_signature(Some(root.public_key())).expect("signed by the root in the bundle");
    let life = r.not_after_unix_ms - r.not_before_unix_ms;
    assert!((24 * 3600 * 1000..=(24 * 3600 + 301) * 1000).contains(&life), "24 h (+ 5 min backdate): {life}");

    let bundle = c.get_trust_bundle(pb::GetTrustBundleRequest {}).await.unwrap().into_inner();
    assert_eq!(bundle.trust_domain, "redfire.local");
    assert_eq!(bundle.trust_bundle_pem, r.trust_bundle_pem);
    ctl.shutdown();
}

#[tokio::test]
async fn renewal_with_the_current_certificate_keeps_the_identity() {
    let ctl = control(settings()).await;
    let tok = token::create(&ca_of(settings()).await, "default", "users", Duration::from_secs(600)).unwrap();
    let mut c = identity_client(&ctl).await;
    let key = KeyPair::generate().unwrap();
    let first = c.issue_certificate(issue_req(csr_for(&key), BootstrapToken(tok))).await.unwrap().into_inner();

    let mut req = issue_req(csr_for(&key), CurrentCertificatePem(first.certificate_chain_pem.clone()));
    req.lifetime_s = 3600;
    let renewed = c.issue_certificate(req).await.unwrap().into_inner();
    assert_eq!(renewed.spiffe_id, first.spiffe_id);
    assert!(renewed.not_after_unix_ms < first.not_after_unix_ms, "asked for 1 h");

    // A CSR for another key cannot ride on someone's certificate.
    let (_, other_csr) = csr(None);
    let e = c.issue_certificate(issue_req(other_csr, CurrentCertificatePem(first.certificate_chain_pem.clone()))).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("not the key of current_certificate_pem"), "{}", e.message());
    ctl.shutdown();
}

#[tokio::test]
async fn bad_credentials_and_bad_csrs_are_refused_with_a_reason() {
    let ctl = control(settings()).await;
    let ca = ca_of(settings()).await;
    let mut c = identity_client(&ctl).await;
    let (key, good_csr) = csr(None);

    // A token from another mesh's CA.
    let foreign_dir = std::env::temp_dir().join(format!("redfire-foreign-ca-{}", fastrand::u64(..)));
    let foreign = ca_of(Settings { ca_dir: Some(foreign_dir.display().to_string()), ..settings() }).await;
    let foreign_tok = token::create(&foreign, "default", "orders", Duration::from_secs(600)).unwrap();
    // A token that expired 50 minutes ago (far beyond the 30 s leeway).
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let expired = token::create_at(&ca, "default", "orders", hour_ago, Duration::from_secs(600), 1).unwrap();
    let good = token::create(&ca, "default", "orders", Duration::from_secs(600)).unwrap();
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = {
        use base64_engine::encode;
        encode(br#"{"iss":"redfire-control","aud":"redfire-bootstrap","sub":"spiffe://redfire.local/ns/default/sa/payments","iat":1,"exp":99999999999,"jti":"x"}"#)
    };
    parts[1] = &forged_payload;
    let forged = parts.join(".");
    let alg_none = format!("{}.{}.", base64_engine::encode(br#"{"alg":"none","typ":"JWT"}"#), forged_payload);

    for (tok, why) in [
        (foreign_tok, "foreign CA"),
        (expired, "expired"),
        (forged, "tampered payload"),
        (alg_none, "alg none"),
        ("not-a-token".to_string(), "garbage"),
    ] {
        let e = c.issue_certificate(issue_req(good_csr.clone(), BootstrapToken(tok))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
        assert!(e.message().starts_with("bootstrap_token:"), "{why}: {}", e.message());
    }

    // A certificate from the foreign CA cannot renew here.
    let foreign_leaf = foreign.issue(
        &rcgen::CertificateSigningRequestParams::from_pem(&csr_for(&key)).unwrap(),
        "spiffe://redfire.local/ns/default/sa/orders",
        Duration::from_secs(600),
    );
    let e = c
        .issue_certificate(issue_req(good_csr.clone(), CurrentCertificatePem(foreign_leaf.unwrap().chain_pem)))
        .await
        .unwrap_err();
    assert!(e.code() == Code::Unauthenticated && e.message().contains("not issued by this mesh's CA"), "{e:?}");

    let e = c.issue_certificate(issue_req("garbage".into(), BootstrapToken(good.clone()))).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().starts_with("csr_pem:"), "{e:?}");
    // A CSR whose signature does not match its content (last byte flipped).
    let tampered = {
        use rustls_pki_types::pem::PemObject;
        let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(good_csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        *der.last_mut().unwrap() ^= 0x01;
        let b64 = base64_engine::encode_with(&der, base64_engine::STANDARD);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    };
    let e = c.issue_certificate(issue_req(tampered, BootstrapToken(good.clone()))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .issue_certificate(pb::IssueCertificateRequest { csr_pem: good_csr.clone(), credential: None, lifetime_s: 0 })
        .await
        .unwrap_err();
    assert!(e.code() == Code::Unauthenticated && e.message().contains("credential: missing"), "{e:?}");
    let mut short = issue_req(good_csr, BootstrapToken(good));
    short.lifetime_s = 5;
    let e = c.issue_certificate(short).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let _ = std::fs::remove_dir_all(foreign_dir);
    ctl.shutdown();
}

#[tokio::test]
async fn operator_root_files_and_extra_roots_make_the_bundle() {
    let dir = std::env::temp_dir().join(format!("redfire-root-files-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = generate_root("redfire.local").unwrap();
    let (next_root, _) = generate_root("redfire.local").unwrap();
    std::fs::write(dir.join("root.crt"), &cert).unwrap();
    std::fs::write(dir.join("root.key"), &key).unwrap();
    std::fs::write(dir.join("next.crt"), &next_root).unwrap();
    let s = Settings {
        ca_cert_file: Some(dir.join("root.crt").display().to_string()),
        ca_key_file: Some(dir.join("root.key").display().to_string()),
        ca_extra_roots_file: Some(dir.join("next.crt").display().to_string()),
        ..settings()
    };
    let ctl = control(s).await;
    let mut c = identity_client(&ctl).await;
    let bundle = c.get_trust_bundle(pb::GetTrustBundleRequest {}).await.unwrap().into_inner().trust_bundle_pem;
    assert_eq!(pem_blocks(&bundle), [pem_blocks(&cert), pem_blocks(&next_root)].concat(), "current root, then next");
    ctl.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn replicas_on_redis_share_one_ca() {
    let Some(url) = shared_redis() else { return };
    let prefix = unique_prefix("ca");
    let a = control(redis_settings(&url, &prefix)).await;
    let b = control(redis_settings(&url, &prefix)).await;
    let (mut ca, mut cb) = (identity_client(&a).await, identity_client(&b).await);
    let bundle_a = ca.get_trust_bundle(pb::GetTrustBundleRequest {}).await.unwrap().into_inner().trust_bundle_pem;
    let bundle_b = cb.get_trust_bundle(pb::GetTrustBundleRequest {}).await.unwrap().into_inner().trust_bundle_pem;
    assert_eq!(bundle_a, bundle_b);
    // A token made against the shared root works on either replica.
    let tok = token::create(&ca_of(redis_settings(&url, &prefix)).await, "default", "orders", Duration::from_secs(60));
    let (_, csr_pem) = csr(None);
    let r = cb.issue_certificate(issue_req(csr_pem, BootstrapToken(tok.unwrap()))).await.unwrap().into_inner();
    assert_eq!(r.spiffe_id, "spiffe://redfire.local/ns/default/sa/orders");
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn token_create_command_prints_a_working_token() {
    let ctl = control(settings()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_redfire-control"))
        .args(["--ca-dir", &test_ca_dir(), "token", "create", "--service", "strategies", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (_, csr_pem) = csr(None);
    let mut c = identity_client(&ctl).await;
    let r = c.issue_certificate(issue_req(csr_pem, BootstrapToken(tok))).await.unwrap().into_inner();
    assert_eq!(r.spiffe_id, "spiffe://redfire.local/ns/default/sa/strategies");
    let bad = Command::new(env!("CARGO_BIN_EXE_redfire-control"))
        .args(["--ca-dir", &test_ca_dir(), "token", "create", "--service", "Bad_Name"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("service:"));
    ctl.shutdown();
}

/// URL-safe base64 without padding, as JWTs use (enough for forging tests).
mod base64_engine {
    const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub(super) const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(data: &[u8]) -> String {
        encode_with(data, URL_SAFE)
    }

    /// Unpadded; PEM parsers here accept that.
    pub(super) fn encode_with(data: &[u8], alphabet: &[u8; 64]) -> String {
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
