//! gRPC through the gateway with a real gRPC server and client (Python
//! `grpcio`, `tests/grpc/peer.py`): unary and streaming calls with their
//! trailers, deadlines, and the gateway's own answers as gRPC errors.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use weir_tests::{PyPeer, TestGateway, py_client};

const PEER: &str = "grpc/peer.py";

/// A gateway in front of the gRPC server `port`, through a probe that tags
/// the request (`x-chain: t`) and answers 401 to `x-probe-respond`.
async fn gateway(port: u16, route_extra: &str) -> TestGateway {
    TestGateway::start(
        &format!(
            r#"
[plugins.probe]
module = "probe.wasm"
config = {{ tag = "t", respond_status = 401 }}

[upstreams.grpc]
targets = ["127.0.0.1:{port}"]
protocol = "h2"

[[routes]]
name = "echo"
path_prefix = "/weir.test.Echo"
upstream = "grpc"
chain = ["probe"]
{route_extra}
"#
        ),
        &["probe.wasm"],
    )
    .await
}

fn target(gw: &TestGateway) -> String {
    gw.url.trim_start_matches("http://").to_owned()
}

async fn call(gw: &TestGateway, args: &[&str]) -> Value {
    let target = target(gw);
    let mut all = vec![target.as_str()];
    all.extend_from_slice(args);
    py_client(PEER, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_through_with_their_trailers() {
    let server = PyPeer::server(PEER).await;
    let gw = gateway(server.port, "").await;

    // Unary: the request chain ran (its header is metadata the server saw),
    // initial and trailing metadata came back intact.
    let r = call(&gw, &["Unary", "hello", "--metadata", "x-a=1"]).await;
    assert_eq!(r["code"], "OK", "{r}");
    let echo: Value = serde_json::from_str(r["responses"][0].as_str().expect("one response")).expect("echo JSON");
    assert_eq!(echo["echo"], "hello");
    assert_eq!(echo["metadata"]["x-a"], "1");
    assert_eq!(echo["metadata"]["x-chain"], "t", "the request chain ran: {echo}");
    assert_eq!(r["initial_metadata"]["x-initial"], "yes");
    assert_eq!(r["trailing_metadata"]["x-trailer"], "done", "trailers intact: {r}");

    // Server streaming: every message, then the trailers.
    let r = call(&gw, &["Stream", "5"]).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"], serde_json::json!(["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"]));
    assert_eq!(r["trailing_metadata"]["x-trailer"], "streamed");

    // Client streaming, and bidi: each ack arrives before the next message
    // is sent, so the gateway streams the request body, it does not buffer.
    let r = call(&gw, &["Collect", "-", "--count", "4"]).await;
    assert_eq!(r["responses"], serde_json::json!(["part-0,part-1,part-2,part-3"]), "{r}");
    assert_eq!(r["trailing_metadata"]["x-count"], "4");
    let r = call(&gw, &["Chat", "-", "--count", "5", "--timeout", "10"]).await;
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"], serde_json::json!(["ack:m0", "ack:m1", "ack:m2", "ack:m3", "ack:m4"]));

    // The server's own error status and message pass through.
    let r = call(&gw, &["Unary", "fail:NOT_FOUND:no such thing"]).await;
    assert_eq!((r["code"].as_str(), r["details"].as_str()), (Some("NOT_FOUND"), Some("no such thing")), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_are_grpc_errors() {
    let server = PyPeer::server(PEER).await;
    let gw = gateway(server.port, "").await;

    // A plugin's short-circuit: UNAUTHENTICATED with its message, not an
    // HTTP 401 page.
    let r = call(&gw, &["Unary", "x", "--metadata", "x-probe-respond=1"]).await;
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    assert_eq!(r["details"], "short-circuit by t");
    assert_eq!(r["trailing_metadata"]["x-responded-by"], "t", "the plugin's headers go along: {r}");

    // No route for the method: UNIMPLEMENTED.
    let r = call(&gw, &["/other.Service/Method", "x"]).await;
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");

    // The upstream down: UNAVAILABLE, naming it.
    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = call(&gw, &["Unary", "x"]).await;
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(r["details"].as_str().is_some_and(|d| d.contains("upstream `grpc`")), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_upstream_deadline() {
    let server = PyPeer::server(PEER).await;
    // The upstream's own timeout is long: the call's deadline must win.
    let gw = gateway(server.port, "").await;

    // A raw HTTP/2 call with `grpc-timeout: 200m` and no deadline of the
    // client's own: only the gateway can end it.
    let tcp = tokio::net::TcpStream::connect(target(&gw)).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let payload = b"slow:3000";
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let req = http::Request::post(format!("{}/weir.test.Echo/Unary", gw.url))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(Full::new(Bytes::from(frame)))
        .expect("request");
    let t = Instant::now();
    let resp = send.send_request(req).await.expect("answer");
    let took = t.elapsed();
    eprintln!("grpc-timeout 200m: the gateway answered after {took:?}");
    assert_eq!(resp.status(), 200, "a gRPC error, not an HTTP one");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED: {:?}", resp.headers());
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(1500), "{took:?}");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(body.is_empty(), "Trailers-Only: no messages");

    // And with the Python client's own deadline, the call fails on time.
    let r = call(&gw, &["Unary", "slow:3000", "--timeout", "0.3"]).await;
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert!(r["elapsed_ms"].as_f64().is_some_and(|ms| ms < 1500.0), "{r}");
    // A deadline longer than the call: it completes.
    let r = call(&gw, &["Unary", "slow:100", "--timeout", "5"]).await;
    assert_eq!(r["code"], "OK", "{r}");
}
