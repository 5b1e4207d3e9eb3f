//! Hostile HTTP/1.1 framing: every request of the corpus in
//! `tests/corpus/framing/` (see its `generate.py`) is sent over a raw socket
//! to a real gateway; each must be refused with the status its file name
//! gives, and the upstream behind the gateway must receive nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::{TestGateway, workspace_root};

/// Undo the corpus escaping: `\r`, `\n`, `\t`, `\0`, `\\`, `\xHH`; real
/// line breaks are layout only.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {}
            '\\' => match chars.next() {
                Some('r') => out.push(b'\r'),
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('0') => out.push(0),
                Some('\\') => out.push(b'\\'),
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad escape \\x{hex}")));
                }
                other => panic!("bad escape \\{other:?}"),
            },
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

type Seen = Arc<std::sync::Mutex<Vec<u8>>>;

/// An upstream that counts (and keeps) every byte it receives, and answers
/// 200.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bytes = Arc::new(AtomicUsize::new(0));
    let seen: Seen = Arc::default();
    let (counter, kept) = (bytes.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (counter, kept) = (counter.clone(), kept.clone());
            tokio::spawn(async move {
                let mut buf = vec![0; 65536];
                // What arrived since the last answer: answer once it holds a
                // whole request, so a body cut off midway is never answered.
                let mut pending = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.lock().expect("seen").extend_from_slice(&buf[..n]);
                    counter.fetch_add(n, Ordering::SeqCst);
                    pending.extend_from_slice(&buf[..n]);
                    if complete(&pending) {
                        pending.clear();
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                }
            });
        }
    });
    (addr, bytes, seen)
}

/// Whether `raw` holds a whole request: its head, and the body its
/// framing announces (chunked to the last chunk, or Content-Length bytes).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse::<usize>().ok());
    body.len() >= length.unwrap_or(0)
}

/// The header lines of every request head in `raw`, lower-cased.
fn heads(raw: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(raw).to_ascii_lowercase();
    text.split("\r\n\r\n")
        .filter(|block| block.contains(" http/1.1\r\n"))
        .map(|block| block.lines().skip(1).map(str::to_owned).collect())
        .collect()
}

