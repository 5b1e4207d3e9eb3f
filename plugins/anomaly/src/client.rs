//! Who a request comes from, which path it asks for, and the state keys
//! both become.

use std::collections::HashMap;
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

/// What identifies a client, before hashing: the bytes its id is the
/// SHA-256 of, what they came from, and the raw value kept for events.
pub(crate) struct Identity {
    input: Vec<u8>,
    source: &'static str,
    raw: Option<String>,
}

impl Identity {
    /// The client of `req` as `conf` says: by what a plugin before it
    /// published (`data:PLUGIN.KEY`), by its `key` header, or by its IP
    /// address when those are missing or empty (or `key` is `"ip"`).
    /// IPv4-mapped IPv6 addresses count as their IPv4 address; other IPv6
    /// addresses as their `ipv6_prefix` network.
    pub(crate) fn of(conf: &Conf, req: &Request, cx: &Context) -> Self {
        if let ClientKey::Data { plugin, key } = &conf.key
            && let Some(value) = cx.published(plugin, key).filter(|v| !v.is_empty())
        {
            let mut input = Vec::with_capacity(8 + plugin.len() + key.len() + value.len());
            for part in [b"data".as_slice(), plugin.as_bytes(), key.as_bytes()] {
                input.extend_from_slice(part);
                input.push(0);
            }
            input.extend_from_slice(&value);
            let raw = (conf.event_client == EventClient::Raw).then(|| truncate(&String::from_utf8_lossy(&value)));
            return Self { input, source: "data", raw };
        }
        Self::of_request(conf, req)
    }

    /// [`Identity::of`] without the chain's published values: by the `key`
    /// header, or by the IP address when the header is missing or empty (or
    /// `key` is `"ip"` or a `data:` key).
    pub(crate) fn of_request(conf: &Conf, req: &Request) -> Self {
        let keep_raw = conf.event_client == EventClient::Raw;
        if let ClientKey::Header(name) = &conf.key
            && let Some(value) = req.header_all(name.as_str()).into_iter().next().filter(|v| !v.is_empty())
        {
            let mut input = Vec::with_capacity(8 + name.as_str().len() + value.len());
            input.extend_from_slice(b"header\0");
            input.extend_from_slice(name.as_str().as_bytes());
            input.push(0);
            input.extend_from_slice(value.as_bytes());
            let raw = keep_raw.then(|| truncate(&String::from_utf8_lossy(value.as_bytes())));
            return Self { input, source: "header", raw };
        }
        // The address's bytes are hashed: nothing is formatted unless kept.
        let mut input = Vec::with_capacity(21);
        let raw = match req.client_ip().map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                input.extend_from_slice(b"ip4\0");
                input.extend_from_slice(&v4.octets());
                keep_raw.then(|| v4.to_string())
            }
            Some(IpAddr::V6(v6)) => {
                let bits = conf.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                input.extend_from_slice(b"ip6\0");
                input.extend_from_slice(&net.octets());
                input.push(bits);
                keep_raw.then(|| if bits == 128 { net.to_string() } else { format!("{net}/{bits}") })
            }
            None => {
                input.extend_from_slice(b"ip?\0");
                keep_raw.then(|| "unknown".to_owned())
            }
        };
        Self { input, source: "ip", raw }
    }

    /// The client: its id hashed now.
    pub(crate) fn client(self) -> Client {
        Client::from_id(first16(&Sha256::digest(&self.input)), self.source, self.raw)
    }
}

fn first16(digest: &[u8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Most entries per map of a [`Memo`]; a full map is emptied.
const MAX_MEMO: usize = 4096;

/// Per instance, the SHA-256s already worked out: client ids by what they
/// hash, path hashes by the kept part of the path. A lookup (SipHash under
/// the instance's random key) costs a tenth of a SHA-256, which the state
/// keys need so that every node names a client and a path alike.
#[derive(Default)]
pub(crate) struct Memo {
    clients: HashMap<Vec<u8>, ([u8; 16], String)>,
    paths: HashMap<String, u64>,
}

impl Memo {
    /// The client `identity` names, its id looked up or hashed.
    pub(crate) fn client(&mut self, identity: Identity) -> Client {
        if let Some((id, hex)) = self.clients.get(&identity.input) {
            return Client { id: *id, hex: hex.clone(), source: identity.source, raw: identity.raw };
        }
        if self.clients.len() >= MAX_MEMO {
            self.clients.clear();
        }
        let input = identity.input.clone();
        let client = identity.client();
        self.clients.insert(input, (client.id, client.hex.clone()));
        client
    }

    /// [`path_hash`], looked up or hashed.
    pub(crate) fn path(&mut self, path: &str, segments: usize) -> u64 {
        let kept = kept_part(path, segments);
        if let Some(h) = self.paths.get(kept) {
            return *h;
        }
        if self.paths.len() >= MAX_MEMO {
            self.paths.clear();
        }
        let h = hash_kept(kept);
        self.paths.insert(kept.to_owned(), h);
        h
    }
}

impl Client {
    /// A client from its parts, as kept in the request-local store.
    pub(crate) fn from_id(id: [u8; 16], source: &'static str, raw: Option<String>) -> Self {
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
#[cfg(test)]
pub(crate) fn path_hash(path: &str, segments: usize) -> u64 {
    hash_kept(kept_part(path, segments))
}

/// The part of `path` that makes it distinct (see [`path_hash`]).
fn kept_part(path: &str, segments: usize) -> &str {
    if segments == 0 {
        return path;
    }
    // "/a/b/c" with 2 segments → "/a/b": cut at the (segments+1)-th '/'.
    match path.match_indices('/').nth(segments) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

fn hash_kept(kept: &str) -> u64 {
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
