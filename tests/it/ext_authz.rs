//! `ext_authz.wasm` through the real gateway against a real authorization
//! service process (`tests/authz/server.py`): allow with headers copied,
//! deny with the service's status, headers and body, fail closed or open
//! when it is slow or gone, decisions cached, and the plugin's outbound
//! calls in the metrics.

use std::time::{Duration, Instant};

use http::Method;
use weir_tests::{PyPeer, TestGateway, Upstream};

fn config(api: &Upstream, authz_port: u16) -> String {
    format!(
        r#"[upstreams.api]
targets = ["{api}"]

[upstreams.authz]
targets = ["127.0.0.1:{authz_port}"]

[plugins.authz]
module = "ext_authz.wasm"
outbound = ["authz"]
limits = {{ deadline = "3s" }}
[plugins.authz.config]
upstream = "authz"
path_prefix = "/check"
forward_headers = ["authorization"]
upstream_headers = ["x-user-id"]
timeout = "500ms"

[plugins.authz-open]
module = "ext_authz.wasm"
outbound = ["authz"]
limits = {{ deadline = "3s" }}
[plugins.authz-open.config]
upstream = "authz"
failure = "allow"
timeout = "300ms"

[plugins.authz-cached]
module = "ext_authz.wasm"
outbound = ["authz"]
limits = {{ deadline = "3s" }}
[plugins.authz-cached.config]
upstream = "authz"
upstream_headers = ["x-user-id"]
cache = {{ key = "{{method}} {{path}} {{header:authorization}}", ttl = "1m" }}

[[routes]]
name = "strict"
path_prefix = "/strict"
upstream = "api"
chain = ["authz"]

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "api"
chain = ["authz-open"]

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "api"
chain = ["authz-cached"]
"#,
        api = api.addr
    )
}

async fn hits(client: &weir_tests::Client, port: u16) -> serde_json::Value {
    client.get(&format!("http://127.0.0.1:{port}/_hits")).await.expect("authz /_hits").json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_asks_a_real_authorization_service() {
    let api = Upstream::start("api").await;
    let authz = PyPeer::server("authz/server.py").await;
    let gw = TestGateway::start(&config(&api, authz.port), &["ext_authz.wasm"]).await;
    let client = weir_tests::Client::new();
    let bearer = |t: &str| format!("Bearer {t}");

    // Allowed: the service saw the method, the prefixed path and query, the
    // credentials, the client and the request id; the API sees the user.
    let r = gw.request(Method::DELETE, "/strict/orders/7?hard=1", &[("authorization", &bearer("good"))], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-user-id").as_deref(), Some("42"));
    assert_eq!(r.seen("x-debug"), None, "only upstream_headers are copied");
    let seen = hits(&client, authz.port).await["last"].clone();
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["path"], "/check/strict/orders/7?hard=1");
    assert_eq!(seen["headers"]["authorization"], "Bearer good");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-request-id"].as_str().map(str::len), r.header("x-request-id").map(str::len));

    // Denied: the service's status, www-authenticate and body, nothing
    // reaches the API.
    let api_hits = api.hits();
    let r = gw.request(Method::GET, "/strict/x", &[("authorization", &bearer("expired"))], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weir\""));
    assert_eq!(r.header("x-debug"), None);
    assert_eq!(r.json()["error"], "denied");
    let r = gw.request(Method::GET, "/strict/x", &[("authorization", &bearer("boom"))], "").await;
    assert_eq!(r.status, 500, "a failing service's answer is a denial");
    assert_eq!(api.hits(), api_hits);

    // Too slow: closed (503) on one route, open on the other.
    let started = Instant::now();
    let r = gw.request(Method::GET, "/strict/x", &[("authorization", &bearer("slow"))], "").await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_millis(1800), "cut at the 500 ms timeout: {:?}", started.elapsed());
    let r = gw.request(Method::GET, "/open/x", &[("authorization", &bearer("slow"))], "").await;
    assert_eq!(r.status, 200, "fail open");

    // Cached: one check for three requests with the same credentials.
    let before = hits(&client, authz.port).await["hits"].as_u64().expect("hits");
    for _ in 0..3 {
        let r = gw.request(Method::GET, "/cached/a", &[("authorization", &bearer("good"))], "").await;
        assert_eq!(r.seen("x-user-id").as_deref(), Some("42"));
    }
    let r = gw.request(Method::GET, "/cached/a", &[("authorization", &bearer("nope"))], "").await;
    assert_eq!(r.status, 401);
    let after = hits(&client, authz.port).await["hits"].as_u64().expect("hits");
    assert_eq!(after - before, 2, "one check per distinct key");

    // The service gone: closed and open as configured.
    drop(authz);
    let r = gw.request(Method::GET, "/strict/x", &[("authorization", &bearer("good"))], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "authorization service unavailable");
    let r = gw.request(Method::GET, "/open/x", &[("authorization", &bearer("good"))], "").await;
    assert_eq!(r.status, 200);

    let metrics = gw.metrics().await;
    for line in [
        "weir_plugin_outbound_calls_total{plugin=\"authz\",upstream=\"authz\",outcome=\"answered\"}",
        "weir_plugin_outbound_calls_total{plugin=\"authz\",upstream=\"authz\",outcome=\"timeout\"} 1",
        "weir_plugin_custom_total{plugin=\"authz-cached\",name=\"cache_hits\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    gw.shutdown().await;
}
