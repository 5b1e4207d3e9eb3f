//! Plugins' outbound calls (contract 0.2.3, `outbound`) through the real
//! gateway: `probe.wasm` calls real upstream servers named in its
//! `outbound` list, alone and several at once, and meets every refusal and
//! limit: a name not in its list, no list at all, a call's timeout, the
//! answer body cap, the calls-per-phase cap, a dead upstream. A name that
//! is not configured is a load error naming the line.

use std::time::{Duration, Instant};

use weir_tests::{TestGateway, Upstream};

/// `[plugins.NAME]` running probe.wasm with `callout` (and extra keys).
fn caller(name: &str, callout: &[&str], extra: &str) -> String {
    let list: Vec<String> = callout.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        "[plugins.{name}]\nmodule = \"probe.wasm\"\n{extra}\n\
         [plugins.{name}.config]\ncallout = [{}]\n\n",
        list.join(", ")
    )
}

fn route(name: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"main\"\nchain = [\"{name}\"]\n\n")
}

/// The outcomes `probe` put in `x-callout`, as the main upstream saw them.
fn outcomes(reply: &weir_tests::Reply) -> Vec<String> {
    let seen = reply.seen("x-callout").unwrap_or_else(|| panic!("no x-callout: {}", reply.text()));
    seen.split(" ;; ").map(str::to_owned).collect()
}

