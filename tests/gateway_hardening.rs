//! The gateway's ingress under attack (RELIABILITY.md rows 1, 2, 4, 5, 7
//! and the connection limit), over real sockets: HTTP/2 frames are written
//! by hand so the client can misbehave in ways a real client library won't.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use redfire::sidecar::config::Settings as SidecarSettings;
use support::gateway::*;
use support::http_get;
use support::mesh::echo_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = "[[route]]\nname = \"echo\"\npath_prefix = \"/echo\"\nservice = \"echo\"\n";

async fn gateway(extra: SidecarSettings) -> GatewayMesh {
    let app = echo_app(false).await;
    gateway_mesh(&[Service { name: "echo", app, protocol: "h2c", metadata: "" }], ROUTES, extra).await
}

// --- hand-written HTTP/2 -------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const REFUSED_STREAM: u32 = 7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `POST /echo/x` (or GET) with `:authority: api.test`, no
/// Huffman, no indexing.
fn request_block(post: bool) -> Vec<u8> {
    let mut b = vec![if post { 0x83 } else { 0x82 }, 0x86];
    b.extend_from_slice(&[0x04, 7]);
    b.extend_from_slice(b"/echo/x");
    b.extend_from_slice(&[0x01, 8]);
    b.extend_from_slice(b"api.test");
    b
}

/// A literal header `name: value` without indexing (value < 16 KiB).
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    let n = value.len();
    if n < 127 {
        b.push(n as u8);
    } else {
        b.push(0x7f);
        let mut rest = n - 127;
        while rest >= 128 {
            b.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        b.push(rest as u8);
    }
    b.extend_from_slice(value);
    b
}

/// What the server sent until it closed the connection or `limit` passed.
#[derive(Debug, Default)]
struct Seen {
    /// GOAWAY error code, if one came.
    goaway: Option<u32>,
    /// RST_STREAM frames by error code.
    resets: std::collections::BTreeMap<u32, usize>,
    /// Response HEADERS frames (one per stream that got an answer).
    responses: usize,
    /// The server closed the connection.
    closed: bool,
}

async fn read_frames(mut r: tokio::net::tcp::OwnedReadHalf, limit: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, payload) = (buf[3], &buf[9..9 + len]);
            match kind {
                GOAWAY if len >= 8 => seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                RST_STREAM if len == 4 => {
                    *seen.resets.entry(u32::from_be_bytes(payload.try_into().unwrap())).or_default() += 1
                }
                HEADERS => seen.responses += 1,
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return seen,
        }
    }
}

async fn h2_conn(addr: SocketAddr) -> (tokio::task::JoinHandle<Seen>, tokio::net::tcp::OwnedWriteHalf) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    w.write_all(&hello).await.unwrap();
    (tokio::spawn(read_frames(r, Duration::from_secs(10))), w)
}

fn requests_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("redfire_sidecar_gateway_requests_total{route=\"echo\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// --- the rows --------------------------------------------------------------

/// Row 1: 10k HEADERS+RST_STREAM on one connection → GOAWAY long before
/// 10k streams are served.
#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let m = gateway(Default::default()).await;
    let (reader, mut w) = h2_conn(m.addr).await;
    let block = request_block(false);
    let mut sent = 0;
    'outer: for batch in 0..100u32 {
        let mut out = Vec::new();
        for i in 0..100u32 {
            let stream = 1 + 2 * (batch * 100 + i);
            out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
            out.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        }
        if w.write_all(&out).await.is_err() {
            break 'outer;
        }
        sent += 100;
    }
    let seen = reader.await.unwrap();
    assert!(seen.goaway.is_some() || seen.closed, "the connection is cut: {seen:?} after {sent} streams");
    assert_eq!(seen.goaway, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM: {seen:?}");
    let served = requests_served(&http_get(m.gateway.admin_addr, "/metrics").await.1);
    assert!(served < 1_000, "{served} of 10000 reset streams were served");
}

/// Row 2: HEADERS then CONTINUATION frames without END_HEADERS, far past
/// the 16 KiB header-list limit → GOAWAY. (h2 discards header bytes past
/// the limit instead of buffering them, and allows max(5, 1.25 × list/frame
/// size) CONTINUATION frames per block: here 5, about 40 KiB.)
#[tokio::test]
async fn continuation_flood_is_cut_at_the_header_list_limit() {
    let m = gateway(Default::default()).await;
    let (reader, mut w) = h2_conn(m.addr).await;
    let _ = w.write_all(&frame(HEADERS, 0, 1, &request_block(true))).await;
    // 128 × ~8 KiB = 1 MiB, never END_HEADERS.
    for i in 0..128 {
        if w.write_all(&frame(CONTINUATION, 0, 1, &literal(&format!("x-flood-{i}"), &[b'a'; 8000]))).await.is_err() {
            break;
        }
    }
    let seen = reader.await.unwrap();
    assert_eq!(seen.goaway, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM: {seen:?}");
    assert_eq!(seen.responses, 0);
}

/// Row 4: 1,000 concurrent streams against the 100-stream limit → the
/// ones beyond the limit are refused, at most 100 are served at once.
#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let m = gateway(Default::default()).await;
    let (reader, mut w) = h2_conn(m.addr).await;
    let block = request_block(true);
    let mut out = Vec::new();
    for i in 0..1000u32 {
        // POST without END_STREAM: the echo keeps each stream open.
        out.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &block));
    }
    let _ = w.write_all(&out).await;
    let seen = reader.await.unwrap();
    let refused = seen.resets.get(&REFUSED_STREAM).copied().unwrap_or(0);
    assert!(refused > 0 || seen.goaway.is_some(), "streams past the limit are refused: {seen:?}");
    assert!(seen.responses <= 100, "at most 100 streams open at once: {seen:?}");
}

