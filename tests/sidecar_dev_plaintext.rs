//! The development-only plaintext mode between sidecars: it works when both
//! sides have it (and then carries no peer identity), and it never mixes with
//! mTLS: a plaintext caller is refused by an mTLS sidecar, and an mTLS caller
//! gets a clear connect error from a plaintext one.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use redfire::sidecar::config::Settings as SidecarSettings;
use support::mesh::*;

fn plaintext() -> SidecarSettings {
    SidecarSettings { dev_plaintext: Some("true".into()), ..Default::default() }
}

async fn say(m: &Mesh) -> http::Response<hyper::body::Incoming> {
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let req = Request::post("http://echo/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-redfire-peer-identity", "spiffe://forged/identity")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x03abc")).map_err(|n| match n {}).boxed_unsync())
        .unwrap();
    c.send_request(req).await.unwrap()
}

#[tokio::test]
async fn both_sides_plaintext_forward_without_identity() {
    let app = echo_app(false).await;
    let m = mesh_with(app, "h2c", plaintext(), plaintext()).await;
    let resp = say(&m).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-peer").is_none(), "no mTLS, so no identity (and the forged one is dropped)");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes().as_ref(), b"\0\0\0\0\x03abc");
}

#[tokio::test]
async fn plaintext_and_mtls_sides_never_talk() {
    for (client, server) in [(plaintext(), SidecarSettings::default()), (SidecarSettings::default(), plaintext())] {
        let client_plain = client.dev_plaintext.is_some();
        let app = echo_app(false).await;
        let m = mesh_with(app, "h2c", client, server).await;
        let resp = say(&m).await;
        assert_eq!(resp.status(), 200, "gRPC errors travel as HTTP 200");
        assert_eq!(resp.headers()["grpc-status"], "14", "UNAVAILABLE (client plaintext: {client_plain})");
        assert!(resp.headers().get("x-redfire-reason").is_some());
    }
}
