//! A closed-loop HTTP/2 (h2c, prior knowledge) load generator for calls
//! with a body: gRPC calls (`content-type: application/grpc`, a framed
//! message) or JSON posts, so transcoded and pass-through gRPC calls are
//! driven by the same client over the same protocol.
//!
//! `CONNECTIONS` connections each keep `STREAMS` requests in flight for
//! `SECONDS`. A call counts as an error unless it is answered 200 and, when
//! the answer has a `grpc-status` (in its headers or trailers), that is 0.
//!
//! Usage: `h2calls URL SECONDS CONNECTIONS STREAMS BODY_FILE [-H "name: value"]...`;
//! prints one JSON line `{"requests", "errors", "rps"}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// What every in-flight loop shares.
struct Shared {
    uri: http::Uri,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Bytes,
    stop: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
}

/// One call; `true` if it succeeded.
async fn call(sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, s: &Shared) -> bool {
    let mut req = http::Request::post(s.uri.clone());
    for (k, v) in &s.headers {
        req = req.header(k, v);
    }
    let Ok(req) = req.body(Full::new(s.body.clone())) else { return false };
    let Ok(resp) = sender.send_request(req).await else { return false };
    let ok_head = resp.status() == http::StatusCode::OK;
    let head_status = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = resp.into_body().collect().await else { return false };
    let status = collected.trailers().and_then(|t| t.get("grpc-status").cloned()).or(head_status);
    ok_head && status.is_none_or(|s| s == "0")
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let headers = weir_bench::take_headers(&mut args)?;
    let [url, seconds, connections, streams, body_file] = args.as_slice() else {
        anyhow::bail!("usage: h2calls URL SECONDS CONNECTIONS STREAMS BODY_FILE [-H \"name: value\"]...");
    };
    let uri: http::Uri = url.parse()?;
    let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("{url}: no authority"))?.to_string();
    let seconds: f64 = seconds.parse()?;
    let (connections, streams): (usize, usize) = (connections.parse()?, streams.parse()?);
    let body = Bytes::from(std::fs::read(body_file)?);
    let shared = Arc::new(Shared {
        uri,
        headers,
        body,
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let elapsed = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let stream = TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for _ in 0..streams {
                let (mut sender, s) = (sender.clone(), shared.clone());
                tasks.push(tokio::spawn(async move {
                    while !s.stop.load(Ordering::Relaxed) {
                        let ok = call(&mut sender, &s).await;
                        s.requests.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            s.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        shared.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(started.elapsed())
    })?;
    let requests = shared.requests.load(Ordering::Relaxed);
    let rps = requests as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"requests": requests, "errors": shared.errors.load(Ordering::Relaxed), "rps": rps})
    );
    Ok(())
}
