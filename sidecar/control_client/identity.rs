//! The sidecar's workload identity: its own key pair and a certificate for
//! its SPIFFE ID from control's CA (`redfire.identity.v1`).
//!
//! The key is generated here and never leaves the process (or, with
//! `identity_key_file`, the file it is kept in across restarts: a bootstrap
//! token certifies one key, so a restarted sidecar can bring its token back
//! only with the same key). The first certificate is obtained with a
//! bootstrap token; afterwards the sidecar
//! renews at 70 % of the certificate's lifetime, authenticating with the
//! current certificate. While renewal fails it keeps serving on the current
//! certificate and retries with jittered backoff; once that certificate has
//! expired it publishes `None`, so the TLS layers fail closed instead of
//! presenting an expired identity, and it keeps trying (the bootstrap token
//! is the fallback credential then).
//!
//! The data path reads the current [`Credentials`] from a `watch` channel:
//! rotation is a pointer swap, never a lock on the hot path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::proto::identity::v1 as pb;
use crate::proto::identity::v1::identity_client::IdentityClient;
use crate::sidecar::transport::control::ControlTarget;
use crate::sidecar::transport::credentials::{Credentials, CredentialsRx};

/// Where and how to get certificates.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Control: its address and the roots its certificate chains to.
    pub control: ControlTarget,
    /// Bootstrap token from `redfire-control token create`.
    pub bootstrap_token: String,
    /// Requested lifetime; `None` takes the CA's default.
    pub lifetime: Option<Duration>,
    /// Fraction of the lifetime after which to renew (0.7).
    pub renew_at: f64,
    /// Longest wait between retries of a failed issuance.
    pub max_backoff: Duration,
    /// Where the key is kept across restarts (`None`: a new key each start).
    pub key_file: Option<std::path::PathBuf>,
}

impl IdentityConfig {
    /// Defaults: renew at 70 %, retry at most every 10 s.
    pub fn new(control: ControlTarget, bootstrap_token: impl Into<String>) -> Self {
        IdentityConfig {
            control,
            bootstrap_token: bootstrap_token.into(),
            lifetime: None,
            renew_at: 0.7,
            max_backoff: Duration::from_secs(10),
            key_file: None,
        }
    }
}

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Control could not be reached or refused the request.
    #[error("identity: {0}")]
    Control(#[from] tonic::Status),
    /// Control's address is malformed.
    #[error("identity: control address: {0}")]
    Address(String),
    /// The answer could not be used.
    #[error("identity: bad answer from control: {0}")]
    Answer(String),
    /// Key or CSR generation failed.
    #[error("identity: {0}")]
    Key(#[from] rcgen::Error),
    /// The key file could not be read or written.
    #[error("identity_key_file: {0}")]
    KeyFile(String),
}

/// Starts the issuance and renewal task.
pub fn spawn(config: IdentityConfig) -> Result<(CredentialsRx, tokio::task::JoinHandle<()>), IdentityError> {
    let key = match &config.key_file {
        Some(path) => load_or_create_key(path)?,
        None => KeyPair::generate()?,
    };
    let endpoint = config
        .control
        .endpoint()
        .map_err(IdentityError::Address)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect_lazy();
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(config, key, IdentityClient::new(channel), tx));
    Ok((rx, task))
}

async fn run(
    config: IdentityConfig,
    key: KeyPair,
    mut client: IdentityClient<Channel>,
    tx: watch::Sender<Option<Arc<Credentials>>>,
) {
    let mut failures = 0u32;
    loop {
        let current = tx.borrow().clone();
        let wake = match &current {
            None => SystemTime::now(),
            Some(c) => c.renew_time(config.renew_at),
        };
        sleep_until(wake).await;
        match issue(&config, &key, &mut client, current.as_deref()).await {
            Ok(creds) => {
                tracing::info!(spiffe_id = %creds.spiffe_id, not_after = ?creds.not_after, "workload certificate issued");
                failures = 0;
                tx.send_replace(Some(Arc::new(creds)));
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(failures, config.max_backoff);
                tracing::warn!(error = %e, retry_in = ?delay, "certificate issuance failed; keeping the current certificate");
                // Fail closed at expiry, even in the middle of a backoff.
                let expiry = current.as_ref().map(|c| c.not_after);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sleep_until_opt(expiry) => {}
                }
                if let Some(c) = current.as_ref()
                    && SystemTime::now() >= c.not_after
                {
                    tracing::error!(
                        "workload certificate expired without renewal; refusing mTLS until control answers"
                    );
                    tx.send_replace(None);
                }
            }
        }
    }
}

