//! The `config` table, checked once in `new`: every error names its key.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_plugin_sdk::{Config, Error, HeaderName, Request, Result, StatusCode};

/// Longest call timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest cache TTL.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// The `config` table as written; its JSON Schema is the one the plugin
/// declares (`Plugin::config_schema`). What a schema cannot say (header
/// names, durations, the cache key template) is checked by
/// [`Spec::from_config`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "ext-authz config",
    description = "The `config` table of `ext_authz.wasm`: ask an external authorization service about every request."
)]
pub(crate) struct Settings {
    /// The authorization service: an upstream in the instance's `outbound` list.
    #[schemars(length(min = 1))]
    upstream: String,
    /// Put before the original path in the check request, e.g. `"/check"`: starts with `/` and does not end with
    /// one (or empty).
    #[serde(default)]
    path_prefix: String,
    /// Request headers sent along to the service (every value), as header names.
    #[serde(default = "default_forward")]
    forward_headers: Vec<String>,
    /// Headers of an allowing answer set on the request upstream, as header names.
    #[serde(default)]
    upstream_headers: Vec<String>,
    /// Headers of a denying answer passed to the client, as header names (`content-type` always is).
    #[serde(default = "default_client")]
    client_headers: Vec<String>,
    /// What no answer means: `"deny"` (answer `failure_status`, fail closed) or `"allow"` (let the request through,
    /// fail open).
    #[serde(default)]
    failure: Failure,
    /// The status of a denial for want of an answer, 400 to 599.
    #[serde(default = "default_failure_status")]
    #[schemars(range(min = 400, max = 599))]
    failure_status: u16,
    /// How long the service may take: a duration above zero and at most `"1m"`, e.g. `"200ms"` (the plugin's
    /// `limits.deadline` must be longer).
    #[serde(default = "default_timeout")]
    timeout: String,
    /// Cache decisions in the host's shared state.
    #[serde(default)]
    cache: Option<CacheSettings>,
}

/// The decision cache.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CacheSettings {
    /// What one decision is cached for: a template of text and `{method}`, `{path}`, `{query}`, `{client_ip}` and
    /// `{header:NAME}`, naming at least one of them.
    #[serde(default = "default_key")]
    key: String,
    /// For how long: a duration above zero and at most `"1h"`, e.g. `"30s"`.
    ttl: String,
}

fn default_forward() -> Vec<String> {
    vec!["authorization".into()]
}

fn default_client() -> Vec<String> {
    vec!["www-authenticate".into()]
}

fn default_failure_status() -> u16 {
    503
}

fn default_timeout() -> String {
    "200ms".into()
}

fn default_key() -> String {
    "{method} {path} {header:authorization}".into()
}

/// What to do without an answer: `deny` (fail closed) or `allow` (fail open).
// No doc comments on the variants: the schema then lists them as a plain
// `enum`, which a config check names in its message.
#[derive(Deserialize, Serialize, JsonSchema, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Failure {
    // Refuse with `failure_status` (fail closed).
    #[default]
    Deny,
    // Let the request through (fail open).
    Allow,
}

/// One piece of a cache key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Method,
    Path,
    Query,
    ClientIp,
    Header(HeaderName),
}

/// The decision cache.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    parts: Vec<Part>,
    pub(crate) ttl_ms: u64,
}

impl Cache {
    /// The state key of `req`'s decision: the template expanded, hashed
    /// (it may hold credentials).
    pub(crate) fn key_for(&self, req: &Request) -> String {
        let mut text = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => text.push_str(t),
                Part::Method => text.push_str(req.method().as_str()),
                Part::Path => text.push_str(req.path()),
                Part::Query => text.push_str(req.query().unwrap_or_default()),
                Part::ClientIp => text.push_str(&req.client_ip().map(|ip| ip.to_string()).unwrap_or_default()),
                Part::Header(h) => text.push_str(req.header(h.as_str()).unwrap_or_default()),
            }
            // A separator no value holds, so `{a}{b}` cannot be forged.
            text.push('\u{1f}');
        }
        let digest = Sha256::digest(text.as_bytes());
        let mut key = String::with_capacity(2 + 32);
        key.push_str("d:");
        for b in &digest[..16] {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) upstream: String,
    pub(crate) path_prefix: String,
    pub(crate) forward_headers: Vec<HeaderName>,
    pub(crate) upstream_headers: Vec<HeaderName>,
    pub(crate) client_headers: Vec<HeaderName>,
    pub(crate) failure: Failure,
    pub(crate) failure_status: StatusCode,
    pub(crate) timeout: Duration,
    pub(crate) cache: Option<Cache>,
}

