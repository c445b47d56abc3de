//! Every setting of `redfire-control`, declared once: each is a CLI flag, a
//! `REDFIRE_*` environment variable and a key of the TOML file named by
//! `--config`. Precedence: flag, then environment, then file, then default.
//! An invalid value is reported as one line naming the key; `main` exits 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

use crate::control::authz::oidc::OperatorOidc;
use crate::control::events::service::EventLimits;
use crate::control::events::store::EventSettings;
use crate::control::identity::ca::{CaConfig, RootSource, SanName};
use crate::mesh::events::Retention;
use crate::mesh::process::settings::{
    ConfigError, addr, boolean, default_ca_dir, duration, err, log_settings, read_toml,
};
use crate::mesh::process::telemetry::LogFormat;

/// Command line of `redfire-control`.
#[derive(Debug, Parser)]
#[command(name = "redfire-control", version, about = "RedFire Mesh control service: the service registry")]
pub struct Cli {
    /// TOML file with any of the settings below (same names, snake_case).
    #[arg(long, env = "REDFIRE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: Settings,
    /// An admin command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Admin commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Bootstrap tokens for sidecars.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Prints the mesh trust bundle (PEM) that clients verify control's
    /// certificate with (uses the same CA settings as the server).
    TrustBundle,
}

/// `token` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Prints a token that lets one service's sidecars obtain their first
    /// certificate (uses the same CA settings as the server).
    Create {
        /// The service (DNS-1123 label) the token is for.
        #[arg(long)]
        service: String,
        /// The service's namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// How long the token is valid.
        #[arg(long, default_value = "720h")]
        ttl: String,
        /// How many distinct sidecars (keys) it may certify; each key once
        /// (the same sidecar may come back with it, another may not).
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Prints an operator token: `authorization: Bearer <token>` on calls
    /// to control's gRPC API (uses the same CA settings as the server).
    Operator {
        /// Who it is for (shown in refusals and logs).
        #[arg(long)]
        subject: String,
        /// A role: policy-admin, events-admin or registry-admin (repeat for
        /// several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// How long the token is valid.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
}

/// Raw settings as given; `None` means "not given here".
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// gRPC listen address [default: 127.0.0.1:15010]
    #[arg(long, env = "REDFIRE_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Admin HTTP listen address (/health, /ready, /metrics, /admin/services) [default: 127.0.0.1:15014]
    #[arg(long, env = "REDFIRE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Registry store: memory or redis [default: memory]
    #[arg(long, env = "REDFIRE_STORE")]
    pub store: Option<String>,
    /// Redis URL for store=redis [default: redis://127.0.0.1:6379]
    #[arg(long, env = "REDFIRE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key [default: redfire]
    #[arg(long, env = "REDFIRE_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Longest wait for one Redis command [default: 1s]
    #[arg(long, env = "REDFIRE_REDIS_TIMEOUT")]
    pub redis_timeout: Option<String>,
    /// Lease TTL when a client asks for none [default: 10s]
    #[arg(long, env = "REDFIRE_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Shortest lease TTL a client may ask for [default: 1s]
    #[arg(long, env = "REDFIRE_LEASE_TTL_MIN")]
    pub lease_ttl_min: Option<String>,
    /// Longest lease TTL a client may ask for [default: 5m]
    #[arg(long, env = "REDFIRE_LEASE_TTL_MAX")]
    pub lease_ttl_max: Option<String>,
    /// How often lapsed leases are removed [default: 250ms]
    #[arg(long, env = "REDFIRE_SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    /// Changes kept for watch resume [default: 10000]
    #[arg(long, env = "REDFIRE_WATCH_HISTORY")]
    pub watch_history: Option<String>,
    /// With Redis: if no replica could sweep for this long, leases get a fresh TTL instead of expiring [default: 3s]
    #[arg(long, env = "REDFIRE_OUTAGE_GRACE_AFTER")]
    pub outage_grace_after: Option<String>,
    /// How long in-flight calls may finish after SIGTERM [default: 10s]
    #[arg(long, env = "REDFIRE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Log format: human or json [default: human]
    #[arg(long, env = "REDFIRE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or redfire=debug,warn [default: info]
    #[arg(long, env = "REDFIRE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// SPIFFE trust domain of the mesh CA [default: redfire.local]
    #[arg(long, env = "REDFIRE_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Root CA certificate file (PEM); with ca_key_file, overrides the generated root
    #[arg(long, env = "REDFIRE_CA_CERT_FILE")]
    pub ca_cert_file: Option<String>,
    /// Root CA private key file (PKCS#8 PEM)
    #[arg(long, env = "REDFIRE_CA_KEY_FILE")]
    pub ca_key_file: Option<String>,
    /// Memory store: directory of the generated root [default: $XDG_DATA_HOME/redfire/ca or ~/.local/share/redfire/ca]
    #[arg(long, env = "REDFIRE_CA_DIR")]
    pub ca_dir: Option<String>,
    /// More roots to trust (PEM), for root rotation
    #[arg(long, env = "REDFIRE_CA_EXTRA_ROOTS_FILE")]
    pub ca_extra_roots_file: Option<String>,
    /// Default and maximum workload certificate lifetime [default: 24h]
    #[arg(long, env = "REDFIRE_CERT_LIFETIME")]
    pub cert_lifetime: Option<String>,
    /// Events: largest event payload in bytes [default: 1048576]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_PAYLOAD")]
    pub events_max_payload: Option<String>,
    /// Events: most events per Publish or AppendToAggregate [default: 1000]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_BATCH")]
    pub events_max_batch: Option<String>,
    /// Events: an unacked delivery goes to another consumer after this [default: 30s]
    #[arg(long, env = "REDFIRE_EVENTS_VISIBILITY_TIMEOUT")]
    pub events_visibility_timeout: Option<String>,
    /// Events: deliveries before an event moves to <topic>.dlq [default: 5]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_DELIVERIES")]
    pub events_max_deliveries: Option<String>,
    /// Events: how long an idempotency key is remembered [default: 10m]
    #[arg(long, env = "REDFIRE_EVENTS_IDEMPOTENCY_WINDOW")]
    pub events_idempotency_window: Option<String>,
    /// Events: retention (max events) of topics created by publish or subscribe; 0 = none [default: 1000000]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_LEN")]
    pub events_max_len: Option<String>,
    /// Events: retention (max age) of topics created by publish or subscribe; 0s = none [default: 0s]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_AGE")]
    pub events_max_age: Option<String>,
    /// Events: largest max_in_flight a subscriber may ask for [default: 10000]
    #[arg(long, env = "REDFIRE_EVENTS_MAX_IN_FLIGHT")]
    pub events_max_in_flight: Option<String>,
    /// Events with store=redis: how often subscribers look for other replicas' publishes [default: 100ms]
    #[arg(long, env = "REDFIRE_EVENTS_POLL_INTERVAL")]
    pub events_poll_interval: Option<String>,
    /// Events: how often retention is applied [default: 1s]
    #[arg(long, env = "REDFIRE_EVENTS_TRIM_INTERVAL")]
    pub events_trim_interval: Option<String>,
    /// Directory of per-service policy files (`<service>.toml`) [default: none]
    #[arg(long, env = "REDFIRE_POLICY_DIR")]
    pub policy_dir: Option<String>,
    /// How often the policy directory is checked for changes [default: 1s]
    #[arg(long, env = "REDFIRE_POLICY_POLL_INTERVAL")]
    pub policy_poll_interval: Option<String>,
    /// DNS names and IPs clients dial control by, in its serving certificate besides its SPIFFE ID, comma-separated [default: localhost,127.0.0.1,::1]
    #[arg(long, env = "REDFIRE_TLS_NAMES")]
    pub tls_names: Option<String>,
    /// Where control writes the mesh trust bundle (PEM) for clients that are not workloads [default: bundle.pem in ca_dir with the memory store, else none]
    #[arg(long, env = "REDFIRE_TRUST_BUNDLE_FILE")]
    pub trust_bundle_file: Option<String>,
    /// Serve the gRPC API in plaintext: for local experiments only, warned at start and on /health [default: false]
    #[arg(long, env = "REDFIRE_DEV_INSECURE_CONTROL", num_args = 0..=1, default_missing_value = "true")]
    pub dev_insecure_control: Option<String>,
    /// An OIDC issuer (https URL) whose tokens are accepted as operator tokens besides control's own [default: none]
    #[arg(long, env = "REDFIRE_OPERATOR_OIDC_ISSUER")]
    pub operator_oidc_issuer: Option<String>,
    /// The audience operator tokens of that issuer must carry [default: redfire-control]
    #[arg(long, env = "REDFIRE_OPERATOR_OIDC_AUDIENCE")]
    pub operator_oidc_audience: Option<String>,
    /// The claim of those tokens that lists their operator roles [default: roles]
    #[arg(long, env = "REDFIRE_OPERATOR_OIDC_ROLES_CLAIM")]
    pub operator_oidc_roles_claim: Option<String>,
}

