//! HTTP/1.1 `Upgrade` across the mesh: a WebSocket client talks to an
//! HTTP/1.1 WebSocket app through sidecar A → HTTP/2 over mTLS → sidecar B,
//! with the handshake (Sec-WebSocket-Accept), messages in both directions,
//! large frames and the close all arriving intact; a refused handshake comes
//! back as the app's own answer.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use support::mesh::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

/// A WebSocket echo app on HTTP/1.1 that refuses paths other than /chat (403)
/// and prefixes each text message with the peer identity the sidecar passed.
#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn ws_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut peer = String::new();
                let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    if req.uri().path() != "/chat" {
                        let mut e = ErrorResponse::new(Some("only /chat".into()));
                        *e.status_mut() = http::StatusCode::FORBIDDEN;
                        return Err(e);
                    }
                    peer = req
                        .headers()
                        .get("x-redfire-peer-identity")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("{peer} {t}")),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
                let _ = ws.close(None).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_through_the_mesh_handshake_messages_and_close() {
    let app = ws_app().await;
    let m = mesh(app, "http1", None).await;
    let listener = m.client_side.upstream_addrs[0].1;

    let tcp = TcpStream::connect(listener).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async("ws://echo/chat", tcp).await.expect("handshake through the mesh");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("sec-websocket-accept"), "the app's accept key reaches the client");

    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, Message::text(format!("spiffe://redfire.local/ns/default/sa/client hello {i}")));
    }
    // A frame larger than the tunnel's chunks and the HTTP/2 frame size.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);

    ws.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                continue;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the close travels through both sidecars and the stream ends");
}

#[tokio::test]
async fn refused_websocket_handshake_is_the_apps_answer() {
    let app = ws_app().await;
    let m = mesh(app, "http1", None).await;
    let tcp = TcpStream::connect(m.client_side.upstream_addrs[0].1).await.unwrap();
    let err = tokio_tungstenite::client_async("ws://echo/elsewhere", tcp).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected the app's 403, got {other:?}"),
    }
}
