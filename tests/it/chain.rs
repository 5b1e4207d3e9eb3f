//! Plugin chains: order, edits, short-circuits, body phases, shared state.

use http::Method;
use weir_tests::{TestGateway, Upstream};

fn probe(name: &str, config: &str) -> String {
    format!("[plugins.{name}]\nmodule = \"probe.wasm\"\nconfig = {{ {config} }}\n")
}

fn route(chain: &[&str], upstream: &str) -> String {
    let chain: Vec<String> = chain.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[upstreams.up]\ntargets = [\"{upstream}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [{}]\n",
        chain.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_runs_in_order_and_responses_in_reverse() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}{}",
        probe("a", "tag = \"a\""),
        probe("b", "tag = \"b\""),
        probe("c", "tag = \"c\""),
        route(&["a", "b", "c"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-chain").as_deref(), Some("a,b,c"));
    assert_eq!(r.header("x-chain-resp"), Some("c,b,a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_circuit_skips_upstream_and_the_rest_of_the_chain() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}{}",
        probe("first", "tag = \"first\""),
        probe("gate", "tag = \"gate\", respond_status = 418"),
        probe("never", "tag = \"never\", count = true"),
        route(&["first", "gate", "never"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let r = gw.request(Method::GET, "/", &[("x-probe-respond", "1")], "").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-responded-by"), Some("gate"));
    assert_eq!(r.text(), "short-circuit by gate");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(up.hits(), 0, "the upstream must not be called");

    // Without the trigger the whole chain runs; `never` counted only this one.
    let r = gw.get("/").await;
    assert_eq!(r.seen("x-chain").as_deref(), Some("first,gate,never"));
    assert_eq!(r.seen("x-count").as_deref(), Some("1"));
}

/// Values of `name` the client got, in order.
fn all(r: &weir_tests::Reply, name: &str) -> Vec<String> {
    r.headers.get_all(name).iter().map(|v| v.to_str().expect("text").to_owned()).collect()
}

/// `add_response_header` (contract 0.2.6): a header decided in `on_request`
/// reaches the client on the upstream's response, added at its plugin's
/// place in the response phases (reverse chain order), whether or not the
/// plugin takes that phase; a phase that traps drops it with its other
/// edits, and a response a plugin makes does not get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_added_for_the_response_from_the_request_phase() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}failure = \"open\"\n{}{}",
        probe("first", "add_response = \"first\", request_only = true"),
        probe("middle", "tag = \"middle\", add_response = \"middle\", trap = true"),
        probe("gate", "respond_status = 418, request_only = true"),
        route(&["first", "middle", "gate"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;

    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    // `middle` adds its header before its own `on_response` runs, `first`
    // (no response phase) after it.
    assert_eq!(all(&r, "x-added"), ["middle", "first"]);
    assert_eq!(r.header("x-chain-resp"), Some("middle"));
    assert_eq!(r.seen("x-added"), None, "a response header, not sent upstream");

    // `middle` traps after adding (failure = "open": the request goes on):
    // what it added is dropped, `first`'s stays.
    let r = gw.request(Method::GET, "/", &[("x-probe-trap", "1")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "x-added"), ["first"]);

    // `gate` answers itself: its response gets nothing added.
    let r = gw.request(Method::GET, "/", &[("x-probe-respond", "1")], "").await;
    assert_eq!(r.status, 418);
    assert!(all(&r, "x-added").is_empty());

    // Only the plugins that asked for a phase are called in it: `first` and
    // `gate` ran `on_request` three times and nothing else, though `middle`
    // takes the response phase (`middle`: 2 requests, 2 responses, 1 trap).
    let metrics = gw.metrics().await;
    for line in [
        r#"weir_plugin_calls_total{plugin="first",outcome="ok"} 3"#,
        r#"weir_plugin_calls_total{plugin="gate",outcome="ok"} 2"#,
        r#"weir_plugin_calls_total{plugin="gate",outcome="respond"} 1"#,
        r#"weir_plugin_calls_total{plugin="middle",outcome="ok"} 4"#,
        r#"weir_plugin_calls_total{plugin="middle",outcome="trap"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_edits() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}",
        probe("rewrite", "rewrite_uri = \"/v2/items?limit=5\", set_method = \"PUT\", remove_header = \"x-secret\""),
        probe("status", "response_status = 203"),
        route(&["rewrite", "status"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let r = gw.request(Method::GET, "/v1/items", &[("x-secret", "s3cr3t"), ("x-kept", "k")], "").await;
    assert_eq!(r.status, 203);
    let seen = r.json();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/v2/items?limit=5");
    assert_eq!(seen["headers"]["x-secret"], serde_json::Value::Null);
    assert_eq!(seen["headers"]["x-kept"][0], "k");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_module_backs_several_instances() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        r#"
[plugins.greet]
module = "add_header.wasm"
config = {{ name = "x-greeting", value = "hello" }}
[plugins.served]
module = "add_header.wasm"
config = {{ name = "x-served-by", value = "weir", to = "response" }}
{}"#,
        route(&["greet", "served"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["add_header.wasm"]).await;
    let r = gw.get("/").await;
    assert_eq!(r.seen("x-greeting").as_deref(), Some("hello"));
    assert_eq!(r.header("x-served-by"), Some("weir"));
    let status = gw.status().await;
    let shas: Vec<_> = status["plugins"].as_array().expect("plugins").iter().map(|p| p["sha256"].clone()).collect();
    assert_eq!(shas.len(), 2);
    assert_eq!(shas[0], shas[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_phases() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}",
        probe("body", "upper_body = true, body_suffix = \"-done\""),
        route(&["body"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let r = gw.request(Method::POST, "/echo", &[], "hello body").await;
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("-done"), "response body phase ran: {}", r.text());
    let echoed: serde_json::Value =
        serde_json::from_str(r.text().trim_end_matches("-done")).expect("upstream JSON before the suffix");
    assert_eq!(echoed["body"], "HELLO BODY");
    assert_eq!(echoed["headers"]["content-length"][0], "10");
    // The body phase edited the request head (contract 0.2.4).
    assert_eq!(echoed["headers"]["x-body-bytes"][0], "10");
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));

    // HEAD and 204 have no body: the body phase is skipped and framing kept.
    let head = gw.request(Method::HEAD, "/echo", &[], "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_ne!(head.header("content-length"), Some("5"), "not the length of the suffix alone");
    let nc = gw.request(Method::GET, "/echo", &[("x-status", "204")], "").await;
    assert_eq!(nc.status, 204);
    assert!(nc.body.is_empty());

    // Over the buffer limit (1 MiB by default): 413, never forwarded.
    let hits = up.hits();
    let big = "x".repeat(2 << 20);
    assert_eq!(gw.request(Method::POST, "/echo", &[], &big).await.status, 413);
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_state_is_shared_across_instances_and_isolation_modes() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}[plugins.fresh]\nmodule = \"probe.wasm\"\nconfig = {{ count = true }}\nisolation = \"request\"\n{}",
        probe("pooled", "count = true"),
        "[upstreams.up]\ntargets = [\"UP\"]\n[[routes]]\nname = \"p\"\npath_prefix = \"/p\"\nupstream = \"up\"\nchain = [\"pooled\"]\n[[routes]]\nname = \"f\"\npath_prefix = \"/f\"\nupstream = \"up\"\nchain = [\"fresh\"]\n"
            .replace("UP", &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    // Concurrent requests force several pooled instances; the count in host
    // state still goes 1..=N without gaps or repeats.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = gw.client.clone();
        let url = format!("{}/p", gw.url);
        tasks.push(tokio::spawn(async move { c.get(&url).await.expect("request").seen("x-count") }));
    }
    let mut counts: Vec<u64> = Vec::new();
    for t in tasks {
        counts.push(t.await.expect("task").expect("x-count").parse().expect("number"));
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=20).collect::<Vec<_>>());

    for i in 1..=3 {
        assert_eq!(gw.get("/f").await.seen("x-count"), Some(i.to_string()), "fresh instances share host state too");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="pooled",name="probe_requests"} 20"#), "{metrics}");
    // isolation = "request": one instance at load plus one per request (its
    // request and response phases share it).
    assert!(metrics.contains(r#"weir_plugin_instances_created_total{plugin="fresh"} 4"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_local_values_follow_their_request_and_chain_position() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}",
        probe("a", "tag = \"a\", local = true"),
        probe("b", "tag = \"b\", local = true"),
        route(&["a", "b"], &up.addr.to_string())
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    // Many requests at once, so pooled instances serve interleaved requests:
    // each response must carry its own request's value, at both positions,
    // and no request may see a value left by another.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (client, url) = (gw.client.clone(), format!("{}/item/{i}", gw.url));
            tokio::spawn(async move { (i, client.get(&url).await.expect("request")) })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.text());
        let path = format!("/item/{i}");
        assert_eq!(r.header("x-local-a"), Some(path.as_str()));
        assert_eq!(r.header("x-local-b"), Some(path.as_str()));
        assert_eq!(r.seen("x-local-before-a"), None, "a value leaked into request {i}");
        assert_eq!(r.seen("x-local-before-b"), None, "a value leaked into request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_an_older_contract_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    let old = weir_tests::workspace_root().join("tests/fixtures/add_header-wit-0.1.0.wasm");
    std::fs::copy(&old, dir.path().join("plugins/old.wasm")).expect("copy the 0.1.0 fixture");
    let cfg = format!(
        "{}[plugins.old]\nmodule = \"old.wasm\"\nconfig = {{ name = \"x-old\", value = \"v\" }}\n",
        weir_tests::server_section()
    );
    std::fs::write(dir.path().join("gateway.toml"), cfg).expect("write config");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("a 0.1 plugin must be refused by a 0.2 host");
    };
    let err = err.to_string();
    assert!(
        err.contains("gateway.toml:") && err.contains("plugin `old`") && err.contains("weir:plugin@0.1.0"),
        "{err}"
    );
    assert!(err.contains("rebuild it with the matching weir-plugin-sdk"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_an_earlier_release_of_the_series_still_loads() {
    // `add_header.wasm` built against `weir:plugin@0.2.0`, before 0.2.1
    // added `request.tls`: wasmtime links its imports to the host's 0.2.1.
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "[plugins.old]\nmodule = \"old.wasm\"\nconfig = {{ name = \"x-old\", value = \"v\" }}\n{}",
        route(&["old"], &up.addr.to_string())
    );
    TestGateway::prepare(dir.path(), "", &cfg, &[]);
    let old = weir_tests::workspace_root().join("tests/fixtures/add_header-wit-0.2.0.wasm");
    std::fs::copy(&old, dir.path().join("plugins/old.wasm")).expect("copy the 0.2.0 fixture");
    let gw = TestGateway::start_in(dir).await;
    assert_eq!(gw.get("/").await.seen("x-old").as_deref(), Some("v"));
}

/// `chain-data`: auth publishes the consumer it verified, a rate limiter
/// keys on it, a later plugin reads it; another plugin cannot publish into
/// auth's namespace, and nothing of it is sent upstream as a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_publish_values_for_the_rest_of_the_chain() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "[plugins.auth]\nmodule = \"auth.wasm\"\n[plugins.auth.config]\n\
         [plugins.auth.config.api_keys]\nconsumer_header = \"x-consumer\"\n\
         keys = [{{ name = \"ann\", key = \"k-ann-0123456789\" }}, {{ name = \"bob\", key = \"k-bob-0123456789\" }}]\n\n\
         [plugins.limit]\nmodule = \"rate_limit.wasm\"\n\
         config = {{ key = \"data:auth.x-consumer\", missing = \"deny\", headers = false, limits = [{{ requests = 2, window = \"1h\" }}] }}\n\n\
         {}{}{}",
        probe("spoof", "publish = \"x-consumer=mallory\""),
        probe("reader", "read = [\"auth.x-consumer\", \"spoof.x-consumer\", \"auth.nothing\"]"),
        route(&["auth", "spoof", "limit", "reader"], &up.addr.to_string()),
    );
    let gw = TestGateway::start(&cfg, &["auth.wasm", "rate_limit.wasm", "probe.wasm"]).await;
    let get = |key: &'static str| {
        let gw = &gw;
        async move { gw.request(Method::GET, "/x", &[("x-api-key", key)], "").await }
    };

    let r = get("k-ann-0123456789").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-chain-data").as_deref(), Some("ann,mallory,-"), "each namespace is its publisher's");
    assert_eq!(r.seen("x-consumer").as_deref(), Some("ann"), "the header auth forwards is unchanged");
    assert_eq!(get("k-ann-0123456789").await.status, 200);
    assert_eq!(get("k-ann-0123456789").await.status, 429, "ann's budget, keyed on what auth published");
    assert_eq!(get("k-bob-0123456789").await.status, 200, "bob's own budget: `spoof` did not change the key");
    // A request auth refuses publishes nothing, and gets no further.
    assert_eq!(get("wrong").await.status, 401);
}

/// The metric-name rule is the SDK's (`is_metric_name`, the one place the
/// book states it): the gateway keeps exactly the plugin metrics whose
/// names pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_exactly_the_metric_names_the_sdk_rule_allows() {
    let up = Upstream::start("up").await;
    let long = "m".repeat(65);
    let names =
        ["ok_name", "cache.hits_2", "a", &"n".repeat(64), "Bad", "bad-name", "9lives", "_x", long.as_str(), "sp ace"];
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let cfg =
        format!("{}{}", probe("m", &format!("metrics = [{}]", list.join(", "))), route(&["m"], &up.addr.to_string()));
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    assert_eq!(gw.get("/").await.status, 200);
    let metrics = gw.metrics().await;
    let mut allowed = 0;
    for name in names {
        let line = format!(r#"weir_plugin_custom_total{{plugin="m",name="{name}"}} 1"#);
        let kept = metrics.contains(&line);
        assert_eq!(kept, weir_plugin_sdk::is_metric_name(name), "{name:?}: kept by the gateway {kept}\n{metrics}");
        allowed += usize::from(kept);
    }
    assert_eq!(allowed, 4, "four of the names pass the rule");
}
