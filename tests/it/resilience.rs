//! Upstream resilience: load balancing, health checks, breaker, retries,
//! backups, the stale cache and discovery, against real upstream servers
//! that the tests kill, slow down and revive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use weir_tests::{Load, TestGateway, Upstream, wait_for, write_atomic};

/// The one route most tests send everything through, to upstream `svc`.
const SVC_ROUTE: &str = "[[routes]]\nname = \"svc\"\npath_prefix = \"/\"\nupstream = \"svc\"\n";

fn targets(ups: &[&Upstream]) -> String {
    ups.iter().map(|u| format!("\"{}\"", u.addr)).collect::<Vec<_>>().join(", ")
}

async fn admin_upstream(gw: &TestGateway, name: &str) -> serde_json::Value {
    let all = gw.client.get(&format!("{}/admin/upstreams", gw.admin)).await.expect("admin").json();
    all["upstreams"].as_array().expect("upstreams").iter().find(|u| u["name"] == name).cloned().expect("upstream")
}

async fn target_healthy(gw: &TestGateway, upstream: &str, addr: &str) -> Option<bool> {
    let u = admin_upstream(gw, upstream).await;
    u["targets"].as_array()?.iter().find(|t| t["address"] == addr)?["healthy"].as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_targets_under_load_fails_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut c = Upstream::start("c").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = [{}]
retry = {{ tries = 3, on = ["connect", "reset", "timeout"], backoff = "5ms", min_concurrent = 10 }}
outlier = {{ consecutive_failures = 3, base_ejection = "30s" }}
health = {{ path = "/healthz", interval = "200ms", timeout = "100ms", unhealthy_threshold = 2 }}

{SVC_ROUTE}"#,
            targets(&[&a, &b, &c])
        ),
        &[],
    )
    .await;
    // Eight clients: at most eight requests are in flight when c dies, and
    // `min_concurrent = 10` lets the budget retry all of them (with the
    // default 3, a fourth simultaneous retry would be refused: that is the
    // budget at work, tested below).
    let load = Load::start(format!("{}/work", gw.url), 8);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = load.share();
    assert!(before.get("c").copied().unwrap_or(0) > 10, "c took traffic before: {before:?}");

    let killed = Instant::now();
    c.kill();
    let c_addr = c.addr.to_string();
    let detected = wait_for(Duration::from_secs(5), || async {
        (target_healthy(&gw, "svc", &c_addr).await == Some(false)).then(|| killed.elapsed())
    })
    .await
    .expect("the dead target is taken out");
    load.share();
    let c_failures = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("weir_upstream_target_failures_total") && l.contains(&c_addr))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Tries already on their way to c when it was taken out may still fail
    // after that (a request sent on a pooled connection just before the
    // kill): count from when those have ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tries_then = c_failures(&gw.metrics().await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tries_later = c_failures(&gw.metrics().await);
    let after = load.share();
    let (ok, failed) = load.stop().await;
    eprintln!(
        "kill one of three: detected in {detected:?}; {ok} requests ok, {failed} failed; \
         tries to the dead target after detection: {}; share after: {after:?}",
        tries_later - tries_then
    );
    assert_eq!(failed, 0, "retries cover every request in flight when the target died");
    assert_eq!(tries_later, tries_then, "no try reaches the dead target once it is out");
    assert!(!after.contains_key("c"));
    let (a_n, b_n) = (after.get("a").copied().unwrap_or(0), after.get("b").copied().unwrap_or(0));
    assert!(a_n > 10 && b_n > 10 && a_n.abs_diff(b_n) * 5 < a_n + b_n, "the survivors share evenly: {after:?}");
    assert!(detected < Duration::from_secs(2), "detected in {detected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_over_when_every_primary_is_down_and_health_checks_bring_primaries_back() {
    let mut p1 = Upstream::start("p1").await;
    let mut p2 = Upstream::start("p2").await;
    let backup = Upstream::start("backup").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = [{}]
backup = [{}]
retry = {{ tries = 3, on = ["connect", "reset"] }}
health = {{ path = "/healthz", interval = "100ms", timeout = "100ms", unhealthy_threshold = 1, healthy_threshold = 2 }}

{SVC_ROUTE}"#,
            targets(&[&p1, &p2]),
            targets(&[&backup])
        ),
        &[],
    )
    .await;
    for _ in 0..10 {
        let r = gw.get("/x").await;
        assert_eq!(r.status, 200);
        assert_ne!(r.header("x-upstream"), Some("backup"), "backups idle while primaries are healthy");
    }
    assert_eq!(backup.hits(), 0);

    p1.kill();
    p2.kill();
    // Even before the checks notice, a failed connect moves on: first to
    // the other primary, then to the backup. (A pooled connection to a
    // killed primary can also fail mid-request: `reset` retries those GETs.)
    let mut failed = 0;
    for _ in 0..20 {
        let r = gw.get("/x").await;
        if r.status != 200 {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed, 0);
    let r = gw.get("/x").await;
    assert_eq!(r.header("x-upstream"), Some("backup"));
    assert!(backup.hits() >= 20);

    p1.revive().await;
    let back = wait_for(Duration::from_secs(5), || async {
        (gw.get("/x").await.header("x-upstream") == Some("p1")).then_some(())
    })
    .await;
    assert!(back.is_some(), "a revived primary passes its checks and takes traffic again");
    let hits = backup.hits();
    for _ in 0..10 {
        assert_eq!(gw.get("/x").await.header("x-upstream"), Some("p1"));
    }
    assert_eq!(backup.hits(), hits, "backups idle again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_outage_serves_stale_then_opens_the_breaker_and_recovers() {
    let mut up = Upstream::start("svc").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["{}"]
breaker = {{ error_rate = 0.5, min_requests = 5, open_for = "1s", probes = 2 }}

[[routes]]
name = "svc"
path_prefix = "/"
upstream = "svc"
cache = {{ stale_if_error = "1m" }}
"#,
            up.addr
        ),
        &[],
    )
    .await;
    // No freshness given: stored for stale fallback only, so every request
    // still goes upstream while it is up.
    let r = gw.get("/catalog").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    let r = gw.get("/catalog").await;
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    assert_eq!(up.hits(), 2);

    up.kill();
    let r = gw.get("/catalog").await;
    assert_eq!(r.status, 200, "the last good answer stands in");
    assert_eq!(r.header("x-weir-stale"), Some("true"));
    assert_eq!(r.header("x-weir-cache"), Some("stale"));
    assert!(r.header("age").is_some());
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    assert_eq!(r.json()["upstream"], "svc");

    // Uncached paths fail until the breaker opens, then fail fast.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(gw.get(&format!("/never-seen/{i}")).await.status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 502 || *s == 503), "{statuses:?}");
    let t = Instant::now();
    let r = gw.get("/never-seen/x").await;
    let fast = t.elapsed();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("circuit breaker open"), "{}", r.text());
    assert!(fast < Duration::from_millis(100), "an open breaker answers at once ({fast:?})");
    assert_eq!(admin_upstream(&gw, "svc").await["breaker"]["state"], "open");
    assert!(gw.metrics().await.contains("weir_upstream_breaker_state{upstream=\"svc\"} 1"));
    // Cached paths are still served stale while the breaker is open.
    assert_eq!(gw.get("/catalog").await.header("x-weir-stale"), Some("true"));

    up.revive().await;
    let closed = wait_for(Duration::from_secs(5), || async {
        let r = gw.get("/fresh").await;
        (r.status == 200 && admin_upstream(&gw, "svc").await["breaker"]["state"] == "closed").then_some(())
    })
    .await;
    assert!(closed.is_some(), "half-open probes succeed and the breaker closes");
    let r = gw.get("/catalog").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-weir-stale"), None);
    assert!(gw.metrics().await.contains("weir_upstream_breaker_opened_total{upstream=\"svc\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification_in_a_total_outage() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["{}"]
retry = {{ tries = 5, statuses = [503], backoff = "10ms", max_backoff = "20ms", budget = 0.2, min_concurrent = 1 }}
outlier = {{ enabled = false }}

{SVC_ROUTE}"#,
            up.addr
        ),
        &[],
    )
    .await;
    // Every answer is a 503: without a budget each request would be tried 5 times.
    let requests = 200;
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, sent) = (gw.url.clone(), sent.clone());
            tokio::spawn(async move {
                let client = weir_tests::Client::new();
                while sent.fetch_add(1, Ordering::Relaxed) < requests {
                    let r = client.request(Method::GET, &format!("{url}/down"), &[("x-status", "503")], "").await;
                    assert_eq!(r.expect("answer").status, 503);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
    let attempts = up.hits();
    let ratio = attempts as f64 / requests as f64;
    let metrics = gw.metrics().await;
    eprintln!("total outage: {requests} requests, {attempts} upstream attempts ({ratio:.2}x; 5x without a budget)");
    assert!(ratio < 2.0, "{attempts} attempts for {requests} requests");
    assert!(attempts > requests, "some retries were allowed");
    assert!(metrics.contains("weir_upstream_retries_total{upstream=\"svc\",kind=\"budget_exhausted\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_avoids_a_slow_target() {
    let fast = Upstream::start("fast").await;
    let slow = Upstream::start("slow").await;
    slow.delay_ms.store(200, Ordering::SeqCst);
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = [{}]
balance = "least_outstanding"

{SVC_ROUTE}"#,
            targets(&[&fast, &slow])
        ),
        &[],
    )
    .await;
    let load = Load::start(format!("{}/x", gw.url), 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share = load.share();
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let (f, s) = (share.get("fast").copied().unwrap_or(0), share.get("slow").copied().unwrap_or(0));
    eprintln!("least outstanding: fast {f}, slow (200 ms) {s}");
    assert!(s * 10 < f + s, "the slow target got {s} of {}", f + s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = [{{ address = "{}", weight = 3 }}, "{}"]

{SVC_ROUTE}"#,
            a.addr, b.addr
        ),
        &[],
    )
    .await;
    for _ in 0..40 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_a_client_on_one_target_and_moves_few_keys() {
    let ups = [
        Upstream::start("t0").await,
        Upstream::start("t1").await,
        Upstream::start("t2").await,
        Upstream::start("t3").await,
    ];
    let config = |ups: &[&Upstream]| {
        format!(
            r#"
[upstreams.svc]
targets = [{}]
balance = "hash"
hash_on = "header:x-user"

{SVC_ROUTE}"#,
            targets(ups)
        )
    };
    let gw = TestGateway::start(&config(&ups.iter().collect::<Vec<_>>()), &[]).await;
    let users = 200;
    async fn who(gw: &TestGateway, u: usize) -> String {
        let user = format!("user-{u}");
        let r = gw.request(Method::GET, "/", &[("x-user", &user)], "").await;
        r.header("x-upstream").expect("x-upstream").to_owned()
    }
    let mut first = Vec::new();
    for u in 0..users {
        let t = who(&gw, u).await;
        assert_eq!(who(&gw, u).await, t, "the same key goes to the same target");
        first.push(t);
    }
    // Remove t3 with a reload.
    gw.write_config(&config(&ups[..3].iter().collect::<Vec<_>>()));
    gw.wait_generation(2).await;
    let mut moved = 0;
    for (u, before) in first.iter().enumerate() {
        let after = who(&gw, u).await;
        if after != *before {
            assert_eq!(before, "t3", "only the removed target's keys move");
            moved += 1;
        }
    }
    let on_t3 = first.iter().filter(|t| *t == "t3").count();
    eprintln!("consistent hash: {moved} of {users} keys moved when 1 of 4 targets went ({on_t3} were on it)");
    assert_eq!(moved, on_t3);
    assert!(moved * 100 / users <= 40, "{moved} of {users} moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_file_drives_targets_without_a_reload() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins");
    let file = dir.path().join("svc-targets.json");
    std::fs::write(&file, format!(r#"{{ "targets": ["{}"] }}"#, a.addr)).expect("write");
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "{}{}",
            weir_tests::server_section(),
            r#"
[upstreams.svc]
targets_file = "svc-targets.json"

[[routes]]
name = "svc"
path_prefix = "/"
upstream = "svc"
"#
        ),
    )
    .expect("config");
    let gw = TestGateway::start_in(dir).await;
    assert_eq!(gw.get("/").await.header("x-upstream"), Some("a"));

    write_atomic(&file, format!(r#"{{ "targets": [{{ "address": "{}", "weight": 2 }}] }}"#, b.addr).as_bytes());
    let moved = wait_for(Duration::from_secs(5), || async {
        (gw.get("/").await.header("x-upstream") == Some("b")).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the new targets take over");
    assert_eq!(gw.status().await["generation"], 1, "no config reload was needed");

    // A broken file is refused and the last good targets stay.
    write_atomic(&file, b"{ \"targets\": [ \"not a target");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/").await.header("x-upstream"), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_are_resolved_into_targets() {
    let up = Upstream::start("named").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["localhost:{}"]
dns_family = "ipv4"
dns_refresh = "1s"

{SVC_ROUTE}"#,
            up.addr.port()
        ),
        &[],
    )
    .await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("named"));
    let u = admin_upstream(&gw, "svc").await;
    assert_eq!(u["targets"][0]["address"], format!("127.0.0.1:{}", up.addr.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_honours_cache_control_vary_and_coalesces_misses() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["{}"]

[[routes]]
name = "svc"
path_prefix = "/"
upstream = "svc"
cache = {{ max_size = "1MiB" }}
"#,
            up.addr
        ),
        &[],
    )
    .await;
    let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let gw = &gw;
        async move { gw.request(Method::GET, path, &headers, "").await }
    };
    let cc = ("x-response-cache-control", "max-age=60");
    let r = get("/fresh", vec![cc]).await;
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    let r = get("/fresh", vec![cc]).await;
    assert_eq!(r.header("x-weir-cache"), Some("hit"));
    assert_eq!(r.header("age"), Some("0"));
    assert_eq!(r.json()["uri"], "/fresh");
    assert_eq!(up.hits(), 1);

    // no-store and private are never kept.
    for v in ["no-store", "private, max-age=60"] {
        let path = if v == "no-store" { "/no-store" } else { "/private" };
        get(path, vec![("x-response-cache-control", v)]).await;
        assert_eq!(get(path, vec![("x-response-cache-control", v)]).await.header("x-weir-cache"), Some("miss"));
    }
    // The client can ask to skip the cache.
    let hits = up.hits();
    let r = get("/fresh", vec![cc, ("cache-control", "no-cache")]).await;
    assert_eq!(r.header("x-weir-cache"), Some("miss"));
    assert_eq!(up.hits(), hits + 1);
    // Other methods pass by.
    let r = gw.request(Method::POST, "/fresh", &[], "x").await;
    assert_eq!(r.header("x-weir-cache"), None);

    // Concurrent misses on one key: one upstream request.
    up.delay_ms.store(300, Ordering::SeqCst);
    let hits = up.hits();
    let all = futures::future::join_all((0..10).map(|_| get("/slow", vec![cc]))).await;
    assert!(all.iter().all(|r| r.status == 200));
    assert_eq!(up.hits(), hits + 1, "ten concurrent misses, one fetch");
    up.delay_ms.store(0, Ordering::SeqCst);
    let m = gw.metrics().await;
    assert!(m.contains("weir_cache_requests_total{route=\"svc\",status=\"hit\"}"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_cap_refuses_overflow_at_once() {
    let up = Upstream::start("svc").await;
    up.delay_ms.store(500, Ordering::SeqCst);
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["{}"]
breaker = {{ max_requests = 2, max_pending = 0 }}

{SVC_ROUTE}"#,
            up.addr
        ),
        &[],
    )
    .await;
    let t = Instant::now();
    let all = futures::future::join_all((0..5).map(|_| gw.get("/"))).await;
    let mut statuses: Vec<u16> = all.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503]);
    assert!(all.iter().any(|r| r.text().contains("at capacity")));
    assert!(t.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_settings_are_refused_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins");
    let body = r#"
[upstreams.svc]
targets = ["127.0.0.1:1"]
hash_on = "header:x-user"

[upstreams.other]
targets = ["127.0.0.1:1"]
targets_file = "t.json"

[[routes]]
name = "svc"
path_prefix = "/"
upstream = "svc"
"#;
    std::fs::write(dir.path().join("gateway.toml"), format!("{}{body}", weir_tests::server_section())).expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("a bad upstream must be refused")
    };
    let err = err.to_string();
    assert!(err.contains("gateway.toml:12: upstream `svc`: `hash_on` needs `balance = \"hash\"`"), "{err}");
    assert!(err.contains("gateway.toml:16: upstream `other`: `targets_file` replaces"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_makes_requests_share_connections() {
    let up = Upstream::start("svc").await;
    up.delay_ms.store(300, Ordering::SeqCst);
    let gw = TestGateway::start(
        &format!(
            r#"
[upstreams.svc]
targets = ["{}"]
connect_timeout = "3s"
breaker = {{ max_connections = 1 }}

{SVC_ROUTE}"#,
            up.addr
        ),
        &[],
    )
    .await;
    let t = Instant::now();
    let all = futures::future::join_all((0..3).map(|_| gw.get("/"))).await;
    assert!(all.iter().all(|r| r.status == 200), "{:?}", all.iter().map(|r| r.status).collect::<Vec<_>>());
    // One connection: the three 300 ms answers come one after another.
    assert!(t.elapsed() >= Duration::from_millis(850), "{:?}", t.elapsed());
}
