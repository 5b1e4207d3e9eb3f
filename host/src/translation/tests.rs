//! The translation room without sockets: CORS answers, the gRPC-Web and
//! NDJSON bodies over a scripted upstream body.

use std::collections::VecDeque;
use std::time::Duration;

use http::Request;
use http_body_util::StreamBody;
use weir_transcode::encode_frame;

use super::*;

fn cors(origins: &[&str], credentials: bool) -> Translation {
    let config = CorsConfig {
        allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        allow_headers: None,
        expose_headers: vec!["x-trace".into()],
        max_age: Some(Duration::from_secs(600)),
        allow_credentials: credentials,
    };
    Translation { transcoder: None, web: true, cors: Some(Cors::new(&config).expect("valid")), descriptors: None }
}

fn preflight(origin: &str) -> Parts {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/svc/M")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

#[test]
fn preflights_are_answered_for_allowed_origins_only() {
    let t = cors(&["https://app.example.com"], true);
    let ok = t.preflight(&preflight("https://app.example.com")).expect("a preflight");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-headers"], DEFAULT_CORS_HEADERS.join(", "));

    let refused = t.preflight(&preflight("https://evil.example.com")).expect("a preflight");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(!refused.headers().contains_key("access-control-allow-origin"));

    // Not a preflight: an OPTIONS without the request-method header.
    let mut plain = preflight("https://app.example.com");
    plain.headers.remove("access-control-request-method");
    assert!(t.preflight(&plain).is_none());
    // No CORS configured: nothing answered.
    let off = Translation { cors: None, ..cors(&["*"], false) };
    assert!(off.preflight(&preflight("https://app.example.com")).is_none());
}

#[test]
fn answers_expose_the_grpc_status_to_allowed_origins() {
    let t = cors(&["*"], false);
    let mut h = HeaderMap::new();
    t.add_cors(Some(&HeaderValue::from_static("https://any.example")), &mut h);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-expose-headers"], "grpc-status, grpc-message, x-trace");
    assert!(!h.contains_key("access-control-allow-credentials"));
    let mut none = HeaderMap::new();
    t.add_cors(None, &mut none);
    assert!(none.is_empty(), "no Origin, no CORS headers");
}

/// A body that yields `frames` then ends.
fn scripted(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> ProxyBody {
    body::boxed(StreamBody::new(futures::stream::iter(frames)))
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
}

async fn collect(body: ProxyBody) -> (Bytes, VecDeque<Bytes>) {
    let mut chunks = VecDeque::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("no error").into_data() {
            chunks.push_back(data);
        }
    }
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    (Bytes::from(all), chunks)
}

#[tokio::test]
async fn grpc_web_answers_end_with_a_trailers_frame() {
    // Binary: the data as it came, then the upstream's trailers.
    let upstream = Response::builder()
        .header("content-type", "application/grpc")
        .header("trailer", "grpc-status")
        .body(scripted(vec![
            Ok(Frame::data(encode_frame(b"abc"))),
            Ok(Frame::trailers(trailers(&[("grpc-status", "0"), ("x-t", "1")]))),
        ]))
        .expect("response");
    let resp = web_answer(upstream, GrpcWebMode::Binary);
    assert_eq!(resp.headers()["content-type"], "application/grpc-web+proto");
    assert!(!resp.headers().contains_key("trailer"));
    let (bytes, _) = collect(resp.into_body()).await;
    let answer = weir_transcode::decode_response(GrpcWebMode::Binary, &bytes, 1024).expect("gRPC-Web");
    assert_eq!(answer.messages, [Bytes::from_static(b"abc")]);
    let t = answer.trailers.expect("trailers");
    assert_eq!((t["grpc-status"].as_bytes(), t["x-t"].as_bytes()), (&b"0"[..], &b"1"[..]));

    // Text, and no trailers at all: a status is made up (UNKNOWN).
    let upstream = Response::new(scripted(vec![Ok(Frame::data(encode_frame(b"xy")))]));
    let (bytes, _) = collect(web_answer(upstream, GrpcWebMode::Text).into_body()).await;
    let answer = weir_transcode::decode_response(GrpcWebMode::Text, &bytes, 1024).expect("gRPC-Web text");
    assert_eq!(answer.messages, [Bytes::from_static(b"xy")]);
    assert_eq!(answer.trailers.expect("trailers")["grpc-status"], "2");

    // Trailers-Only, and a plain HTTP error without a status.
    let only = Response::builder().header("grpc-status", "7").body(body::empty()).expect("response");
    let resp = web_answer(only, GrpcWebMode::Binary);
    let (bytes, _) = collect(resp.into_body()).await;
    let answer = weir_transcode::decode_response(GrpcWebMode::Binary, &bytes, 1024).expect("gRPC-Web");
    assert_eq!(answer.trailers.expect("trailers")["grpc-status"], "7");
    let page = Response::builder().status(503).body(body::full("busy")).expect("response");
    let resp = web_answer(page, GrpcWebMode::Binary);
    assert_eq!((resp.status(), &resp.headers()["grpc-status"]), (StatusCode::OK, &HeaderValue::from(14)));
}

/// The transcoder of the crate's own fixture (`shop.v1.Orders`).
fn shop() -> Arc<Transcoder> {
    let set = include_bytes!("../../../transcode/tests/protos/shop.pb");
    Arc::new(Transcoder::new(set, TranscoderConfig::new(["shop.v1.Orders"])).expect("the fixture loads"))
}

/// `Order { id }` on the wire.
fn order(id: &str) -> Bytes {
    let mut payload = vec![0x0a, u8::try_from(id.len()).expect("short")];
    payload.extend_from_slice(id.as_bytes());
    encode_frame(&payload)
}

#[tokio::test]
async fn streams_become_ndjson_lines_and_a_failure_a_last_line() {
    let t = shop();
    let call = t.route(&Method::GET, "/v1/orders", None).expect("ListOrders");
    let upstream = Response::new(scripted(vec![
        Ok(Frame::data(order("o-0"))),
        Ok(Frame::data(order("o-1"))),
        Ok(Frame::trailers(trailers(&[("grpc-status", "14"), ("grpc-message", "down")]))),
    ]));
    let resp = json_answer(upstream, call.response_transcoder(), t.clone(), &Arc::from("shop")).await.expect("answer");
    assert_eq!(
        (resp.status(), &resp.headers()["content-type"]),
        (StatusCode::OK, &HeaderValue::from_static("application/x-ndjson"))
    );
    let (bytes, chunks) = collect(resp.into_body()).await;
    assert_eq!(chunks.len(), 3, "one chunk per line: {chunks:?}");
    assert_eq!(
        std::str::from_utf8(&bytes).expect("text"),
        "{\"id\":\"o-0\"}\n{\"id\":\"o-1\"}\n{\"error\":{\"code\":14,\"message\":\"down\",\"details\":[]}}\n"
    );
}

#[tokio::test]
async fn unary_answers_map_statuses_and_keep_metadata() {
    let t = shop();
    let call = t.route(&Method::GET, "/v1/orders/1", None).expect("GetOrder");
    let upstream = Response::builder()
        .header("x-initial", "yes")
        .header("content-type", "application/grpc")
        .body(scripted(vec![Ok(Frame::data(order("1"))), Ok(Frame::trailers(trailers(&[("grpc-status", "0")])))]))
        .expect("response");
    let resp = json_answer(upstream, call.response_transcoder(), t.clone(), &Arc::from("shop")).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-initial"], "yes");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(collect(resp.into_body()).await.0, Bytes::from_static(b"{\"id\":\"1\"}"));

    // An HTTP error page without a gRPC status: mapped from its status.
    let page = Response::builder().status(429).body(body::full("slow down")).expect("response");
    let resp = json_answer(page, call.response_transcoder(), t.clone(), &Arc::from("shop")).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "429 is UNAVAILABLE, answered 503");
    let (bytes, _) = collect(resp.into_body()).await;
    let error: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(error["code"], 14, "gRPC maps HTTP 429 to UNAVAILABLE: {error}");

    // Two messages for a unary call: the upstream is broken (502).
    let twice = Response::new(scripted(vec![Ok(Frame::data(order("1"))), Ok(Frame::data(order("2")))]));
    let e = json_answer(twice, call.response_transcoder(), t, &Arc::from("shop")).await.expect_err("broken");
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
}
