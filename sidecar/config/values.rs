//! Parsers of the kinds of value the sidecar's settings take that the
//! shared ones (`crate::mesh::process::settings`) do not cover: positive
//! durations, thresholds, counts, balancer names and header names.

use std::time::Duration;

use http::HeaderName;

use crate::mesh::process::settings::{ConfigError, duration, err};
use crate::sidecar::outbound::balance::Policy;

pub(super) fn positive(key: &str, v: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, v, default)?;
    if d.is_zero() {
        return Err(err(key, "must be above 0"));
    }
    Ok(d)
}

pub(super) fn threshold(key: &str, v: Option<String>, default: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(err(key, format!("{v:?} is not a number in 1..=100"))),
        },
    }
}

pub(super) fn number<T: std::str::FromStr + PartialOrd + From<u8>>(
    key: &str,
    v: Option<&String>,
    default: T,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<T>() {
            Ok(n) if n >= T::from(1) => Ok(n),
            _ => Err(err(key, format!("{v:?} is not a number above 0"))),
        },
    }
}

pub(super) fn policy(key: &str, name: &str) -> Result<Policy, ConfigError> {
    Ok(match name {
        "round_robin" => Policy::RoundRobin,
        "weighted_round_robin" => Policy::WeightedRoundRobin,
        "least_request" => Policy::LeastRequest,
        "peak_ewma" => Policy::PeakEwma,
        "ring_hash" => Policy::RingHash,
        "maglev" => Policy::Maglev,
        other => {
            return Err(err(
                key,
                format!(
                    "{other:?} is not one of round_robin, weighted_round_robin, least_request, peak_ewma, ring_hash, maglev"
                ),
            ));
        }
    })
}

pub(super) fn header_name(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    // Header names are matched lowercase (HTTP/2 requires it).
    HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| err(key, format!("{name:?} is not an HTTP header name")))
}
