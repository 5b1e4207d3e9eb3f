//! The `weir` binary: `check` and `run` as a real process.

use std::process::{Command, Stdio};
use std::time::Duration;

use weir_tests::{Upstream, fixture, weir_binary};

fn prepare(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    std::fs::copy(fixture("add_header.wasm"), dir.path().join("plugins/add_header.wasm")).expect("copy");
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    dir
}

/// `weir run` on `dir`'s config, as a real process.
fn spawn_run(dir: &tempfile::TempDir) -> std::process::Child {
    spawn_run_with(dir, &[])
}

/// `weir run` with further arguments.
fn spawn_run_with(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Child {
    Command::new(weir_binary())
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .env("XDG_STATE_HOME", dir.path().join("xdg-state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir")
}

/// Wait up to `within` for `child` to exit, and check it exited 0.
async fn exits_cleanly(child: &mut std::process::Child, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

fn sigterm(child: &std::process::Child) {
    let kill = format!("kill -TERM {}", child.id());
    assert!(Command::new("sh").args(["-c", &kill]).status().expect("sh").success());
}

const GOOD: &str = r#"[server]
listen = "LISTEN"
admin_listen = "127.0.0.1:0"
plugins_dir = "plugins"

[upstreams.users]
targets = ["UPSTREAM"]

[plugins.greet]
module = "add_header.wasm"
config = { name = "x-greeting", value = "hello" }
failure = "closed"
limits = { memory = "16MiB", deadline = "50ms" }

[[routes]]
name = "users"
path_prefix = "/users"
methods = ["GET", "POST"]
upstream = "users"
chain = ["greet"]
"#;

#[test]
fn check_accepts_good_and_lists_every_error() {
    let dir = prepare(&GOOD.replace("LISTEN", "127.0.0.1:0").replace("UPSTREAM", "127.0.0.1:9"));
    let out = Command::new(weir_binary())
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok (1 routes, 1 upstreams, 1 plugins)"), "{stdout}");

    let bad = GOOD
        .replace("LISTEN", "127.0.0.1:0")
        .replace("UPSTREAM", "nowhere")
        .replace("add_header.wasm", "missing.wasm")
        .replace("upstream = \"users\"", "upstream = \"userz\"");
    let dir = prepare(&bad);
    let out = Command::new(weir_binary())
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("gateway.toml:7: upstream `users`: target \"nowhere\" needs a port"), "{stderr}");
    assert!(stderr.contains("gateway.toml:10: plugin `greet`: cannot read"), "{stderr}");
    assert!(stderr.contains("gateway.toml:19: route `users`: unknown upstream `userz`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_drains_on_sigterm() {
    let up = Upstream::start("users").await;
    let port = weir_tests::free_port();
    let dir = prepare(&GOOD.replace("LISTEN", &format!("127.0.0.1:{port}")).replace("UPSTREAM", &up.addr.to_string()));
    let mut child = spawn_run(&dir);
    let client = weir_tests::Client::new();
    let url = format!("http://127.0.0.1:{port}/users/1");
    let reply = weir_tests::wait_for(Duration::from_secs(20), || async { client.get(&url).await.ok() }).await;
    let reply = reply.expect("weir answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.seen("x-greeting").as_deref(), Some("hello"));

    // SIGTERM: exits cleanly.
    sigterm(&child);
    exits_cleanly(&mut child, Duration::from_secs(10), "weir exits after SIGTERM").await;
}

#[test]
fn compile_cache_is_private_and_filled() {
    let config = GOOD
        .replace("LISTEN", "127.0.0.1:0")
        .replace("UPSTREAM", "127.0.0.1:9")
        .replace("plugins_dir = \"plugins\"\n", "plugins_dir = \"plugins\"\n\n[runtime]\ncompile_cache = \"cache\"\n");
    let dir = prepare(&config);
    // A relative config path: the cache folder is still found (wasmtime
    // wants it absolute).
    let out = Command::new(weir_binary())
        .current_dir(dir.path())
        .args(["check", "--config", "gateway.toml"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("absolute"), "{}", String::from_utf8_lossy(&out.stderr));
    let cache = dir.path().join("cache");
    let files = walk(&cache);
    assert!(!files.is_empty(), "a compiled module is cached in {}", cache.display());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).expect("cache dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache holds native code: private");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_100_slow_requests_finish_and_refuses_new_connections() {
    drain_100_slow_requests(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_workers_drain_the_same_way() {
    drain_100_slow_requests(&["--workers", "2", "--reuse-port"]).await;
}

async fn drain_100_slow_requests(args: &[&str]) {
    let up = Upstream::start("users").await;
    let free = weir_tests::free_port;
    let (port, admin) = (free(), free());
    let config =
        GOOD.replace("LISTEN", &format!("127.0.0.1:{port}")).replace("UPSTREAM", &up.addr.to_string()).replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\"\ndrain_timeout = \"5s\""),
        );
    let dir = prepare(&config);
    let mut child = spawn_run_with(&dir, args);
    let client = weir_tests::Client::new();
    let url = format!("http://127.0.0.1:{port}/users/1");
    weir_tests::wait_for(Duration::from_secs(20), || async { client.get(&url).await.ok() })
        .await
        .expect("weir answered");

    // 100 requests the upstream answers after 1.5 s, each on its own
    // connection.
    let slow: Vec<_> = (0..100)
        .map(|i| {
            let url = format!("http://127.0.0.1:{port}/users/{i}");
            tokio::spawn(async move {
                weir_tests::Client::new().request(http::Method::GET, &url, &[("x-delay-ms", "1500")], "").await
            })
        })
        .collect();
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let all_in = weir_tests::wait_for(Duration::from_secs(10), || async {
        let m = client.get(&metrics).await.ok()?.text();
        m.contains("weir_route_in_flight{route=\"users\"} 100").then_some(())
    })
    .await;
    assert!(all_in.is_some(), "100 requests in flight");

    let stopped = std::time::Instant::now();
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "new connections are refused while draining"
    );
    for t in slow {
        let r = t.await.expect("task").expect("an in-flight request completes");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"), "HTTP/1 answers during the drain close their connection");
    }
    exits_cleanly(
        &mut child,
        Duration::from_secs(6).saturating_sub(stopped.elapsed()),
        "weir exits within the 5 s drain timeout",
    )
    .await;
    println!("drain {args:?}: 100 in-flight requests completed, exit after {:?}", stopped.elapsed());
}

/// `--workers 2 --reuse-port`: two event loops on threads of their own,
/// each with its own listener; the kernel spreads connections over both,
/// and requests through either reach the upstream over that worker's pooled
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_workers_each_accept_and_serve() {
    let up = Upstream::start("users").await;
    let free = weir_tests::free_port;
    let (port, admin) = (free(), free());
    let config = GOOD
        .replace("LISTEN", &format!("127.0.0.1:{port}"))
        .replace("UPSTREAM", &up.addr.to_string())
        .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"127.0.0.1:{admin}\""));
    let dir = prepare(&config);
    let mut child = spawn_run_with(&dir, &["--workers", "2", "--reuse-port"]);
    let url = format!("http://127.0.0.1:{port}/users/1");
    weir_tests::wait_for(Duration::from_secs(20), || async { weir_tests::Client::new().get(&url).await.ok() })
        .await
        .expect("weir answered");
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.contains(&"weir-worker-0".to_owned()) && names.contains(&"weir-worker-1".to_owned()), "{names:?}");

    // Forty connections, one request each.
    for i in 0..40 {
        let r = weir_tests::Client::new().get(&format!("http://127.0.0.1:{port}/users/{i}")).await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.seen("x-greeting").as_deref(), Some("hello"));
    }
    let metrics =
        weir_tests::Client::new().get(&format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text();
    let accepted = |w: &str| -> u64 {
        let key = format!("weir_connections_accepted_total{{worker=\"{w}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let (a, b) = (accepted("0"), accepted("1"));
    assert!(a > 0 && b > 0 && a + b >= 41, "accepted by worker: {a} and {b}\n{metrics}");
    // Each worker reaches the upstream over connections of its own.
    assert!(up.connections() >= 2, "{} upstream connections", up.connections());

    sigterm(&child);
    exits_cleanly(&mut child, Duration::from_secs(10), "weir exits after SIGTERM").await;
}
