//! Plugin modules from an OCI registry (a real one: Debian's
//! docker-registry): published with `weir plugin push`, pulled by tag or by
//! digest, pinned, and kept in the local cache so that a pinned module
//! starts with the registry down; bad references refused with the plugin
//! named while the last good config serves.

use std::process::Command;

use weir_tests::{Registry, TestGateway, Upstream, fixture, weir_binary};

/// `weir plugin push MODULE REFERENCE --insecure`: (manifest digest,
/// module sha256).
fn push(module: &str, reference: &str) -> (String, String) {
    let out = Command::new(weir_binary())
        .args(["plugin", "push"])
        .arg(fixture(module))
        .args([reference, "--insecure"])
        .output()
        .expect("run weir");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "push failed:\n{text}");
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {label} in:\n{text}"))
    };
    let manifest = field("manifest ");
    let module = field("module ").trim_start_matches("sha256:").to_owned();
    assert!(text.contains(&format!("sha256 = \"{module}\"")), "the pin to copy is printed:\n{text}");
    (manifest, module)
}

fn config(up: &Upstream, module: &str, extra: &str) -> String {
    format!(
        "[upstreams.backend]\ntargets = [\"{}\"]\n\n\
         [plugins.greet]\nmodule = \"{module}\"\nregistry = {{ insecure = true }}\n{extra}\
         config = {{ name = \"x-oci\", value = \"pulled\" }}\n\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"backend\"\nchain = [\"greet\"]\n",
        up.addr
    )
}

async fn load_error(body: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(dir.path(), "", body, &[]);
    match weir::Gateway::load(dir.path().join("gateway.toml")).await {
        Ok(_) => panic!("loaded:\n{body}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_module_serves_by_tag_and_by_digest_and_starts_offline_when_pinned() {
    let mut registry = Registry::start();
    let up = Upstream::start("backend").await;
    let tag = registry.reference("weir/add-header:1.0");
    let (manifest, sha) = push("add_header.wasm", &tag);
    assert_eq!(sha, weir_plugin_host::sha256_hex(&std::fs::read(fixture("add_header.wasm")).expect("module")));

    // By tag: resolved at load, the digest shown.
    let gw = TestGateway::start(&config(&up, &tag, ""), &[]).await;
    assert_eq!(gw.get("/").await.seen("x-oci").as_deref(), Some("pulled"));
    let plugins = gw.client.get(&format!("{}/admin/plugins", gw.admin)).await.expect("admin").json();
    let p = &plugins["plugins"][0];
    assert_eq!(p["module"], tag.as_str());
    assert_eq!(p["sha256"], sha.as_str());
    let resolved = format!("oci://{}/weir/add-header@{manifest}", registry.addr);
    assert_eq!(p["resolved"], resolved.as_str(), "{p}");
    let status = gw.status().await;
    assert_eq!(status["plugins"][0]["resolved"], resolved.as_str());
    gw.shutdown().await;

    // Pinned by digest, with the registry gone: from the cache.
    registry.stop();
    let pinned = config(&up, &resolved, &format!("sha256 = \"{sha}\"\n"));
    let gw = TestGateway::start(&pinned, &[]).await;
    assert_eq!(gw.get("/").await.seen("x-oci").as_deref(), Some("pulled"));

    // A tag cannot be resolved without the registry: the reload is refused,
    // naming the plugin and the reference, and the pinned config serves on.
    gw.write_config(&config(&up, &tag, ""));
    let error = gw.wait_reload_error().await;
    assert!(error.contains("plugin `greet`") && error.contains(&tag) && error.contains("unreachable"), "{error}");
    assert_eq!(gw.get("/").await.seen("x-oci").as_deref(), Some("pulled"));
    // A pin that does not match the module is refused too.
    gw.write_config(&config(&up, &resolved, &format!("sha256 = \"{}\"\n", "0".repeat(64))));
    let error = wait_for_new_error(&gw, &error).await;
    assert!(error.contains("plugin `greet`") && error.contains("does not match the pinned"), "{error}");
    gw.shutdown().await;
}

async fn wait_for_new_error(gw: &TestGateway, old: &str) -> String {
    weir_tests::wait_for(std::time::Duration::from_secs(10), || async {
        gw.status().await["last_reload_error"].as_str().filter(|e| *e != old).map(str::to_owned)
    })
    .await
    .expect("a new reload error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registry_modules_are_refused_with_the_plugin_and_the_reason() {
    let registry = Registry::start();
    let up = Upstream::start("backend").await;
    // Not in the registry.
    let missing = registry.reference("weir/nothing:1");
    let error = load_error(&config(&up, &missing, "")).await;
    assert!(error.contains("plugin `greet`") && error.contains("not found"), "{error}");
    // Plain HTTP to a registry that is not on loopback (no connection made).
    let error = load_error(&config(&up, "oci://10.1.2.3:5000/weir/x:1", "")).await;
    assert!(error.contains("plugin `greet`") && error.contains("only allowed for loopback"), "{error}");
    // Not a reference.
    let error = load_error(&config(&up, "oci://", "")).await;
    assert!(error.contains("plugin `greet`") && error.contains("invalid OCI reference"), "{error}");
    // `registry` on a file module.
    let error = load_error(&config(&up, "add_header.wasm", "")).await;
    assert!(error.contains("`registry` applies to oci:// modules only"), "{error}");
    // Something that is not a weir plugin is not pushed.
    let out = Command::new(weir_binary())
        .args(["plugin", "push"])
        .arg(weir_tests::workspace_root().join("README.md"))
        .args([registry.reference("weir/readme:1").as_str(), "--insecure"])
        .output()
        .expect("run weir");
    assert!(!out.status.success());
}
