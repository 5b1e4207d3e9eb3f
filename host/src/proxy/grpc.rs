//! gRPC at the gateway: requests are recognised by their content type and
//! proxied untouched over HTTP/2 (trailers included); what the gateway
//! adds is what a gRPC client can understand.
//!
//! - `grpc-timeout` bounds the upstream call (it replaces the upstream's
//!   `timeout`), and a call past it answers `DEADLINE_EXCEEDED`.
//! - A plugin's own reply, or a gateway error, on a gRPC request becomes a
//!   gRPC error: HTTP 200 with `grpc-status` and `grpc-message` in a
//!   Trailers-Only response, never an HTTP error page a gRPC client cannot
//!   read.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::body::{self, ProxyBody};

/// gRPC status codes the gateway answers with.
pub(crate) mod code {
    /// The caller gave up.
    pub(crate) const CANCELLED: u32 = 1;
    /// Unknown error.
    pub(crate) const UNKNOWN: u32 = 2;
    /// A bad request.
    pub(crate) const INVALID_ARGUMENT: u32 = 3;
    /// The deadline passed.
    pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
    /// Not allowed.
    pub(crate) const PERMISSION_DENIED: u32 = 7;
    /// Out of quota.
    pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;
    /// Conflict.
    pub(crate) const ABORTED: u32 = 10;
    /// No such method.
    pub(crate) const UNIMPLEMENTED: u32 = 12;
    /// A bug.
    pub(crate) const INTERNAL: u32 = 13;
    /// Try again later.
    pub(crate) const UNAVAILABLE: u32 = 14;
    /// No valid credentials.
    pub(crate) const UNAUTHENTICATED: u32 = 16;
}

/// Whether a request (or response) is gRPC: `content-type:
/// application/grpc`, `application/grpc+proto`, ...
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The call's deadline from `grpc-timeout` (`1-8 digits` then `H`, `M`,
/// `S`, `m`, `u` or `n`); `None` when absent or malformed.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an HTTP status the gateway (or a plugin) answered
/// with. Follows gRPC's HTTP mapping where it has one, and the meaning of
/// the status where it maps to "unknown": a plugin answering `400`, `403`
/// or `429` means invalid argument, permission denied and out of quota.
pub(crate) fn code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 | 413 | 414 | 431 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 | 501 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        409 => code::ABORTED,
        429 => code::RESOURCE_EXHAUSTED,
        499 => code::CANCELLED,
        500 => code::INTERNAL,
        502 | 503 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// Bytes `grpc-message` percent-encodes: everything outside printable
/// ASCII, and `%`.
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// A Trailers-Only gRPC error: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message` in the only HEADERS frame. `extra`
/// headers (say a plugin's `www-authenticate` or `retry-after`) go along as
/// metadata.
pub(crate) fn error(code: u32, message: &str, extra: &HeaderMap) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    for (name, value) in extra {
        let framing = matches!(name.as_str(), "content-length" | "content-type" | "transfer-encoding");
        if !framing && !name.as_str().starts_with("grpc-") {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    let message: String = utf8_percent_encode(message, MESSAGE).collect();
    if let Ok(v) = HeaderValue::try_from(message) {
        h.insert("grpc-message", v);
    }
    resp
}

/// A reply the gateway made itself (a plugin's, or an error) turned into a
/// gRPC error, keeping a `grpc-status` the reply already has.
pub(crate) fn from_reply(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Response<ProxyBody> {
    let given = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
    let message = match headers.get("grpc-message").and_then(|v| v.to_str().ok()) {
        Some(m) => m.to_owned(),
        None => message_of(status, body),
    };
    error(given.unwrap_or_else(|| code_for(status)), &message, headers)
}

/// The message for a reply: the `error` of a JSON error body, else the
/// body if it is short text, else the status's reason.
fn message_of(status: StatusCode, body: &[u8]) -> String {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(e) = doc.get("error").and_then(|e| e.as_str())
    {
        return e.to_owned();
    }
    match std::str::from_utf8(body) {
        Ok(text) if !text.trim().is_empty() && text.len() <= 512 => text.trim().to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn content_types() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/GRPC;charset=x", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&headers(&[("content-type", ct)])), grpc, "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn replies_become_trailers_only_errors() {
        let resp = from_reply(
            StatusCode::UNAUTHORIZED,
            &headers(&[("www-authenticate", "Bearer"), ("content-length", "9")]),
            b"no token\xff",
        );
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "16");
        assert_eq!(h["grpc-message"], "Unauthorized", "binary bodies give the reason");
        assert_eq!(h["www-authenticate"], "Bearer");
        assert!(!h.contains_key("content-length"));

        let json = br#"{"error":"rate limit exceeded: 100% used","source":"plugin"}"#;
        let resp = from_reply(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), json);
        assert_eq!(resp.headers()["grpc-status"], "8");
        assert_eq!(resp.headers()["grpc-message"], "rate limit exceeded: 100%25 used");

        let own = headers(&[("grpc-status", "5"), ("grpc-message", "no such order")]);
        let resp = from_reply(StatusCode::NOT_FOUND, &own, b"");
        assert_eq!(
            (resp.headers()["grpc-status"].as_bytes(), resp.headers()["grpc-message"].as_bytes()),
            (&b"5"[..], &b"no such order"[..])
        );
    }
}
