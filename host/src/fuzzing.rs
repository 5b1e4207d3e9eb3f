//! Entry points for the gateway's fuzz targets in `fuzz/` (the router, raw
//! HTTP/1 requests and raw upstream answers; the config parser's and plugin header lists' live in
//! `weir-config` and `weir-plugin-host`) and for the tests that
//! replay their corpora (`tests/it/fuzz_corpus.rs`): each takes arbitrary
//! bytes and must neither panic nor hang, whatever they are. Where there is
//! something to check beyond "no panic", it is asserted here, so a fuzzer
//! that finds a violation reports it as a crash.

use http::{Method, Request};

use crate::router::{Match, RouteMatcher, Router};
use weir_config::LimitsConfig;

/// The router: the first line holds up to four route specs separated by
/// `|` (each `host;path;prefix;METHODS,...`, empty fields absent), the rest
/// are `host path METHOD` lookups. A match names a route that exists.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let specs = lines.next().unwrap_or_default();
    let mut matchers = Vec::new();
    for spec in specs.split('|').take(4) {
        let mut f = spec.split(';');
        let field = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let (host, path, prefix, methods) = (field(f.next()), field(f.next()), field(f.next()), field(f.next()));
        let methods: Option<Vec<String>> = methods.map(|m| m.split(',').map(str::to_owned).collect());
        if let Ok(m) = RouteMatcher::new(host.as_deref(), path.as_deref(), prefix.as_deref(), methods.as_deref()) {
            matchers.push(m);
        }
    }
    let n = matchers.len();
    let router = Router::new(matchers);
    for line in lines.take(64) {
        let mut f = line.split(' ');
        let (host, path) = (f.next().unwrap_or_default(), f.next().unwrap_or("/"));
        let method = Method::from_bytes(f.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
        if let Match::Found(i, params) = router.find(host, path, &method) {
            assert!(i < n, "matched route {i} of {n}");
            for (k, _) in params {
                assert!(!k.is_empty(), "a path parameter without a name");
            }
        }
    }
}

/// Raw HTTP/1 bytes as they come off the wire: the wire sniffer follows
/// them (fed whole and in two pieces, which must agree), then each head
/// httparse accepts goes through the framing and limit checks.
pub fn http1(data: &[u8]) {
    let whole = crate::listen::sniff::verdicts_of(&[data]);
    let cut = data.len() / 2;
    let split = crate::listen::sniff::verdicts_of(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, split, "the sniffer's verdicts depend on how the bytes were read");

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let mut b = Request::builder().method(req.method.unwrap_or("GET")).uri(req.path.unwrap_or("/"));
    b = b.version(if req.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(request) = b.body(()) else { return };
    let (parts, ()) = request.into_parts();
    // Refused or passed, never a panic.
    let _ = crate::proxy::checks::check(&parts, &LimitsConfig::default());
}

/// Raw bytes as an upstream's whole answer to `GET /` (the connection ends
/// after them): hyper's client parses them, then they go through the checks
/// the gateway makes before it forwards an answer (framing, an unasked
/// `101`, the head's size, a broken first chunk). An answer that passes is
/// read to its end, and a body read whole matches its `Content-Length`.
pub fn upstream_response(data: &[u8]) {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let answer = data.to_vec();
        tokio::spawn(async move {
            // As an upstream does: the request head first, then the answer
            // (hyper's client refuses bytes that come before its request).
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = server.write_all(&answer).await;
            let _ = server.shutdown().await;
            while matches!(server.read(&mut chunk).await, Ok(n) if n > 0) {}
        });
        let exchange = async {
            let io = hyper_util::rt::TokioIo::new(client);
            let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, crate::body::ProxyBody>(io).await
            else {
                return;
            };
            tokio::spawn(conn);
            if sender.ready().await.is_err() {
                return;
            }
            let request = Request::get("/").header("host", "fuzz").body(crate::body::empty()).expect("a request");
            let Ok(resp) = sender.send_request(request).await else { return };
            if crate::upstream::malformed(&resp, false, LimitsConfig::default().max_response_header_bytes).is_some() {
                return;
            }
            // A status without content (1xx, 204, 304) has no body, whatever
            // its Content-Length says.
            let status = resp.status();
            let has_body = !(status.is_informational() || status == 204 || status == 304);
            let length =
                resp.headers().get(http::header::CONTENT_LENGTH).filter(|_| has_body).map(|v| v.as_bytes().to_vec());
            let (parts, mut incoming) = resp.into_parts();
            let Ok(first) = crate::upstream::first_frame(&parts, &mut incoming).await else { return };
            let mut read = first.and_then(|f| f.into_data().ok()).map_or(0, |b| b.len());
            while let Some(frame) = incoming.frame().await {
                let Ok(frame) = frame else { return };
                read += frame.into_data().map_or(0, |b| b.len());
            }
            if let Some(length) = length
                && let Some(n) = std::str::from_utf8(&length).ok().and_then(|s| s.trim().parse::<usize>().ok())
            {
                assert_eq!(read, n, "a body read whole is not its Content-Length");
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), exchange).await;
    });
}
