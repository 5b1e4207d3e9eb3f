//! `transform` plugin through the real gateway: request edits seen by the
//! echo upstream, response edits seen by the client.

use http::Method;
use serde_json::json;
use weir_tests::{TestGateway, Upstream};

/// A gateway whose `items` route (`/items/{id}`) and catch-all route both
/// run the transform plugin `tx`, configured by `config` (TOML sub-tables
/// under `[plugins.tx.config]`, as a user would write them).
async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    let cfg = format!(
        r#"
[plugins.tx]
module = "transform.wasm"

{config}

[upstreams.up]
targets = ["{addr}"]

[[routes]]
name = "items"
path = "/items/{{id}}"
upstream = "up"
chain = ["tx"]

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "up"
chain = ["tx"]
"#,
        addr = up.addr
    );
    TestGateway::start(&cfg, &["transform.wasm"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_path_and_query_reach_the_upstream() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        r#"
[plugins.tx.config.request.headers]
remove = ["x-secret"]
rename = { "x-old" = "x-new" }
set = { "x-item" = "{path.id}", "x-user" = "user-{header.x-user}" }
add = { "x-q" = "{query.q}" }

[plugins.tx.config.request.path]
regex = "^/items/([^/]+)$"
replace = "/v2/things/$1"

[plugins.tx.config.request.query]
remove = ["token"]
add = { by = "{header.x-user}" }
"#,
    )
    .await;
    let r = gw
        .request(
            Method::GET,
            "/items/42?q=hello%20world&token=abc&keep=1&token=def",
            &[("x-secret", "s"), ("x-old", "o"), ("x-user", "ann b")],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["uri"], "/v2/things/42?q=hello%20world&keep=1&by=ann%20b");
    assert_eq!(seen["headers"]["x-secret"], serde_json::Value::Null);
    assert_eq!(seen["headers"]["x-old"], serde_json::Value::Null);
    assert_eq!(r.seen("x-new").as_deref(), Some("o"));
    assert_eq!(r.seen("x-item").as_deref(), Some("42"));
    assert_eq!(r.seen("x-user").as_deref(), Some("user-ann b"), "templates read the request before the edits");
    assert_eq!(r.seen("x-q").as_deref(), Some("hello world"));

    // Another route: no path parameter, no regex match; the query is kept.
    let r = gw.get("/other?a=1&token=t").await;
    assert_eq!(r.json()["uri"], "/other?a=1&by=");
    assert_eq!(r.seen("x-item").as_deref(), Some(""), "a missing value renders empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_json_body_is_edited_with_a_correct_content_length() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        r#"
[plugins.tx.config]
max_body = "1KiB"

[plugins.tx.config.request.body]
remove = ["/password"]
rename = { "/userName" = "/user_name" }
set = { "/meta/item" = "{path.id}", "/meta/client" = "{client_ip}", "/meta/version" = 2 }
"#,
    )
    .await;
    let body = r#"{"userName":"eve","password":"hunter2","tags":[1,2]}"#;
    let r = gw.request(Method::POST, "/items/7", &[("content-type", "application/json")], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    let sent = seen["body"].as_str().expect("echoed body");
    assert_eq!(sent, r#"{"user_name":"eve","tags":[1,2],"meta":{"client":"127.0.0.1","item":"7","version":2}}"#);
    assert_eq!(r.seen("content-length"), Some(sent.len().to_string()), "the gateway fixed Content-Length");

    // Not JSON: untouched.
    let r = gw.request(Method::POST, "/items/7", &[("content-type", "text/plain")], body).await;
    assert_eq!(r.json()["body"], body);

    // Invalid JSON: 400 with a JSON error, never forwarded.
    let hits = up.hits();
    let r = gw.request(Method::POST, "/items/7", &[("content-type", "application/json")], "{\"a\":").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["error"].as_str().expect("error message").contains("body is not valid JSON"), "{}", r.text());

    // Over max_body: 413.
    let big = json!({ "pad": "x".repeat(2000) }).to_string();
    let r = gw.request(Method::POST, "/items/7", &[("content-type", "application/json")], &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(up.hits(), hits, "rejected bodies never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_body_and_status_are_edited() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        r#"
[plugins.tx.config.request.headers]
remove = ["x-user"]

[plugins.tx.config.response]
status_map = { "404" = 200, "5xx" = 503 }

[plugins.tx.config.response.headers]
remove = ["x-upstream"]
set = { "x-echo-user" = "{header.x-user}", "x-item" = "{path.id}" }
add = { "x-served-by" = "weir" }

[plugins.tx.config.response.body]
remove = ["/headers/x-forwarded-for", "/headers/forwarded"]
rename = { "/upstream" = "/backend" }
set = { "/item" = "{path.id}", "/q" = "{query.q}" }
"#,
    )
    .await;
    let r = gw.request(Method::GET, "/items/9?q=a%2Bb", &[("x-user", "zed"), ("x-status", "404")], "").await;
    assert_eq!(r.status, 200, "404 mapped to 200");
    assert_eq!(r.header("x-upstream"), None);
    assert_eq!(r.header("x-served-by"), Some("weir"));
    assert_eq!(r.header("x-item"), Some("9"));
    assert_eq!(
        r.header("x-echo-user"),
        Some("zed"),
        "response templates see the request as it reached the plugin, not as sent upstream"
    );
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    let body = r.json();
    assert_eq!(body["backend"], "up");
    assert_eq!(body["upstream"], serde_json::Value::Null);
    assert_eq!(body["item"], "9");
    assert_eq!(body["q"], "a+b");
    assert_eq!(body["uri"], "/items/9?q=a%2Bb");
    assert_eq!(body["headers"]["x-forwarded-for"], serde_json::Value::Null);
    assert_eq!(body["headers"]["forwarded"], serde_json::Value::Null);
    assert_eq!(body["headers"]["x-user"], serde_json::Value::Null, "the upstream never saw x-user");
    assert_eq!(body["headers"]["x-status"][0], "404");
    // Key order of the upstream's document is kept; renamed members keep their place.
    let text = r.text();
    assert!(
        text.ends_with(r#""method":"GET","backend":"up","uri":"/items/9?q=a%2Bb","item":"9","q":"a+b"}"#),
        "{text}"
    );

    let r = gw.request(Method::GET, "/items/9", &[("x-status", "502")], "").await;
    assert_eq!(r.status, 503, "5xx mapped to 503");
    let r = gw.request(Method::GET, "/items/9", &[("x-status", "201")], "").await;
    assert_eq!(r.status, 201, "unmapped status kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_only_for_needed_phases_and_rejects_bad_config() {
    let up = Upstream::start("up").await;
    let gw = gateway(&up, "[plugins.tx.config.request.query]\nadd = { v = \"1\" }\n").await;
    let status = gw.status().await;
    assert_eq!(status["plugins"][0]["phases"], json!(["request_headers"]));
    assert_eq!(gw.get("/x").await.json()["uri"], "/x?v=1");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(weir_tests::fixture("transform.wasm"), dir.path().join("plugins/transform.wasm")).expect("copy");
    let cfg = format!(
        "{}[plugins.tx]\nmodule = \"transform.wasm\"\n[plugins.tx.config.request.headers]\nset = {{ \"x-a\" = \"{{nope}}\" }}\n\
         [upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [\"tx\"]\n",
        weir_tests::server_section(),
        up.addr
    );
    std::fs::write(dir.path().join("gateway.toml"), cfg).expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("an unknown template source must be rejected")
    };
    let text = err.to_string();
    assert!(text.contains("plugin `tx` (transform.wasm): config rejected by the plugin"), "{text}");
    assert!(text.contains("request.headers.set.x-a: unknown template source {nope}"), "{text}");
}
