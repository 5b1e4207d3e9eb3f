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
    eprintln!("four refused modules (FIFO, /dev/zero, link out, 65 MiB): the process grew by {grown} KiB");
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
        .env("XDG_STATE_HOME", dir.path().join("xdg-state"))
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
    raw_upstream_with(move |_| vec![answer.clone()]).await
}

/// An upstream that reads a request head and answers with the pieces
/// `answer(path)` gives, raw, 100 ms apart, then closes.
async fn raw_upstream_with(answer: impl Fn(&str) -> Vec<Vec<u8>> + Send + Sync + 'static) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                for (i, piece) in answer(&path).into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if conn.write_all(&piece).await.is_err() {
                        return;
                    }
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// A raw `GET path` to `addr` with `Connection: close`; everything the
/// gateway sent until it closed.
async fn raw_get(addr: &str, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect to the gateway");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "GET {path}: the gateway neither answered nor closed in 10 s");
    all
}

/// What a client got, read the way a client must read it.
#[derive(Debug)]
struct Received {
    status: u16,
    body: Vec<u8>,
    /// The body ended as its framing says (length reached, last chunk).
    complete: bool,
}

/// Parse a reply and check the properties a client relies on: a status
/// line always; never `101` to a plain GET; never both a length and a
/// transfer coding; no more body than the length says; chunks that
/// decode. A reply cut short is allowed (that is a clean abort: the
/// connection closed before the framing was satisfied).
fn received(what: &str, raw: &[u8]) -> Received {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(at)) = resp.parse(raw) else {
        panic!("{what}: no status line, the client got {:?}", String::from_utf8_lossy(raw));
    };
    let status = resp.code.expect("a status");
    assert_ne!(status, 101, "{what}: 101 to a request that did not ask to upgrade");
    let header = |name: &str| {
        resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
    };
    let (length, coding) = (header("content-length"), header("transfer-encoding"));
    assert!(length.is_none() || coding.is_none(), "{what}: both Content-Length and Transfer-Encoding");
    let rest = &raw[at..];
    if let Some(length) = length {
        let n: usize = length.trim().parse().unwrap_or_else(|_| panic!("{what}: Content-Length {length:?}"));
        assert!(rest.len() <= n, "{what}: {} body bytes after Content-Length {n}", rest.len());
        return Received { status, body: rest.to_vec(), complete: rest.len() == n };
    }
    if let Some(coding) = coding {
        assert_eq!(coding.trim(), "chunked", "{what}: a transfer coding the gateway does not send");
        let (mut body, mut at) = (Vec::new(), 0);
        loop {
            let Some(end) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                return Received { status, body, complete: false };
            };
            let line = std::str::from_utf8(&rest[at..at + end]).expect("chunk size line");
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("{what}: chunk size {line:?}"));
            at += end + 2;
            if size == 0 {
                return Received { status, body, complete: true };
            }
            if rest.len() < at + size + 2 {
                body.extend_from_slice(&rest[at.min(rest.len())..]);
                return Received { status, body, complete: false };
            }
            body.extend_from_slice(&rest[at..at + size]);
            assert_eq!(&rest[at + size..at + size + 2], b"\r\n", "{what}: chunk not followed by CRLF");
            at += size + 2;
        }
    }
    Received { status, body: rest.to_vec(), complete: true }
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

/// Every malformed answer in the response fuzz corpus, served raw by a real
/// upstream and read raw by a client: each gets a status line and framing a
/// client can trust; the ones the issue found are `502`; well-formed ones
/// pass whole. A chunk that breaks after the head was sent is a clean
/// abort: the connection closes before the last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_malformed_response_corpus_gets_a_502_or_a_clean_abort() {
    let dir = weir_tests::workspace_root().join("fuzz/corpus/upstream_response");
    let mut corpus = std::collections::HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("corpus") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
        corpus.insert(format!("/{name}"), std::fs::read(&path).expect("read"));
    }
    let answers = corpus.clone();
    let addr = raw_upstream_with(move |path| {
        if path == "/late_broken_chunk" {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec();
            return vec![head, b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n".to_vec()];
        }
        vec![answers.get(path).cloned().unwrap_or_default()]
    })
    .await;
    // No retries: each answer is judged as it came.
    let body = format!(
        "[upstreams.up]\ntargets = [\"{addr}\"]\nretry = {{ tries = 1 }}\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n"
    );
    let gw = TestGateway::start(&body, &[]).await;
    let proxy = gw.url.trim_start_matches("http://").to_owned();
    let mut outcomes = Vec::new();
    let mut names: Vec<_> = corpus.keys().cloned().collect();
    names.sort();
    for path in &names {
        let got = received(path, &raw_get(&proxy, path).await);
        outcomes.push(format!("{path}: {} {}", got.status, if got.complete { "whole" } else { "cut" }));
        let must_fail = [
            "/te_and_cl",
            "/te_gzip_and_cl",
            "/te_gzip_only",
            "/te_chunked_twice",
            "/status_600",
            "/unasked_101",
            "/head_200kb",
            "/chunk_size_overflow",
            "/chunk_size_not_hex",
            "/length_twice_differing",
            "/not_http",
            "/empty",
        ];
        if must_fail.contains(&path.as_str()) {
            assert_eq!(got.status, 502, "{path}");
            let json: serde_json::Value = serde_json::from_slice(&got.body).expect("the gateway's JSON error");
            assert!(json["error"].is_string(), "{path}: {json}");
        }
        if path.starts_with("/ok_") {
            assert_eq!(got.status, 200, "{path}");
            assert!(got.complete, "{path}");
        }
    }
    let refused = outcomes.iter().filter(|o| o.contains(": 502 ")).count();
    let cut = outcomes.iter().filter(|o| o.ends_with(" cut")).count();
    eprintln!("{} answers replayed: {refused} became 502, {cut} were cut short (clean aborts)", outcomes.len());
    // Broken after the head went out: the status stands, the body stops
    // short of its last chunk, and the connection closes.
    let got = received("late", &raw_get(&proxy, "/late_broken_chunk").await);
    assert_eq!((got.status, got.body.as_slice(), got.complete), (200, &b"abc"[..], false));
    gw.shutdown().await;
}

