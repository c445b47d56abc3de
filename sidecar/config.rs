//! Every setting of `redfire-sidecar`, declared once: a CLI flag, a
//! `REDFIRE_*` environment variable and a key of the TOML file named by
//! `--config`. Precedence: flag, environment, file, default. An invalid value
//! is one line naming the key; `main` exits 2.

mod gateway;
mod values;

use self::gateway::gateway_config;
pub use self::gateway::{GatewayConfig, HubConfig};
use self::values::{header_name, policy, positive, threshold};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use http::HeaderName;
use serde::Deserialize;

use crate::mesh::process::settings::{
    ConfigError, addr, boolean, default_ca_dir, duration, err, log_settings, read_toml,
};
use crate::mesh::process::telemetry::LogFormat;
use crate::mesh::registry::validate_service_name;
use crate::sidecar::inbound::AppProtocol;
use crate::sidecar::inbound::app_health::{CheckKind, HealthCheckConfig};
use crate::sidecar::outbound::balance::{Balancing, Policy, ZonePreference};
use crate::sidecar::transport::control::ControlTarget;

/// Command line of `redfire-sidecar`.
#[derive(Debug, Parser)]
#[command(
    name = "redfire-sidecar",
    version,
    about = "RedFire Mesh sidecar: mTLS, discovery and balancing beside a service"
)]
pub struct Cli {
    /// TOML file with any of the settings below (same names, snake_case).
    #[arg(long, env = "REDFIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
}

