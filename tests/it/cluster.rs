//! Shared state across gateway nodes: the Redis backend against a real
//! `redis-server`, held to the same semantics as the in-process backend,
//! its behaviour while Redis is away, and several `weir` processes sharing
//! one rate limit.

use std::time::{Duration, Instant};

use weir_config::{StateBackend, StateConfig};
use weir_plugin_host::state::{StateError, StateStore};
use weir_tests::RedisServer;

fn redis_store(url: &str, prefix: &str) -> StateStore {
    let cfg = StateConfig {
        backend: StateBackend::Redis,
        url: Some(url.to_owned()),
        key_prefix: prefix.to_owned(),
        // Generous: the CI machine is a busy 2-core VM.
        timeout: Duration::from_secs(2),
        retry_interval: Duration::from_millis(500),
        ..StateConfig::default()
    };
    StateStore::from_config(&cfg).expect("redis store")
}

/// The contract of `wit/plugin.wit`'s `state` interface, run against one
/// backend. Both backends must pass it unchanged.
async fn state_contract(s: &StateStore) {
    // incr: starts at 0, the TTL is set only when the counter is created.
    assert_eq!(s.incr("p:c", 1, 1000).await, Ok(1));
    assert_eq!(s.incr("p:c", 5, 60_000).await, Ok(6), "a later TTL does not extend the window");
    assert_eq!(s.incr("p:c", -2, 0).await, Ok(4));
    assert_eq!(s.get("p:c").await, Ok(Some(b"4".to_vec())), "counters read as decimal");

    // set/get with and without expiry; binary values survive.
    let bin = [0u8, 255, 10, 13, b'"'];
    assert_eq!(s.set("p:k", &bin, 0).await, Ok(()));
    assert_eq!(s.get("p:k").await, Ok(Some(bin.to_vec())));
    assert_eq!(s.set("p:t", b"v", 1000).await, Ok(()));

    // compare-and-swap: absent, match, mismatch, empty value vs absent.
    assert_eq!(s.compare_and_swap("p:cas", None, b"", 0).await, Ok(true), "absent → set to empty");
    assert_eq!(s.compare_and_swap("p:cas", None, b"x", 0).await, Ok(false), "empty is not absent");
    assert_eq!(s.compare_and_swap("p:cas", Some(b""), b"1", 0).await, Ok(true));
    assert_eq!(s.compare_and_swap("p:cas", Some(b"0"), b"2", 0).await, Ok(false));
    assert_eq!(s.compare_and_swap("p:cas", Some(b"1"), b"2", 1000).await, Ok(true));
    assert_eq!(s.get("p:cas").await, Ok(Some(b"2".to_vec())));

    // Expiry, all three at once (1 s TTLs, checked after 2 s).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(s.get("p:c").await, Ok(None), "the first TTL applies");
    assert_eq!(s.get("p:t").await, Ok(None));
    assert_eq!(s.get("p:cas").await, Ok(None), "a CAS may set a TTL");
    assert_eq!(s.get("p:k").await, Ok(Some(bin.to_vec())), "no TTL: kept");
    assert_eq!(s.incr("p:c", 1, 0).await, Ok(1), "a new window starts from zero");

    // delete, and counter operations that must be refused, leaving the value.
    assert_eq!(s.delete("p:k").await, Ok(true));
    assert_eq!(s.delete("p:k").await, Ok(false));
    for text in ["abc", "007", "+5", " 1"] {
        assert_eq!(s.set("p:text", text.as_bytes(), 0).await, Ok(()));
        assert!(matches!(s.incr("p:text", 1, 0).await, Err(StateError::Invalid(_))), "incr on {text:?} is refused");
        assert_eq!(s.get("p:text").await, Ok(Some(text.as_bytes().to_vec())), "and leaves it alone");
    }
    assert_eq!(s.set("p:num", b"-5", 0).await, Ok(()));
    assert_eq!(s.incr("p:num", 1, 0).await, Ok(-4), "a canonical number set as bytes is a counter");
    assert_eq!(s.incr("p:big", i64::MAX, 0).await, Ok(i64::MAX));
    assert!(matches!(s.incr("p:big", 1, 0).await, Err(StateError::Invalid(_))), "overflow is refused");
    assert_eq!(s.get("p:big").await, Ok(Some(i64::MAX.to_string().into_bytes())), "and changes nothing");
    assert!(matches!(s.set("p:x", b"v", weir_plugin_host::state::MAX_TTL_MS + 1).await, Err(StateError::Invalid(_))));

    // throttle (GCRA): one per minute, 4 more at once. The backends read
    // their own clocks (the gateway's, Redis's), so the interval is long
    // enough that none passes during these calls.
    let d = s.throttle("p:thr", 1, 60_000, 4, 1).await.expect("throttle");
    assert!(d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms), (4, 0));
    assert!((59_000..=60_000).contains(&d.reset_after_ms), "{d:?}");
    let mut allowed = 1;
    for _ in 0..10 {
        allowed += usize::from(s.throttle("p:thr", 1, 60_000, 4, 1).await.expect("throttle").allowed);
    }
    assert_eq!(allowed, 5, "the burst plus one");
    let d = s.throttle("p:thr", 1, 60_000, 4, 1).await.expect("throttle");
    assert!(!d.allowed && d.remaining == 0, "{d:?}");
    assert!((59_000..=60_000).contains(&d.retry_after_ms), "{d:?}");
    assert!((299_000..=300_000).contains(&d.reset_after_ms), "{d:?}");
    // A negative cost gives one back; a cost of 2 then does not fit.
    assert!(s.throttle("p:thr", 1, 60_000, 4, -1).await.expect("give back").allowed);
    assert!(!s.throttle("p:thr", 1, 60_000, 4, 2).await.expect("two").allowed);
    assert!(s.throttle("p:thr", 1, 60_000, 4, 1).await.expect("one").allowed);
    for (rate, period, burst, cost) in [(0, 1000, 0, 1), (1, 0, 0, 1), (1, 1000, 1, 3)] {
        let r = s.throttle("p:thr2", rate, period, burst, cost).await;
        assert!(matches!(r, Err(StateError::Invalid(_))), "throttle({rate}, {period}, {burst}, {cost}): {r:?}");
    }
    assert_eq!(s.set("p:notime", b"abc", 0).await, Ok(()));
    let r = s.throttle("p:notime", 1, 1000, 0, 1).await;
    assert!(matches!(r, Err(StateError::Invalid(_))), "a value that is not a timestamp: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_keep_the_same_contract() {
    state_contract(&StateStore::default()).await;
    let redis = RedisServer::start();
    state_contract(&redis_store(&redis.url(), "contract:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counters_are_exact_under_concurrency_and_namespaced() {
    let redis = RedisServer::start();
    let a = std::sync::Arc::new(redis_store(&redis.url(), "a:"));
    let b = redis_store(&redis.url(), "b:");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    seen.push(a.incr("p:n", 1, 60_000).await.expect("incr"));
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<i64>>(), "every increment got a distinct value");
    assert_eq!(b.get("p:n").await, Ok(None), "another key prefix sees nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_fast_then_recovers() {
    let mut redis = RedisServer::start();
    let s = redis_store(&redis.url(), "outage:");
    assert_eq!(s.describe()["reachable"], serde_json::Value::Null, "unknown before the first call");
    assert_eq!(s.incr("p:n", 1, 0).await, Ok(1));
    assert_eq!(s.describe()["reachable"], true);
    redis.stop();

    // The outage is noticed within the timeout; then calls fail at once.
    let started = Instant::now();
    let failed = weir_tests::wait_for(Duration::from_secs(10), || async {
        matches!(s.incr("p:n", 1, 0).await, Err(StateError::Unavailable(_))).then_some(())
    })
    .await;
    assert!(failed.is_some(), "the outage was noticed");
    assert!(started.elapsed() < Duration::from_secs(6), "bounded by the timeout: {:?}", started.elapsed());
    let started = Instant::now();
    for _ in 0..100 {
        assert!(matches!(s.get("p:n").await, Err(StateError::Unavailable(_))));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "fail-fast, no waiting: {:?}", started.elapsed());
    assert_eq!(s.describe()["reachable"], false);

    // Back: after the retry interval the first call reconnects.
    redis.restart();
    let back = weir_tests::wait_for(Duration::from_secs(10), || async { s.incr("p:n", 1, 0).await.ok() }).await;
    assert_eq!(back, Some(1), "a fresh server starts from zero");
    assert_eq!(s.describe()["reachable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refusing_writes_is_unavailable_not_invalid() {
    let redis = RedisServer::start();
    let s = redis_store(&redis.url(), "oom:");
    assert_eq!(s.set("p:a", b"v", 0).await, Ok(()));
    // Out of memory with nothing evictable: every write is refused with OOM.
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]).as_deref(), Some("+OK"));
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "1"]).as_deref(), Some("+OK"));
    for _ in 0..3 {
        let r = s.set("p:b", b"v", 0).await;
        assert!(matches!(r, Err(StateError::Unavailable(_))), "OOM is an outage, not a bad argument: {r:?}");
    }
    assert_eq!(s.describe()["reachable"], false, "three failures open the fail-fast window");
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "0"]).as_deref(), Some("+OK"));
    let back = weir_tests::wait_for(Duration::from_secs(10), || async { s.set("p:b", b"v", 0).await.ok() }).await;
    assert_eq!(back, Some(()), "writes work again once Redis has room");
}

