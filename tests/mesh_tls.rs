//! mTLS between sidecars over real sockets (RELIABILITY.md row 15): the
//! right peer connects and is identified; a wrong SPIFFE ID, an untrusted CA,
//! an expired certificate, no client certificate and plaintext are refused
//! during the handshake, and not one application byte is read.

use std::time::Duration;

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use redfire::control::identity::ca::{Ca, CaConfig, RootSource};
use redfire::mesh::identity::spiffe_id;
use redfire::sidecar::transport::credentials::Credentials;
use redfire::sidecar::transport::tls::{client_config, peer_server_name, peer_spiffe_id, server_config};
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

async fn new_ca() -> Ca {
    let dir = std::env::temp_dir().join(format!("redfire-mtls-ca-{:x}", fastrand::u64(..)));
    Ca::load(CaConfig {
        trust_domain: "redfire.local".into(),
        root: RootSource::Dir(dir),
        extra_roots: None,
        leaf_lifetime: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

fn creds(ca: &Ca, service: &str, lifetime: Duration) -> Credentials {
    let key = KeyPair::generate().unwrap();
    let csr_pem = CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap().pem().unwrap();
    let csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
    let leaf = ca.issue(&csr, &spiffe_id("redfire.local", "default", service), lifetime).unwrap();
    Credentials::from_pem(
        leaf.chain_pem,
        PrivatePkcs8KeyDer::from(key.serialize_der()),
        ca.bundle_pem(),
        leaf.spiffe_id,
        (leaf.not_before, leaf.not_after),
    )
    .unwrap()
}

/// A one-connection inbound: Ok((caller id, app bytes read)) or the handshake error.
async fn inbound(
    server: &Credentials,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Result<(String, usize), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(server).unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default()).unwrap_or_default();
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok((peer, n))
    });
    (addr, task)
}

async fn dial(client: &Credentials, expected: &str, addr: std::net::SocketAddr) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(client_config(client, expected).unwrap());
    let mut tls = connector.connect(peer_server_name(), tcp).await.map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok(out)
}

fn orders() -> String {
    spiffe_id("redfire.local", "default", "orders")
}

#[tokio::test]
async fn the_right_peer_connects_and_is_identified() {
    let ca = new_ca().await;
    let (server, client) =
        (creds(&ca, "orders", Duration::from_secs(600)), creds(&ca, "users", Duration::from_secs(600)));
    let (addr, task) = inbound(&server).await;
    assert_eq!(dial(&client, &orders(), addr).await.unwrap(), b"hello");
    let (peer, n) = task.await.unwrap().unwrap();
    assert_eq!(peer, spiffe_id("redfire.local", "default", "users"));
    assert_eq!(n, 5);
}

#[tokio::test]
async fn wrong_spiffe_id_is_refused_by_the_client() {
    let ca = new_ca().await;
    let (server, client) =
        (creds(&ca, "payments", Duration::from_secs(600)), creds(&ca, "users", Duration::from_secs(600)));
    let (addr, task) = inbound(&server).await;
    let e = dial(&client, &orders(), addr).await.unwrap_err();
    assert!(e.contains("is not the expected spiffe://redfire.local/ns/default/sa/orders"), "{e}");
    assert!(task.await.unwrap().is_err(), "the inbound read no application byte");
}

#[tokio::test]
async fn untrusted_ca_expired_cert_and_missing_cert_are_refused_by_the_server() {
    let ca = new_ca().await;
    let server = creds(&ca, "orders", Duration::from_secs(600));

    // A client from another mesh: its leaf does not chain to our bundle. It
    // trusts our root (so the failure is the server's verdict, not its own).
    let foreign = new_ca().await;
    let mut stranger = creds(&foreign, "users", Duration::from_secs(600));
    stranger.roots = server.roots.clone();
    let (addr, task) = inbound(&server).await;
    assert!(dial(&stranger, &orders(), addr).await.is_err());
    let e = task.await.unwrap().unwrap_err();
    // Both roots share a subject name, so webpki finds ours and the
    // signature check fails.
    assert!(e.contains("invalid peer certificate"), "{e}");

    // An expired leaf of our own CA.
    let expired = creds(&ca, "users", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (addr, task) = inbound(&server).await;
    assert!(dial(&expired, &orders(), addr).await.is_err());
    let e = task.await.unwrap().unwrap_err();
    assert!(e.to_lowercase().contains("expired"), "{e}");

    // No client certificate at all.
    let (addr, task) = inbound(&server).await;
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates({
                let mut r = rustls::RootCertStore::empty();
                r.add(server.roots[0].clone()).unwrap();
                r
            })
            .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The handshake fails (at once, or at the first read under TLS 1.3).
    if let Ok(mut tls) = TlsConnector::from(std::sync::Arc::new(config)).connect(peer_server_name(), tcp).await {
        let _ = tls.write_all(b"hello").await;
        let mut buf = Vec::new();
        assert!(tls.read_to_end(&mut buf).await.is_err() || buf.is_empty());
    }
    let e = task.await.unwrap().unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn plaintext_is_refused() {
    let ca = new_ca().await;
    let server = creds(&ca, "orders", Duration::from_secs(600));
    let (addr, task) = inbound(&server).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /orders.Orders/Create HTTP/1.1\r\nHost: orders\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(task.await.unwrap().is_err(), "no TLS, no application bytes");
    assert!(!String::from_utf8_lossy(&buf).contains("200"), "nothing was served");
}
