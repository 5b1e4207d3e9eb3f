//! HTTP/2 abuse (issue 5, item 4) and HTTP/2 drain: a real h2 client
//! (Python's `h2`, tests/h2/abuse.py) writing frames by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weir_tests::{GatewayProcess, TestGateway, Upstream, workspace_root};

/// ENHANCE_YOUR_CALM, the GOAWAY code for a peer that abuses the protocol.
const ENHANCE_YOUR_CALM: u64 = 0xb;

fn abuse(addr: &str, mode: &str) -> tokio::process::Command {
    let (host, port) = addr.trim_start_matches("http://").split_once(':').expect("host:port");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(workspace_root().join("tests/h2/abuse.py")).args([host, port, mode, "100000"]);
    cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    cmd
}

async fn run(addr: &str, mode: &str) -> serde_json::Value {
    let out = abuse(addr, mode).output().await.expect("run tests/h2/abuse.py (needs Python's h2)");
    assert!(out.status.success(), "abuse.py {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_get_goaway_while_normal_traffic_carries_on() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(
        &format!("[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr),
        &[],
    )
    .await;
    // Normal traffic on its own connections all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), format!("{}/normal", gw.url));
            tokio::spawn(async move {
                let client = weir_tests::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for mode in ["rapid-reset", "continuation", "empty-data"] {
        let r = run(&gw.url, mode).await;
        eprintln!("{mode}: {r}");
        assert_eq!(r["closed"], true, "{mode}: the connection is closed: {r}");
        assert_eq!(r["goaway"], true, "{mode}: with a GOAWAY: {r}");
        // Resets and empty frames are refused as abuse; a CONTINUATION run
        // is cut when the header block passes the header list limit.
        let code = r["error_code"].as_u64();
        match mode {
            "continuation" => assert!(code.is_some_and(|c| c != 0), "{mode}: {r}"),
            _ => assert_eq!(code, Some(ENHANCE_YOUR_CALM), "{mode}: {r}"),
        }
        assert!(r["frames_sent"].as_u64() < Some(10_000), "{mode}: cut off early: {r}");
        assert_eq!(r["responses"], 0, "{mode}: nothing of it was served: {r}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("normal traffic during the floods: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 50);
    assert_eq!(up.hits(), ok, "no abusive request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_to_http2_clients_and_finishes_their_streams() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let up = Upstream::start("up").await;
    let mut gw = GatewayProcess::start(
        &format!("[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nupstream = \"up\"\n", up.addr),
        &[],
    )
    .await;
    let mut child = abuse(&gw.url, "goaway").spawn().expect("spawn abuse.py");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next_line().await.expect("read").as_deref(), Some("sent"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.sigterm();
    let last = lines.next_line().await.expect("read").expect("a result line");
    let r: serde_json::Value = serde_json::from_str(&last).expect("json");
    eprintln!("drain: {r}");
    assert_eq!(r["goaway"], true, "the server announced its shutdown: {r}");
    assert_eq!(r["error_code"], 0, "GOAWAY with NO_ERROR: {r}");
    assert_eq!(r["last_stream_id"], 1, "the in-flight stream is kept: {r}");
    assert_eq!(r["responses"], 1, "and it was answered: {r}");
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("weir exits after the drain");
    assert!(status.success(), "{status:?}\n{}", gw.log());
}
