//! Who a request comes from, which path it asks for, and the state keys
//! both become.

use std::net::{IpAddr, Ipv6Addr};

use sha2::{Digest, Sha256};
use weir_plugin_sdk::{Context, Request};

use crate::config::{ClientKey, Conf, EventClient};

/// A client, identified by the hash of its IP address (IPv6: its network)
/// or key header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    /// First 16 bytes of SHA-256 over the source and value.
    pub(crate) id: [u8; 16],
    /// `id` in hex: the part of state keys naming the client.
    pub(crate) hex: String,
    /// `"ip"`, `"header"` or `"data"`: what identified it (the header may
    /// be missing).
    pub(crate) source: &'static str,
    /// The IP address (IPv6: `<network>/<prefix>`) or header value, capped
    /// at 256 bytes. Only kept with `event_client = "raw"`, the one use of
    /// it: otherwise it is never formatted, copied or carried.
    pub(crate) raw: Option<String>,
}

/// Longest raw client value carried to events.
const MAX_RAW: usize = 256;

impl Client {
    /// Identify the client of `req` as `conf` says: by what a plugin before
    /// it published (`data:PLUGIN.KEY`), by its `key` header, or by its IP
    /// address when those are missing or empty (or `key` is `"ip"`). IPv4-mapped IPv6 addresses count as their IPv4 address; other
    /// IPv6 addresses as their `ipv6_prefix` network.
    pub(crate) fn identify_in(conf: &Conf, req: &Request, cx: &Context) -> Self {
        if let ClientKey::Data { plugin, key } = &conf.key
            && let Some(value) = cx.published(plugin, key).filter(|v| !v.is_empty())
        {
            let mut h = Sha256::new();
            for part in [b"data".as_slice(), plugin.as_bytes(), key.as_bytes()] {
                h.update(part);
                h.update(b"\0");
            }
            h.update(&value);
            let raw = (conf.event_client == EventClient::Raw).then(|| truncate(&String::from_utf8_lossy(&value)));
            return Self::from_hash(h, "data", raw);
        }
        Self::identify(conf, req)
    }

    /// [`Client::identify_in`] without the chain's published values: by the
    /// `key` header, or by the IP address when the header is missing or
    /// empty (or `key` is `"ip"` or a `data:` key).
    pub(crate) fn identify(conf: &Conf, req: &Request) -> Self {
        let keep_raw = conf.event_client == EventClient::Raw;
        if let ClientKey::Header(name) = &conf.key
            && let Some(value) = req.header_all(name.as_str()).into_iter().next().filter(|v| !v.is_empty())
        {
            let mut h = Sha256::new();
            h.update(b"header\0");
            h.update(name.as_str().as_bytes());
            h.update(b"\0");
            h.update(value.as_bytes());
            let raw = keep_raw.then(|| truncate(&String::from_utf8_lossy(value.as_bytes())));
            return Self::from_hash(h, "header", raw);
        }
        // The address's bytes are hashed: nothing is formatted unless kept.
        let mut h = Sha256::new();
        let raw = match req.client_ip().map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                h.update(b"ip4\0");
                h.update(v4.octets());
                keep_raw.then(|| v4.to_string())
            }
            Some(IpAddr::V6(v6)) => {
                let bits = conf.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                h.update(b"ip6\0");
                h.update(net.octets());
                h.update([bits]);
                keep_raw.then(|| if bits == 128 { net.to_string() } else { format!("{net}/{bits}") })
            }
            None => {
                h.update(b"ip?\0");
                keep_raw.then(|| "unknown".to_owned())
            }
        };
        Self::from_hash(h, "ip", raw)
    }

    /// A client from its parts, as kept in the request-local store.
    pub(crate) fn from_id(id: [u8; 16], source: &'static str, raw: Option<String>) -> Self {
        Self { id, hex: hex(&id), source, raw }
    }

    fn from_hash(h: Sha256, source: &'static str, raw: Option<String>) -> Self {
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self { id, hex: hex(&id), source, raw }
    }

    /// `cd:<client>`: exists while the client is under an action.
    pub(crate) fn cooldown_key(&self) -> String {
        format!("cd:{}", self.hex)
    }

    /// `b:<client>`: the baseline record.
    pub(crate) fn baseline_key(&self) -> String {
        format!("b:{}", self.hex)
    }

    /// `c:<client>:<window>`: the packed counter of one window.
    pub(crate) fn counts_key(&self, window: u64) -> String {
        format!("c:{}:{window}", self.hex)
    }

    /// `p:<client>:<window>:<path>`: marks a path as seen in a window.
    pub(crate) fn path_key(&self, window: u64, path: u64) -> String {
        format!("p:{}:{window}:{path:016x}", self.hex)
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_RAW {
        return s.to_owned();
    }
    let mut end = MAX_RAW;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The hash of the part of `path` that makes it distinct: its first
/// `segments` segments, or all of it when `segments` is 0. The query never
/// counts.
pub(crate) fn path_hash(path: &str, segments: usize) -> u64 {
    let kept = if segments == 0 {
        path
    } else {
        // "/a/b/c" with 2 segments → "/a/b": cut at the (segments+1)-th '/'.
        match path.match_indices('/').nth(segments) {
            Some((i, _)) => &path[..i],
            None => path,
        }
    };
    let digest = Sha256::digest(kept.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// What identified a client, as one byte of the request-local value; the
/// high bit says a raw value follows.
pub(crate) fn source_code(source: &str) -> u8 {
    match source {
        "ip" => 0,
        "header" => 1,
        _ => 2,
    }
}

/// The source a [`source_code`] names, and whether a raw value follows.
pub(crate) fn source_of(code: u8) -> Option<(&'static str, bool)> {
    let source = match code & 0x7f {
        0 => "ip",
        1 => "header",
        2 => "data",
        _ => return None,
    };
    Some((source, code & 0x80 != 0))
}
