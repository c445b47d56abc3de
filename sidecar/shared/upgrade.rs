//! HTTP/1.1 `Upgrade` (WebSocket and any other upgraded protocol) across
//! the mesh.
//!
//! Between sidecars everything is HTTP/2, which has no `Upgrade`. So an
//! upgrade rides one HTTP/2 stream as a tunnel:
//!
//! 1. The outbound sidecar sees an HTTP/1.1 request with `Connection:
//!    upgrade` and `Upgrade: <protocol>`. It sends it to the peer as an
//!    HTTP/2 request marked [`UPGRADE`]` = <protocol>`, whose body stays open
//!    to carry the client's bytes after the upgrade.
//! 2. The inbound sidecar replays the upgrade request to the (HTTP/1.1) app
//!    on a connection of its own. If the app answers `101`, the inbound side
//!    answers the HTTP/2 stream `200` with the app's headers and
//!    [`UPGRADED`]` = <protocol>`, and the response body carries the app's
//!    bytes. Any other answer (a refused WebSocket handshake, say) goes back
//!    unchanged.
//! 3. The outbound side turns that `200` into the `101 Switching Protocols`
//!    the client waits for (with `Sec-WebSocket-Accept` and friends intact),
//!    and from then on copies bytes both ways.
//!
//! Either side closing its half ends the matching direction through the
//! tunnel, so a close propagates end to end. Tunnels are never retried (the
//! body is a live stream) and have no total timeout.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::sidecar::{Body, BoxError};

/// Request header between sidecars: this stream is an upgrade to the named protocol.
pub const UPGRADE: &str = "x-redfire-upgrade";
/// Response header between sidecars: the app switched protocols (it answered 101).
pub const UPGRADED: &str = "x-redfire-upgraded";

/// Bytes read from one side per tunnel frame.
const CHUNK: usize = 16 * 1024;
/// Frames in flight per direction before the reader waits (backpressure).
const QUEUE: usize = 8;

/// The protocol an HTTP/1.1 request asks to upgrade to, if it asks
/// (`Upgrade: x` and a `Connection` header naming `upgrade`).
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    has_token(headers, header::CONNECTION, "upgrade").then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// True when the comma-separated header `name` lists `token` (ASCII
/// case-insensitive), as `Connection: keep-alive, Upgrade` does `upgrade`.
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A body fed by the returned sender: the HTTP/2 half of a tunnel.
pub fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync())
}

/// Copies bytes both ways until both directions have ended: `io` → `tx`
/// (the stream we send) and `rx` (the stream we receive) → `io`.
pub async fn tunnel<I, B>(io: I, tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>, mut rx: B)
where
    I: AsyncRead + AsyncWrite,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let (mut read, mut write) = tokio::io::split(io);
    let up = async move {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Ok(Frame::data(buf.freeze()))).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the stream: the far side sees end of input.
    };
    let down = async move {
        while let Some(Ok(frame)) = rx.frame().await {
            if let Ok(data) = frame.into_data()
                && write.write_all(&data).await.is_err()
            {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_upgrade_with_upgrade_header_counts() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None, "Upgrade without Connection: upgrade is not a request to switch");
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested(&h).unwrap(), "websocket");
        h.remove(header::UPGRADE);
        assert_eq!(requested(&h), None);
    }
}