/// Raw settings as given; `None` means "not given here".
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Control's gRPC address [default: https://127.0.0.1:15010]
    #[arg(long, env = "REDFIRE_CONTROL_ADDR")]
    pub control_addr: Option<String>,
    /// The mesh trust bundle (PEM) control's certificate must chain to, from control's trust_bundle_file or `redfire-control trust-bundle` [default: bundle.pem in the default CA directory of a control on this machine]
    #[arg(long, env = "REDFIRE_CONTROL_CA_FILE")]
    pub control_ca_file: Option<String>,
    /// Allow a plaintext http:// control_addr: for local experiments only, warned at start [default: false]
    #[arg(long, env = "REDFIRE_DEV_INSECURE_CONTROL", num_args = 0..=1, default_missing_value = "true")]
    pub dev_insecure_control: Option<String>,
    /// The service this sidecar stands beside (DNS-1123 label) [required]
    #[arg(long, env = "REDFIRE_SERVICE")]
    pub service: Option<String>,
    /// The service's namespace [default: default]
    #[arg(long, env = "REDFIRE_NAMESPACE")]
    pub namespace: Option<String>,
    /// SPIFFE trust domain of the mesh [default: redfire.local]
    #[arg(long, env = "REDFIRE_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Bootstrap token from `redfire-control token create` [required]
    #[arg(long, env = "REDFIRE_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Where the sidecar keeps its private key across restarts (PEM, created with mode 0600), so a restarted sidecar may bring its one-use bootstrap token back [default: none: a new key at every start]
    #[arg(long, env = "REDFIRE_IDENTITY_KEY_FILE")]
    pub identity_key_file: Option<String>,
    /// Instance id in the registry [default: <service>-<pid>]
    #[arg(long, env = "REDFIRE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Inbound mTLS listen address [default: 0.0.0.0:15006]
    #[arg(long, env = "REDFIRE_INBOUND_ADDR")]
    pub inbound_addr: Option<String>,
    /// Address other sidecars dial to reach this one [default: 127.0.0.1]
    #[arg(long, env = "REDFIRE_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// Shared outbound listener, routing by Host/:authority = service [default: 127.0.0.1:15001]
    #[arg(long, env = "REDFIRE_OUTBOUND_ADDR")]
    pub outbound_addr: Option<String>,
    /// One local listener per upstream: `orders=127.0.0.1:9001,users=127.0.0.1:9002` [default: none]
    #[arg(long, env = "REDFIRE_UPSTREAMS")]
    pub upstreams: Option<String>,
    /// Admin HTTP listen address (/health, /ready, /metrics, /admin/...) [default: 127.0.0.1:15000]
    #[arg(long, env = "REDFIRE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// The app's address [default: 127.0.0.1:8080]
    #[arg(long, env = "REDFIRE_APP_ADDR")]
    pub app_addr: Option<String>,
    /// What the app speaks: h2c (gRPC) or http1 [default: h2c]
    #[arg(long, env = "REDFIRE_APP_PROTOCOL")]
    pub app_protocol: Option<String>,
    /// Load balancing: round_robin, weighted_round_robin, least_request, peak_ewma, ring_hash, maglev [default: peak_ewma]
    #[arg(long, env = "REDFIRE_BALANCER")]
    pub balancer: Option<String>,
    /// Request header whose value ring_hash/maglev hash on [default: x-user-id]
    #[arg(long, env = "REDFIRE_HASH_HEADER")]
    pub hash_header: Option<String>,
    /// Per-service balancing: `orders=ring_hash:x-account-id,users=round_robin` [default: none]
    #[arg(long, env = "REDFIRE_SERVICE_BALANCERS")]
    pub service_balancers: Option<String>,
    /// This sidecar's zone: registered with the instance, and preferred when balancing [default: none]
    #[arg(long, env = "REDFIRE_ZONE")]
    pub zone: Option<String>,
    /// Share (0..=1) of the local zone's instances that must be up to stay in the zone [default: 0.5]
    #[arg(long, env = "REDFIRE_ZONE_MIN_HEALTHY")]
    pub zone_min_healthy: Option<String>,
    /// App health check: none, grpc, grpc:<service>, or http:<path> (e.g. http:/healthz) [default: none]
    #[arg(long, env = "REDFIRE_APP_HEALTH_CHECK")]
    pub app_health_check: Option<String>,
    /// Time between app health checks [default: 5s]
    #[arg(long, env = "REDFIRE_APP_HEALTH_INTERVAL")]
    pub app_health_interval: Option<String>,
    /// An app health check that takes longer fails [default: 1s]
    #[arg(long, env = "REDFIRE_APP_HEALTH_TIMEOUT")]
    pub app_health_timeout: Option<String>,
    /// Consecutive failed checks that make the app NOT_SERVING [default: 3]
    #[arg(long, env = "REDFIRE_APP_HEALTH_UNHEALTHY_THRESHOLD")]
    pub app_health_unhealthy_threshold: Option<String>,
    /// Consecutive good checks that make the app SERVING again [default: 1]
    #[arg(long, env = "REDFIRE_APP_HEALTH_HEALTHY_THRESHOLD")]
    pub app_health_healthy_threshold: Option<String>,
    /// Requests in flight per upstream service before fast failure [default: 1024]
    #[arg(long, env = "REDFIRE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<String>,
    /// Redis for policy rate limits with storage = "redis", shared by every proxy [default: none]
    #[arg(long, env = "REDFIRE_RATELIMIT_REDIS_URL")]
    pub ratelimit_redis_url: Option<String>,
    /// Key prefix of those rate limits in Redis [default: redfire]
    #[arg(long, env = "REDFIRE_RATELIMIT_REDIS_PREFIX")]
    pub ratelimit_redis_prefix: Option<String>,
    /// Consecutive failures that eject an endpoint from balancing [default: 5]
    #[arg(long, env = "REDFIRE_EJECTION_FAILURES")]
    pub ejection_failures: Option<String>,
    /// First ejection's length; the nth lasts n times this, at most 300 s [default: 30s]
    #[arg(long, env = "REDFIRE_EJECTION_TIME")]
    pub ejection_time: Option<String>,
    /// A response stream with no frame for this long is cut (streams have no total timeout) [default: 5m]
    #[arg(long, env = "REDFIRE_STREAM_IDLE_TIMEOUT")]
    pub stream_idle_timeout: Option<String>,
    /// How long in-flight requests may finish after SIGTERM [default: 10s]
    #[arg(long, env = "REDFIRE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Runtime worker threads; 1 runs everything on the main thread [default: one per CPU]
    #[arg(long, env = "REDFIRE_WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// DEVELOPMENT ONLY: plaintext HTTP/2 between sidecars, no mTLS, no peer identity.
    /// Both sides must agree; a warning is logged at start [default: false]
    #[arg(long, env = "REDFIRE_DEV_PLAINTEXT", num_args = 0..=1, default_missing_value = "true")]
    pub dev_plaintext: Option<String>,
    /// Instance metadata in the registry, `key=value,...` (routes select subsets on it, e.g. `version=2`) [default: none]
    #[arg(long, env = "REDFIRE_METADATA")]
    pub metadata: Option<String>,
    /// `sidecar` (beside an app) or `gateway` (external ingress, a mesh client with its own identity) [default: sidecar]
    #[arg(long, env = "REDFIRE_MODE")]
    pub mode: Option<String>,
    /// Gateway: ingress listen address (HTTP/1.1 + HTTP/2, h2c or TLS) [default: 0.0.0.0:8000]
    #[arg(long, env = "REDFIRE_GATEWAY_ADDR")]
    pub gateway_addr: Option<String>,
    /// Gateway: TOML routes file, reloaded when it changes [default: none: routes are the `[[route]]` tables of the gateway's policy from control]
    #[arg(long, env = "REDFIRE_ROUTES")]
    pub routes: Option<String>,
    /// Gateway: PEM certificate chain for TLS on the ingress, reloaded when it changes [default: none, h2c]
    #[arg(long, env = "REDFIRE_GATEWAY_TLS_CERT")]
    pub gateway_tls_cert: Option<String>,
    /// Gateway: PEM private key matching gateway_tls_cert [default: none]
    #[arg(long, env = "REDFIRE_GATEWAY_TLS_KEY")]
    pub gateway_tls_key: Option<String>,
    /// Gateway: open client connections; more are closed at accept [default: 10000]
    #[arg(long, env = "REDFIRE_GATEWAY_MAX_CONNECTIONS")]
    pub gateway_max_connections: Option<String>,
    /// Gateway: request headers per request; more get 431 (HTTP/1.1) or a reset (HTTP/2) [default: 100]
    #[arg(long, env = "REDFIRE_GATEWAY_MAX_HEADERS")]
    pub gateway_max_headers: Option<String>,
    /// Gateway: bytes of request headers (HTTP/2 header list size; HTTP/1.1 head) [default: 16384]
    #[arg(long, env = "REDFIRE_GATEWAY_MAX_HEADER_BYTES")]
    pub gateway_max_header_bytes: Option<String>,
    /// Gateway: concurrent HTTP/2 streams per client connection; more are refused [default: 100]
    #[arg(long, env = "REDFIRE_GATEWAY_MAX_CONCURRENT_STREAMS")]
    pub gateway_max_concurrent_streams: Option<String>,
    /// Gateway: time to receive a request head (and a TLS handshake) [default: 10s]
    #[arg(long, env = "REDFIRE_GATEWAY_HEADER_READ_TIMEOUT")]
    pub gateway_header_read_timeout: Option<String>,
    /// Gateway: a client connection with no bytes either way for this long is closed [default: 60s]
    #[arg(long, env = "REDFIRE_GATEWAY_IDLE_TIMEOUT")]
    pub gateway_idle_timeout: Option<String>,
    /// Gateway: proxies in front of the gateway whose X-Forwarded-For entries are trusted [default: 0]
    #[arg(long, env = "REDFIRE_GATEWAY_TRUSTED_HOPS")]
    pub gateway_trusted_hops: Option<String>,
    /// Gateway: browser origins allowed by CORS (gRPC-Web), comma-separated, or `*` [default: none]
    #[arg(long, env = "REDFIRE_GATEWAY_CORS_ORIGINS")]
    pub gateway_cors_origins: Option<String>,
    /// Gateway: binary FileDescriptorSet files (`protoc --include_imports --descriptor_set_out`), comma-separated,
    /// whose google.api.http bindings `transcode = true` routes serve as HTTP/JSON; reloaded when they change [default: none]
    #[arg(long, env = "REDFIRE_GATEWAY_DESCRIPTORS")]
    pub gateway_descriptors: Option<String>,
    /// Gateway: path of the WebSocket topic hub; empty turns the hub off [default: /ws]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_PATH")]
    pub gateway_ws_path: Option<String>,
    /// Gateway: browser origins allowed to open the hub, comma-separated, or `*` [default: the CORS origins if set, else any]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_ORIGINS")]
    pub gateway_ws_origins: Option<String>,
    /// Gateway: largest WebSocket message (and frame) a client may send; bigger closes with 1009 [default: 65536]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_MAX_MESSAGE")]
    pub gateway_ws_max_message: Option<String>,
    /// Gateway: messages queued per hub connection; a client that lets it fill is closed as a slow consumer [default: 256]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_QUEUE")]
    pub gateway_ws_queue: Option<String>,
    /// Gateway: time between pings on a hub connection [default: 20s]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_PING_INTERVAL")]
    pub gateway_ws_ping_interval: Option<String>,
    /// Gateway: a hub connection with no pong (nor any frame) this long after a ping is closed [default: 20s]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_PONG_TIMEOUT")]
    pub gateway_ws_pong_timeout: Option<String>,
    /// Gateway: hub connections per user (JWT `sub`); more get 429 at the handshake [default: 16]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_MAX_PER_USER")]
    pub gateway_ws_max_per_user: Option<String>,
    /// Gateway: this replica's name on the event bus (consumer group `gateway-hub.<name>`); keep it stable across restarts [default: the instance id]
    #[arg(long, env = "REDFIRE_GATEWAY_WS_REPLICA")]
    pub gateway_ws_replica: Option<String>,
    /// Log format: human or json [default: human]
    #[arg(long, env = "REDFIRE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter [default: info]
    #[arg(long, env = "REDFIRE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// How the sidecar runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Beside an app: inbound mTLS listener, outbound listeners, registration.
    Sidecar,
    /// External ingress: the gateway listener and the outbound path, no app.
    Gateway,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sidecar or gateway.
    pub mode: Mode,
    /// Gateway settings (gateway mode only).
    pub gateway: Option<GatewayConfig>,
    /// Extra instance metadata registered with the instance.
    pub metadata: Vec<(String, String)>,
    /// Control: its gRPC URL and the trust bundle its certificate must chain to.
    pub control: ControlTarget,
    /// Own service.
    pub service: String,
    /// Own namespace.
    pub namespace: String,
    /// Trust domain (peers' expected SPIFFE IDs are built in it).
    pub trust_domain: String,
    /// Bootstrap token.
    pub bootstrap_token: String,
    /// Where the private key is kept across restarts, if anywhere.
    pub identity_key_file: Option<PathBuf>,
    /// Registry instance id.
    pub instance_id: String,
    /// Inbound listen address.
    pub inbound_addr: SocketAddr,
    /// Advertised host.
    pub advertise_address: String,
    /// Shared outbound listener.
    pub outbound_addr: SocketAddr,
    /// Per-upstream listeners.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// App address.
    pub app_addr: SocketAddr,
    /// App protocol.
    pub app_protocol: AppProtocol,
    /// Balancing policy of services without their own.
    pub balancer: Policy,
    /// Hash-key header of services without their own.
    pub hash_header: HeaderName,
    /// Per-service balancing, overriding `balancer` and `hash_header`.
    pub service_balancers: BTreeMap<String, Balancing>,
    /// Local zone (empty: none, and no zone preference).
    pub zone: String,
    /// Zone preference threshold: see [`ZonePreference::min_healthy_percent`].
    pub zone_min_healthy_percent: u8,
    /// App health checks.
    pub app_health: HealthCheckConfig,
    /// Concurrency limit per upstream service.
    pub max_in_flight: usize,
    /// Drain grace period.
    pub shutdown_grace: Duration,
    /// Redis for shared rate limits.
    pub ratelimit_redis_url: Option<String>,
    /// Their key prefix.
    pub ratelimit_redis_prefix: String,
    /// Consecutive failures that eject an endpoint.
    pub ejection_failures: u32,
    /// First ejection's length.
    pub ejection_time: Duration,
    /// Idle timeout of response streams.
    pub stream_idle_timeout: Duration,
    /// Runtime worker threads (`None`: one per CPU).
    pub worker_threads: Option<usize>,
    /// Plaintext between sidecars (development only).
    pub dev_plaintext: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

