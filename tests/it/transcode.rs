//! Protocol translation against a real gRPC server (Python `grpcio`,
//! `tests/grpc/orders.py` serving `shop.v1.Orders`), with the descriptor set
//! compiled by grpcio-tools when the test starts: JSON/HTTP ↔ gRPC
//! (`grpc_transcode`) and gRPC-Web ↔ gRPC (`grpc_web`, with CORS).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use weir_tests::{PyPeer, Reply, TestGateway, py_client, workspace_root};
use weir_transcode::prost_reflect::{DescriptorPool, DynamicMessage};
use weir_transcode::{GrpcWebMode, decode_response, encode_frame};

const SERVER: &str = "grpc/orders.py";

/// Compiles `shop/v1/shop.proto` with its imports into `out` with
/// grpcio-tools, as a user would.
fn compile_descriptors(out: &Path) {
    std::fs::create_dir_all(out.parent().expect("a folder")).expect("protos folder");
    let protos = workspace_root().join("transcode/tests/protos");
    let status = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&protos)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("shop/v1/shop.proto")
        .status()
        .expect("python3 -m grpc_tools.protoc (scripts/test.sh installs grpcio-tools)");
    assert!(status.success(), "grpc_tools.protoc failed");
}

/// The gateway config: `[plugins.probe]` with `probe` settings, an h2
/// upstream on `port`, and one route `shop` with `route_extra`.
fn config(port: u16, probe: &str, route_extra: &str) -> String {
    format!(
        r#"
[plugins.probe]
module = "probe.wasm"
config = {{ tag = "t"{probe} }}

[upstreams.shop]
targets = ["127.0.0.1:{port}"]
protocol = "h2"

[[routes]]
name = "shop"
path_prefix = "/"
upstream = "shop"
chain = ["probe"]
{route_extra}
"#
    )
}

const TRANSCODE: &str = r#"grpc_transcode = { descriptors = "protos/shop.pb", services = ["shop.v1.Orders"] }"#;

/// A gateway whose folder holds `protos/shop.pb`, freshly compiled.
async fn gateway(body: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(dir.path(), "", body, &["probe.wasm"]);
    compile_descriptors(&dir.path().join("protos/shop.pb"));
    TestGateway::start_in(dir).await
}

fn pool(gw: &TestGateway) -> DescriptorPool {
    let bytes = std::fs::read(gw.dir.path().join("protos/shop.pb")).expect("descriptor set");
    weir_transcode::decode_descriptor_set(&bytes, 16 << 20).expect("a valid set")
}

/// `message` of type `shop.v1.NAME` as JSON.
fn message_json(pool: &DescriptorPool, name: &str, bytes: &[u8]) -> Value {
    let desc = pool.get_message_by_name(&format!("shop.v1.{name}")).expect("message type");
    let msg = DynamicMessage::decode(desc, bytes).expect("a valid message");
    serde_json::to_value(&msg).expect("JSON")
}

