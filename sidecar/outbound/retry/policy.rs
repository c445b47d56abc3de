//! The retry decision: a pure function of the request's facts, the attempt
//! count and the outcome. The budget and backoff are asked afterwards, by
//! the data path, only when this says [`Decision::Retry`].

use http::{Method, StatusCode};
use tonic::Code;

use super::Outcome;

/// Request bodies up to this size are kept so that they can be sent again;
/// a larger body is streamed through once and its request is not retried.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// A set of gRPC codes, one bit per code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCodes(u32);

impl GrpcCodes {
    /// The set of `codes`.
    pub fn new(codes: &[Code]) -> Self {
        GrpcCodes(codes.iter().fold(0, |set, &code| set | Self::bit(code)))
    }

    /// Whether `code` is in the set.
    pub fn contains(self, code: Code) -> bool {
        self.0 & Self::bit(code) != 0
    }

    fn bit(code: Code) -> u32 {
        // Codes are 0..=16; `Code` maps anything else to UNKNOWN (2).
        1 << (code as i32 as u32 & 31)
    }
}

impl Default for GrpcCodes {
    /// UNAVAILABLE only: the one code that promises the server did not act
    /// on the request. Others (DEADLINE_EXCEEDED, INTERNAL, ...) may follow
    /// partial work and are opt-in per service.
    fn default() -> Self {
        GrpcCodes::new(&[Code::Unavailable])
    }
}

/// Retry settings of a service or route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (2: one retry).
    pub max_attempts: u32,
    /// gRPC codes that are retried.
    pub retryable_grpc: GrpcCodes,
    /// Retry non-idempotent HTTP methods (POST, PATCH) on 502/503/504 too.
    /// Off by default: the upstream may have acted before failing.
    pub retry_non_idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 2, retryable_grpc: GrpcCodes::default(), retry_non_idempotent: false }
    }
}

/// What the decision needs to know about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryRequest {
    /// Sending it twice has the same effect as once (see [`is_idempotent`];
    /// gRPC methods declared idempotent may set it too).
    pub idempotent: bool,
    /// The whole body fit in the [`RETRY_BUFFER_BYTES`] buffer and can be
    /// sent again.
    pub body_buffered: bool,
    /// Attempts made so far, the one that just ended included.
    pub attempts: u32,
}

impl RetryRequest {
    /// Facts for a request with `method`.
    pub fn new(method: &Method, body_buffered: bool, attempts: u32) -> Self {
        RetryRequest { idempotent: is_idempotent(method), body_buffered, attempts }
    }
}

/// Idempotent methods per RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Whether to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Try again (subject to the budget and after a backoff).
    Retry,
    /// Pass the outcome on to the caller.
    Stop(Stop),
}

/// Why an attempt is not retried (for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The outcome is a success or not a retryable failure.
    NotRetryable,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// The body was too large to keep a copy of.
    BodyNotBuffered,
    /// An HTTP error on a method that is not safe to repeat.
    NotIdempotent,
}

impl RetryPolicy {
    /// Decide whether `request`, whose last attempt ended in `outcome`, is
    /// tried again.
    ///
    /// - A connect failure is retried whatever the method: the request never
    ///   left this sidecar.
    /// - A gRPC code is retried if it is in `retryable_grpc`: listing a code
    ///   says the service does not act on requests it fails with it (gRPC's
    ///   own retry design, where idempotency does not enter).
    /// - HTTP 502, 503 and 504 are retried for idempotent methods, and for
    ///   the others when `retry_non_idempotent` is set.
    pub fn decide(&self, request: &RetryRequest, outcome: &Outcome) -> Decision {
        let needs_idempotent = match outcome {
            Outcome::ConnectFailed => false,
            Outcome::Grpc(code) if self.retryable_grpc.contains(*code) => false,
            Outcome::Http(status) if is_retryable_http(*status) => !self.retry_non_idempotent,
            Outcome::Grpc(_) | Outcome::Http(_) => return Decision::Stop(Stop::NotRetryable),
        };
        if request.attempts >= self.max_attempts {
            Decision::Stop(Stop::AttemptsExhausted)
        } else if !request.body_buffered {
            Decision::Stop(Stop::BodyNotBuffered)
        } else if needs_idempotent && !request.idempotent {
            Decision::Stop(Stop::NotIdempotent)
        } else {
            Decision::Retry
        }
    }
}

