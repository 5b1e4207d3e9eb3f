//! Bodies streamed through plugins chunk by chunk (contract 0.2.4,
//! `streaming`), with `sse_tag.wasm`: Server-Sent Events from a real
//! upstream arrive at the client event by event, rewritten, not at the
//! end; a request body is counted as it flows and cut off past a limit; a
//! streaming plugin beside a buffering one gets the whole body.

use std::time::{Duration, Instant};

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::{TestGateway, Upstream};

/// An SSE upstream: answers every request with three events, one chunk
/// each, `gap` apart.
async fn sse_upstream(gap: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                             transfer-encoding: chunked\r\n\r\n";
                if conn.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                for (i, event) in ["one", "two", "three"].iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    let data = format!("id: {i}\ndata: {event}\n\n");
                    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
                    if conn.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

fn config(sse: std::net::SocketAddr, echo: &Upstream) -> String {
    format!(
        r#"[upstreams.sse]
targets = ["{sse}"]

[upstreams.echo]
targets = ["{echo}"]

[plugins.sse]
module = "sse_tag.wasm"
config = {{ tag = "weir", max_request_bytes = 1000 }}

[plugins.upper]
module = "probe.wasm"
config = {{ upper_body = true }}

[[routes]]
name = "events"
path_prefix = "/events"
upstream = "sse"
chain = ["sse"]

[[routes]]
name = "upload"
path_prefix = "/upload"
upstream = "echo"
chain = ["sse"]

[[routes]]
name = "mixed"
path_prefix = "/mixed"
upstream = "echo"
chain = ["upper", "sse"]
"#,
        echo = echo.addr
    )
}

/// When each of `needles` first appeared in the answer to a raw HTTP/1.1
/// GET of `path`, and the whole answer.
async fn read_timed(gw: &TestGateway, path: &str, needles: &[&str]) -> (Vec<Duration>, String) {
    let addr = gw.url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\nconnection: close\r\n\r\n");
    let start = Instant::now();
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut seen = vec![None; needles.len()];
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.expect("answer in time");
        match n.expect("read") {
            0 => break,
            n => all.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&all);
        for (i, needle) in needles.iter().enumerate() {
            if seen[i].is_none() && text.contains(needle) {
                seen[i] = Some(start.elapsed());
            }
        }
    }
    let text = String::from_utf8_lossy(&all).into_owned();
    let times = seen.into_iter().map(|t| t.unwrap_or_else(|| panic!("missing in {text}"))).collect();
    (times, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_event_by_event_rewritten() {
    let gap = Duration::from_millis(400);
    let sse = sse_upstream(gap).await;
    let echo = Upstream::start("echo").await;
    let gw = TestGateway::start(&config(sse, &echo), &["sse_tag.wasm", "probe.wasm"]).await;

    let needles = ["data: [weir] one", "data: [weir] two", "data: [weir] three", ": 3 events tagged"];
    let (times, text) = read_timed(&gw, "/events", &needles).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    // The first event is at the client long before the second is sent.
    assert!(times[0] < gap / 2, "first event after {:?}: buffered, not streamed", times[0]);
    assert!(times[1] >= gap && times[1] < gap * 2, "second event at {:?}", times[1]);
    assert!(times[2] >= gap * 2, "third event at {:?}", times[2]);
    assert!(times[3] >= times[2], "the closing comment comes at the end");
    assert!(!text.contains("data: one"), "every data line is rewritten: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_through_and_are_cut_off_past_the_limit() {
    let sse = sse_upstream(Duration::from_millis(10)).await;
    let echo = Upstream::start("echo").await;
    let gw = TestGateway::start(&config(sse, &echo), &["sse_tag.wasm", "probe.wasm"]).await;

    let small = "x".repeat(600);
    let r = gw.request(Method::POST, "/upload", &[], &small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json();
    assert_eq!(echoed["body"], small.as_str());
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"weir_plugin_custom_total{plugin="sse",name="request_bytes"} 600"#), "{metrics}");

    // Past 1000 bytes the plugin cuts the body: the upstream never gets a
    // whole request, the client a 502.
    let big = "y".repeat(200_000);
    let hits = echo.hits();
    let r = gw.request(Method::POST, "/upload", &[], &big).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(echo.hits(), hits, "the upstream answered no cut request");

    // Beside a plugin that buffers the request body, the streaming plugin
    // gets it whole, as one chunk, after the buffering plugin's edit.
    let r = gw.request(Method::POST, "/mixed", &[], "abc").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "ABC");
    let r = gw.request(Method::POST, "/mixed", &[], &"z".repeat(1500)).await;
    assert_eq!(r.status, 502, "the whole body is over the streaming plugin's limit: {}", r.text());
}

/// An upstream that streams `total` bytes of SSE comments as fast as its
/// socket takes them, and reports how many it managed to write.
async fn firehose(total: usize) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else { return };
        let mut buf = [0u8; 1024];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if conn.write_all(start.as_bytes()).await.is_err() {
            return;
        }
        let line = format!(": {}\n", "x".repeat(1000));
        let data = line.repeat(64);
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        let mut sent = 0;
        while sent < total {
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            sent += data.len();
            counter.store(sent, Ordering::Relaxed);
        }
        let _ = conn.write_all(b"0\r\n\r\n").await;
    });
    (addr, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_the_upstream_back() {
    use std::sync::atomic::Ordering;
    let total = 256 << 20;
    let (hose, written) = firehose(total).await;
    let echo = Upstream::start("echo").await;
    let gw = TestGateway::start(&config(hose, &echo), &["sse_tag.wasm", "probe.wasm"]).await;
    let addr = gw.url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /events HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("send");
    // The client reads a little, then nothing: what the upstream can write
    // is bounded by the sockets' buffers, not by the gateway holding it.
    let mut first = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut first)).await.expect("answer").expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let mut last = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let stalled = written.load(Ordering::Relaxed);
    assert!(stalled < 64 << 20, "the upstream wrote {stalled} bytes to a client that reads nothing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(written.load(Ordering::Relaxed), stalled, "held back while the client does not read");
    // Reading again, the stream flows on.
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..64 {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    }
    assert!(written.load(Ordering::Relaxed) > stalled, "the stream resumed when the client read");
}
