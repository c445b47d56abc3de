//! The tower layer in front of every gRPC service of control: each call is
//! admitted by [`Authz::admit`] (the caller and its rule go on with the
//! request as [`super::Admitted`]) or answered with the refusal right here,
//! before any service sees it.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};

use super::Authz;
use super::caller::{TlsConnInfo, Workload};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AuthzLayer(pub Arc<Authz>);

impl<S> tower_layer::Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;

    fn layer(&self, inner: S) -> AuthzService<S> {
        AuthzService { inner, authz: self.0.clone() }
    }
}

/// The layer's service.
#[derive(Debug, Clone)]
pub struct AuthzService<S> {
    inner: S,
    authz: Arc<Authz>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for AuthzService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let workload: Option<&Arc<Workload>> = req.extensions().get::<TlsConnInfo>().and_then(|c| c.workload.as_ref());
        match self.authz.admit(req.uri().path(), req.headers(), workload) {
            Ok(admitted) => {
                req.extensions_mut().insert(admitted);
                Either::Left(self.inner.call(req))
            }
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}