/// The gateway and availability errors: a proxy could not reach or get an
/// answer from the app, or the app said it is not ready.
fn is_retryable_http(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GET_FIRST: RetryRequest = RetryRequest { idempotent: true, body_buffered: true, attempts: 1 };
    const POST_FIRST: RetryRequest = RetryRequest { idempotent: false, body_buffered: true, attempts: 1 };

    #[test]
    fn default_retries_unavailable_once() {
        let p = RetryPolicy::default();
        let unavailable = Outcome::Grpc(Code::Unavailable);
        assert_eq!(p.decide(&POST_FIRST, &unavailable), Decision::Retry, "gRPC is POST; the code decides");
        let second = RetryRequest { attempts: 2, ..POST_FIRST };
        assert_eq!(p.decide(&second, &unavailable), Decision::Stop(Stop::AttemptsExhausted));
    }

    #[test]
    fn only_configured_grpc_codes_are_retried() {
        let p = RetryPolicy::default();
        for code in [Code::Ok, Code::DeadlineExceeded, Code::Internal, Code::ResourceExhausted, Code::NotFound] {
            assert_eq!(p.decide(&GET_FIRST, &Outcome::Grpc(code)), Decision::Stop(Stop::NotRetryable), "{code:?}");
        }
        let p = RetryPolicy { retryable_grpc: GrpcCodes::new(&[Code::Internal]), ..p };
        assert_eq!(p.decide(&POST_FIRST, &Outcome::Grpc(Code::Internal)), Decision::Retry);
        assert_eq!(
            p.decide(&POST_FIRST, &Outcome::Grpc(Code::Unavailable)),
            Decision::Stop(Stop::NotRetryable),
            "the configured set replaces the default"
        );
    }

    #[test]
    fn http_gateway_errors_need_an_idempotent_method_unless_configured() {
        let p = RetryPolicy::default();
        for status in [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT] {
            assert_eq!(p.decide(&GET_FIRST, &Outcome::Http(status)), Decision::Retry);
            assert_eq!(p.decide(&POST_FIRST, &Outcome::Http(status)), Decision::Stop(Stop::NotIdempotent));
        }
        let lenient = RetryPolicy { retry_non_idempotent: true, ..p };
        assert_eq!(lenient.decide(&POST_FIRST, &Outcome::Http(StatusCode::BAD_GATEWAY)), Decision::Retry);
        for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::TOO_MANY_REQUESTS] {
            assert_eq!(p.decide(&GET_FIRST, &Outcome::Http(status)), Decision::Stop(Stop::NotRetryable));
        }
    }

    #[test]
    fn connect_failures_retry_any_method_but_need_the_body() {
        let p = RetryPolicy::default();
        assert_eq!(p.decide(&POST_FIRST, &Outcome::ConnectFailed), Decision::Retry);
        let streamed = RetryRequest { body_buffered: false, ..POST_FIRST };
        assert_eq!(p.decide(&streamed, &Outcome::ConnectFailed), Decision::Stop(Stop::BodyNotBuffered));
    }

    #[test]
    fn methods() {
        assert!(RetryRequest::new(&Method::PUT, true, 1).idempotent);
        assert!(!RetryRequest::new(&Method::POST, true, 1).idempotent);
        assert!(!is_idempotent(&Method::PATCH));
    }

    fn any_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::ConnectFailed),
            (0i32..17).prop_map(|c| Outcome::Grpc(Code::from_i32(c))),
            (100u16..600).prop_map(|s| Outcome::Http(StatusCode::from_u16(s).unwrap_or(StatusCode::OK))),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config(256))]

        #[test]
        fn never_retries_past_max_attempts_or_an_unbuffered_body(
            outcome in any_outcome(),
            idempotent: bool,
            body_buffered: bool,
            attempts in 0u32..6,
            max_attempts in 0u32..6,
            retry_non_idempotent: bool,
        ) {
            let p = RetryPolicy { max_attempts, retry_non_idempotent, ..RetryPolicy::default() };
            let d = p.decide(&RetryRequest { idempotent, body_buffered, attempts }, &outcome);
            if d == Decision::Retry {
                prop_assert!(attempts < max_attempts);
                prop_assert!(body_buffered);
                prop_assert!(outcome.is_endpoint_failure(), "{outcome:?} is not a failure");
            }
        }
    }
}
