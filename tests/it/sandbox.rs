//! Misbehaving plugins: traps, deadlines, memory, recursion, invalid output.
//! Each failure stays inside its request; the gateway keeps serving.

use std::time::{Duration, Instant};

use http::Method;
use weir_tests::{TestGateway, Upstream, rss_kib};

/// A route `/NAME` per hostile plugin instance `NAME` with `mode`.
fn config(upstream: &str, plugins: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[upstreams.up]\ntargets = [\"{upstream}\"]\n[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"up\"\n"
    );
    for (name, mode, extra) in plugins {
        s.push_str(&format!(
            "[plugins.{name}]\nmodule = \"hostile.wasm\"\nconfig = {{ mode = \"{mode}\" }}\n{extra}\n\
             [[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"up\"\nchain = [\"{name}\"]\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_500_or_skipped_when_open() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &config(
            &up.addr.to_string(),
            &[("closed", "trap", ""), ("open", "trap", "failure = \"open\""), ("sometimes", "trap_on_header", "")],
        ),
        &["hostile.wasm"],
    )
    .await;
    let r = gw.get("/closed").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["source"], "plugin");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("plugin `closed`") && e.contains("trapped")));
    assert_eq!(up.hits(), 0);

    let r = gw.get("/open").await;
    assert_eq!(r.status, 200, "failure = open skips the plugin");
    assert_eq!(up.hits(), 1);

    // A trap kills only that request; the next one gets a healthy instance.
    assert_eq!(gw.request(Method::GET, "/sometimes", &[("x-trap", "1")], "").await.status, 500);
    for _ in 0..5 {
        assert_eq!(gw.get("/sometimes").await.status, 200);
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_calls_total{plugin="sometimes",outcome="trap"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"weir_plugin_calls_total{plugin="sometimes",outcome="ok"} 5"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_cut_at_its_deadline() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &config(
            &up.addr.to_string(),
            &[
                ("spin", "loop", "limits = { deadline = \"50ms\" }"),
                ("spinopen", "loop", "limits = { deadline = \"50ms\" }\nfailure = \"open\""),
            ],
        ),
        &["hostile.wasm"],
    )
    .await;
    let started = Instant::now();
    let r = gw.get("/spin").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("deadline")), "{}", r.text());
    assert!(took >= Duration::from_millis(50) && took < Duration::from_millis(1000), "cut near 50ms, took {took:?}");

    assert_eq!(gw.get("/spinopen").await.status, 200, "failure = open: skipped after the deadline");

    // Loops on many requests at once never starve other routes.
    let mut spinning = Vec::new();
    for _ in 0..8 {
        let c = gw.client.clone();
        let url = format!("{}/spin", gw.url);
        spinning.push(tokio::spawn(async move { c.get(&url).await.map(|r| r.status.as_u16()) }));
    }
    let started = Instant::now();
    assert_eq!(gw.get("/plain").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500), "plain route slowed to {:?}", started.elapsed());
    for t in spinning {
        assert_eq!(t.await.expect("task").expect("response"), 504);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_recursion_and_invalid_output() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &config(
            &up.addr.to_string(),
            &[
                ("bomb", "memory_bomb", "limits = { memory = \"16MiB\" }"),
                ("deep", "recurse", ""),
                ("evil", "invalid_header", ""),
                ("huge", "huge_body", "limits = { memory = \"64MiB\" }"),
                ("huge100", "huge_body_100m", "limits = { memory = \"200MiB\", deadline = \"5s\" }"),
                ("headers", "huge_headers", ""),
                ("evilopen", "invalid_header", "failure = \"open\""),
                ("refused", "invalid_edit", ""),
            ],
        ),
        &["hostile.wasm"],
    )
    .await;
    for path in ["/bomb", "/deep", "/evil", "/huge", "/huge100", "/headers"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert_eq!(r.json()["source"], "plugin", "{path}");
    }
    let evil = gw.get("/evil").await;
    assert!(evil.json()["error"].as_str().is_some_and(|e| e.contains("invalid value for header")), "{}", evil.text());
    let huge = gw.get("/huge").await;
    assert!(huge.json()["error"].as_str().is_some_and(|e| e.contains("exceeds")), "{}", huge.text());
    // 100 MiB returned across the boundary: refused, not forwarded, no panic.
    let huge = gw.get("/huge100").await;
    assert!(
        huge.json()["error"].as_str().is_some_and(|e| e.contains("body of 104857600 bytes exceeds")),
        "{}",
        huge.text()
    );
    let many = gw.get("/headers").await;
    assert!(
        many.json()["error"].as_str().is_some_and(|e| e.contains("10000 headers returned, at most 256")),
        "{}",
        many.text()
    );
    assert_eq!(up.hits(), 0, "nothing from a failed plugin is forwarded");
    // With failure = "open" invalid output is skipped like a trap: the
    // request goes on without the plugin's edits.
    let r = gw.get("/evilopen").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-evil"), None);
    assert_eq!(r.seen("x-injected"), None);
    // And the gateway is fine.
    assert_eq!(gw.get("/plain").await.status, 200);
    // Edits the gateway refuses are refused when made; a plugin that
    // ignores the refusals goes on, and nothing of them is forwarded.
    let r = gw.get("/refused").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-refused").as_deref(), Some("5"), "all five edits refused");
    assert_eq!(r.seen("x-evil"), None);
    assert_eq!(r.seen("x-injected"), None);
    assert_eq!(r.json()["method"], "GET");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_calls_total{plugin="evil",outcome="invalid_output"} 2"#), "{metrics}");
    // The memory bomb's high-water mark: it grew close to its 16 MiB limit
    // and never past it.
    let peak: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"weir_plugin_memory_peak_bytes{plugin="bomb"} "#)?.parse().ok())
        .unwrap_or_else(|| panic!("no memory peak for bomb in\n{metrics}"));
    assert!(peak > 8.0 * 1048576.0 && peak <= 16.0 * 1048576.0, "bomb peak {peak}");
    let plugins = gw.client.get(&format!("{}/admin/plugins", gw.admin)).await.expect("admin plugins").json();
    let bomb = plugins["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == "bomb").expect("bomb");
    assert_eq!(bomb["memory_peak_bytes"].as_f64(), Some(peak));
    assert_eq!(bomb["calls"]["trap"], 1, "{bomb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_that_hangs_in_init_is_rejected_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(weir_tests::fixture("hostile.wasm"), dir.path().join("plugins/hostile.wasm")).expect("copy");
    let cfg = format!(
        "{}[plugins.stuck]\nmodule = \"hostile.wasm\"\nconfig = {{ mode = \"loop_in_init\" }}\n\n[plugins.picky]\nmodule = \"hostile.wasm\"\nconfig = {{ mode = \"nonsense\" }}\n",
        weir_tests::server_section()
    );
    std::fs::write(dir.path().join("gateway.toml"), cfg).expect("write");
    let Err(err) = weir::Gateway::load(dir.path().join("gateway.toml")).await else {
        panic!("a plugin stuck in init must be rejected")
    };
    let text = err.to_string();
    assert!(text.contains("gateway.toml:11: plugin `stuck` (hostile.wasm): init trapped: deadline exceeded"), "{text}");
    assert!(
        text.contains(
            "gateway.toml:15: plugin `picky` (hostile.wasm): config rejected by the plugin: unknown mode \"nonsense\""
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_trapping_is_paused_then_probed_then_restored() {
    let up = Upstream::start("up").await;
    let policy = "crash_loop = { after = 3, backoff = \"1s\", max_backoff = \"4s\" }";
    let gw = TestGateway::start(
        &config(
            &up.addr.to_string(),
            &[
                ("crashy", "trap_on_header", policy),
                ("lenient", "trap", "failure = \"open\"\ncrash_loop = { after = 2, backoff = \"10s\" }"),
            ],
        ),
        &["hostile.wasm"],
    )
    .await;
    let plugin_state = |gw: &TestGateway| {
        let (client, url) = (gw.client.clone(), format!("{}/admin/plugins", gw.admin));
        async move {
            let doc = client.get(&url).await.expect("admin plugins").json();
            doc["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == "crashy").expect("crashy")["crash_loop"].clone()
        }
    };

    // Two traps in a row: still called.
    for _ in 0..2 {
        assert_eq!(gw.request(Method::GET, "/crashy", &[("x-trap", "1")], "").await.status, 500);
    }
    assert_eq!(plugin_state(&gw).await["state"], "healthy");
    // The third starts a 1 s pause: a healthy request is not sent to
    // the plugin but answered 503 at once, and nothing reaches the upstream.
    assert_eq!(gw.request(Method::GET, "/crashy", &[("x-trap", "1")], "").await.status, 500);
    let hits = up.hits();
    let r = gw.get("/crashy").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["source"], "plugin");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("crash-loop")), "{}", r.text());
    assert_eq!(up.hits(), hits);
    let s = plugin_state(&gw).await;
    assert_eq!(s["state"], "backoff", "{s}");
    assert_eq!(s["episodes"], 1);
    assert!(s["retry_in_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 1000), "{s}");
    let m = gw.metrics().await;
    assert!(m.contains(r#"weir_plugin_crash_looping{plugin="crashy"} 1"#), "{m}");
    assert!(m.contains(r#"weir_plugin_crash_loops_total{plugin="crashy"} 1"#), "{m}");

    // After the pause the next call is a probe; it traps again: a new,
    // doubled pause at once.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(plugin_state(&gw).await["state"], "probing");
    assert_eq!(gw.request(Method::GET, "/crashy", &[("x-trap", "1")], "").await.status, 500);
    let s = plugin_state(&gw).await;
    assert_eq!(s["state"], "backoff", "{s}");
    assert!(s["retry_in_ms"].as_u64().is_some_and(|ms| ms > 1000 && ms <= 2000), "doubled: {s}");
    assert_eq!(gw.get("/crashy").await.status, 503);

    // After it, a request that does not trap restores the plugin.
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(gw.get("/crashy").await.status, 200);
    let s = plugin_state(&gw).await;
    assert_eq!(
        (s["state"].as_str(), s["consecutive_traps"].as_u64(), s["episodes"].as_u64()),
        (Some("healthy"), Some(0), Some(2))
    );
    for _ in 0..3 {
        assert_eq!(gw.get("/crashy").await.status, 200);
    }
    let m = gw.metrics().await;
    assert!(m.contains(r#"weir_plugin_crash_looping{plugin="crashy"} 0"#), "{m}");
    assert!(m.contains(r#"weir_plugin_crash_loops_total{plugin="crashy"} 2"#), "{m}");

    // With failure = "open" a paused plugin is skipped like a failed one:
    // requests go on, and the plugin is not called (no more traps counted).
    for _ in 0..5 {
        assert_eq!(gw.get("/lenient").await.status, 200);
    }
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"weir_plugin_calls_total{plugin="lenient",outcome="trap"} 2"#),
        "only two calls were made: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_cannot_read_files_or_env_connect_or_resolve_names() {
    // A canary on loopback: any connection or byte means the sandbox leaked.
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("canary");
    let canary_addr = canary.local_addr().expect("addr");
    let touched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = touched.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = canary.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let up = Upstream::start("up").await;
    let cfg = format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n\
         [plugins.escape]\nmodule = \"hostile.wasm\"\nconfig = {{ mode = \"escape\", canary = \"{canary_addr}\" }}\n\
         [[routes]]\nname = \"escape\"\nupstream = \"up\"\nchain = [\"escape\"]\n",
        up.addr
    );
    let gw = TestGateway::start(&cfg, &["hostile.wasm"]).await;
    assert!(std::env::vars().count() > 0, "the gateway process itself has an environment");
    assert!(std::fs::read_to_string("/etc/passwd").is_ok(), "and can read the file");
    for isolation_round in 0..3 {
        let r = gw.get("/anything").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let report = r.seen("x-escape").expect("the plugin's report");
        assert_eq!(report, "fs=denied dir=denied env=denied tcp=denied dns=denied", "round {isolation_round}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(touched.load(std::sync::atomic::Ordering::SeqCst), 0, "the canary received no connection");
}

/// Issue 5, items 5 and 6 at volume: 1,000 requests into an infinite loop
/// and 200 into a memory bomb leave no worker stuck and memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_loops_and_memory_bombs_leave_no_worker_stuck_and_memory_bounded() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &config(
            &up.addr.to_string(),
            &[
                ("spin", "loop", "limits = { deadline = \"20ms\" }"),
                ("bomb", "memory_bomb", "limits = { memory = \"16MiB\" }"),
            ],
        ),
        &["hostile.wasm"],
    )
    .await;
    assert_eq!(gw.get("/plain").await.status, 200);
    let rss_before = rss_kib();
    let started = Instant::now();
    let run = |path: &'static str, n: usize| {
        let (client, url) = (gw.client.clone(), format!("{}{path}", gw.url));
        futures::future::join_all((0..n).map(move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).await.map(|r| r.status.as_u16()).unwrap_or(0) }
        }))
    };
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.extend(run("/spin", 50).await);
    }
    let spun = started.elapsed();
    assert_eq!(statuses.len(), 1000);
    assert!(statuses.iter().all(|s| *s == 504), "every loop is cut at its deadline");
    // Each bomb is refused (500); after five in a row the plugin is in
    // crash-loop backoff and refused at once (503).
    let mut bombs = Vec::new();
    for _ in 0..10 {
        bombs.extend(run("/bomb", 20).await);
    }
    assert!(bombs.iter().all(|s| *s == 500 || *s == 503), "{bombs:?}");
    assert!(bombs.iter().filter(|s| **s == 500).count() >= 5, "{bombs:?}");
    let rss_after = rss_kib();
    // Workers are free: plain requests are answered at once.
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(gw.get("/plain").await.status, 200);
    }
    let plain = t.elapsed() / 50;
    eprintln!(
        "1000 loops cut in {spun:?}; RSS {} MiB before, {} MiB after 200 memory bombs; plain request {plain:?}",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(plain < Duration::from_millis(50), "plain requests took {plain:?} each");
    assert!(rss_after < rss_before + 200 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
}
