//! JWKS key sets, fetched from a URL or through OIDC discovery, cached and
//! shared by every policy version that names the same source.
//!
//! - Refreshed in the background every `jwks_refresh`.
//! - A token with an unknown `kid` may trigger one refetch, at most once per
//!   [`REFETCH_EVERY`] (a flood of random kids costs one fetch per 30 s).
//! - A failed fetch keeps the cached keys (the endpoint may be down).
//! - Only the configured URLs are fetched: a token's `jku`/`x5u` never are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{AlgorithmFamily, DecodingKey};

pub mod fetch;

/// Shortest gap between two fetches triggered by unknown key ids.
pub const REFETCH_EVERY: Duration = Duration::from_secs(30);

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A JWKS URL.
    Url(String),
    /// An OIDC issuer URL (its discovery document names the JWKS).
    Oidc(String),
}

/// One key of the set.
#[derive(Clone)]
pub struct Key {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// The JWK's `alg`, if it pins one.
    pub alg: Option<String>,
    /// Its family.
    pub family: AlgorithmFamily,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("family", &self.family).finish_non_exhaustive()
    }
}

/// A cached key set.
#[derive(Debug)]
pub struct Jwks {
    source: Source,
    keys: ArcSwap<Vec<Key>>,
    /// Bumped whenever the key set changes (verified-token cache entries
    /// from an older generation are not trusted).
    generation: AtomicU64,
    last_attempt: Mutex<Option<Instant>>,
    /// The last document fetched; the generation moves when it changes.
    fetch_lock: tokio::sync::Mutex<bytes::Bytes>,
    fetches: AtomicU64,
}

impl Jwks {
    fn new(source: Source) -> Jwks {
        Jwks {
            source,
            keys: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(bytes::Bytes::new()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The keys now.
    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Changes whenever the key set does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches attempted so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches now unless a fetch was attempted less than `min_gap` ago
    /// (including one in progress); returns whether it fetched.
    pub async fn refetch(&self, min_gap: Duration) -> bool {
        let mut last_body = self.fetch_lock.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < min_gap) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await.and_then(|body| Ok((parse(&body)?, body))) {
            Ok((keys, body)) => {
                // Any change (a key removed, or replaced under the same kid)
                // retires tokens cached under the old set.
                if body != *last_body {
                    self.keys.store(Arc::new(keys));
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    *last_body = body;
                }
            }
            Err(e) => tracing::warn!(source = ?self.source, error = %e, "JWKS fetch failed; keeping the cached keys"),
        }
        true
    }

    async fn fetch(&self) -> Result<bytes::Bytes, String> {
        let url = match &self.source {
            Source::Url(u) => u.clone(),
            Source::Oidc(issuer) => {
                let doc =
                    fetch::get(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))).await?;
                let v: serde_json::Value = serde_json::from_slice(&doc).map_err(|e| format!("OIDC discovery: {e}"))?;
                let uri = v.get("jwks_uri").and_then(|u| u.as_str()).ok_or("OIDC discovery: no jwks_uri")?;
                if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                    return Err(format!("OIDC discovery: jwks_uri {uri:?} is not http(s)"));
                }
                uri.to_string()
            }
        };
        fetch::get(&url).await
    }
}

/// The usable keys of a JWKS document (unsupported ones are skipped).
pub fn parse(body: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("JWKS: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg: jwk.common.key_algorithm.map(|a| a.to_string()),
                family: key.family(),
                key,
            })
        })
        .collect())
}

/// Key sets by source, shared across policy versions.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    sets: Mutex<HashMap<Source, Weak<Jwks>>>,
}

impl JwksRegistry {
    /// The set for `source`: the cached one, or a new one that fetches now
    /// and then every `refresh` while any policy uses it.
    pub fn get(&self, source: Source, refresh: Duration) -> Arc<Jwks> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.retain(|_, w| w.strong_count() > 0);
        if let Some(j) = sets.get(&source).and_then(Weak::upgrade) {
            return j;
        }
        let j = Arc::new(Jwks::new(source.clone()));
        sets.insert(source, Arc::downgrade(&j));
        let weak = Arc::downgrade(&j);
        tokio::spawn(async move {
            loop {
                let Some(j) = weak.upgrade() else { return };
                j.refetch(Duration::ZERO).await;
                drop(j);
                tokio::time::sleep(refresh).await;
            }
        });
        j
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use jsonwebtoken::{Algorithm, EncodingKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A JWKS endpoint answering 200 with one key, or 503 while `down`.
    async fn endpoint(down: Arc<AtomicBool>) -> String {
        let key = EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/jwt/rsa_private.pem")).unwrap();
        let mut jwk =
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
        jwk["kid"] = "k1".into();
        let body = serde_json::json!({ "keys": [jwk] }).to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = if down.load(Ordering::SeqCst) {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn keys_survive_a_failed_fetch_and_unknown_kid_refetches_wait_30_s() {
        let down = Arc::new(AtomicBool::new(false));
        let jwks = Jwks::new(Source::Url(endpoint(down.clone()).await));
        assert!(jwks.refetch(REFETCH_EVERY).await, "first fetch");
        assert_eq!(jwks.keys().len(), 1);
        assert_eq!(jwks.keys()[0].kid.as_deref(), Some("k1"));
        let generation = jwks.generation();

        assert!(!jwks.refetch(REFETCH_EVERY).await, "no second fetch within 30 s");
        assert_eq!(jwks.fetches(), 1);

        down.store(true, Ordering::SeqCst);
        assert!(jwks.refetch(Duration::ZERO).await, "a scheduled refresh while the endpoint is down");
        assert_eq!(jwks.fetches(), 2);
        assert_eq!(jwks.keys().len(), 1, "cached keys kept while the JWKS endpoint is down");
        assert_eq!(jwks.generation(), generation, "unchanged key set, unchanged generation");
    }

    #[test]
    fn unsupported_or_malformed_keys_are_skipped() {
        let keys = parse(
            br#"{"keys":[{"kty":"RSA","kid":"bad","n":"!!","e":"AQAB"},{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
        )
        .unwrap();
        assert!(keys.iter().all(|k| k.kid.as_deref() != Some("bad")));
        assert!(parse(b"not json").is_err());
    }
}