/// Two gateway nodes (real `weir` processes) on one Redis, both running the
/// rate limiter as the same named plugin instance.
fn shared_limit_config(redis: &RedisServer, prefix: &str, upstream: &weir_tests::Upstream) -> String {
    format!(
        r#"[state]
backend = "redis"
url = "{url}"
key_prefix = "{prefix}"
timeout = "2s"               # generous: a busy 2-core CI machine

[upstreams.up]
targets = ["{up}"]

[plugins.limit]
module = "rate_limit.wasm"
config = {{ key = "route", limits = [{{ name = "hourly", requests = {N}, window = "1h" }}] }}
limits = {{ deadline = "10s" }}

[plugins.small]
module = "rate_limit.wasm"
config = {{ key = "route", limits = [{{ name = "small", requests = 5, window = "1h" }}] }}
limits = {{ deadline = "10s" }}

[plugins.gcra]
module = "rate_limit.wasm"
config = {{ key = "route", algorithm = "gcra", limits = [{{ name = "g", requests = 300, window = "1h", burst = 49 }}] }}
limits = {{ deadline = "10s" }}

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "up"
chain = ["limit"]

[[routes]]
name = "gcra"
path_prefix = "/gcra"
upstream = "up"
chain = ["gcra"]

[[routes]]
name = "small"
path_prefix = "/small"
upstream = "up"
chain = ["small"]
"#,
        url = redis.url(),
        up = upstream.addr,
    )
}

