//! The `config` table: read with serde (unknown keys refused), then checked
//! key by key and turned into the values the plugin works with.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use weir_plugin_sdk::prelude::*;

/// The table as written in `gateway.toml`; its JSON Schema is the one the
/// plugin declares (`Plugin::config_schema`). What a schema cannot say
/// (durations' bounds, header names, combinations of keys) is checked by
/// [`load`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "anomaly config",
    description = "The `config` table of `anomaly.wasm`: per-client anomaly scoring. All keys are optional."
)]
pub(crate) struct Settings {
    /// Who a client is: `"ip"` (the client address; IPv6 by its `ipv6_prefix` network), `"header:<name>"` (that
    /// request header's value, e.g. `"header:x-api-key"`; the IP when it is missing or empty) or
    /// `"data:<plugin>.<key>"` (what a plugin earlier in the chain published, e.g. `"data:auth.x-auth-sub"`; the IP
    /// when it published nothing).
    #[serde(default = "defaults::key")]
    key: String,
    /// IPv6 clients are keyed by this network prefix length, 1 to 128 (128: each address).
    #[serde(default = "defaults::ipv6_prefix")]
    #[schemars(range(min = 1, max = 128))]
    ipv6_prefix: u32,
    /// Length of a counting window, aligned to wall time: a duration from `"1s"` to `"1h"`, e.g. `"10s"`.
    #[serde(default = "defaults::window")]
    window: HumanDuration,
    /// Score at which the action is taken (greater than 0).
    #[serde(default = "defaults::threshold")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    threshold: f64,
    /// What happens to a client whose score reaches the threshold: `"flag"` (a request header, the request goes on),
    /// `"throttle"` (`429`) or `"challenge"` (the `challenge` response).
    #[serde(default)]
    action: ActionKind,
    /// How long the action lasts once taken: a duration from `"1s"` to `"7d"`, e.g. `"1m"`.
    #[serde(default = "defaults::cooldown")]
    cooldown: HumanDuration,
    /// Weight of each signal in the score (at least one above 0).
    #[serde(default)]
    weights: Weights,
    /// Requests (sliding estimate) before the two ratios count, at least 1; also the requests a client must make in
    /// one window before it gets a baseline record.
    #[serde(default = "defaults::min_requests")]
    #[schemars(range(min = 1))]
    min_requests: u32,
    /// Requests per second below which the rate is never anomalous (the floor of the baseline mean), at least 0.
    #[serde(default = "defaults::min_rate")]
    #[schemars(range(min = 0))]
    min_rate: f64,
    /// Windows of history before the rate signal counts; `0` judges new clients against `min_rate`.
    #[serde(default = "defaults::warmup_windows")]
    warmup_windows: u32,
    /// EWMA smoothing factor of the baseline, in (0, 1]; higher follows changes faster.
    #[serde(default = "defaults::alpha")]
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1))]
    alpha: f64,
    /// How long a silent client's baseline is kept: a duration from `"1m"` to `"30d"`, and at least two windows.
    #[serde(default = "defaults::baseline_ttl")]
    baseline_ttl: HumanDuration,
    /// Upstream statuses counted as errors: codes (`404`), classes (`"5xx"`) or inclusive ranges (`"500-503"`).
    /// Empty only with `weights.errors = 0`.
    #[serde(default = "defaults::error_statuses")]
    error_statuses: Vec<StatusRange>,
    /// Leading path segments that make a path distinct (`1`: `/users/7` and `/users/8` are one path); `0`: the
    /// whole path. The query never counts.
    #[serde(default)]
    path_segments: u32,
    /// Request header set by the `flag` action, a valid HTTP header name. Any copy the client sent is removed.
    #[serde(default = "defaults::flag_header")]
    flag_header: String,
    /// The `challenge` action's response; only with `action = "challenge"`.
    challenge: Option<ChallengeSettings>,
    /// How events name the client: `"hash"` (the hash that also names its state keys) or `"raw"` (the IP address,
    /// the IPv6 network or the header value; never with secret API keys).
    #[serde(default)]
    event_client: EventClient,
}

mod defaults {
    use std::time::Duration;

    use super::{HumanDuration, StatusRange};

