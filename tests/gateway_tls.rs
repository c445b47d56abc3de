//! TLS on the gateway's ingress: ALPN picks HTTP/2 or HTTP/1.1 on one port;
//! a new certificate written to the files is served to new connections
//! while connections already open keep working.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use redfire::sidecar::config::Settings as SidecarSettings;
use rustls::pki_types::{CertificateDer, ServerName};
use support::gateway::*;
use support::mesh::echo_app;
use tokio_rustls::TlsConnector;

const ROUTES: &str = "[[route]]\nname = \"echo\"\npath_prefix = \"/\"\nservice = \"echo\"\n";

fn self_signed() -> (CertificateDer<'static>, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.der().clone(), c.cert.pem(), c.signing_key.serialize_pem())
}

async fn connect(
    addr: std::net::SocketAddr,
    roots: &[CertificateDer<'static>],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

fn get() -> http::Request<Empty<Bytes>> {
    http::Request::get("https://localhost/echo.Echo/Say").header("host", "localhost").body(Empty::new()).unwrap()
}

#[tokio::test]
async fn alpn_h2_and_http1_and_certificate_reload_without_dropping_connections() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (der_a, cert_a, key_a) = self_signed();
    let (der_b, cert_b, key_b) = self_signed();
    let cert = TempFile::new("cert.pem", &cert_a);
    let key = TempFile::new("key.pem", &key_a);
    let app = echo_app(false).await;
    let extra = SidecarSettings {
        gateway_tls_cert: Some(cert.0.display().to_string()),
        gateway_tls_key: Some(key.0.display().to_string()),
        ..Default::default()
    };
    let m = gateway_mesh(&[Service { name: "echo", app, protocol: "h2c", metadata: "" }], ROUTES, extra).await;
    let roots = [der_a.clone(), der_b.clone()];

    // ALPN h2.
    let tls = connect(m.addr, &roots, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let mut req = get();
    *req.version_mut() = http::Version::HTTP_2;
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);

    // ALPN http/1.1, kept open across the reload.
    let tls = connect(m.addr, &roots, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], der_a);
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let resp = h1.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    // New pair on disk: new connections get certificate B.
    key.rewrite(&key_b);
    cert.rewrite(&cert_b);
    let reloaded = support::eventually(Duration::from_secs(10), || async {
        let tls = connect(m.addr, &roots, b"http/1.1").await;
        tls.get_ref().1.peer_certificates().unwrap()[0] == der_b
    })
    .await;
    assert!(reloaded, "new handshakes present the new certificate");
    let applied = "redfire_sidecar_gateway_config_reloads_total{what=\"tls\",result=\"applied\"}";
    assert!(support::metric(m.gateway.admin_addr, applied).await >= 1.0, "the reload is counted");

    // The connections opened before the reload still work.
    let resp = h1.send_request(get()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut req = get();
    *req.version_mut() = http::Version::HTTP_2;
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
}