/// Validated event bus settings.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// What the stores share.
    pub store: EventSettings,
    /// What the API enforces.
    pub limits: EventLimits,
    /// Redis: poll for other replicas' publishes.
    pub poll_interval: Duration,
    /// How often retention runs.
    pub trim_interval: Duration,
}

/// Which registry store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In this process; gone when it exits.
    Memory,
    /// Shared by every replica on one Redis.
    Redis,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
    /// Store backend.
    pub store: StoreKind,
    /// Redis URL.
    pub redis_url: String,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Redis command timeout.
    pub redis_timeout: Duration,
    /// Default lease TTL.
    pub lease_ttl: Duration,
    /// Minimum lease TTL.
    pub lease_ttl_min: Duration,
    /// Maximum lease TTL.
    pub lease_ttl_max: Duration,
    /// Expiry sweep interval.
    pub sweep_interval: Duration,
    /// Watch history length.
    pub watch_history: usize,
    /// Redis outage length after which leases get a fresh TTL.
    pub outage_grace_after: Duration,
    /// Drain grace period.
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// The mesh CA.
    pub ca: CaConfig,
    /// The event bus.
    pub events: EventsConfig,
    /// Policy directory.
    pub policy_dir: Option<PathBuf>,
    /// Policy directory poll interval.
    pub policy_poll_interval: Duration,
    /// Names in the serving certificate besides the SPIFFE ID.
    pub tls_names: Vec<SanName>,
    /// Where to write the trust bundle.
    pub trust_bundle_file: Option<PathBuf>,
    /// Plaintext gRPC (development only).
    pub dev_insecure_control: bool,
    /// Operators from an OIDC issuer, if configured.
    pub operator_oidc: Option<OperatorOidc>,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction.
        Config::from_settings(Settings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// `self` where given, else `other`.
    pub fn or(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(other.$f)),* } };
        }
        pick!(
            grpc_addr,
            admin_addr,
            store,
            redis_url,
            redis_prefix,
            redis_timeout,
            lease_ttl,
            lease_ttl_min,
            lease_ttl_max,
            sweep_interval,
            watch_history,
            outage_grace_after,
            shutdown_grace,
            log_format,
            log_level,
            trust_domain,
            ca_cert_file,
            ca_key_file,
            ca_dir,
            ca_extra_roots_file,
            cert_lifetime,
            events_max_payload,
            events_max_batch,
            events_visibility_timeout,
            events_max_deliveries,
            events_idempotency_window,
            events_max_len,
            events_max_age,
            events_max_in_flight,
            events_poll_interval,
            events_trim_interval,
            policy_dir,
            policy_poll_interval,
            tls_names,
            trust_bundle_file,
            dev_insecure_control,
            operator_oidc_issuer,
            operator_oidc_audience,
            operator_oidc_roles_claim
        )
    }

    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        read_toml(path)
    }
}

