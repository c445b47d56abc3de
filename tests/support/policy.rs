//! Helpers of the policy tests: setting a policy through control's API,
//! waiting until a sidecar enforces it, minting tokens (well-formed and
//! hostile), calling through the mesh, and a JWKS server that counts fetches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use redfire::control::server::Control;
use redfire::proto::policy::v1 as pb;
use redfire::proto::policy::v1::policy_client::PolicyClient;
use serde_json::{Value, json};

use super::mesh::BoxBody;
use super::{eventually, http_get};

pub const RSA_PRIVATE: &str = include_str!("../fixtures/jwt/rsa_private.pem");
pub const RSA_PUBLIC: &str = include_str!("../fixtures/jwt/rsa_public.pem");
/// A key the mesh does not trust (the attacker's).
pub const RSA2_PRIVATE: &str = include_str!("../fixtures/jwt/rsa2_private.pem");
pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "echo";

pub async fn policy_client(control: &Control) -> PolicyClient<super::OperatorChannel> {
    PolicyClient::new(super::channel(control).await)
}

/// Sets `service`'s policy through control's API; returns the version.
pub async fn set_policy(control: &Control, service: &str, toml: &str) -> u64 {
    let mut c = policy_client(control).await;
    let r = c.set(pb::SetRequest { service: service.into(), toml: toml.into() }).await.expect("policy accepted");
    r.into_inner().version
}

/// The policy version a sidecar reports on `/admin/config`.
pub async fn sidecar_policy_version(admin: SocketAddr) -> u64 {
    let (_, body) = http_get(admin, "/admin/config").await;
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["policy_version"].as_u64().unwrap_or(0)
}

/// Waits until the sidecar at `admin` enforces `version`.
pub async fn wait_version(admin: SocketAddr, version: u64) {
    let ok = eventually(Duration::from_secs(5), || async { sidecar_policy_version(admin).await == version }).await;
    assert!(ok, "sidecar enforces policy version {version}");
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Valid claims for `sub` with `roles`, expiring in an hour.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "exp": now() + 3600, "iat": now() })
}

/// An RS256 token (signed with the trusted key unless `key` says otherwise).
pub fn rs256(claims: &Value, kid: Option<&str>, key: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap()).unwrap()
}

/// An HS256 token with `secret`.
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token with any header, signed RS256 with `key` (for jku/x5u/kid attacks).
pub fn rs256_with_header(header: &Value, claims: &Value, key: &str) -> String {
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    format!("{signing_input}.{sig}")
}

/// `alg: none`, no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// The JWK (RSA public) of the trusted key, with `kid`.
pub fn rsa_jwk(kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

/// A response through the mesh: status, headers.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Sends `method path` with `headers` through a client sidecar's `echo` listener.
pub async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<BoxBody>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder().method(method).uri(format!("http://echo{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed_unsync()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let _ = body.collect().await;
    Reply { status: parts.status.as_u16(), headers: parts.headers }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// An HTTP/1.1 server on 127.0.0.1 serving `body` as a JWKS document
/// (and an OIDC discovery document naming it at
/// `/.well-known/openid-configuration`), counting requests; `down` makes it
/// answer 503.
pub struct JwksServer {
    pub url: String,
    pub issuer_url: String,
    pub hits: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
}

impl JwksServer {
    pub async fn start(body: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (h, d) = (hits.clone(), down.clone());
        let body = Bytes::from(body.to_string());
        let discovery = Bytes::from(json!({ "jwks_uri": format!("http://{addr}/jwks.json") }).to_string());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (h, d, body, discovery) = (h.clone(), d.clone(), body.clone(), discovery.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let doc = if req.uri().path() == "/.well-known/openid-configuration" {
                            discovery.clone()
                        } else {
                            body.clone()
                        };
                        let mut r = http::Response::new(Full::new(doc));
                        if d.load(Ordering::SeqCst) {
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        JwksServer { url: format!("http://{addr}/jwks.json"), issuer_url: format!("http://{addr}"), hits, down }
    }
}
