//! `transform` plugin through the real gateway: request edits seen by the
//! echo upstream, response edits seen by the client.

use std::net::SocketAddr;

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{TestGateway, Upstream};

/// A gateway whose `items` route (`/items/{id}`), `files` route
/// (`/files/{*rest}`) and catch-all route all run the transform plugin
/// `tx`, configured by `config` (TOML sub-tables under
/// `[plugins.tx.config]`, as a user would write them).
async fn gateway(up: &Upstream, config: &str) -> TestGateway {
    gateway_at(up.addr, config).await
}

/// [`gateway`] in front of the upstream at `addr`.
async fn gateway_at(addr: SocketAddr, config: &str) -> TestGateway {
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
name = "files"
path = "/files/{{*rest}}"
upstream = "up"
chain = ["tx"]

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "up"
chain = ["tx"]
"#
    );
    TestGateway::start(&cfg, &["transform.wasm"]).await
}

/// An upstream that answers every request with `body` as JSON: the echo
/// upstream cannot send a document with duplicate keys.
async fn fixed_json_upstream(body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Requests to it carry no body: read the head, then answer.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
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
    // Key order of the upstream's document is kept; renamed members keep
    // their place, new ones come last.
    let text = r.text();
    assert!(
        text.starts_with(r#"{"backend":"up","method":"GET","uri":"/items/9?q=a%2Bb","version":"HTTP/1.1","headers":{"#)
            && text.ends_with(r#""body":"","item":"9","q":"a+b"}"#),
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

/// Review finding 1.5: a body edit applies to every duplicate of the keys
/// on its way, so a parser that keeps the first duplicate (upstream or
/// client) sees it as well as one that keeps the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_edits_reach_every_duplicate_key() {
    let up = Upstream::start("up").await;
    let gw =
        gateway(&up, "[plugins.tx.config.request.body]\nremove = [\"/a/role\"]\nset = { \"/a/via\" = \"gw\" }\n").await;
    for body in [r#"{"a":{"role":"admin"},"a":{}}"#, r#"{"a":{},"a":{"role":"admin"}}"#] {
        let r = gw.request(Method::POST, "/items/7", &[("content-type", "application/json")], body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["body"], r#"{"a":{"via":"gw"},"a":{"via":"gw"}}"#, "{body}");
    }

    let upstream = fixed_json_upstream(r#"{"user":{"name":"ann","ssn":"078-05-1120"},"user":{"name":"ann"}}"#).await;
    let gw = gateway_at(upstream, "[plugins.tx.config.response.body]\nremove = [\"/user/ssn\"]\n").await;
    let r = gw.get("/items/7").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"user":{"name":"ann"},"user":{"name":"ann"}}"#);
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
}

/// Review finding 1.6: a path parameter (or the rest of the path) that
/// would be a `.` or `..` segment of the rewritten path is refused, so it
/// cannot climb out of the prefix once the upstream normalises the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_values_cannot_climb_out_of_a_prefix() {
    let up = Upstream::start("up").await;
    let gw = gateway(
        &up,
        r#"
[plugins.tx.config.request.path]
regex = "^/(items|files)/.*$"
replace = "/tenants/{path.id}{path.rest}"
"#,
    )
    .await;
    assert_eq!(gw.get("/items/acme").await.json()["uri"], "/tenants/acme");
    assert_eq!(gw.get("/files/a/b.txt").await.json()["uri"], "/tenants/a/b.txt");
    let hits = up.hits();
    for path in ["/items/..", "/items/.", "/items/%2e%2E", "/items/..;x", "/files/a/../../../admin", "/files/%2E%2E/x"]
    {
        let r = gw.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.json()["error"].as_str().expect("error message").contains("dot segment"), "{}", r.text());
    }
    assert_eq!(up.hits(), hits, "refused requests never reach the upstream");
}
