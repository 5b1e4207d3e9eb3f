//! Opaque tokens, asked about at the identity provider (OAuth 2.0 Token
//! Introspection, RFC 7662): `POST path` with `token=…` as a form, the
//! gateway authenticated as a client with HTTP Basic (RFC 6749 §2.3.1).
//!
//! An active token's answer is cached by the SHA-256 of the token (never
//! the token itself) in host state, shared by every instance (and node),
//! for `min(exp, cache_ttl)`; each instance also keeps the verdict in its
//! verified-token cache for the same time. An inactive token is refused
//! and not cached. An identity provider that cannot answer (down, slow, a
//! non-200 or malformed answer) makes the request a `503`: the token may
//! well be valid.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use weir_plugin_sdk::prelude::*;

use crate::verdict::Denial;

/// The settings, validated.
pub(crate) struct Introspection {
    pub(crate) upstream: String,
    pub(crate) path: String,
    /// `Basic base64(urlencode(id):urlencode(secret))`.
    pub(crate) authorization: String,
    pub(crate) cache_ttl_ms: i64,
    pub(crate) timeout: Option<Duration>,
}

/// What the provider said about an active token, and until when the
/// answer may be used.
pub(crate) struct Active {
    pub(crate) claims: Map<String, Value>,
    pub(crate) until_ms: i64,
}

impl Introspection {
    pub(crate) fn new(
        upstream: String,
        path: String,
        client_id: &str,
        client_secret: &str,
        cache_ttl_ms: i64,
        timeout: Option<Duration>,
    ) -> Introspection {
        let credentials = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
        let authorization = format!("Basic {}", STANDARD.encode(credentials));
        Introspection { upstream, path, authorization, cache_ttl_ms, timeout }
    }

    /// The claims of `token` if the provider says it is active.
    pub(crate) fn check(&self, token: &str, cx: &Context, now: i64) -> Result<Active, Denial> {
        let key = format!("introspect:{}", hex(&Sha256::digest(token.as_bytes())));
        let state = cx.state();
        if let Ok(Some(stored)) = state.get(&key)
            && let Some((until_ms, claims)) = parse_stored(&stored)
            && now < until_ms
        {
            cx.counter_add("auth_introspection_cached", 1);
            return Ok(Active { claims, until_ms });
        }
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut call = cx
            .http(&self.upstream)
            .post(&self.path)
            .header("authorization", &self.authorization)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body);
        if let Some(timeout) = self.timeout {
            call = call.timeout(timeout);
        }
        cx.counter_add("auth_introspection_calls", 1);
        let unavailable = |why: String| {
            cx.counter_add("auth_introspection_failed", 1);
            cx.log(Level::Warn, &format!("introspection at `{}`: {why}", self.upstream));
            Denial::Unavailable("the identity provider could not check the token".into())
        };
        let answer = call.send().map_err(|e| unavailable(e.to_string()))?;
        if answer.status() != StatusCode::OK {
            return Err(unavailable(format!("{} answered {}", self.path, answer.status().as_u16())));
        }
        let claims: Map<String, Value> = serde_json::from_slice(answer.body())
            .map_err(|e| unavailable(format!("{}: not a JSON object: {e}", self.path)))?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Err(Denial::InvalidToken("token is not active".into()));
        }
        let mut until_ms = now.saturating_add(self.cache_ttl_ms);
        if let Some(exp) = claims.get("exp").and_then(Value::as_f64) {
            until_ms = until_ms.min((exp * 1000.0) as i64);
        }
        if until_ms > now {
            let ttl = u64::try_from(until_ms - now).unwrap_or(1);
            let mut stored = format!("v1 {until_ms}\n").into_bytes();
            stored.extend_from_slice(answer.body());
            let _ = state.set(&key, &stored, ttl);
        }
        Ok(Active { claims, until_ms })
    }
}

/// `v1 UNTIL_MS\n` + the provider's JSON answer.
fn parse_stored(stored: &[u8]) -> Option<(i64, Map<String, Value>)> {
    let newline = stored.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&stored[..newline]).ok()?;
    let until = head.strip_prefix("v1 ")?.parse().ok()?;
    let claims = serde_json::from_slice(&stored[newline + 1..]).ok()?;
    Some((until, claims))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn form_encoding_and_stored_answers() {
        assert_eq!(form_encode("a b+c/é"), "a+b%2Bc%2F%C3%A9");
        assert_eq!(form_encode("weir-1.x_y*"), "weir-1.x_y*");
        let (until, claims) = parse_stored(b"v1 42\n{\"active\":true}").expect("parsed");
        assert_eq!(until, 42);
        assert_eq!(claims["active"], true);
        assert!(parse_stored(b"v2 42\n{}").is_none());
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }
}
