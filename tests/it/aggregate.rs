//! Aggregate routes: one client request fanned out to three real upstreams
//! in parallel, merged, with partial failure, required parts, timeouts and
//! stale fallback.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use weir_tests::{TestGateway, Upstream};

/// Three upstreams (`stock`, `price`, `reviews`) and an aggregate route
/// `/warehouse/{id}` over them; `extra` goes into the route, `part_extra`
/// into each part by name.
fn warehouse(ups: &[&Upstream; 3], route_extra: &str, part_extra: [&str; 3]) -> String {
    let [s, p, r] = ups.map(|u| u.addr);
    let [ps, pp, pr] = part_extra;
    format!(
        r#"
[plugins.tag]
module = "probe.wasm"
config = {{ tag = "t" }}

[upstreams.stock]
targets = ["{s}"]
[upstreams.price]
targets = ["{p}"]
[upstreams.reviews]
targets = ["{r}"]

[[routes]]
name = "warehouse"
kind = "aggregate"
path = "/warehouse/{{id}}"
chain = ["tag"]
forward_headers = ["x-chain"]
{route_extra}

[[routes.parts]]
name = "stock"
upstream = "stock"
path = "/stock/{{path.id}}"
{ps}

[[routes.parts]]
name = "price"
upstream = "price"
path = "/price/{{path.id}}?currency={{query.currency}}"
headers = {{ "x-tenant" = "{{header.x-tenant}}", "x-status" = "{{header.x-price-status}}" }}
{pp}

[[routes.parts]]
name = "reviews"
upstream = "reviews"
path = "/reviews/{{path.id}}"
{pr}
"#
    )
}

