//! JWT bearer tokens: key selection, signature, time window and claim rules.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};
use weir_plugin_sdk::prelude::*;

use crate::alg::Alg;
use crate::cache::{Cache, Entry};
use crate::introspect::Introspection;
use crate::keys::Key;
use crate::remote::Remote;
use crate::source::Source;
use crate::verdict::{Denial, Grant, Verdict};

/// Longer tokens are refused without being parsed.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

type Claims = Map<String, Value>;

/// A configured JWT validator (one per plugin instance).
pub(crate) struct Jwt {
    pub(crate) sources: Vec<Source>,
    /// Keys from the config.
    pub(crate) keys: Vec<Key>,
    /// Keys from an identity provider's JWKS URL.
    pub(crate) remote: Option<Remote>,
    /// Opaque tokens (and every token, without keys) asked about there.
    pub(crate) introspection: Option<Introspection>,
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway_ms: i64,
    pub(crate) require_exp: bool,
    pub(crate) required_scopes: Vec<String>,
    /// `required_scopes` joined by spaces, for the `scope` attribute.
    pub(crate) scope_attr: Rc<str>,
    pub(crate) required_claims: Vec<String>,
    /// Claim → accepted values.
    pub(crate) claim_values: Vec<(String, Vec<Value>)>,
    /// Claim → header it is forwarded in.
    pub(crate) forward: Vec<(String, HeaderName)>,
    pub(crate) cache: RefCell<Cache>,
    /// The remote set's `removals` the cache was last cleared at.
    pub(crate) cleared_at: Cell<u64>,
}

/// The JOSE header fields the plugin reads (others are ignored).
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn invalid(description: &'static str) -> Denial {
    Denial::InvalidToken(description.into())
}

impl Jwt {
    /// Decide on `token`: from the cache if it was verified before
    /// (re-checking the time window), else by verifying it or, for an
    /// opaque token, by introspection.
    pub(crate) fn check(&self, token: &str, cx: &Context) -> Verdict {
        if token.len() > MAX_TOKEN_BYTES {
            return Verdict::Deny(invalid("token too large"));
        }
        let now = now_ms(cx);
        let introspect = self.introspection.as_ref().filter(|_| !self.verifies(token));
        // The remote keys are refreshed on schedule also while every token
        // is a cache hit; verdicts of a key that went away are dropped.
        let remote = match (&self.remote, introspect) {
            (Some(remote), None) => {
                let keys = remote.keys(cx, now);
                if remote.removals() != self.cleared_at.get() {
                    self.cleared_at.set(remote.removals());
                    self.cache.borrow_mut().clear();
                }
                Some(keys)
            }
            _ => None,
        };
        let id = self.cache.borrow().id(token);
        if let Some(entry) = self.cache.borrow().get(&id)
            && entry.until_ms.is_none_or(|until| now < until)
        {
            return self.within_time(entry, now);
        }
        let (claims, until_ms) = match introspect {
            Some(introspection) => match introspection.check(token, cx, now) {
                Ok(active) => (active.claims, Some(active.until_ms)),
                Err(denial) => return Verdict::Deny(denial),
            },
            None => {
                let remote = match remote {
                    Some(Ok(keys)) => Some(keys),
                    Some(Err(_)) if self.keys.is_empty() => {
                        return Verdict::Deny(Denial::Unavailable(
                            "the identity provider's keys are not available yet".into(),
                        ));
                    }
                    _ => None,
                };
                match self.verify(token, cx, now, remote) {
                    Ok(claims) => (claims, None),
                    Err(denial) => return Verdict::Deny(denial),
                }
            }
        };
        // An introspected token is active by the provider's word; `exp` is
        // only required of a self-contained one.
        let vouched = until_ms.is_some();
        let entry = match (time_claim(&claims, "exp"), time_claim(&claims, "nbf")) {
            (Ok(exp_ms), Ok(nbf_ms)) => {
                Entry { exp_ms, nbf_ms, verdict: self.rules(&claims, exp_ms.is_some() || vouched), until_ms }
            }
            (Err(d), _) | (_, Err(d)) => return Verdict::Deny(d),
        };
        let verdict = self.within_time(&entry, now);
        self.cache.borrow_mut().insert(id, entry);
        verdict
    }