/// Row 7 (HTTP/1.1): 101 headers; 61 KiB of headers → 431.
#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let m = gateway(Default::default()).await;
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "1".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(raw_http1(m.addr, &many).await, 431);
    let big = "a".repeat(61 * 1024);
    assert_eq!(raw_http1(m.addr, &[("x-big", big.as_str())]).await, 431);
    // Under the limits the same request is served.
    assert_eq!(raw_http1(m.addr, &many[..50]).await, 200);
}

/// Row 7 (HTTP/2): 101 headers → 431; 61 KiB of headers → refused
/// (431, a reset or GOAWAY), never served.
#[tokio::test]
async fn too_many_or_too_large_headers_over_http2() {
    let m = gateway(Default::default()).await;
    let (reader, mut w) = h2_conn(m.addr).await;
    let mut block = request_block(false);
    for i in 0..101 {
        block.extend(literal(&format!("x-h{i}"), b"1"));
    }
    w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)).await.unwrap();
    let mut block = request_block(false);
    block.extend(literal("x-big", &[b'a'; 15000]));
    let mut out = frame(HEADERS, 0, 3, &block);
    for i in 0..3 {
        let end = if i == 2 { END_HEADERS | END_STREAM } else { 0 };
        out.extend(frame(CONTINUATION, end, 3, &literal(&format!("x-big{i}"), &[b'a'; 15000])));
    }
    let _ = w.write_all(&out).await;
    let seen = reader.await.unwrap();
    let served = requests_served(&http_get(m.gateway.admin_addr, "/metrics").await.1);
    assert_eq!(served, 0, "neither request reached the service: {seen:?}");
    let metrics = http_get(m.gateway.admin_addr, "/metrics").await.1;
    assert!(
        metrics.contains("redfire_sidecar_gateway_requests_total{route=\"none\",class=\"4xx\"} 1"),
        "101 headers answered 431 by the gateway: {metrics}"
    );
}

/// One HTTP/1.1 GET /echo/x with `headers`, written by hand: the status.
async fn raw_http1(addr: SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = String::from("GET /echo/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Max connections: beyond the limit a connection is closed at once (not
/// queued); once one closes, a new one is served.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_accept() {
    let m = gateway(SidecarSettings { gateway_max_connections: Some("2".into()), ..Default::default() }).await;
    let a = TcpStream::connect(m.addr).await.unwrap();
    let b = TcpStream::connect(m.addr).await.unwrap();
    let ok = support::eventually(Duration::from_secs(5), || async {
        http_get(m.gateway.admin_addr, "/metrics").await.1.contains("redfire_sidecar_gateway_connections 2")
    })
    .await;
    assert!(ok, "both connections are held");
    let mut c = TcpStream::connect(m.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("closed, not queued");
    assert!(matches!(n, Ok(0) | Err(_)), "the third connection is closed");
    drop((a, b));
    let served = support::eventually(Duration::from_secs(5), || async {
        http_get(m.gateway.admin_addr, "/metrics").await.1.contains("redfire_sidecar_gateway_connections 0")
    })
    .await;
    assert!(served);
    assert_eq!(raw_http1(m.addr, &[]).await, 200);
    let metrics = http_get(m.gateway.admin_addr, "/metrics").await.1;
    assert!(
        metrics.contains("redfire_sidecar_gateway_connections_refused_total{reason=\"max_connections\"} 1"),
        "{metrics}"
    );
}

/// Row 5 (slowloris) with a short header-read timeout: a head that never
/// completes gets the connection closed.
#[tokio::test]
async fn slow_request_head_is_cut_at_the_header_read_timeout() {
    let m = gateway(SidecarSettings { gateway_header_read_timeout: Some("300ms".into()), ..Default::default() }).await;
    let mut s = TcpStream::connect(m.addr).await.unwrap();
    s.write_all(b"GET /echo/x HTTP/1.1\r\nHost: api.test\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the server closes the connection");
}

/// Row 6's cut-off: a keep-alive connection with no bytes either way for
/// the idle timeout is closed (gracefully, after its last answer).
#[tokio::test]
async fn idle_connection_is_closed_at_the_idle_timeout() {
    // The header-read timeout (which hyper also applies while waiting for the
    // next request) is far longer than the wait below: only the idle cut can close it.
    let m = gateway(SidecarSettings {
        gateway_idle_timeout: Some("300ms".into()),
        gateway_header_read_timeout: Some("60s".into()),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(m.addr).await.unwrap();
    s.write_all(b"GET /echo/x HTTP/1.1\r\nHost: api.test\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the idle keep-alive connection is closed by the gateway");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "after its request was answered");
}
