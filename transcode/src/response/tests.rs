//! Unit tests for `response`: unary and streaming answers, JSON options,
//! `response_body`, errors from the upstream and broken bodies.

use http::Method;
use prost::Message as _;
use serde_json::json;

use super::*;
use crate::frame::encode_frame;
use crate::test_support::{shop, shop_with};

/// Encodes `json` as a `type_name` message, framed.
fn frame_of(t: &crate::Transcoder, type_name: &str, json: Value) -> Vec<u8> {
    let desc = t.pool().get_message_by_name(type_name).expect("type in pool");
    let message = DynamicMessage::deserialize(desc, json).expect("valid message JSON");
    encode_frame(&message.encode_to_vec()).to_vec()
}

fn ok_trailers() -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", HeaderValue::from_static("0"));
    map
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

#[test]
fn unary_ok_renders_the_message() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders/1", None).expect("route");
    let wire = frame_of(
        &t,
        "shop.v1.Order",
        json!({"id": "1", "customerId": "c", "totalCents": "1234", "createdAt": "2024-01-01T00:00:00Z", "status": 2}),
    );
    let mut rt = m.response_transcoder();
    assert_eq!(rt.content_type(), JSON_CONTENT_TYPE);
    // Split the frame to check reassembly.
    for chunk in wire.chunks(3) {
        assert!(rt.push(chunk).expect("valid").is_empty(), "unary sends nothing before finish");
    }
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), Some(t.pool())).expect("ok");
    assert_eq!(done.http_status, StatusCode::OK);
    assert!(done.status.is_ok());
    assert_eq!(
        json_of(&done.body),
        json!({"id": "1", "customerId": "c", "totalCents": "1234", "createdAt": "2024-01-01T00:00:00Z", "status": "STATUS_SHIPPED"})
    );
}

#[test]
fn json_options_change_the_rendering() {
    let t = shop_with(|c| {
        c.json.emit_defaults = true;
        c.json.preserve_proto_field_names = true;
    });
    let m = t.route(&Method::POST, "/shop.v1.Orders/Ping", None).expect("route");
    let mut rt = m.response_transcoder();
    rt.push(&frame_of(&t, "shop.v1.PingResponse", json!({"message": "pong"}))).expect("valid");
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect("ok");
    assert_eq!(json_of(&done.body), json!({"message": "pong", "count": "0"}));

    let t = shop_with(|c| c.json.preserve_proto_field_names = true);
    let m = t.route(&Method::GET, "/v1/orders/1", None).expect("route");
    let mut rt = m.response_transcoder();
    rt.push(&frame_of(&t, "shop.v1.Order", json!({"customerId": "c"}))).expect("valid");
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect("ok");
    assert_eq!(json_of(&done.body), json!({"customer_id": "c"}));
}

#[test]
fn response_body_selects_a_field() {
    let t = shop();
    let m = t.route(&Method::POST, "/v1/orders/9:cancel", None).expect("route");
    let mut rt = m.response_transcoder();
    let reply = json!({"order": {"id": "9", "status": "STATUS_CANCELLED"}, "auditId": "a1"});
    rt.push(&frame_of(&t, "shop.v1.CancelOrderResponse", reply)).expect("valid");
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect("ok");
    assert_eq!(json_of(&done.body), json!({"id": "9", "status": "STATUS_CANCELLED"}));

    // Unset: the field's default.
    let mut rt = m.response_transcoder();
    rt.push(&frame_of(&t, "shop.v1.CancelOrderResponse", json!({"auditId": "a1"}))).expect("valid");
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect("ok");
    assert_eq!(json_of(&done.body), json!({}));
}

#[test]
fn unary_error_maps_status_and_body() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders/1", None).expect("route");
    let rt = m.response_transcoder();
    // Trailers-only: the status is in the headers, there is no body.
    let mut head = HeaderMap::new();
    head.insert("grpc-status", HeaderValue::from_static("5"));
    head.insert("grpc-message", HeaderValue::from_static("order%201%20not%20found"));
    let done = rt.finish(&head, None, Some(t.pool())).expect("an error status is not a broken answer");
    assert_eq!(done.http_status, StatusCode::NOT_FOUND);
    assert_eq!(done.content_type, JSON_CONTENT_TYPE);
    assert_eq!(json_of(&done.body), json!({"code": 5, "message": "order 1 not found", "details": []}));

    let rt = m.response_transcoder();
    let done = rt.finish(&HeaderMap::new(), None, None).expect("missing status");
    assert_eq!(done.http_status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json_of(&done.body)["message"], crate::MISSING_STATUS_MESSAGE);
}