impl Settings {
    /// `self` where given, else `other`.
    pub fn or(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(other.$f)),* } };
        }
        pick!(
            control_addr,
            control_ca_file,
            dev_insecure_control,
            service,
            namespace,
            trust_domain,
            bootstrap_token,
            identity_key_file,
            instance_id,
            inbound_addr,
            advertise_address,
            outbound_addr,
            upstreams,
            admin_addr,
            app_addr,
            app_protocol,
            balancer,
            hash_header,
            service_balancers,
            zone,
            zone_min_healthy,
            app_health_check,
            app_health_interval,
            app_health_timeout,
            app_health_unhealthy_threshold,
            app_health_healthy_threshold,
            max_in_flight,
            shutdown_grace,
            ratelimit_redis_url,
            ratelimit_redis_prefix,
            ejection_failures,
            ejection_time,
            stream_idle_timeout,
            worker_threads,
            dev_plaintext,
            metadata,
            mode,
            gateway_addr,
            routes,
            gateway_tls_cert,
            gateway_tls_key,
            gateway_max_connections,
            gateway_max_headers,
            gateway_max_header_bytes,
            gateway_max_concurrent_streams,
            gateway_header_read_timeout,
            gateway_idle_timeout,
            gateway_trusted_hops,
            gateway_cors_origins,
            gateway_descriptors,
            gateway_ws_path,
            gateway_ws_origins,
            gateway_ws_max_message,
            gateway_ws_queue,
            gateway_ws_ping_interval,
            gateway_ws_pong_timeout,
            gateway_ws_max_per_user,
            gateway_ws_replica,
            log_format,
            log_level
        )
    }
}