    /// Whether `token` is verified here rather than introspected: it is a
    /// compact JWS and there are keys to verify it with.
    fn verifies(&self, token: &str) -> bool {
        (!self.keys.is_empty() || self.remote.is_some()) && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// The entry's verdict if the clock is inside the token's window.
    fn within_time(&self, entry: &Entry, now_ms: i64) -> Verdict {
        if let Some(exp) = entry.exp_ms
            && now_ms >= exp.saturating_add(self.leeway_ms)
        {
            return Verdict::Deny(invalid("token expired"));
        }
        if let Some(nbf) = entry.nbf_ms
            && now_ms.saturating_add(self.leeway_ms) < nbf
        {
            return Verdict::Deny(invalid("token not yet valid"));
        }
        entry.verdict.clone()
    }

    /// Parse the compact JWS, pick the key, check the signature; the claims
    /// if it is genuine.
    fn verify(&self, token: &str, cx: &Context, now: i64, mut remote: Option<Rc<[Key]>>) -> Result<Claims, Denial> {
        let malformed = || invalid("malformed token");
        let mut parts = token.split('.');
        let (Some(header64), Some(payload64), Some(signature64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header_bytes = URL_SAFE_NO_PAD.decode(header64).map_err(|_| malformed())?;
        let header: JoseHeader = serde_json::from_slice(&header_bytes).map_err(|_| malformed())?;
        // `none`, and anything not on the list, is refused here.
        let alg = Alg::parse(&header.alg).ok_or_else(|| invalid("unsupported algorithm"))?;
        if header.crit.is_some() {
            return Err(invalid("unsupported critical header parameter"));
        }
        let kid = header.kid.as_deref();
        if let (Some(kid), Some(source)) = (kid, &self.remote)
            && !self.keys.iter().chain(remote.iter().flat_map(|r| r.iter())).any(|k| k.kid.as_deref() == Some(kid))
        {
            // Perhaps the provider rotated its key: look for a newer set.
            remote = Some(source.keys_after_unknown_kid(cx, now));
        }
        let key = self.select(remote.as_deref().unwrap_or_default(), alg, kid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature64).map_err(|_| malformed())?;
        let payload = URL_SAFE_NO_PAD.decode(payload64).map_err(|_| malformed())?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| malformed())?;
        let signed = &token[..header64.len() + 1 + payload64.len()];
        cx.counter_add("auth_jwt_verify", 1);
        if !key.verify(alg, signed.as_bytes(), &signature) {
            return Err(invalid("invalid signature"));
        }
        Ok(claims)
    }

    /// The key for a token with `alg` and `kid`:
    ///
    /// * a `kid` naming a configured key selects it; the key must allow `alg`;
    /// * otherwise the candidates are the keys allowing `alg` — all of them
    ///   for a token without `kid`, only those without a `kid` for a token
    ///   whose `kid` is unknown — and there must be exactly one.
    fn select<'k>(&'k self, remote: &'k [Key], alg: Alg, kid: Option<&str>) -> Result<&'k Key, Denial> {
        if let Some(kid) = kid
            && let Some(key) = self.keys.iter().chain(remote).find(|k| k.kid.as_deref() == Some(kid))
        {
            return if key.algs.contains(alg) { Ok(key) } else { Err(invalid("algorithm not allowed for this key")) };
        }
        let mut candidates =
            self.keys.iter().chain(remote).filter(|k| k.algs.contains(alg) && (kid.is_none() || k.kid.is_none()));
        match (candidates.next(), candidates.next()) {
            (Some(key), None) => Ok(key),
            (None, _) if kid.is_some() => Err(invalid("unknown key id")),
            (None, _) => Err(invalid("no key accepts the token's algorithm")),
            (Some(_), Some(_)) => Err(invalid("the token has no kid and several keys accept its algorithm")),
        }
    }

    /// Every rule that does not depend on the clock, in order: `exp`
    /// required, issuer, audience, scopes, claims; then the headers to set.
    fn rules(&self, claims: &Claims, has_exp: bool) -> Verdict {
        match self.rules_inner(claims, has_exp) {
            Ok(grant) => Verdict::Allow(grant),
            Err(denial) => Verdict::Deny(denial),
        }
    }

    fn rules_inner(&self, claims: &Claims, has_exp: bool) -> Result<Grant, Denial> {
        if self.require_exp && !has_exp {
            return Err(invalid("token has no exp claim"));
        }
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.issuers.iter().any(|i| i == iss)) {
                return Err(invalid("issuer not accepted"));
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |a: &Value| a.as_str().is_some_and(|a| self.audiences.iter().any(|x| x == a));
            let ok = match claims.get("aud") {
                Some(Value::Array(auds)) => auds.iter().any(accepted),
                Some(aud) => accepted(aud),
                None => false,
            };
            if !ok {
                return Err(invalid("audience not accepted"));
            }
        }
        if !self.required_scopes.iter().all(|s| has_scope(claims, s)) {
            return Err(Denial::InsufficientScope { scope: self.scope_attr.clone() });
        }
        for name in &self.required_claims {
            if claim(claims, name).is_none() {
                return Err(Denial::MissingClaim(format!("the token lacks the claim `{name}`").into()));
            }
        }
        for (name, accepted) in &self.claim_values {
            let matches = |v: &Value| accepted.contains(v);
            let ok = match claim(claims, name) {
                Some(Value::Array(values)) => values.iter().any(matches),
                Some(value) => matches(value),
                None => false,
            };
            if !ok {
                return Err(Denial::MissingClaim(format!("the claim `{name}` does not have an accepted value").into()));
            }
        }
        let mut headers = Vec::with_capacity(self.forward.len());
        for (name, header) in &self.forward {
            let Some(text) = claim(claims, name).and_then(header_text) else { continue };
            let value = header_value(&text).ok_or_else(|| {
                Denial::InvalidToken(format!("the claim `{name}` cannot be forwarded as a header").into())
            })?;
            headers.push((header.clone(), value));
        }
        Ok(headers.into())
    }
}

fn now_ms(cx: &Context) -> i64 {
    i64::try_from(cx.wall_now()).unwrap_or(i64::MAX)
}

/// A NumericDate claim (seconds, possibly fractional) in milliseconds.
fn time_claim(claims: &Claims, name: &'static str) -> Result<Option<i64>, Denial> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs.saturating_mul(1000))),
            // `as` saturates; NaN cannot come out of JSON.
            (None, Some(secs)) => Ok(Some((secs * 1000.0) as i64)),
            (None, None) => Err(Denial::InvalidToken(format!("malformed {name} claim").into())),
        },
        Some(_) => Err(Denial::InvalidToken(format!("malformed {name} claim").into())),
    }
}

