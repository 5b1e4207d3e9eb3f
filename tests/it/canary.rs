//! Canary plugin versions through the real gateway: a canary that traps is
//! rolled back within its window with no failed request beyond those it
//! trapped on; a healthy one takes its share, keeps a client's version, and
//! is promoted and aborted live; a reload that changes it starts afresh.
//!
//! The two versions are `quota` (traps on a value that is not a number) and
//! `quota_fixed` (answers such a value with 400), with the same config.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use http::Method;
use weir_tests::{TestGateway, Upstream, wait_for};

/// A route through plugin `quota`: `stable` module, `canary` settings.
fn config(up: &Upstream, stable: &str, failure: &str, canary: &str) -> String {
    format!(
        "[upstreams.backend]\ntargets = [\"{}\"]\n\n\
         [plugins.quota]\nmodule = \"{stable}\"\nfailure = \"{failure}\"\ncrash_loop = {{ after = 0 }}\n\
         config = {{ header = \"x-quota\" }}\ncanary = {canary}\n\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"backend\"\nchain = [\"quota\"]\n",
        up.addr
    )
}

/// `count` requests, 16 at a time; request `i` carries `x-quota:
/// quota(i)` and `x-user: user(i)`. The statuses, in request order.
async fn send(
    gw: &TestGateway,
    count: usize,
    quota: impl Fn(usize) -> String,
    user: impl Fn(usize) -> String,
) -> Vec<u16> {
    let requests = (0..count).map(|i| {
        let (q, u) = (quota(i), user(i));
        let url = format!("{}/orders/{i}", gw.url);
        let client = gw.client.clone();
        async move {
            let r = client.request(Method::GET, &url, &[("x-quota", &q), ("x-user", &u)], "").await;
            (i, r.map(|r| r.status.as_u16()).unwrap_or(0))
        }
    });
    let mut out: Vec<(usize, u16)> = futures::stream::iter(requests).buffer_unordered(16).collect().await;
    out.sort_unstable();
    out.into_iter().map(|(_, s)| s).collect()
}

fn tally(statuses: &[u16]) -> HashMap<u16, usize> {
    statuses.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(*s).or_default() += 1;
        m
    })
}

async fn plugin(gw: &TestGateway) -> serde_json::Value {
    let doc = gw.client.get(&format!("{}/admin/plugins", gw.admin)).await.expect("plugins").json();
    doc["plugins"][0].clone()
}

async fn post(gw: &TestGateway, path: &str) -> (u16, serde_json::Value) {
    let r = gw.client.request(Method::POST, &format!("{}{path}", gw.admin), &[], "").await.expect("admin post");
    (r.status.as_u16(), r.json())
}