impl Config {
    /// Parses `argv` (flags and environment) and the config file, if named.
    pub fn load() -> Result<Config, ConfigError> {
        let cli = Cli::parse();
        let file = match &cli.config {
            Some(p) => read_toml(p)?,
            None => Settings::default(),
        };
        Config::from_settings(cli.settings.or(file))
    }

    /// Validates raw settings, filling defaults.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let control = control_target(&s)?;
        let mode = match s.mode.as_deref().unwrap_or("sidecar") {
            "sidecar" => Mode::Sidecar,
            "gateway" => Mode::Gateway,
            other => return Err(err("mode", format!("{other:?} is not one of sidecar, gateway"))),
        };
        let gateway = match mode {
            Mode::Gateway => Some(gateway_config(&s)?),
            Mode::Sidecar => None,
        };
        let service = s.service.ok_or_else(|| err("service", "missing: the service this sidecar stands beside"))?;
        validate_service_name(&service).map_err(|e| err("service", e.trim_start_matches("service: ")))?;
        let namespace = s.namespace.unwrap_or_else(|| "default".into());
        validate_service_name(&namespace).map_err(|e| err("namespace", e.trim_start_matches("service: ")))?;
        let bootstrap_token = s
            .bootstrap_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err("bootstrap_token", "missing: create one with `redfire-control token create`"))?;
        let mut upstreams = Vec::new();
        for entry in s.upstreams.as_deref().unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, listen) = entry
                .split_once('=')
                .ok_or_else(|| err("upstreams", format!("{entry:?} is not service=127.0.0.1:port")))?;
            validate_service_name(name).map_err(|e| err("upstreams", e))?;
            let listen = addr("upstreams", Some(listen.to_string()), "")?;
            upstreams.push((name.to_string(), listen));
        }
        let app_protocol = match s.app_protocol.as_deref().unwrap_or("h2c") {
            "h2c" => AppProtocol::H2c,
            "http1" => AppProtocol::Http1,
            other => return Err(err("app_protocol", format!("{other:?} is not one of h2c, http1"))),
        };
        let balancer = policy("balancer", s.balancer.as_deref().unwrap_or("peak_ewma"))?;
        let hash_header = header_name("hash_header", s.hash_header.as_deref().unwrap_or("x-user-id"))?;
        let mut service_balancers = BTreeMap::new();
        for entry in s.service_balancers.as_deref().unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let key = "service_balancers";
            let (name, spec) = entry
                .split_once('=')
                .ok_or_else(|| err(key, format!("{entry:?} is not service=policy or service=policy:header")))?;
            validate_service_name(name).map_err(|e| err(key, e))?;
            let (p, header) = match spec.split_once(':') {
                Some((p, h)) => (policy(key, p)?, header_name(key, h)?),
                None => (policy(key, spec)?, hash_header.clone()),
            };
            service_balancers.insert(name.to_string(), Balancing { policy: p, hash_header: header });
        }
        let zone = s.zone.unwrap_or_default();
        // The registry takes at most 128 bytes of zone.
        if zone.len() > 128 || zone.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("zone", format!("{zone:?} is not a zone name (no spaces, at most 128 bytes)")));
        }
        let min_healthy = s.zone_min_healthy.unwrap_or_else(|| "0.5".into());
        let zone_min_healthy_percent = match min_healthy.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => (f * 100.0).round() as u8,
            _ => return Err(err("zone_min_healthy", format!("{min_healthy:?} is not a fraction in 0..=1 like 0.5"))),
        };
        let app_health = HealthCheckConfig {
            kind: match s.app_health_check.as_deref().unwrap_or("none") {
                "none" => None,
                "grpc" => Some(CheckKind::Grpc { service: String::new() }),
                other => match other.split_once(':') {
                    Some(("grpc", service)) => Some(CheckKind::Grpc { service: service.to_string() }),
                    Some(("http", path))
                        if path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok() =>
                    {
                        Some(CheckKind::Http { path: path.to_string() })
                    }
                    _ => {
                        return Err(err(
                            "app_health_check",
                            format!("{other:?} is not one of none, grpc, grpc:<service>, http:/<path>"),
                        ));
                    }
                },
            },
            interval: positive("app_health_interval", s.app_health_interval, "5s")?,
            timeout: positive("app_health_timeout", s.app_health_timeout, "1s")?,
            unhealthy_threshold: threshold("app_health_unhealthy_threshold", s.app_health_unhealthy_threshold, 3)?,
            healthy_threshold: threshold("app_health_healthy_threshold", s.app_health_healthy_threshold, 1)?,
        };
        let max_in_flight = s.max_in_flight.unwrap_or_else(|| "1024".into());
        let max_in_flight = match max_in_flight.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(err("max_in_flight", format!("{max_in_flight:?} is not a number above 0"))),
        };
        let (log_format, log_level) = log_settings(s.log_format.clone(), s.log_level.clone())?;
        let mut metadata = Vec::new();
        for entry in s.metadata.as_deref().unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && k.trim() != "namespace" => {
                    metadata.push((k.trim().to_string(), v.trim().to_string()))
                }
                _ => {
                    return Err(err(
                        "metadata",
                        format!("{entry:?} is not key=value (namespace is set by --namespace)"),
                    ));
                }
            }
        }
        Ok(Config {
            mode,
            gateway,
            metadata,
            control,
            instance_id: s.instance_id.unwrap_or_else(|| format!("{service}-{}", std::process::id())),
            service,
            namespace,
            trust_domain: s.trust_domain.unwrap_or_else(|| "redfire.local".into()),
            bootstrap_token,
            identity_key_file: s.identity_key_file.filter(|f| !f.is_empty()).map(PathBuf::from),
            inbound_addr: addr("inbound_addr", s.inbound_addr, "0.0.0.0:15006")?,
            advertise_address: s.advertise_address.unwrap_or_else(|| "127.0.0.1".into()),
            outbound_addr: addr("outbound_addr", s.outbound_addr, "127.0.0.1:15001")?,
            upstreams,
            admin_addr: addr("admin_addr", s.admin_addr, "127.0.0.1:15000")?,
            app_addr: addr("app_addr", s.app_addr, "127.0.0.1:8080")?,
            app_protocol,
            balancer,
            hash_header,
            service_balancers,
            zone,
            zone_min_healthy_percent,
            app_health,
            max_in_flight,
            shutdown_grace: duration("shutdown_grace", s.shutdown_grace, "10s")?,
            ratelimit_redis_url: s.ratelimit_redis_url.filter(|u| !u.is_empty()),
            ratelimit_redis_prefix: s.ratelimit_redis_prefix.unwrap_or_else(|| "redfire".into()),
            ejection_failures: match s.ejection_failures.as_deref().unwrap_or("5").parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err(err("ejection_failures", "must be a number in 1..=1000")),
            },
            ejection_time: match duration("ejection_time", s.ejection_time, "30s")? {
                d if d.is_zero() || d > Duration::from_secs(300) => {
                    return Err(err("ejection_time", "must be above 0 and at most 300s"));
                }
                d => d,
            },
            stream_idle_timeout: match duration("stream_idle_timeout", s.stream_idle_timeout, "5m")? {
                d if d.is_zero() => return Err(err("stream_idle_timeout", "must be above 0")),
                d => d,
            },
            worker_threads: match s.worker_threads {
                None => None,
                Some(n) => match n.parse::<usize>() {
                    Ok(n) if (1..=512).contains(&n) => Some(n),
                    _ => return Err(err("worker_threads", format!("{n:?} is not a number in 1..=512"))),
                },
            },
            dev_plaintext: boolean("dev_plaintext", s.dev_plaintext.as_deref())?,
            log_format,
            log_level,
        })
    }
}

