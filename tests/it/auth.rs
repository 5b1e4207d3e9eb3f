//! `auth` plugin through the real gateway: tokens signed at test time with
//! the test-only keys in `plugins/auth/tests/keys/`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use weir_tests::{TestGateway, Upstream, server_section, workspace_root};

const SECRET: &str = "it-secret-0123456789abcdef-0123456789";

fn key_file(name: &str) -> String {
    let path = workspace_root().join("plugins/auth/tests/keys").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test key {}: {e}", path.display()))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("sign test token")
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

/// The auth plugin with `config` (TOML lines of its `config` table, which
/// may open sub-tables such as `[plugins.auth.config.jwt]`) on a route to `up`.
fn gateway_config(config: &str, up: &Upstream) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [\"auth\"]\n\n\
         [plugins.auth]\nmodule = \"auth.wasm\"\n[plugins.auth.config]\n{config}\n",
        up.addr
    )
}

const HS_CONFIG: &str = "[plugins.auth.config.jwt]\nkeys = [{ secret = \"it-secret-0123456789abcdef-0123456789\" }]\n\
                         required_scopes = [\"orders:read\"]\n";

async fn hs_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(&gateway_config(HS_CONFIG, up), &["auth.wasm"]).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_hs256_token_reaches_upstream_with_identity() {
    let up = Upstream::start("up").await;
    let gw = hs_gateway(&up).await;
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 600, "scope": "orders:read" }));
    for _ in 0..3 {
        let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&token))], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen("x-auth-sub").as_deref(), Some("alice"));
        assert_eq!(r.seen("authorization"), Some(bearer(&token)), "not stripped by default");
    }
    assert_eq!(up.hits(), 3);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="auth",name="auth_ok"} 3"#), "{metrics}");
    let status = gw.status().await;
    let plugin = &status["plugins"][0];
    assert_eq!(plugin["name"], "auth");
    assert_eq!(plugin["phases"], json!(["request_headers"]), "{plugin}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused_with_a_challenge() {
    let up = Upstream::start("up").await;
    let gw = hs_gateway(&up).await;
    let expired = hs256(&json!({ "sub": "alice", "exp": now() - 3600, "scope": "orders:read" }));
    let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&expired))], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="weir", error="invalid_token", error_description="token expired""#)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({ "error": "invalid_token", "error_description": "token expired" }));

    // No token at all: a bare challenge.
    let r = gw.get("/orders").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="weir""#));
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="auth",name="auth_denied"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_the_scope_is_forbidden() {
    let up = Upstream::start("up").await;
    let gw = hs_gateway(&up).await;
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 600, "scope": "profile orders:write" }));
    let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&token))], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="weir", error="insufficient_scope", error_description="the token lacks a required scope", scope="orders:read""#
        )
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_rs256_through_a_jwks_document() {
    let up = Upstream::start("up").await;
    let config =
        format!("[plugins.auth.config.jwt]\naudiences = [\"orders\"]\njwks = '''{}'''\n", key_file("jwks.json").trim());
    let gw = TestGateway::start(&gateway_config(&config, &up), &["auth.wasm"]).await;
    let claims = json!({ "sub": "svc-7", "aud": ["orders", "billing"], "exp": now() + 600 });
    let es = EncodingKey::from_ec_pem(key_file("ec256.key").as_bytes()).expect("ec key");
    let rs = EncodingKey::from_rsa_pem(key_file("rsa.key").as_bytes()).expect("rsa key");
    for token in
        [sign(Algorithm::ES256, &es, Some("ec-256"), &claims), sign(Algorithm::RS256, &rs, Some("rsa-1"), &claims)]
    {
        let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&token))], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen("x-auth-sub").as_deref(), Some("svc-7"));
    }
    // Signed by a key the JWKS does not hold, under a kid it does.
    let other = EncodingKey::from_rsa_pem(key_file("rsa2.key").as_bytes()).expect("rsa key");
    let forged = sign(Algorithm::RS256, &other, Some("rsa-1"), &claims);
    let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&forged))], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "invalid signature");
    assert_eq!(up.hits(), 2);
}

