//! The front door's request checks, before routing: message framing and
//! request-target rules that hyper leaves to the application, and the
//! `[limits]` a request head must fit.
//!
//! hyper already refuses most malformed HTTP/1.1 (bad request lines,
//! header syntax, chunk framing, too many headers, oversized heads). What it
//! accepts and a gateway must not forward, because a server behind it could
//! read the message differently (request smuggling), is refused here:
//!
//! * `Content-Length` together with `Transfer-Encoding`, and several
//!   `Content-Length` fields even when equal (hyper resolves both silently;
//!   [`crate::listen::sniff`] sees them on the wire, and like Envoy the gateway
//!   refuses the message), any `Transfer-Encoding` but a
//!   single `chunked` (400 when `chunked` is not last, RFC 9112 §6.3; 501
//!   for a coding before it, §6.1);
//! * a missing, repeated or malformed `Host` on HTTP/1.1 (RFC 9112 §3.2),
//!   userinfo or an invalid port in an absolute-form target, a target that
//!   is neither origin-form nor absolute-form (`*` outside `OPTIONS`,
//!   authority-form outside `CONNECT`, `//host/path`), and `CONNECT`
//!   itself, which the gateway does not tunnel;
//! * a request target longer than `[limits] max_uri_bytes` (414) and a
//!   declared body larger than `max_request_body` (413).
//!
//! Each refusal closes the connection (`Connection: close`): after a framing
//! error nothing later on the same connection can be trusted.

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Version};

use crate::error::ProxyError;
use weir_config::LimitsConfig;

/// Check a request head; `Err` says why it is refused.
pub(crate) fn check(parts: &Parts, limits: &LimitsConfig) -> Result<(), ProxyError> {
    let malformed = |why: &str| Err(ProxyError::Malformed(why.to_owned()));
    let h = &parts.headers;

    // What hyper resolved silently, as the sniffer saw it on the wire.
    if let Some(why) = parts.extensions.get::<Verdict>().and_then(|v| v.refusal()) {
        return malformed(why);
    }

    // Framing.
    let lengths = h.get_all(header::CONTENT_LENGTH).iter().count();
    let codings = h.get_all(header::TRANSFER_ENCODING).iter().count();
    if lengths > 0 && codings > 0 {
        return malformed("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return malformed("more than one Content-Length");
    }
    if codings > 0 {
        if parts.version == Version::HTTP_10 {
            return malformed("Transfer-Encoding in an HTTP/1.0 request");
        }
        transfer_coding(h)?;
    }
    if let Some(v) = h.get(header::CONTENT_LENGTH) {
        let text = v.to_str().map_err(|_| ProxyError::Malformed("invalid Content-Length".into()))?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return malformed("invalid Content-Length");
        }
        match text.parse::<u64>() {
            Ok(n) if n > limits.max_request_body => {
                return Err(ProxyError::RequestBodyTooLarge(limits.max_request_body));
            }
            Ok(_) => {}
            Err(_) => return malformed("invalid Content-Length"),
        }
    }

    // The request target.
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if target_len as u64 > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong(limits.max_uri_bytes));
    }
    if parts.method == Method::CONNECT {
        return Err(ProxyError::Unsupported("CONNECT is not supported: the gateway does not tunnel".into()));
    }
    let path = parts.uri.path();
    if parts.uri.scheme().is_none() && parts.uri.authority().is_some() {
        return malformed("authority-form target outside CONNECT");
    }
    if path == "*" && parts.method != Method::OPTIONS {
        return malformed("asterisk-form target outside OPTIONS");
    }
    if path != "*" && (!path.starts_with('/') || path.starts_with("//")) {
        return malformed("the target is not an absolute path");
    }
    if let Some(a) = parts.uri.authority() {
        authority(a.as_str(), "target")?;
    }

    // Host (HTTP/1.x; HTTP/2 carries :authority in the URI).
    if parts.version <= Version::HTTP_11 {
        let mut hosts = h.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) if parts.version == Version::HTTP_11 => return malformed("HTTP/1.1 request without Host"),
            (None, _) => {}
            (Some(host), None) => {
                let host = host.to_str().map_err(|_| ProxyError::Malformed("invalid Host".into()))?;
                authority(host, "Host")?;
            }
            (Some(_), Some(_)) => return malformed("more than one Host"),
        }
    }
    Ok(())
}

/// Only `Transfer-Encoding: chunked`, once, is accepted.
fn transfer_coding(h: &HeaderMap) -> Result<(), ProxyError> {
    let all: Vec<&str> = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().map_err(|_| ProxyError::Malformed("invalid Transfer-Encoding".into())))
        .collect::<Result<_, _>>()?;
    if all.len() > 1 {
        return Err(ProxyError::Malformed("more than one Transfer-Encoding".into()));
    }
    let codings: Vec<String> = all[0].split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    if codings.iter().any(String::is_empty) {
        return Err(ProxyError::Malformed("empty transfer coding".into()));
    }
    match codings.as_slice() {
        [only] if only == "chunked" => Ok(()),
        [.., last] if last == "chunked" && !codings[..codings.len() - 1].iter().any(|c| c == "chunked") => {
            Err(ProxyError::Unsupported(format!("transfer coding {:?} is not supported", all[0])))
        }
        _ => Err(ProxyError::Malformed("chunked must be the last transfer coding, once".into())),
    }
}

