//! App health checks: the sidecar asks its app, every `app_health_interval`
//! (5 s by default), whether it can take traffic — a `grpc.health.v1.Health/Check`
//! call or an HTTP `GET` of a path that must answer 2xx, each bounded by
//! `app_health_timeout`. Consecutive results move the state: 3 failures in a
//! row make the app NOT_SERVING, 1 success makes it SERVING again (both
//! configurable). Until the first check succeeds the app counts as NOT_SERVING.
//!
//! The state is published on a `watch` channel: registration reports it to
//! control through the lease's KeepAlive stream (so other sidecars' discovery
//! drops the instance), and the admin port's `/ready` answers 503 while it
//! is NOT_SERVING. With no check configured the app always counts as SERVING.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::sidecar::inbound::AppProtocol;

/// Largest health response body read (the rest is not waited for).
const MAX_BODY: usize = 64 * 1024;

/// What to ask the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `grpc.health.v1.Health/Check` for `service` ("" = the whole server);
    /// healthy when the answer is SERVING.
    Grpc {
        /// The `service` field of the request.
        service: String,
    },
    /// `GET path`; healthy on any 2xx.
    Http {
        /// Absolute path, e.g. `/healthz`.
        path: String,
    },
}

/// App health checking settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What to ask; `None`: no checks, the app always counts as serving.
    pub kind: Option<CheckKind>,
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// A check that takes longer failed.
    pub timeout: Duration,
    /// Consecutive failures that make a serving app NOT_SERVING.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make a NOT_SERVING app SERVING.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 1,
        }
    }
}

/// The app's health as the checks last decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppHealth {
    /// May take traffic.
    Serving,
    /// Must not take traffic (failing, or not checked successfully yet).
    NotServing,
}

/// The threshold state machine, apart from any I/O.
#[derive(Debug)]
pub struct Thresholds {
    state: AppHealth,
    /// Consecutive results that disagree with `state`.
    streak: u32,
    unhealthy: u32,
    healthy: u32,
}

impl Thresholds {
    /// Starts NOT_SERVING (nothing proved the app healthy yet).
    pub fn new(config: &HealthCheckConfig) -> Self {
        Thresholds {
            state: AppHealth::NotServing,
            streak: 0,
            unhealthy: config.unhealthy_threshold.max(1),
            healthy: config.healthy_threshold.max(1),
        }
    }

    /// Records one check's result; the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<AppHealth> {
        let (agrees, needed, next) = match self.state {
            AppHealth::Serving => (ok, self.unhealthy, AppHealth::NotServing),
            AppHealth::NotServing => (!ok, self.healthy, AppHealth::Serving),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.state = next;
        Some(next)
    }

    /// The current state.
    pub fn state(&self) -> AppHealth {
        self.state
    }
}

/// Something that can check the app once.
#[derive(Debug)]
enum Checker {
    Grpc { client: HealthClient<Channel>, service: String },
    Http { client: Client<HttpConnector, Empty<Bytes>>, uri: Uri },
}

impl Checker {
    fn new(kind: &CheckKind, app: SocketAddr, protocol: AppProtocol, timeout: Duration) -> Result<Self, String> {
        match kind {
            CheckKind::Grpc { service } => {
                let channel = GrpcEndpoint::from_shared(format!("http://{app}"))
                    .map_err(|e| format!("app_health_check: {e}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok(Checker::Grpc { client: HealthClient::new(channel), service: service.clone() })
            }
            CheckKind::Http { path } => {
                let uri: Uri =
                    format!("http://{app}{path}").parse().map_err(|e| format!("app_health_check: {path:?}: {e}"))?;
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(timeout));
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new())
                    .http2_only(protocol == AppProtocol::H2c)
                    .pool_max_idle_per_host(1)
                    .build(connector);
                Ok(Checker::Http { client, uri })
            }
        }
    }

