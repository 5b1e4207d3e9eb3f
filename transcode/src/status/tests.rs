//! Unit tests for `status`: the code table, reading headers and trailers,
//! the JSON error body with details.

use super::*;
use crate::test_support::shop;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).expect("valid header value"));
    }
    map
}

#[test]
fn every_code_maps_like_envoy() {
    let expected = [
        (0, 200),
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ];
    for (n, http) in expected {
        let code = Code::from_i32(n);
        assert_eq!(code.as_i32(), n);
        assert_eq!(code.http_status().as_u16(), http, "{}", code.name());
    }
    assert_eq!(Code::from_i32(99), Code::Unknown);
    assert_eq!(Code::from_i32(-1), Code::Unknown);
    assert_eq!(Code::NotFound.name(), "NOT_FOUND");
    assert_eq!(Code::from_http_status(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
}

#[test]
fn status_comes_from_trailers_with_decoded_message() {
    let head = headers(&[("content-type", "application/grpc")]);
    let trailers = headers(&[("grpc-status", "5"), ("grpc-message", "order%2042%20not%20found%20%E2%9C%93")]);
    let status = GrpcStatus::from_headers(&head, Some(&trailers));
    assert_eq!(status.code, Code::NotFound);
    assert_eq!(status.message, "order 42 not found ✓");
    assert_eq!(status.http_status(), StatusCode::NOT_FOUND);
}

#[test]
fn trailers_only_response_uses_the_headers() {
    let head = headers(&[("grpc-status", "7"), ("grpc-message", "nope")]);
    let status = GrpcStatus::from_headers(&head, None);
    assert_eq!((status.code, status.message.as_str()), (Code::PermissionDenied, "nope"));
    // Empty trailers do not hide a status in the headers.
    let status = GrpcStatus::from_headers(&head, Some(&HeaderMap::new()));
    assert_eq!(status.code, Code::PermissionDenied);
}

#[test]
fn missing_or_garbled_status_is_unknown() {
    let status = GrpcStatus::from_headers(&HeaderMap::new(), Some(&HeaderMap::new()));
    assert_eq!(status.code, Code::Unknown);
    assert_eq!(status.message, MISSING_STATUS_MESSAGE);
    assert_eq!(status.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
    let status = GrpcStatus::from_headers(&headers(&[("grpc-status", "five")]), None);
    assert_eq!(status.code, Code::Unknown);
    assert!(status.message.contains("invalid grpc-status"), "{}", status.message);
}

#[test]
fn error_body_renders_known_and_unknown_details() {
    let t = shop();
    let info = prost_reflect::DynamicMessage::deserialize(
        t.pool().get_message_by_name("shop.v1.OrderErrorInfo").expect("in pool"),
        serde_json::json!({"orderId": "42", "reason": "gone"}),
    )
    .expect("valid");
    let details = encode_rpc_status_for_tests(
        5,
        "not found",
        &[
            ("type.googleapis.com/shop.v1.OrderErrorInfo", info.encode_to_vec()),
            ("type.googleapis.com/other.v1.Mystery", vec![1, 2, 3]),
        ],
    );
    // Unpadded base64, as gRPC may send it.
    let bin = general_purpose::STANDARD_NO_PAD.encode(&details);
    let trailers = headers(&[("grpc-status", "5"), ("grpc-message", "not found"), ("grpc-status-details-bin", &bin)]);
    let status = GrpcStatus::from_headers(&HeaderMap::new(), Some(&trailers));
    let body: Value = serde_json::from_slice(&status.to_json(Some(t.pool()))).expect("json");
    assert_eq!(
        body,
        serde_json::json!({
            "code": 5,
            "message": "not found",
            "details": [
                {"@type": "type.googleapis.com/shop.v1.OrderErrorInfo", "orderId": "42", "reason": "gone"},
                {"@type": "type.googleapis.com/other.v1.Mystery", "value": "AQID"},
            ]
        })
    );
    // Without a pool every detail is opaque.
    let body: Value = serde_json::from_slice(&status.to_json(None)).expect("json");
    assert_eq!(body["details"][0]["value"], general_purpose::STANDARD.encode(info.encode_to_vec()));
}

#[test]
fn well_known_detail_goes_under_value_and_bad_details_are_dropped() {
    let t = shop();
    let duration = prost_reflect::DynamicMessage::deserialize(
        t.pool().get_message_by_name("google.protobuf.Duration").expect("in pool"),
        serde_json::json!("1.5s"),
    )
    .expect("valid");
    let details = encode_rpc_status_for_tests(
        4,
        "slow",
        &[("type.googleapis.com/google.protobuf.Duration", duration.encode_to_vec())],
    );
    let status = GrpcStatus { code: Code::DeadlineExceeded, message: "slow".into(), details: Some(details.into()) };
    assert_eq!(
        status.to_json_value(Some(t.pool()))["details"],
        serde_json::json!([{"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.500s"}])
    );
    // Garbage details bytes and garbage base64 lose the details, not the status.
    let status = GrpcStatus { details: Some(Bytes::from_static(&[0xff, 0xff])), ..status };
    assert_eq!(status.to_json_value(None)["details"], serde_json::json!([]));
    let trailers = headers(&[("grpc-status", "3"), ("grpc-status-details-bin", "!!not base64!!")]);
    let status = GrpcStatus::from_headers(&HeaderMap::new(), Some(&trailers));
    assert_eq!(status.code, Code::InvalidArgument);
    assert!(status.details.is_none());
}

#[test]
fn to_trailers_round_trips() {
    let status = GrpcStatus {
        code: Code::Unavailable,
        message: "upstream down: 100% ✗\n".into(),
        details: Some(Bytes::from(encode_rpc_status_for_tests(14, "x", &[]))),
    };
    let trailers = status.to_trailers();
    assert_eq!(trailers["grpc-status"], "14");
    assert_eq!(GrpcStatus::from_headers(&HeaderMap::new(), Some(&trailers)), status);
}