impl Config {
    /// Parses `argv` (flags and environment) and the config file, if named.
    pub fn load() -> Result<(Config, Option<Command>), ConfigError> {
        let cli = Cli::parse();
        let file = match &cli.config {
            Some(p) => Settings::from_file(p)?,
            None => Settings::default(),
        };
        Ok((Config::from_settings(cli.settings.or(file))?, cli.command))
    }

    /// Validates raw settings, filling defaults.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let events = events_config(&s)?;
        let ca_settings = CaSettings {
            trust_domain: s.trust_domain.clone(),
            cert: s.ca_cert_file.clone(),
            key: s.ca_key_file.clone(),
            dir: s.ca_dir.clone(),
            extra_roots: s.ca_extra_roots_file.clone(),
            lifetime: s.cert_lifetime.clone(),
        };
        let store = match s.store.as_deref().unwrap_or("memory") {
            "memory" => StoreKind::Memory,
            "redis" => StoreKind::Redis,
            other => return Err(err("store", format!("{other:?} is not one of memory, redis"))),
        };
        let redis_url = s.redis_url.unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if redis::Client::open(redis_url.as_str()).is_err() {
            return Err(err("redis_url", format!("{redis_url:?} is not a redis:// or rediss:// URL")));
        }
        let redis_prefix = s.redis_prefix.unwrap_or_else(|| "redfire".into());
        if redis_prefix.is_empty() || redis_prefix.contains(['{', '}', ' ']) {
            return Err(err("redis_prefix", format!("{redis_prefix:?} must be non-empty, without braces or spaces")));
        }
        let watch_history = s.watch_history.unwrap_or_else(|| "10000".into());
        let watch_history = match watch_history.parse::<usize>() {
            Ok(n) if (1..=10_000_000).contains(&n) => n,
            _ => return Err(err("watch_history", format!("{watch_history:?} is not a number in 1..=10000000"))),
        };
        let (log_format, log_level) = log_settings(s.log_format, s.log_level)?;
        let ca = ca_config(ca_settings, &store, &redis_url, &redis_prefix)?;
        let tls_names = s
            .tls_names
            .unwrap_or_else(|| "localhost,127.0.0.1,::1".into())
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| n.parse::<SanName>().map_err(|e| err("tls_names", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let trust_bundle_file = match (s.trust_bundle_file, &ca.root) {
            (Some(f), _) if f.is_empty() => None,
            (Some(f), _) => Some(PathBuf::from(f)),
            (None, RootSource::Dir(dir)) => Some(dir.join("bundle.pem")),
            (None, _) => None,
        };
        let dev_insecure_control = boolean("dev_insecure_control", s.dev_insecure_control.as_deref())?;
        let operator_oidc = match s.operator_oidc_issuer {
            None => None,
            Some(issuer) if issuer.starts_with("https://") || issuer.starts_with("http://") => Some(OperatorOidc {
                issuer,
                audience: s.operator_oidc_audience.unwrap_or_else(|| "redfire-control".into()),
                roles_claim: s.operator_oidc_roles_claim.unwrap_or_else(|| "roles".into()),
            }),
            Some(issuer) => {
                return Err(err("operator_oidc_issuer", format!("{issuer:?} is not an http(s) URL")));
            }
        };
        let c = Config {
            grpc_addr: addr("grpc_addr", s.grpc_addr, "127.0.0.1:15010")?,
            admin_addr: addr("admin_addr", s.admin_addr, "127.0.0.1:15014")?,
            store,
            redis_url,
            redis_prefix,
            redis_timeout: duration("redis_timeout", s.redis_timeout, "1s")?,
            lease_ttl: duration("lease_ttl", s.lease_ttl, "10s")?,
            lease_ttl_min: duration("lease_ttl_min", s.lease_ttl_min, "1s")?,
            lease_ttl_max: duration("lease_ttl_max", s.lease_ttl_max, "5m")?,
            sweep_interval: duration("sweep_interval", s.sweep_interval, "250ms")?,
            watch_history,
            outage_grace_after: duration("outage_grace_after", s.outage_grace_after, "3s")?,
            shutdown_grace: duration("shutdown_grace", s.shutdown_grace, "10s")?,
            log_format,
            log_level,
            ca,
            events,
            policy_dir: s.policy_dir.map(PathBuf::from),
            policy_poll_interval: duration("policy_poll_interval", s.policy_poll_interval, "1s")?,
            tls_names,
            trust_bundle_file,
            dev_insecure_control,
            operator_oidc,
        };
        if let Some(d) = &c.policy_dir
            && !d.is_dir()
        {
            return Err(err("policy_dir", format!("{} is not a directory", d.display())));
        }
        if c.policy_poll_interval < Duration::from_millis(50) || c.policy_poll_interval > Duration::from_secs(60) {
            return Err(err("policy_poll_interval", "must be within 50ms..=60s"));
        }
        if c.redis_timeout.is_zero() {
            return Err(err("redis_timeout", "must be above 0"));
        }
        if c.sweep_interval < Duration::from_millis(10) || c.sweep_interval > Duration::from_secs(1) {
            return Err(err("sweep_interval", "must be within 10ms..=1s so leases lapse within TTL + 1 s"));
        }
        if c.lease_ttl_min.is_zero() || c.lease_ttl_min > c.lease_ttl_max {
            return Err(err("lease_ttl_min", "must be above 0 and at most lease_ttl_max"));
        }
        if c.lease_ttl_max > Duration::from_secs(3600) {
            return Err(err("lease_ttl_max", "must be at most 1h"));
        }
        if c.lease_ttl < c.lease_ttl_min || c.lease_ttl > c.lease_ttl_max {
            return Err(err("lease_ttl", "must be within lease_ttl_min..=lease_ttl_max"));
        }
        if c.outage_grace_after <= c.sweep_interval * 2 {
            return Err(err("outage_grace_after", "must be more than twice sweep_interval"));
        }
        Ok(c)
    }
}

/// Parses an integer setting within `range`, or `default`.
fn number(
    key: &str,
    v: &Option<String>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let s = v.clone().unwrap_or_else(|| default.to_string());
    match s.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(err(key, format!("{s:?} is not a number in {}..={}", range.start(), range.end()))),
    }
}

