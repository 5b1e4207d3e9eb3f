//! The flight recorder and `weir plugin replay`: a plugin that traps on a
//! particular header is recorded through the real gateway; replaying the
//! recording reproduces the trap, and the fixed build replays clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::Method;
use weir_tests::{TestGateway, Upstream, fixture, wait_for, weir_binary};

/// A route through `quota` (the buggy build), with the recorder on.
fn config(up: &Upstream, recorder: &str) -> String {
    format!(
        "[recorder]\n{recorder}\n\n\
         [upstreams.backend]\ntargets = [\"{}\"]\n\n\
         [plugins.quota]\nmodule = \"quota.wasm\"\nconfig = {{ header = \"x-quota\" }}\n\n\
         [plugins.tag]\nmodule = \"add_header.wasm\"\nconfig = {{ name = \"x-tag\", value = \"t\" }}\n\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"backend\"\nchain = [\"tag\", \"quota\"]\n",
        up.addr
    )
}

/// `weir plugin replay` with `args`: its exit code and output.
fn replay(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(weir_binary()).args(["plugin", "replay"]).args(args).output().expect("run weir");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn recordings(gw: &TestGateway, count: usize) -> serde_json::Value {
    wait_for(Duration::from_secs(10), || async {
        let list = gw.client.get(&format!("{}/admin/recordings", gw.admin)).await.ok()?.json();
        (list["recordings"].as_array()?.len() >= count).then_some(list)
    })
    .await
    .unwrap_or_else(|| panic!("{count} recordings not listed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_recorded_and_replays_against_the_buggy_and_the_fixed_module() {
    let up = Upstream::start("backend").await;
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(
        dir.path(),
        "",
        &config(&up, "max_body = \"1KiB\"\nredact_headers = [\"x-api-key\"]"),
        &["quota.wasm", "add_header.wasm"],
    );
    let gw = TestGateway::start_in(dir).await;

    // A number passes; the plugin traps on anything else.
    let ok = gw.request(Method::GET, "/orders", &[("x-quota", "5")], "").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.seen("x-quota-left").as_deref(), Some("4"));
    let trapped = gw
        .request(
            Method::GET,
            "/orders/7?full=1",
            &[("x-quota", "lots"), ("authorization", "Bearer s3cret"), ("x-api-key", "k-123")],
            "",
        )
        .await;
    assert_eq!(trapped.status, 500, "{}", trapped.text());

    // Listed, newest first, and readable whole.
    let list = recordings(&gw, 1).await;
    assert_eq!(list["enabled"], true);
    let listed = &list["recordings"][0];
    assert_eq!(listed["trigger"], "trap", "{list}");
    assert_eq!(listed["plugin"], "quota");
    assert_eq!(listed["phase"], "request");
    assert_eq!(listed["uri"], "/orders/7?full=1");
    let id = listed["id"].as_str().expect("id");
    let one = gw.client.get(&format!("{}/admin/recordings/{id}", gw.admin)).await.expect("recording");
    assert_eq!(one.status, 200);
    let rec = one.json();
    assert!(rec["outcome"].as_str().is_some_and(|o| o.contains("trapped")), "{rec}");
    assert_eq!(rec["plugin"]["module"], "quota.wasm");
    let sha = weir_plugin_host::sha256_hex(&std::fs::read(fixture("quota.wasm")).expect("module"));
    assert_eq!(rec["plugin"]["sha256"], sha.as_str());
    assert!(rec["plugin"]["config_sha256"].as_str().is_some_and(|s| s.len() == 64));
    // The head as it reached `quota`: after `tag` ran, credentials redacted.
    let headers = rec["request"]["headers"].as_array().expect("headers");
    let value =
        |name: &str| headers.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap_or_default().to_owned());
    assert_eq!(value("x-tag").as_deref(), Some("t"), "{rec}");
    assert_eq!(value("x-quota").as_deref(), Some("lots"));
    assert_eq!(value("authorization").as_deref(), Some("[redacted]"));
    assert_eq!(value("x-api-key").as_deref(), Some("[redacted]"));
    assert!(!rec.to_string().contains("s3cret") && !rec.to_string().contains("k-123"));
    assert_eq!(rec["redacted"], serde_json::json!(["authorization", "x-api-key"]));
    // Unknown and malformed ids are 404s, not paths.
    for bad in ["0000000000000-0000", "..%2Fgateway.toml", "x"] {
        let r = gw.client.get(&format!("{}/admin/recordings/{bad}", gw.admin)).await.expect("admin");
        assert_eq!(r.status, 404, "{bad}");
    }

    // The file the admin API served, saved as an operator would.
    let saved = tempfile::tempdir().expect("tempdir");
    let file = saved.path().join("trap.json");
    std::fs::write(&file, one.text()).expect("save recording");
    let config = gw.dir.path().join("gateway.toml");

    // Replay with the gateway's config: the same module, the same trap.
    let (code, out) = replay(&[file.as_os_str(), "--config".as_ref(), config.as_os_str()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("(the recorded module)") && out.contains("(the recorded config)"), "{out}");
    assert!(out.contains("replayed: plugin trapped"), "{out}");
    // The fixed build, given explicitly, replays clean: it answers 400.
    let fixed = fixture("quota_fixed.wasm");
    let (code, out) =
        replay(&[file.as_os_str(), "--config".as_ref(), config.as_os_str(), "--module".as_ref(), fixed.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not the recorded module"), "{out}");
    assert!(out.contains("replayed: respond 400") && out.contains("x-quota is not a number"), "{out}");
    // Without --config: the recorded limits and an empty config (the
    // plugin's defaults), still the trap.
    let buggy = fixture("quota.wasm");
    let (code, out) = replay(&[file.as_os_str(), "--module".as_ref(), buggy.as_os_str()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no --config given") && !out.contains("differs"), "{out}");

    // A clean replay of an edited head shows the edit.
    let edited = rec.to_string().replace("\"lots\"", "\"9\"");
    let edited_file = saved.path().join("edited.json");
    std::fs::write(&edited_file, edited).expect("write");
    let (code, out) = replay(&[edited_file.as_os_str(), "--module".as_ref(), buggy.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed: continue") && out.contains("request header set: x-quota-left: 8"), "{out}");

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_keeps_the_newest_and_5xx_is_recorded_when_asked() {
    let mut up = Upstream::start("backend").await;
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(
        dir.path(),
        "",
        &config(&up, "max_recordings = 3\non = [\"trap\", \"5xx\"]\nredact = false"),
        &["quota.wasm", "add_header.wasm"],
    );
    let gw = TestGateway::start_in(dir).await;
    for i in 0..5 {
        let r = gw
            .request(Method::GET, &format!("/n/{i}"), &[("x-quota", "NaN"), ("authorization", "Basic eA==")], "")
            .await;
        assert_eq!(r.status, 500);
    }
    // Writes are asynchronous: wait until the last one is listed.
    let list = wait_for(Duration::from_secs(10), || async {
        let list = gw.client.get(&format!("{}/admin/recordings", gw.admin)).await.ok()?.json();
        let first = list["recordings"][0]["uri"].as_str()? == "/n/4";
        (first && list["recordings"].as_array()?.len() == 3).then_some(list)
    })
    .await
    .expect("the newest three");
    let uris: Vec<&str> =
        list["recordings"].as_array().into_iter().flatten().filter_map(|r| r["uri"].as_str()).collect();
    assert_eq!(uris, ["/n/4", "/n/3", "/n/2"]);
    let files = std::fs::read_dir(gw.dir.path().join("recordings")).expect("dir").count();
    assert_eq!(files, 3, "the ring keeps max_recordings files");
    // redact = false keeps credentials.
    let id = list["recordings"][0]["id"].as_str().expect("id");
    let rec = gw.client.get(&format!("{}/admin/recordings/{id}", gw.admin)).await.expect("get").json();
    assert!(rec.to_string().contains("Basic eA=="), "{rec}");

    // The upstream down: the request ends 502, recorded as the chain
    // received it, with no plugin (replay then needs --plugin).
    up.kill();
    let r = gw.request(Method::GET, "/down", &[("x-quota", "3")], "").await;
    assert!(r.status.is_server_error(), "{}", r.status);
    let list = wait_for(Duration::from_secs(10), || async {
        let list = gw.client.get(&format!("{}/admin/recordings", gw.admin)).await.ok()?.json();
        (list["recordings"][0]["uri"].as_str()? == "/down").then_some(list)
    })
    .await
    .expect("the 5xx recorded");
    let listed = &list["recordings"][0];
    assert_eq!(listed["trigger"], "5xx");
    assert!(listed["plugin"].is_null());
    let id = listed["id"].as_str().expect("id");
    let file = recording_file(gw.dir.path(), id);
    let config = gw.dir.path().join("gateway.toml");
    let (code, out) = replay(&[file.as_os_str(), "--config".as_ref(), config.as_os_str()]);
    assert_eq!(code, 1, "no plugin named: {out}");
    assert!(out.contains("--plugin"), "{out}");
    let (code, out) =
        replay(&[file.as_os_str(), "--config".as_ref(), config.as_os_str(), "--plugin".as_ref(), "quota".as_ref()]);
    assert_eq!(code, 0, "{out}");
    // As the chain received it: before `tag` ran.
    assert!(out.contains("request header set: x-quota-left: 2"), "{out}");
    gw.shutdown().await;
}

fn recording_file(dir: &Path, id: &str) -> PathBuf {
    dir.join("recordings").join(format!("{id}.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_recorder_section_is_refused_with_its_reason() {
    let up = Upstream::start("backend").await;
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(
        dir.path(),
        "",
        &config(&up, "redact_headers = [\"bad header\"]"),
        &["quota.wasm", "add_header.wasm"],
    );
    let err = match weir::Gateway::load(dir.path().join("gateway.toml")).await {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("[recorder]: redact_headers: \"bad header\" is not a header name"), "{err}");
    TestGateway::prepare(dir.path(), "", &config(&up, "on = [\"sometimes\"]"), &[]);
    let err = match weir::Gateway::load(dir.path().join("gateway.toml")).await {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("sometimes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_overrun_and_refused_output_are_recorded_and_replay_as_such() {
    let up = Upstream::start("backend").await;
    for (mode, status, trigger, replayed) in [
        ("loop", 504, "deadline", "replayed: plugin exceeded its 20ms deadline"),
        // An answer whose header the gateway refuses: a failure of the
        // plugin, recorded as a trap (not as the 200 it claimed).
        ("invalid_header", 500, "trap", "the gateway refuses this answer"),
    ] {
        let body = format!(
            "[recorder]\n\n[upstreams.backend]\ntargets = [\"{}\"]\n\n\
             [plugins.spin]\nmodule = \"hostile.wasm\"\nconfig = {{ mode = \"{mode}\" }}\nlimits = {{ deadline = \"20ms\" }}\n\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"backend\"\nchain = [\"spin\"]\n",
            up.addr
        );
        let gw = TestGateway::start(&body, &["hostile.wasm"]).await;
        let r = gw.get("/spin").await;
        assert_eq!(r.status, status, "{mode}");
        let list = recordings(&gw, 1).await;
        let listed = &list["recordings"][0];
        assert_eq!(listed["trigger"], trigger, "{mode}: {list}");
        let id = listed["id"].as_str().expect("id");
        let rec = gw.client.get(&format!("{}/admin/recordings/{id}", gw.admin)).await.expect("get").json();
        assert_eq!(rec["plugin"]["deadline_ms"], 20);
        let file = recording_file(gw.dir.path(), id);
        let config = gw.dir.path().join("gateway.toml");
        let (code, out) = replay(&[file.as_os_str(), "--config".as_ref(), config.as_os_str()]);
        assert!(out.contains(replayed), "{mode}: {out}");
        assert_eq!(code, 3, "{mode}: {out}");
        gw.shutdown().await;
    }
}
