//! Native tests through the SDK harness. Tokens are signed with the
//! `jsonwebtoken` crate (an implementation independent of the one under
//! test) using the test-only keys in `tests/keys/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_plugin_sdk::OutboundError;
use weir_plugin_sdk::http;
use weir_plugin_sdk::testing::{self, Harness, Outcome};

use super::*;

/// 32 bytes: enough for HS256 only.
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// 64 bytes: enough for every HMAC algorithm.
const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn key_file(name: &str) -> String {
    let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test key {path}: {e}"))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// `{"sub": "alice", "exp": now + 10 min}` with `extra` merged in (a
/// `null` removes a claim).
fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "alice", "exp": now() + 600 });
    for (k, v) in extra.as_object().expect("object").clone() {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(&k);
        } else {
            c[k] = v;
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("sign test token")
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

fn rsa_key(file: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(key_file(file).as_bytes()).expect("rsa test key")
}

fn ec_key(file: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(key_file(file).as_bytes()).expect("ec test key")
}

/// A token assembled by hand from a header, claims and signature bytes.
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

fn harness(config: Value) -> Harness<Auth> {
    testing::reset();
    Harness::new(config).unwrap_or_else(|e| panic!("config refused: {e}"))
}

fn hs_config(extra: Value) -> Value {
    let mut jwt = json!({ "keys": [{ "secret": SECRET }] });
    for (k, v) in extra.as_object().expect("object") {
        jwt[k] = v.clone();
    }
    json!({ "jwt": jwt })
}

fn get(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

fn bearer(token: &str) -> http::Request<()> {
    get("/orders", &[("authorization", &format!("Bearer {token}"))])
}

fn allowed(h: &Harness<Auth>, req: http::Request<()>) -> http::Request<()> {
    h.on_request(req).unwrap_continue()
}

fn header<'a>(req: &'a http::Request<()>, name: &str) -> Option<&'a str> {
    req.headers().get(name).map(|v| v.to_str().expect("ascii header"))
}

/// A denial: status, the `WWW-Authenticate` values, the JSON body.
struct Denied {
    status: u16,
    challenges: Vec<String>,
    body: Value,
}

impl Denied {
    fn challenge(&self) -> &str {
        assert_eq!(self.challenges.len(), 1, "{:?}", self.challenges);
        &self.challenges[0]
    }
    fn description(&self) -> &str {
        self.body["error_description"].as_str().expect("error_description")
    }
}

fn denied(h: &Harness<Auth>, req: http::Request<()>) -> Denied {
    let resp = h.on_request(req).unwrap_respond();
    assert_eq!(resp.headers()["content-type"], "application/json");
    Denied {
        status: resp.status().as_u16(),
        challenges: resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect(),
        body: serde_json::from_slice(resp.body()).expect("JSON body"),
    }
}

/// Assert a `401 invalid_token` with `description`.
fn assert_invalid(h: &Harness<Auth>, req: http::Request<()>, description: &str) {
    let d = denied(h, req);
    assert_eq!(d.status, 401, "{}", d.body);
    assert_eq!(d.body["error"], "invalid_token");
    assert_eq!(d.description(), description);
    assert_eq!(
        d.challenge(),
        format!("Bearer realm=\"weir\", error=\"invalid_token\", error_description=\"{description}\"")
    );
}

fn config_error(config: Value) -> String {
    testing::reset();
    match Harness::<Auth>::new(config) {
        Ok(_) => panic!("config must be refused"),
        Err(e) => e,
    }
}

fn assert_config_error(config: Value, needle: &str) {
    let err = config_error(config);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

// ---- JWT: algorithms and keys ---------------------------------------------

#[test]
fn hs256_token_is_accepted_and_sub_forwarded() {
    let h = harness(hs_config(json!({})));
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS);
    let req = allowed(&h, bearer(&hs256(&claims(json!({})))));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    assert!(req.headers().contains_key("authorization"), "kept unless strip_credential");
    assert_eq!(testing::counter("auth_ok"), 1);
    assert_eq!(testing::counter("auth_denied"), 0);
}

#[test]
fn every_hmac_algorithm_with_a_long_enough_secret() {
    let h = harness(json!({ "jwt": { "keys": [{ "secret": LONG_SECRET }] } }));
    let key = EncodingKey::from_secret(LONG_SECRET.as_bytes());
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let req = allowed(&h, bearer(&sign(alg, &key, None, &claims(json!({})))));
        assert_eq!(header(&req, "x-auth-sub"), Some("alice"), "{alg:?}");
    }
    // A 32-byte secret only verifies HS256 (RFC 7518 §3.2).
    let h = harness(hs_config(json!({})));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(Algorithm::HS512, &key, None, &claims(json!({})));
    assert_invalid(&h, bearer(&token), "no key accepts the token's algorithm");
}

#[test]
fn every_rsa_algorithm_with_spki_and_pkcs1_keys() {
    let key = rsa_key("rsa.key");
    for pem in ["rsa.pub.pem", "rsa.pkcs1.pub.pem"] {
        let h = harness(json!({ "jwt": { "keys": [{ "pem": key_file(pem) }] } }));
        for alg in
            [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512]
        {
            let req = allowed(&h, bearer(&sign(alg, &key, None, &claims(json!({})))));
            assert_eq!(header(&req, "x-auth-sub"), Some("alice"), "{pem} {alg:?}");
        }
        // Signed by another RSA key: refused.
        let other = sign(Algorithm::RS256, &rsa_key("rsa2.key"), None, &claims(json!({})));
        assert_invalid(&h, bearer(&other), "invalid signature");
    }
}

#[test]
fn es256_and_es384() {
    let h = harness(json!({ "jwt": { "keys": [
        { "kid": "p256", "pem": key_file("ec256.pub.pem") },
        { "kid": "p384", "pem": key_file("ec384.pub.pem") },
    ] } }));
    let t256 = sign(Algorithm::ES256, &ec_key("ec256.key"), Some("p256"), &claims(json!({ "sub": "e1" })));
    assert_eq!(header(&allowed(&h, bearer(&t256)), "x-auth-sub"), Some("e1"));
    let t384 = sign(Algorithm::ES384, &ec_key("ec384.key"), Some("p384"), &claims(json!({ "sub": "e2" })));
    assert_eq!(header(&allowed(&h, bearer(&t384)), "x-auth-sub"), Some("e2"));
    // An ES256 token presented with the P-384 key's kid.
    let wrong = sign(Algorithm::ES256, &ec_key("ec256.key"), Some("p384"), &claims(json!({})));
    assert_invalid(&h, bearer(&wrong), "algorithm not allowed for this key");
    // A P-256 signature over other claims.
    let (head, _) = t256.rsplit_once('.').expect("three parts");
    let (_, sig) = sign(Algorithm::ES256, &ec_key("ec256.key"), Some("p256"), &claims(json!({ "sub": "x" })))
        .rsplit_once('.')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("three parts");
    assert_invalid(&h, bearer(&format!("{head}.{sig}")), "invalid signature");
}

#[test]
fn kid_selects_the_key() {
    let h = harness(json!({ "jwt": { "keys": [
        { "kid": "one", "pem": key_file("rsa.pub.pem") },
        { "kid": "two", "pem": key_file("rsa2.pub.pem") },
    ] } }));
    let c = claims(json!({}));
    assert!(matches!(
        h.on_request(bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("one"), &c))),
        Outcome::Continue(_)
    ));
    assert!(matches!(
        h.on_request(bearer(&sign(Algorithm::RS256, &rsa_key("rsa2.key"), Some("two"), &c))),
        Outcome::Continue(_)
    ));
    // The kid names the other key: its signature does not verify.
    assert_invalid(&h, bearer(&sign(Algorithm::RS256, &rsa_key("rsa2.key"), Some("one"), &c)), "invalid signature");
    assert_invalid(&h, bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("three"), &c)), "unknown key id");
    // Without kid, two keys accept RS256: ambiguous, refused.
    assert_invalid(
        &h,
        bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), None, &c)),
        "the token has no kid and several keys accept its algorithm",
    );
}