    pub(super) fn key() -> String {
        "ip".into()
    }
    pub(super) fn ipv6_prefix() -> u32 {
        64
    }
    pub(super) fn window() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(super) fn threshold() -> f64 {
        6.0
    }
    pub(super) fn cooldown() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub(super) fn min_requests() -> u32 {
        20
    }
    pub(super) fn min_rate() -> f64 {
        5.0
    }
    pub(super) fn warmup_windows() -> u32 {
        3
    }
    pub(super) fn alpha() -> f64 {
        0.2
    }
    pub(super) fn baseline_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(3600))
    }
    /// `["4xx", "5xx"]`.
    pub(super) fn error_statuses() -> Vec<StatusRange> {
        vec![StatusRange(400, 499), StatusRange(500, 599)]
    }
    pub(super) fn flag_header() -> String {
        "x-weir-anomaly".into()
    }
    pub(super) fn rate_weight() -> f64 {
        1.0
    }
    pub(super) fn ratio_weight() -> f64 {
        4.0
    }
    pub(super) fn challenge_status() -> u16 {
        401
    }
}

/// The weight of each signal.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Weights {
    /// Multiplies the rate z-score (at least 0).
    #[serde(default = "defaults::rate_weight")]
    #[schemars(range(min = 0))]
    pub(crate) rate: f64,
    /// Multiplies the error ratio, 0 to 1 (at least 0; `0` also skips the response phase).
    #[serde(default = "defaults::ratio_weight")]
    #[schemars(range(min = 0))]
    pub(crate) errors: f64,
    /// Multiplies the distinct-path ratio, 0 to 1 (at least 0).
    #[serde(default = "defaults::ratio_weight")]
    #[schemars(range(min = 0))]
    pub(crate) paths: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { rate: defaults::rate_weight(), errors: defaults::ratio_weight(), paths: defaults::ratio_weight() }
    }
}

/// The action taken at the threshold.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ActionKind {
    #[default]
    Flag,
    Throttle,
    Challenge,
}

/// How events name the client: `hash`, the hash that also names its state
/// keys, or `raw`, the IP address or header value itself.
// No doc comments on the variants: the schema then lists them as a plain
// `enum`, which a config check names in its message.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventClient {
    #[default]
    Hash,
    Raw,
}

/// The response of the `challenge` action.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ChallengeSettings {
    /// The response's status, 400 to 599.
    #[serde(default = "defaults::challenge_status")]
    #[schemars(range(min = 400, max = 599))]
    status: u16,
    /// The response's headers, name → value; when given they replace the default
    /// `www-authenticate: Bearer error="invalid_token", error_description="re-authentication required"`.
    headers: Option<BTreeMap<String, String>>,
    /// The response's body; when given it replaces the default JSON `{"error":"re-authentication required"}`.
    body: Option<String>,
}

/// An inclusive range of statuses; written `404`, `"404"`, `"4xx"` or `"500-503"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatusRange(pub(crate) u16, pub(crate) u16);

impl StatusRange {
    fn parse(s: &str) -> Result<Self, String> {
        let code = |t: &str| match t.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} is not a status: use 404, \"4xx\" or \"500-503\"")),
        };
        let s_trim = s.trim();
        if let Some(class) = s_trim.strip_suffix("xx").or_else(|| s_trim.strip_suffix("XX")) {
            return match class {
                "1" | "2" | "3" | "4" | "5" => {
                    let base = class.parse::<u16>().unwrap_or(0) * 100;
                    Ok(Self(base, base + 99))
                }
                _ => Err(format!("{s:?} is not a status class: use \"1xx\" to \"5xx\"")),
            };
        }
        match s_trim.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (code(lo)?, code(hi)?);
                if lo > hi {
                    return Err(format!("{s:?} is an empty range"));
                }
                Ok(Self(lo, hi))
            }
            None => code(s_trim).map(|c| Self(c, c)),
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status (404), a class (\"4xx\") or a range (\"500-503\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                StatusRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A status, a class or a range, as written: a number or a string.
impl JsonSchema for StatusRange {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusRange".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // One schema with both types rather than an `anyOf`, so that a
        // mismatch is reported for what it is (`minimum` applies to numbers).
        json_schema!({
            "description": "A status (`404`), a class (`\"1xx\"` to `\"5xx\"`) or an inclusive range (`\"500-503\"`).",
            "type": ["integer", "string"],
            "minimum": 100,
            "maximum": 599,
        })
    }
}

/// Written back the way it is read (for the schema's `default`): `404`,
/// `"4xx"` or `"500-503"`.
impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let StatusRange(lo, hi) = *self;
        if lo == hi {
            s.serialize_u16(lo)
        } else if lo % 100 == 0 && hi == lo + 99 {
            s.collect_str(&format_args!("{}xx", lo / 100))
        } else {
            s.collect_str(&format_args!("{lo}-{hi}"))
        }
    }
}

