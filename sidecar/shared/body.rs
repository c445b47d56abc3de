//! Body adapters shared by both directions.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use crate::sidecar::{Body, BoxError};

/// Drops empty DATA frames. They carry nothing, and h2 closes a connection
/// that receives more than 100 of them (a flood defence), so forwarding an
/// app's empty frames would get a shared sidecar connection closed.
#[derive(Debug)]
pub struct NonEmpty(pub Body);

impl hyper::body::Body for NonEmpty {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(Bytes::is_empty) => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn empty_data_frames_are_dropped_and_the_rest_kept() {
        let frames = vec![Frame::data(Bytes::new()), Frame::data(Bytes::from_static(b"x")), Frame::data(Bytes::new())];
        let source = StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok::<_, BoxError>))).boxed_unsync();
        let mut body = NonEmpty(source);
        let mut seen = Vec::new();
        while let Some(f) = body.frame().await {
            seen.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(seen, vec![Bytes::from_static(b"x")]);
    }
}
