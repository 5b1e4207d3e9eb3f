//! Hot reload: bad input is rejected while the last good snapshot serves;
//! modules are added, replaced and deleted live without failed requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weir_tests::{TestGateway, Upstream, fixture, write_atomic};

fn body(upstream: &str, plugins: &str, chain: &str) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{upstream}\"]\n{plugins}\n[[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [{chain}]\n"
    )
}

const GREET: &str =
    "[plugins.greet]\nmodule = \"add_header.wasm\"\nconfig = { name = \"x-greeting\", value = \"hello\" }\n";

/// Requests in a loop from several tasks until stopped; counts failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &TestGateway, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let client = weir_tests::Client::new();
                let url = format!("{}/load", gw.url);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).await {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(r) => {
                                eprintln!("failed request: {} {}", r.status, r.text());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(e) => {
                                eprintln!("failed request: {e}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_rejected_and_old_snapshot_serves() {
    let up = Upstream::start("up").await;
    let addr = up.addr.to_string();
    let gw = TestGateway::start(&body(&addr, GREET, "\"greet\""), &["add_header.wasm"]).await;
    assert_eq!(gw.status().await["generation"], 1);

    // Unknown plugin in a chain: rejected with file and line.
    gw.write_config(&body(&addr, GREET, "\"greet\", \"missing\""));
    let err = gw.wait_reload_error().await;
    assert!(err.contains("gateway.toml:18: route `r`: unknown plugin `missing`"), "{err}");
    let status = gw.status().await;
    assert_eq!(status["generation"], 1, "nothing published");
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"), "old snapshot serves");

    // Syntax error.
    gw.write_config("[upstreams.up\n");
    let err = gw.wait_for_error_containing("gateway.toml:9:").await;
    assert!(err.contains("unclosed table"), "{err}");

    // Plugin config refused by the plugin itself.
    gw.write_config(&body(
        &addr,
        "[plugins.greet]\nmodule = \"add_header.wasm\"\nconfig = { name = \"bad name\", value = \"x\" }\n",
        "\"greet\"",
    ));
    let err = gw.wait_for_error_containing("config rejected").await;
    assert!(
        err.contains("plugin `greet` (add_header.wasm): config rejected by the plugin: invalid HTTP header name"),
        "{err}"
    );
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"));

    // A good config again: published, error cleared.
    gw.write_config(&body(&addr, "", ""));
    let status = gw.wait_generation(2).await;
    assert_eq!(status["last_reload_error"], serde_json::Value::Null);
    assert_eq!(gw.get("/").await.seen("x-greeting"), None);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("weir_config_generation 2"), "{metrics}");
    assert!(metrics.contains(r#"weir_config_reloads_total{result="failure"} 3"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_module_is_rejected_and_old_snapshot_serves() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&body(&up.addr.to_string(), GREET, "\"greet\""), &["add_header.wasm"]).await;
    let module = gw.plugins_dir().join("add_header.wasm");
    let bytes = std::fs::read(&module).expect("read");
    write_atomic(&module, &bytes[..bytes.len() / 3]);
    let err = gw.wait_reload_error().await;
    assert!(err.contains("gateway.toml:") && err.contains("add_header.wasm is not a valid plugin component"), "{err}");
    assert_eq!(gw.status().await["generation"], 1);
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"));

    // Restoring the file recovers.
    write_atomic(&module, &bytes);
    gw.wait_generation(2).await;
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_added_replaced_and_deleted_under_load_without_failures() {
    let up = Upstream::start("up").await;
    let addr = up.addr.to_string();
    let gw = TestGateway::start(&body(&addr, GREET, "\"greet\""), &["add_header.wasm"]).await;
    let load = Load::start(&gw, 4);
    let dir = gw.plugins_dir();
    let mut generation = 1;

    // Add: a new module file, then a config that uses it.
    std::fs::copy(fixture("probe.wasm"), dir.join("probe.tmp")).expect("copy");
    std::fs::rename(dir.join("probe.tmp"), dir.join("swap.wasm")).expect("rename");
    generation += 1;
    gw.wait_generation(generation).await; // the new file alone is a (valid) change
    let swap = "[plugins.swap]\nmodule = \"swap.wasm\"\nconfig = {}\n";
    gw.write_config(&body(&addr, &format!("{GREET}{swap}"), "\"greet\", \"swap\""));
    generation += 1;
    let status = gw.wait_generation(generation).await;
    let sha_of = |status: &serde_json::Value| {
        status["plugins"].as_array().expect("plugins").iter().find(|p| p["name"] == "swap").expect("swap")["sha256"]
            .as_str()
            .expect("sha")
            .to_owned()
    };
    let before = sha_of(&status);

    // Replace the module file with another plugin accepting the same config.
    for round in 0..3 {
        let src = if round % 2 == 0 { "hostile.wasm" } else { "probe.wasm" };
        let bytes = std::fs::read(fixture(src)).expect("read");
        write_atomic(&dir.join("swap.wasm"), &bytes);
        generation += 1;
        let status = gw.wait_generation(generation).await;
        // hostile.wasm in even rounds (a new hash), probe.wasm again in odd ones.
        if round % 2 == 0 {
            assert_ne!(sha_of(&status), before, "round {round}: the replacement is served");
        } else {
            assert_eq!(sha_of(&status), before, "round {round}: the original is back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Delete: drop it from the config, then delete the file.
    gw.write_config(&body(&addr, GREET, "\"greet\""));
    generation += 1;
    gw.wait_generation(generation).await;
    std::fs::remove_file(dir.join("swap.wasm")).expect("delete");
    generation += 1;
    gw.wait_generation(generation).await;

    // Deleting a module still in use is refused; the old snapshot keeps it.
    std::fs::remove_file(dir.join("add_header.wasm")).expect("delete");
    let err = gw.wait_reload_error().await;
    assert!(err.contains("plugin `greet`: cannot read"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "no request may fail during reloads ({ok} succeeded)");
    assert!(ok > 50, "load actually ran: {ok}");
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"));
}

trait WaitError {
    async fn wait_for_error_containing(&self, needle: &str) -> String;
}

impl WaitError for TestGateway {
    async fn wait_for_error_containing(&self, needle: &str) -> String {
        weir_tests::wait_for(Duration::from_secs(10), || async {
            self.status().await["last_reload_error"].as_str().filter(|e| e.contains(needle)).map(str::to_owned)
        })
        .await
        .unwrap_or_else(|| panic!("no reload error containing {needle:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_pin_is_enforced() {
    let up = Upstream::start("up").await;
    let addr = up.addr.to_string();
    let gw = TestGateway::start(&body(&addr, GREET, "\"greet\""), &["add_header.wasm"]).await;
    let sha = gw.status().await["plugins"][0]["sha256"].as_str().expect("sha256").to_owned();
    assert_eq!(sha.len(), 64);

    let wrong = "0".repeat(64);
    gw.write_config(&body(&addr, &format!("{GREET}sha256 = \"{wrong}\"\n"), "\"greet\""));
    let err = gw.wait_reload_error().await;
    assert!(err.contains(&format!("has sha256 {sha}, but the config pins {wrong}")), "{err}");

    gw.write_config(&body(&addr, &format!("{GREET}sha256 = \"{}\"\n", sha.to_uppercase()), "\"greet\""));
    let status = gw.wait_generation(2).await;
    assert_eq!(status["last_reload_error"], serde_json::Value::Null);
}