/// A duration written as in `gateway.toml` (`"500ms"`, `"10s"`, `"1m"`,
/// `"1h 30m"`); its schema is a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl JsonSchema for HumanDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

/// Who a client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ClientKey {
    /// The client's IP address.
    Ip,
    /// This request header's value; the IP when it is missing or empty.
    Header(HeaderName),
    /// What plugin `plugin` earlier in the chain published under `key`
    /// (`chain-data`); the IP when it published nothing.
    Data {
        /// The publishing instance.
        plugin: String,
        /// Its key.
        key: String,
    },
}

/// What happens to a client whose score reached the threshold.
#[derive(Clone, Debug)]
pub(crate) enum ActionConf {
    /// Add `flag_header: score=N` to its requests and let them through.
    Flag,
    /// Answer `429` with `retry-after`.
    Throttle,
    /// Answer with this response.
    Challenge { status: StatusCode, headers: HeaderMap, body: Vec<u8> },
}

impl ActionConf {
    /// The name used in events and logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ActionConf::Flag => "flag",
            ActionConf::Throttle => "throttle",
            ActionConf::Challenge { .. } => "challenge",
        }
    }
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub(crate) struct Conf {
    pub(crate) key: ClientKey,
    /// 1..=128.
    pub(crate) ipv6_prefix: u8,
    pub(crate) window_ms: u64,
    pub(crate) threshold: f64,
    pub(crate) action: ActionConf,
    pub(crate) cooldown_ms: u64,
    pub(crate) weights: Weights,
    pub(crate) min_requests: f64,
    /// `min_requests` as a count: requests in one window after which a
    /// client gets a baseline record.
    pub(crate) min_window_requests: u32,
    /// `min_rate` converted to requests per window.
    pub(crate) min_per_window: f64,
    pub(crate) warmup_windows: u32,
    pub(crate) alpha: f64,
    pub(crate) baseline_ttl_ms: u64,
    pub(crate) error_statuses: Vec<StatusRange>,
    pub(crate) path_segments: usize,
    pub(crate) flag_header: HeaderName,
    pub(crate) event_client: EventClient,
}

impl Conf {
    /// Whether a response status counts as an error.
    pub(crate) fn is_error(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        self.error_statuses.iter().any(|r| (r.0..=r.1).contains(&s))
    }
}

fn bad(key: &str, why: impl fmt::Display) -> Error {
    Error::internal(format!("config key `{key}` {why}"))
}

fn finite(key: &str, v: f64) -> Result<f64> {
    if v.is_finite() { Ok(v) } else { Err(bad(key, format_args!("must be a finite number, got {v}"))) }
}