#[test]
fn tokens_without_kid_or_with_unknown_kid_use_the_only_fitting_key() {
    // One RSA key with a kid and one HMAC secret without: a token without
    // kid finds the only key for its algorithm either way.
    let h = harness(json!({ "jwt": { "keys": [
        { "kid": "rsa", "pem": key_file("rsa.pub.pem") },
        { "secret": SECRET },
    ] } }));
    let c = claims(json!({}));
    assert!(matches!(
        h.on_request(bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), None, &c))),
        Outcome::Continue(_)
    ));
    assert!(matches!(h.on_request(bearer(&hs256(&c))), Outcome::Continue(_)));
    // An unknown kid falls back to keys without a kid only.
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    assert!(matches!(h.on_request(bearer(&sign(Algorithm::HS256, &key, Some("rotated"), &c))), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rotated"), &c)), "unknown key id");
}

#[test]
fn jwks_document_as_string_or_table() {
    let jwks = key_file("jwks.json");
    let table: Value = serde_json::from_str(&jwks).expect("jwks fixture");
    for doc in [Value::String(jwks), table] {
        let h = harness(json!({ "jwt": { "jwks": doc } }));
        let c = claims(json!({}));
        let rs = sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rsa-1"), &c);
        assert!(matches!(h.on_request(bearer(&rs)), Outcome::Continue(_)));
        let es = sign(Algorithm::ES256, &ec_key("ec256.key"), Some("ec-256"), &c);
        assert!(matches!(h.on_request(bearer(&es)), Outcome::Continue(_)));
        let es384 = sign(Algorithm::ES384, &ec_key("ec384.key"), Some("ec-384"), &c);
        assert!(matches!(h.on_request(bearer(&es384)), Outcome::Continue(_)));
        // The JWK says alg RS256: PS256 with the same key is refused.
        let ps = sign(Algorithm::PS256, &rsa_key("rsa.key"), Some("rsa-1"), &c);
        assert_invalid(&h, bearer(&ps), "algorithm not allowed for this key");
        // The `use: enc` key was skipped.
        let enc = sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rsa-enc"), &c);
        assert_invalid(&h, bearer(&enc), "unknown key id");
    }
}

#[test]
fn jwks_symmetric_key() {
    let k = URL_SAFE_NO_PAD.encode(LONG_SECRET);
    let h = harness(json!({ "jwt": { "jwks": { "keys": [{ "kty": "oct", "kid": "s", "alg": "HS512", "k": k }] } } }));
    let key = EncodingKey::from_secret(LONG_SECRET.as_bytes());
    let c = claims(json!({}));
    assert!(matches!(h.on_request(bearer(&sign(Algorithm::HS512, &key, Some("s"), &c))), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&sign(Algorithm::HS256, &key, Some("s"), &c)), "algorithm not allowed for this key");
}

#[test]
fn secret_base64_and_key_algs() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(LONG_SECRET);
    let h = harness(json!({ "jwt": { "keys": [{ "secret_base64": b64, "algs": ["HS384"] }] } }));
    let key = EncodingKey::from_secret(LONG_SECRET.as_bytes());
    let c = claims(json!({}));
    assert!(matches!(h.on_request(bearer(&sign(Algorithm::HS384, &key, None, &c))), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&sign(Algorithm::HS256, &key, None, &c)), "no key accepts the token's algorithm");

    let h = harness(json!({ "jwt": { "keys": [{ "pem": key_file("rsa.pub.pem"), "algs": ["PS256"] }] } }));
    assert!(matches!(
        h.on_request(bearer(&sign(Algorithm::PS256, &rsa_key("rsa.key"), None, &c))),
        Outcome::Continue(_)
    ));
    assert_invalid(
        &h,
        bearer(&sign(Algorithm::RS256, &rsa_key("rsa.key"), None, &c)),
        "no key accepts the token's algorithm",
    );
}

// ---- JWT: refused tokens ----------------------------------------------------

#[test]
fn alg_none_is_always_refused() {
    let h = harness(hs_config(json!({})));
    for alg in ["none", "None", "NONE"] {
        let token = raw_token(&json!({ "alg": alg, "typ": "JWT" }), &claims(json!({})), b"");
        assert_invalid(&h, bearer(&token), "unsupported algorithm");
        // With a signature part that is not empty either.
        let token = raw_token(&json!({ "alg": alg }), &claims(json!({})), b"sig");
        assert_invalid(&h, bearer(&token), "unsupported algorithm");
    }
    assert_eq!(testing::counter("auth_jwt_verify"), 0, "no signature check was even tried");
}

#[test]
fn algorithm_confusion_is_impossible() {
    // The classic attack: an HS256 token whose HMAC key is the server's RSA
    // public key (which the attacker knows).
    let pem = key_file("rsa.pub.pem");
    let forged_key = EncodingKey::from_secret(pem.as_bytes());
    let c = claims(json!({ "sub": "mallory" }));
    let h = harness(json!({ "jwt": { "keys": [{ "pem": pem }] } }));
    assert_invalid(&h, bearer(&sign(Algorithm::HS256, &forged_key, None, &c)), "no key accepts the token's algorithm");
    let h = harness(json!({ "jwt": { "keys": [{ "kid": "rsa", "pem": pem }] } }));
    assert_invalid(
        &h,
        bearer(&sign(Algorithm::HS256, &forged_key, Some("rsa"), &c)),
        "algorithm not allowed for this key",
    );
    // And the other way: an RS256 token never meets an HMAC secret.
    let h = harness(json!({ "jwt": { "keys": [{ "kid": "hs", "secret": SECRET }] } }));
    let rs = sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("hs"), &c);
    assert_invalid(&h, bearer(&rs), "algorithm not allowed for this key");
    assert_eq!(testing::counter("auth_jwt_verify"), 0);
}

#[test]
fn bad_signature_is_refused() {
    let h = harness(hs_config(json!({})));
    let token = hs256(&claims(json!({})));
    // Swap in other claims, keep the signature.
    let (head, rest) = token.split_once('.').expect("parts");
    let (_, sig) = rest.split_once('.').expect("parts");
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({ "sub": "admin" })).to_string());
    assert_invalid(&h, bearer(&format!("{head}.{payload}.{sig}")), "invalid signature");
    // Signed with another secret.
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret of thirty-two b!!"),
        None,
        &claims(json!({})),
    );
    assert_invalid(&h, bearer(&other), "invalid signature");
    assert_eq!(testing::counter("auth_denied"), 2);
    assert_eq!(testing::counter("auth_denied_invalid"), 2);
}

#[test]
fn malformed_tokens_are_refused() {
    let h = harness(hs_config(json!({})));
    let good = hs256(&claims(json!({})));
    let (head, _) = good.split_once('.').expect("parts");
    for bad in [
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        "!!!.e30.AAAA".to_owned(),
        format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode("not json")),
        format!("{head}.bm90IGpzb24.AAAA"),
        format!("{head}.e30.AAAA="),
    ] {
        assert_invalid(&h, bearer(&bad), "malformed token");
    }
    let huge = "a".repeat(jwt::MAX_TOKEN_BYTES + 1);
    assert_invalid(&h, bearer(&huge), "token too large");
    // An empty bearer token is no token at all.
    let d = denied(&h, get("/", &[("authorization", "Bearer ")]));
    assert_eq!((d.status, d.challenge()), (401, "Bearer realm=\"weir\""));
}

#[test]
fn crit_header_is_refused() {
    let h = harness(hs_config(json!({})));
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let token = encode(&header, &claims(json!({})), &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign");
    assert_invalid(&h, bearer(&token), "unsupported critical header parameter");
}

// ---- JWT: time ---------------------------------------------------------------

#[test]
fn exp_and_nbf_with_leeway() {
    let expired_30s_ago = hs256(&claims(json!({ "exp": now() - 30 })));
    let h = harness(hs_config(json!({ "leeway": "60s" })));
    assert!(matches!(h.on_request(bearer(&expired_30s_ago)), Outcome::Continue(_)));
    let h = harness(hs_config(json!({ "leeway": "10s" })));
    assert_invalid(&h, bearer(&expired_30s_ago), "token expired");
    // The default leeway is 60 s.
    let h = harness(hs_config(json!({})));
    assert!(matches!(h.on_request(bearer(&expired_30s_ago)), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "exp": now() - 61 })))), "token expired");

    let not_before_30s = hs256(&claims(json!({ "nbf": now() + 30 })));
    let h = harness(hs_config(json!({ "leeway": "1m" })));
    assert!(matches!(h.on_request(bearer(&not_before_30s)), Outcome::Continue(_)));
    let h = harness(hs_config(json!({ "leeway": "0s" })));
    assert_invalid(&h, bearer(&not_before_30s), "token not yet valid");
    // Once the time comes (the entry was cached, the window is re-checked).
    testing::advance(Duration::from_secs(31));
    assert!(matches!(h.on_request(bearer(&not_before_30s)), Outcome::Continue(_)));

    // Fractional NumericDate values are fine.
    let h = harness(hs_config(json!({ "leeway": "0ms" })));
    let fractional = hs256(&claims(json!({ "exp": now() as f64 + 100.5, "nbf": now() as f64 - 0.5 })));
    assert!(matches!(h.on_request(bearer(&fractional)), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "exp": "tomorrow" })))), "malformed exp claim");
}

#[test]
fn exp_is_required_unless_disabled() {
    let no_exp = hs256(&claims(json!({ "exp": null })));
    let h = harness(hs_config(json!({})));
    assert_invalid(&h, bearer(&no_exp), "token has no exp claim");
    let h = harness(hs_config(json!({ "require_exp": false })));
    assert!(matches!(h.on_request(bearer(&no_exp)), Outcome::Continue(_)));
}

#[test]
fn cache_hit_skips_the_signature_but_still_enforces_exp() {
    let h = harness(hs_config(json!({ "leeway": "0s" })));
    let token = hs256(&claims(json!({ "exp": now() + 5 })));
    for _ in 0..3 {
        assert_eq!(header(&allowed(&h, bearer(&token)), "x-auth-sub"), Some("alice"));
    }
    assert_eq!(testing::counter("auth_jwt_verify"), 1, "verified once, then served from the cache");
    assert_eq!(testing::counter("auth_ok"), 3);
    testing::advance(Duration::from_secs(6));
    assert_invalid(&h, bearer(&token), "token expired");
    assert_eq!(testing::counter("auth_jwt_verify"), 1, "refused by the cached entry, no new verification");
    // A tampered token is a different cache key: verified, refused.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    assert_invalid(&h, bearer(&tampered), "invalid signature");
    assert_eq!(testing::counter("auth_jwt_verify"), 2);
}

#[test]
fn cache_hit_still_enforces_scopes_and_claims() {
    let h = harness(hs_config(json!({ "required_scopes": ["write"], "claim_values": { "tenant": "acme" } })));
    let no_scope = hs256(&claims(json!({ "scope": "read", "tenant": "acme" })));
    let other_tenant = hs256(&claims(json!({ "scope": "write", "tenant": "evil" })));
    for _ in 0..2 {
        assert_eq!(denied(&h, bearer(&no_scope)).status, 403);
        assert_eq!(denied(&h, bearer(&other_tenant)).status, 403);
    }
    assert_eq!(testing::counter("auth_jwt_verify"), 2, "each verified once");
    assert_eq!(testing::counter("auth_denied_forbidden"), 4);
}

