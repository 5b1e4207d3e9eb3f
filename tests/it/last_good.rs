//! Hardening II, a restart after a bad edit: `weir run` saves every
//! published snapshot (config text and modules) in its state folder, and a
//! restart while a broken config is on disk starts from that last good
//! state, says so loudly (log, `/admin/status`, a metric) and keeps
//! watching the file; `--strict` refuses to start instead; a state folder
//! that is corrupt or cannot be written is a message, never a crash.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use weir_tests::{Client, Upstream, fixture, free_port, wait_for, weir_binary};

/// A gateway config on fixed ports whose plugin adds `x-greeting: VALUE`
/// upstream, with its state in `state/`.
fn config(port: u16, admin: u16, upstream: &str, value: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nplugins_dir = \"plugins\"\n\
         state_dir = \"state\"\n\n[upstreams.up]\ntargets = [\"{upstream}\"]\n\n\
         [plugins.greet]\nmodule = \"add_header.wasm\"\nconfig = {{ name = \"x-greeting\", value = \"{value}\" }}\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [\"greet\"]\n"
    )
}

fn weir(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(weir_binary());
    cmd.args(["run", "--config"]).arg(dir.join("gateway.toml")).args(extra);
    // Nothing of these runs lands in the real home's state folder.
    cmd.env("XDG_STATE_HOME", dir.join("xdg-state"));
    cmd
}

fn spawn(dir: &Path, extra: &[&str]) -> Child {
    weir(dir, extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn weir")
}

/// `weir run` that must exit by itself (it refuses to start) within 20 s.
fn refused(dir: &Path, extra: &[&str]) -> Output {
    let mut child = weir(dir, extra).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn weir");
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("weir run {extra:?} kept running: it should have refused to start");
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn status(client: &Client, admin: u16) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || async {
        client.get(&format!("http://127.0.0.1:{admin}/admin/status")).await.ok().map(|r| r.json())
    })
    .await
    .expect("the admin API answered")
}

/// A folder with `plugins/add_header.wasm`, for a config to be written.
fn prepared() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("plugins")).expect("mkdir");
    std::fs::copy(fixture("add_header.wasm"), tmp.path().join("plugins/add_header.wasm")).expect("copy");
    tmp
}

async fn greeting(client: &Client, port: u16) -> Option<String> {
    client.get(&format!("http://127.0.0.1:{port}/")).await.expect("proxy").seen("x-greeting")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_broken_config_on_disk_serves_the_last_good_one() {
    let up = Upstream::start("up").await;
    let (port, admin) = (free_port(), free_port());
    let tmp = prepared();
    let dir = tmp.path();
    std::fs::write(dir.join("gateway.toml"), config(port, admin, &up.addr.to_string(), "v1")).expect("write");
    let client = Client::new();

    // A good start is saved.
    let child = spawn(dir, &[]);
    let s = status(&client, admin).await;
    assert_eq!(s["serving_last_good"], false, "{s}");
    assert_eq!(s["last_good"]["saved_generation"], 1, "{s}");
    assert_eq!(greeting(&client, port).await.as_deref(), Some("v1"));
    kill(child); // SIGKILL: no chance to save anything more.

    // A bad edit lands while it is down: a TOML syntax error, and the
    // module deleted.
    let broken = config(port, admin, &up.addr.to_string(), "v1").replace("[[routes]]", "[[routes]");
    std::fs::write(dir.join("gateway.toml"), &broken).expect("break");
    std::fs::remove_file(dir.join("plugins/add_header.wasm")).expect("rm module");

    // --strict refuses, naming the file and line; nothing else happens.
    let out = refused(dir, &["--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gateway.toml:14"), "{stderr}");
    assert!(!stderr.contains("LAST GOOD"), "{stderr}");

    // Without it, the last good state serves, module and all.
    let child = weir(dir, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn weir");
    let s = status(&client, admin).await;
    assert_eq!(s["serving_last_good"], true, "{s}");
    let error = s["last_reload_error"].as_str().unwrap_or_default();
    assert!(error.contains("gateway.toml:14"), "{error}");
    assert_eq!(greeting(&client, port).await.as_deref(), Some("v1"));
    let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text();
    assert!(metrics.contains("weir_serving_last_good 1"), "{metrics}");

    // Fixed on disk: the watcher loads it, and the fallback is over.
    std::fs::copy(fixture("add_header.wasm"), dir.join("plugins/add_header.wasm")).expect("copy");
    std::fs::write(dir.join("gateway.toml"), config(port, admin, &up.addr.to_string(), "v2")).expect("fix");
    let s = wait_for(Duration::from_secs(20), || async {
        let s = status(&client, admin).await;
        (s["serving_last_good"] == false).then_some(s)
    })
    .await
    .expect("the fixed config was loaded");
    assert_eq!(s["last_reload_error"], serde_json::Value::Null, "{s}");
    assert_eq!(s["last_good"]["saved_generation"], 2, "{s}");
    assert_eq!(greeting(&client, port).await.as_deref(), Some("v2"));
    let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text();
    assert!(metrics.contains("weir_serving_last_good 0"), "{metrics}");
    let mut child = child;
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("STARTING FROM THE LAST GOOD CONFIG"), "{log}");

    // Broken again, with the state folder corrupt too: a message naming
    // both, exit status 1, no panic.
    std::fs::write(dir.join("gateway.toml"), &broken).expect("break");
    std::fs::write(dir.join("state/last-good/manifest.json"), "{ torn").expect("corrupt");
    let out = refused(dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gateway.toml:14"), "{stderr}");
    assert!(stderr.contains("no last good state to start from") && stderr.contains("manifest.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_cannot_be_written_is_reported_and_serving_goes_on() {
    let up = Upstream::start("up").await;
    let (port, admin) = (free_port(), free_port());
    let tmp = prepared();
    let dir = tmp.path();
    // `state` is a file: nothing can be created under it.
    std::fs::write(dir.join("state"), "not a folder").expect("blocker");
    std::fs::write(dir.join("gateway.toml"), config(port, admin, &up.addr.to_string(), "v1")).expect("write");
    let client = Client::new();
    let child = spawn(dir, &[]);
    let s = status(&client, admin).await;
    let error = s["last_good"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot write") && error.contains("state"), "{s}");
    assert_eq!(greeting(&client, port).await.as_deref(), Some("v1"));
    let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text();
    assert!(metrics.contains("weir_last_good_saves_total{result=\"failure\"} 1"), "{metrics}");
    kill(child);
}
