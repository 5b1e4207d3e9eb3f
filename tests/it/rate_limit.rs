//! `rate_limit` plugin through the real gateway, in-process state backend.
//!
//! Windows are an hour long and sliding (the default), so a test that
//! happens to run across a window boundary sees the same decisions: the
//! previous window's count still weighs almost fully.

use http::Method;
use weir_tests::{Reply, TestGateway, Upstream};

/// `[plugins.NAME]` backed by rate_limit.wasm with `config` as its sub-table.
fn limiter(name: &str, config: &str) -> String {
    format!("[plugins.{name}]\nmodule = \"rate_limit.wasm\"\n[plugins.{name}.config]\n{config}\n")
}

/// One upstream and routes `(name, path_prefix, chain)`.
fn routes(upstream: &Upstream, routes: &[(&str, &str, &[&str])]) -> String {
    let mut out = format!("[upstreams.up]\ntargets = [\"{}\"]\n", upstream.addr);
    for (name, prefix, chain) in routes {
        let chain: Vec<String> = chain.iter().map(|c| format!("\"{c}\"")).collect();
        out.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"up\"\nchain = [{}]\n",
            chain.join(", ")
        ));
    }
    out
}

/// Send `n` requests one after the other; return how many got a 200.
async fn allowed(gw: &TestGateway, n: usize, path: &str, headers: &[(&str, &str)]) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let r = gw.request(Method::GET, path, headers, "").await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    ok
}