#[test]
fn cache_is_bounded_and_can_be_disabled() {
    let h = harness(hs_config(json!({ "cache_size": 0 })));
    let token = hs256(&claims(json!({})));
    for _ in 0..3 {
        allowed(&h, bearer(&token));
    }
    assert_eq!(testing::counter("auth_jwt_verify"), 3);

    let h = harness(hs_config(json!({ "cache_size": 2 })));
    let tokens: Vec<String> = (0..3).map(|i| hs256(&claims(json!({ "sub": format!("u{i}") })))).collect();
    for t in &tokens {
        allowed(&h, bearer(t));
    }
    assert_eq!(testing::counter("auth_jwt_verify"), 3);
    allowed(&h, bearer(&tokens[2]));
    allowed(&h, bearer(&tokens[1]));
    assert_eq!(testing::counter("auth_jwt_verify"), 3, "the two newest are cached");
    allowed(&h, bearer(&tokens[0]));
    assert_eq!(testing::counter("auth_jwt_verify"), 4, "the oldest was evicted");
}

#[test]
fn cache_evicts_first_in_first_out() {
    let mut cache = cache::Cache::new(2);
    let entry = || cache::Entry { exp_ms: None, nbf_ms: None, verdict: Verdict::Deny(Denial::Missing), until_ms: None };
    let ids: Vec<cache::TokenId> = ["a", "b", "c"].iter().map(|t| cache.id(t)).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert!(cache.id("a") == ids[0], "the same token, the same id");
    // Another instance draws other keys: ids are not comparable across
    // caches, and nobody outside can compute them.
    assert!(cache::Cache::new(2).id("a") != ids[0]);
    cache.insert(ids[0], entry());
    cache.insert(ids[1], entry());
    cache.insert(ids[0], entry());
    assert_eq!(cache.len(), 2);
    cache.insert(ids[2], entry());
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&ids[0]).is_none());
    assert!(cache.get(&ids[1]).is_some() && cache.get(&ids[2]).is_some());
}

// ---- JWT: issuer, audience, scopes, claims -------------------------------------

#[test]
fn issuer_is_checked() {
    let h = harness(hs_config(json!({ "issuers": ["https://id.example.com/", "https://old.example.com/"] })));
    let ok = hs256(&claims(json!({ "iss": "https://old.example.com/" })));
    assert!(matches!(h.on_request(bearer(&ok)), Outcome::Continue(_)));
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "iss": "https://evil/" })))), "issuer not accepted");
    assert_invalid(&h, bearer(&hs256(&claims(json!({})))), "issuer not accepted");
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "iss": ["https://id.example.com/"] })))), "issuer not accepted");
}

#[test]
fn audience_as_string_or_array() {
    let h = harness(hs_config(json!({ "audiences": ["orders"] })));
    assert!(matches!(h.on_request(bearer(&hs256(&claims(json!({ "aud": "orders" }))))), Outcome::Continue(_)));
    assert!(matches!(
        h.on_request(bearer(&hs256(&claims(json!({ "aud": ["billing", "orders"] }))))),
        Outcome::Continue(_)
    ));
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "aud": ["billing", "users"] })))), "audience not accepted");
    assert_invalid(&h, bearer(&hs256(&claims(json!({ "aud": "billing" })))), "audience not accepted");
    assert_invalid(&h, bearer(&hs256(&claims(json!({})))), "audience not accepted");
    // Not configured: not checked.
    let h = harness(hs_config(json!({})));
    assert!(matches!(h.on_request(bearer(&hs256(&claims(json!({ "aud": "x" }))))), Outcome::Continue(_)));
}

#[test]
fn required_scopes_from_scope_or_scp() {
    let h = harness(hs_config(json!({ "required_scopes": ["orders:read", "orders:write"] })));
    for granted in [
        json!({ "scope": "profile orders:write orders:read" }),
        json!({ "scp": ["orders:read", "orders:write"] }),
        json!({ "scp": "orders:read orders:write" }),
        json!({ "scope": "orders:read", "scp": ["orders:write"] }),
    ] {
        assert!(matches!(h.on_request(bearer(&hs256(&claims(granted.clone())))), Outcome::Continue(_)), "{granted}");
    }
    for lacking in [json!({ "scope": "orders:read" }), json!({ "scp": ["orders:readx", "orders:write"] }), json!({})] {
        let d = denied(&h, bearer(&hs256(&claims(lacking))));
        assert_eq!(d.status, 403);
        assert_eq!(d.body["error"], "insufficient_scope");
        assert_eq!(
            d.challenge(),
            "Bearer realm=\"weir\", error=\"insufficient_scope\", \
             error_description=\"the token lacks a required scope\", scope=\"orders:read orders:write\""
        );
    }
    assert_eq!(testing::counter("auth_denied_forbidden"), 3);
}

#[test]
fn required_claims_and_claim_values() {
    let h = harness(hs_config(json!({
        "required_claims": ["email"],
        "claim_values": { "tenant": "acme", "roles": ["admin", "ops"], "realm_access.level": 3 },
    })));
    let good =
        json!({ "email": "a@example.com", "tenant": "acme", "roles": ["dev", "ops"], "realm_access": { "level": 3 } });
    assert!(matches!(h.on_request(bearer(&hs256(&claims(good.clone())))), Outcome::Continue(_)));
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        claims(c)
    };
    for (c, description) in [
        (with("email", Value::Null), "the token lacks the claim `email`"),
        (with("tenant", json!("globex")), "the claim `tenant` does not have an accepted value"),
        (with("tenant", Value::Null), "the claim `tenant` does not have an accepted value"),
        (with("roles", json!(["dev"])), "the claim `roles` does not have an accepted value"),
        (with("roles", json!("viewer")), "the claim `roles` does not have an accepted value"),
        (with("realm_access", json!({ "level": 2 })), "the claim `realm_access.level` does not have an accepted value"),
    ] {
        let d = denied(&h, bearer(&hs256(&c)));
        assert_eq!(d.status, 403, "{c}");
        assert_eq!(d.body["error"], "insufficient_scope");
        assert_eq!(d.description(), description);
        assert_eq!(
            d.challenge(),
            format!("Bearer realm=\"weir\", error=\"insufficient_scope\", error_description=\"{description}\"")
        );
    }
    // A single accepted role is enough.
    assert!(matches!(h.on_request(bearer(&hs256(&with("roles", json!("admin"))))), Outcome::Continue(_)));
}

