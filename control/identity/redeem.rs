//! Bootstrap token redemptions: which keys each token has certified, so a
//! token certifies at most its `uses` distinct keys (a replayed token with
//! another key is refused) and the same key may come back (a sidecar whose
//! certificate lapsed re-bootstraps with the key it already had). Shared by
//! control replicas through Redis; in memory with the memory store. Records
//! live until the token expires.
//!
//! Redis: one set per token, `{<prefix>:bootstrap}:<jti>`, members the
//! SHA-256 of the certified public keys, checked and added by one script.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

use crate::control::authz::token::BootstrapGrant;

/// Why a redemption was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The token already certified its `uses` keys, none of them this one.
    #[error(
        "bootstrap_token: already used for {0} other key(s); a bootstrap token is good for its first certificate only"
    )]
    Used(u32),
    /// The shared record could not be reached.
    #[error("bootstrap_token: redemption store unavailable: {0}")]
    Unavailable(String),
}

const REDEEM: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
";

/// See the module docs.
#[derive(Debug)]
pub enum Redemptions {
    /// This process only.
    Memory(Mutex<HashMap<String, (u64, Vec<String>)>>),
    /// Shared by replicas.
    Redis {
        /// Lazily connected.
        conn: ConnectionManager,
        /// `{<prefix>:bootstrap}`.
        tag: String,
        /// Bound on one round trip.
        timeout: Duration,
        /// [`REDEEM`].
        script: Script,
    },
}

impl Redemptions {
    /// Process-local records.
    pub fn memory() -> Redemptions {
        Redemptions::Memory(Mutex::default())
    }

    /// Records in Redis under `prefix`.
    pub fn redis(url: &str, prefix: &str, timeout: Duration) -> Result<Redemptions, String> {
        let (_, conn) = crate::control::redis::connect_lazy(url, timeout)?;
        Ok(Redemptions::Redis { conn, tag: format!("{{{prefix}:bootstrap}}"), timeout, script: Script::new(REDEEM) })
    }

    /// Records that `grant` certified the key with fingerprint `key`; refused
    /// when the token has already certified `uses` other keys.
    pub async fn redeem(&self, grant: &BootstrapGrant, key: &str) -> Result<(), Refused> {
        match self {
            Redemptions::Memory(m) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                // Expired tokens are refused by their signature check anyway.
                m.retain(|_, (exp, _)| *exp + 60 > now);
                let (_, keys) = m.entry(grant.jti.clone()).or_insert_with(|| (grant.exp, Vec::new()));
                if keys.iter().any(|k| k == key) {
                    return Ok(());
                }
                if keys.len() >= grant.uses as usize {
                    return Err(Refused::Used(keys.len() as u32));
                }
                keys.push(key.to_string());
                Ok(())
            }
            Redemptions::Redis { conn, tag, timeout, script } => {
                let mut inv = script.prepare_invoke();
                inv.key(format!("{tag}:{}", grant.jti)).arg(key).arg(grant.uses).arg(grant.exp + 60);
                let mut conn = conn.clone();
                match tokio::time::timeout(*timeout, inv.invoke_async::<i64>(&mut conn)).await {
                    Ok(Ok(1)) => Ok(()),
                    Ok(Ok(_)) => Err(Refused::Used(grant.uses)),
                    Ok(Err(e)) => Err(Refused::Unavailable(e.to_string())),
                    Err(_) => Err(Refused::Unavailable(format!("no answer within {timeout:?}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(jti: &str, uses: u32) -> BootstrapGrant {
        BootstrapGrant { spiffe_id: "spiffe://t/ns/d/sa/a".into(), jti: jti.into(), uses, exp: u64::MAX / 2 }
    }

    #[tokio::test]
    async fn a_token_certifies_its_uses_distinct_keys_and_the_same_key_again() {
        let r = Redemptions::memory();
        r.redeem(&grant("one", 1), "k1").await.unwrap();
        r.redeem(&grant("one", 1), "k1").await.unwrap();
        assert_eq!(r.redeem(&grant("one", 1), "k2").await, Err(Refused::Used(1)));
        let two = grant("two", 2);
        r.redeem(&two, "k1").await.unwrap();
        r.redeem(&two, "k2").await.unwrap();
        assert_eq!(r.redeem(&two, "k3").await, Err(Refused::Used(2)));
    }
}
