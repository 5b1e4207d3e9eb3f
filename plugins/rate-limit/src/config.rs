//! The `config` table, checked once in `new`: every error names its key.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use weir_plugin_sdk::{Config, Error, HeaderName, Result};

/// Most limits one instance may hold (each costs a state call per request).
pub(crate) const MAX_LIMITS: usize = 16;
/// Largest quota of one limit.
pub(crate) const MAX_REQUESTS: u64 = 1_000_000_000;
/// Longest window.
pub(crate) const MAX_WINDOW_SECS: u64 = 86_400;
/// Most parts in one `key` list.
const MAX_KEY_PARTS: usize = 4;
/// Longest limit name.
const MAX_NAME_LEN: usize = 32;

/// The whole `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The limits; a request must fit every one of them.
    limits: Vec<LimitSettings>,
    /// What identifies a client, for limits without their own `key`.
    #[serde(default)]
    key: Option<Key>,
    /// What to do when a `header:` key part is absent, for limits without
    /// their own `missing`.
    #[serde(default)]
    missing: Missing,
    /// `sliding` (default) or `fixed` windows.
    #[serde(default)]
    algorithm: Algorithm,
    /// `allow` (default) or `deny` when the state backend fails.
    #[serde(default)]
    on_state_error: OnStateError,
    /// Add the RateLimit headers to responses that were let through.
    #[serde(default = "yes")]
    headers: bool,
    /// IPv6 clients are keyed by this prefix length.
    #[serde(default = "default_ipv6_prefix", deserialize_with = "ipv6_prefix")]
    ipv6_prefix: u8,
}

/// One entry of `limits`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSettings {
    /// Shown in the RateLimit headers and part of the state keys.
    #[serde(default)]
    name: Option<String>,
    /// Requests allowed per window.
    #[serde(deserialize_with = "requests")]
    requests: u64,
    /// Window length in whole seconds, e.g. `"1s"`, `"1m"`, `"1h"`.
    #[serde(deserialize_with = "window")]
    window: u64,
    /// Overrides the instance's `key`.
    #[serde(default)]
    key: Option<Key>,
    /// Overrides the instance's `missing`.
    #[serde(default)]
    missing: Option<Missing>,
    /// With `algorithm = "gcra"`: requests allowed at once on top of the
    /// steady rate (default 0).
    #[serde(default)]
    burst: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// How counts carry from one window to the next.
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Algorithm {
    /// The current window's count plus the previous window's count weighted
    /// by the share of it still inside the sliding window.
    #[default]
    Sliding,
    /// Plain fixed windows: the count restarts at every window boundary.
    Fixed,
    /// GCRA, the generic cell rate algorithm (a token bucket kept as one
    /// timestamp): `requests` per `window` flow steadily, `burst` more may
    /// come at once, and no interval of one window ever holds more than
    /// `requests + burst`. One host call per limit and request.
    Gcra,
}

/// What to do when the state backend fails.
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnStateError {
    /// Let the request through (fail open), with a throttled warning.
    #[default]
    Allow,
    /// Answer 503 (fail closed).
    Deny,
}

/// What to do when a `header:` key part is absent (or empty).
#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Missing {
    /// Use the client IP in its place.
    #[default]
    Ip,
    /// Answer 400 naming the header.
    Deny,
    /// Skip this limit for the request.
    Allow,
}

/// One part of a client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPart {
    /// The client's IP address (IPv6: its `ipv6_prefix` network).
    Ip,
    /// The name of the matched route.
    Route,
    /// The first value of a request header (hashed).
    Header(HeaderName),
    /// What a plugin earlier in the chain published (hashed).
    Data {
        /// The publishing instance.
        plugin: String,
        /// Its key.
        key: String,
    },
}

impl KeyPart {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ip" => Ok(KeyPart::Ip),
            "route" => Ok(KeyPart::Route),
            _ => match (s.strip_prefix("header:"), s.strip_prefix("data:").and_then(|d| d.split_once('.'))) {
                (Some(name), _) => HeaderName::from_bytes(name.as_bytes())
                    .map(KeyPart::Header)
                    .map_err(|_| format!("invalid header name {name:?} in key {s:?}")),
                (None, Some((plugin, key))) if !plugin.is_empty() && !key.is_empty() => {
                    Ok(KeyPart::Data { plugin: plugin.to_owned(), key: key.to_owned() })
                }
                _ => Err(format!(
                    "unknown key kind {s:?}: expected \"ip\", \"route\", \"header:<name>\" or \"data:<plugin>.<key>\""
                )),
            },
        }
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Header(h) => write!(f, "header:{h}"),
            KeyPart::Data { plugin, key } => write!(f, "data:{plugin}.{key}"),
        }
    }
}

