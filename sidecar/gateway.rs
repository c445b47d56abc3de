//! Gateway mode (`redfire-sidecar --mode gateway`): the mesh's external
//! ingress. Clients speak HTTP/1.1, HTTP/2 (h2c or TLS), gRPC, gRPC-Web or
//! WebSocket (pass-through) to one port; a route table picks the service;
//! the request then takes the same outbound path as any sidecar's (the
//! gateway is a mesh client with its own workload identity).
//!
//! Flow: [`listener`] (accept, limits, TLS) → [`forward::Gateway::handle`]
//! (route, rewrite, forwarding headers, [`grpc_web`], [`cors`]) →
//! `outbound::proxy::Outbound::handle_with` → peer sidecar over mTLS.
//! Routes come from [`routes_file`] into [`route::RouteTable`], swapped whole
//! on change. A WebSocket upgrade on the hub path (`/ws`) is served by the
//! gateway itself instead: [`hub`] (topics of control's event bus).

pub mod cors;
pub mod forward;
pub mod grpc_web;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod route;
pub mod routes_file;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::sidecar::gateway::route::RouteTable;

/// How often the routes file's modification time is checked.
pub const ROUTES_POLL: Duration = Duration::from_secs(1);

/// Loads the routes file now (an error fails the start) and reloads it on
/// change until the returned task is aborted. A bad edit is logged with its
/// file, line and field, and the table in force stays.
pub fn watch_routes(path: PathBuf) -> Result<(Arc<ArcSwap<RouteTable>>, tokio::task::JoinHandle<()>), String> {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&path);
    let table = Arc::new(ArcSwap::from_pointee(routes_file::load(&path, 1).map_err(|e| e.to_string())?));
    let task = tokio::spawn({
        let table = table.clone();
        async move {
            loop {
                tokio::time::sleep(ROUTES_POLL).await;
                let now = mtime(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let version = table.load().version + 1;
                match routes_file::load(&path, version) {
                    Ok(t) => {
                        tracing::info!(version, routes = t.routes.len(), "gateway routes reloaded");
                        table.store(Arc::new(t));
                    }
                    Err(e) => tracing::error!(error = %e, "gateway routes not reloaded; keeping the table in force"),
                }
            }
        }
    });
    Ok((table, task))
}

/// The route table as JSON, for `/admin/routes`.
pub fn routes_json(t: &RouteTable) -> serde_json::Value {
    use route::{PathMatch, Rewrite, Segment};
    let routes: Vec<_> = t
        .routes
        .iter()
        .map(|r| {
            let path = match &r.path {
                PathMatch::Prefix(p) => serde_json::json!({ "prefix": p }),
                PathMatch::Exact(p) => serde_json::json!({ "exact": p }),
                PathMatch::Pattern(segs) => {
                    let p: String = segs
                        .iter()
                        .map(|s| match s {
                            Segment::Literal(l) => format!("/{l}"),
                            Segment::Param(n) => format!("/{{{n}}}"),
                        })
                        .collect();
                    serde_json::json!({ "pattern": p })
                }
            };
            let rewrite = match &r.rewrite {
                Rewrite::None => None,
                Rewrite::Prefix(p) | Rewrite::Template(p) => Some(p.clone()),
            };
            let edits = |e: &route::HeaderEdits| {
                serde_json::json!({
                    "set": e.set.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).to_string())).collect::<std::collections::BTreeMap<_, _>>(),
                    "remove": e.remove.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                })
            };
            serde_json::json!({
                "name": r.name,
                "host": r.host,
                "path": path,
                "methods": r.methods.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                "headers": r.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).to_string())).collect::<std::collections::BTreeMap<_, _>>(),
                "rewrite": rewrite,
                "service": r.service,
                "subset": r.subset.as_ref().map(|(k, v)| format!("{k}={v}")),
                "timeout": r.timeout.map(|d| format!("{d:?}")),
                "retry_attempts": r.retry.map(|p| p.max_attempts),
                "request_headers": edits(&r.request_headers),
                "response_headers": edits(&r.response_headers),
            })
        })
        .collect();
    serde_json::json!({ "version": t.version, "source": t.source, "routes": routes })
}