#[test]
fn forward_claims_mapping() {
    let h = harness(hs_config(json!({ "forward_claims": {
        "sub": "x-user", "email": "x-user-email", "groups": "x-user-groups",
        "age": "x-user-age", "org.id": "x-org", "profile": "x-profile", "missing": "x-missing",
    } })));
    let c = claims(json!({
        "email": "a@example.com", "groups": ["dev", "ops", 7], "age": 42, "org": { "id": "o-1" },
        "profile": { "tz": "UTC" },
    }));
    let req = allowed(&h, get("/", &[("authorization", &format!("Bearer {}", hs256(&c))), ("x-missing", "spoof")]));
    assert_eq!(header(&req, "x-user"), Some("alice"));
    assert_eq!(header(&req, "x-user-email"), Some("a@example.com"));
    assert_eq!(header(&req, "x-user-groups"), Some("dev,ops,7"));
    assert_eq!(header(&req, "x-user-age"), Some("42"));
    assert_eq!(header(&req, "x-org"), Some("o-1"));
    assert_eq!(header(&req, "x-profile"), Some(r#"{"tz":"UTC"}"#));
    assert_eq!(header(&req, "x-missing"), None, "a managed header the token does not fill is still removed");
    assert_eq!(header(&req, "x-auth-sub"), None, "the default mapping is replaced");

    // A claim that cannot be a header value refuses the request.
    let bad = hs256(&claims(json!({ "sub": "alice\r\nx-admin: true" })));
    assert_invalid(&h, bearer(&bad), "the claim `sub` cannot be forwarded as a header");

    // No mapping at all.
    let h = harness(hs_config(json!({ "forward_claims": {} })));
    let req = allowed(&h, get("/", &[("authorization", &format!("Bearer {}", hs256(&c))), ("x-auth-sub", "spoof")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("spoof"), "not managed when not mapped");
}

// ---- credentials: where, missing, spoofing, stripping -------------------------

#[test]
fn missing_credentials_get_a_bare_challenge() {
    let h = harness(json!({ "realm": "orders api", "jwt": { "keys": [{ "secret": SECRET }] } }));
    for req in [get("/", &[]), get("/", &[("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")])] {
        let d = denied(&h, req);
        assert_eq!(d.status, 401);
        assert_eq!(d.challenge(), "Bearer realm=\"orders api\"", "no error code (RFC 6750 §3.1)");
        assert_eq!(d.body, json!({ "error": "unauthorized", "error_description": "credentials are required" }));
    }
    assert_eq!(testing::counter("auth_denied_missing"), 2);
}

#[test]
fn token_from_custom_header_query_or_cookie() {
    let token = hs256(&claims(json!({})));
    let h = harness(hs_config(
        json!({ "from": [{ "header": "x-token" }, { "query": "access_token" }, { "cookie": "jwt" }] }),
    ));
    for req in [
        get("/", &[("x-token", &token)]),
        get("/", &[("x-token", &format!("Bearer {token}"))]),
        get(&format!("/?a=1&access_token={token}"), &[]),
        get("/", &[("cookie", &format!("theme=dark; jwt={token}; lang=en"))]),
    ] {
        assert_eq!(header(&allowed(&h, req), "x-auth-sub"), Some("alice"));
    }
    // `authorization` is not configured here.
    let d = denied(&h, bearer(&token));
    assert_eq!(d.status, 401);
    assert_eq!(d.body["error"], "unauthorized");
}

#[test]
fn repeated_credentials_are_a_bad_request() {
    let token = hs256(&claims(json!({})));
    let h = harness(hs_config(json!({ "from": [{ "header": "authorization" }, { "query": "access_token" }] })));
    let mut req = bearer(&token);
    req.headers_mut().append("authorization", format!("Bearer {token}").parse().expect("value"));
    let d = denied(&h, req);
    assert_eq!(d.status, 400);
    assert_eq!(d.body["error"], "invalid_request");
    assert_eq!(
        d.challenge(),
        "Bearer realm=\"weir\", error=\"invalid_request\", error_description=\"the credential header is repeated\""
    );
    let d = denied(&h, get(&format!("/?access_token={token}&access_token={token}"), &[]));
    assert_eq!((d.status, d.description()), (400, "the credential parameter is repeated"));
    assert_eq!(testing::counter("auth_denied_bad_request"), 2);
}

#[test]
fn repeated_cookie_is_a_bad_request() {
    let token = hs256(&claims(json!({})));
    let h = harness(hs_config(json!({ "from": [{ "cookie": "jwt" }] })));
    let repeated = |cookies: &[&str]| {
        let mut req = get("/", &[]);
        for c in cookies {
            req.headers_mut().append("cookie", http::HeaderValue::from_bytes(c.as_bytes()).expect("value"));
        }
        req
    };
    for cookies in [
        vec![format!("jwt={token}; theme=dark; jwt=forged")],
        vec![format!("jwt={token}"), "a=1; jwt=forged".to_owned()],
        // An empty first value must not hide the second from the check.
        vec![format!("jwt=; jwt={token}")],
        // Parsers that trim names read `jwt =` as `jwt`.
        vec![format!("jwt={token}; jwt =forged")],
        // Cookie names are compared percent-decoded too.
        vec![format!("jwt={token}; %6Awt=forged")],
    ] {
        let cookies: Vec<&str> = cookies.iter().map(String::as_str).collect();
        let d = denied(&h, repeated(&cookies));
        assert_eq!((d.status, d.description()), (400, "the credential cookie is repeated"), "{cookies:?}");
        assert_eq!(d.body["error"], "invalid_request");
    }
    // A Cookie header with non-ASCII bytes is read as well: the second
    // `jwt` there is still a repetition.
    let mut req = get("/", &[("cookie", &format!("jwt={token}"))]);
    req.headers_mut()
        .append("cookie", http::HeaderValue::from_bytes("x=caf\u{e9}; jwt=forged".as_bytes()).expect("obs-text"));
    assert_eq!(denied(&h, req).status, 400);
    // Other cookies may repeat; the credential cookie once is fine.
    let req = allowed(&h, repeated(&[&format!("a=1; jwt={token}; a=2")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    // A token in a Cookie header that also holds obs-text is found.
    let mut req = get("/", &[]);
    req.headers_mut().append(
        "cookie",
        http::HeaderValue::from_bytes(format!("x=caf\u{e9}; jwt={token}").as_bytes()).expect("obs-text"),
    );
    assert_eq!(header(&allowed(&h, req), "x-auth-sub"), Some("alice"));
}

#[test]
fn query_names_are_compared_percent_decoded() {
    let token = hs256(&claims(json!({})));
    let h = harness(json!({ "strip_credential": true, "jwt": {
        "keys": [{ "secret": SECRET }], "from": [{ "query": "access_token" }],
    } }));
    // An encoded name is the same parameter: found, and stripped.
    let req = allowed(&h, get(&format!("/items?a=1&access%5Ftoken={token}&b=2"), &[]));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    assert_eq!(req.uri(), "/items?a=1&b=2");
    let req = allowed(&h, get(&format!("/items?%61ccess_token={token}"), &[]));
    assert_eq!(req.uri(), "/items");
    // ... and counts as a repetition.
    for uri in [
        format!("/items?access_token={token}&access%5Ftoken=forged"),
        format!("/items?access%5ftoken=forged&access_token={token}"),
    ] {
        let d = denied(&h, get(&uri, &[]));
        assert_eq!((d.status, d.description()), (400, "the credential parameter is repeated"), "{uri}");
    }
}

#[test]
fn different_credentials_in_two_locations_are_a_bad_request() {
    let token = hs256(&claims(json!({})));
    let other = hs256(&claims(json!({ "sub": "mallory" })));
    let h = harness(hs_config(json!({ "from": [{ "header": "authorization" }, { "query": "access_token" }] })));
    let d = denied(&h, get(&format!("/?access_token={other}"), &[("authorization", &format!("Bearer {token}"))]));
    assert_eq!((d.status, d.description()), (400, "credentials in more than one location"));
    // The same token in both places is one credential.
    let req = allowed(&h, get(&format!("/?access_token={token}"), &[("authorization", &format!("Bearer {token}"))]));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    // A non-Bearer `authorization` is not a credential of ours.
    let req = allowed(&h, get(&format!("/?access_token={token}"), &[("authorization", "Basic dXNlcjpwYXNz")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
}

#[test]
fn non_ascii_claims_are_forwarded_as_bytes() {
    let h = harness(hs_config(json!({ "forward_claims": { "sub": "x-auth-sub", "name": "x-auth-name" } })));
    for name in ["Jos\u{e9}", "\u{5c71}\u{7530}", "tab\there", ""] {
        let req = allowed(&h, bearer(&hs256(&claims(json!({ "name": name })))));
        let value = req.headers().get("x-auth-name").expect("forwarded");
        assert_eq!(value.as_bytes(), name.as_bytes(), "{name:?} forwarded as its UTF-8 bytes");
    }
    for bad in ["a\rb", "a\nb", "a\0b", "a\u{1}b", "a\u{7f}b", " admin", "admin\t"] {
        assert_invalid(
            &h,
            bearer(&hs256(&claims(json!({ "name": bad })))),
            "the claim `name` cannot be forwarded as a header",
        );
    }
}

#[test]
fn underscored_spellings_of_identity_headers_are_removed() {
    let h = harness(hs_config(json!({ "forward_claims": { "sub": "x-auth-sub", "email": "x-auth-email" } })));
    let token = hs256(&claims(json!({})));
    let req = allowed(
        &h,
        get(
            "/",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x_auth_sub", "admin"),
                ("X_Auth-Email", "admin@example.com"),
                ("x_other", "kept"),
            ],
        ),
    );
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    assert_eq!(header(&req, "x_auth_sub"), None);
    assert_eq!(header(&req, "x_auth-email"), None);
    assert_eq!(header(&req, "x-auth-email"), None, "the token has no email");
    assert_eq!(header(&req, "x_other"), Some("kept"));
    // Anonymous requests too, and the API-key consumer header.
    let mut config = api_config(json!({ "consumer_header": "x-consumer" }));
    config["allow_missing"] = json!(true);
    let h = harness(config);
    let req = allowed(&h, get("/", &[("x_consumer", "bob")]));
    assert!(req.headers().is_empty(), "{:?}", req.headers());
    let req = allowed(&h, get("/", &[("x-api-key", "k-alice-0123456789"), ("x_consumer", "bob")]));
    assert_eq!(header(&req, "x-consumer"), Some("alice"));
    assert_eq!(header(&req, "x_consumer"), None);
}

#[test]
fn spoofed_identity_headers_are_replaced_or_removed() {
    let h = harness(hs_config(json!({ "require_exp": false })));
    let token = hs256(&claims(json!({})));
    let mut req = get("/", &[("authorization", &format!("Bearer {token}")), ("x-auth-sub", "mallory")]);
    req.headers_mut().append("x-auth-sub", "root".parse().expect("value"));
    let req = allowed(&h, req);
    let subs: Vec<_> = req.headers().get_all("x-auth-sub").iter().collect();
    assert_eq!(subs, ["alice"]);
    // A token without `sub`: the spoofed header is gone, nothing replaces it.
    let no_sub = hs256(&claims(json!({ "sub": null })));
    let req = allowed(&h, get("/", &[("authorization", &format!("Bearer {no_sub}")), ("x-auth-sub", "mallory")]));
    assert_eq!(header(&req, "x-auth-sub"), None);
}

#[test]
fn allow_missing_lets_anonymous_requests_through_without_identity() {
    let h = harness(json!({ "allow_missing": true, "jwt": { "keys": [{ "secret": SECRET }] } }));
    let req = allowed(&h, get("/", &[("x-auth-sub", "mallory")]));
    assert_eq!(header(&req, "x-auth-sub"), None);
    assert_eq!(testing::counter("auth_anonymous"), 1);
    // A bad credential is still refused.
    assert_invalid(&h, bearer("x.y.z"), "malformed token");
}

#[test]
fn strip_credential_removes_the_token_header() {
    let h = harness(json!({ "strip_credential": true, "jwt": { "keys": [{ "secret": SECRET }] } }));
    let req = allowed(&h, bearer(&hs256(&claims(json!({})))));
    assert!(!req.headers().contains_key("authorization"));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
}

#[test]
fn strip_credential_keeps_other_query_parameters_and_cookies() {
    let token = hs256(&claims(json!({})));
    let h = harness(json!({ "strip_credential": true, "jwt": {
        "keys": [{ "secret": SECRET }], "from": [{ "query": "access_token" }, { "cookie": "jwt" }],
    } }));
    let req = allowed(&h, get(&format!("/items?a=1&access_token={token}&b=x%20y"), &[]));
    assert_eq!(req.uri(), "/items?a=1&b=x%20y");
    let req = allowed(&h, get(&format!("/items?access_token={token}"), &[]));
    assert_eq!(req.uri(), "/items");
    let req = allowed(&h, get("/items", &[("cookie", &format!("theme=dark; jwt={token}; lang=en"))]));
    assert_eq!(header(&req, "cookie"), Some("theme=dark; lang=en"));
    let req = allowed(&h, get("/items", &[("cookie", &format!("jwt={token}"))]));
    assert!(!req.headers().contains_key("cookie"));
}

// ---- API keys -------------------------------------------------------------------

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn api_config(extra: Value) -> Value {
    let mut api = json!({ "keys": [
        { "name": "alice", "key": "k-alice-0123456789" },
        { "name": "bob", "sha256": sha256_hex("k-bob-0123456789") },
    ] });
    for (k, v) in extra.as_object().expect("object") {
        api[k] = v.clone();
    }
    json!({ "api_keys": api })
}

#[test]
fn api_key_in_header_plain_or_hashed() {
    let h = harness(api_config(json!({})));
    let req = allowed(&h, get("/", &[("x-api-key", "k-alice-0123456789"), ("x-auth-sub", "bob")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("alice"));
    assert!(req.headers().contains_key("x-api-key"), "kept unless strip_credential");
    let req = allowed(&h, get("/", &[("x-api-key", "k-bob-0123456789")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("bob"));

    for wrong in [
        "k-alice-012345678",
        "k-alice-0123456789 extra",
        "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        &sha256_hex("k-bob-0123456789"),
    ] {
        let d = denied(&h, get("/", &[("x-api-key", wrong)]));
        assert_eq!(d.status, 401, "{wrong}");
        assert_eq!(d.body, json!({ "error": "invalid_api_key", "error_description": "the API key is not valid" }));
        assert_eq!(d.challenge(), "ApiKey realm=\"weir\", header=\"x-api-key\"");
    }
    let d = denied(&h, get("/", &[]));
    assert_eq!((d.status, d.challenge()), (401, "ApiKey realm=\"weir\", header=\"x-api-key\""));
    assert_eq!(testing::counter("auth_ok"), 2);
    assert_eq!(testing::counter("auth_denied"), 5);
}

#[test]
fn api_key_in_query_is_decoded_and_stripped() {
    let h = harness(json!({ "strip_credential": true, "api_keys": {
        "from": [{ "query": "apikey" }], "consumer_header": "x-consumer",
        "keys": [{ "name": "partner-7", "key": "a/b+c=d" }],
    } }));
    let req = allowed(&h, get("/v1/items?page=2&apikey=a%2Fb+c%3Dd&sort=asc", &[("x-consumer", "spoof")]));
    assert_eq!(header(&req, "x-consumer"), Some("partner-7"));
    assert_eq!(req.uri(), "/v1/items?page=2&sort=asc");
    let d = denied(&h, get("/v1/items?apikey=nope", &[]));
    assert_eq!((d.status, d.challenge()), (401, "ApiKey realm=\"weir\", query=\"apikey\""));
}

#[test]
fn api_key_in_cookie() {
    let h = harness(api_config(json!({ "from": [{ "cookie": "key" }] })));
    let req = allowed(&h, get("/", &[("cookie", "a=1; key=k-bob-0123456789")]));
    assert_eq!(header(&req, "x-auth-sub"), Some("bob"));
}

#[test]
fn both_methods_token_takes_precedence() {
    let mut config = api_config(json!({}));
    config["jwt"] = json!({ "keys": [{ "secret": SECRET }] });
    let h = harness(config);
    let token = hs256(&claims(json!({})));
    // Token only, key only.
    assert_eq!(header(&allowed(&h, bearer(&token)), "x-auth-sub"), Some("alice"));
    assert_eq!(header(&allowed(&h, get("/", &[("x-api-key", "k-bob-0123456789")])), "x-auth-sub"), Some("bob"));
    // A token and a key: two credentials, whichever is good.
    for (authorization, key) in [
        ("Bearer x.y.z", "k-bob-0123456789"),
        (&*format!("Bearer {token}"), "wrong"),
        (&*format!("Bearer {token}"), "k-bob-0123456789"),
    ] {
        let d = denied(&h, get("/", &[("authorization", authorization), ("x-api-key", key)]));
        assert_eq!((d.status, d.description()), (400, "credentials in more than one location"));
    }
    // A bad token is not rescued by anything.
    assert_invalid(&h, bearer("x.y.z"), "malformed token");
    // Nothing: both challenges.
    let d = denied(&h, get("/", &[]));
    assert_eq!(d.challenges, ["Bearer realm=\"weir\"", "ApiKey realm=\"weir\", header=\"x-api-key\""]);
}

#[test]
fn strip_credential_with_both_methods() {
    let mut config = api_config(json!({}));
    config["jwt"] = json!({ "keys": [{ "secret": SECRET }] });
    config["strip_credential"] = json!(true);
    let h = harness(config);
    let token = hs256(&claims(json!({})));
    let req = allowed(&h, bearer(&token));
    assert!(!req.headers().contains_key("authorization"));
    let req = allowed(&h, get("/", &[("x-api-key", "k-bob-0123456789")]));
    assert!(!req.headers().contains_key("x-api-key"));
    // Another scheme in `authorization` is not ours: left for the upstream.
    let req = allowed(&h, get("/", &[("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", "k-bob-0123456789")]));
    assert_eq!(header(&req, "authorization"), Some("Basic dXNlcjpwYXNz"));
    assert!(!req.headers().contains_key("x-api-key"));
}

// ---- configuration ---------------------------------------------------------------

#[test]
fn bad_configs_are_refused_with_clear_messages() {
    let hs = |key: Value| json!({ "jwt": { "keys": [key] } });
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "nothing to check: configure `jwt`, `api_keys` or both"),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }] }, "color": 1 }), "unknown field `color`"),
        (json!({ "jwt": {} }), "jwt: no usable key"),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "issuer": "x" } }), "unknown field `issuer`"),
        (hs(json!({ "kid": "a" })), "jwt: keys[0] (kid `a`): give one of `secret`, `secret_base64` or `pem`"),
        (hs(json!({ "secret": SECRET, "pem": "x" })), "give only one of `secret`, `secret_base64` or `pem`"),
        (hs(json!({ "secret": "short" })), "an HMAC secret needs at least 32 bytes (RFC 7518 §3.2), this one has 5"),
        (
            hs(json!({ "secret": SECRET, "algs": ["HS512"] })),
            "HS512 needs a secret of at least 64 bytes, this one has 32",
        ),
        (hs(json!({ "secret": SECRET, "algs": ["RS256"] })), "RS256 cannot be used with an HMAC secret"),
        (hs(json!({ "secret": SECRET, "algs": ["none"] })), "`none` is never accepted"),
        (hs(json!({ "secret": SECRET, "algs": ["XS256"] })), "unknown algorithm `XS256`"),
        (hs(json!({ "secret": SECRET, "algs": [] })), "`algs` must not be empty"),
        (hs(json!({ "secret_base64": "***" })), "`secret_base64` is not valid base64"),
        (hs(json!({ "pem": key_file("rsa1024.pub.pem") })), "RSA key has 1024 bits; at least 2048 are required"),
        (hs(json!({ "pem": key_file("rsa.key") })), "`pem` must be a public key, not a private key"),
        (hs(json!({ "pem": key_file("ed25519.pub.pem") })), "unsupported or malformed public key"),
        (hs(json!({ "pem": "hello" })), "`pem` must start with `-----BEGIN PUBLIC KEY-----`"),
        (hs(json!({ "pem": key_file("ec256.pub.pem"), "algs": ["ES384"] })), "ES384 cannot be used with a P-256 key"),
        (hs(json!({ "pem": key_file("rsa.pub.pem"), "algs": ["ES256"] })), "ES256 cannot be used with an RSA key"),
        (
            json!({ "jwt": { "keys": [{ "kid": "a", "secret": SECRET }, { "kid": "a", "pem": key_file("rsa.pub.pem") }] } }),
            "jwt: kid `a` is used by two keys",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }, { "secret": LONG_SECRET }] } }),
            "two keys without `kid` accept the same algorithm",
        ),
        (json!({ "jwt": { "jwks": "{not json" } }), "jwt: jwks: not valid JSON"),
        (json!({ "jwt": { "jwks": { "kys": [] } } }), "a JWKS document is an object with a `keys` array"),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "EC", "kid": "e", "crv": "P-256", "x": "AAAA", "y": "AAAA" }] } } }),
            "jwt: jwks: keys[0] (kid `e`): members `x` and `y` of a P-256 key must be 32 bytes",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }] } } }),
            "unsupported curve `P-521`",
        ),
        (json!({ "jwt": { "jwks": { "keys": [{ "kty": "RSA", "e": "AQAB" }] } } }), "member `n` is required"),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AA" }] } } }),
            "jwt: no usable key",
        ),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "leeway": "soon" } }), "`leeway` must be a duration"),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "leeway": 30 } }),
            "invalid type: integer `30`, expected a string",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "forward_claims": { "sub": "authorization" } } }),
            "`forward_claims.sub`: `authorization` cannot be set by the auth plugin",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "forward_claims": { "sub": "bad header" } } }),
            "`bad header` is not a valid header name",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "forward_claims": { "sub": "x-id", "uid": "x-id" } } }),
            "header `x-id` is the target of two claims",
        ),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [] } }), "`from` must name at least one location"),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "body": "t" }] } }), "unknown variant `body`"),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "cookie": "a;b" }] } }),
            "not a valid cookie name",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "required_scopes": ["a b"] } }),
            "`required_scopes`: \"a b\" is not a valid scope",
        ),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "claim_values": { "roles": [] } } }), "non-empty list"),
        (json!({ "jwt": { "keys": [{ "secret": SECRET }], "cache_size": 1_000_000 } }), "`cache_size` must be at most"),
        (json!({ "realm": "a\"b", "jwt": { "keys": [{ "secret": SECRET }] } }), "`realm` must be printable ASCII"),
        (json!({ "api_keys": { "keys": [] } }), "api_keys: `keys` must list at least one key"),
        (json!({ "api_keys": {} }), "missing field `keys`"),
        (json!({ "api_keys": { "keys": [{ "name": "a" }] } }), "keys[0] (`a`): give `key` or `sha256`"),
        (
            json!({ "api_keys": { "keys": [{ "name": "a", "key": "k", "sha256": sha256_hex("k") }] } }),
            "give only one of",
        ),
        (json!({ "api_keys": { "keys": [{ "name": "a", "sha256": "abc" }] } }), "`sha256` must be 64 hex digits"),
        (json!({ "api_keys": { "keys": [{ "name": "a", "key": "" }] } }), "`key` must not be empty"),
        (json!({ "api_keys": { "keys": [{ "name": "", "key": "k" }] } }), "`name` must be non-empty"),
        (
            json!({ "api_keys": { "keys": [{ "name": "a", "key": "k1" }, { "name": "a", "key": "k2" }] } }),
            "keys[1] (`a`): the name is used twice",
        ),
        (
            json!({ "api_keys": { "keys": [{ "name": "a", "key": "k1" }, { "name": "b", "sha256": sha256_hex("k1") }] } }),
            "api_keys: keys[1] (`b`): same key as keys[0] (`a`)",
        ),
        (
            json!({ "api_keys": { "consumer_header": "host", "keys": [{ "name": "a", "key": "k" }] } }),
            "`consumer_header`: `host` cannot be set by the auth plugin",
        ),
        (
            json!({
                "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "header": "x-token" }] },
                "api_keys": { "from": [{ "header": "x-token" }], "keys": [{ "name": "a", "key": "k" }] },
            }),
            "`jwt.from` and `api_keys.from` both read header `x-token`",
        ),
        (
            json!({ "api_keys": { "from": [{ "header": "x-auth-sub" }], "keys": [{ "name": "a", "key": "k" }] } }),
            "header `x-auth-sub` cannot both carry a credential",
        ),
        // Names are compared percent-decoded, so they are written decoded.
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "query": "access%5Ftoken" }] } }),
            "jwt: from[0]: `access%5Ftoken` is not a valid query parameter name (write it decoded, without `%`)",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "cookie": "s%65ssion" }] } }),
            "jwt: from[0]: `s%65ssion` is not a valid cookie name (write it decoded, without `%`)",
        ),
        // `_` and `-` are one header to CGI/WSGI-style upstreams.
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "forward_claims": { "sub": "x-id", "uid": "x_id" } } }),
            "header `x_id` is the target of two claims",
        ),
        (
            json!({ "jwt": { "keys": [{ "secret": SECRET }], "forward_claims": { "sub": "x_request_id" } } }),
            "`forward_claims.sub`: `x_request_id` cannot be set by the auth plugin",
        ),
        (
            json!({ "api_keys": { "from": [{ "header": "x_auth_sub" }], "keys": [{ "name": "a", "key": "k" }] } }),
            "header `x-auth-sub` cannot both carry a credential (header `x_auth_sub`)",
        ),
    ];
    for (config, needle) in cases {
        let err = config_error(config.clone());
        assert!(err.contains(needle), "config {config}\n expected {needle:?}\n got {err}");
        assert!(!err.contains(SECRET) && !err.contains("MII"), "no key material in errors: {err}");
    }
}

