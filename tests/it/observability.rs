//! Observability: the access log, W3C trace context and the per-route and
//! per-upstream metrics, checked after known traffic.

use std::path::Path;
use std::time::Duration;

use http::Method;
use weir_tests::{TestGateway, Upstream, WebhookServer, wait_for};

fn config(upstream: &str, access_log: &str) -> String {
    format!(
        "{access_log}\n[plugins.tag]\nmodule = \"probe.wasm\"\nconfig = {{ tag = \"t\" }}\n\
         [upstreams.up]\ntargets = [\"{upstream}\"]\n\
         [upstreams.down]\ntargets = [\"127.0.0.1:9\"]\nretry = {{ tries = 1 }}\n\
         [[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nupstream = \"down\"\n\
         [[routes]]\nname = \"obs\"\npath_prefix = \"/obs\"\nupstream = \"up\"\nchain = [\"tag\"]\n"
    )
}

/// The access log's lines once there are at least `n`.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_for(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {n} lines in {}: {:?}", path.display(), std::fs::read_to_string(path)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_carry_every_field_and_follow_reloads() {
    let up = Upstream::start("up").await;
    let cfg = config(&up.addr.to_string(), "[access_log]\ntarget = \"access.log\"\n");
    let gw = TestGateway::start(&cfg, &["probe.wasm"]).await;
    let log = gw.dir.path().join("access.log");

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = format!("00-{trace}-b7ad6b7169203331-01");
    let get = gw.request(Method::GET, "/obs/item?token=secret", &[("traceparent", &parent)], "").await;
    assert_eq!(get.status, 200);
    let post = gw.request(Method::POST, "/obs/new", &[], "hello").await;
    assert_eq!(post.status, 200);
    let missing = gw.get("/nowhere").await;
    assert_eq!(missing.status, 404);

    let lines = lines(&log, 3).await;
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    let docs: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let find = |path: &str| docs.iter().find(|d| d["path"] == path).unwrap_or_else(|| panic!("{path}: {docs:#?}"));

    let g = find("/obs/item");
    assert_eq!(g["method"], "GET");
    assert_eq!(g["status"], 200);
    assert_eq!(g["route"], "obs");
    assert_eq!(g["upstream"], "up");
    assert_eq!(g["target"], up.addr.to_string());
    assert_eq!(g["trace_id"], trace, "the client's trace continues");
    assert_eq!(g["request_id"].as_str(), get.header("x-request-id"));
    assert_eq!(g["plugins"], "tag:ok tag:ok", "request and response phase");
    assert_eq!(g["bytes_in"], 0);
    assert_eq!(g["bytes_out"], get.body.len());
    assert_eq!(g["completed"], true);
    assert_eq!(g["version"], "HTTP/1.1");
    assert!(g["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{g}");
    assert!(g["time"].as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{g}");
    let (head, total, upstream) =
        (g["head_ms"].as_f64().expect("head_ms"), g["total_ms"].as_f64().expect("total"), g["upstream_ms"].as_f64());
    assert!(head > 0.0 && total >= head, "{g}");
    assert!(upstream.is_some_and(|u| u > 0.0 && u <= head), "{g}");
    assert!(!lines.iter().any(|l| l.contains("secret")), "the query is left out by default");

    let p = find("/obs/new");
    assert_eq!(p["bytes_in"], 5);
    assert_eq!(p["method"], "POST");
    assert_eq!(p["trace_id"].as_str().map(str::len), Some(32), "a trace is started when none came");
    assert_ne!(p["trace_id"], trace);

    let m = find("/nowhere");
    assert_eq!(m["status"], 404);
    assert_eq!(m["route"], "");
    assert_eq!(m["target"], "");
    assert_eq!(m["upstream_ms"], serde_json::Value::Null);

    // A reload switches to logfmt and logs only errors (sample = 0: 5xx are
    // always logged).
    let cfg =
        config(&up.addr.to_string(), "[access_log]\ntarget = \"access.log\"\nformat = \"logfmt\"\nsample = 0.0\n");
    gw.write_config(&cfg);
    gw.wait_generation(2).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/obs/quiet").await.status, 200);
    }
    assert_eq!(gw.get("/down").await.status, 502);
    let lines = self::lines(&log, 4).await;
    assert_eq!(lines.len(), 4, "only the 502 was added: {lines:#?}");
    let last = &lines[3];
    assert!(last.starts_with("time="), "{last}");
    for field in [" route=down ", " upstream=down ", " status=502 ", " path=/down ", " completed=true"] {
        assert!(last.contains(field), "{field:?} in {last}");
    }

    // Turned off: nothing more is written.
    let cfg = config(&up.addr.to_string(), "[access_log]\nenabled = false\ntarget = \"access.log\"\n");
    gw.write_config(&cfg);
    gw.wait_generation(3).await;
    assert_eq!(gw.get("/down").await.status, 502);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(std::fs::read_to_string(&log).expect("log").lines().count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_access_log_config_is_rejected_naming_the_key() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr.to_string(), ""), &["probe.wasm"]).await;
    gw.write_config(&config(&up.addr.to_string(), "[access_log]\nsample = 2.0\n"));
    let err = gw.wait_reload_error().await;
    assert!(err.contains("gateway.toml") && err.contains("sample"), "{err}");
    gw.write_config(&config(&up.addr.to_string(), "[access_log]\nformat = \"xml\"\n"));
    let err = wait_for(Duration::from_secs(10), || async {
        let e = gw.status().await["last_reload_error"].as_str().map(str::to_owned)?;
        e.contains("xml").then_some(e)
    })
    .await
    .expect("a reload error about the unknown format");
    assert!(err.contains("logfmt"), "says what is accepted: {err}");
    assert!(err.contains("gateway.toml:"), "names file and line: {err}");
    assert_eq!(gw.get("/obs").await.status, 200, "the last good snapshot serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started_at_the_upstream() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr.to_string(), ""), &["probe.wasm"]).await;

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.request(Method::GET, "/obs", &[("traceparent", incoming), ("tracestate", "vendor=abc")], "").await;
    let sent = r.seen("traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"));
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway's hop has its own span id");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(r.seen("tracestate").as_deref(), Some("vendor=abc"), "tracestate travels untouched");

    for absent_or_bad in [None, Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), Some("junk")] {
        let headers: Vec<(&str, &str)> = absent_or_bad.map(|v| ("traceparent", v)).into_iter().collect();
        let r = gw.request(Method::GET, "/obs", &headers, "").await;
        let sent = r.seen("traceparent").expect("traceparent upstream");
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(parts[0], "00");
        assert!(parts[1].len() == 32 && parts[1].bytes().any(|b| b != b'0'), "a valid new trace id: {sent}");
        assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{sent}");
    }
}