impl Config {
    /// How requests to `service` are balanced.
    pub fn balancing(&self, service: &str) -> Balancing {
        self.service_balancers
            .get(service)
            .cloned()
            .unwrap_or_else(|| Balancing { policy: self.balancer, hash_header: self.hash_header.clone() })
    }

    /// The zone preference, when a zone is set.
    pub fn zone_preference(&self) -> Option<ZonePreference> {
        (!self.zone.is_empty()).then(|| ZonePreference {
            local_zone: self.zone.clone(),
            min_healthy_percent: self.zone_min_healthy_percent,
        })
    }
}

/// Control's URL and trust bundle: `https://` (the default) needs the bundle
/// (`control_ca_file`, read now so a bad path stops the start); `http://`
/// needs `dev_insecure_control`.
fn control_target(s: &Settings) -> Result<ControlTarget, ConfigError> {
    let url = s.control_addr.clone().unwrap_or_else(|| "https://127.0.0.1:15010".into());
    let scheme = url.parse::<http::Uri>().ok().and_then(|u| u.scheme_str().map(str::to_string));
    let insecure = boolean("dev_insecure_control", s.dev_insecure_control.as_deref())?;
    match scheme.as_deref() {
        Some("https") => {
            let path = match &s.control_ca_file {
                Some(p) => PathBuf::from(p),
                None => default_ca_dir().join("bundle.pem"),
            };
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                err("control_ca_file", format!("{}: {e} (control writes it: trust_bundle_file)", path.display()))
            })?;
            ControlTarget::new(url, Some(pem)).map_err(|e| {
                let (key, msg) = e.split_once(": ").unwrap_or(("control_addr", e.as_str()));
                err(key, format!("{}: {msg}", path.display()))
            })
        }
        Some("http") if insecure => {
            ControlTarget::new(url, None).map_err(|e| err("control_addr", e.trim_start_matches("control_addr: ")))
        }
        Some("http") => Err(err(
            "control_addr",
            format!(
                "{url:?} is plaintext: use https:// with control_ca_file, or dev_insecure_control for local experiments"
            ),
        )),
        _ => Err(err("control_addr", format!("{url:?} is not a URL like https://127.0.0.1:15010"))),
    }
}

#[cfg(test)]
mod tests;