#[test]
fn good_config_variants_are_accepted() {
    // Keys of every kind together, with kids; PKCS#1 RSA; JWKS beside keys.
    harness(json!({
        "realm": "api",
        "strip_credential": true,
        "jwt": {
            "keys": [
                { "kid": "h", "secret": LONG_SECRET, "algs": ["HS256", "HS512"] },
                { "kid": "r", "pem": key_file("rsa.pkcs1.pub.pem") },
                { "kid": "e", "pem": key_file("ec256.pub.pem"), "algs": ["ES256"] },
            ],
            "jwks": key_file("jwks.json"),
            "issuers": ["i"], "audiences": ["a"], "leeway": "500ms", "require_exp": false,
            "required_scopes": ["s"], "required_claims": ["c"], "claim_values": { "t": "x", "n": [1, 2], "b": true },
            "forward_claims": { "sub": "x-auth-sub", "email": "x-auth-email" }, "cache_size": 16,
        },
        "api_keys": { "from": [{ "header": "x-api-key" }, { "query": "key" }], "keys": [{ "name": "a", "key": "k" }] },
    }));
    assert_config_error(
        json!({ "jwt": { "keys": [{ "secret": SECRET }] }, "api_keys": null, "x": 1 }),
        "unknown field `x`",
    );
}

