//! `weir plugin new`: each template scaffolded outside the repository,
//! tested natively with its own `cargo test`, built for `wasm32-wasip2`,
//! checked by `weir check` and served through a real gateway.

use std::path::{Path, PathBuf};
use std::process::Command;

use http::Method;
use weir_tests::{TestGateway, Upstream, cargo, weir_binary, workspace_root};

/// Where the scaffolded crates build: one folder for all, so the SDK and
/// its dependencies compile once.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("scaffold")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// Scaffold `name` from `template` into a temp dir, run its tests, build
/// its module; returns the temp dir and the module's path.
fn scaffold(name: &str, template: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sdk = workspace_root().join("plugin-sdk");
    let printed = run(
        Command::new(weir_binary())
            .args(["plugin", "new", name, "--template", template, "--dir"])
            .arg(dir.path())
            .arg("--sdk")
            .arg(&sdk),
        "weir plugin new",
    );
    assert!(printed.contains("next:") && printed.contains("cargo wasm"), "{printed}");
    let krate = dir.path().join(name);
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".cargo/config.toml", "gateway.snippet.toml"] {
        assert!(krate.join(file).is_file(), "{file} written");
    }
    // The workspace's lock file: the same dependency versions, so they are
    // built once and nothing is fetched that the workspace did not fetch.
    std::fs::copy(workspace_root().join("Cargo.lock"), krate.join("Cargo.lock")).expect("lock file");
    let tested = run(cargo().current_dir(&krate).env("CARGO_TARGET_DIR", target_dir()).arg("test"), "cargo test");
    let ran = tested.lines().any(|l| l.starts_with("test result: ok.") && !l.starts_with("test result: ok. 0 passed"));
    assert!(ran, "the crate's own tests ran:\n{tested}");
    run(cargo().current_dir(&krate).env("CARGO_TARGET_DIR", target_dir()).arg("wasm"), "cargo wasm");
    let module = target_dir().join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(module.is_file(), "{} built", module.display());
    (dir, module)
}

/// The snippet the scaffold wrote, with an upstream for its route; checked
/// by `weir check`, then served.
async fn serve(dir: &Path, name: &str, module: &Path, up: &Upstream) -> TestGateway {
    let snippet = std::fs::read_to_string(dir.join(name).join("gateway.snippet.toml")).expect("snippet");
    let body = format!("[upstreams.backend]\ntargets = [\"{}\"]\n\n{snippet}", up.addr);
    let gw_dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(gw_dir.path(), "", &body, &[]);
    std::fs::copy(module, gw_dir.path().join("plugins").join(module.file_name().expect("name"))).expect("copy module");
    let checked = run(
        Command::new(weir_binary()).args(["check", "--config"]).arg(gw_dir.path().join("gateway.toml")),
        "weir check",
    );
    assert!(checked.contains("ok (1 routes, 1 upstreams, 1 plugins)"), "{checked}");
    TestGateway::start_in(gw_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_template_scaffolds_tests_builds_and_serves() {
    let up = Upstream::start("backend").await;

    let (dir, module) = scaffold("hello-headers", "headers");
    let gw = serve(dir.path(), "hello-headers", &module, &up).await;
    let r = gw.get("/orders").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-hello").as_deref(), Some("world"), "{}", r.text());
    assert_eq!(r.header("x-served-by"), Some("hello-headers"));
    gw.shutdown().await;

    let (dir, module) = scaffold("key-check", "auth");
    let gw = serve(dir.path(), "key-check", &module, &up).await;
    let r = gw.get("/orders").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
    let r = gw.request(Method::GET, "/orders", &[("x-api-key", "k-123")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-client").as_deref(), Some("alice"));
    assert_eq!(r.seen("x-api-key"), None, "the key stops at the gateway");
    assert_eq!(gw.request(Method::GET, "/orders", &[("x-api-key", "nope")], "").await.status, 403);
    gw.shutdown().await;

    let (dir, module) = scaffold("body-check", "body");
    let gw = serve(dir.path(), "body-check", &module, &up).await;
    let r = gw.request(Method::POST, "/orders", &[("content-type", "application/json")], r#"{"id": "o-7"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen("x-id").as_deref(), Some("o-7"));
    assert_eq!(gw.request(Method::POST, "/orders", &[], "{}").await.status, 422);
    assert_eq!(gw.request(Method::POST, "/orders", &[], "not json").await.status, 400);
    gw.shutdown().await;
}

#[test]
fn bad_names_and_occupied_folders_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        Command::new(weir_binary()).args(["plugin", "new", "Bad Name", "--dir"]).arg(dir.path()).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"Bad Name\" is not a plugin name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::create_dir(dir.path().join("taken")).expect("mkdir");
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").expect("write");
    let out =
        Command::new(weir_binary()).args(["plugin", "new", "taken", "--dir"]).arg(dir.path()).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/keep.txt")).expect("read"),
        "mine",
        "nothing overwritten"
    );

    // Without --sdk the crate depends on the registry's SDK, at the contract's version.
    run(Command::new(weir_binary()).args(["plugin", "new", "fresh", "--dir"]).arg(dir.path()), "weir plugin new");
    let manifest = std::fs::read_to_string(dir.path().join("fresh/Cargo.toml")).expect("manifest");
    assert!(manifest.contains(&format!("weir-plugin-sdk = \"{}\"", weir::scaffold::sdk_version())), "{manifest}");
    assert!(weir::scaffold::sdk_version().starts_with("0.2."));
}