/// One issuance: a CSR for our key, with the current certificate when it is
/// still valid, else the bootstrap token.
async fn issue(
    config: &IdentityConfig,
    key: &KeyPair,
    client: &mut IdentityClient<Channel>,
    current: Option<&Credentials>,
) -> Result<Credentials, IdentityError> {
    let csr_pem = CertificateParams::new(Vec::<String>::new())?.serialize_request(key)?.pem()?;
    use pb::issue_certificate_request::Credential;
    let credential = match current {
        Some(c) if SystemTime::now() < c.not_after => Credential::CurrentCertificatePem(c.chain_pem.clone()),
        _ => Credential::BootstrapToken(config.bootstrap_token.clone()),
    };
    let lifetime_s = config.lifetime.map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32).unwrap_or(0);
    let r = client
        .issue_certificate(pb::IssueCertificateRequest { csr_pem, credential: Some(credential), lifetime_s })
        .await?
        .into_inner();
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    Credentials::from_pem(
        r.certificate_chain_pem,
        PrivatePkcs8KeyDer::from(key.serialize_der()),
        &r.trust_bundle_pem,
        r.spiffe_id,
        (at(r.not_before_unix_ms), at(r.not_after_unix_ms)),
    )
}

impl Credentials {
    /// Assembles credentials from a PEM chain (leaf first), the key, a PEM
    /// trust bundle, the identity and the validity (not before, not after).
    pub fn from_pem(
        chain_pem: String,
        key: PrivatePkcs8KeyDer<'static>,
        bundle_pem: &str,
        spiffe_id: String,
        (not_before, not_after): (SystemTime, SystemTime),
    ) -> Result<Credentials, IdentityError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError::Answer(format!("certificate chain: {e}")))?;
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| IdentityError::Answer(format!("trust bundle: {e}")))?;
        if chain.is_empty() || roots.is_empty() {
            return Err(IdentityError::Answer("empty certificate chain or trust bundle".into()));
        }
        Ok(Credentials { chain, chain_pem, key, roots, spiffe_id, not_before, not_after, received: SystemTime::now() })
    }
}

/// The key kept at `path`, or a new one written there first (mode 0600,
/// atomically: a temporary file renamed into place).
fn load_or_create_key(path: &std::path::Path) -> Result<KeyPair, IdentityError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| IdentityError::KeyFile(format!("{}: {what}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(pem) => return KeyPair::from_pem(&pem).map_err(|e| fail("not a PEM private key", &e)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail("read", &e)),
        Err(_) => {}
    }
    let key = KeyPair::generate()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail("create its directory", &e))?;
    }
    let tmp = path.with_extension(format!("tmp-{:x}", fastrand::u64(..)));
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path))
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", &e));
    }
    Ok(key)
}

/// Full-jitter exponential backoff: 100 ms × 2^n, capped.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_millis(100).saturating_mul(1 << failures.min(16)).min(cap);
    ceiling.mul_f64(fastrand::f64().max(0.1))
}

async fn sleep_until(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(d).await;
    }
}

async fn sleep_until_opt(t: Option<SystemTime>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let cap = Duration::from_secs(10);
        for n in 0..40 {
            let d = backoff(n, cap);
            assert!(d <= cap, "{d:?}");
        }
        assert!(backoff(1, cap) <= Duration::from_millis(200));
    }

    #[test]
    fn renews_at_seventy_percent() {
        let start = UNIX_EPOCH + Duration::from_secs(1000);
        let c = Credentials {
            chain: vec![],
            chain_pem: String::new(),
            key: PrivatePkcs8KeyDer::from(vec![]),
            roots: vec![],
            spiffe_id: String::new(),
            not_before: start - Duration::from_secs(300),
            not_after: start + Duration::from_secs(100),
            received: start,
        };
        assert_eq!(c.renew_time(0.7), start + Duration::from_secs(70));
    }
}
