//! What every binary's settings share: the one-line [`ConfigError`] naming
//! the key (its `main` exits 2 on it), and the parsers of the common kinds
//! of value (durations, socket addresses, log settings, a TOML file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mesh::process::telemetry::{self, LogFormat};

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

/// Parses a boolean setting (`true`/`1`, `false`/`0`), or `false`.
pub fn boolean(key: &str, v: Option<&str>) -> Result<bool, ConfigError> {
    match v.unwrap_or("false") {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(err(key, format!("{other:?} is not true or false"))),
    }
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

/// Where a control on the memory store keeps its CA (and writes the trust
/// bundle, `bundle.pem`) unless told otherwise, and so where a sidecar on the
/// same machine looks for that bundle: `$XDG_DATA_HOME/redfire/ca`, else `$HOME/.local/share/redfire/ca`, else `./.redfire/ca`.
pub fn default_ca_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("redfire/ca");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/redfire/ca");
    }
    PathBuf::from(".redfire/ca")
}