/// Send `raw`, return the response status, or `close` when the connection
/// ended without one.
async fn send(gateway: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(gateway).await.expect("connect");
    // The gateway may refuse before reading everything: a failed write is
    // not a failure of the test, the answer is what counts.
    let _ = s.write_all(raw).await;
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&got);
    match text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 ")) {
        Some(rest) => rest.chars().take(3).collect(),
        None if got.is_empty() => "close".into(),
        None => format!("garbage {text:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_never_reach_the_upstream() {
    let (upstream, received, seen) = counting_upstream().await;
    let gw = TestGateway::start(
        &format!("[upstreams.up]\ntargets = [\"{upstream}\"]\n[[routes]]\nname = \"all\"\nupstream = \"up\"\n"),
        &[],
    )
    .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();

    // The control: a valid chunked request is forwarded, with one framing.
    let ok = send(&addr, b"POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(ok, "200", "the control request");
    // Bare LF line endings are accepted (RFC 9112 §2.2) and re-serialised.
    let lf = send(&addr, b"GET /lf HTTP/1.1\nHost: gw\n\n").await;
    assert_eq!(lf, "200", "bare LF");
    assert!(received.load(Ordering::SeqCst) > 0);
    received.store(0, Ordering::SeqCst);

    let dir = workspace_root().join("tests/corpus/framing");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "http"))
        .collect();
    files.sort();
    assert!(files.len() >= 100, "the corpus has {} cases", files.len());
    let mut wrong = Vec::new();
    let (mut refused, mut safe) = (0, 0);
    for f in &files {
        let name = f.file_stem().and_then(|s| s.to_str()).expect("name").to_owned();
        let expected = name.split('-').next().expect("expected status").to_owned();
        let raw = unescape(&std::fs::read_to_string(f).expect("read case"));
        seen.lock().expect("seen").clear();
        let before = received.load(Ordering::SeqCst);
        let got = send(&addr, &raw).await;
        let forwarded = received.load(Ordering::SeqCst) - before;
        if expected == "safe" {
            // Answered, and forwarded with one framing only.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let upstream_heads = heads(&seen.lock().expect("seen"));
            let ambiguous = upstream_heads.iter().any(|h| {
                let cl = h.iter().filter(|l| l.starts_with("content-length:")).count();
                let te = h.iter().filter(|l| l.starts_with("transfer-encoding:")).count();
                (cl > 0 && te > 0) || cl > 1 || te > 1
            });
            safe += 1;
            if got != "200" || upstream_heads.len() != 1 || ambiguous {
                wrong.push(format!("{name}: got {got}, upstream heads {upstream_heads:?}"));
            }
        } else if got != expected || forwarded > 0 {
            wrong.push(format!("{name}: got {got}, {forwarded} bytes reached the upstream"));
        } else {
            refused += 1;
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), files.len(), wrong.join("\n"));
    assert!(refused >= 100, "{refused} refused cases");
    println!("framing corpus: {refused} refused with nothing forwarded, {safe} forwarded with one framing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_to_streamed_and_buffered_bodies() {
    let (upstream, received, _seen) = counting_upstream().await;
    let gw = TestGateway::start(
        &format!(
            "[limits]\nmax_request_body = \"4KiB\"\nrequest_buffer = \"1KiB\"\nmax_uri_bytes = \"100B\"\n\
             [upstreams.up]\ntargets = [\"{upstream}\"]\n[[routes]]\nname = \"all\"\nupstream = \"up\"\n"
        ),
        &[],
    )
    .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let chunked = |n: usize| {
        let mut raw = b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..n {
            raw.extend_from_slice(b"400\r\n");
            raw.extend_from_slice(&[b'x'; 1024]);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        raw
    };
    // Within both limits.
    assert_eq!(send(&addr, &chunked(1)).await, "200");
    // Past the request buffer, within the body limit: streamed, fine.
    assert_eq!(send(&addr, &chunked(3)).await, "200");
    // Past the body limit while streaming: 413 (the upstream request is
    // cut off midway, never completed).
    assert_eq!(send(&addr, &chunked(6)).await, "413");
    // (Let what the cut-off upstream request had sent arrive before counting.)
    let mut before = received.load(Ordering::SeqCst);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::SeqCst);
        if now == before {
            break;
        }
        before = now;
    }
    // A declared length past the limit: 413 before anything is sent.
    assert_eq!(send(&addr, b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n").await, "413");
    assert_eq!(received.load(Ordering::SeqCst), before);
    // The target limit.
    assert_eq!(send(&addr, format!("GET /{} HTTP/1.1\r\nHost: gw\r\n\r\n", "a".repeat(120)).as_bytes()).await, "414");
    // A body cut short inside the request buffer: nothing reaches the upstream.
    let before = received.load(Ordering::SeqCst);
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly-part").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(received.load(Ordering::SeqCst), before, "a cut body is not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_keep_their_order_and_are_served() {
    let (upstream, _received, _seen) = counting_upstream().await;
    let gw = TestGateway::start(
        &format!("[upstreams.up]\ntargets = [\"{upstream}\"]\n[[routes]]\nname = \"all\"\nupstream = \"up\"\n"),
        &[],
    )
    .await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    // Bodies that look like request heads must not confuse the sniffer.
    let fake = "POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let wire = format!(
        "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{fake}\
         POST /b HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{fake}\r\n0\r\n\r\n\
         GET /c HTTP/1.1\r\nHost: gw\r\n\r\n\
         POST /d HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        fake.len(),
        fake.len()
    );
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    s.write_all(wire.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "200", "400"], "three served in order, the ambiguous fourth refused:\n{text}");
}
