//! The configuration schema, and its validation into ready-to-run parts.
//! Every check happens here, once, so `new` rejects a bad config with a
//! message naming the key.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir_plugin_sdk::prelude::*;

use crate::alg::{Alg, AlgSet};
use crate::apikey::{ApiKeys, parse_digest};
use crate::cache::Cache;
use crate::introspect::Introspection;
use crate::jwt::Jwt;
use crate::keys::{Key, decode_base64_secret};
use crate::remote::{Location, Remote, RemoteSettings};
use crate::source::{Source, SourceConfig};
use crate::verdict::{Challenges, Grant};

/// The largest `jwt.cache_size` accepted.
const MAX_CACHE_SIZE: usize = 65_536;

/// The plugin's `config` table; its JSON Schema is the one the plugin
/// declares (`Plugin::config_schema`). What a schema cannot say (header
/// names, durations, keys, combinations of keys) is checked by
/// [`Settings::compile`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "auth config",
    description = "The `config` table of `auth.wasm`: JWT bearer tokens (`jwt`) and/or API keys (`api_keys`); at least \
                   one of the two."
)]
pub(crate) struct Settings {
    /// The realm of the `WWW-Authenticate` challenges: printable ASCII without `"` or `\`.
    #[serde(default = "default_realm")]
    realm: String,
    /// Remove the credential(s) before the request goes upstream.
    #[serde(default)]
    strip_credential: bool,
    /// Let requests without any credential through (still without the
    /// identity headers); a bad credential is still refused.
    #[serde(default)]
    allow_missing: bool,
    /// JWT bearer tokens (and opaque tokens, with `introspection`).
    #[serde(default)]
    jwt: Option<JwtSettings>,
    /// API keys.
    #[serde(default)]
    api_keys: Option<ApiKeySettings>,
}

