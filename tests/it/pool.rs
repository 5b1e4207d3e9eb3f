//! The upstream connection pool: connections reused and counted, closed
//! when idle too long, past their age or beyond `max_idle`, shared over
//! HTTP/2, kept across a reload, and never used once the target closed
//! them. Against real upstream servers that count their connections.

use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{TestGateway, Upstream, wait_for};

fn config(up: &Upstream, extra: &str) -> String {
    format!(
        "[upstreams.svc]\ntargets = [\"{}\"]\n{extra}\n\n[[routes]]\nname = \"svc\"\npath_prefix = \"/\"\nupstream = \"svc\"\n",
        up.addr
    )
}

async fn admin_upstream(gw: &TestGateway) -> serde_json::Value {
    let all = gw.client.get(&format!("{}/admin/upstreams", gw.admin)).await.expect("admin").json();
    all["upstreams"].as_array().expect("upstreams").iter().find(|u| u["name"] == "svc").cloned().expect("upstream")
}

async fn idle_connections(gw: &TestGateway) -> u64 {
    admin_upstream(gw).await["targets"][0]["idle_connections"].as_u64().expect("idle_connections")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_pooled_connections_and_the_reuse_rate_is_reported() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&config(&up, ""), &[]).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(up.connections(), 1, "twenty requests in a row share one connection");
    let u = admin_upstream(&gw).await;
    assert_eq!(u["connections"], serde_json::json!({"new": 1, "reused": 19}), "{u}");
    assert_eq!(u["targets"][0]["idle_connections"], 1, "{u}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_upstream_connection_uses_total{upstream="svc",kind="reused"} 19"#), "{metrics}");

    // Eight at once open eight; the next eight find them idle.
    up.delay_ms.store(100, std::sync::atomic::Ordering::SeqCst);
    for round in 0..2 {
        let all = futures::future::join_all((0..8).map(|_| gw.get("/"))).await;
        assert!(all.iter().all(|r| r.status == 200), "round {round}");
    }
    assert_eq!(up.connections(), 8, "the second round reuses the first round's connections");
    up.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);

    // A reload that keeps the upstream's settings keeps its connections.
    gw.write_config(&format!(
        "{}\n[[routes]]\nname = \"other\"\npath = \"/other\"\nupstream = \"svc\"\n",
        config(&up, "")
    ));
    gw.wait_generation(2).await;
    assert_eq!(gw.get("/other").await.status, 200);
    assert_eq!(up.connections(), 8, "warm connections survive the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout_and_none_are_kept_with_max_idle_zero() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&config(&up, "pool = { idle_timeout = \"300ms\" }"), &[]).await;
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(idle_connections(&gw).await, 1);
    let closed = wait_for(Duration::from_secs(3), || async { (idle_connections(&gw).await == 0).then_some(()) }).await;
    assert!(closed.is_some(), "the idle connection is closed after idle_timeout");
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(up.connections(), 2, "a new connection after the idle one closed");

    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&config(&up, "pool = { max_idle = 0 }"), &[]).await;
    for _ in 0..5 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(up.connections(), 5, "max_idle = 0 keeps no connection");
    assert_eq!(idle_connections(&gw).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_age_are_retired_without_failing_a_request() {
    let up = Upstream::start("svc").await;
    let gw = TestGateway::start(&config(&up, "pool = { max_age = \"200ms\" }"), &[]).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // 20 requests over ~0.8 s: a new connection about every 200 ms.
    let n = up.connections();
    assert!((3..=8).contains(&n), "{n} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_share_one_connection_for_concurrent_requests() {
    let up = Upstream::start("svc").await;
    up.delay_ms.store(100, std::sync::atomic::Ordering::SeqCst);
    let gw = TestGateway::start(&config(&up, "protocol = \"h2\""), &[]).await;
    let all = futures::future::join_all((0..16).map(|_| gw.get("/"))).await;
    assert!(all.iter().all(|r| r.status == 200));
    assert!(all.iter().all(|r| r.json()["version"] == "HTTP/2.0"), "{}", all[0].text());
    assert_eq!(up.connections(), 1, "sixteen streams on one connection");
    let u = admin_upstream(&gw).await;
    assert_eq!(u["targets"][0]["h2_connection"], true, "{u}");
}

/// A target that answers one request per connection with keep-alive, then
/// closes the connection 20 ms later without saying so (as a server with a
/// short keep-alive timeout does). Counts its connections.
async fn closing_target() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_target_closed_while_idle_is_never_used() {
    let (addr, conns) = closing_target().await;
    let gw = TestGateway::start(
        &format!("[upstreams.svc]\ntargets = [\"{addr}\"]\n\n[[routes]]\nname = \"svc\"\npath_prefix = \"/\"\nupstream = \"svc\"\n"),
        &[],
    )
    .await;
    // POSTs are never retried by the gateway: each must find a live connection.
    for i in 0..10 {
        let r = gw.request(Method::POST, "/", &[], "x").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 10);
}