async fn three() -> [Upstream; 3] {
    [Upstream::start("stock").await, Upstream::start("price").await, Upstream::start("reviews").await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_slow_parts_answer_in_the_time_of_one() {
    let ups = three().await;
    let gw = TestGateway::start(&warehouse(&[&ups[0], &ups[1], &ups[2]], "", ["", "", ""]), &["probe.wasm"]).await;
    // Warm the pools, then slow every upstream down to 100 ms.
    assert_eq!(gw.get("/warehouse/1").await.status, 200);
    for u in &ups {
        u.delay_ms.store(100, Ordering::SeqCst);
    }
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let r = gw.request(Method::GET, "/warehouse/42?currency=EUR", &[("x-tenant", "acme")], "").await;
        times.push(t.elapsed());
        last = Some(r);
    }
    let r = last.expect("answered");
    times.sort();
    let median = times[2];
    eprintln!("aggregate of three 100 ms parts: {times:?} (median {median:?}); sequential would be >= 300 ms");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-weir-partial"), None);
    // Parallel: about one delay, far from the sum of three.
    assert!(median >= Duration::from_millis(100), "{times:?}");
    assert!(median < Duration::from_millis(250), "parts ran one after another: {times:?}");

    let doc = r.json();
    let keys: Vec<&str> = doc.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["stock", "price", "reviews"], "each part under its key, in part order");
    assert_eq!(doc["stock"]["uri"], "/stock/42");
    assert_eq!(doc["price"]["uri"], "/price/42?currency=EUR");
    assert_eq!(doc["price"]["headers"]["x-tenant"][0], "acme");
    assert_eq!(doc["reviews"]["upstream"], "reviews");
    // The request chain ran once, before the fan-out: each part got its
    // header; the response chain ran once, on the merged answer.
    for part in ["stock", "price", "reviews"] {
        assert_eq!(doc[part]["headers"]["x-chain"][0], "t", "{part}");
        assert!(doc[part]["headers"]["x-request-id"][0].is_string(), "{part}");
    }
    assert_eq!(r.header("x-chain-resp"), Some("t"));
    assert_eq!(ups.iter().map(Upstream::hits).collect::<Vec<_>>(), [6, 6, 6], "one request per part per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_is_marked_and_the_rest_is_answered() {
    let mut ups = three().await;
    let gw = TestGateway::start(&warehouse(&[&ups[0], &ups[1], &ups[2]], "", ["", "", ""]), &["probe.wasm"]).await;
    ups[2].kill();
    let r = gw.get("/warehouse/7").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-weir-partial"), Some("true"));
    let doc = r.json();
    assert_eq!(doc["stock"]["uri"], "/stock/7");
    assert_eq!(doc["price"]["uri"], "/price/7?currency=");
    assert!(doc["reviews"].is_null(), "{doc}");
    let err = doc["_errors"]["reviews"]["error"].as_str().expect("error for reviews");
    assert!(err.contains("reviews"), "{err}");
    assert_eq!(doc["_errors"].as_object().map(|m| m.len()), Some(1), "{doc}");

    // A part answering an error status is a failed part, with its status
    // (the header template sends `x-status` only when the client set it).
    ups[2].revive().await;
    let r = gw.request(Method::GET, "/warehouse/9", &[("x-price-status", "503")], "").await;
    let doc = r.json();
    assert_eq!(doc["_errors"]["price"]["status"], 503, "{doc}");
    assert_eq!(doc["stock"]["uri"], "/stock/9");
    assert_eq!(doc["reviews"]["uri"], "/reviews/9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_required_part_fails_the_request() {
    let mut ups = three().await;
    let gw =
        TestGateway::start(&warehouse(&[&ups[0], &ups[1], &ups[2]], "", ["required = true", "", ""]), &["probe.wasm"])
            .await;
    ups[0].kill();
    let r = gw.get("/warehouse/1").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["source"], "upstream");
    assert!(doc["error"].as_str().expect("error").contains("required part `stock` failed"), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_part_times_out_on_its_own_deadline() {
    let ups = three().await;
    let gw = TestGateway::start(
        &warehouse(&[&ups[0], &ups[1], &ups[2]], "", ["", "", "timeout = \"80ms\""]),
        &["probe.wasm"],
    )
    .await;
    ups[2].delay_ms.store(1000, Ordering::SeqCst);
    let t = Instant::now();
    let r = gw.get("/warehouse/3").await;
    let took = t.elapsed();
    eprintln!("aggregate with one part past its 80 ms timeout answered in {took:?}");
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_millis(600), "waited for the slow part: {took:?}");
    let doc = r.json();
    assert_eq!(doc["_errors"]["reviews"]["timeout"], true, "{doc}");
    assert_eq!(doc["stock"]["uri"], "/stock/3");
    assert_eq!(r.header("x-weir-partial"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_merge_and_templates_shape_the_answer() {
    let ups = three().await;
    let gw =
        TestGateway::start(&warehouse(&[&ups[0], &ups[1], &ups[2]], "merge = \"deep\"", ["", "", ""]), &["probe.wasm"])
            .await;
    let doc = gw.get("/warehouse/5").await.json();
    // Every echo answer has the same keys: later parts win, in part order.
    assert_eq!(doc["upstream"], "reviews", "{doc}");
    assert_eq!(doc["uri"], "/reviews/5");

    let template = r#"template = { id = "${path.id}", stock_uri = "${stock.uri}", method = "${price.method}", line = "${stock.upstream} and ${reviews.upstream}", tenant = "${header.x-tenant}" }"#;
    let gw =
        TestGateway::start(&warehouse(&[&ups[0], &ups[1], &ups[2]], template, ["", "", ""]), &["probe.wasm"]).await;
    let doc = gw.request(Method::GET, "/warehouse/6", &[("x-tenant", "acme")], "").await.json();
    assert_eq!(
        doc,
        serde_json::json!({
            "id": "6", "stock_uri": "/stock/6", "method": "GET", "line": "stock and reviews", "tenant": "acme",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_part_falls_back_to_its_stale_answer() {
    let mut ups = three().await;
    let gw = TestGateway::start(
        &warehouse(&[&ups[0], &ups[1], &ups[2]], "", ["", "cache = { stale_if_error = \"1m\" }", ""]),
        &["probe.wasm"],
    )
    .await;
    let fresh = gw.get("/warehouse/11").await;
    assert_eq!(fresh.header("x-weir-stale"), None);
    ups[1].kill();
    let r = gw.get("/warehouse/11").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-stale"), Some("true"));
    assert_eq!(r.header("x-weir-partial"), None, "a stale answer is an answer");
    let doc = r.json();
    assert_eq!(doc["price"]["uri"], "/price/11?currency=");
    assert_eq!(doc["_stale"], serde_json::json!(["price"]));
    // An id never fetched has nothing stale to fall back on.
    let r = gw.get("/warehouse/12").await;
    assert_eq!(r.header("x-weir-partial"), Some("true"));
    assert!(r.json()["_errors"]["price"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_aggregate_routes_are_refused_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins");
    let body = r#"
[upstreams.svc]
targets = ["127.0.0.1:1"]

[[routes]]
name = "agg"
kind = "aggregate"
path = "/a/{id}"
template = { x = "${nope.field}" }

[[routes.parts]]
name = "one"
upstream = "svc"
path = "/one/{path.other}"

[[routes.parts]]
name = "two"
upstream = "missing"
path = "/two"

[[routes]]
name = "plain"
path = "/p"
parts = []
"#;
    std::fs::write(dir.path().join("gateway.toml"), format!("{}{body}", weir_tests::server_section())).expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("bad aggregate routes must be refused")
    };
    let err = err.to_string();
    assert!(err.contains("gateway.toml:22: route `agg` part `one`: {path.other} is not a parameter"), "{err}");
    assert!(err.contains("(it has: id)"), "{err}");
    assert!(err.contains("gateway.toml:26: route `agg`: unknown upstream `missing`"), "{err}");
    assert!(err.contains("gateway.toml:17: route `agg`: template: `${nope.field}`: no part named `nope`"), "{err}");
    assert!(err.contains("route `plain`: `upstream` is required"), "{err}");
}