// ---- keys from an identity provider, introspection ------------------------

fn jwks_of(file: &str) -> String {
    key_file(file)
}

fn json_answer(body: &str, headers: &[(&str, &str)]) -> http::Response<Vec<u8>> {
    let mut b = http::Response::builder().status(200).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.as_bytes().to_vec()).expect("answer")
}

fn remote_config(extra: Value) -> Value {
    let mut jwt = json!({ "jwks_upstream": "idp", "jwks_path": "/keys" });
    for (k, v) in extra.as_object().expect("object") {
        jwt[k] = v.clone();
    }
    json!({ "jwt": jwt })
}

fn rs_token(file: &str, kid: &str) -> String {
    sign(Algorithm::RS256, &rsa_key(file), Some(kid), &claims(json!({})))
}

fn fetches(path: &str) -> usize {
    testing::outbound_calls().iter().filter(|c| c.path() == path).count()
}

#[test]
fn remote_keys_are_fetched_once_and_shared_by_instances() {
    let a = harness(remote_config(json!({})));
    let b = Harness::<Auth>::new(remote_config(json!({}))).expect("second instance");
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    let token = rs_token("rsa.key", "rsa-1");
    assert_eq!(header(&allowed(&a, bearer(&token)), "x-auth-sub"), Some("alice"));
    assert_eq!(header(&allowed(&b, bearer(&token)), "x-auth-sub"), Some("alice"));
    assert_eq!(header(&allowed(&a, bearer(&token)), "x-auth-sub"), Some("alice"));
    assert_eq!(fetches("/keys"), 1, "one fetch, shared through host state");
    assert_eq!(testing::counter("auth_jwks_fetched"), 1);
    let call = &testing::outbound_calls()[0];
    assert_eq!(call.upstream(), "idp");
    assert_eq!(call.method(), http::Method::GET);
}

#[test]
fn remote_keys_refresh_after_jwks_refresh_or_max_age() {
    testing::reset();
    testing::set_wall_clock(1_800_000_000_000);
    let h = Harness::<Auth>::new(remote_config(json!({ "jwks_refresh": "10m" }))).expect("config");
    testing::stub_outbound(
        "idp",
        "/keys",
        json_answer(&jwks_of("jwks.json"), &[("cache-control", "public, max-age=120")]),
    );
    let token =
        sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rsa-1"), &json!({ "sub": "alice", "exp": 1_900_000_000 }));
    allowed(&h, bearer(&token));
    testing::advance(Duration::from_secs(119));
    allowed(&h, bearer(&token));
    assert_eq!(fetches("/keys"), 1, "fresh for max-age");
    testing::advance(Duration::from_secs(2));
    allowed(&h, bearer(&token));
    assert_eq!(fetches("/keys"), 2, "refetched after max-age, although the token was cached");
    // Without max-age, `jwks_refresh` rules.
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    testing::advance(Duration::from_secs(121));
    allowed(&h, bearer(&token));
    assert_eq!(fetches("/keys"), 3);
    testing::advance(Duration::from_secs(9 * 60));
    allowed(&h, bearer(&token));
    assert_eq!(fetches("/keys"), 3, "fresh for jwks_refresh");
    testing::advance(Duration::from_secs(61));
    allowed(&h, bearer(&token));
    assert_eq!(fetches("/keys"), 4);
}

#[test]
fn an_unknown_kid_refetches_at_most_once_per_min_refresh() {
    testing::reset();
    testing::set_wall_clock(1_800_000_000_000);
    let h = Harness::<Auth>::new(remote_config(json!({ "jwks_min_refresh": "30s" }))).expect("config");
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    let claims = json!({ "sub": "alice", "exp": 1_900_000_000 });
    let old = sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rsa-1"), &claims);
    let new = sign(Algorithm::RS256, &rsa_key("rsa2.key"), Some("rsa-2"), &claims);
    allowed(&h, bearer(&old));
    testing::advance(Duration::from_secs(1));
    // The provider rotated right after that fetch: its set now has both keys.
    let both: Value = {
        let mut a: Value = serde_json::from_str(&jwks_of("jwks.json")).expect("json");
        let b: Value = serde_json::from_str(&jwks_of("rsa2.jwks.json")).expect("json");
        a["keys"].as_array_mut().expect("keys").extend(b["keys"].as_array().expect("keys").iter().cloned());
        a
    };
    testing::stub_outbound("idp", "/keys", json_answer(&both.to_string(), &[]));
    assert_eq!(header(&allowed(&h, bearer(&new)), "x-auth-sub"), Some("alice"), "rotation picked up at once");
    assert_eq!(fetches("/keys"), 2);
    // A made-up kid: one fetch per min_refresh at most, however many tokens.
    let bogus = sign(Algorithm::RS256, &rsa_key("rsa2.key"), Some("nope"), &claims);
    testing::advance(Duration::from_secs(31));
    for _ in 0..5 {
        assert_invalid(&h, bearer(&bogus), "unknown key id");
        testing::advance(Duration::from_secs(2));
    }
    assert_eq!(fetches("/keys"), 3, "{:?}", testing::outbound_calls().len());
    // A key that went away stops verifying, cached tokens included.
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("rsa2.jwks.json"), &[]));
    testing::advance(Duration::from_secs(11 * 60));
    assert_invalid(&h, bearer(&old), "unknown key id");
    allowed(&h, bearer(&new));
}

