//! The dashboard, in a real browser: headless Chromium driven by
//! playwright-core (`tests/dashboard/check.mjs`). `scripts/test.sh` installs
//! Debian's `chromium` and runs `npm ci` in `tests/dashboard/`.

use std::process::Command;

use weir_tests::{Etcd, Registry, TestGateway, Upstream, fixture, weir_binary, workspace_root};

/// `other` comes from an OCI registry (`other_module`), `tag` from the
/// plugins folder, with a canary version that takes no traffic (0%).
fn config(upstream: &str, other_module: &str) -> String {
    format!(
        "[plugins.tag]\nmodule = \"probe.wasm\"\nconfig = {{ tag = \"t\" }}\n\
         canary = {{ module = \"probe.wasm\", percent = 0 }}\n\
         [plugins.other]\nmodule = \"{other_module}\"\nregistry = {{ insecure = true }}\noutbound = [\"content\"]\n\
         config = {{ tag = \"o\", callout = [\"content /ping\"] }}\n\
         [upstreams.catalog]\ntargets = [\"{upstream}\"]\n\
         [upstreams.content]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"shop\"\npath_prefix = \"/shop\"\nupstream = \"catalog\"\nchain = [\"tag\", \"other\"]\n\
         [[routes]]\nname = \"blog\"\npath_prefix = \"/blog\"\nupstream = \"content\"\nchain = [\"tag\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_config_and_live_traffic_in_headless_chromium() {
    let up = Upstream::start("up").await;
    let registry = Registry::start();
    let other = registry.reference("weir/probe:1");
    let pushed = Command::new(weir_binary())
        .args(["plugin", "push"])
        .arg(fixture("probe.wasm"))
        .args([other.as_str(), "--insecure"])
        .output()
        .expect("weir plugin push");
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let gw = TestGateway::start(&config(&up.addr.to_string(), &other), &["probe.wasm"]).await;
    for i in 0..3 {
        assert_eq!(gw.get(&format!("/blog/warmup/{i}")).await.status, 200);
    }
    // A rejected reload shows in the history (and the old config serves).
    gw.write_config("[[routes]]\nname = \"broken\"\n");
    gw.wait_reload_error().await;

    let page = gw.client.get(&format!("{}/dashboard", gw.admin)).await.expect("dashboard");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|c| c.starts_with("text/html")));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "nothing loads from elsewhere: {csp}");
    let html = page.text();
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "<script src", "@import"] {
        assert!(!html.contains(external), "the page loads nothing from elsewhere: found {external}");
    }

    let root = workspace_root().join("tests/dashboard");
    assert!(
        root.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/test.sh, which installs chromium and runs `npm ci` in {}",
        root.display()
    );
    // The screenshot is kept as a test artifact.
    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let shot = artifacts.join("dashboard.png");
    let (admin, proxy, shot_arg) = (gw.admin.clone(), gw.url.clone(), shot.clone());
    let root2 = root.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root2.join("check.mjs"))
            .arg(&admin)
            .arg(&proxy)
            .arg(&shot_arg)
            .current_dir(&root2)
            .output()
    })
    .await
    .expect("join")
    .expect("node runs (Node.js is needed for the browser test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser could not be driven:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("check.mjs printed no JSON ({e}):\n{stdout}"));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a screenshot at {}", shot.display());

    assert_eq!(r["status"], 200);
    assert_eq!(r["title"], "weir · dashboard");
    assert_eq!(r["consoleErrors"], serde_json::json!([]), "no console errors: {r}");
    assert_eq!(r["pageErrors"], serde_json::json!([]), "no page errors: {r}");
    assert_eq!(r["failedRequests"], serde_json::json!([]), "every request the page made succeeded: {r}");
    assert_eq!(r["waitError"], serde_json::Value::Null, "the page came to show the new traffic: {r}");

    let before = &r["before"];
    assert_eq!(before["topologyRoutes"], serde_json::json!(["shop", "blog"]), "{before}");
    for name in ["catalog", "content", "tag", "other", &up.addr.to_string()] {
        assert!(before["topologyTexts"].as_array().expect("texts").iter().any(|t| t == name), "{name} in {before}");
    }
    assert_eq!(before["curveRoutes"], serde_json::json!(["shop", "blog"]));
    assert_eq!(before["plugins"], serde_json::json!(["other", "tag"]));
    assert_eq!(before["fleetHidden"], true, "no fleet panel for a file configuration");
    assert_eq!(before["upstreams"], serde_json::json!(["catalog", "content"]));
    assert_eq!(before["heatCells"], 60, "30 cells for each of two routes");
    assert_eq!(before["generation"], "#1", "the rejected reload did not publish");
    assert!(before["reloads"][0].as_str().is_some_and(|t| t.contains("rejected")), "{before}");
    // Warm-up traffic: 3 requests × 2 phase calls of `tag`.
    assert_eq!(before["pluginTag"][6], "6", "{before}");
    assert_eq!(before["shopStroke"], "var(--idle)", "no traffic on shop yet");
    assert_eq!(before["pluginOther"][13], "may call content", "no outbound call yet: {before}");
    // A canary version shows under its plugin's module, with where it stands.
    let module = before["pluginTag"][1].as_str().unwrap_or_default();
    assert!(module.contains("canary probe.wasm") && module.contains("0% · failed 0.0% vs 0.0%"), "{before}");
    // The registry module, with what its tag resolved to.
    let module = before["pluginOther"][1].as_str().unwrap_or_default();
    assert!(module.starts_with(&other) && module.contains("@ sha256:"), "{before}");

    let sent = r["sentStatuses"].as_array().expect("statuses");
    assert_eq!(sent.iter().filter(|s| *s == 503).count(), 6);
    assert_eq!(sent.iter().filter(|s| *s == 200).count(), 10);
    let after = &r["after"];
    assert!(after["updates"].as_u64() > before["updates"].as_u64(), "the page kept polling: {after}");
    // 16 more requests through `tag` (request and response phase each).
    assert_eq!(after["pluginTag"][6], "38", "{after}");
    // `other` called `content` once per shop request.
    let outbound = after["pluginOther"][13].as_str().unwrap_or_default();
    assert!(outbound.starts_with("content answered 12 · "), "outbound calls shown: {after}");
    assert_eq!(after["shopStroke"], "var(--bad)", "half of shop's answers were 503s: {after}");
    assert_eq!(after["blogStroke"], "var(--ok)", "{after}");
    // Targets are coloured by their own answers: catalog's target answered
    // 6 of 12 with 503, content's none.
    assert_eq!(after["targetStrokes"], serde_json::json!(["var(--bad)", "var(--ok)"]), "{after}");
    assert!(after["heatLit"].as_u64().is_some_and(|n| n >= 2), "both routes light a cell: {after}");
    assert!(after["curvePolylines"].as_u64().is_some_and(|n| n >= 8), "curves drawn: {after}");
    assert_eq!(r["windowOn"], true);
    assert_eq!(r["heatOn"], true);
}