fn invalid(message: impl std::fmt::Display) -> Error {
    Error::internal(format!("invalid config: {message}"))
}

fn headers(key: &str, names: Vec<String>) -> Result<Vec<HeaderName>> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| invalid(format!("{key}[{i}]: {n:?} is not a header name")))
        })
        .collect()
}

fn duration(key: &str, text: &str, max: Duration) -> Result<Duration> {
    let d = humantime::parse_duration(text)
        .map_err(|e| invalid(format!("{key}: invalid duration {text:?} ({e}); write e.g. \"200ms\", \"30s\"")))?;
    if d.is_zero() || d > max {
        return Err(invalid(format!("{key}: must be above zero and at most {}", humantime::format_duration(max))));
    }
    Ok(d)
}

/// `{method} {path} {header:authorization}` → parts.
fn template(text: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or_else(|| invalid(format!("cache.key: unclosed `{{` in {text:?}")))?;
        let name = &rest[open + 1..open + close];
        parts.push(match name {
            "method" => Part::Method,
            "path" => Part::Path,
            "query" => Part::Query,
            "client_ip" => Part::ClientIp,
            _ => match name.strip_prefix("header:") {
                Some(h) => Part::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| invalid(format!("cache.key: {h:?} is not a header name")))?,
                ),
                None => {
                    return Err(invalid(format!(
                        "cache.key: unknown `{{{name}}}`: use {{method}}, {{path}}, {{query}}, {{client_ip}} or {{header:NAME}}"
                    )));
                }
            },
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if parts.iter().all(|p| matches!(p, Part::Text(_))) {
        return Err(invalid(
            "cache.key: the template names nothing of the request, so every request would share one decision",
        ));
    }
    Ok(parts)
}

impl Spec {
    /// Parse and check the `config` table.
    pub(crate) fn from_config(config: &Config) -> Result<Self> {
        let s: Settings = serde_path_to_error::deserialize(config.as_json())
            .map_err(|e| if e.path().iter().next().is_none() { invalid(e.inner()) } else { invalid(e) })?;
        if s.upstream.is_empty() {
            return Err(invalid("upstream: name the authorization service's upstream"));
        }
        if !s.path_prefix.is_empty() && (!s.path_prefix.starts_with('/') || s.path_prefix.ends_with('/')) {
            return Err(invalid(format!(
                "path_prefix: {:?} must start with `/` and not end with one, e.g. \"/authz\"",
                s.path_prefix
            )));
        }
        let failure_status = StatusCode::from_u16(s.failure_status)
            .ok()
            .filter(|st| (400..600).contains(&st.as_u16()))
            .ok_or_else(|| invalid(format!("failure_status: {} is not a 4xx or 5xx status", s.failure_status)))?;
        let cache = match s.cache {
            None => None,
            Some(c) => Some(Cache {
                parts: template(&c.key)?,
                ttl_ms: duration("cache.ttl", &c.ttl, MAX_TTL)?.as_millis() as u64,
            }),
        };
        Ok(Spec {
            upstream: s.upstream,
            path_prefix: s.path_prefix,
            forward_headers: headers("forward_headers", s.forward_headers)?,
            upstream_headers: headers("upstream_headers", s.upstream_headers)?,
            client_headers: headers("client_headers", s.client_headers)?,
            failure: s.failure,
            failure_status,
            timeout: duration("timeout", &s.timeout, MAX_TIMEOUT)?,
            cache,
        })
    }
}