async fn send(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    gw.request(method, path, headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_calls_are_transcoded_to_grpc_and_back() {
    let server = PyPeer::server(SERVER).await;
    let gw = gateway(&config(server.port, "", TRANSCODE)).await;

    // Unary GET: the path variable and query parameters fill the request;
    // the probe's header reached the server as metadata (echoed in
    // `labels`, and back as a response header).
    let r = gw.get("/v1/orders/42?include_items=true&fields=a&fields=b&status=STATUS_SHIPPED&shop=s1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let order = r.json();
    assert_eq!(order["id"], "42");
    assert_eq!(order["customerId"], "c-42");
    assert_eq!(order["tags"], json!(["shop=s1", "status=STATUS_SHIPPED", "a", "b"]));
    assert_eq!(
        order["items"],
        json!([{"sku": "A", "quantity": 1, "unitPrice": 2.5}, {"sku": "B", "quantity": 3, "unitPrice": 1.0}])
    );
    assert_eq!(order["labels"]["x-chain"], "t", "the request chain ran: {order}");
    assert_eq!(r.header("x-chain"), Some("t"), "initial metadata comes back as headers");
    assert!(r.header("grpc-status").is_none() && r.header("trailer").is_none());

    // POST with a body.
    let body = r#"{"customerId": "ann", "items": [{"sku": "A", "quantity": 2, "unitPrice": 1.25}], "tags": ["gift"]}"#;
    let r = send(&gw, Method::POST, "/v1/orders", &[("content-type", "application/json")], body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let order = r.json();
    assert_eq!(
        (&order["id"], &order["customerId"], &order["status"], &order["totalCents"]),
        (&json!("o-1"), &json!("ann"), &json!("STATUS_PENDING"), &json!("250")),
        "{order}"
    );

    // A method without an HTTP rule, by its gRPC name.
    let r = send(&gw, Method::POST, "/shop.v1.Orders/Ping", &[], r#"{"message": "hi"}"#).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"message": "hi", "count": "1"})));

    // A native gRPC client on the same route passes through untouched (an
    // empty PingRequest; the answer is PingResponse{count: 1}).
    let target = gw.url.trim_start_matches("http://").to_owned();
    let r = py_client("grpc/peer.py", &[&target, "/shop.v1.Orders/Ping", ""]).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"], json!(["\u{10}\u{1}"]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_and_bad_requests_are_http_errors_with_json_bodies() {
    let server = PyPeer::server(SERVER).await;
    let gw = gateway(&config(server.port, "", TRANSCODE)).await;

    // The server's NOT_FOUND, with its google.rpc.Status detail.
    let r = gw.get("/v1/orders/missing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "code": 5,
            "message": "order missing not found",
            "details": [{"@type": "type.googleapis.com/shop.v1.OrderErrorInfo", "orderId": "missing", "reason": "no such order"}]
        })
    );

    // A Trailers-Only answer (the status in the only HEADERS frame).
    let r = gw.get("/v1/orders/denied").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json(), json!({"code": 7, "message": "no access", "details": []}));

    // Bad bodies: 400 naming the field, and the server never asked.
    let bad = r#"{"customerId": "ann", "items": [{"sku": "A", "quantity": "lots"}]}"#;
    let r = send(&gw, Method::POST, "/v1/orders", &[], bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let e = r.json();
    assert_eq!(e["code"], 3);
    assert!(e["message"].as_str().is_some_and(|m| m.contains("items[0].quantity")), "{e}");
    let r = send(&gw, Method::POST, "/v1/orders", &[], r#"{"customerId": "ann", "colour": "red"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("colour")), "{}", r.text());
    let r = send(&gw, Method::POST, "/v1/orders", &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = gw.get("/v1/orders/7?colour=red").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].as_str().is_some_and(|m| m.contains("colour")), "{}", r.text());

    // No rule: 404, or 405 when the path is bound under another method.
    let r = gw.get("/v2/nothing").await;
    // UNIMPLEMENTED, as gRPC maps an HTTP 404.
    assert_eq!((r.status, &r.json()["code"]), (StatusCode::NOT_FOUND, &json!(12)), "{}", r.text());
    let r = send(&gw, Method::PUT, "/v1/orders", &[], "{}").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text());

    // The upstream gone: the gateway's own 502.
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = gw.get("/v1/orders/1").await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_calls_are_ndjson() {
    let server = PyPeer::server(SERVER).await;
    let gw = gateway(&config(server.port, "", TRANSCODE)).await;

    let lines = |r: &Reply| -> Vec<Value> {
        r.text().lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
    };
    let r = gw.get("/v1/orders?page_size=3&customer_id=ann").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(
        lines(&r),
        [
            json!({"id": "o-0", "customerId": "ann"}),
            json!({"id": "o-1", "customerId": "ann"}),
            json!({"id": "o-2", "customerId": "ann"})
        ]
    );

    // A failure after two messages: a last error line (the 200 was sent).
    let r = gw.get("/v1/orders?page_size=2&customer_id=fail").await;
    assert_eq!(r.status, StatusCode::OK);
    let got = lines(&r);
    assert_eq!(got.len(), 3, "{}", r.text());
    assert_eq!(got[2], json!({"error": {"code": 14, "message": "shard down", "details": []}}));

    // A failure before any message: the mapped status and the error body.
    let r = gw.get("/v1/orders?page_size=0&customer_id=fail").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json(), json!({"code": 14, "message": "shard down", "details": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_json_request_and_answer() {
    let server = PyPeer::server(SERVER).await;
    // The probe tags the request head and appends to the response body (a
    // response body phase, which then holds the whole JSON answer).
    let route = r#"grpc_transcode = { descriptors = "protos/shop.pb", services = ["shop.v1.Orders"], emit_defaults = true, preserve_proto_field_names = true }"#;
    let gw = gateway(&config(server.port, r#", body_suffix = "\n# probed""#, route)).await;

    let r = gw.get("/v1/orders/9").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let (json_part, suffix) = text.split_once('\n').expect("the suffix");
    assert_eq!(suffix, "# probed", "the response body phase ran on the JSON answer");
    let order: Value = serde_json::from_str(json_part).expect("the JSON answer");
    assert_eq!(order["customer_id"], "c-9", "proto field names: {order}");
    assert_eq!(order["gift"], false, "defaults emitted: {order}");
    assert_eq!(order["labels"]["x-chain"], "t");
}

/// A gRPC-Web call of `/shop.v1.Orders/GetOrder` for order `id`.
async fn web_call(gw: &TestGateway, mode: GrpcWebMode, id: &str, origin: Option<&str>) -> Reply {
    let mut payload = vec![0x0a, u8::try_from(id.len()).expect("short id")];
    payload.extend_from_slice(id.as_bytes());
    let frame = encode_frame(&payload);
    let (content_type, body) = match mode {
        GrpcWebMode::Binary => ("application/grpc-web+proto", frame),
        GrpcWebMode::Text => {
            ("application/grpc-web-text", Bytes::from(base64::engine::general_purpose::STANDARD.encode(&frame)))
        }
    };
    let mut req = Request::post(format!("{}/shop.v1.Orders/GetOrder", gw.url))
        .header("content-type", content_type)
        .header("x-grpc-web", "1");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    gw.client.send(req.body(Full::new(body)).expect("request")).await.expect("gRPC-Web call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_carry_their_trailers_in_the_body() {
    let server = PyPeer::server(SERVER).await;
    let cors = r#"grpc_web = { cors = { allow_origins = ["https://app.example.com"], max_age = "10m" } }"#;
    let gw = gateway(&config(server.port, "", cors)).await;
    let pool = pool(&gw);

    for mode in [GrpcWebMode::Binary, GrpcWebMode::Text] {
        let r = web_call(&gw, mode, "7", Some("https://app.example.com")).await;
        assert_eq!(r.status, StatusCode::OK, "{mode:?}: {}", r.text());
        assert_eq!(r.headers["content-type"], mode.response_content_type());
        let answer = decode_response(mode, &r.body, 1 << 20).expect("a gRPC-Web body");
        assert_eq!(answer.messages.len(), 1, "{mode:?}");
        let order = message_json(&pool, "Order", &answer.messages[0]);
        assert_eq!((&order["id"], &order["customerId"]), (&json!("7"), &json!("c-7")), "{order}");
        assert_eq!(order["labels"]["x-chain"], "t", "the chain ran");
        let trailers = answer.trailers.expect("a trailers frame");
        assert_eq!(trailers["grpc-status"], "0", "{mode:?}");
        // CORS on the answer.
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(r.header("access-control-expose-headers"), Some("grpc-status, grpc-message"));

        // The server's error: in the trailers frame.
        let r = web_call(&gw, mode, "missing", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let answer = decode_response(mode, &r.body, 1 << 20).expect("a gRPC-Web body");
        assert!(answer.messages.is_empty());
        let trailers = answer.trailers.expect("a trailers frame");
        assert_eq!(
            (trailers["grpc-status"].as_bytes(), trailers["grpc-message"].as_bytes()),
            (&b"5"[..], &b"order missing not found"[..])
        );
        assert!(r.header("access-control-allow-origin").is_none(), "no Origin, no CORS");

        // A Trailers-Only answer: a body of just the trailers frame.
        let r = web_call(&gw, mode, "denied", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let answer = decode_response(mode, &r.body, 1 << 20).expect("a gRPC-Web body");
        assert!(answer.messages.is_empty());
        assert_eq!(answer.trailers.expect("a trailers frame")["grpc-status"], "7", "{mode:?}");
    }

    // The preflight, answered by the gateway.
    let preflight = |origin: &'static str| {
        let gw = &gw;
        async move {
            let headers = [
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,x-grpc-web"),
            ];
            gw.request(Method::OPTIONS, "/shop.v1.Orders/GetOrder", &headers, "").await
        }
    };
    let r = preflight("https://app.example.com").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert!(r.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert!(r.header("access-control-allow-headers").is_some_and(|h| h.contains("x-grpc-web")));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let r = preflight("https://evil.example.com").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.header("access-control-allow-origin").is_none());

    // A broken text body: 400 before anything reaches the server.
    let req = Request::post(format!("{}/shop.v1.Orders/GetOrder", gw.url))
        .header("content-type", "application/grpc-web-text")
        .body(Full::new(Bytes::from_static(b"AAAA!")))
        .expect("request");
    let r = gw.client.send(req).await.expect("call");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // The upstream gone: a gRPC-Web UNAVAILABLE a browser can read.
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = web_call(&gw, GrpcWebMode::Binary, "7", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let trailers = decode_response(GrpcWebMode::Binary, &r.body, 1 << 20).expect("body").trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");

    // The gateway's own error answers carry CORS too (a plain request here).
    let r = gw.request(Method::GET, "/other", &[("origin", "https://app.example.com")], "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(r.header("vary"), Some("origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_descriptors_are_refused_at_reload_and_the_last_good_snapshot_serves() {
    let server = PyPeer::server(SERVER).await;
    let gw = gateway(&config(server.port, "", TRANSCODE)).await;
    let serving = || async { gw.get("/v1/orders/1").await.status };
    assert_eq!(serving().await, StatusCode::OK);

    // An unknown service.
    gw.write_config(&config(server.port, "", &TRANSCODE.replace("shop.v1.Orders", "shop.v1.Nope")));
    let e = gw.wait_reload_error().await;
    assert!(
        e.contains("route `shop`")
            && e.contains("shop.pb")
            && e.contains("\"shop.v1.Nope\" is not in the descriptor set"),
        "{e}"
    );
    assert_eq!(serving().await, StatusCode::OK, "the old snapshot serves");

    // An upstream without HTTP/2.
    gw.write_config(&config(server.port, "", TRANSCODE).replace("protocol = \"h2\"", "protocol = \"h1\""));
    let e = wait_error_containing(&gw, "needs HTTP/2").await;
    assert!(e.contains("route `shop`") && e.contains("[upstreams.shop]"), "{e}");

    // The good config again, then a broken descriptor file: the file change
    // alone reloads, and is refused naming the file.
    gw.write_config(&config(server.port, "", TRANSCODE));
    let generation = gw.status().await["generation"].as_u64().expect("generation");
    gw.wait_generation(generation + 1).await;
    std::fs::write(gw.dir.path().join("protos/shop.pb"), b"\x0a\xff\xff not a descriptor set").expect("write");
    let e = wait_error_containing(&gw, "FileDescriptorSet").await;
    assert!(e.contains("route `shop`") && e.contains("protos/shop.pb"), "{e}");
    assert_eq!(serving().await, StatusCode::OK, "the old snapshot serves");

    // A missing one.
    std::fs::remove_file(gw.dir.path().join("protos/shop.pb")).expect("remove");
    let e = wait_error_containing(&gw, "cannot read").await;
    assert!(e.contains("protos/shop.pb"), "{e}");
    assert_eq!(serving().await, StatusCode::OK);
}

/// Waits for a reload error that contains `text`.
async fn wait_error_containing(gw: &TestGateway, text: &str) -> String {
    for _ in 0..100 {
        if let Some(e) = gw.status().await["last_reload_error"].as_str()
            && e.contains(text)
        {
            return e.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no reload error containing {text:?}: {}", gw.status().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_stream_request_bodies_see_the_json_body() {
    let server = PyPeer::server(SERVER).await;
    let port = server.port;
    // sse_tag cuts a request body off past 20 bytes, as it streams through.
    let body = format!(
        r#"
[plugins.cap]
module = "sse_tag.wasm"
config = {{ max_request_bytes = 20 }}

[upstreams.shop]
targets = ["127.0.0.1:{port}"]
protocol = "h2"

[[routes]]
name = "shop"
path_prefix = "/"
upstream = "shop"
chain = ["cap"]
{TRANSCODE}
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(dir.path(), "", &body, &["sse_tag.wasm"]);
    compile_descriptors(&dir.path().join("protos/shop.pb"));
    let gw = TestGateway::start_in(dir).await;

    let r = send(&gw, Method::POST, "/shop.v1.Orders/Ping", &[], r#"{"message":"hi"}"#).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"message": "hi", "count": "1"})));
    let r = send(&gw, Method::POST, "/shop.v1.Orders/Ping", &[], r#"{"message":"far too long for the cap"}"#).await;
    assert_ne!(r.status, StatusCode::OK, "the streaming plugin saw the JSON body: {}", r.text());
    assert!(r.status.is_client_error() || r.status.is_server_error(), "{}", r.status);
}
