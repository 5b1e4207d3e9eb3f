//! Hardening II, module files: no file in the plugins folder can stall the
//! gateway or grow its memory. A FIFO nobody writes to, a symlink to
//! `/dev/zero`, a symlink out of the folder and a module over
//! `[runtime] max_module_size` are each refused with the file named, at
//! `weir check` and on reload, while the last good snapshot serves and the
//! admin API answers at once; a symlink that stays inside the folder (the
//! Kubernetes ConfigMap layout) loads.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_tests::{TestGateway, Upstream, fixture, free_port, rss_kib, weir_binary};

fn body(upstream: &str, module: &str) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{upstream}\"]\n\n[plugins.greet]\nmodule = \"{module}\"\n\
         config = {{ name = \"x-greeting\", value = \"hello\" }}\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"up\"\nchain = [\"greet\"]\n"
    )
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Point the config at `module` and wait for the reload to be refused;
/// meanwhile the proxy and the admin API keep answering promptly.
async fn refused(gw: &TestGateway, upstream: &str, module: &str, expect: &str) {
    let generation = gw.status().await["generation"].as_u64().expect("generation");
    gw.write_config(&body(upstream, module));
    let err = gw.wait_reload_error().await;
    assert!(err.contains("plugin `greet`: ") && err.contains(expect), "{module}: {err}");
    let started = Instant::now();
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"), "the old snapshot serves");
    let status = gw.status().await;
    assert_eq!(status["generation"].as_u64(), Some(generation), "nothing was published");
    assert!(started.elapsed() < Duration::from_secs(2), "proxy and admin answered in {:?}", started.elapsed());
    // Back to the good module (a new generation, the error cleared), so
    // the next refusal is a new error.
    gw.write_config(&body(upstream, "add_header.wasm"));
    gw.wait_generation(generation + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_devices_links_out_and_huge_modules_are_refused_while_the_gateway_serves() {
    let up = Upstream::start("up").await;
    let addr = up.addr.to_string();
    let gw = TestGateway::start(&body(&addr, "add_header.wasm"), &["add_header.wasm"]).await;
    let dir = gw.plugins_dir();
    let rss_before = rss_kib();

    mkfifo(&dir.join("fifo.wasm"));
    refused(&gw, &addr, "fifo.wasm", "fifo.wasm is a FIFO, not a regular file").await;

    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.wasm")).expect("symlink");
    refused(&gw, &addr, "zero.wasm", "zero.wasm resolves to /dev/zero, outside").await;

    let outside = gw.dir.path().join("outside.wasm");
    std::fs::copy(fixture("add_header.wasm"), &outside).expect("copy");
    std::os::unix::fs::symlink(&outside, dir.join("out.wasm")).expect("symlink");
    refused(&gw, &addr, "out.wasm", "out.wasm resolves to").await;

    // A sparse 65 MiB file: over the 64 MiB default, refused from its size
    // without reading it.
    let huge = std::fs::File::create(dir.join("huge.wasm")).expect("create");
    huge.set_len(65 << 20).expect("set_len");
    refused(&gw, &addr, "huge.wasm", "more than the 67108864-byte limit").await;

    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "the process grew by {grown} KiB");

    // A ConfigMap-style link inside the folder loads:
    // plugins/cm.wasm -> ..data/cm.wasm -> ..2026_12_07/cm.wasm
    std::fs::create_dir(dir.join("..2026_12_07")).expect("mkdir");
    std::fs::copy(fixture("add_header.wasm"), dir.join("..2026_12_07/cm.wasm")).expect("copy");
    std::os::unix::fs::symlink("..2026_12_07", dir.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/cm.wasm", dir.join("cm.wasm")).expect("symlink");
    let generation = gw.status().await["generation"].as_u64().expect("generation");
    gw.write_config(&body(&addr, "cm.wasm"));
    gw.wait_generation(generation + 1).await;
    assert_eq!(gw.get("/").await.seen("x-greeting").as_deref(), Some("hello"));
}

#[test]
fn weir_check_refuses_a_fifo_module_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    TestGateway::prepare(dir.path(), "", &body("127.0.0.1:9", "fifo.wasm"), &[]);
    mkfifo(&dir.path().join("plugins/fifo.wasm"));
    let weir = weir_binary();
    let started = Instant::now();
    let out = Command::new(weir)
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("run weir check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plugin `greet`:") && stderr.contains("fifo.wasm is a FIFO, not a regular file"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "weir check took {:?}", started.elapsed());
}

/// CPU time the process `pid` has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptor_exhaustion_backs_off_instead_of_spinning() {
    let up = Upstream::start("up").await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nplugins_dir = \"plugins\"\n\
         header_read_timeout = \"30s\"\n\n[upstreams.up]\ntargets = [\"{}\"]\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"up\"\n",
        up.addr
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    // 96 descriptors in all: the runtime, listeners and logs take some,
    // idle clients the rest.
    let mut child = Command::new("prlimit")
        .arg("--nofile=96:96")
        .arg(weir_binary())
        .args(["run", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn weir under prlimit");
    let client = weir_tests::Client::new();
    let url = format!("http://127.0.0.1:{port}/");
    let ready = weir_tests::wait_for(Duration::from_secs(20), || async { client.get(&url).await.ok() }).await;
    assert_eq!(ready.expect("weir answered").status, 200);

    // Idle connections that never send a byte, more than the descriptors
    // left: accept() fails with EMFILE while they are open.
    let idle: Vec<std::net::TcpStream> =
        (0..150).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    assert!(idle.len() > 100, "{} idle connections", idle.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(child.id()) - before;
    eprintln!("descriptors exhausted: {used} ticks of CPU in 2 s");
    // A spinning accept loop burns a whole core: ~200 ticks in 2 s.
    assert!(used < 60, "the gateway used {used} ticks of CPU in 2 s with its descriptors exhausted");

    // Descriptors back: requests are served again, and the refusals counted.
    drop(idle);
    let served = weir_tests::wait_for(Duration::from_secs(10), || async { client.get(&url).await.ok() }).await;
    assert_eq!(served.expect("served after the idle clients left").status, 200);
    let metrics = client.get(&format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics").text();
    assert!(metrics.contains("weir_accept_errors_total{kind=\"fd_exhausted\"}"), "{metrics}");
    let _ = child.kill();
    let _ = child.wait();
}

/// An upstream that answers every request with `answer`, raw, then closes.
async fn raw_upstream(answer: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // Read the request head, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_answers_become_502_never_a_wrong_length() {
    let answers: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "length and chunked",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            "both Transfer-Encoding and Content-Length",
        ),
        (
            "gzip with a length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_vec(),
            "both Transfer-Encoding and Content-Length",
        ),
        (
            "an unasked 101",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec(),
            "did not ask to upgrade",
        ),
        (
            "200 KB of headers",
            {
                let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
                for i in 0..40 {
                    a.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(5000)).as_bytes());
                }
                a.extend_from_slice(b"\r\nok");
                a
            },
            "over the 65536-byte limit",
        ),
    ];
    for (what, answer, expect) in answers {
        let addr = raw_upstream(answer).await;
        let body = format!("[upstreams.up]\ntargets = [\"{addr}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n");
        let gw = TestGateway::start(&body, &[]).await;
        let reply = gw.get("/").await;
        assert_eq!(reply.status, 502, "{what}: {}", reply.text());
        let error = reply.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(expect), "{what}: {error}");
        gw.shutdown().await;
    }
    // A well-formed answer through the same kind of upstream passes.
    let addr = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let body = format!("[upstreams.up]\ntargets = [\"{addr}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n");
    let gw = TestGateway::start(&body, &[]).await;
    let reply = gw.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
}