/// The shared limit.
const N: usize = 300;

/// Fire `total` GETs of `path` at the nodes in turn from `concurrency` tasks;
/// return the status counts (200, 429, other).
async fn load(nodes: &[&str], path: &str, total: usize, concurrency: usize) -> (usize, usize, usize) {
    let client = weir_tests::Client::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n}{path}")).collect();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, nodes) = (client.clone(), next.clone(), nodes.clone());
            tokio::spawn(async move {
                let mut counts = (0, 0, 0);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return counts;
                    }
                    match client.get(&nodes[i % nodes.len()]).await.map(|r| r.status.as_u16()) {
                        Ok(200) => counts.0 += 1,
                        Ok(429) => counts.1 += 1,
                        _ => counts.2 += 1,
                    }
                }
            })
        })
        .collect();
    let mut sum = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.expect("load task");
        sum = (sum.0 + a, sum.1 + b, sum.2 + c);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_limit_and_fail_open_without_redis() {
    let mut redis = RedisServer::start();
    let up = weir_tests::Upstream::start("up").await;
    let cfg = shared_limit_config(&redis, &format!("it{}:", std::process::id()), &up);
    let a = weir_tests::GatewayProcess::start(&cfg, &["rate_limit.wasm"]).await;
    let b = weir_tests::GatewayProcess::start(&cfg, &["rate_limit.wasm"]).await;
    let nodes = [a.url.as_str(), b.url.as_str()];

    // 4N requests, 32 at a time, alternating nodes: exactly N get through
    // (the acceptance bound is 1%), the rest are refused, none fail.
    let (ok, limited, other) = load(&nodes, "/api/x", 4 * N, 32).await;
    println!("shared limit {N}: {ok} allowed, {limited} limited, {other} other across two nodes");
    assert_eq!(other, 0, "no request may fail");
    assert!(ok.abs_diff(N) <= N / 100, "allowed {ok}, limit {N}");
    assert_eq!(ok + limited, 4 * N);
    assert_eq!(up.hits(), ok, "the upstream saw exactly the allowed requests");
    // Both nodes did refuse: the limit really is shared, not per node.
    for node in [&a, &b] {
        let metrics = weir_tests::Client::new().get(&format!("{}/metrics", node.admin)).await.expect("metrics").text();
        let limited_here = metrics
            .lines()
            .find(|l| {
                l.starts_with("weir_plugin_custom_total{")
                    && l.contains("plugin=\"limit\"")
                    && l.contains("name=\"limited\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(limited_here > 0, "node {} refused nothing:\n{metrics}", node.url);
    }

    // GCRA across both nodes, one Lua call per decision on Redis's clock:
    // a burst of 200 gets exactly burst + 1 = 50 through (one request per
    // 12 s flows; none in the time this takes).
    let hits = up.hits();
    let (ok, limited, other) = load(&nodes, "/gcra/x", 200, 32).await;
    println!("shared gcra limit: {ok} allowed, {limited} limited, {other} other across two nodes");
    assert_eq!((ok, limited, other), (50, 150, 0));
    assert_eq!(up.hits() - hits, 50);

    // Redis goes away: both nodes keep serving (fail open), say so once in
    // their log, and count the state errors.
    redis.stop();
    let (ok, limited, other) = load(&nodes, "/small/x", 40, 4).await;
    assert_eq!((ok, limited, other), (40, 0, 0), "fail open while Redis is down");
    for node in [&a, &b] {
        let log = node.log();
        assert_eq!(log.matches("state backend unreachable").count(), 1, "one warning per outage:\n{log}");
        let status =
            weir_tests::Client::new().get(&format!("{}/admin/status", node.admin)).await.expect("status").json();
        assert_eq!(status["state"]["reachable"], false, "{status}");
    }

    // Redis is back (empty): each node notices on its first call after the
    // retry interval (a request that gets RateLimit headers had working
    // state), and the small limit holds again across both nodes.
    redis.restart();
    for node in [&a, &b] {
        let client = weir_tests::Client::new();
        let url = format!("{}/api/probe", node.url);
        let back = weir_tests::wait_for(Duration::from_secs(5), || async {
            client.get(&url).await.ok().filter(|r| r.headers.contains_key("ratelimit"))
        })
        .await;
        assert!(back.is_some(), "node {} did not reconnect:\n{}", node.url, node.log());
    }
    let (ok, limited, other) = load(&nodes, "/small/x", 20, 4).await;
    assert_eq!(other, 0);
    assert_eq!(ok, 5, "the limit holds again after Redis returns ({limited} limited)");
    for node in [&a, &b] {
        assert!(node.log().contains("state backend reachable again"), "{}", node.log());
    }
}