#[test]
fn remote_keys_are_served_stale_when_the_provider_is_down() {
    testing::reset();
    testing::set_wall_clock(1_800_000_000_000);
    let h = Harness::<Auth>::new(remote_config(json!({}))).expect("config");
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    let token =
        sign(Algorithm::RS256, &rsa_key("rsa.key"), Some("rsa-1"), &json!({ "sub": "a", "exp": 1_900_000_000 }));
    allowed(&h, bearer(&token));
    testing::stub_outbound_error("idp", "/keys", OutboundError::Unavailable("connection refused".into()));
    testing::advance(Duration::from_secs(11 * 60));
    for _ in 0..10 {
        allowed(&h, bearer(&token));
        testing::advance(Duration::from_secs(1));
    }
    assert_eq!(fetches("/keys"), 2, "a failed fetch is retried after jwks_min_refresh, not per request");
    assert_eq!(testing::counter("auth_jwks_fetch_failed"), 1);
    assert_eq!(testing::gauge("auth_jwks_stale"), Some(1));
    let events = testing::events();
    let stale = events.iter().find(|e| e.kind == "auth.jwks_stale").expect("an event");
    assert!(stale.message.contains("serving the key set fetched 660 s ago"), "{}", stale.message);
    // A broken document is a failure too: the good keys stay.
    testing::stub_outbound("idp", "/keys", json_answer("{\"keys\": 7}", &[]));
    testing::advance(Duration::from_secs(30));
    allowed(&h, bearer(&token));
    assert_eq!(testing::counter("auth_jwks_fetch_failed"), 2);
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    testing::advance(Duration::from_secs(30));
    allowed(&h, bearer(&token));
    assert_eq!(testing::gauge("auth_jwks_stale"), Some(0));
}

#[test]
fn no_keys_yet_is_a_503_not_a_401() {
    let h = harness(remote_config(json!({})));
    testing::stub_outbound("idp", "/keys", json_answer("oops", &[]));
    let resp = h.on_request(bearer(&rs_token("rsa.key", "rsa-1"))).unwrap_respond();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(resp.headers().get("www-authenticate").is_none());
    let body: Value = serde_json::from_slice(resp.body()).expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(testing::events()[0].severity, Severity::Critical);
}

#[test]
fn inline_and_remote_keys_combine() {
    let mut config = remote_config(json!({}));
    config["jwt"]["keys"] = json!([{ "kid": "local", "secret": SECRET }]);
    let h = harness(config);
    testing::stub_outbound("idp", "/keys", json_answer(&jwks_of("jwks.json"), &[]));
    let local = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), Some("local"), &claims(json!({})));
    allowed(&h, bearer(&local));
    allowed(&h, bearer(&rs_token("rsa.key", "rsa-1")));
    // With the provider down and no set fetched yet, inline keys still work.
    testing::reset();
    let mut config = remote_config(json!({}));
    config["jwt"]["keys"] = json!([{ "kid": "local", "secret": SECRET }]);
    let h = Harness::<Auth>::new(config).expect("config");
    testing::stub_outbound_error("idp", "/keys", OutboundError::Timeout("1s".into()));
    allowed(&h, bearer(&local));
}