/// A raw HTTP/1.1 request on a connection of its own (from `source`, a
/// loopback address, when given), asking the echo upstream to take
/// `delay_ms`; everything the gateway sent until it closed.
async fn raw_request(proxy: &str, source: Option<&str>, delay_ms: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = connect_from(proxy, source).await;
    let request = format!("GET /slow HTTP/1.1\r\nHost: test\r\nx-delay-ms: {delay_ms}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).await.is_err() {
        return Vec::new();
    }
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut all)).await;
    all
}

async fn connect_from(proxy: &str, source: Option<&str>) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = proxy.parse().expect("proxy address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(ip) = source {
        socket.bind(format!("{ip}:0").parse().expect("source")).expect("bind the source address");
    }
    socket.connect(addr).await.expect("connect to the gateway")
}

/// Whether the gateway closed `conn` within `within` (a read sees the end).
async fn closed_by_gateway(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(within, conn.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

fn shed_count(metrics: &str, reason: &str) -> u64 {
    let line = format!("weir_connections_shed_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&line)).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Class 5: at `max_connections`, silent connections make room for a real
/// client at once (before: it waited in the kernel's queue for the whole
/// header timeout), oldest first; connections with a request in flight are
/// never shed, so then a newcomer waits for one to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_silent_connections_make_room_and_busy_ones_stay() {
    let up = Upstream::start("up").await;
    let body = format!("[upstreams.up]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr);
    let gw = TestGateway::start_with_server("header_read_timeout = \"30s\"\nmax_connections = 20", &body).await;
    let proxy = gw.url.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from(&proxy, None).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let reply = received("at the cap", &raw_request(&proxy, None, 0).await);
    let waited = started.elapsed();
    eprintln!("a client at a cap of 20 silent connections was served in {waited:?}");
    assert_eq!(reply.status, 200);
    assert!(waited < Duration::from_secs(5), "served after {waited:?}: it waited for the header timeout");
    assert!(closed_by_gateway(&mut silent[0], Duration::from_secs(2)).await, "the oldest silent connection was shed");
    assert!(!closed_by_gateway(&mut silent[19], Duration::from_millis(200)).await, "the newest is kept");
    assert!(shed_count(&gw.metrics().await, "max_connections") >= 1);
    drop(silent);
    gw.shutdown().await;

    // Five requests in flight fill a cap of five: none is shed, and a sixth
    // client is served when one of them is done.
    let gw = TestGateway::start_with_server("max_connections = 5", &body).await;
    let proxy = gw.url.trim_start_matches("http://").to_owned();
    let busy: Vec<_> = (0..5)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { raw_request(&proxy, None, 1500).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let late = received("sixth", &raw_request(&proxy, None, 0).await);
    let waited = started.elapsed();
    assert_eq!(late.status, 200);
    assert!(waited > Duration::from_millis(800), "the sixth was let in after {waited:?}, before a slot was free");
    for b in busy {
        assert_eq!(received("busy", &b.await.expect("task")).status, 200, "a request in flight was cut");
    }
    assert_eq!(shed_count(&gw.metrics().await, "max_connections"), 0);
    gw.shutdown().await;
}

/// Class 5, per address: at `max_connections_per_ip` a client's own
/// oldest silent connection makes room; when all of its connections are
/// busy, its newcomer is closed at once, while another address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_caps_shed_the_clients_own_silent_connections_then_refuse_it() {
    let up = Upstream::start("up").await;
    let body = format!("[upstreams.up]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr);
    let gw = TestGateway::start_with_server("header_read_timeout = \"30s\"\nmax_connections_per_ip = 3", &body).await;
    let proxy = gw.url.trim_start_matches("http://").to_owned();
    let mut other = connect_from(&proxy, Some("127.0.0.2")).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(&proxy, Some("127.0.0.1")).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = received("fourth", &raw_request(&proxy, Some("127.0.0.1"), 0).await);
    assert_eq!(reply.status, 200);
    assert!(closed_by_gateway(&mut silent[0], Duration::from_secs(2)).await, "its oldest silent connection went");
    assert!(!closed_by_gateway(&mut other, Duration::from_millis(200)).await, "another address's was kept");
    assert!(shed_count(&gw.metrics().await, "per_ip") >= 1);
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Three requests in flight from 127.0.0.1: its fourth connection is
    // closed unanswered, 127.0.0.3 is served.
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { raw_request(&proxy, Some("127.0.0.1"), 1500).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = raw_request(&proxy, Some("127.0.0.1"), 0).await;
    assert!(refused.is_empty(), "answered: {:?}", String::from_utf8_lossy(&refused));
    assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());
    let elsewhere = received("another address", &raw_request(&proxy, Some("127.0.0.3"), 0).await);
    assert_eq!(elsewhere.status, 200);
    for b in busy {
        assert_eq!(received("busy", &b.await.expect("task")).status, 200);
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("weir_connections_refused_total{reason=\"per_ip\"}"), "{metrics}");
    gw.shutdown().await;
}