    /// One check: `Ok` when healthy, else why not.
    async fn check(&self, timeout: Duration) -> Result<(), String> {
        let once = async {
            match self {
                Checker::Grpc { client, service } => {
                    let req = HealthCheckRequest { service: service.clone() };
                    let resp =
                        client.clone().check(req).await.map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
                    match resp.into_inner().status() {
                        ServingStatus::Serving => Ok(()),
                        other => Err(format!("reports {}", other.as_str_name())),
                    }
                }
                Checker::Http { client, uri } => {
                    let req = Request::get(uri.clone()).body(Empty::new()).map_err(|e| e.to_string())?;
                    let resp = client.request(req).await.map_err(|e| format!("GET {}: {e}", uri.path()))?;
                    let status = resp.status();
                    // Read the (bounded) body so the connection can be reused.
                    let _ = Limited::new(resp.into_body(), MAX_BODY).collect().await;
                    if status.is_success() { Ok(()) } else { Err(format!("GET {} answered {status}", uri.path())) }
                }
            }
        };
        tokio::time::timeout(timeout, once).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

/// Starts checking the app at `app` as `config` says. The receiver holds
/// the current [`AppHealth`]; with no check configured it is always SERVING
/// and no task runs.
pub fn spawn(
    config: &HealthCheckConfig,
    app: SocketAddr,
    protocol: AppProtocol,
) -> Result<(watch::Receiver<AppHealth>, Option<tokio::task::JoinHandle<()>>), String> {
    let Some(kind) = &config.kind else {
        let (_tx, rx) = watch::channel(AppHealth::Serving);
        // The sender is dropped: the value never changes.
        return Ok((rx, None));
    };
    let checker = Checker::new(kind, app, protocol, config.timeout)?;
    let (tx, rx) = watch::channel(AppHealth::NotServing);
    let config = config.clone();
    let task = tokio::spawn(async move {
        let mut thresholds = Thresholds::new(&config);
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = checker.check(config.timeout).await;
            if let Err(why) = &result {
                tracing::debug!(%why, "app health check failed");
            }
            if let Some(state) = thresholds.observe(result.is_ok()) {
                match &result {
                    Ok(()) => tracing::info!("app health: SERVING"),
                    Err(why) => tracing::warn!(%why, "app health: NOT_SERVING"),
                }
                tx.send_replace(state);
            }
        }
    });
    Ok((rx, Some(task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(unhealthy: u32, healthy: u32) -> HealthCheckConfig {
        HealthCheckConfig { unhealthy_threshold: unhealthy, healthy_threshold: healthy, ..Default::default() }
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut t = Thresholds::new(&config(3, 2));
        assert_eq!(t.state(), AppHealth::NotServing, "not serving until proved healthy");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None, "a failure breaks the success streak");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(AppHealth::Serving));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success breaks the failure streak");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(AppHealth::NotServing));
        assert_eq!(t.observe(false), None, "reported once");
    }

    #[test]
    fn default_is_three_failures_out_and_one_success_back() {
        let c = HealthCheckConfig::default();
        assert_eq!((c.interval, c.unhealthy_threshold, c.healthy_threshold), (Duration::from_secs(5), 3, 1));
        let mut t = Thresholds::new(&c);
        assert_eq!(t.observe(true), Some(AppHealth::Serving), "one success");
        assert_eq!((t.observe(false), t.observe(false)), (None, None));
        assert_eq!(t.observe(false), Some(AppHealth::NotServing), "the third failure");
        assert_eq!(t.observe(true), Some(AppHealth::Serving));
    }

    /// A real `grpc.health.v1` server (tonic-health) on a free port.
    async fn grpc_health_server() -> (SocketAddr, tonic_health::server::HealthReporter) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        (addr, reporter)
    }

    #[tokio::test]
    async fn grpc_check_follows_the_apps_health_service() {
        let (addr, reporter) = grpc_health_server().await;
        let timeout = Duration::from_secs(2);
        let check = |service: &str| {
            Checker::new(&CheckKind::Grpc { service: service.into() }, addr, AppProtocol::H2c, timeout).unwrap()
        };
        assert_eq!(check("").check(timeout).await, Ok(()), "the server as a whole serves");
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let e = check("").check(timeout).await.unwrap_err();
        assert!(e.contains("NOT_SERVING"), "{e}");
        reporter.set_service_status("orders", tonic_health::ServingStatus::Serving).await;
        assert_eq!(check("orders").check(timeout).await, Ok(()));
        let e = check("unknown").check(timeout).await.unwrap_err();
        assert!(e.contains("NotFound"), "{e}");
    }

    #[tokio::test]
    async fn a_check_of_an_app_that_is_gone_fails() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let timeout = Duration::from_millis(500);
        for kind in [CheckKind::Grpc { service: String::new() }, CheckKind::Http { path: "/healthz".into() }] {
            let e = Checker::new(&kind, addr, AppProtocol::Http1, timeout).unwrap().check(timeout).await;
            assert!(e.is_err(), "{kind:?}");
        }
    }
}
