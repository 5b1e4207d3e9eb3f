//! `anomaly` plugin through the real gateway: a scanner and a normal client
//! at the same time, each action, the detection event on a real webhook,
//! and (on a real Redis) the state one-shot clients leave behind.
//!
//! Both clients come from 127.0.0.1, so the plugin keys them by `x-api-key`.
//! The echo upstream answers the status asked for in `x-status`: that is how
//! the scanner gets its 404s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use weir_tests::{RedisServer, Reply, TestGateway, Upstream, WebhookServer, wait_for};

/// The scanner is acted on by its 20th request (`min_requests`, default):
/// from then on its distinct-path ratio is 1 and its error ratio 0.9, a
/// score of 7.6 against the threshold of 6. Two more allow for a window
/// boundary falling inside the burst (the sliding estimate carries the
/// previous window at slightly less than full weight).
const SCANNER_BOUND: usize = 22;

/// `[events]` (optional), the plugin with `action` (defaults otherwise, as
/// a realistic API would run it), and one route to `upstream`.
fn gateway_config(action: &str, upstream: &Upstream, events: &str) -> String {
    format!(
        r#"{events}
[plugins.anomaly]
module = "anomaly.wasm"

[plugins.anomaly.config]
key = "header:x-api-key"
action = "{action}"
window = "10s"
cooldown = "1m"

[upstreams.api]
targets = ["{}"]

[[routes]]
name = "api"
upstream = "api"
chain = ["anomaly"]
"#,
        upstream.addr
    )
}

/// A scanner's request `i`: a new path each time, 9 in 10 answered 404,
/// at about 40 requests per second (40 paths in 1 s, faster than the brief's
/// "40 paths in 5 s" scanner, slow enough to interleave with the normal client).
async fn scan(gw: &TestGateway, key: &str, i: usize) -> Reply {
    tokio::time::sleep(Duration::from_millis(25)).await;
    let status = if i.is_multiple_of(10) { "200" } else { "404" };
    gw.request(Method::GET, &format!("/scan/{i}/wp-login.php"), &[("x-api-key", key), ("x-status", status)], "").await
}

/// Scan until the plugin answers instead of the upstream; the 1-based index
/// of that request, or `None` within `max` requests.
async fn scan_until_answered(gw: &TestGateway, key: &str, expected: StatusCode, max: usize) -> Option<(usize, Reply)> {
    for i in 1..=max {
        let r = scan(gw, key, i).await;
        if r.status == expected {
            return Some((i, r));
        }
        assert!(r.header("x-upstream").is_some(), "request {i} of {key} should reach the upstream: {r:?}");
    }
    None
}

