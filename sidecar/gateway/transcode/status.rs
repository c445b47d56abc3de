//! gRPC status → HTTP status and the JSON error body (pure).
//!
//! The mapping is the standard one (`google.rpc.Code` as documented in
//! googleapis' `code.proto`, the same grpc-gateway uses).

use http::StatusCode;
use percent_encoding::percent_decode_str;

/// The HTTP status for a gRPC status code (unknown codes → 500).
pub fn http_status(code: i32) -> StatusCode {
    let n = match code {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The canonical name of a gRPC status code (`NOT_FOUND`).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// `grpc-message` is percent-encoded on the wire (gRPC over HTTP/2 spec).
pub fn decode_message(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    percent_decode_str(&text).decode_utf8_lossy().into_owned()
}

/// The JSON error body: `{"error":{"code","message","status"}}`.
pub fn error_body(code: &str, message: &str, status: StatusCode) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message, "status": status.as_u16() } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_mapping() {
        let expect = [
            (0, 200, "OK"),
            (1, 499, "CANCELLED"),
            (2, 500, "UNKNOWN"),
            (3, 400, "INVALID_ARGUMENT"),
            (4, 504, "DEADLINE_EXCEEDED"),
            (5, 404, "NOT_FOUND"),
            (6, 409, "ALREADY_EXISTS"),
            (7, 403, "PERMISSION_DENIED"),
            (8, 429, "RESOURCE_EXHAUSTED"),
            (9, 400, "FAILED_PRECONDITION"),
            (10, 409, "ABORTED"),
            (11, 400, "OUT_OF_RANGE"),
            (12, 501, "UNIMPLEMENTED"),
            (13, 500, "INTERNAL"),
            (14, 503, "UNAVAILABLE"),
            (15, 500, "DATA_LOSS"),
            (16, 401, "UNAUTHENTICATED"),
            (99, 500, "UNKNOWN"),
        ];
        for (code, http, name) in expect {
            assert_eq!(http_status(code).as_u16(), http, "{name}");
            assert_eq!(code_name(code), name);
            // Agrees with tonic's numbering.
            if code <= 16 {
                assert_eq!(tonic::Code::from(code) as i32, code);
            }
        }
    }

    #[test]
    fn messages_are_percent_decoded() {
        assert_eq!(decode_message(b"user 7 not found%3A gone %25"), "user 7 not found: gone %");
        assert_eq!(decode_message(b"caf%C3%A9"), "café");
    }
}
