//! Header rules at the proxy boundary: hop-by-hop headers (RFC 9110 §7.6.1),
//! forwarding headers and request ids. What plugins may not touch is the
//! plugin host's rule (`weir_plugin_host::heads`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use weir_plugin_host::ConnectionTls;
use weir_plugin_host::heads::HOP_BY_HOP;

/// Remove hop-by-hop headers, including those named in `Connection`.
/// One pass over the names in the common case (no hop-by-hop header at
/// all), instead of a lookup per hop-by-hop name.
///
/// `TE: trailers` is the exception, as in Envoy: gRPC needs it end to end
/// (a gRPC server may refuse a request without it), and it promises only
/// what the gateway does anyway, pass trailers on. Any other `TE` value is
/// dropped.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers.keys().any(|n| HOP_BY_HOP.contains(&n.as_str()));
    if !present {
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The `x-forwarded-client-cert` value (Envoy's format), when the client
/// presented a certificate.
pub(crate) fn client_cert(tls: &ConnectionTls) -> Option<String> {
    let subject = tls.client_subject.as_ref()?;
    let hash = tls.client_cert_sha256.as_deref().unwrap_or_default();
    Some(format!("Hash={hash};Subject=\"{}\"", subject.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// Header names the gateway sets on every request, parsed once (a name
/// given as `&str` is parsed and hashed again on every use).
pub(crate) mod names {
    use http::HeaderName;

    /// `x-request-id`
    pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `x-forwarded-for`
    pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    /// `x-forwarded-proto`
    pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    /// `x-forwarded-host`
    pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    /// `x-forwarded-client-cert`
    pub(crate) const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
    /// `traceparent`
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
}

/// Add `X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded` for the hop from
/// `client` to us; `proto` is `http` or `https` (the TLS listener).
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, host: &str, proto: &'static str) {
    // One buffer for the address, then each value built in place.
    let mut buf = String::with_capacity(48);
    push_ip(&mut buf, client);
    let ip_len = buf.len();
    let xff = match headers.get(&names::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            let mut v = String::with_capacity(prev.len() + 2 + ip_len);
            v.push_str(prev);
            v.push_str(", ");
            v.push_str(&buf);
            HeaderValue::try_from(v)
        }
        _ => HeaderValue::try_from(buf.as_str()),
    };
    if let Ok(v) = xff {
        headers.insert(names::X_FORWARDED_FOR, v);
    }
    headers.insert(names::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if !headers.contains_key(&names::X_FORWARDED_HOST)
        && let Ok(v) = HeaderValue::try_from(host)
    {
        headers.insert(names::X_FORWARDED_HOST, v);
    }
    let mut elem = String::with_capacity(32 + host.len());
    elem.push_str("for=");
    if client.is_ipv6() {
        elem.push_str("\"[");
        elem.push_str(&buf);
        elem.push_str("]\"");
    } else {
        elem.push_str(&buf);
    }
    elem.push_str(";proto=");
    elem.push_str(proto);
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',') {
        elem.push_str(";host=");
        elem.push_str(host);
    }
    if let Ok(v) = HeaderValue::try_from(elem) {
        headers.append(header::FORWARDED, v);
    }
}

/// Append `ip` in its usual text form; IPv4 without the formatting
/// machinery (it runs on every request).
fn push_ip(buf: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                if octet >= 100 {
                    buf.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    buf.push(char::from(b'0' + (octet / 10) % 10));
                }
                buf.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(buf, "{v6}");
        }
    }
}

/// `value` as `digits` lower-case hex digits (the low ones), without the
/// formatting machinery: ids are made on every request.
pub(crate) fn hex_id(value: u128, digits: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = digits.min(32);
    let mut buf = [0u8; 32];
    for (i, b) in buf[..digits].iter_mut().rev().enumerate() {
        *b = HEX[((value >> (4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(&buf[..digits]).unwrap_or_default().to_owned()
}

/// The request id: the client's `x-request-id` if it is sane, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(&names::X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return v.to_owned();
    }
    hex_id(fastrand::u128(..), 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_alone_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip, Trailers;q=1"));
        h.insert("connection", HeaderValue::from_static("te"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarding(&mut h, "::1".parse().expect("ip"), "api.example.com", "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http;host=api.example.com");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn ip_text() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.200.9.255", "::1", "2001:db8::7"] {
            let mut buf = String::new();
            push_ip(&mut buf, ip.parse().expect("ip"));
            assert_eq!(buf, ip);
        }
    }

    #[test]
    fn hex_ids() {
        assert_eq!(hex_id(0xab, 4), "00ab");
        assert_eq!(hex_id(u128::MAX, 32), "f".repeat(32));
        assert_eq!(hex_id(0x0123_4567_89ab_cdef, 16), "0123456789abcdef");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(&h));
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }
}
