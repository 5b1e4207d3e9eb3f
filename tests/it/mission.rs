//! The demo configuration itself (`examples/gateway.toml`), run on test
//! ports: the orders route's chain auth → rate limit → anomaly → transform,
//! end to end, with a real webhook receiving the anomaly event.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use weir_tests::{Reply, TestGateway, Upstream, WebhookServer, fixtures, wait_for, workspace_root};

/// The demo's HS256 secret (`examples/gateway.toml`, `scripts/demo.sh`).
const DEMO_SECRET: &str = "weir-demo-secret-of-at-least-32-bytes!";
const DEMO_KEY: &str = "demo-key-0123456789";

fn token(sub: &str, scope: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("demo".into());
    let claims = json!({ "sub": sub, "iss": "weir-demo", "scope": scope, "exp": exp });
    format!("Bearer {}", encode(&header, &claims, &EncodingKey::from_secret(DEMO_SECRET.as_bytes())).expect("sign"))
}

/// `examples/gateway.toml` with its addresses pointed at the test's servers.
async fn demo_gateway(users: &Upstream, orders: &Upstream, hook: &WebhookServer) -> TestGateway {
    let text = std::fs::read_to_string(workspace_root().join("examples/gateway.toml")).expect("read the demo config");
    let mut replaced = 0;
    let mut swap = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "the demo config no longer contains {from:?}");
        replaced += 1;
        text.replace(from, to)
    };
    let text = swap(text, "\"127.0.0.1:8080\"", "\"127.0.0.1:0\"");
    let text = swap(text, "\"127.0.0.1:9901\"", "\"127.0.0.1:0\"");
    let text = swap(text, "\"../target/wasm32-wasip2/release\"", &format!("{:?}", fixtures().display().to_string()));
    let text = swap(text, "\"http://127.0.0.1:9003/weir-events\"", &format!("\"{}\"", hook.url));
    let text = swap(text, "\"127.0.0.1:9001\", \"127.0.0.1:9002\"", &format!("\"{}\"", users.addr));
    let text = swap(text, "\"127.0.0.1:9003\"", &format!("\"{}\"", orders.addr));
    let text = swap(text, "\"../target/weir-access.log\"", "\"access.log\"");
    assert_eq!(replaced, 7);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gateway.toml"), text).expect("write config");
    TestGateway::start_in(dir).await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    gw.request(Method::GET, path, headers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_orders_chain_end_to_end() {
    let (users, orders, hook) =
        (Upstream::start("users").await, Upstream::start("orders").await, WebhookServer::start().await);
    let gw = demo_gateway(&users, &orders, &hook).await;
    let alice = token("alice", "orders:read");

    // auth: no credential, wrong scope.
    let r = get(&gw, "/api/orders/7", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|c| c.starts_with("Bearer realm=\"orders\"")), "{:?}", r.headers);
    let r = get(&gw, "/api/orders/7", &[("authorization", &token("mallory", "orders:write"))]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(orders.hits(), 0, "refused requests never reach the upstream");

    // The whole chain on a good token.
    let r = get(&gw, "/api/orders/7", &[("authorization", &alice), ("x-auth-sub", "admin")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["uri"], "/orders/7", "transform strips /api");
    assert_eq!(seen["headers"]["x-auth-sub"][0], "alice", "auth replaces the client's x-auth-sub");
    assert_eq!(seen["headers"]["x-client"][0], "alice", "transform template from the auth header");
    assert_eq!(seen["headers"]["x-order-id"][0], "7", "transform template from the path parameter");
    assert!(seen["headers"].get("authorization").is_none(), "auth strips the credential");
    assert_eq!(seen["served_by"], "orders", "response body field renamed");
    assert!(seen.get("upstream").is_none());
    assert_eq!(r.header("x-served-by"), Some("weir"));
    assert_eq!(r.header("x-upstream"), None, "response header removed");
    assert_eq!(r.header("ratelimit-policy"), Some("\"burst\";q=5;w=1, \"minute\";q=100;w=60"));
    assert!(r.header("ratelimit").is_some_and(|v| v.starts_with("\"burst\";r=")), "{:?}", r.headers);

    // An API key works too, as its consumer.
    let r = get(&gw, "/api/orders/8", &[("x-api-key", DEMO_KEY)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-client"][0], "batch-job");

    // The rate limit: bob's quick burst of 10 meets the 5-per-second limit.
    let bob = token("bob", "orders:read");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = get(&gw, "/api/orders/1", &[("authorization", &bob)]).await;
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            assert_eq!(r.json()["error"], "rate limit exceeded");
        }
        statuses.push(r.status.as_u16());
    }
    let allowed = statuses.iter().filter(|&&s| s == 200).count();
    assert!((1..=5).contains(&allowed), "at most 5 of a quick burst of 10 pass: {statuses:?}");
    assert_eq!(allowed + statuses.iter().filter(|&&s| s == 429).count(), 10, "{statuses:?}");

    // The anomaly detector: carol scans paths that do not exist, slowly
    // enough (4 per second) to stay under the rate limit, and is throttled
    // by the anomaly plugin; one event reaches the webhook. It acts once the
    // sliding 10 s estimate reaches 20 requests; at this pace a window
    // boundary inside the scan costs at most 0.1·T² ≈ 3-4 requests of that
    // estimate (the previous window's weight decays while the scan goes on).
    let carol = token("carol", "orders:read");
    let mut caught = None;
    for i in 1..=30 {
        let r = get(&gw, &format!("/api/probe-{i}"), &[("authorization", &carol), ("x-status", "404")]).await;
        match r.status.as_u16() {
            404 => {}
            429 => {
                assert_eq!(r.json()["error"], "too many requests: anomalous traffic from this client", "{}", r.text());
                caught = Some(i);
                break;
            }
            other => panic!("probe {i}: unexpected {other}: {}", r.text()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let caught = caught.expect("the scanner was never throttled");
    assert!(caught <= 26, "throttled only at request {caught}");
    let event = wait_for(Duration::from_secs(5), || async { hook.received().into_iter().next() })
        .await
        .expect("the anomaly event reached the webhook");
    assert_eq!(event["kind"], "anomaly.detected", "{event}");
    assert_eq!(event["attributes"]["route"], "orders-scan", "{event}");
    // The normal clients were never throttled by it.
    let r = get(&gw, "/api/orders/7", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // And the users route still runs its own chain.
    let r = gw.get("/users/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-greeting").as_deref(), Some("hello"));
    assert_eq!(r.header("x-served-by"), Some("weir"));

    // The demo's access log (logfmt) shows the whole chain of a request.
    let log = gw.dir.path().join("access.log");
    let line = wait_for(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().rev().find(|l| l.contains(" route=orders ") && l.contains(" status=200 ")).map(str::to_owned)
    })
    .await
    .expect("an access log line for a 200 on the orders route");
    for plugin in ["auth:ok", "limit:ok", "anomaly:ok", "shape:ok"] {
        assert!(line.contains(plugin), "{plugin} in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_warehouse_route_fans_out_and_merges() {
    let (users, orders, hook) =
        (Upstream::start("users").await, Upstream::start("orders").await, WebhookServer::start().await);
    let gw = demo_gateway(&users, &orders, &hook).await;
    let r = get(&gw, "/warehouse/42?currency=EUR", &[("x-delay-ms", "50")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-by"), Some("weir"), "the response chain ran on the merged answer");
    let doc = r.json();
    assert_eq!(doc["stock"]["uri"], "/stock/42");
    assert_eq!(doc["price"]["uri"], "/price/42?currency=EUR");
    assert_eq!(doc["reviews"]["uri"], "/reviews/42");
    assert_eq!(doc["reviews"]["headers"]["x-delay-ms"][0], "50", "forward_headers");
    assert_eq!((users.hits(), orders.hits()), (1, 2));
}
