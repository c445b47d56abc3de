//! `redfire.identity.v1.Identity`: the gRPC boundary of the CA.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use rcgen::{CertificateSigningRequestParams, PublicKeyData};
use tonic::{Request, Response, Status};

use super::ca::Ca;
use super::redeem::Redemptions;
use crate::control::authz::token::Verifier;
use crate::control::authz::{Admitted, Authz};
use crate::control::metrics::Metrics;
use crate::proto::identity::v1 as pb;
use crate::proto::identity::v1::identity_server::Identity;

/// Largest CSR accepted, in bytes of PEM.
const MAX_CSR: usize = 16 * 1024;

/// The service.
#[derive(Debug)]
pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Verifier,
    redemptions: Redemptions,
    authz: Arc<Authz>,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    /// A service issuing from `ca`, recording bootstrap token redemptions in
    /// `redemptions`.
    pub fn new(
        ca: Arc<Ca>,
        redemptions: Redemptions,
        authz: Arc<Authz>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let tokens = Verifier::new(&*ca)?;
        Ok(IdentityService { ca, tokens, redemptions, authz, metrics })
    }

    async fn issue(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<pb::IssueCertificateResponse, Status> {
        let req = request.get_ref();
        if req.csr_pem.len() > MAX_CSR {
            return Err(Status::invalid_argument(format!(
                "csr_pem: {} bytes, over the {MAX_CSR}-byte limit",
                req.csr_pem.len()
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(&req.csr_pem).map_err(|e| {
            Status::invalid_argument(format!("csr_pem: not a valid, self-signed PKCS#10 request ({e})"))
        })?;
        use pb::issue_certificate_request::Credential;
        let (spiffe_id, grant) = match &req.credential {
            Some(Credential::BootstrapToken(t)) => {
                let grant = self.tokens.bootstrap(t).map_err(Status::unauthenticated)?;
                (grant.spiffe_id.clone(), Some(grant))
            }
            Some(Credential::CurrentCertificatePem(c)) => {
                (self.ca.verify_current(c, &csr).map_err(Status::unauthenticated)?, None)
            }
            None => {
                return Err(Status::unauthenticated(
                    "credential: missing; send bootstrap_token or current_certificate_pem",
                ));
            }
        };
        let lifetime = match req.lifetime_s {
            0 => self.ca.leaf_lifetime(),
            s if s < 10 => return Err(Status::invalid_argument(format!("lifetime_s: {s} is under 10"))),
            s => Duration::from_secs(u64::from(s)),
        };
        // Every name the CSR asks for (a non-URI name is never granted).
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                rcgen::SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        self.authz.identity(Admitted::of(&request), &spiffe_id, &requested)?;
        if let Some(grant) = &grant {
            let key = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, csr.public_key.der_bytes());
            let fingerprint: String = key.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            self.redemptions.redeem(grant, &fingerprint).await.map_err(|e| match e {
                super::redeem::Refused::Used(_) => Status::unauthenticated(e.to_string()),
                super::redeem::Refused::Unavailable(_) => Status::unavailable(e.to_string()),
            })?;
        }
        let leaf = self.ca.issue(&csr, &spiffe_id, lifetime).map_err(Status::internal)?;
        tracing::info!(%spiffe_id, not_after = ?leaf.not_after, "issued a workload certificate");
        let ms = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Ok(pb::IssueCertificateResponse {
            certificate_chain_pem: leaf.chain_pem,
            trust_bundle_pem: self.ca.bundle_pem().to_string(),
            spiffe_id,
            not_before_unix_ms: ms(leaf.not_before),
            not_after_unix_ms: ms(leaf.not_after),
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        let started = Instant::now();
        let r = self.issue(req).await.map(Response::new);
        let code = r.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code());
        self.metrics.rpc("IssueCertificate", code, Some(started.elapsed()));
        r
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        self.metrics.rpc("GetTrustBundle", tonic::Code::Ok, None);
        Ok(Response::new(pb::GetTrustBundleResponse {
            trust_bundle_pem: self.ca.bundle_pem().to_string(),
            trust_domain: self.ca.trust_domain().to_string(),
        }))
    }
}
