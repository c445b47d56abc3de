//! One Watch stream: a task per watcher that turns view broadcasts into
//! `WatchResponse`s.
//!
//! Memory per watcher is bounded: the outgoing channel holds a few messages,
//! and a watcher that falls more than the broadcast capacity behind (a slow
//! client) resyncs from the view's history, or gets a reset snapshot when that
//! is gone too. A slow watcher never slows the store or other watchers.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::view::{Broadcast, Change, DeleteReason, Event, Snapshot, Start, View};
use crate::proto::registry::v1 as pb;

/// Messages buffered per watcher before the task waits for the client.
const OUT_BUFFER: usize = 64;

/// What a watcher wants.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Only these services; empty means all.
    pub services: HashSet<String>,
    /// Resume point, if any.
    pub resume: Option<(String, u64)>,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// Starts a watcher; the receiver is the gRPC response stream. `shutdown`
/// resolving ends the stream with UNAVAILABLE so clients move elsewhere.
pub fn spawn(
    view: Arc<View>,
    spec: WatchSpec,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<mpsc::Receiver<Result<pb::WatchResponse, Status>>, Status> {
    let resume = spec.resume.as_ref().map(|(e, r)| (e.as_str(), *r));
    let (start, rx) = view.subscribe(resume, &|svc| wanted(&spec, svc)).map_err(Status::invalid_argument)?;
    let (tx, out) = mpsc::channel(OUT_BUFFER);
    tokio::spawn(async move {
        tokio::select! {
            _ = run(&view, &spec, start, rx, &tx) => {}
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                let _ = tx.try_send(Err(Status::unavailable("control is shutting down; reconnect to another replica")));
            }
            _ = tx.closed() => {}
        }
    });
    Ok(out)
}

async fn run(view: &View, spec: &WatchSpec, start: Start, mut rx: broadcast::Receiver<Broadcast>, tx: &Out) {
    let (mut epoch, mut last) = match &spec.resume {
        Some((e, r)) => (e.clone(), *r),
        None => (String::new(), 0),
    };
    if send_start(spec, start, tx, &mut epoch, &mut last).await.is_err() {
        return;
    }
    loop {
        let next = match rx.recv().await {
            Ok(Broadcast::Change(ev)) => {
                if ev.revision <= last {
                    continue;
                }
                last = ev.revision;
                send_event(spec, &epoch, &ev, tx).await
            }
            Ok(Broadcast::Reset) => {
                let (start, fresh) = match view.subscribe(None, &|svc| wanted(spec, svc)) {
                    Ok((Start::Snapshot(s, _), fresh)) => (Start::Snapshot(s, true), fresh),
                    _ => return,
                };
                rx = fresh;
                send_start(spec, start, tx, &mut epoch, &mut last).await
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too slow: pick up from the history where this watcher is.
                let Ok((start, fresh)) = view.subscribe(Some((&epoch, last)), &|svc| wanted(spec, svc)) else { return };
                rx = fresh;
                send_start(spec, start, tx, &mut epoch, &mut last).await
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if next.is_err() {
            return;
        }
    }
}

async fn send_start(spec: &WatchSpec, start: Start, tx: &Out, epoch: &mut String, last: &mut u64) -> Result<(), ()> {
    match start {
        Start::Snapshot(snap, reset) => {
            *epoch = snap.epoch.clone();
            *last = snap.revision;
            tx.send(Ok(snapshot_message(snap, reset))).await.map_err(drop)
        }
        Start::Resume(events) => {
            for ev in events {
                *last = ev.revision;
                send_event(spec, epoch, &ev, tx).await?;
            }
            Ok(())
        }
    }
}

fn wanted(spec: &WatchSpec, service: &str) -> bool {
    spec.services.is_empty() || spec.services.contains(service)
}

async fn send_event(spec: &WatchSpec, epoch: &str, ev: &Event, tx: &Out) -> Result<(), ()> {
    let inst = ev.change.instance();
    if !wanted(spec, &inst.service) {
        return Ok(());
    }
    let (kind, reason) = match &ev.change {
        Change::Put(_) => (pb::ChangeType::Put, ""),
        Change::Delete(_, r) => (pb::ChangeType::Delete, DeleteReason::as_str(*r)),
    };
    let msg = pb::WatchResponse {
        epoch: epoch.to_string(),
        revision: ev.revision,
        event: Some(pb::watch_response::Event::Change(pb::Change {
            r#type: kind as i32,
            instance: Some(inst.to_proto()),
            reason: reason.to_string(),
        })),
    };
    tx.send(Ok(msg)).await.map_err(drop)
}

fn snapshot_message(snap: Snapshot, reset: bool) -> pb::WatchResponse {
    let instances = snap.instances.iter().map(|i| i.to_proto()).collect();
    pb::WatchResponse {
        epoch: snap.epoch,
        revision: snap.revision,
        event: Some(pb::watch_response::Event::Snapshot(pb::Snapshot { instances, reset })),
    }
}
