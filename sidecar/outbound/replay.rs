//! A request body that can be sent again: each attempt streams the body
//! while a copy of what has passed is kept, up to the 64 KiB retry buffer. A
//! retry replays the copy, then continues with the rest of the original. A
//! body larger than the buffer streams on but can no longer be retried.
//! Attempts are sequential, so only one attempt reads the original at a time.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use crate::sidecar::outbound::retry::RETRY_BUFFER_BYTES;
use crate::sidecar::{Body, BoxError};

#[derive(Debug)]
struct Shared {
    source: Body,
    frames: Vec<Frame<Bytes>>,
    buffered: usize,
    overflowed: bool,
    done: bool,
}

/// The original body, shared by every attempt.
#[derive(Debug, Clone)]
pub struct Replay(Arc<Mutex<Shared>>);

impl Replay {
    /// Wraps the app's request body.
    pub fn new(source: Body) -> Self {
        Replay(Arc::new(Mutex::new(Shared { source, frames: Vec::new(), buffered: 0, overflowed: false, done: false })))
    }

    /// A body for the next attempt, starting from the beginning.
    pub fn attempt(&self) -> ReplayBody {
        ReplayBody { shared: self.0.clone(), next: 0 }
    }

    /// True while everything read so far is still held (a retry can resend it).
    pub fn replayable(&self) -> bool {
        !self.0.lock().unwrap_or_else(|e| e.into_inner()).overflowed
    }
}

/// One attempt's view of the body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    next: usize,
}

fn copy(frame: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = frame.data_ref() {
        return Some(Frame::data(d.clone()));
    }
    frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
}

impl hyper::body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !s.overflowed && this.next < s.frames.len() {
            let f = copy(&s.frames[this.next]);
            this.next += 1;
            if let Some(f) = f {
                return Poll::Ready(Some(Ok(f)));
            }
        }
        if s.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Knowing the end now lets hyper put END_STREAM on this very
                // frame instead of sending an extra empty DATA frame.
                if s.source.is_end_stream() {
                    s.done = true;
                }
                if !s.overflowed {
                    s.buffered += frame.data_ref().map(Bytes::len).unwrap_or(0);
                    if s.buffered > RETRY_BUFFER_BYTES {
                        s.overflowed = true;
                        s.frames = Vec::new();
                    } else if let Some(c) = copy(&frame) {
                        s.frames.push(c);
                        this.next = s.frames.len();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.done && (s.overflowed || self.next >= s.frames.len())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if s.overflowed || self.next >= s.frames.len() {
            return s.source.size_hint();
        }
        // Replaying: what is held, plus whatever the original still has.
        let held: u64 = s.frames[self.next..].iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let rest = s.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(held + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(held + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Body as _;

    fn body(chunks: Vec<Bytes>) -> Body {
        let frames = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(c))));
        StreamBody::new(frames).boxed_unsync()
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_read_then_the_rest() {
        let replay = Replay::new(body(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]));
        let mut first = replay.attempt();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "ab");
        assert!(!first.is_end_stream());
        drop(first); // the attempt failed after sending "ab"
        assert!(replay.replayable());
        let all = replay.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcd");
        let again = replay.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(again, "abcd", "a third attempt sees the whole body too");
    }

    #[tokio::test]
    async fn the_last_frame_is_known_as_the_end() {
        let replay = Replay::new(Full::new(Bytes::from_static(b"0123456789")).map_err(|n| match n {}).boxed_unsync());
        let mut body = replay.attempt();
        assert_eq!(body.size_hint().exact(), Some(10));
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream(), "END_STREAM can ride on the data frame");
        let mut again = replay.attempt();
        assert_eq!(again.size_hint().exact(), Some(10));
        again.frame().await.unwrap().unwrap();
        assert!(again.is_end_stream());
    }

    #[tokio::test]
    async fn a_body_over_the_buffer_streams_but_is_not_replayable() {
        let big = Bytes::from(vec![7u8; RETRY_BUFFER_BYTES + 1]);
        let replay = Replay::new(Full::new(big.clone()).map_err(|n| match n {}).boxed_unsync());
        let got = replay.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(got, big);
        assert!(!replay.replayable());
    }
}
