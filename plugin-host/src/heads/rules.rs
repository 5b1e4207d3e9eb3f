//! What a plugin may put in a head: header lists checked whole, and the
//! headers whose value the gateway owns (framing, hop-by-hop).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::bindings::Header;

/// Headers that describe one connection and are never forwarded
/// (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Most headers a plugin may return in one list.
pub const MAX_PLUGIN_HEADERS: usize = 256;
/// Largest total size of a header list a plugin may return.
pub const MAX_PLUGIN_HEADER_BYTES: usize = 64 * 1024;

/// Headers whose value the gateway owns: framing and hop-by-hop. Plugins'
/// values for them are ignored.
pub fn is_gateway_owned(name: &str) -> bool {
    name == "content-length" || HOP_BY_HOP.contains(&name)
}

/// Why a header list from a plugin was refused, as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderListError {
    /// More than [`MAX_PLUGIN_HEADERS`] entries.
    #[error("{0} headers returned, at most {MAX_PLUGIN_HEADERS} allowed")]
    TooMany(usize),
    /// More than [`MAX_PLUGIN_HEADER_BYTES`] in all.
    #[error("headers total {0} bytes, at most {MAX_PLUGIN_HEADER_BYTES} allowed")]
    TooLarge(usize),
    /// A name that is not a header name.
    #[error("invalid header name {0:?}")]
    InvalidName(String),
    /// A value with bytes a header may not hold.
    #[error("invalid value for header {name:?}: {value:?}")]
    InvalidValue {
        /// The header.
        name: String,
        /// The value, lossily as text.
        value: String,
    },
}

/// A header map as the WIT header list.
pub fn to_wit(headers: &HeaderMap) -> Vec<Header> {
    headers.iter().map(|(n, v)| Header { name: n.as_str().to_owned(), value: v.as_bytes().to_vec() }).collect()
}

/// Validate a header list from a plugin and build a map from it, skipping
/// gateway-owned headers. Any invalid name or value rejects the whole list.
pub fn from_plugin(list: Vec<Header>) -> Result<HeaderMap, HeaderListError> {
    if list.len() > MAX_PLUGIN_HEADERS {
        return Err(HeaderListError::TooMany(list.len()));
    }
    let total: usize = list.iter().map(|h| h.name.len() + h.value.len()).sum();
    if total > MAX_PLUGIN_HEADER_BYTES {
        return Err(HeaderListError::TooLarge(total));
    }
    let mut map = HeaderMap::with_capacity(list.len());
    for h in list {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeaderListError::InvalidName(h.name.clone()))?;
        let value = HeaderValue::from_bytes(&h.value).map_err(|_| HeaderListError::InvalidValue {
            name: h.name.clone(),
            value: String::from_utf8_lossy(&h.value).into_owned(),
        })?;
        if is_gateway_owned(name.as_str()) {
            continue;
        }
        map.append(name, value);
    }
    Ok(map)
}

/// The header map that replaces `current` after a plugin returned `list`:
/// the plugin's headers plus the gateway-owned headers of `current` (the
/// framing, and the `TE: trailers` a gRPC call needs).
pub fn with_plugin_headers(current: &HeaderMap, list: Vec<Header>) -> Result<HeaderMap, HeaderListError> {
    let mut new = from_plugin(list)?;
    for name in ["content-length", "transfer-encoding", "te"] {
        for v in current.get_all(name) {
            new.append(HeaderName::from_static(name), v.clone());
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_headers_are_validated_and_framing_kept() {
        let hdr = |n: &str, v: &[u8]| Header { name: n.into(), value: v.to_vec() };
        assert!(from_plugin(vec![hdr("bad name", b"x")]).is_err());
        assert!(from_plugin(vec![hdr("x", b"a\r\nb")]).is_err());
        assert!(from_plugin(vec![hdr("x", b"a\0")]).is_err());
        assert!(from_plugin((0..300).map(|i| hdr(&format!("h{i}"), b"v")).collect()).is_err());

        let mut current = HeaderMap::new();
        current.insert("content-length", HeaderValue::from_static("5"));
        let list = vec![hdr("content-length", b"999"), hdr("transfer-encoding", b"chunked"), hdr("x-a", b"1")];
        current.insert("te", HeaderValue::from_static("trailers"));
        let list = {
            let mut l = list;
            l.push(hdr("te", b"gzip"));
            l
        };
        let h = with_plugin_headers(&current, list).expect("valid");
        assert_eq!(h["te"], "trailers", "the gateway's, not the plugin's");
        assert_eq!(h["content-length"], "5");
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["x-a"], "1");
    }
}