/// `partner-7`'s key is stored hashed: `printf %s k-partner-0123456789 | sha256sum`.
const API_KEYS: &str = "strip_credential = true\n[plugins.auth.config.api_keys]\n\
                        from = [{ header = \"x-api-key\" }, { query = \"apikey\" }]\n\
                        consumer_header = \"x-consumer\"\n\
                        keys = [\n  { name = \"billing-batch\", key = \"k-billing-0123456789\" },\n  \
                        { name = \"partner-7\", sha256 = \"bcb26544bba0f87f01101009e198826c60fd4f7a236a4a00280de3c41b87945e\" },\n]\n";

async fn api_key_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(&gateway_config(API_KEYS, up), &["auth.wasm"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_in_a_header_forwards_the_consumer() {
    let up = Upstream::start("up").await;
    let gw = api_key_gateway(&up).await;
    let r = gw.request(Method::GET, "/reports", &[("x-api-key", "k-billing-0123456789")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-consumer").as_deref(), Some("billing-batch"));
    assert_eq!(r.seen("x-api-key"), None, "stripped");
    // The hashed key.
    let r = gw.request(Method::GET, "/reports", &[("x-api-key", "k-partner-0123456789")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-consumer").as_deref(), Some("partner-7"));

    let r = gw.request(Method::GET, "/reports", &[("x-api-key", "k-guess")], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(r#"ApiKey realm="weir", header="x-api-key", query="apikey""#));
    assert_eq!(r.json()["error"], "invalid_api_key");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_in_the_query_is_stripped_before_the_upstream() {
    let up = Upstream::start("up").await;
    let gw = api_key_gateway(&up).await;
    let r = gw.get("/reports/2024?page=3&apikey=k-partner-0123456789&sort=desc").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["uri"], "/reports/2024?page=3&sort=desc");
    assert_eq!(seen["headers"]["x-consumer"][0], "partner-7");
    let r = gw.get("/reports?apikey=k-billing-0123456789").await;
    assert_eq!(r.json()["uri"], "/reports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_replaced() {
    let up = Upstream::start("up").await;
    let gw = hs_gateway(&up).await;
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 600, "scope": "orders:read" }));
    let r =
        gw.request(Method::GET, "/orders", &[("authorization", &bearer(&token)), ("x-auth-sub", "admin")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-auth-sub"], json!(["alice"]), "only the plugin's value");

    // API keys: a spoofed consumer header is replaced as well.
    let gw = api_key_gateway(&up).await;
    let r =
        gw.request(Method::GET, "/", &[("x-api-key", "k-billing-0123456789"), ("x-consumer", "partner-7")], "").await;
    assert_eq!(r.json()["headers"]["x-consumer"], json!(["billing-batch"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_identity_headers_never_reach_the_upstream() {
    let up = Upstream::start("up").await;
    let gw = hs_gateway(&up).await;
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 600, "scope": "orders:read" }));
    let authorization = bearer(&token);
    let headers =
        [("authorization", &*authorization), ("x_auth_sub", "admin"), ("X_Auth_Sub", "root"), ("x_other", "kept")];
    let r = gw.request(Method::GET, "/orders", &headers, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-auth-sub"], json!(["alice"]));
    assert_eq!(seen["headers"]["x_auth_sub"], Value::Null, "{seen}");
    // The gateway does forward underscored names: the plugin removed these.
    assert_eq!(r.seen("x_other").as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_claims_are_forwarded() {
    let up = Upstream::start("up").await;
    let config = format!("{HS_CONFIG}forward_claims = {{ sub = \"x-auth-sub\", name = \"x-auth-name\" }}\n");
    let gw = TestGateway::start(&gateway_config(&config, &up), &["auth.wasm"]).await;
    let token = hs256(
        &json!({ "sub": "jos\u{e9}", "name": "Jos\u{e9} Mar\u{ed}a", "exp": now() + 600, "scope": "orders:read" }),
    );
    let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&token))], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The echo upstream shows the header bytes as UTF-8.
    assert_eq!(r.seen("x-auth-name").as_deref(), Some("Jos\u{e9} Mar\u{ed}a"));
    assert_eq!(r.seen("x-auth-sub").as_deref(), Some("jos\u{e9}"));
    // A line break refuses the token; so does a leading space, which the
    // upstream would strip (`" admin"` read as `"admin"`).
    for (claim, value) in [("name", "a\r\nx-admin: 1"), ("sub", " admin")] {
        let mut claims = json!({ "sub": "alice", "exp": now() + 600, "scope": "orders:read" });
        claims[claim] = json!(value);
        let r = gw.request(Method::GET, "/orders", &[("authorization", &bearer(&hs256(&claims)))], "").await;
        assert_eq!(r.status, 401, "{value:?}: {}", r.text());
        let description = format!("the claim `{claim}` cannot be forwarded as a header");
        assert_eq!(r.json()["error_description"], description.as_str());
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_credentials_are_a_bad_request() {
    let up = Upstream::start("up").await;
    let config = "[plugins.auth.config.jwt]\nkeys = [{ secret = \"it-secret-0123456789abcdef-0123456789\" }]\n\
                  from = [{ header = \"authorization\" }, { query = \"access_token\" }, { cookie = \"session\" }]\n";
    let gw = TestGateway::start(&gateway_config(config, &up), &["auth.wasm"]).await;
    let token = hs256(&json!({ "sub": "alice", "exp": now() + 600 }));
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let authorization = bearer(&token);
    let cookie_twice = format!("session={token}; session={forged}");
    let (first, second) = (format!("session={token}"), format!("a=1; session={forged}"));
    let two_cookie_headers = [("cookie", &*first), ("cookie", &*second)];
    /// Request target, headers, expected `error_description`.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("/orders".into(), vec![("cookie", &cookie_twice)], "the credential cookie is repeated"),
        ("/orders".into(), two_cookie_headers.to_vec(), "the credential cookie is repeated"),
        (
            format!("/orders?access_token={token}&access%5Ftoken={forged}"),
            vec![],
            "the credential parameter is repeated",
        ),
        (
            format!("/orders?access_token={forged}"),
            vec![("authorization", &authorization)],
            "credentials in more than one location",
        ),
    ];
    for (uri, headers, description) in &cases {
        let r = gw.request(Method::GET, uri, headers, "").await;
        assert_eq!(r.status, 400, "{uri} {headers:?}: {}", r.text());
        assert_eq!(r.json(), json!({ "error": "invalid_request", "error_description": description }));
    }
    assert_eq!(up.hits(), 0);
    // Each of those locations alone is accepted.
    let r = gw.request(Method::GET, &format!("/orders?access%5Ftoken={token}"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-auth-sub").as_deref(), Some("alice"));
    assert_eq!(r.json()["uri"], format!("/orders?access%5Ftoken={token}"), "not stripped by default");
    let r = gw.request(Method::GET, "/orders", &[("cookie", &format!("a=1; session={token}"))], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-auth-sub").as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_config_is_rejected_at_load() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(weir_tests::fixture("auth.wasm"), dir.path().join("plugins/auth.wasm")).expect("copy");
    let config = "[plugins.auth.config.jwt]\nkeys = [{ kid = \"k\", secret = \"too short\" }]\n";
    std::fs::write(dir.path().join("gateway.toml"), format!("{}{}", server_section(), gateway_config(config, &up)))
        .expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("a short HMAC secret must be rejected")
    };
    let text = err.to_string();
    assert!(
        text.contains(
            "plugin `auth` (auth.wasm): config rejected by the plugin: jwt: keys[0] (kid `k`): \
             an HMAC secret needs at least 32 bytes (RFC 7518 §3.2), this one has 9"
        ),
        "{text}"
    );
    assert!(!text.contains("too short"), "the secret is not echoed: {text}");
}
