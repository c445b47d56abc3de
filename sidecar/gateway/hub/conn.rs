//! One hub connection after the handshake: a single task that reads client
//! messages, writes what its bounded queue holds (events from the fan-out,
//! acks and errors), pings, and closes:
//! - 1009 when a message or frame is over the limit (tungstenite refuses
//!   it; the close frame is sent here, then the rest is drained briefly so
//!   the client reads it instead of a reset);
//! - 1008 "slow consumer" when the fan-out found the queue full, even while
//!   a write is blocked on a client that stopped reading;
//! - 1001 when nothing (no pong, no message) came back for a ping interval
//!   plus the pong timeout, and when the gateway drains;
//! - 1008 "token expired" when the handshake's token expires.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::bus::{Outbox, Slow};
use super::protocol::{self, Action, ClientMessage};
use super::{Hub, Session};

/// Topics one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Why the loop ended.
enum End {
    /// The client closed or went away.
    Client,
    /// The hub closes with this code and reason (metric label).
    Close(CloseCode, &'static str),
    /// Message over the limit.
    TooBig,
}

/// Serves one connection until it ends.
pub async fn run(hub: Arc<Hub>, mut ws: Ws, session: Session) {
    let (tx, mut rx) = mpsc::channel::<Message>(hub.config.queue);
    let slow = Arc::new(Slow::default());
    let outbox = Outbox { tx, slow: slow.clone() };
    let mut topics: HashSet<String> = HashSet::new();
    let interval = hub.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut heard = Instant::now();
    let mut draining = hub.drain.subscribe();
    // Made once, not per loop turn: a fan-out wakes every connection.
    let slow_now = slow.raised();
    let drain_now = started(&mut draining);
    let expired = expiry(session.expires);
    tokio::pin!(slow_now, drain_now, expired);
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut slow_now => break End::Close(CloseCode::Policy, "slow_consumer"),
            _ = &mut drain_now => break End::Close(CloseCode::Away, "shutdown"),
            _ = &mut expired => break End::Close(CloseCode::Policy, "token_expired"),
            m = ws.next() => match m {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break End::Client,
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => break End::TooBig,
                Some(Err(e)) => {
                    tracing::debug!(user = %session.sub, error = %e, "hub connection read failed");
                    break End::Client;
                }
                Some(Ok(msg)) => {
                    heard = Instant::now();
                    match msg {
                        Message::Text(t) => {
                            let queued = handle(&hub, &session, &t, &outbox, &mut topics).await;
                            if !queued {
                                break End::Close(CloseCode::Policy, "slow_consumer");
                            }
                        }
                        Message::Binary(_) => {
                            hub.metrics.message_in("invalid");
                            let e = protocol::error("bad_message", "send JSON text messages", None, None);
                            if !queue(&hub, &outbox, e, "error") {
                                break End::Close(CloseCode::Policy, "slow_consumer");
                            }
                        }
                        // Pings are answered by tungstenite; a close is
                        // answered too, and the stream then ends.
                        _ => {}
                    }
                }
            },
            out = rx.recv() => {
                let Some(out) = out else { break End::Client };
                tokio::select! {
                    biased;
                    _ = &mut slow_now => break End::Close(CloseCode::Policy, "slow_consumer"),
                    _ = &mut drain_now => break End::Close(CloseCode::Away, "shutdown"),
                    r = ws.send(out) => if r.is_err() { break End::Client },
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() >= interval + hub.config.pong_timeout {
                    break End::Close(CloseCode::Away, "pong_timeout");
                }
                let sent = tokio::select! {
                    biased;
                    _ = &mut slow_now => break End::Close(CloseCode::Policy, "slow_consumer"),
                    r = ws.send(Message::Ping(Default::default())) => r,
                };
                if sent.is_err() {
                    break End::Client;
                }
            }
        }
    };
    for t in &topics {
        hub.bus.unsubscribe(t, session.id);
    }
    drop(rx);
    match end {
        End::Client => {}
        End::TooBig => {
            hub.metrics.close("message_too_big");
            let max = hub.config.max_message;
            close(&mut ws, CloseCode::Size, format!("message over {max} bytes")).await;
            // Read what the client still sends (the rest of the big message,
            // its close reply) for a moment, so closing does not reset the
            // connection before the close frame is read.
            let mut buf = vec![0u8; 8192];
            let deadline = Instant::now() + CLOSE_WAIT;
            let mut drained = 0usize;
            while drained < 16 * max {
                match tokio::time::timeout_at(deadline, ws.get_mut().read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => drained += n,
                    _ => break,
                }
            }
        }
        End::Close(code, reason) => {
            if reason == "slow_consumer" {
                hub.metrics.slow_consumer_closes.inc();
            } else {
                hub.metrics.close(reason);
            }
            close(&mut ws, code, reason.replace('_', " ")).await;
        }
    }
}

