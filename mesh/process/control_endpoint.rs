//! How every client reaches control's gRPC API (the sidecar, in-process
//! embedders, tests, benches): an endpoint for control's URL that, for
//! `https://`, verifies control's certificate against the mesh trust bundle,
//! the server name being the URL's host (a DNS name or IP in `tls_names`).
//! Errors name the client settings they come from (`control_addr`,
//! `control_ca_file`).

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// An endpoint for `url`: plaintext for `http://`; for `https://`, TLS
/// trusting exactly the roots of `trust_bundle` (PEM), which it requires.
pub fn endpoint(url: &str, trust_bundle: Option<&str>) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(url.to_string()).map_err(|e| format!("control_addr: {e}"))?;
    if !url.starts_with("https://") {
        return Ok(ep);
    }
    let pem = trust_bundle.ok_or("control_ca_file: needed to verify an https:// control_addr")?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("control_ca_file: no PEM certificate in the trust bundle".into());
    }
    let host = server_name(ep.uri()).to_string();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(host);
    ep.tls_config(tls).map_err(|e| format!("control_addr: {e}"))
}

/// The name control's certificate is checked against: the URL's host, an
/// IPv6 address without its brackets.
pub fn server_name(uri: &http::Uri) -> &str {
    uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']')
}

/// Adds `authorization: Bearer <token>` to every call: how an operator's
/// client (an operator token from `redfire-control token operator`)
/// authenticates to control. Without a token it adds nothing (a workload's
/// client authenticates with its certificate).
#[derive(Debug, Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// The interceptor for `token` (`None`: none).
    pub fn new<'a>(token: impl Into<Option<&'a str>>) -> Result<BearerToken, String> {
        let Some(token) = token.into() else { return Ok(BearerToken(None)) };
        format!("Bearer {}", token.trim())
            .parse()
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| "operator token: not a printable ASCII string".to_string())
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel whose calls carry an operator token.
pub type OperatorChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;