fn events_config(s: &Settings) -> Result<EventsConfig, ConfigError> {
    let max_payload = number("events_max_payload", &s.events_max_payload, 1 << 20, 1..=(64 << 20))?;
    let max_batch = number("events_max_batch", &s.events_max_batch, 1000, 1..=100_000)?;
    let visibility_timeout = duration("events_visibility_timeout", s.events_visibility_timeout.clone(), "30s")?;
    if visibility_timeout < Duration::from_millis(100) || visibility_timeout > Duration::from_secs(12 * 3600) {
        return Err(err("events_visibility_timeout", "must be within 100ms..=12h"));
    }
    let max_deliveries = number("events_max_deliveries", &s.events_max_deliveries, 5, 1..=1000)?;
    let idempotency_window = duration("events_idempotency_window", s.events_idempotency_window.clone(), "10m")?;
    if idempotency_window.is_zero() {
        return Err(err("events_idempotency_window", "must be above 0"));
    }
    let max_len = number("events_max_len", &s.events_max_len, 1_000_000, 0..=u64::MAX)?;
    let max_age = duration("events_max_age", s.events_max_age.clone(), "0s")?;
    let max_in_flight = number("events_max_in_flight", &s.events_max_in_flight, 10_000, 1..=1_000_000)?;
    let poll_interval = duration("events_poll_interval", s.events_poll_interval.clone(), "100ms")?;
    if poll_interval < Duration::from_millis(1) || poll_interval > Duration::from_secs(10) {
        return Err(err("events_poll_interval", "must be within 1ms..=10s"));
    }
    let trim_interval = duration("events_trim_interval", s.events_trim_interval.clone(), "1s")?;
    if trim_interval < Duration::from_millis(10) {
        return Err(err("events_trim_interval", "must be at least 10ms"));
    }
    Ok(EventsConfig {
        store: EventSettings {
            visibility_timeout,
            max_deliveries: max_deliveries as u32,
            idempotency_window,
            default_retention: Retention { max_len, max_age },
        },
        limits: EventLimits {
            max_payload: max_payload as usize,
            max_batch: max_batch as usize,
            max_in_flight: max_in_flight as usize,
        },
        poll_interval,
        trim_interval,
    })
}