/// Whether the token grants `scope`, through `scope` (a space-separated
/// string, RFC 8693) or `scp` (an array, or a string as some issuers send).
fn has_scope(claims: &Claims, scope: &str) -> bool {
    ["scope", "scp"].iter().any(|name| match claims.get(*name) {
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|x| x == scope),
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(scope)),
        _ => false,
    })
}

/// A claim by name: a top-level claim of exactly that name, else a dotted
/// path into nested objects (`realm_access.roles`). `null` counts as absent.
pub(crate) fn claim<'c>(claims: &'c Claims, name: &str) -> Option<&'c Value> {
    let found = match claims.get(name) {
        Some(v) => Some(v),
        None if name.contains('.') => {
            let mut parts = name.split('.');
            let mut current = claims.get(parts.next()?)?;
            for part in parts {
                current = current.as_object()?.get(part)?;
            }
            Some(current)
        }
        None => None,
    };
    found.filter(|v| !v.is_null())
}

/// `text` as a header value if HTTP allows it as one (RFC 9110 §5.5): its
/// UTF-8 bytes, which may be non-ASCII (obs-text); no control character
/// but HTAB (so no CR, LF, NUL or DEL); no leading or trailing space or tab,
/// which a recipient would strip (an upstream would read `" admin"` as
/// `"admin"`).
fn header_value(text: &str) -> Option<HeaderValue> {
    let bytes = text.as_bytes();
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    if bytes.first().is_some_and(blank) || bytes.last().is_some_and(blank) {
        return None;
    }
    // Refuses every control byte but HTAB, and DEL.
    HeaderValue::from_bytes(bytes).ok()
}

/// How a claim is written in a header: strings as they are, numbers and
/// booleans in JSON, arrays of those joined with `,`, objects as JSON.
fn header_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(|i| !matches!(i, Value::Array(_) | Value::Object(_) | Value::Null)) => {
            Some(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
        other => Some(other.to_string()),
    }
}