/// A `host[:port]` with no userinfo and, if present, a valid port.
fn authority(text: &str, what: &str) -> Result<(), ProxyError> {
    let bad = || ProxyError::Malformed(format!("invalid {what} authority"));
    if text.is_empty() || text.contains('@') {
        return Err(bad());
    }
    // The common case, a name or IPv4 address with an optional port, is
    // checked here without parsing (and copying) it as a URI authority.
    let (host, port) = text.rsplit_once(':').unwrap_or((text, ""));
    let plain_host = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if plain_host && (port.is_empty() && !text.ends_with(':') || port.parse::<u16>().is_ok()) {
        return if port.bytes().all(|b| b.is_ascii_digit()) { Ok(()) } else { Err(bad()) };
    }
    let a: http::uri::Authority = text.parse().map_err(|_| bad())?;
    // `Authority::port` hides a port that is not a u16: look at the text.
    let after_host = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    if a.host().is_empty() {
        return Err(bad());
    }
    Ok(())
}

/// What the wire sniffer (`listen::sniff`) found in one request head; the
/// listener attaches it to the request for [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// One framing, or none.
    Clear,
    /// `Content-Length` and `Transfer-Encoding` together.
    LengthAndChunked,
    /// More than one `Content-Length`.
    SeveralLengths,
}

impl Verdict {
    /// Why the request is refused, if it is.
    pub(crate) fn refusal(self) -> Option<&'static str> {
        match self {
            Verdict::Clear => None,
            Verdict::LengthAndChunked => Some("both Content-Length and Transfer-Encoding"),
            Verdict::SeveralLengths => Some("more than one Content-Length"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(line: &str, headers: &[(&str, &str)]) -> Parts {
        let (method, target) = line.split_once(' ').expect("method and target");
        let mut b = http::Request::builder().method(method).uri(target).version(Version::HTTP_11);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn verdict(p: &Parts) -> u16 {
        match check(p, &LimitsConfig::default()) {
            Ok(()) => 200,
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn framing_rules() {
        let host = ("host", "gw");
        assert_eq!(verdict(&parts("POST /a", &[host, ("content-length", "5")])), 200);
        assert_eq!(verdict(&parts("POST /a", &[host, ("transfer-encoding", "chunked")])), 200);
        assert_eq!(verdict(&parts("POST /a", &[host, ("transfer-encoding", "Chunked")])), 200);
        assert_eq!(verdict(&parts("POST /a", &[host, ("content-length", "5"), ("transfer-encoding", "chunked")])), 400);
        assert_eq!(verdict(&parts("POST /a", &[host, ("content-length", "5"), ("content-length", "5")])), 400);
        assert_eq!(verdict(&parts("POST /a", &[host, ("transfer-encoding", "gzip, chunked")])), 501);
        assert_eq!(verdict(&parts("POST /a", &[host, ("transfer-encoding", "chunked, chunked")])), 400);
        assert_eq!(verdict(&parts("POST /a", &[host, ("transfer-encoding", ",chunked")])), 400);
        assert_eq!(
            verdict(&parts("POST /a", &[host, ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")])),
            400
        );
        assert_eq!(verdict(&parts("POST /a", &[host, ("content-length", "+5")])), 400);
        assert_eq!(verdict(&parts("POST /a", &[host, ("content-length", "1099511627776")])), 413);
    }

    #[test]
    fn target_and_host_rules() {
        let host = ("host", "gw");
        assert_eq!(verdict(&parts("GET /a", &[])), 400, "no Host on HTTP/1.1");
        assert_eq!(verdict(&parts("GET /a", &[host, ("host", "gw")])), 400);
        assert_eq!(verdict(&parts("GET /a", &[("host", "user@gw")])), 400);
        assert_eq!(verdict(&parts("GET /a", &[("host", "gw:99999")])), 400);
        assert_eq!(verdict(&parts("GET /a", &[("host", "gw:8080")])), 200);
        assert_eq!(verdict(&parts("GET http://gw:99999/", &[host])), 400);
        assert_eq!(verdict(&parts("GET http://gw/x", &[host])), 200);
        assert_eq!(verdict(&parts("GET *", &[host])), 400);
        assert_eq!(verdict(&parts("OPTIONS *", &[host])), 200);
        assert_eq!(verdict(&parts("GET gw:80", &[host])), 400);
        assert_eq!(verdict(&parts("CONNECT gw:443", &[host])), 501);
        let long = format!("GET /{}", "a".repeat(9000));
        assert_eq!(verdict(&parts(&long, &[host])), 414);
    }
}