/// The value of one sample line, e.g. `weir_route_bytes_in_total{route="obs"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A histogram's cumulative buckets `(le, count)` for one label set.
fn buckets(metrics: &str, name: &str, labels: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            if !set.contains(labels) {
                return None;
            }
            let le = set.split(',').find_map(|kv| kv.strip_prefix("le=\""))?.trim_end_matches('"');
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_upstream_metrics_after_known_traffic() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr.to_string(), ""), &["probe.wasm"]).await;

    let mut out = 0;
    for i in 0..7 {
        let r = gw.request(Method::POST, "/obs/x", &[], &"b".repeat(i * 10)).await;
        assert_eq!(r.status, 200);
        out += r.body.len();
    }
    let r = gw.request(Method::GET, "/obs/x", &[("x-status", "503")], "").await;
    assert_eq!(r.status, 503);
    out += r.body.len();
    for _ in 0..2 {
        assert_eq!(gw.get("/down").await.status, 502);
    }

    let m = gw.metrics().await;
    let get = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(get(r#"weir_requests_total{route="obs",status="2xx"}"#), 7.0);
    assert_eq!(get(r#"weir_requests_total{route="obs",status="5xx"}"#), 1.0);
    assert_eq!(get(r#"weir_requests_total{route="down",status="5xx"}"#), 2.0);
    assert_eq!(get(r#"weir_route_bytes_in_total{route="obs"}"#), (0..7).map(|i| i * 10).sum::<usize>() as f64);
    assert_eq!(get(r#"weir_route_bytes_out_total{route="obs"}"#), out as f64);
    assert_eq!(get(r#"weir_route_in_flight{route="obs"}"#), 0.0, "every request has left");
    assert_eq!(get(r#"weir_upstream_duration_seconds_count{upstream="up"}"#), 8.0);
    assert!(get(r#"weir_upstream_duration_seconds_sum{upstream="up"}"#) > 0.0);
    assert_eq!(get(r#"weir_request_duration_seconds_count{route="obs"}"#), 8.0);
    // Loopback answers well within a second: the buckets up to 1 s hold
    // them all, the first (50 µs) not all of them.
    let buckets = buckets(&m, "weir_upstream_duration_seconds_bucket", r#"upstream="up""#);
    assert!(buckets.len() > 10, "{buckets:?}");
    let under_1s = buckets.iter().filter(|(le, _)| *le <= 1.0).map(|(_, n)| *n).fold(0.0, f64::max);
    assert_eq!(under_1s, 8.0, "{buckets:?}");
    assert!(buckets[0].1 < 8.0, "{buckets:?}");
    assert!(get("weir_connections_open") >= 1.0, "this client's connection is open");
    // Per target: what each answered, and tries that got no answer.
    let target = up.addr.to_string();
    let t = |status: &str| {
        format!(r#"weir_upstream_target_responses_total{{upstream="up",target="{target}",status="{status}"}}"#)
    };
    assert_eq!(get(&t("2xx")), 7.0);
    assert_eq!(get(&t("5xx")), 1.0);
    assert_eq!(get(r#"weir_upstream_target_failures_total{upstream="down",target="127.0.0.1:9"}"#), 2.0);
    let ups = gw.client.get(&format!("{}/admin/upstreams", gw.admin)).await.expect("admin upstreams").json();
    let down = ups["upstreams"].as_array().expect("list").iter().find(|u| u["name"] == "down").expect("down");
    assert_eq!(down["targets"][0]["address"], "127.0.0.1:9");
    assert_eq!(down["targets"][0]["failures"], 2);
    assert_eq!(down["errors"]["connect"], 2);
    let upj = ups["upstreams"].as_array().expect("list").iter().find(|u| u["name"] == "up").expect("up");
    assert_eq!(upj["targets"][0]["responses"]["2xx"], 7);
    assert_eq!(upj["last_minute"]["requests"].as_u64().map(|n| n <= 8), Some(true), "{upj}");
    assert!(get(r#"weir_plugin_pool_idle{plugin="tag"}"#) >= 1.0, "the instance went back to the pool");
    assert!(get(r#"weir_plugin_memory_peak_bytes{plugin="tag"}"#) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_a_slow_request_until_it_is_answered() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr.to_string(), ""), &["probe.wasm"]).await;
    let (client, url) = (gw.client.clone(), format!("{}/obs/slow", gw.url));
    let slow = tokio::spawn(async move { client.request(Method::GET, &url, &[("x-delay-ms", "600")], "").await });
    let seen = wait_for(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        (sample(&m, r#"weir_route_in_flight{route="obs"}"#) == Some(1.0)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the slow request shows as in flight");
    assert_eq!(slow.await.expect("task").expect("reply").status, 200);
    let m = gw.metrics().await;
    assert_eq!(sample(&m, r#"weir_route_in_flight{route="obs"}"#), Some(0.0), "{m}");
}

/// Every span the collector received, flattened.
fn spans(collector: &WebhookServer) -> Vec<serde_json::Value> {
    collector
        .received()
        .iter()
        .flat_map(|doc| {
            assert_eq!(doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "edge");
            doc["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default()
        })
        .collect()
}

fn attr<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_with_the_right_parents() {
    let up = Upstream::start("up").await;
    let collector = WebhookServer::start().await;
    let tracing =
        format!("[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"edge\"\ninterval = \"100ms\"\n", collector.url);
    let gw = TestGateway::start(&config(&up.addr.to_string(), &tracing), &["probe.wasm"]).await;

    // A sampled client trace: server span under the client's span, plugin
    // and upstream spans under the server span, and the upstream sees the
    // upstream span as its parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = gw.request(Method::GET, "/obs/item", &[("traceparent", &incoming)], "").await;
    assert_eq!(r.status, 200);
    let seen = r.seen("traceparent").expect("traceparent upstream");
    let upstream_parent = seen.split('-').nth(2).expect("parent id").to_owned();

    let mine = wait_for(Duration::from_secs(10), || async {
        let s: Vec<_> = spans(&collector).into_iter().filter(|s| s["traceId"] == trace).collect();
        (s.len() >= 4).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("the spans of the request reach the collector: {:#?}", collector.received()));
    assert_eq!(mine.len(), 4, "server, two plugin phases, one upstream try: {mine:#?}");
    let server = mine.iter().find(|s| s["kind"] == 2).expect("a server span");
    assert_eq!(server["name"], "GET obs");
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7", "the client's span is the parent");
    assert_eq!(attr(server, "http.route").and_then(|v| v["stringValue"].as_str()), Some("obs"));
    assert_eq!(attr(server, "http.response.status_code").and_then(|v| v["intValue"].as_str()), Some("200"));
    assert_eq!(attr(server, "weir.request_id").and_then(|v| v["stringValue"].as_str()), r.header("x-request-id"));
    let server_id = server["spanId"].as_str().expect("span id");
    let upstream = mine.iter().find(|s| s["kind"] == 3).expect("a client span");
    assert_eq!(upstream["name"], "upstream up");
    assert_eq!(upstream["parentSpanId"], server_id);
    assert_eq!(upstream["spanId"], upstream_parent.as_str(), "the upstream's parent is the upstream try span");
    assert_eq!(
        attr(upstream, "server.address").and_then(|v| v["stringValue"].as_str()),
        Some(up.addr.to_string().as_str())
    );
    let plugins: Vec<_> = mine.iter().filter(|s| s["kind"] == 1).collect();
    assert_eq!(
        plugins.iter().map(|s| s["name"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        ["plugin tag request", "plugin tag response"]
    );
    assert!(plugins.iter().all(|s| s["parentSpanId"] == server_id));
    for s in &mine {
        let (start, end) =
            (s["startTimeUnixNano"].as_str().expect("start"), s["endTimeUnixNano"].as_str().expect("end"));
        let (start, end): (u64, u64) = (start.parse().expect("ns"), end.parse().expect("ns"));
        assert!(end >= start && start > 1_700_000_000_000_000_000, "{s}");
    }

    // A failing upstream try is an error span; not sampled means not
    // exported (and the flag is passed on as it came).
    assert_eq!(gw.get("/down").await.status, 502);
    let quiet = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = gw.request(Method::GET, "/obs/x", &[("traceparent", &format!("00-{quiet}-00f067aa0ba902b7-00"))], "").await;
    assert!(r.seen("traceparent").is_some_and(|t| t.starts_with(&format!("00-{quiet}-")) && t.ends_with("-00")));
    let failed = wait_for(Duration::from_secs(10), || async {
        spans(&collector).into_iter().find(|s| s["kind"] == 3 && s["name"] == "upstream down")
    })
    .await
    .expect("the failed try's span");
    assert_eq!(failed["status"]["code"], 2, "{failed}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(spans(&collector).iter().all(|s| s["traceId"] != quiet), "an unsampled trace is not exported");
    let m = gw.metrics().await;
    assert!(sample(&m, r#"weir_trace_spans_total{result="exported"}"#).is_some_and(|n| n >= 6.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tracing_section_is_rejected_naming_the_line() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up.addr.to_string(), ""), &["probe.wasm"]).await;
    gw.write_config(&config(&up.addr.to_string(), "[tracing]\notlp_endpoint = \"grpc://collector:4317\"\n"));
    let err = gw.wait_reload_error().await;
    assert!(err.contains("gateway.toml:") && err.contains("otlp_endpoint"), "{err}");
    assert_eq!(gw.get("/obs").await.status, 200, "the last good snapshot serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_the_admin_api_but_not_probes_or_the_page() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start_with_server(
        "admin_token = \"s3cret-token\"",
        &format!("[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr),
    )
    .await;
    let admin = |path: &str| format!("{}{path}", gw.admin);
    for path in ["/metrics", "/admin/status", "/admin/routes", "/admin/plugins", "/admin/series", "/admin/events"] {
        let r = gw.client.get(&admin(path)).await.expect("admin");
        assert_eq!(r.status, 401, "{path} needs the token");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{path}");
        let wrong = gw.client.request(Method::GET, &admin(path), &[("authorization", "Bearer s3cret-tokeX")], "").await;
        assert_eq!(wrong.expect("admin").status, 401, "{path} with a wrong token");
        let right = gw.client.request(Method::GET, &admin(path), &[("authorization", "Bearer s3cret-token")], "").await;
        assert_eq!(right.expect("admin").status, 200, "{path} with the token");
    }
    let reload = gw.client.request(Method::POST, &admin("/admin/reload"), &[], "").await.expect("reload");
    assert_eq!(reload.status, 401, "a reload needs the token too");
    let reload = gw
        .client
        .request(Method::POST, &admin("/admin/reload"), &[("authorization", "Bearer s3cret-token")], "")
        .await
        .expect("reload");
    assert_eq!(reload.json()["generation"], 2);
    for open in ["/healthz", "/readyz", "/dashboard"] {
        assert_eq!(gw.client.get(&admin(open)).await.expect("open").status, 200, "{open} stays open");
    }
    assert_eq!(gw.get("/").await.status, 200, "the proxy itself is not affected");
}