#[test]
fn oidc_discovery_reads_jwks_uri() {
    let h = harness(remote_config(json!({ "jwks_path": null, "oidc_discovery": true })));
    testing::stub_outbound(
        "idp",
        "/.well-known/openid-configuration",
        json_answer(r#"{"issuer": "https://id.test/", "jwks_uri": "https://id.test/realms/a/certs"}"#, &[]),
    );
    testing::stub_outbound("idp", "/realms/a/certs", json_answer(&jwks_of("jwks.json"), &[]));
    allowed(&h, bearer(&rs_token("rsa.key", "rsa-1")));
    let paths: Vec<String> = testing::outbound_calls().iter().map(|c| c.path().to_owned()).collect();
    assert_eq!(paths, ["/.well-known/openid-configuration", "/realms/a/certs"]);
}

#[test]
fn remote_key_settings_are_checked() {
    assert_config_error(
        json!({ "jwt": { "jwks_path": "/keys" } }),
        "`jwks_path` and `oidc_discovery` need `jwks_upstream`",
    );
    assert_config_error(remote_config(json!({ "oidc_discovery": true })), "not both");
    assert_config_error(remote_config(json!({ "jwks_path": "keys" })), "`jwks_path` must be a path starting with `/`");
    assert_config_error(remote_config(json!({ "jwks_refresh": "soon" })), "`jwks_refresh` must be a positive duration");
    assert_config_error(
        remote_config(json!({ "jwks_refresh": "10s", "jwks_min_refresh": "30s" })),
        "`jwks_min_refresh` (30s) must not be longer than `jwks_refresh` (10s)",
    );
    assert_config_error(remote_config(json!({ "jwks_upstream": "a b" })), "`jwks_upstream` must name an upstream");
    assert_config_error(json!({ "jwt": {} }), "`jwks_upstream` or `introspection`");
    assert_config_error(
        json!({ "jwt": { "introspection": { "upstream": "idp", "path": "/i", "client_id": "", "client_secret": "s" } } }),
        "`introspection.client_id` must not be empty",
    );
}

fn introspection_config() -> Value {
    json!({ "jwt": {
        "required_scopes": ["orders:read"],
        "introspection": { "upstream": "idp", "path": "/introspect", "client_id": "weir gw", "client_secret": "s3:cret", "cache_ttl": "1m" },
    } })
}

#[test]
fn opaque_tokens_are_introspected_and_cached_by_hash() {
    testing::reset();
    testing::set_wall_clock(1_800_000_000_000);
    let a = Harness::<Auth>::new(introspection_config()).expect("config");
    let b = Harness::<Auth>::new(introspection_config()).expect("config");
    testing::stub_outbound(
        "idp",
        "/introspect",
        json_answer(r#"{"active": true, "sub": "svc-9", "scope": "orders:read orders:write", "exp": 1800000030}"#, &[]),
    );
    assert_eq!(header(&allowed(&a, bearer("opaque-token-1")), "x-auth-sub"), Some("svc-9"));
    assert_eq!(header(&allowed(&b, bearer("opaque-token-1")), "x-auth-sub"), Some("svc-9"));
    let calls = testing::outbound_calls();
    assert_eq!(calls.len(), 1, "the second instance read the shared answer");
    let call = &calls[0];
    assert_eq!(call.method(), http::Method::POST);
    assert_eq!(call.body_bytes(), b"token=opaque-token-1&token_type_hint=access_token");
    let auth = call.headers().iter().find(|(n, _)| n == "authorization").map(|(_, v)| v.clone());
    // base64("weir+gw:s3%3Acret")
    assert_eq!(auth.as_deref(), Some(&b"Basic d2VpcitndzpzMyUzQWNyZXQ="[..]));
    // Cached until `exp` (30 s), sooner than cache_ttl (1 min).
    testing::advance(Duration::from_secs(31));
    testing::stub_outbound("idp", "/introspect", json_answer(r#"{"active": false}"#, &[]));
    assert_invalid(&a, bearer("opaque-token-1"), "token is not active");
    assert_eq!(testing::outbound_calls().len(), 2);
    // Inactive answers are not cached.
    assert_invalid(&a, bearer("opaque-token-1"), "token is not active");
    assert_eq!(testing::outbound_calls().len(), 3);
}

#[test]
fn introspection_applies_the_token_rules_and_fails_closed() {
    let h = harness(introspection_config());
    testing::stub_outbound("idp", "/introspect", json_answer(r#"{"active": true, "sub": "x", "scope": "other"}"#, &[]));
    assert_eq!(denied(&h, bearer("t-1")).status, 403, "scope checked");
    testing::stub_outbound("idp", "/introspect", json_answer("not json", &[]));
    assert_eq!(denied(&h, bearer("t-2")).status, 503);
    testing::stub_outbound_error("idp", "/introspect", OutboundError::Timeout("2s".into()));
    assert_eq!(denied(&h, bearer("t-3")).status, 503);
    assert_eq!(testing::counter("auth_introspection_failed"), 2);
    // A JWT with keys configured is verified, not introspected.
    let mut config = introspection_config();
    config["jwt"]["keys"] = json!([{ "secret": SECRET }]);
    config["jwt"]["required_scopes"] = json!([]);
    let h = harness(config);
    allowed(&h, bearer(&hs256(&claims(json!({})))));
    assert!(testing::outbound_calls().is_empty());
}

// ---- the declared config schema (contract 0.2.5) ----------------------------

/// The schema, checked as the gateway checks a `config` table before `new`.
mod schema {
    use super::*;

    fn schema() -> Value {
        let text = Auth::config_schema().expect("auth declares a schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(false).build(&schema()).expect("a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, config: &Value) -> Vec<String> {
        v.iter_errors(config).map(|e| format!("{}: {e}", e.instance_path())).collect()
    }

    /// The keys of a table's schema, in order.
    fn keys(table: &Value) -> Vec<&str> {
        table["properties"].as_object().expect("properties").keys().map(String::as_str).collect()
    }

    #[test]
    fn describes_every_documented_key() {
        let schema = schema();
        let defs = &schema["$defs"];
        // Every table of the README's reference, each closed to unknown keys.
        for (table, documented, required) in [
            (&schema, &["realm", "strip_credential", "allow_missing", "jwt", "api_keys"][..], &[][..]),
            (
                &defs["JwtSettings"],
                &[
                    "keys",
                    "jwks",
                    "jwks_upstream",
                    "jwks_path",
                    "oidc_discovery",
                    "jwks_refresh",
                    "jwks_min_refresh",
                    "idp_timeout",
                    "introspection",
                    "from",
                    "issuers",
                    "audiences",
                    "leeway",
                    "require_exp",
                    "required_scopes",
                    "required_claims",
                    "claim_values",
                    "forward_claims",
                    "cache_size",
                ],
                &[],
            ),
            (&defs["KeySettings"], &["kid", "algs", "secret", "secret_base64", "pem"], &[]),
            (
                &defs["IntrospectionSettings"],
                &["upstream", "path", "client_id", "client_secret", "cache_ttl"],
                &["upstream", "path", "client_id", "client_secret"],
            ),
            (&defs["ApiKeySettings"], &["from", "consumer_header", "keys"], &["keys"]),
            (&defs["ApiKeySetting"], &["name", "key", "sha256"], &["name"]),
            (&defs["Location"], &["header", "query", "cookie"], &[]),
        ] {
            assert_eq!(keys(table), documented);
            for key in documented {
                let d = &table["properties"][key]["description"];
                assert!(d.as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
            }
            assert_eq!(table["additionalProperties"], false, "{documented:?}");
            assert_eq!(table.get("required").cloned().unwrap_or(json!([])), json!(required), "{documented:?}");
        }
        let jwt = &defs["JwtSettings"]["properties"];
        assert_eq!(schema["properties"]["jwt"]["$ref"], "#/$defs/JwtSettings", "a table, never null");
        assert_eq!(schema["properties"]["realm"]["default"], "weir");
        assert_eq!(jwt["from"]["default"], json!([{ "header": "authorization" }]));
        assert_eq!(jwt["forward_claims"]["default"], json!({ "sub": "x-auth-sub" }));
        assert_eq!(jwt["leeway"]["default"], "60s");
        assert_eq!(jwt["jwks_refresh"]["default"], "10m");
        assert_eq!(jwt["jwks_min_refresh"]["default"], "30s");
        assert_eq!(jwt["require_exp"]["default"], true);
        assert_eq!(jwt["cache_size"]["default"], 1024);
        assert_eq!(jwt["cache_size"]["maximum"], 65536);
        for key in ["leeway", "jwks_refresh", "jwks_min_refresh", "idp_timeout"] {
            assert!(jwt[key]["description"].as_str().is_some_and(|d| d.contains("duration")), "{key}");
        }
        // The forms a key accepts in several shapes.
        assert_eq!(jwt["jwks"]["type"], json!(["string", "object"]));
        assert_eq!(
            jwt["claim_values"]["additionalProperties"]["type"],
            json!(["string", "number", "boolean", "array"])
        );
        let algs = &defs["KeySettings"]["properties"]["algs"]["items"]["enum"];
        assert_eq!(algs.as_array().map(Vec::len), Some(11));
        assert!(!algs.as_array().expect("algs").contains(&json!("none")));
        assert_eq!(defs["ApiKeySettings"]["properties"]["from"]["default"], json!([{ "header": "x-api-key" }]));
        assert_eq!(defs["ApiKeySettings"]["properties"]["consumer_header"]["default"], "x-auth-sub");
    }

    #[test]
    fn accepts_every_form_the_plugin_accepts() {
        let v = validator();
        for config in [
            hs_config(json!({})),
            api_config(json!({})),
            json!({
                "realm": "api",
                "strip_credential": true,
                "allow_missing": true,
                "jwt": {
                    "keys": [
                        { "kid": "h", "secret": LONG_SECRET, "algs": ["HS256", "HS512"] },
                        { "kid": "b", "secret_base64": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" },
                        { "kid": "r", "pem": key_file("rsa.pkcs1.pub.pem") },
                        { "kid": "e", "pem": key_file("ec256.pub.pem"), "algs": ["ES256"] },
                    ],
                    "jwks": key_file("jwks.json"),
                    "issuers": ["i"], "audiences": ["a"], "leeway": "500ms", "require_exp": false,
                    "required_scopes": ["s"], "required_claims": ["c"],
                    "claim_values": { "t": "x", "n": [1, 2], "b": true, "f": 1.5, "m": ["a", 2, false] },
                    "forward_claims": { "sub": "x-auth-sub", "email": "x-auth-email" }, "cache_size": 16,
                    "from": [{ "header": "authorization" }, { "cookie": "session" }],
                },
                "api_keys": {
                    "from": [{ "header": "x-api-key" }, { "query": "key" }],
                    "consumer_header": "x-consumer",
                    "keys": [{ "name": "a", "key": "k" }, { "name": "b", "sha256": sha256_hex("k2") }],
                },
            }),
            // A JWKS written as a table, and keys from an identity provider.
            json!({ "jwt": { "jwks": serde_json::from_str::<Value>(&key_file("jwks.json")).expect("JSON") } }),
            json!({ "jwt": {
                "jwks_upstream": "idp", "oidc_discovery": true, "jwks_refresh": "1h", "jwks_min_refresh": "1m",
                "idp_timeout": "2s", "forward_claims": {}, "cache_size": 0,
            } }),
            json!({ "jwt": { "jwks_upstream": "idp", "jwks_path": "/certs?v=2" } }),
            json!({ "jwt": { "introspection": {
                "upstream": "idp", "path": "/oauth2/introspect", "client_id": "gw", "client_secret": "s", "cache_ttl": "2m",
            } } }),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.is_empty(), "{config}: {errors:?}");
            harness(config);
        }
    }

    #[test]
    fn refuses_what_a_schema_can_say() {
        let v = validator();
        let hs = |key: Value| json!({ "jwt": { "keys": [key] } });
        for (config, at) in [
            (json!({ "jwt": { "keys": [{ "secret": SECRET }] }, "color": 1 }), ""),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "issuer": "x" } }), "/jwt"),
            (hs(json!({ "secret": SECRET, "algs": ["none"] })), "/jwt/keys/0/algs/0"),
            (hs(json!({ "secret": SECRET, "algs": ["XS256"] })), "/jwt/keys/0/algs/0"),
            (hs(json!({ "secret": SECRET, "algs": [] })), "/jwt/keys/0/algs"),
            (hs(json!({ "secret": SECRET, "colour": "red" })), "/jwt/keys/0"),
            (json!({ "jwt": { "jwks": { "kys": [] } } }), "/jwt/jwks"),
            (json!({ "jwt": { "jwks": 7 } }), "/jwt/jwks"),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "leeway": 30 } }), "/jwt/leeway"),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [] } }), "/jwt/from"),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "body": "t" }] } }), "/jwt/from/0"),
            (
                json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{ "header": "a", "query": "b" }] } }),
                "/jwt/from/0",
            ),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "from": [{}] } }), "/jwt/from/0"),
            (
                json!({ "jwt": { "keys": [{ "secret": SECRET }], "claim_values": { "roles": [] } } }),
                "/jwt/claim_values/roles",
            ),
            (
                json!({ "jwt": { "keys": [{ "secret": SECRET }], "claim_values": { "r": [["a"]] } } }),
                "/jwt/claim_values/r/0",
            ),
            (
                json!({ "jwt": { "keys": [{ "secret": SECRET }], "claim_values": { "r": { "a": 1 } } } }),
                "/jwt/claim_values/r",
            ),
            (json!({ "jwt": { "keys": [{ "secret": SECRET }], "cache_size": 1_000_000 } }), "/jwt/cache_size"),
            (
                json!({ "jwt": { "introspection": { "upstream": "idp", "path": "/i", "client_id": "gw" } } }),
                "/jwt/introspection",
            ),
            (json!({ "api_keys": { "keys": [] } }), "/api_keys/keys"),
            (json!({ "api_keys": {} }), "/api_keys"),
            (json!({ "api_keys": { "keys": [{ "key": "k" }] } }), "/api_keys/keys/0"),
            (json!({ "api_keys": { "keys": [{ "name": "a", "key": 7 }] } }), "/api_keys/keys/0/key"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.iter().any(|e| e.starts_with(&format!("{at}: "))), "{config}: {errors:?}");
            config_error(config);
        }
    }

    #[test]
    fn readme_examples_match_the_schema() {
        let v = validator();
        let mut checked = 0;
        for block in include_str!("../README.md").split("```toml").skip(1) {
            let block = block.split("```").next().expect("closed block");
            let doc: toml::Table = toml::from_str(block).expect("README example is TOML");
            for (name, p) in doc.get("plugins").and_then(|p| p.as_table()).into_iter().flatten() {
                // Fragments without `module` are auth tables too.
                if p.get("module").is_some_and(|m| m.as_str() != Some("auth.wasm")) {
                    continue;
                }
                let config = serde_json::to_value(p.get("config").expect("a config")).expect("TOML as JSON");
                let errors = errors(&v, &config);
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 6, "every example was checked");
    }
}