/// An answer `STATUS:BODY` whose body is the echo upstream's JSON.
fn echoed(outcome: &str) -> (u16, serde_json::Value) {
    let (status, body) = outcome.split_once(':').unwrap_or_else(|| panic!("not an answer: {outcome}"));
    (status.parse().expect("status"), serde_json::from_str(body).expect("echo JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_call_the_upstreams_their_outbound_list_names_and_nothing_else() {
    let main = Upstream::start("main").await;
    let idp = Upstream::start("idp").await;
    let authz = Upstream::start("authz").await;
    let slow = Upstream::start("slow").await;
    slow.delay_ms.store(2_000, std::sync::atomic::Ordering::SeqCst);
    let dead = weir_tests::free_port();
    let mut cfg = format!(
        "[upstreams.main]\ntargets = [\"{}\"]\n[upstreams.idp]\ntargets = [\"{}\"]\n\
         [upstreams.authz]\ntargets = [\"{}\"]\n[upstreams.slow]\ntargets = [\"{}\"]\n\
         [upstreams.dead]\ntargets = [\"127.0.0.1:{dead}\"]\n\n",
        main.addr, idp.addr, authz.addr, slow.addr
    );
    let deadline = "limits = { deadline = \"5s\" }";
    let plugins = [
        ("one", vec!["idp /keys?kid=7"], format!("outbound = [\"idp\"]\n{deadline}")),
        ("both", vec!["idp /a", "authz /b"], format!("outbound = [\"idp\", \"authz\"]\n{deadline}")),
        ("sneaky", vec!["authz /x"], format!("outbound = [\"idp\"]\n{deadline}")),
        ("unlisted", vec!["idp /"], deadline.to_owned()),
        ("timeout", vec!["slow /"], format!("outbound = [\"slow\"]\n{deadline}")),
        (
            "big",
            vec!["idp /"],
            "outbound = [\"idp\"]\nlimits = { deadline = \"5s\", outbound_body = \"100B\" }".to_owned(),
        ),
        (
            "many",
            vec!["idp /1", "idp /2", "idp /3"],
            "outbound = [\"idp\"]\nlimits = { deadline = \"5s\", outbound_calls = 2 }".to_owned(),
        ),
        ("down", vec!["dead /"], format!("outbound = [\"dead\"]\n{deadline}")),
    ];
    for (name, calls, extra) in &plugins {
        cfg.push_str(&caller(name, calls, extra));
    }
    cfg = cfg.replace("[plugins.timeout.config]\n", "[plugins.timeout.config]\ncallout_timeout_ms = 200\n");
    for (name, ..) in &plugins {
        cfg.push_str(&route(name));
    }
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;

    // One call: the path and query, the plugin's header, the upstream's
    // own Host; the answer comes back whole.
    let reply = gw.request(http::Method::GET, "/one", &[("x-probe-token", "t-1")], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = outcomes(&reply);
    let (status, seen) = echoed(&got[0]);
    assert_eq!(status, 200);
    assert_eq!(seen["upstream"], "idp");
    assert_eq!(seen["uri"], "/keys?kid=7");
    assert_eq!(seen["headers"]["x-probe-token"][0], "t-1");
    assert_eq!(seen["headers"]["host"][0], idp.addr.to_string());

    // Two upstreams at once: both answer, in order, in the time of one.
    idp.delay_ms.store(400, std::sync::atomic::Ordering::SeqCst);
    authz.delay_ms.store(400, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let reply = gw.get("/both").await;
    let took = started.elapsed();
    idp.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    authz.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let got = outcomes(&reply);
    assert_eq!(
        (echoed(&got[0]).1["upstream"].clone(), echoed(&got[1]).1["upstream"].clone()),
        ("idp".into(), "authz".into())
    );
    assert!(took < Duration::from_millis(750), "two 400 ms calls took {took:?}: not in parallel");

    // Refusals and limits are errors the plugin sees and handles.
    assert_eq!(outcomes(&gw.get("/sneaky").await), ["not_allowed"]);
    assert_eq!(outcomes(&gw.get("/unlisted").await), ["not_allowed"]);
    let started = Instant::now();
    assert_eq!(outcomes(&gw.get("/timeout").await), ["timeout"]);
    assert!(started.elapsed() < Duration::from_millis(1500), "the call's 200 ms timeout held");
    assert_eq!(outcomes(&gw.get("/big").await), ["limit"]);
    let many = outcomes(&gw.get("/many").await);
    assert_eq!((many[0].starts_with("200:"), many[1].starts_with("200:"), many[2].as_str()), (true, true, "limit"));
    assert_eq!(outcomes(&gw.get("/down").await), ["unavailable"]);
    assert_eq!(authz.hits(), 1, "only `both` reached authz: `sneaky` was stopped in the gateway");

    // Counted per plugin, upstream and outcome; refused names are not labels.
    let metrics = gw.metrics().await;
    for line in [
        "weir_plugin_outbound_calls_total{plugin=\"one\",upstream=\"idp\",outcome=\"answered\"} 1",
        "weir_plugin_outbound_calls_total{plugin=\"sneaky\",upstream=\"-\",outcome=\"not_allowed\"} 1",
        "weir_plugin_outbound_calls_total{plugin=\"timeout\",upstream=\"slow\",outcome=\"timeout\"} 1",
        "weir_plugin_outbound_calls_total{plugin=\"big\",upstream=\"idp\",outcome=\"limit\"} 1",
        "weir_plugin_outbound_calls_total{plugin=\"many\",upstream=\"idp\",outcome=\"limit\"} 1",
        "weir_plugin_outbound_calls_total{plugin=\"down\",upstream=\"dead\",outcome=\"unavailable\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    assert!(metrics.contains("weir_plugin_outbound_duration_seconds_count{plugin=\"both\",upstream=\"authz\"} 1"));
    // And in the admin API (what the dashboard shows).
    let plugins = gw.client.get(&format!("{}/admin/plugins", gw.admin)).await.expect("admin").json();
    let timeout =
        plugins["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == "timeout").expect("plugin");
    let calls = &timeout["outbound"]["calls"];
    assert_eq!(
        (calls[0]["upstream"].as_str(), calls[0]["outcome"].as_str(), calls[0]["calls"].as_u64()),
        (Some("slow"), Some("timeout"), Some(1)),
        "{timeout}"
    );
    assert!(calls[0]["mean_ms"].as_f64().is_some_and(|ms| ms >= 150.0), "{timeout}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_upstream_that_is_not_configured_is_a_load_error() {
    let main = Upstream::start("main").await;
    let cfg = format!(
        "[upstreams.main]\ntargets = [\"{}\"]\n\n{}{}",
        main.addr,
        caller("p", &["idp /"], "outbound = [\"idp\"]"),
        route("p")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(dir.path(), "", &cfg, &["probe.wasm"]);
    let err = match weir::Gateway::load(dir.path().join("gateway.toml")).await {
        Ok(_) => panic!("loaded with an unknown outbound upstream"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("plugin `p`: outbound upstream `idp` is not configured in [upstreams]"), "{err}");
    assert!(err.contains("gateway.toml:"), "names the file and line: {err}");
}

/// An outbound call joins the request's trace: the upstream it reaches
/// gets a `traceparent` in the same trace, whose parent is a client span
/// `outbound NAME` under the plugin's span; the access log's plugin
/// outcome lists the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_are_child_spans_and_in_the_access_log() {
    let main = Upstream::start("main").await;
    let idp = Upstream::start("idp").await;
    let collector = weir_tests::WebhookServer::start().await;
    let cfg = format!(
        "[tracing]\notlp_endpoint = \"{}\"\ninterval = \"100ms\"\n\n[access_log]\ntarget = \"access.log\"\n\n\
         [upstreams.main]\ntargets = [\"{}\"]\n[upstreams.idp]\ntargets = [\"{}\"]\n\n{}{}",
        collector.url,
        main.addr,
        idp.addr,
        caller("one", &["idp /keys"], "outbound = [\"idp\"]\nlimits = { deadline = \"5s\" }"),
        route("one"),
    );
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let reply = gw.request(http::Method::GET, "/one", &[("traceparent", incoming.as_str())], "").await;
    assert_eq!(reply.status, 200);
    let (_, seen) = echoed(&outcomes(&reply)[0]);
    let sent = seen["headers"]["traceparent"][0].as_str().expect("traceparent on the outbound call").to_owned();
    assert!(sent.starts_with(&format!("00-{trace}-")) && sent.ends_with("-01"), "{sent}");
    let call_span = sent.split('-').nth(2).expect("span id").to_owned();

    let spans = weir_tests::wait_for(Duration::from_secs(10), || async {
        let all: Vec<serde_json::Value> = collector
            .received()
            .iter()
            .flat_map(|doc| doc["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["traceId"] == trace)
            .collect();
        all.iter().any(|s| s["name"] == "outbound idp").then_some(all)
    })
    .await
    .expect("the outbound span reaches the collector");
    let call = spans.iter().find(|s| s["name"] == "outbound idp").expect("outbound span");
    let plugin = spans.iter().find(|s| s["name"] == "plugin one request").expect("plugin span");
    assert_eq!(call["kind"], 3, "a client span");
    assert_eq!(call["spanId"], call_span.as_str(), "the idp's parent is the outbound span");
    assert_eq!(call["parentSpanId"], plugin["spanId"], "under the plugin's span");

    let log = gw.dir.path().join("access.log");
    let line = weir_tests::wait_for(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("one:ok"))
    })
    .await
    .expect("an access log line");
    assert!(line.contains("one:ok(idp=200)"), "{line}");
}