/// A `key`: one kind (`"ip"`) or a list of them (`["route", "ip"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key(Vec<KeyPart>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ip\", \"route\", \"header:<name>\" or a list of them")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                KeyPart::parse(s).map(|p| Key(vec![p])).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                let mut parts = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    let part = KeyPart::parse(&s).map_err(de::Error::custom)?;
                    if parts.contains(&part) {
                        return Err(de::Error::custom(format!("key part {s:?} is listed twice")));
                    }
                    parts.push(part);
                }
                if parts.is_empty() || parts.len() > MAX_KEY_PARTS {
                    return Err(de::Error::custom(format!("a key list needs 1 to {MAX_KEY_PARTS} parts")));
                }
                Ok(Key(parts))
            }
        }

        d.deserialize_any(KeyVisitor)
    }
}

fn requests<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if !(1..=MAX_REQUESTS).contains(&n) {
        return Err(de::Error::custom(format!("must be between 1 and {MAX_REQUESTS}, got {n}")));
    }
    Ok(n)
}

/// A window in whole seconds, written as a duration like `"1s"` or `"1h"`.
fn window<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    let dur = humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!("invalid duration {text:?} ({e}); write e.g. \"1s\", \"1m\", \"1h\""))
    })?;
    parse_window(dur).map_err(|e| de::Error::custom(format!("{text:?} {e}")))
}

fn parse_window(dur: Duration) -> Result<u64, String> {
    if dur.subsec_nanos() != 0 {
        return Err("is not a whole number of seconds (the RateLimit headers count in seconds)".into());
    }
    let secs = dur.as_secs();
    if !(1..=MAX_WINDOW_SECS).contains(&secs) {
        return Err(format!("must be between 1s and 24h, got {secs}s"));
    }
    Ok(secs)
}

fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u64::deserialize(d)?;
    if !(1..=128).contains(&n) {
        return Err(de::Error::custom(format!("must be between 1 and 128, got {n}")));
    }
    Ok(n as u8)
}

/// A window length written the short way: `1s`, `90s`, `5m`, `1h`, `1d`.
pub(crate) fn short_window(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// One validated limit.
#[derive(Debug, Clone)]
pub(crate) struct LimitSpec {
    pub(crate) name: String,
    pub(crate) requests: u64,
    pub(crate) window_secs: u64,
    pub(crate) key: Vec<KeyPart>,
    pub(crate) missing: Missing,
    /// Extra requests at once (GCRA only; 0 otherwise).
    pub(crate) burst: u64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) limits: Vec<LimitSpec>,
    pub(crate) algorithm: Algorithm,
    pub(crate) on_state_error: OnStateError,
    pub(crate) headers: bool,
    pub(crate) ipv6_prefix: u8,
}

fn invalid(message: impl fmt::Display) -> Error {
    Error::internal(format!("invalid config: {message}"))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars {
        return Err(format!("{name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ - ."));
    }
    Ok(())
}

impl Spec {
    /// Parse and check the `config` table.
    pub(crate) fn from_config(config: &Config) -> Result<Self> {
        let s: Settings = serde_path_to_error::deserialize(config.as_json())
            .map_err(|e| if e.path().iter().next().is_none() { invalid(e.inner()) } else { invalid(e) })?;
        if s.limits.is_empty() || s.limits.len() > MAX_LIMITS {
            return Err(invalid(format!("limits: give 1 to {MAX_LIMITS} limits, got {}", s.limits.len())));
        }
        let default_key = s.key.map_or_else(|| vec![KeyPart::Ip], |k| k.0);
        let mut names = HashSet::new();
        let mut limits = Vec::with_capacity(s.limits.len());
        for (i, l) in s.limits.into_iter().enumerate() {
            let name = l.name.unwrap_or_else(|| short_window(l.window));
            check_name(&name).map_err(|e| invalid(format!("limits[{i}].name: {e}")))?;
            if !names.insert(name.clone()) {
                return Err(invalid(format!(
                    "limits[{i}].name: duplicate limit name {name:?} (a limit without `name` is named after its \
                     window; give each limit a distinct `name`)"
                )));
            }
            let burst = match (l.burst, s.algorithm) {
                (None, _) => 0,
                (Some(b), Algorithm::Gcra) if b <= MAX_REQUESTS => b,
                (Some(b), Algorithm::Gcra) => {
                    return Err(invalid(format!("limits[{i}].burst: must be at most {MAX_REQUESTS}, got {b}")));
                }
                (Some(_), _) => {
                    return Err(invalid(format!(
                        "limits[{i}].burst: only algorithm = \"gcra\" has a burst (windows allow their whole quota at once)"
                    )));
                }
            };
            limits.push(LimitSpec {
                burst,
                name,
                requests: l.requests,
                window_secs: l.window,
                key: l.key.map_or_else(|| default_key.clone(), |k| k.0),
                missing: l.missing.unwrap_or(s.missing),
            });
        }
        Ok(Spec {
            limits,
            algorithm: s.algorithm,
            on_state_error: s.on_state_error,
            headers: s.headers,
            ipv6_prefix: s.ipv6_prefix,
        })
    }
}