/// Run the trapping canary with `failure`; returns (requests sent before
/// the rollback was seen, failed requests, canary traps).
async fn trapping_canary(failure: &str) -> (usize, usize, u64) {
    let up = Upstream::start("backend").await;
    let canary = "{ module = \"quota.wasm\", percent = 50, sticky = \"request\", \
                  rollback = { max_error_rate = 0.05, min_requests = 40, window = \"1m\" } }";
    let gw = TestGateway::start(&config(&up, "quota_fixed.wasm", failure, canary), &["quota.wasm", "quota_fixed.wasm"])
        .await;
    assert_eq!(plugin(&gw).await["canary"]["state"], "comparing");

    // One request in five carries what the canary traps on, in batches
    // until it is rolled back.
    let quota = |i: usize| if i.is_multiple_of(5) { "lots".to_owned() } else { "5".to_owned() };
    let (mut sent, mut failed) = (0, 0);
    let doc = loop {
        let statuses = send(&gw, 50, quota, |_| "u".into()).await;
        sent += statuses.len();
        failed += statuses.iter().filter(|s| **s >= 500 || **s == 0).count();
        let doc = plugin(&gw).await;
        if doc["canary"]["state"] == "rolled_back" {
            break doc;
        }
        assert!(sent < 2_000, "not rolled back after {sent} requests: {doc}");
    };
    let c = &doc["canary"];
    let reason = c["reason"].as_str().expect("reason");
    assert!(reason.starts_with("error rate"), "{reason}");
    assert!(c["window"]["canary"]["calls"].as_u64().expect("calls") >= 40, "{c}");
    let traps = c["calls"]["trap"].as_u64().expect("traps");
    assert!(traps > 0, "{c}");

    // Rolled back: the canary is called no more, and its bad input now
    // gets the stable version's 400.
    let statuses = send(&gw, 100, quota, |_| "u".into()).await;
    let t = tally(&statuses);
    assert_eq!((t.get(&400), t.get(&200)), (Some(&20), Some(&80)), "{t:?}");
    let after = plugin(&gw).await;
    assert_eq!(after["canary"]["calls"], c["calls"], "no canary call after the rollback");

    // The event, and the metrics.
    let events = gw.client.get(&format!("{}/admin/events", gw.admin)).await.expect("events").json();
    let event = events["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == "canary.rolled_back"))
        .unwrap_or_else(|| panic!("no rollback event: {events}"));
    assert_eq!(event["plugin"], "quota");
    assert_eq!(event["severity"], "critical");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("weir_plugin_canary_rollbacks_total{plugin=\"quota\"} 1"), "{metrics}");
    assert!(metrics.contains("weir_plugin_canary_state{plugin=\"quota\"} 1"), "{metrics}");
    assert!(metrics.contains("plugin=\"quota@canary\""), "the canary's calls are counted apart");
    gw.shutdown().await;
    (sent, failed, traps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_canary_is_rolled_back_and_with_failure_open_no_request_fails() {
    let (sent, failed, traps) = trapping_canary("open").await;
    println!("failure = open: rolled back after {sent} requests ({traps} canary traps), {failed} failed requests");
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_canary_fails_only_the_requests_it_trapped_on() {
    let (sent, failed, traps) = trapping_canary("closed").await;
    println!("failure = closed: rolled back after {sent} requests, {failed} failed requests, {traps} canary traps");
    assert_eq!(failed as u64, traps, "each failed request is one the canary trapped on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_takes_its_share_and_is_promoted_and_aborted_live() {
    let up = Upstream::start("backend").await;
    // The fix rolled out as a canary: on a value that is not a number the
    // stable version traps (skipped: 200), the canary answers 400.
    let canary = |percent: u32, sticky: &str| {
        format!(
            "{{ module = \"quota_fixed.wasm\", percent = {percent}, sticky = \"{sticky}\", \
             rollback = {{ max_error_rate = 0.02, min_requests = 50 }} }}"
        )
    };
    let gw = TestGateway::start(
        &config(&up, "quota.wasm", "open", &canary(30, "request")),
        &["quota.wasm", "quota_fixed.wasm"],
    )
    .await;

    // Its share, over 2,000 requests, within 3 points; nothing fails.
    let statuses = send(&gw, 2_000, |_| "lots".into(), |_| "u".into()).await;
    let t = tally(&statuses);
    let on_canary = t.get(&400).copied().unwrap_or(0);
    assert_eq!(on_canary + t.get(&200).copied().unwrap_or(0), 2_000, "{t:?}");
    let share = on_canary as f64 / 20.0;
    println!("canary share over 2000 requests: {share:.1}% (configured 30%)");
    assert!((27.0..=33.0).contains(&share), "{share}% on the canary");
    let doc = plugin(&gw).await;
    assert_eq!(doc["canary"]["state"], "comparing", "a better canary stays: {doc}");
    assert_eq!(doc["canary"]["calls"]["respond"].as_u64(), Some(on_canary as u64));

    // Promoted live: every request runs it.
    assert_eq!(
        post(&gw, "/admin/plugins/quota/promote").await,
        (200, serde_json::json!({"plugin": "quota", "state": "promoted"}))
    );
    let t = tally(&send(&gw, 100, |_| "lots".into(), |_| "u".into()).await);
    assert_eq!(t.get(&400), Some(&100), "{t:?}");
    let (status, body) = post(&gw, "/admin/plugins/quota/promote").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(post(&gw, "/admin/plugins/nope/promote").await.0, 404);
    assert_eq!(post(&gw, "/admin/plugins/quota/frobnicate").await.0, 404);

    // Aborted: none does.
    assert_eq!(post(&gw, "/admin/plugins/quota/abort").await.1["state"], "aborted");
    let t = tally(&send(&gw, 100, |_| "lots".into(), |_| "u".into()).await);
    assert_eq!(t.get(&200), Some(&100), "{t:?}");

    // A reload that leaves the canary as it was keeps the verdict...
    let generation = gw.status().await["generation"].as_u64().expect("generation");
    gw.write_config(&format!("# touched\n{}", config(&up, "quota.wasm", "open", &canary(30, "request"))));
    gw.wait_generation(generation + 1).await;
    assert_eq!(plugin(&gw).await["canary"]["state"], "aborted");

    // ...and one that changes it starts a new comparison: by user now, so
    // each user keeps one version.
    gw.write_config(&config(&up, "quota.wasm", "open", &canary(50, "header:x-user")));
    gw.wait_generation(generation + 2).await;
    let doc = plugin(&gw).await;
    assert_eq!(doc["canary"]["state"], "comparing", "{doc}");
    assert_eq!(doc["canary"]["sticky"], "header:x-user");
    let statuses = send(&gw, 300, |_| "lots".into(), |i| format!("user-{}", i % 100)).await;
    let mut by_user: HashMap<usize, Vec<u16>> = HashMap::new();
    for (i, s) in statuses.iter().enumerate() {
        by_user.entry(i % 100).or_default().push(*s);
    }
    assert!(by_user.values().all(|v| v.iter().all(|s| *s == v[0])), "a user moved between versions: {by_user:?}");
    let users_on_canary = by_user.values().filter(|v| v[0] == 400).count();
    assert!((30..=70).contains(&users_on_canary), "{users_on_canary} of 100 users on the canary");

    // The dashboard's series has the canary's own row.
    let series = wait_for(Duration::from_secs(5), || async {
        let s = gw.client.get(&format!("{}/admin/series", gw.admin)).await.ok()?.json();
        s["plugins"].get("quota@canary").is_some().then_some(s)
    })
    .await;
    assert!(series.is_some(), "no quota@canary series");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_settings_are_refused_with_the_plugin_named() {
    let up = Upstream::start("backend").await;
    let gw = TestGateway::start(
        &config(&up, "quota.wasm", "open", "{ module = \"quota_fixed.wasm\", percent = 10 }"),
        &["quota.wasm", "quota_fixed.wasm"],
    )
    .await;
    let generation = gw.status().await["generation"].as_u64().expect("generation");
    for (canary, expected) in [
        ("{ module = \"quota_fixed.wasm\", percent = 150 }", "canary: percent must be 0 to 100"),
        ("{ module = \"missing.wasm\", percent = 10 }", "missing.wasm"),
        ("{ module = \"../x.wasm\", percent = 10 }", "must be a file name in plugins_dir"),
        ("{ module = \"quota_fixed.wasm\", percent = 10, sticky = \"cookie\" }", "not one of client, request"),
        ("{ module = \"quota_fixed.wasm\", percent = 10, sha256 = \"00\" }", "but the config pins 00"),
        (
            "{ module = \"quota_fixed.wasm\", percent = 10, rollback = { window = \"5h\" } }",
            "rollback.window must be 1s to 1h",
        ),
    ] {
        gw.write_config(&config(&up, "quota.wasm", "open", canary));
        let error = wait_for(Duration::from_secs(10), || async {
            let e = gw.status().await["last_reload_error"].as_str()?.to_owned();
            e.contains(expected).then_some(e)
        })
        .await
        .unwrap_or_else(|| panic!("{canary}: no reload error with {expected:?}"));
        // The file and line, and the plugin where the gateway (not the
        // parser) refused it.
        assert!(error.contains("gateway.toml:"), "{canary}: {error}");
        assert!(error.contains("plugin `quota`") || error.contains("sticky = "), "{canary}: {error}");
        // The last good snapshot serves on.
        assert_eq!(gw.status().await["generation"].as_u64(), Some(generation));
        assert_eq!(gw.request(Method::GET, "/x", &[("x-quota", "5")], "").await.status, 200);
    }
    gw.shutdown().await;
}