/// JWT bearer tokens: where keys come from, where the token is, what it must
/// hold and which claims are forwarded.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JwtSettings {
    /// Verification keys given one by one.
    #[serde(default)]
    keys: Vec<KeySettings>,
    /// A JWKS document (RFC 7517) added to `keys`: its JSON text, or the same
    /// written as a table with a `keys` array.
    #[serde(default)]
    #[schemars(schema_with = "jwks_schema")]
    jwks: Option<Value>,
    /// The upstream (in the instance's `outbound` list) that publishes the
    /// identity provider's key set.
    #[serde(default)]
    jwks_upstream: Option<String>,
    /// The key set's path (and query) on `jwks_upstream`, starting with `/`
    /// (default `"/.well-known/jwks.json"`; not with `oidc_discovery`).
    #[serde(default)]
    jwks_path: Option<String>,
    /// Read the path from `jwks_uri` in `/.well-known/openid-configuration` on
    /// `jwks_upstream` (not with `jwks_path`).
    #[serde(default)]
    oidc_discovery: bool,
    /// How long a fetched key set is fresh without `Cache-Control: max-age`:
    /// a positive duration, a whole number and one unit of `ms`, `s`, `m`,
    /// `h`, e.g. `"10m"`.
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh: String,
    /// The least time between two fetches (a token with an unknown `kid`
    /// asks for one; a failed fetch is retried after it): a positive duration
    /// like `"30s"` (`ms`, `s`, `m`, `h`), at most `jwks_refresh`.
    #[serde(default = "default_jwks_min_refresh")]
    jwks_min_refresh: String,
    /// Per-call timeout of the key and introspection calls, a positive
    /// duration like `"2s"` (`ms`, `s`, `m`, `h`); default: the upstream's
    /// `timeout`.
    #[serde(default)]
    idp_timeout: Option<String>,
    /// Opaque tokens: asked about at the identity provider (RFC 7662).
    #[serde(default)]
    introspection: Option<IntrospectionSettings>,
    /// Where the token is looked for: `{ header = "NAME" }`, `{ query = "NAME" }`
    /// or `{ cookie = "NAME" }` (names written decoded, without `%`). Every
    /// location is read; a request may hold one credential.
    #[serde(default = "default_jwt_from")]
    #[schemars(length(min = 1))]
    from: Vec<SourceConfig>,
    /// Accepted `iss` values (any if empty).
    #[serde(default)]
    issuers: Vec<String>,
    /// Accepted `aud` values (not checked if empty).
    #[serde(default)]
    audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`: a duration, a whole number and
    /// one unit of `ms`, `s`, `m`, `h`, e.g. `"30s"` or `"500ms"`.
    #[serde(default = "default_leeway")]
    leeway: String,
    /// Refuse tokens without `exp`.
    #[serde(default = "yes")]
    require_exp: bool,
    /// Scopes the token must all have (in `scope` or `scp`), each an RFC 6749
    /// scope token.
    #[serde(default)]
    required_scopes: Vec<String>,
    /// Claims the token must have (not `null`): a top-level claim, or else a
    /// dotted path such as `realm_access.roles`.
    #[serde(default)]
    required_claims: Vec<String>,
    /// Claims that must have one of the given values: claim → a string,
    /// number or boolean, or a non-empty list of them. A claim that is an
    /// array matches if one of its elements does.
    #[serde(default)]
    #[schemars(schema_with = "claim_values_schema")]
    claim_values: BTreeMap<String, Value>,
    /// Claim → the request header it is forwarded in (a header name the
    /// plugin may set); `{}` forwards nothing.
    #[serde(default = "default_forward")]
    forward_claims: BTreeMap<String, String>,
    /// Verified tokens remembered per instance, at most 65536 (0 disables the
    /// cache).
    #[serde(default = "default_cache_size")]
    #[schemars(range(max = 65_536))]
    cache_size: usize,
}

/// Opaque tokens, introspected at the identity provider (RFC 7662).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct IntrospectionSettings {
    /// The upstream (in the instance's `outbound` list) to ask.
    upstream: String,
    /// The introspection endpoint's path on it, starting with `/`.
    path: String,
    /// The gateway's client id at the provider (not empty).
    client_id: String,
    /// The gateway's client secret at the provider.
    client_secret: String,
    /// The longest an active token's answer is reused (also bounded by its
    /// `exp`): a positive duration like `"5m"` (`ms`, `s`, `m`, `h`).
    #[serde(default = "default_introspection_ttl")]
    cache_ttl: String,
}

/// One verification key: exactly one of `secret`, `secret_base64` or `pem`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeySettings {
    /// Key id: a token whose header names this `kid` is verified with this
    /// key only (not empty).
    #[serde(default)]
    kid: Option<String>,
    /// The algorithms this key may verify (default: all that fit the key).
    #[serde(default)]
    #[schemars(schema_with = "algs_schema")]
    algs: Option<Vec<String>>,
    /// HMAC secret: its UTF-8 bytes, at least 32 of them.
    #[serde(default)]
    secret: Option<String>,
    /// HMAC secret in base64 (standard or URL-safe alphabet, padded or not).
    #[serde(default)]
    secret_base64: Option<String>,
    /// PEM public key: RSA (at least 2048 bits), EC P-256 or P-384; not a
    /// private key, not a certificate.
    #[serde(default)]
    pem: Option<String>,
}

/// API keys.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeySettings {
    /// Where the key is looked for, as `jwt.from`: `{ header = "NAME" }`,
    /// `{ query = "NAME" }` or `{ cookie = "NAME" }`.
    #[serde(default = "default_api_from")]
    #[schemars(length(min = 1))]
    from: Vec<SourceConfig>,
    /// The request header the consumer's name is forwarded in (a header name
    /// the plugin may set).
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    /// The keys, at least one: `{ name, key }` or `{ name, sha256 }`. Names and
    /// keys are unique.
    #[schemars(length(min = 1))]
    keys: Vec<ApiKeySetting>,
}

/// One API key: its consumer's name and either the key or its SHA-256.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeySetting {
    /// The consumer, forwarded in `consumer_header`: non-empty, usable as a
    /// header value.
    name: String,
    /// The key in plain (not empty).
    #[serde(default)]
    key: Option<String>,
    /// The key's SHA-256 instead, 64 hex digits.
    #[serde(default)]
    sha256: Option<String>,
}

/// `jwks`: JSON text, or the document as a table with a `keys` array. One
/// schema with both types (`required` and `properties` only apply to
/// tables), so that a mismatch is reported as it is.
fn jwks_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["string", "object"],
        "required": ["keys"],
        "properties": { "keys": { "type": "array" } },
    })
}

/// `claim_values`: claim → a scalar or a non-empty list of scalars.
fn claim_values_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": ["string", "number", "boolean", "array"],
            "items": { "type": ["string", "number", "boolean"] },
            "minItems": 1,
        },
    })
}

/// `algs`: a non-empty list of the algorithm names the plugin knows.
fn algs_schema(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
    json_schema!({
        "type": "array",
        "items": { "type": "string", "enum": names },
        "minItems": 1,
    })
}

fn default_realm() -> String {
    "weir".into()
}
fn default_jwt_from() -> Vec<SourceConfig> {
    vec![SourceConfig::Header("authorization".into())]
}
fn default_api_from() -> Vec<SourceConfig> {
    vec![SourceConfig::Header("x-api-key".into())]
}
fn default_leeway() -> String {
    "60s".into()
}
fn default_jwks_refresh() -> String {
    "10m".into()
}
fn default_jwks_min_refresh() -> String {
    "30s".into()
}
fn default_introspection_ttl() -> String {
    "5m".into()
}
fn yes() -> bool {
    true
}
fn default_forward() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".to_owned(), "x-auth-sub".to_owned())])
}
fn default_consumer_header() -> String {
    "x-auth-sub".into()
}
fn default_cache_size() -> usize {
    1024
}

/// Headers a claim or consumer name may never be written into.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
];

/// The validated configuration.
pub(crate) struct Compiled {
    pub(crate) jwt: Option<Jwt>,
    pub(crate) api_keys: Option<ApiKeys>,
    pub(crate) strip_credential: bool,
    pub(crate) allow_missing: bool,
    /// Every header the plugin sets: always removed from incoming requests.
    pub(crate) managed: Vec<HeaderName>,
    pub(crate) challenges: Challenges,
}

impl Settings {
    pub(crate) fn compile(self) -> Result<Compiled, String> {
        if self.realm.is_empty() || !self.realm.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
            return Err(format!("`realm` must be printable ASCII without quotes or backslashes: {:?}", self.realm));
        }
        if self.jwt.is_none() && self.api_keys.is_none() {
            return Err("nothing to check: configure `jwt`, `api_keys` or both".into());
        }
        let jwt = self.jwt.map(compile_jwt).transpose().map_err(|e| format!("jwt: {e}"))?;
        let api_keys = self.api_keys.map(compile_api_keys).transpose().map_err(|e| format!("api_keys: {e}"))?;

        let jwt_sources = jwt.as_ref().map_or(&[][..], |j| &j.0.sources[..]);
        let api_sources = api_keys.as_ref().map_or(&[][..], |a| &a.0.sources[..]);
        if let Some(s) = jwt_sources.iter().find(|s| api_sources.contains(s)) {
            return Err(format!(
                "`jwt.from` and `api_keys.from` both read {}: a location belongs to one method",
                describe(s)
            ));
        }
        let mut managed: Vec<HeaderName> = Vec::new();
        for h in jwt.iter().flat_map(|j| &j.1).chain(api_keys.iter().map(|a| &a.1)) {
            let carries = |s: &&Source| matches!(s, Source::Header(c) if same_header(c.as_str(), h.as_str()));
            if let Some(s) = jwt_sources.iter().chain(api_sources).find(carries) {
                return Err(format!("header `{h}` cannot both carry a credential ({}) and an identity", describe(s)));
            }
            if !managed.contains(h) {
                managed.push(h.clone());
            }
        }
        let challenges = Challenges {
            realm: self.realm,
            bearer: jwt.is_some(),
            api_key: api_keys.is_some(),
            api_key_hint: api_sources.iter().map(Source::hint).collect::<Vec<_>>().join(", "),
        };
        Ok(Compiled {
            jwt: jwt.map(|j| j.0),
            api_keys: api_keys.map(|a| a.0),
            strip_credential: self.strip_credential,
            allow_missing: self.allow_missing,
            managed,
            challenges,
        })
    }
}

fn describe(s: &Source) -> String {
    match s {
        Source::Header(h) => format!("header `{h}`"),
        Source::Query(q) => format!("query parameter `{q}`"),
        Source::Cookie(c) => format!("cookie `{c}`"),
    }
}

fn sources(from: &[SourceConfig]) -> Result<Vec<Source>, String> {
    if from.is_empty() {
        return Err("`from` must name at least one location".into());
    }
    let mut out: Vec<Source> = Vec::with_capacity(from.len());
    for (i, c) in from.iter().enumerate() {
        let s = Source::from_config(c).map_err(|e| format!("from[{i}]: {e}"))?;
        if out.contains(&s) {
            return Err(format!("from[{i}]: {} is listed twice", describe(&s)));
        }
        out.push(s);
    }
    Ok(out)
}

/// Whether two lower-case header names are the same once `_` is read as
/// `-`: CGI/WSGI-style upstreams fold `x_auth_sub` and `x-auth-sub` into
/// one variable (`HTTP_X_AUTH_SUB`).
pub(crate) fn same_header(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().map(fold).eq(b.bytes().map(fold))
}

/// A header the plugin writes an identity into.
fn identity_header(name: &str, what: &str) -> Result<HeaderName, String> {
    let h =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{what}: `{name}` is not a valid header name"))?;
    if RESERVED_HEADERS.iter().any(|r| same_header(r, h.as_str())) {
        return Err(format!("{what}: `{name}` cannot be set by the auth plugin"));
    }
    Ok(h)
}

/// A claim name as written in config (it may appear in error descriptions).
fn check_claim_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what}: claim name {name:?} must be non-empty visible ASCII"));
    }
    Ok(())
}

/// Parse `"500ms"`, `"30s"`, `"2m"`, `"1h"` into milliseconds.
fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

fn parse_algs(names: &[String]) -> Result<AlgSet, String> {
    let mut set = AlgSet::default();
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err("`none` is never accepted".into());
        }
        let alg = Alg::parse(name).ok_or_else(|| {
            let all: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
            format!("unknown algorithm `{name}` (expected one of {})", all.join(", "))
        })?;
        set.insert(alg);
    }
    Ok(set)
}

fn compile_key(k: KeySettings) -> Result<Key, String> {
    let algs = k.algs.as_deref().map(parse_algs).transpose()?;
    if k.kid.as_deref() == Some("") {
        return Err("`kid` must not be empty".into());
    }
    match (k.secret, k.secret_base64, k.pem) {
        (Some(secret), None, None) => Key::hmac(k.kid, secret.as_bytes(), algs),
        (None, Some(b64), None) => Key::hmac(k.kid, &decode_base64_secret(&b64)?, algs),
        (None, None, Some(pem)) => Key::pem(k.kid, &pem, algs),
        (None, None, None) => Err("give one of `secret`, `secret_base64` or `pem`".into()),
        _ => Err("give only one of `secret`, `secret_base64` or `pem`".into()),
    }
}

fn compile_jwt(mut s: JwtSettings) -> Result<(Jwt, Vec<HeaderName>), String> {
    let remote = remote_settings(&s)?;
    let timeout = idp_timeout(&s)?;
    let introspection = s.introspection.take().map(|i| compile_introspection(i, timeout)).transpose()?;
    let mut keys = Vec::new();
    for (i, k) in s.keys.into_iter().enumerate() {
        let name = k.kid.as_ref().map(|k| format!(" (kid `{k}`)")).unwrap_or_default();
        keys.push(compile_key(k).map_err(|e| format!("keys[{i}]{name}: {e}"))?);
    }
    if let Some(doc) = s.jwks {
        keys.extend(crate::keys::jwks(doc, false).map_err(|e| format!("jwks: {e}"))?.0);
    }
    if keys.is_empty() && remote.is_none() && introspection.is_none() {
        return Err("no usable key: give `keys`, a `jwks` with signing keys, `jwks_upstream` or `introspection`".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(kid) = &k.kid
            && keys[..i].iter().any(|other| other.kid.as_ref() == Some(kid))
        {
            return Err(format!("kid `{kid}` is used by two keys"));
        }
    }
    let kidless: Vec<&Key> = keys.iter().filter(|k| k.kid.is_none()).collect();
    for (i, a) in kidless.iter().enumerate() {
        if kidless[i + 1..].iter().any(|b| a.algs.intersects(b.algs)) {
            return Err("two keys without `kid` accept the same algorithm: tokens could not choose between \
                        them; give them a `kid`"
                .into());
        }
    }

    let leeway_ms = parse_duration_ms(&s.leeway)
        .ok_or_else(|| format!("`leeway` must be a duration like \"30s\" or \"500ms\", got {:?}", s.leeway))?;
    for scope in &s.required_scopes {
        // RFC 6749 §3.3 scope-token.
        if scope.is_empty()
            || !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(format!("`required_scopes`: {scope:?} is not a valid scope"));
        }
    }
    for name in &s.required_claims {
        check_claim_name(name, "`required_claims`")?;
    }
    let mut claim_values = Vec::new();
    for (name, accepted) in s.claim_values {
        check_claim_name(&name, "`claim_values`")?;
        let accepted = match accepted {
            Value::Array(values) => values,
            other => vec![other],
        };
        if accepted.is_empty() || accepted.iter().any(|v| matches!(v, Value::Array(_) | Value::Object(_))) {
            return Err(format!("`claim_values.{name}` must be a value or a non-empty list of values"));
        }
        claim_values.push((name, accepted));
    }
    let mut forward = Vec::new();
    let mut headers: Vec<HeaderName> = Vec::new();
    for (name, header) in s.forward_claims {
        check_claim_name(&name, "`forward_claims`")?;
        let h = identity_header(&header, &format!("`forward_claims.{name}`"))?;
        if headers.iter().any(|other| same_header(other.as_str(), h.as_str())) {
            return Err(format!("`forward_claims`: header `{h}` is the target of two claims"));
        }
        headers.push(h.clone());
        forward.push((name, h));
    }
    if s.cache_size > MAX_CACHE_SIZE {
        return Err(format!("`cache_size` must be at most {MAX_CACHE_SIZE}, got {}", s.cache_size));
    }
    let jwt = Jwt {
        sources: sources(&s.from)?,
        keys,
        remote: remote.map(Remote::new),
        introspection,
        issuers: s.issuers,
        audiences: s.audiences,
        leeway_ms,
        require_exp: s.require_exp,
        scope_attr: s.required_scopes.join(" ").into(),
        required_scopes: s.required_scopes,
        required_claims: s.required_claims,
        claim_values,
        forward,
        cache: RefCell::new(Cache::new(s.cache_size)),
        cleared_at: Cell::new(0),
    };
    Ok((jwt, headers))
}

/// A positive duration setting, in milliseconds.
fn duration_setting(name: &str, text: &str) -> Result<i64, String> {
    match parse_duration_ms(text) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("`{name}` must be a positive duration like \"30s\" or \"10m\", got {text:?}")),
    }
}

/// An upstream name as the gateway's config writes them.
fn upstream_name(name: &str, what: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{what} must name an upstream (letters, digits, `-`, `_`), got {name:?}"));
    }
    Ok(name.to_owned())
}

/// A path on an upstream: origin form, no fragment.
fn upstream_path(path: &str, what: &str) -> Result<String, String> {
    if !path.starts_with('/') || path.contains('#') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{what} must be a path starting with `/`, got {path:?}"));
    }
    Ok(path.to_owned())
}

fn idp_timeout(s: &JwtSettings) -> Result<Option<std::time::Duration>, String> {
    s.idp_timeout
        .as_deref()
        .map(|t| duration_setting("idp_timeout", t).map(|ms| std::time::Duration::from_millis(ms as u64)))
        .transpose()
}

fn remote_settings(s: &JwtSettings) -> Result<Option<RemoteSettings>, String> {
    let Some(upstream) = &s.jwks_upstream else {
        if s.jwks_path.is_some() || s.oidc_discovery {
            return Err("`jwks_path` and `oidc_discovery` need `jwks_upstream`".into());
        }
        return Ok(None);
    };
    let upstream = upstream_name(upstream, "`jwks_upstream`")?;
    let location = match (&s.jwks_path, s.oidc_discovery) {
        (Some(_), true) => return Err("give `jwks_path` or `oidc_discovery = true`, not both".into()),
        (Some(path), false) => Location::Path(upstream_path(path, "`jwks_path`")?),
        (None, true) => Location::Discovery,
        (None, false) => Location::Path("/.well-known/jwks.json".into()),
    };
    let refresh_ms = duration_setting("jwks_refresh", &s.jwks_refresh)?;
    let min_refresh_ms = duration_setting("jwks_min_refresh", &s.jwks_min_refresh)?;
    if min_refresh_ms > refresh_ms {
        return Err(format!(
            "`jwks_min_refresh` ({}) must not be longer than `jwks_refresh` ({})",
            s.jwks_min_refresh, s.jwks_refresh
        ));
    }
    Ok(Some(RemoteSettings { upstream, location, refresh_ms, min_refresh_ms, timeout: idp_timeout(s)? }))
}

fn compile_introspection(
    i: IntrospectionSettings,
    timeout: Option<std::time::Duration>,
) -> Result<Introspection, String> {
    let upstream = upstream_name(&i.upstream, "`introspection.upstream`")?;
    let path = upstream_path(&i.path, "`introspection.path`")?;
    if i.client_id.is_empty() {
        return Err("`introspection.client_id` must not be empty".into());
    }
    let ttl = duration_setting("introspection.cache_ttl", &i.cache_ttl)?;
    Ok(Introspection::new(upstream, path, &i.client_id, &i.client_secret, ttl, timeout))
}

fn compile_api_keys(s: ApiKeySettings) -> Result<(ApiKeys, HeaderName), String> {
    let header = identity_header(&s.consumer_header, "`consumer_header`")?;
    if s.keys.is_empty() {
        return Err("`keys` must list at least one key".into());
    }
    let mut digests: Vec<[u8; 32]> = Vec::with_capacity(s.keys.len());
    let mut grants: Vec<Grant> = Vec::with_capacity(s.keys.len());
    let mut names: Vec<&str> = Vec::with_capacity(s.keys.len());
    for (i, k) in s.keys.iter().enumerate() {
        let at = format!("keys[{i}] (`{}`)", k.name);
        let value = HeaderValue::from_str(&k.name)
            .ok()
            .filter(|_| !k.name.is_empty())
            .ok_or_else(|| format!("keys[{i}]: `name` must be non-empty and usable as a header value"))?;
        if names.contains(&k.name.as_str()) {
            return Err(format!("{at}: the name is used twice"));
        }
        let digest = match (&k.key, &k.sha256) {
            (Some(key), None) if !key.is_empty() => Sha256::digest(key.as_bytes()).into(),
            (None, Some(hex)) => parse_digest(hex).ok_or_else(|| format!("{at}: `sha256` must be 64 hex digits"))?,
            (Some(_), None) => return Err(format!("{at}: `key` must not be empty")),
            (None, None) => return Err(format!("{at}: give `key` or `sha256`")),
            (Some(_), Some(_)) => return Err(format!("{at}: give only one of `key` or `sha256`")),
        };
        if let Some(j) = digests.iter().position(|d| *d == digest) {
            return Err(format!("{at}: same key as keys[{j}] (`{}`)", s.keys[j].name));
        }
        digests.push(digest);
        names.push(&k.name);
        grants.push(Rc::from(vec![(header.clone(), value)]));
    }
    Ok((ApiKeys { sources: sources(&s.from)?, digests, grants }, header))
}