fn millis(key: &str, d: Duration, min: Duration, max: Duration) -> Result<u64> {
    if d < min || d > max {
        return Err(bad(
            key,
            format_args!(
                "must be between {} and {}, got {}",
                humantime::format_duration(min),
                humantime::format_duration(max),
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(d.as_millis() as u64)
}

/// Parse and check the whole table; every message names its key.
pub(crate) fn load(config: &Config) -> Result<Conf> {
    let s: Settings = config.parse()?;

    let key = match s.key.as_str() {
        "ip" => ClientKey::Ip,
        other => match other.strip_prefix("header:") {
            Some(name) => ClientKey::Header(
                HeaderName::try_from(name.trim())
                    .map_err(|_| bad("key", format_args!("names an invalid header: {name:?}")))?,
            ),
            None => match other.strip_prefix("data:").and_then(|d| d.split_once('.')) {
                Some((plugin, key)) if !plugin.is_empty() && !key.is_empty() => {
                    ClientKey::Data { plugin: plugin.to_owned(), key: key.to_owned() }
                }
                _ => {
                    return Err(bad(
                        "key",
                        format_args!("must be \"ip\", \"header:<name>\" or \"data:<plugin>.<key>\", got {other:?}"),
                    ));
                }
            },
        },
    };

    let ipv6_prefix = match u8::try_from(s.ipv6_prefix) {
        Ok(bits @ 1..=128) => bits,
        _ => return Err(bad("ipv6_prefix", format_args!("must be between 1 and 128, got {}", s.ipv6_prefix))),
    };

    let window_ms = millis("window", s.window.0, Duration::from_secs(1), Duration::from_secs(3600))?;
    let cooldown_ms = millis("cooldown", s.cooldown.0, Duration::from_secs(1), Duration::from_secs(7 * 86400))?;
    let baseline_ttl_ms =
        millis("baseline_ttl", s.baseline_ttl.0, Duration::from_secs(60), Duration::from_secs(30 * 86400))?;
    if baseline_ttl_ms < 2 * window_ms {
        return Err(bad("baseline_ttl", "must be at least two windows"));
    }

    let threshold = finite("threshold", s.threshold)?;
    if threshold <= 0.0 {
        return Err(bad("threshold", format_args!("must be greater than 0, got {threshold}")));
    }
    let w = s.weights;
    for (name, v) in [("weights.rate", w.rate), ("weights.errors", w.errors), ("weights.paths", w.paths)] {
        if finite(name, v)? < 0.0 {
            return Err(bad(name, format_args!("must not be negative, got {v}")));
        }
    }
    if w.rate == 0.0 && w.errors == 0.0 && w.paths == 0.0 {
        return Err(bad("weights", "must give at least one signal a weight above 0"));
    }
    if s.min_requests == 0 {
        return Err(bad("min_requests", "must be at least 1"));
    }
    let min_rate = finite("min_rate", s.min_rate)?;
    if min_rate < 0.0 {
        return Err(bad("min_rate", format_args!("must not be negative, got {min_rate}")));
    }
    let alpha = finite("alpha", s.alpha)?;
    if !(alpha > 0.0 && alpha <= 1.0) {
        return Err(bad("alpha", format_args!("must be in (0, 1], got {alpha}")));
    }
    if s.error_statuses.is_empty() && w.errors > 0.0 {
        return Err(bad(
            "error_statuses",
            "is empty: nothing would count as an error (set `weights.errors = 0` instead)",
        ));
    }

    let flag_header = HeaderName::try_from(s.flag_header.as_str())
        .map_err(|_| bad("flag_header", format_args!("is not a valid header name: {:?}", s.flag_header)))?;

    let action = match (s.action, s.challenge) {
        (ActionKind::Challenge, challenge) => challenge_reply(challenge.unwrap_or(ChallengeSettings {
            status: defaults::challenge_status(),
            headers: None,
            body: None,
        }))?,
        (_, Some(_)) => return Err(bad("challenge", "is only used with action = \"challenge\"")),
        (ActionKind::Flag, None) => ActionConf::Flag,
        (ActionKind::Throttle, None) => ActionConf::Throttle,
    };

    Ok(Conf {
        key,
        ipv6_prefix,
        window_ms,
        threshold,
        action,
        cooldown_ms,
        weights: w,
        min_requests: f64::from(s.min_requests),
        min_window_requests: s.min_requests,
        min_per_window: min_rate * window_ms as f64 / 1000.0,
        warmup_windows: s.warmup_windows,
        alpha,
        baseline_ttl_ms,
        error_statuses: s.error_statuses,
        path_segments: s.path_segments as usize,
        flag_header,
        event_client: s.event_client,
    })
}

/// The default challenge asks a bearer-token client to authenticate again.
const DEFAULT_CHALLENGE: &str = r#"Bearer error="invalid_token", error_description="re-authentication required""#;
const DEFAULT_CHALLENGE_BODY: &str = r#"{"error":"re-authentication required"}"#;

fn challenge_reply(c: ChallengeSettings) -> Result<ActionConf> {
    let status = match StatusCode::from_u16(c.status) {
        Ok(s) if s.is_client_error() || s.is_server_error() => s,
        _ => return Err(bad("challenge.status", format_args!("must be 400-599, got {}", c.status))),
    };
    let mut headers = HeaderMap::new();
    match c.headers {
        None => {
            headers.insert(http_name("www-authenticate"), HeaderValue::from_static(DEFAULT_CHALLENGE));
        }
        Some(map) => {
            for (name, value) in map {
                let n = HeaderName::try_from(name.as_str())
                    .map_err(|_| bad("challenge.headers", format_args!("has an invalid header name: {name:?}")))?;
                let v = HeaderValue::try_from(value.as_str())
                    .map_err(|_| bad("challenge.headers", format_args!("has an invalid value for {name:?}")))?;
                headers.append(n, v);
            }
        }
    }
    let body = match c.body {
        Some(b) => b.into_bytes(),
        None => {
            if !headers.contains_key("content-type") {
                headers.insert(http_name("content-type"), HeaderValue::from_static("application/json"));
            }
            DEFAULT_CHALLENGE_BODY.as_bytes().to_vec()
        }
    };
    Ok(ActionConf::Challenge { status, headers, body })
}

fn http_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}
