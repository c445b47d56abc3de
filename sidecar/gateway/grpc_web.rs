//! gRPC-Web ↔ gRPC, so browsers reach gRPC services through the gateway.
//!
//! A gRPC-Web request (`application/grpc-web[+proto]`, or the base64
//! `application/grpc-web-text[+proto]`) carries the same length-prefixed
//! messages as gRPC, over HTTP/1.1 or HTTP/2, with no HTTP trailers. So:
//! - request: content type → `application/grpc…`, `te: trailers`, HTTP/2;
//!   text bodies are base64-decoded as they stream;
//! - response: the gRPC trailers become one last frame in the body (flag
//!   `0x80`, then `name: value\r\n` lines), content type back to gRPC-Web;
//!   text responses are base64-encoded chunk by chunk.
//!
//! Unary and server-streaming calls work (client streaming does not exist
//! in gRPC-Web).

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::sidecar::{Body, BoxError};

/// Which gRPC-Web flavour a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `application/grpc-web`: binary frames.
    Binary,
    /// `application/grpc-web-text`: base64 of the binary frames.
    Text,
}

/// The flavour of a request, if it is gRPC-Web.
pub fn flavour(headers: &HeaderMap) -> Option<Flavour> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if ct.starts_with("application/grpc-web-text") {
        Some(Flavour::Text)
    } else if ct.starts_with("application/grpc-web") {
        Some(Flavour::Binary)
    } else {
        None
    }
}

/// The request as gRPC.
pub fn to_grpc(req: Request<Body>, flavour: Flavour) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let suffix = ct.split_once('+').map(|(_, s)| format!("+{s}")).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("application/grpc{suffix}"))
            .unwrap_or(HeaderValue::from_static("application/grpc")),
    );
    parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove("x-grpc-web");
    parts.version = Version::HTTP_2;
    let body = match flavour {
        Flavour::Binary => body,
        Flavour::Text => Decode { inner: body, carry: BytesMut::new() }.boxed_unsync(),
    };
    Request::from_parts(parts, body)
}

/// The `+format` suffix of a content type (`+proto`), or `""`.
pub fn suffix(headers: &HeaderMap) -> String {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split_once('+').map(|(_, s)| format!("+{s}")).unwrap_or_default()
}

/// The gRPC response as gRPC-Web of `flavour`; the content type keeps the
/// response's `+format`, else the request's (`request_suffix`).
pub fn from_grpc(resp: Response<Body>, flavour: Flavour, request_suffix: &str) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let suffix = match suffix(&parts.headers) {
        s if s.is_empty() => request_suffix.to_string(),
        s => s,
    };
    let base = match flavour {
        Flavour::Binary => "application/grpc-web",
        Flavour::Text => "application/grpc-web-text",
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{base}{suffix}")).unwrap_or(HeaderValue::from_static("application/grpc-web")),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = Encode { inner: body, text: flavour == Flavour::Text, done: false }.boxed_unsync();
    Response::from_parts(parts, body)
}

/// The trailer frame of gRPC-Web: flag 0x80, length, `name: value\r\n`...
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (k, v) in trailers {
        block.extend_from_slice(k.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(v.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(0x80);
    out.put_u32(block.len() as u32);
    out.extend_from_slice(&block);
    out.freeze()
}

/// Base64 → bytes, as the body streams (4-character groups; a partial
/// group waits for the next chunk).
struct Decode {
    inner: Body,
    carry: BytesMut,
}

impl HttpBody for Decode {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    this.carry.extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
                    // Padding may end any group (chunks are encoded one by one).
                    let mut whole = this.carry.len() / 4 * 4;
                    if let Some(p) = this.carry[..whole].iter().position(|&b| b == b'=') {
                        whole = (p / 4 + 1) * 4;
                    }
                    if whole == 0 {
                        continue;
                    }
                    let group = this.carry.split_to(whole);
                    match STANDARD.decode(&group) {
                        Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes))))),
                        Err(e) => return Poll::Ready(Some(Err(format!("grpc-web-text: bad base64: {e}").into()))),
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if this.carry.is_empty() => return Poll::Ready(None),
                Poll::Ready(None) => {
                    this.carry.clear();
                    return Poll::Ready(Some(Err("grpc-web-text: truncated base64".into())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// gRPC body + trailers → gRPC-Web body (trailers as the last frame).
struct Encode {
    inner: Body,
    text: bool,
    done: bool,
}

impl HttpBody for Encode {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let bytes = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(frame) => match frame.into_trailers() {
                    Ok(t) => {
                        this.done = true;
                        trailer_frame(&t)
                    }
                    Err(_) => Bytes::new(),
                },
            },
            other => return other,
        };
        let out = if this.text { Bytes::from(STANDARD.encode(&bytes)) } else { bytes };
        Poll::Ready(Some(Ok(Frame::data(out))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn body(chunks: Vec<Frame<Bytes>>) -> Body {
        StreamBody::new(futures::stream::iter(chunks.into_iter().map(Ok::<_, BoxError>))).boxed_unsync()
    }

    #[tokio::test]
    async fn text_requests_decode_across_chunk_boundaries() {
        let msg = b"\x00\x00\x00\x00\x03abc";
        let b64 = STANDARD.encode(msg);
        let (a, b) = b64.split_at(5);
        let mut req =
            Request::new(body(vec![Frame::data(Bytes::from(a.to_string())), Frame::data(Bytes::from(b.to_string()))]));
        req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text+proto"));
        let req = to_grpc(req, Flavour::Text);
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(req.headers()[header::TE], "trailers");
        let out = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], msg);
        let bad = Request::new(Full::new(Bytes::from_static(b"!!!!")).map_err(|n| match n {}).boxed_unsync());
        assert!(to_grpc(bad, Flavour::Text).into_body().collect().await.is_err());
    }

    #[tokio::test]
    async fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut resp =
            Response::new(body(vec![Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x01x")), Frame::trailers(t)]));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let resp = from_grpc(resp, Flavour::Binary, "");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc-web");
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"\x00\x00\x00\x00\x01x\x80\x00\x00\x00\x10grpc-status: 0\r\n");
    }
}