fn ratelimit(r: &Reply) -> &str {
    r.header("ratelimit").unwrap_or_else(|| panic!("no RateLimit header: {:?}", r.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allows_n_then_429_with_retry_after_and_ratelimit_headers() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}",
        limiter("limit", "limits = [{ name = \"hourly\", requests = 3, window = \"1h\" }]"),
        routes(&up, &[("api", "/", &["limit"])])
    );
    let gw = TestGateway::start(&cfg, &["rate_limit.wasm"]).await;

    for left in [2, 1, 0] {
        let r = gw.get("/items").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-upstream"), Some("up"), "proxied");
        assert_eq!(r.header("ratelimit-policy"), Some("\"hourly\";q=3;w=3600"));
        let value = ratelimit(&r);
        assert!(value.starts_with(&format!("\"hourly\";r={left};t=")), "{value}");
    }

    let r = gw.get("/items").await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().expect("Retry-After is seconds");
    assert!((1..=7200).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"hourly\";q=3;w=3600"));
    assert_eq!(ratelimit(&r), format!("\"hourly\";r=0;t={retry}"));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["policy"], "hourly");
    assert_eq!(body["retry_after"], retry);
    assert_eq!(up.hits(), 3, "the refused request never reached the upstream");

    // Retrying does not help, and is not counted against the client.
    assert_eq!(allowed(&gw, 5, "/items", &[]).await, 0);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="limit",name="allowed"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="limit",name="limited"} 6"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_have_separate_budgets() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}",
        limiter(
            "per-key",
            r#"key = "header:x-api-key"
missing = "deny"
limits = [
  { name = "burst", requests = 2, window = "1h" },
  { name = "daily", requests = 100, window = "24h" },
]"#
        ),
        limiter("quiet", "headers = false\nlimits = [{ requests = 1, window = \"1h\" }]"),
        routes(&up, &[("keyed", "/keyed", &["per-key"]), ("quiet", "/quiet", &["quiet"])])
    );
    let gw = TestGateway::start(&cfg, &["rate_limit.wasm"]).await;

    let r = gw.request(Method::GET, "/keyed", &[("x-api-key", "alice")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"burst\";q=2;w=3600, \"daily\";q=100;w=86400"));
    assert!(ratelimit(&r).starts_with("\"burst\";r=1;t="), "{}", ratelimit(&r));
    assert_eq!(allowed(&gw, 3, "/keyed", &[("x-api-key", "alice")]).await, 1);
    assert_eq!(allowed(&gw, 3, "/keyed", &[("x-api-key", "bob")]).await, 2, "bob has his own budget");
    // The upstream still sees the key: the plugin only reads it.
    let r = gw.request(Method::GET, "/keyed", &[("x-api-key", "carol")], "").await;
    assert_eq!(r.seen("x-api-key").as_deref(), Some("carol"));

    // missing = "deny": no key, no entry.
    let r = gw.get("/keyed").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "header `x-api-key` is required");

    // headers = false: none on the 200, but the 429 still explains itself.
    let r = gw.get("/quiet").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), None);
    assert_eq!(r.header("ratelimit-policy"), None);
    let r = gw.get("/quiet").await;
    assert_eq!(r.status, 429);
    assert!(ratelimit(&r).starts_with("\"1h\";r=0;t="), "{}", ratelimit(&r));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_and_routes_share_counters_only_when_the_key_says_so() {
    let up = Upstream::start("up").await;
    let two_per_ip = "limits = [{ name = \"l\", requests = 2, window = \"1h\" }]";
    let cfg = format!(
        "{}{}{}{}{}",
        limiter("a", two_per_ip),
        limiter("b", two_per_ip),
        limiter("shared", two_per_ip),
        limiter("per-route", "key = [\"route\", \"ip\"]\nlimits = [{ name = \"l\", requests = 2, window = \"1h\" }]"),
        routes(
            &up,
            &[
                ("a", "/a", &["a"]),
                ("b", "/b", &["b"]),
                ("c", "/c", &["shared"]),
                ("d", "/d", &["shared"]),
                ("e", "/e", &["per-route"]),
                ("f", "/f", &["per-route"]),
            ]
        )
    );
    let gw = TestGateway::start(&cfg, &["rate_limit.wasm"]).await;

    // Two named instances with the same config and limit name: separate state.
    assert_eq!(allowed(&gw, 4, "/a", &[]).await, 2);
    assert_eq!(allowed(&gw, 4, "/b", &[]).await, 2);
    // One instance on two routes, keyed by IP: one budget for the client.
    assert_eq!(allowed(&gw, 1, "/c", &[]).await, 1);
    assert_eq!(allowed(&gw, 4, "/d", &[]).await, 1);
    assert_eq!(allowed(&gw, 4, "/c", &[]).await, 0);
    // Keyed by route and IP: one budget per route.
    assert_eq!(allowed(&gw, 4, "/e", &[]).await, 2);
    assert_eq!(allowed(&gw, 4, "/f", &[]).await, 2);
    assert_eq!(up.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_exceed_the_limit() {
    const LIMIT: usize = 20;
    const REQUESTS: usize = 80;
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}",
        limiter("limit", &format!("limits = [{{ requests = {LIMIT}, window = \"1h\" }}]")),
        routes(&up, &[("api", "/", &["limit"])])
    );
    let gw = TestGateway::start(&cfg, &["rate_limit.wasm"]).await;

    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let client = gw.client.clone();
        let url = format!("{}/burst", gw.url);
        tasks.push(tokio::spawn(async move { client.get(&url).await.expect("request").status.as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, REQUESTS, "only 200s and 429s: {statuses:?}");
    // Increments are atomic and refusals are given back, so exactly the
    // limit gets through, however the requests interleave.
    assert_eq!(ok, LIMIT, "{statuses:?}");
    assert_eq!(up.hits(), LIMIT);
    assert_eq!(allowed(&gw, 5, "/after", &[]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_rejected_at_load_naming_the_key() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(weir_tests::fixture("rate_limit.wasm"), dir.path().join("plugins/rate_limit.wasm")).expect("copy");
    let cfg = format!(
        "{}{}{}",
        weir_tests::server_section(),
        limiter("limit", "limits = [{ requests = 10, window = \"1500ms\" }]"),
        routes(&up, &[("api", "/", &["limit"])])
    );
    std::fs::write(dir.path().join("gateway.toml"), cfg).expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("a window that is not whole seconds must be rejected")
    };
    let text = err.to_string();
    assert!(text.contains("plugin `limit` (rate_limit.wasm): config rejected by the plugin"), "{text}");
    assert!(text.contains("limits[0].window: \"1500ms\" is not a whole number of seconds"), "{text}");
}

/// `algorithm = "gcra"` through the real gateway on the in-process
/// backend: a burst of concurrent requests gets exactly `burst + 1`
/// through (each decision is one atomic host call), and a steady flood on
/// the real clock never puts more than `requests + burst` into one second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_holds_its_exact_bound_on_the_in_process_backend() {
    let up = Upstream::start("up").await;
    let cfg = format!(
        "{}{}{}",
        limiter("burst", "algorithm = \"gcra\"\nlimits = [{ requests = 60, window = \"1h\", burst = 19 }]"),
        limiter("steady", "algorithm = \"gcra\"\nlimits = [{ requests = 20, window = \"1s\" }]"),
        routes(&up, &[("burst", "/burst", &["burst"]), ("steady", "/steady", &["steady"])])
    );
    let gw = TestGateway::start(&cfg, &["rate_limit.wasm"]).await;

    // One request per minute flows; 19 more at once: 20 of 80 at once.
    let tasks: Vec<_> = (0..80)
        .map(|_| {
            let (client, url) = (gw.client.clone(), format!("{}/burst", gw.url));
            tokio::spawn(async move { client.get(&url).await.expect("request").status.as_u16() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 20);
    let r = gw.get("/burst").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"), "one interval: 3600 s / 60");

    // 20 per second, no burst, for 2.5 s as fast as one client can send.
    let start = std::time::Instant::now();
    let mut through = Vec::new();
    while start.elapsed() < std::time::Duration::from_millis(2500) {
        let r = gw.get("/steady").await;
        if r.status == 200 {
            through.push(start.elapsed());
        }
    }
    let worst = (0..through.len())
        .map(|i| through[i..].iter().take_while(|t| **t < through[i] + std::time::Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0);
    eprintln!("gcra 20/s: {} let through in 2.5 s, at most {worst} in any second", through.len());
    // Exact on the gateway's clock; one more for the client seeing the
    // answers a little after the decisions.
    assert!(worst <= 21, "{worst} in one second");
    assert!(through.len() >= 45, "the steady rate flows: {}", through.len());
}
