//! WebSocket through the gateway with a real server and client (Python
//! `websockets`, `tests/ws/peer.py`): the chain runs on the handshake,
//! frames pass through both ways, bytes are counted, idle connections are
//! closed, and upgrades other than WebSocket are not tunnelled.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{PyPeer, TestGateway, Upstream, py_client, wait_for};

const PEER: &str = "ws/peer.py";

async fn gateway(port: u16, route_extra: &str) -> TestGateway {
    TestGateway::start(
        &format!(
            r#"
[plugins.probe]
module = "probe.wasm"
config = {{ tag = "t", respond_status = 401 }}

[upstreams.ws]
targets = ["127.0.0.1:{port}"]

[[routes]]
name = "ws"
path_prefix = "/chat"
upstream = "ws"
chain = ["probe"]
{route_extra}
"#
        ),
        &["probe.wasm"],
    )
    .await
}

async fn client(gw: &TestGateway, path: &str, args: &[&str]) -> Value {
    let url = format!("{}{path}", gw.url.replace("http://", "ws://"));
    let mut all = vec![url.as_str()];
    all.extend_from_slice(args);
    py_client(PEER, &all).await
}

/// The value of a metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_both_ways_after_a_handshake_through_the_chain() {
    let server = PyPeer::server(PEER).await;
    let gw = gateway(server.port, "").await;

    let r = client(&gw, "/chat/room?x=1", &["--messages", "20", "--size", "4096"]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["handshake_status"], 101);
    assert_eq!(r["echoed"], 40, "20 text and 20 binary messages echoed: {r}");
    let saw = &r["upstream_saw"];
    assert_eq!(saw["path"], "/chat/room?x=1");
    assert_eq!(saw["headers"]["x-chain"], "t", "the request chain ran on the handshake: {saw}");
    assert_eq!(saw["headers"]["upgrade"], "websocket");
    assert!(saw["headers"]["x-forwarded-for"].is_string(), "{saw}");
    assert_eq!(r["response_headers"]["x-ws-upstream"], "yes");
    assert_eq!(r["response_headers"]["x-chain-resp"], "t", "the response chain ran on the 101: {r}");

    // Bytes both ways are counted, and the connection is gone once closed.
    let metrics = wait_for(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        (metric(&m, r#"weir_websocket_open{route="ws"}"#) == Some(0.0)).then_some(m)
    })
    .await
    .expect("the connection closes");
    assert_eq!(metric(&metrics, r#"weir_websocket_upgrades_total{route="ws"}"#), Some(1.0), "{metrics}");
    // 20 × 4096 bytes of binary payload each way, plus text and framing;
    // the handshake-info message goes to the client only.
    let up = metric(&metrics, r#"weir_websocket_bytes_total{route="ws",direction="upstream"}"#).expect("upstream");
    let down = metric(&metrics, r#"weir_websocket_bytes_total{route="ws",direction="downstream"}"#).expect("down");
    assert!(up > 20.0 * 4096.0 && up < 20.0 * 4096.0 + 4096.0, "{up}");
    assert!(down > up, "{down} {up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_refusals_are_answered_on_the_handshake() {
    let server = PyPeer::server(PEER).await;
    let gw = gateway(server.port, "websocket_idle_timeout = \"500ms\"").await;
    let r = client(&gw, "/chat", &["--messages", "1", "--idle", "3"]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["closed_while_idle"], true, "{r}");
    let after = r["closed_after_ms"].as_f64().expect("closed_after_ms");
    assert!((400.0..2000.0).contains(&after), "closed {after} ms into the idle time");

    // A plugin refuses the handshake: the client gets its status.
    let r = client(&gw, "/chat", &["--header", "x-probe-respond=1"]).await;
    assert_eq!((r["ok"].as_bool(), r["handshake_status"].as_u64()), (Some(false), Some(401)), "{r}");

    // `websocket = false`: 403.
    let gw = gateway(server.port, "websocket = false").await;
    let r = client(&gw, "/chat", &[]).await;
    assert_eq!(r["handshake_status"], 403, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_tunnelled() {
    // `Upgrade: h2c` through a proxy is a known way to reach an upstream
    // past the proxy's rules: it is served as a plain request.
    let up = Upstream::start("plain").await;
    let gw = TestGateway::start(
        &format!("[upstreams.up]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"up\"\n", up.addr),
        &[],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://")).await.expect("connect");
    s.write_all(
        b"GET /plain HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await.expect("answer").expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let (start, end) = (answer.find('{').expect("a JSON body"), answer.rfind('}').expect("a JSON body"));
    let body: Value = serde_json::from_str(&answer[start..=end]).expect("echo");
    assert_eq!(body["headers"].get("upgrade"), None, "{body}");
    assert_eq!(body["headers"].get("http2-settings"), None, "{body}");
}

/// `tests/ws/rfc8441.py`: a WebSocket client over HTTP/2.
async fn h2_client(gw: &TestGateway, path: &str) -> Value {
    let out = tokio::process::Command::new("python3")
        .arg(weir_tests::workspace_root().join("tests/ws/rfc8441.py"))
        .args([gw.url.trim_start_matches("http://"), path, "--messages", "5"])
        .output()
        .await
        .expect("python3 rfc8441.py");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("rfc8441.py: {e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    // RFC 8441: the client opens the WebSocket with an HTTP/2 CONNECT; the
    // upstream gets an HTTP/1.1 upgrade made by the gateway.
    let server = PyPeer::server(PEER).await;
    let gw = gateway(server.port, "").await;
    let r = h2_client(&gw, "/chat/h2?y=2").await;
    assert_eq!(r["connect_enabled"], true, "SETTINGS_ENABLE_CONNECT_PROTOCOL: {r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["echoed"], 5, "{r}");
    let saw = &r["upstream_saw"];
    assert_eq!(saw["path"], "/chat/h2?y=2");
    assert_eq!(saw["headers"]["upgrade"], "websocket");
    assert_eq!(saw["headers"]["x-chain"], "t", "the chain ran on the handshake, as a GET: {saw}");
    assert!(saw["headers"]["sec-websocket-key"].as_str().is_some_and(|k| k.len() == 24), "{saw}");

    let gw = gateway(server.port, "websocket = false").await;
    let r = h2_client(&gw, "/chat").await;
    assert_eq!(r["status"], 403, "{r}");
}