/// The fleet panel: two gateways in fleet mode on a real etcd, and the
/// panel of one lists both, serving the stored revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_panel_lists_the_nodes_in_headless_chromium() {
    let etcd = Etcd::start();
    let up = Upstream::start("up").await;
    let location = etcd.location("weir/dashboard");
    let work = tempfile::tempdir().expect("tempdir");
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    std::fs::copy(fixture("probe.wasm"), plugins.join("probe.wasm")).expect("copy");
    let file = work.path().join("gateway.toml");
    let doc = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplugins_dir = \"plugins\"\n\n[runtime]\nmax_instances = 64\n\n\
         [upstreams.up]\ntargets = [\"{}\"]\n\n[plugins.tag]\nmodule = \"probe.wasm\"\nconfig = {{ tag = \"t\" }}\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [\"tag\"]\n",
        up.addr
    );
    std::fs::write(&file, doc).expect("write");
    let pushed = Command::new(weir_binary()).args(["config", "push"]).arg(&file).arg(&location).output().expect("push");
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));

    let mut admins = Vec::new();
    let mut stops = Vec::new();
    for id in ["node-a", "node-b"] {
        let node = weir::NodeLocal {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            plugins_dir: Some(plugins.clone()),
            node_id: Some(id.to_owned()),
        };
        let options = weir::StartOptions { state_dir: Some(work.path().join(id)), node, ..Default::default() };
        let gateway = weir::Gateway::start_etcd(&location, weir::fleet::Access::default(), options)
            .await
            .unwrap_or_else(|e| panic!("{id} did not start: {e}"));
        let bound = gateway.bind().await.expect("bind");
        admins.push(format!("http://{}", bound.admin_addr().expect("admin")));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
    }

    let root = workspace_root().join("tests/dashboard");
    let admin = admins[0].clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(root.join("fleet.mjs")).arg(&admin).arg("2").current_dir(&root).output()
    })
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("fleet.mjs printed no JSON ({e}):\n{stdout}"));
    assert_eq!(r["pageErrors"], serde_json::json!([]), "{r}");
    assert_eq!(r["consoleErrors"], serde_json::json!([]), "{r}");
    assert_eq!(r["waitError"], serde_json::Value::Null, "both nodes shown current: {r}");
    let fleet = &r["fleet"];
    assert_eq!(fleet["hidden"], false, "{r}");
    let nodes: Vec<&str> = fleet["rows"].as_array().expect("rows").iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{r}");
    for stop in stops {
        let _ = stop.send(());
    }
}