/// The CA's raw settings, split off before the rest are consumed.
struct CaSettings {
    trust_domain: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    dir: Option<String>,
    extra_roots: Option<String>,
    lifetime: Option<String>,
}

fn ca_config(s: CaSettings, store: &StoreKind, redis_url: &str, redis_prefix: &str) -> Result<CaConfig, ConfigError> {
    let trust_domain = s.trust_domain.unwrap_or_else(|| "redfire.local".into());
    let td_ok = !trust_domain.is_empty()
        && trust_domain.len() <= 255
        && trust_domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if !td_ok {
        return Err(err(
            "trust_domain",
            format!("{trust_domain:?} is not a trust domain (lowercase letters, digits, . - _)"),
        ));
    }
    let root = match (&s.cert, &s.key) {
        (Some(cert), Some(key)) => RootSource::Files { cert: cert.into(), key: key.into() },
        (Some(_), None) => return Err(err("ca_key_file", "missing: ca_cert_file needs ca_key_file")),
        (None, Some(_)) => return Err(err("ca_cert_file", "missing: ca_key_file needs ca_cert_file")),
        (None, None) if *store == StoreKind::Redis => {
            RootSource::Redis { url: redis_url.into(), prefix: redis_prefix.into() }
        }
        (None, None) => RootSource::Dir(match &s.dir {
            Some(d) => d.into(),
            None => default_ca_dir(),
        }),
    };
    let leaf_lifetime = duration("cert_lifetime", s.lifetime, "24h")?;
    if leaf_lifetime < Duration::from_secs(10) || leaf_lifetime > Duration::from_secs(30 * 24 * 3600) {
        return Err(err("cert_lifetime", "must be within 10s..=30d"));
    }
    Ok(CaConfig { trust_domain, root, extra_roots: s.extra_roots.map(PathBuf::from), leaf_lifetime })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_ones() {
        let c = Config::default();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:15010");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.store, StoreKind::Memory);
        assert_eq!(c.events.limits.max_payload, 1 << 20);
        assert_eq!(c.events.store.visibility_timeout, Duration::from_secs(30));
        assert_eq!(c.events.store.max_deliveries, 5);
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { grpc_addr: Some("nope".into()), ..Default::default() }, "grpc_addr"),
            (Settings { operator_oidc_issuer: Some("ftp://idp".into()), ..Default::default() }, "operator_oidc_issuer"),
            (Settings { store: Some("etcd".into()), ..Default::default() }, "store"),
            (Settings { lease_ttl: Some("ten".into()), ..Default::default() }, "lease_ttl"),
            (Settings { lease_ttl: Some("2h".into()), ..Default::default() }, "lease_ttl"),
            (Settings { redis_url: Some("http://x".into()), ..Default::default() }, "redis_url"),
            (Settings { log_format: Some("xml".into()), ..Default::default() }, "log_format"),
            (Settings { watch_history: Some("0".into()), ..Default::default() }, "watch_history"),
            (Settings { sweep_interval: Some("5s".into()), ..Default::default() }, "sweep_interval"),
            (Settings { trust_domain: Some("Bad/Domain".into()), ..Default::default() }, "trust_domain"),
            (Settings { ca_cert_file: Some("root.crt".into()), ..Default::default() }, "ca_key_file"),
            (Settings { cert_lifetime: Some("1s".into()), ..Default::default() }, "cert_lifetime"),
            (Settings { events_max_payload: Some("1MiB".into()), ..Default::default() }, "events_max_payload"),
            (
                Settings { events_visibility_timeout: Some("0s".into()), ..Default::default() },
                "events_visibility_timeout",
            ),
            (Settings { events_max_deliveries: Some("0".into()), ..Default::default() }, "events_max_deliveries"),
            (Settings { policy_dir: Some("/nonexistent/policies".into()), ..Default::default() }, "policy_dir"),
            (Settings { policy_poll_interval: Some("1ms".into()), ..Default::default() }, "policy_poll_interval"),
        ];
        for (s, key) in cases {
            let e = Config::from_settings(s).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn file_errors_name_the_line_and_field() {
        let dir = std::env::temp_dir().join(format!("redfire-config-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.toml");
        std::fs::write(&path, "store = \"redis\"\nlease_tll = \"5s\"\n").unwrap();
        let e = Settings::from_file(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("lease_tll"), "{msg}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = Settings { store: Some("redis".into()), ..Default::default() };
        let file = Settings { store: Some("memory".into()), lease_ttl: Some("20s".into()), ..Default::default() };
        let c = Config::from_settings(cli.or(file)).unwrap();
        assert_eq!(c.store, StoreKind::Redis);
        assert_eq!(c.lease_ttl, Duration::from_secs(20));
    }
}