/// Resolves at the token's expiry (never without one).
async fn expiry(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once draining has started (the guard is not held across awaits).
async fn started(draining: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

async fn close(ws: &mut Ws, code: CloseCode, reason: String) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await;
}

/// Queues a reply; false when the queue is full (the connection is slow).
fn queue(hub: &Hub, outbox: &Outbox, msg: Message, kind: &'static str) -> bool {
    match outbox.tx.try_send(msg) {
        Ok(()) => {
            hub.metrics.message_out(kind, 1);
            true
        }
        Err(_) => false,
    }
}

/// Handles one client text message; false when the connection must close.
async fn handle(hub: &Hub, s: &Session, text: &str, outbox: &Outbox, topics: &mut HashSet<String>) -> bool {
    let msg = match protocol::parse(text) {
        Ok(m) => m,
        Err(e) => {
            hub.metrics.message_in("invalid");
            return queue(hub, outbox, protocol::error("bad_message", &e, None, None), "error");
        }
    };
    hub.metrics.message_in(msg.kind());
    let id = msg.id();
    let topic = match msg.topic() {
        Ok(t) => t.to_string(),
        Err(e) => return queue(hub, outbox, protocol::error("bad_topic", &e, None, id), "error"),
    };
    let err = |code: &str, m: &str| (protocol::error(code, m, Some(&topic), id.clone()), "error");
    let ack = |op: &str, position: Option<&str>| (protocol::ack(op, &topic, position, id.clone()), "ack");
    let policy = hub.policy.current();
    let (reply, kind) = match msg {
        ClientMessage::Subscribe { .. } => {
            if topics.contains(&topic) {
                ack("subscribe", None)
            } else if !protocol::allowed(policy.topics(), &topic, Action::Subscribe, &s.roles) {
                err("forbidden", "your roles do not allow subscribing to this topic")
            } else if topics.len() >= MAX_SUBSCRIPTIONS {
                err("limit", &format!("at most {MAX_SUBSCRIPTIONS} topics per connection"))
            } else {
                match hub.bus.subscribe(&topic, s.id, outbox.clone()).await {
                    Ok(()) => {
                        topics.insert(topic.clone());
                        ack("subscribe", None)
                    }
                    Err(e) => err("unavailable", &e),
                }
            }
        }
        ClientMessage::Unsubscribe { .. } => {
            if topics.remove(&topic) {
                hub.bus.unsubscribe(&topic, s.id);
            }
            ack("unsubscribe", None)
        }
        ClientMessage::Publish { data, event_type, .. } => {
            let ty = event_type.filter(|t| !t.is_empty() && t.len() <= 200).unwrap_or_else(|| "ws.publish".into());
            if !protocol::allowed(policy.topics(), &topic, Action::Publish, &s.roles) {
                err("forbidden", "your roles do not allow publishing to this topic")
            } else {
                let body = serde_json::to_vec(&data).unwrap_or_default();
                match hub.bus.publish(&topic, &ty, body, &s.sub).await {
                    Ok(position) => ack("publish", Some(&position)),
                    Err(e) => err("publish_failed", &e),
                }
            }
        }
    };
    queue(hub, outbox, reply, kind)
}