/// A normal API client in the background: ~10 requests/s over 4 paths, one
/// in 20 answered 500, until stopped. Returns every status it got, and the
/// flag header the upstream saw (if any).
fn normal_client(
    gw: &TestGateway,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(StatusCode, Option<String>)>> {
    let client = gw.client.clone();
    let base = gw.url.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let status = if i.is_multiple_of(20) { "500" } else { "200" };
            let url = format!("{base}/api/items/{}", i % 4);
            // It also tries to flag (or clear) itself; the plugin strips that.
            let headers = [("x-api-key", "normal-client"), ("x-status", status), ("x-weir-anomaly", "score=0.0")];
            let r = client.request(Method::GET, &url, &headers, "").await.expect("normal request");
            let flag = if r.header("x-upstream").is_some() { r.seen("x-weir-anomaly") } else { None };
            seen.push((r.status, flag));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// The normal client got only its upstream's answers, and the flag header
/// it sent itself never reached the upstream, whatever the action: an
/// upstream may trust that header.
fn assert_normal_untouched(seen: &[(StatusCode, Option<String>)]) {
    assert!(seen.len() >= 10, "the normal client ran alongside: {} requests", seen.len());
    for (i, (status, flag)) in seen.iter().enumerate() {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::INTERNAL_SERVER_ERROR,
            "normal request {i} got {status} (only the upstream's 200/500 expected)"
        );
        assert_eq!(flag, &None, "normal request {i}: its own flag header reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_is_throttled_within_bound_while_a_normal_client_never_is() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&gateway_config("throttle", &up, ""), &["anomaly.wasm"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(&gw, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (first, r) = scan_until_answered(&gw, "scanner-key", StatusCode::TOO_MANY_REQUESTS, 60)
        .await
        .expect("the scanner is throttled");
    assert!(first <= SCANNER_BOUND, "throttled only at request {first}");
    let retry: u64 = r.header("retry-after").expect("retry-after").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(r.json()["retry_after"], retry);

    // Everything after that is throttled too, and never reaches the upstream
    // (the normal client's requests still do).
    for i in first + 1..=first + 30 {
        assert_eq!(scan(&gw, "scanner-key", i).await.status, 429, "scanner request {i}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = normal.await.expect("normal client");
    assert_normal_untouched(&seen);
    assert_eq!(up.hits(), first - 1 + seen.len(), "only unthrottled requests reach the upstream");

    // One event for the whole episode, however many instances served it.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"weir_plugin_events_total{plugin="anomaly",kind="anomaly.detected",severity="warning"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="anomaly",name="events"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="anomaly",name="throttled"} 31"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_mode_marks_the_scanner_upstream_and_only_it() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&gateway_config("flag", &up, ""), &["anomaly.wasm"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let normal = normal_client(&gw, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut first_flagged = None;
    for i in 1..=40 {
        let r = scan(&gw, "scanner-key", i).await;
        assert!(r.header("x-upstream").is_some(), "flag mode lets request {i} through");
        match (r.seen("x-weir-anomaly"), first_flagged) {
            (Some(flag), _) => {
                let score: f64 = flag.strip_prefix("score=").expect("score=N").parse().expect("a number");
                assert!(score >= 6.0, "flagged with score {score}");
                first_flagged.get_or_insert(i);
            }
            (None, Some(at)) => panic!("request {i} not flagged although {at} was"),
            (None, None) => {}
        }
    }
    let first = first_flagged.expect("the scanner is flagged");
    assert!(first <= SCANNER_BOUND, "flagged only at request {first}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    assert_normal_untouched(&normal.await.expect("normal client"));
    let metrics = gw.metrics().await;
    let flagged = 40 - first + 1;
    assert!(
        metrics.contains(&format!(r#"weir_plugin_custom_total{{plugin="anomaly",name="flagged"}} {flagged}"#)),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_mode_asks_the_scanner_to_authenticate_again() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&gateway_config("challenge", &up, ""), &["anomaly.wasm"]).await;
    let (first, r) =
        scan_until_answered(&gw, "scanner-key", StatusCode::UNAUTHORIZED, 40).await.expect("the scanner is challenged");
    assert!(first <= SCANNER_BOUND, "challenged only at request {first}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="re-authentication required""#)
    );
    assert_eq!(r.json()["error"], "re-authentication required");
    // Another key from the same address is another client.
    let other = gw.request(Method::GET, "/api/items/1", &[("x-api-key", "someone-else")], "").await;
    assert_eq!(other.status, 200);
}

// ---- the event, on a real webhook -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detection_event_reaches_the_webhook_once() {
    let hook = WebhookServer::start().await;
    let up = Upstream::start("api").await;
    let events = format!("[events]\nwebhook = \"{}\"\n", hook.url);
    let gw = TestGateway::start(&gateway_config("throttle", &up, &events), &["anomaly.wasm"]).await;

    let (first, _) = scan_until_answered(&gw, "scanner-key", StatusCode::TOO_MANY_REQUESTS, 40)
        .await
        .expect("the scanner is throttled");
    for i in first + 1..=first + 10 {
        assert_eq!(scan(&gw, "scanner-key", i).await.status, 429);
    }

    let posted = wait_for(Duration::from_secs(5), || async {
        let r = hook.received();
        (!r.is_empty()).then_some(r)
    })
    .await
    .expect("the event was POSTed to the webhook");
    let e = &posted[0];
    assert_eq!(e["kind"], "anomaly.detected", "{e}");
    assert_eq!(e["severity"], "warning", "{e}");
    assert_eq!(e["plugin"], "anomaly", "{e}");
    assert!(e["time_ms"].as_u64().is_some_and(|t| t > 0), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("throttle for 1m")), "{e}");
    let a = &e["attributes"];
    assert_eq!(a["action"], "throttle", "{e}");
    assert_eq!(a["route"], "api", "{e}");
    assert_eq!(a["key"], "header:x-api-key", "{e}");
    let requests: f64 = a["requests"].as_str().and_then(|r| r.parse().ok()).expect("requests");
    assert!((20.0..=first as f64).contains(&requests), "requests {requests}, scanner caught at {first}: {e}");
    let client = a["client"].as_str().expect("client");
    assert!(client.len() == 32 && client.chars().all(|c| c.is_ascii_hexdigit()), "hashed client: {client}");
    assert!(!e.to_string().contains("scanner-key"), "the API key must not leak: {e}");

    // The later throttled requests do not post again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received().len(), 1, "{:?}", hook.received());
}

// ---- state, on a real Redis ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_clients_leave_no_baseline_behind() {
    let redis = RedisServer::start();
    let prefix = format!("anomaly{}:", std::process::id());
    let up = Upstream::start("api").await;
    // Hour-long windows: the few requests below fall in one window.
    let cfg = format!(
        r#"[state]
backend = "redis"
url = "{url}"
key_prefix = "{prefix}"
timeout = "2s"

[plugins.anomaly]
module = "anomaly.wasm"

[plugins.anomaly.config]
key = "header:x-api-key"
window = "1h"
baseline_ttl = "2h"
min_requests = 5

[upstreams.api]
targets = ["{up}"]

[[routes]]
name = "api"
upstream = "api"
chain = ["anomaly"]
"#,
        url = redis.url(),
        up = up.addr,
    );
    let gw = TestGateway::start(&cfg, &["anomaly.wasm"]).await;
    let keys = |kind: &str| redis.command(&["KEYS", &format!("{prefix}anomaly:{kind}:*")]);

    // A scanner rotating identities: 40 clients of one request each.
    for i in 0..40 {
        let key = format!("one-shot-{i}");
        let r = gw.request(Method::GET, &format!("/scan/{i}"), &[("x-api-key", &key), ("x-status", "404")], "").await;
        assert_eq!(r.status, 404, "{r:?}");
    }
    assert_eq!(keys("c").as_deref(), Some("*40"), "one window counter per client");
    assert_eq!(keys("b").as_deref(), Some("*0"), "no baseline record for one-shot clients");

    // A client making min_requests requests in its window is remembered.
    for i in 0..5 {
        let r = gw.request(Method::GET, &format!("/api/items/{}", i % 2), &[("x-api-key", "regular")], "").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(keys("b").as_deref(), Some("*1"), "the regular client has a baseline record");
    assert_eq!(keys("c").as_deref(), Some("*41"));
}
