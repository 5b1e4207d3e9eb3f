//! Misbehaving plugins: traps, deadlines, memory, recursion, invalid output.
//! Each failure stays inside its request; the gateway keeps serving.

use std::time::{Duration, Instant};

use http::Method;
use weir_tests::{TestGateway, Upstream};

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
                ("evilopen", "invalid_header", "failure = \"open\""),
                ("refused", "invalid_edit", ""),
            ],
        ),
        &["hostile.wasm"],
    )
    .await;
    for path in ["/bomb", "/deep", "/evil", "/huge"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert_eq!(r.json()["source"], "plugin", "{path}");
    }
    let evil = gw.get("/evil").await;
    assert!(evil.json()["error"].as_str().is_some_and(|e| e.contains("invalid value for header")), "{}", evil.text());
    let huge = gw.get("/huge").await;
    assert!(huge.json()["error"].as_str().is_some_and(|e| e.contains("exceeds")), "{}", huge.text());
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
