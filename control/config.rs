//! Every setting of `redfire-control`, declared once: each is a CLI flag, a
//! `REDFIRE_*` environment variable and a key of the TOML file named by
//! `--config`. Precedence: flag, then environment, then file, then default.
//! An invalid value is reported as one line naming the key; `main` exits 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

use crate::control::identity::ca::{CaConfig, RootSource};
use crate::control::telemetry::{self, LogFormat};

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
    /// Directory of per-service policy files (`<service>.toml`) [default: none]
    #[arg(long, env = "REDFIRE_POLICY_DIR")]
    pub policy_dir: Option<String>,
    /// How often the policy directory is checked for changes [default: 1s]
    #[arg(long, env = "REDFIRE_POLICY_POLL_INTERVAL")]
    pub policy_poll_interval: Option<String>,
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
    /// Policy directory.
    pub policy_dir: Option<PathBuf>,
    /// Policy directory poll interval.
    pub policy_poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction.
        Config::from_settings(Settings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

/// One invalid setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {key}: {message}")]
pub struct ConfigError {
    /// The setting's name (file key; the flag is `--key-with-dashes`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A [`ConfigError`] for `key`.
pub fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
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
            policy_dir,
            policy_poll_interval
        )
    }

    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        read_toml(path)
    }
}

/// Reads a TOML settings file; errors name the file, line and field.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| err("config", format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" line {l}:")).unwrap_or_default();
        err("config", format!("{}:{at} {}", path.display(), e.message().replace('\n', " ")))
    })
}

/// Parses `log_format` (human, json) and `log_level` (an `EnvFilter`).
pub fn log_settings(format: Option<String>, level: Option<String>) -> Result<(LogFormat, String), ConfigError> {
    let format = match format.as_deref().unwrap_or("human") {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => return Err(err("log_format", format!("{other:?} is not one of human, json"))),
    };
    let level = level.unwrap_or_else(|| "info".into());
    telemetry::valid_level(&level).map_err(|e| err("log_level", format!("{level:?}: {e}")))?;
    Ok((format, level))
}

/// Parses a duration setting (`500ms`, `10s`), or `default`.
pub fn duration(key: &str, v: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or_else(|| default.into());
    humantime::parse_duration(&s).map_err(|e| err(key, format!("{s:?} is not a duration like 500ms or 10s ({e})")))
}

/// Parses a socket address setting, or `default`.
pub fn addr(key: &str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.unwrap_or_else(|| default.into());
    s.parse().map_err(|_| err(key, format!("{s:?} is not a socket address like 127.0.0.1:15010")))
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
            policy_dir: s.policy_dir.map(PathBuf::from),
            policy_poll_interval: duration("policy_poll_interval", s.policy_poll_interval, "1s")?,
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

/// `$XDG_DATA_HOME/redfire/ca`, else `$HOME/.local/share/redfire/ca`, else `./.redfire/ca`.
fn default_ca_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("redfire/ca");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/redfire/ca");
    }
    PathBuf::from(".redfire/ca")
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
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: Vec<(Settings, &str)> = vec![
            (Settings { grpc_addr: Some("nope".into()), ..Default::default() }, "grpc_addr"),
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