#[test]
fn streaming_sends_ndjson_lines_then_an_error_line() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders", Some("page_size=2")).expect("route");
    let mut rt = m.response_transcoder();
    assert_eq!(rt.content_type(), NDJSON_CONTENT_TYPE);
    let mut wire = frame_of(&t, "shop.v1.Order", json!({"id": "1"}));
    wire.extend(frame_of(&t, "shop.v1.Order", json!({"id": "2", "tags": ["a"]})));
    let (first, second) = wire.split_at(wire.len() - 4);
    let out = rt.push(first).expect("valid");
    assert_eq!(&out[..], b"{\"id\":\"1\"}\n");
    let out = rt.push(second).expect("valid");
    assert_eq!(&out[..], b"{\"id\":\"2\",\"tags\":[\"a\"]}\n");
    assert_eq!(rt.lines_sent(), 2);

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert("grpc-message", HeaderValue::from_static("backend gone"));
    let done = rt.finish(&HeaderMap::new(), Some(&trailers), None).expect("finish");
    assert_eq!(done.http_status, StatusCode::OK, "the head is already sent");
    assert!(done.body.ends_with(b"\n"));
    assert_eq!(json_of(&done.body), json!({"error": {"code": 14, "message": "backend gone", "details": []}}));
}

#[test]
fn streaming_ok_and_early_error() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders", None).expect("route");
    let rt = m.response_transcoder();
    let done = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect("empty stream");
    assert_eq!((done.http_status, done.body.len()), (StatusCode::OK, 0));

    let rt = m.response_transcoder();
    let mut head = HeaderMap::new();
    head.insert("grpc-status", HeaderValue::from_static("16"));
    let done = rt.finish(&head, None, None).expect("error before any line");
    assert_eq!(done.http_status, StatusCode::UNAUTHORIZED);
    assert_eq!(done.content_type, JSON_CONTENT_TYPE);
    assert_eq!(json_of(&done.body)["code"], 16);
}

#[test]
fn broken_upstream_bodies_are_errors() {
    let t = shop_with(|c| c.max_response_message_size = 64);
    let m = t.route(&Method::GET, "/v1/orders/1", None).expect("route");

    let mut rt = m.response_transcoder();
    assert_eq!(rt.push(&[0, 0, 1, 0, 0]), Err(ResponseError::Frame(FrameError::TooLarge { declared: 65536, max: 64 })));

    let mut rt = m.response_transcoder();
    assert_eq!(rt.push(&[1, 0, 0, 0, 1, 0]), Err(ResponseError::Compressed));

    let mut rt = m.response_transcoder();
    assert_eq!(rt.push(&[0x80, 0, 0, 0, 0]), Err(ResponseError::UnexpectedFlags(0x80)));

    let mut rt = m.response_transcoder();
    rt.push(&encode_frame(&[0xff, 0xff, 0xff])).expect("unary messages are decoded at finish");
    let err = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect_err("not protobuf");
    assert!(matches!(&err, ResponseError::Decode { type_name, .. } if type_name == "shop.v1.Order"), "{err}");

    let mut rt = m.response_transcoder();
    rt.push(&[0, 0, 0, 0, 9, 1]).expect("partial frame is fine so far");
    assert!(matches!(rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None), Err(ResponseError::Frame(_))));

    let mut rt = m.response_transcoder();
    let mut two = encode_frame(b"").to_vec();
    two.extend_from_slice(&encode_frame(b""));
    assert_eq!(rt.push(&two), Err(ResponseError::TooManyMessages));

    let rt = m.response_transcoder();
    assert_eq!(rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None), Err(ResponseError::MissingMessage));

    let err = ResponseError::Compressed;
    assert_eq!(err.http_status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_of(&err.to_json())["code"], 13);
}

#[test]
fn deeply_nested_payload_is_refused_without_overflowing() {
    let t = shop();
    let m = t.route(&Method::POST, "/shop.v1.Orders/Ping", None).expect("route");
    // 100 000 nested unknown groups (field 100, wire type 3), then the ends.
    let mut payload = Vec::new();
    for _ in 0..100_000 {
        payload.extend_from_slice(&[0xA3, 0x06]);
    }
    for _ in 0..100_000 {
        payload.extend_from_slice(&[0xA4, 0x06]);
    }
    let mut rt = m.response_transcoder();
    rt.push(&encode_frame(&payload)).expect("framing is fine");
    let err = rt.finish(&HeaderMap::new(), Some(&ok_trailers()), None).expect_err("too deep");
    assert!(matches!(err, ResponseError::Decode { .. }), "{err}");
}
