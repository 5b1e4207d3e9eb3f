//! Which client a request counts against, and the state keys it uses.
//!
//! A subject is the `|`-joined key parts of one limit: `i:<ip>` (IPv6 as
//! its prefix network), `r:<route>`, `h:<hash>` (the first 128 bits of the
//! SHA-256 of the header value, in hex, so no raw API key is stored and keys
//! stay short). A subject longer than 128 bytes is hashed whole (`x:<hash>`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use sha2::{Digest, Sha256};
use weir_plugin_sdk::{Context, Request};

use crate::config::{KeyPart, Missing};

/// Longest subject kept readable; longer ones are hashed.
const MAX_SUBJECT_LEN: usize = 128;

/// What a limit does with a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    /// Count it under this subject.
    Key(String),
    /// The limit does not apply (`missing = "allow"`).
    Skip,
    /// Refuse the request: this part is required (`missing = "deny"`); what
    /// it is, for the message.
    Refuse(String),
}

/// 128 bits of SHA-256 in hex.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn push_ip(out: &mut String, ip: Option<IpAddr>, ipv6_prefix: u8) {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => {
            // As `Display` writes it, without `core::fmt` (per request).
            out.push_str("i:");
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(n.format(octet));
            }
        }
        Some(IpAddr::V6(v6)) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let net = Ipv6Addr::from(u128::from(v6) & mask);
            let _ = write!(out, "i:{net}/{bits}");
        }
        None => out.push_str("i:unknown"),
    }
}

/// The subject of `req` for a limit keyed by `parts`.
pub(crate) fn subject(req: &Request, cx: &Context, parts: &[KeyPart], missing: Missing, ipv6_prefix: u8) -> Subject {
    let mut out = String::new();
    for part in parts {
        if !out.is_empty() {
            out.push('|');
        }
        match part {
            KeyPart::Ip => push_ip(&mut out, req.client_ip(), ipv6_prefix),
            KeyPart::Route => {
                out.push_str("r:");
                out.push_str(req.route());
            }
            // One header asked for, not the whole map.
            KeyPart::Header(name) => match req.header_all(name.as_str()).into_iter().next().filter(|v| !v.is_empty()) {
                Some(value) => {
                    out.push_str("h:");
                    out.push_str(&short_hash(value.as_bytes()));
                }
                None => match missing {
                    Missing::Ip => push_ip(&mut out, req.client_ip(), ipv6_prefix),
                    Missing::Allow => return Subject::Skip,
                    Missing::Deny => return Subject::Refuse(format!("header `{name}`")),
                },
            },
            KeyPart::Data { plugin, key } => match cx.published(plugin, key).filter(|v| !v.is_empty()) {
                Some(value) => {
                    out.push_str("d:");
                    out.push_str(&short_hash(&value));
                }
                None => match missing {
                    Missing::Ip => push_ip(&mut out, req.client_ip(), ipv6_prefix),
                    Missing::Allow => return Subject::Skip,
                    Missing::Deny => return Subject::Refuse(format!("`{plugin}.{key}` from the chain")),
                },
            },
        }
    }
    if out.len() > MAX_SUBJECT_LEN {
        out = format!("x:{}", short_hash(out.as_bytes()));
    }
    Subject::Key(out)
}

/// The constant start of a limit's state keys: `<limit>:<window secs>:`.
pub(crate) fn key_prefix(limit: &str, window_secs: u64) -> String {
    format!("{limit}:{window_secs}:")
}

/// The state key of one limit's counter for `subject` in window `index`:
/// `<limit>:<window secs>:<index>:<subject>`, from the limit's [`key_prefix`].
pub(crate) fn state_key(prefix: &str, index: u64, subject: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + 21 + subject.len());
    key.push_str(prefix);
    key.push_str(itoa::Buffer::new().format(index));
    key.push(':');
    key.push_str(subject);
    key
}
