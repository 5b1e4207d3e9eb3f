//! `auth.wasm` with keys from a real identity provider process
//! (`tests/idp/server.py`): OIDC discovery, a key rotation while traffic
//! flows, the provider killed (cached keys keep working), and opaque tokens
//! introspected (RFC 7662) with answers cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use weir_tests::{Client, PyPeer, TestGateway, Upstream, workspace_root};

fn key_file(name: &str) -> String {
    let path = workspace_root().join("plugins/auth/tests/keys").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test key {}: {e}", path.display()))
}

/// The public JWK of `kid` from a test key set.
fn jwk(file: &str, kid: &str) -> Value {
    let doc: Value = serde_json::from_str(&key_file(file)).expect("jwks json");
    doc["keys"].as_array().expect("keys").iter().find(|k| k["kid"] == kid).cloned().expect("kid in file")
}

fn token(key: &str, kid: &str, sub: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(key_file(key).as_bytes()).expect("rsa key");
    encode(&header, &json!({ "sub": sub, "iss": "https://idp.test/", "exp": now + 600 }), &key).expect("sign")
}

fn config(api: &Upstream, idp_port: u16) -> String {
    format!(
        r#"[upstreams.api]
targets = ["{api}"]

[upstreams.idp]
targets = ["127.0.0.1:{idp_port}"]
timeout = "1s"

[plugins.auth]
module = "auth.wasm"
outbound = ["idp"]
limits = {{ deadline = "3s" }}
[plugins.auth.config.jwt]
jwks_upstream = "idp"
oidc_discovery = true
jwks_refresh = "2s"
jwks_min_refresh = "1s"
issuers = ["https://idp.test/"]

[plugins.opaque]
module = "auth.wasm"
outbound = ["idp"]
limits = {{ deadline = "3s" }}
[plugins.opaque.config.jwt]
forward_claims = {{ sub = "x-auth-sub", client_id = "x-client" }}
introspection = {{ upstream = "idp", path = "/oauth/introspect", client_id = "weir", client_secret = "s3cret", cache_ttl = "1m" }}

[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "api"
chain = ["auth"]

[[routes]]
name = "opaque"
path_prefix = "/opaque"
upstream = "api"
chain = ["opaque"]
"#,
        api = api.addr
    )
}

async fn idp_post(client: &Client, port: u16, path: &str, body: Value) {
    let r = client
        .request(
            Method::POST,
            &format!("http://127.0.0.1:{port}{path}"),
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
        .expect("idp admin call");
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn idp_hits(client: &Client, port: u16, path: &str) -> u64 {
    let r = client.get(&format!("http://127.0.0.1:{port}/_hits")).await.expect("idp /_hits");
    r.json()[path].as_u64().unwrap_or(0)
}

/// Requests with the token of `signer` (an index into `tokens`) in a loop
/// until stopped; counts the answers that were not 200.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(gw: &TestGateway, tokens: Vec<String>, signer: Arc<AtomicUsize>, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tokens = Arc::new(tokens);
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failed, tokens, signer) =
                    (stop.clone(), sent.clone(), failed.clone(), tokens.clone(), signer.clone());
                let url = format!("{}/jwt/orders", gw.url);
                tokio::spawn(async move {
                    let client = Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let which = signer.load(Ordering::Relaxed);
                        let auth = format!("Bearer {}", tokens[which]);
                        let r = client.request(Method::GET, &url, &[("authorization", &auth)], "").await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => {
                                failed.lock().expect("lock").push(format!("key {which}: {} {}", r.status, r.text()))
                            }
                            Err(e) => failed.lock().expect("lock").push(format!("key {which}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Traffic { stop, sent, failed, tasks }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        let failed = self.failed.lock().expect("lock").clone();
        (self.sent.load(Ordering::Relaxed), failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_at_the_identity_provider_while_traffic_flows() {
    let api = Upstream::start("api").await;
    let mut idp = Some(PyPeer::server("idp/server.py").await);
    let port = idp.as_ref().expect("idp").port;
    let client = Client::new();
    let (old, new) = (jwk("jwks.json", "rsa-1"), jwk("rsa2.jwks.json", "rsa-2"));
    idp_post(&client, port, "/_keys", json!({ "keys": [old] })).await;
    let gw = TestGateway::start(&config(&api, port), &["auth.wasm"]).await;

    let old_token = token("rsa.key", "rsa-1", "alice");
    let new_token = token("rsa2.key", "rsa-2", "bob");
    let r = gw.request(Method::GET, "/jwt/orders", &[("authorization", &format!("Bearer {old_token}"))], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-auth-sub").as_deref(), Some("alice"));
    assert_eq!(idp_hits(&client, port, "/.well-known/openid-configuration").await, 1);
    assert_eq!(idp_hits(&client, port, "/oauth/keys").await, 1);

    // Traffic with the old key; the provider publishes the new key beside
    // it and at once signs with it: the gateway must follow, no request
    // failing.
    let signer = Arc::new(AtomicUsize::new(0));
    let traffic = Traffic::start(&gw, vec![old_token.clone(), new_token.clone()], signer.clone(), 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    idp_post(&client, port, "/_keys", json!({ "keys": [old, new] })).await;
    signer.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The old key is withdrawn; tokens of the new one keep flowing.
    idp_post(&client, port, "/_keys", json!({ "keys": [new] })).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (sent, failed) = traffic.stop().await;
    assert!(sent > 50, "only {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed during the rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    // Within one refresh (2 s) of the withdrawal, the old key is gone.
    let r = gw.request(Method::GET, "/jwt/orders", &[("authorization", &format!("Bearer {old_token}"))], "").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error_description"], "unknown key id");
    // Fetched on first need, once for the rotation (the instances that met
    // the new kid together joined one call), once per refresh (2 s) and
    // once for the old kid just now: not per request, not per instance.
    let fetches = idp_hits(&client, port, "/oauth/keys").await;
    assert!((4..=6).contains(&fetches), "{fetches} key fetches for {sent} requests");

    // The provider dies: the cached keys keep working past their refresh,
    // with an event and metrics saying they are stale.
    drop(idp.take());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..5 {
        let r = gw.request(Method::GET, "/jwt/orders", &[("authorization", &format!("Bearer {new_token}"))], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen("x-auth-sub").as_deref(), Some("bob"));
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_gauge{plugin="auth",name="auth_jwks_stale"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"weir_plugin_events_total{plugin="auth",kind="auth.jwks_stale",severity="warning"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"weir_plugin_outbound_calls_total{plugin="auth",upstream="idp",outcome="unavailable"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_once_and_cached() {
    let api = Upstream::start("api").await;
    let idp = PyPeer::server("idp/server.py").await;
    let client = Client::new();
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    idp_post(
        &client,
        idp.port,
        "/_tokens",
        json!({ "opaque-1": { "active": true, "sub": "svc-9", "client_id": "billing", "exp": exp } }),
    )
    .await;
    let gw = TestGateway::start(&config(&api, idp.port), &["auth.wasm"]).await;
    for _ in 0..5 {
        let r = gw.request(Method::GET, "/opaque/x", &[("authorization", "Bearer opaque-1")], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen("x-auth-sub").as_deref(), Some("svc-9"));
        assert_eq!(r.seen("x-client").as_deref(), Some("billing"));
    }
    assert_eq!(idp_hits(&client, idp.port, "/oauth/introspect").await, 1, "cached by token hash");
    let r = gw.request(Method::GET, "/opaque/x", &[("authorization", "Bearer forged")], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error_description"], "token is not active");
    assert_eq!(api.hits(), 5);

    // The provider gone: a token it never vouched for cannot be checked.
    drop(idp);
    let r = gw.request(Method::GET, "/opaque/x", &[("authorization", "Bearer other")], "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let r = gw.request(Method::GET, "/opaque/x", &[("authorization", "Bearer opaque-1")], "").await;
    assert_eq!(r.status, 200, "a cached answer still counts");
}
