//! An open-loop HTTP/1.1 load generator that corrects coordinated omission.
//!
//! Request `i` is due at `start + i / rate`, spread over `connections`
//! keep-alive connections. Latency is measured from when a request was
//! *due*, not when it could be sent, so a server that stalls is charged for
//! the requests queued behind the stall (a closed-loop tool would simply
//! send fewer requests and report flattering figures).
//!
//! The one delay not charged to the server is the generator's own: tokio's
//! timer wakes up to a millisecond after the due time. When the
//! connection was idle at the due time (its previous answer had arrived),
//! the request is measured from when it was actually sent; when the
//! previous answer was still outstanding, from the due time. Without this
//! the timer's granularity alone put every p50 near a millisecond, the
//! bare upstream's included.
//!
//! Usage: `openloop URL RATE SECONDS [CONNECTIONS] [-H "name: value"]...`;
//! prints one JSON line.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

async fn connect(authority: &str) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `-H "name: value"` pairs may come anywhere; the rest are positional.
    let headers = weir_bench::take_headers(&mut args)?;
    anyhow::ensure!(args.len() >= 3, "usage: openloop URL RATE SECONDS [CONNECTIONS] [-H \"name: value\"]...");
    let uri: http::Uri = args[0].parse()?;
    let rate: f64 = args[1].parse()?;
    let seconds: f64 = args[2].parse()?;
    let connections: usize = args.get(3).map(|c| c.parse()).transpose()?.unwrap_or(32);
    let headers = std::sync::Arc::new(headers);
    let total = (rate * seconds) as u64;
    let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("URL needs host:port"))?.to_string();
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (hist, errors) = rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(100);
        let mut tasks = Vec::new();
        for k in 0..connections as u64 {
            let (authority, path, headers) = (authority.clone(), path.clone(), headers.clone());
            tasks.push(tokio::spawn(async move {
                let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut errors = 0u64;
                let mut sender = connect(&authority).await?;
                let mut i = k;
                let mut idle_since = Instant::now();
                while i < total {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    // Idle when due: only the timer made it late.
                    let from = if idle_since <= due { Instant::now() } else { due };
                    let mut req = http::Request::get(&path).header("host", &authority).body(Empty::<Bytes>::new())?;
                    for (name, value) in headers.iter() {
                        req.headers_mut().append(name.clone(), value.clone());
                    }
                    if sender.ready().await.is_err() {
                        // The server closed the keep-alive connection: reconnect.
                        sender = connect(&authority).await?;
                    }
                    let ok = match sender.send_request(req).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            resp.into_body().collect().await.is_ok() && ok
                        }
                        Err(_) => false,
                    };
                    if ok {
                        hist.saturating_record(from.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                    idle_since = Instant::now();
                    i += connections as u64;
                }
                anyhow::Ok((hist, errors))
            }));
        }
        let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut errors = 0;
        for t in tasks {
            let (h, e) = t.await??;
            all.add(h)?;
            errors += e;
        }
        anyhow::Ok((all, errors))
    })?;
    let doc = serde_json::json!({
        "rate": rate,
        "seconds": seconds,
        "connections": connections,
        "sent": total,
        "ok": hist.len(),
        "errors": errors,
        "p50_us": hist.value_at_quantile(0.50),
        "p90_us": hist.value_at_quantile(0.90),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
    });
    println!("{doc}");
    Ok(())
}
