//! Gateway mode (`redfire-sidecar --mode gateway`): the mesh's external
//! ingress. Clients speak HTTP/1.1, HTTP/2 (h2c or TLS), gRPC, gRPC-Web or
//! WebSocket (pass-through) to one port; a route table picks the service;
//! the request then takes the same outbound path as any sidecar's (the
//! gateway is a mesh client with its own workload identity).
//!
//! Flow: [`listener`] (accept, limits, TLS) → [`forward::Gateway::handle`]
//! (route, rewrite, forwarding headers, [`grpc_web`], [`transcode`] for
//! HTTP/JSON on `transcode = true` routes, [`cors`]) →
//! `outbound::proxy::Outbound::handle_with` → peer sidecar over mTLS.
//! Routes ([`Routes`]) come from the `[[route]]` tables of the gateway's
//! policy document on control's policy stream, or from a local routes file
//! ([`routes_file`]); either way a whole [`route::RouteTable`] is swapped
//! in on change.
//! A WebSocket upgrade on the hub path (`/ws`) is served by the gateway
//! itself instead: [`hub`] (topics of control's event bus).

pub mod cors;
pub mod forward;
pub mod grpc_web;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod respond;
pub mod tls;
pub mod transcode;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::mesh::policy::route::{self, RouteTable};
use crate::mesh::policy::routes_file;
use crate::sidecar::gateway::metrics::Reloads;
use crate::sidecar::policy::Policy;

/// Where the gateway's routes come from.
#[derive(Clone, Debug)]
pub enum Routes {
    /// A routes file (`--routes`), reloaded when it changes.
    File(Arc<ArcSwap<RouteTable>>),
    /// The `[[route]]` tables of the gateway's own policy document, from
    /// control (hot-reloaded with the policy).
    Policy(Arc<Policy>),
}

impl Routes {
    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        match self {
            Routes::File(t) => t.load_full(),
            Routes::Policy(p) => p.current().routes.clone(),
        }
    }

    /// The table in force, once there is one: from control, a request
    /// arriving before the first snapshot waits for it (bounded).
    pub async fn synced(&self) -> Arc<RouteTable> {
        if let Routes::Policy(p) = self {
            p.wait_synced().await;
        }
        self.current()
    }
}

/// How often the routes file's modification time is checked.
pub const ROUTES_POLL: Duration = Duration::from_secs(1);

/// Loads the routes file now (an error fails the start) and reloads it on
/// change until the returned task is aborted. A bad edit is logged with its
/// file, line and field, and the table in force stays.
pub fn watch_routes(
    path: PathBuf,
    reloads: Reloads,
) -> Result<(Arc<ArcSwap<RouteTable>>, tokio::task::JoinHandle<()>), String> {
    watch_files("routes", vec![path], reloads, |paths, version| {
        routes_file::load(&paths[0], version).map_err(|e| e.to_string())
    })
}

/// Loads `what` from `paths` with `load(paths, version)` now (an error
/// fails the start), then polls the files' modification times every
/// [`ROUTES_POLL`] and swaps in a new load (version + 1) when one changed,
/// until the returned task is aborted. A load that fails is logged and the
/// value in force stays; both outcomes are counted in `reloads`
/// (`gateway_config_reloads{what, result}`).
pub fn watch_files<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    reloads: Reloads,
    load: F,
) -> Result<(Arc<ArcSwap<T>>, tokio::task::JoinHandle<()>), String>
where
    T: Send + Sync + 'static,
    F: Fn(&[PathBuf], u64) -> Result<T, String> + Send + 'static,
{
    let mtimes = |ps: &[PathBuf]| -> Vec<Option<SystemTime>> {
        ps.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    };
    let mut seen = mtimes(&paths);
    let mut version = 1;
    let value = Arc::new(ArcSwap::from_pointee(load(&paths, version)?));
    let task = tokio::spawn({
        let value = value.clone();
        async move {
            loop {
                tokio::time::sleep(ROUTES_POLL).await;
                let now = mtimes(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                match load(&paths, version + 1) {
                    Ok(t) => {
                        version += 1;
                        tracing::info!(version, "gateway {what} reloaded");
                        value.store(Arc::new(t));
                        reloads.applied.inc();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "gateway {what} not reloaded; keeping the version in force");
                        reloads.rejected.inc();
                    }
                }
            }
        }
    });
    Ok((value, task))
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
                "retry_attempts": r.retry_attempts,
                "transcode": r.transcode,
                "request_headers": edits(&r.request_headers),
                "response_headers": edits(&r.response_headers),
            })
        })
        .collect();
    serde_json::json!({ "version": t.version, "source": t.source, "routes": routes })
}
