//! The `config` table, checked once in `new`: every error names its key.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
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

/// The whole `config` table; its JSON Schema is the one the plugin declares
/// (`Plugin::config_schema`). What a schema cannot say (durations, header
/// names, unique limit names) is checked by [`Spec::from_config`] and the
/// `deserialize_with` functions.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "rate-limit config",
    description = "The `config` table of `rate_limit.wasm`: rate limits on shared host counters."
)]
pub(crate) struct Settings {
    /// The limits, 1 to 16; a request must fit every one that applies to it.
    #[schemars(length(min = 1, max = 16))]
    limits: Vec<LimitSettings>,
    /// What identifies a client, for limits without their own `key`: `"ip"` (IPv6 by its `ipv6_prefix` network),
    /// `"route"`, `"header:<name>"` (a request header's first value, hashed), `"data:<plugin>.<key>"` (what a plugin
    /// earlier in the chain published, hashed), or a list of 1 to 4 of them such as `["route", "ip"]`.
    #[serde(default)]
    #[schemars(extend("default" = "ip"))]
    key: Option<Key>,
    /// When a `header:` or `data:` key part is absent or empty, for limits without their own `missing`: `"ip"` uses
    /// the client IP in its place, `"deny"` answers `400`, `"allow"` skips that limit for the request.
    #[serde(default)]
    missing: Missing,
    /// How requests are counted: `"sliding"` or `"fixed"` windows, or `"gcra"` (an exact bound on any interval, with
    /// a `burst`).
    #[serde(default)]
    algorithm: Algorithm,
    /// When the state backend fails: `"allow"` lets requests through (fail open), `"deny"` answers `503` (fail
    /// closed).
    #[serde(default)]
    on_state_error: OnStateError,
    /// Add the `RateLimit-Policy` and `RateLimit` headers to responses that were let through.
    #[serde(default = "yes")]
    headers: bool,
    /// IPv6 clients are keyed by this network prefix length, 1 to 128.
    #[serde(default = "default_ipv6_prefix", deserialize_with = "ipv6_prefix")]
    #[schemars(range(min = 1, max = 128))]
    ipv6_prefix: u8,
}

/// One entry of `limits`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LimitSettings {
    /// Names the limit in the headers, the 429 body and the state keys: 1 to 32 characters of `A-Z a-z 0-9 _ - .`,
    /// unique within the instance (default: the window, e.g. `"1m"`).
    #[serde(default)]
    #[schemars(length(min = 1, max = 32))]
    name: Option<String>,
    /// Requests allowed per window, 1 to 1000000000.
    #[serde(deserialize_with = "requests")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    requests: u64,
    /// Window length: a duration that is a whole number of seconds from `"1s"` to `"24h"`, e.g. `"1s"`, `"90s"`,
    /// `"5m"`, `"1h"`.
    #[serde(deserialize_with = "window")]
    #[schemars(with = "String")]
    window: u64,
    /// What identifies a client for this limit, as the instance's `key` (default: the instance's `key`).
    #[serde(default)]
    key: Option<Key>,
    /// The missing-header policy for this limit (default: the instance's `missing`).
    #[serde(default)]
    missing: Option<Missing>,
    /// With `algorithm = "gcra"` only: requests allowed at once on top of the
    /// steady rate, 0 to 1000000000 (default 0).
    #[serde(default)]
    #[schemars(range(max = 1_000_000_000))]
    burst: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_ipv6_prefix() -> u8 {
    64
}

// The variants of the enums below carry `//` comments, not doc comments:
// the schema then lists them as a plain `enum`, which a config check names
// in its message.

/// How counts carry from one window to the next: `sliding` or `fixed`
/// windows, or `gcra`.
#[derive(Deserialize, Serialize, JsonSchema, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Algorithm {
    // The current window's count plus the previous window's count weighted
    // by the share of it still inside the sliding window.
    #[default]
    Sliding,
    // Plain fixed windows: the count restarts at every window boundary.
    Fixed,
    // GCRA, the generic cell rate algorithm (a token bucket kept as one
    // timestamp): `requests` per `window` flow steadily, `burst` more may
    // come at once, and no interval of one window ever holds more than
    // `requests + burst`. One host call per limit and request.
    Gcra,
}

/// What to do when the state backend fails: `allow` (fail open) or `deny`
/// (fail closed).
#[derive(Deserialize, Serialize, JsonSchema, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnStateError {
    // Let the request through (fail open), with a throttled warning.
    #[default]
    Allow,
    // Answer 503 (fail closed).
    Deny,
}

/// What to do when a `header:` or `data:` key part is absent (or empty):
/// `ip`, `deny` or `allow`.
#[derive(Deserialize, Serialize, JsonSchema, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Missing {
    // Use the client IP in its place.
    #[default]
    Ip,
    // Answer 400 naming the header.
    Deny,
    // Skip this limit for the request.
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

/// A string or a list of 1 to 4 distinct strings: one schema with both
/// types rather than an `anyOf`, so that a mismatch is reported for what it
/// is (`items` and the counts only apply to lists).
impl JsonSchema for Key {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Key".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What identifies a client: `\"ip\"` (IPv6 by its `ipv6_prefix` network), `\"route\"`, \
                            `\"header:<name>\"` (a request header's first value, hashed) or `\"data:<plugin>.<key>\"` \
                            (what a plugin earlier in the chain published, hashed), or a list of 1 to 4 of them such \
                            as `[\"route\", \"ip\"]`.",
            "type": ["string", "array"],
            "items": { "type": "string" },
            "minItems": 1,
            "maxItems": MAX_KEY_PARTS,
            "uniqueItems": true,
        })
    }
}

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
