//! The accept loop of every admin port (control's and the sidecar's): plain
//! HTTP/1.1, one task per connection, answers computed without I/O.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An HTTP/1.1 accept loop for admin ports: `handle` answers each request
/// (no I/O of its own), header reads time out after 10 s, `stop` ends it.
pub async fn serve_http1<F>(listener: TcpListener, handle: F, stop: impl std::future::Future<Output = ()>)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = handle(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}
