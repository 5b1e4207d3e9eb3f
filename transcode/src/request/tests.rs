//! Unit tests for `request`: body, path and query binding, errors naming the
//! field, hostile bodies, and the frame written.

use http::Method;
use prost_reflect::{DynamicMessage, ReflectMessage as _};
use serde_json::json;

use super::*;
use crate::test_support::{shop, shop_with};

/// The message `method path?query` with `body` builds, as canonical JSON.
fn build(t: &crate::Transcoder, method: Method, path_and_query: &str, body: &str) -> Result<Value, RequestError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let Some(m) = t.route(&method, path, query) else {
        panic!("{method} {path} should route");
    };
    let message = m.request_message(body.as_bytes())?;
    Ok(serde_json::to_value(&message).expect("serializable"))
}

#[test]
fn get_binds_path_and_query() {
    let t = shop();
    let got = build(
        &t,
        Method::GET,
        "/v1/orders/o%201?includeItems=true&fields=a&fields=b%2Cc&status=STATUS_SHIPPED&filter.city=K%C3%B6ln\
         &filter.min_items=3&filter.statuses=1&filter.statuses=STATUS_PENDING&as_of=2024-05-01T10:00:00Z\
         &min_quantity=5&max_age=90s",
        "",
    )
    .expect("valid");
    assert_eq!(
        got,
        json!({
            "id": "o 1",
            "includeItems": true,
            "fields": ["a", "b,c"],
            "status": "STATUS_SHIPPED",
            "filter": {"city": "Köln", "minItems": 3, "statuses": ["STATUS_PENDING", "STATUS_PENDING"]},
            "asOf": "2024-05-01T10:00:00Z",
            "minQuantity": 5,
            "maxAge": "90s",
        })
    );
}

#[test]
fn post_body_star_and_fallback() {
    let t = shop();
    let body = r#"{"customerId": "c1", "items": [{"sku": "A", "quantity": 2, "unitPrice": 1.5}],
                   "tags": ["x"], "shipping_address": {"city": "Oslo"}, "status": 2}"#;
    let expected = json!({
        "customerId": "c1",
        "items": [{"sku": "A", "quantity": 2, "unitPrice": 1.5}],
        "tags": ["x"],
        "shippingAddress": {"city": "Oslo"},
        "status": "STATUS_SHIPPED",
    });
    assert_eq!(build(&t, Method::POST, "/v1/orders", body).expect("valid"), expected);
    assert_eq!(build(&t, Method::POST, "/shop.v1.Orders/CreateOrder", body).expect("valid"), expected);
    // An empty body is an empty message.
    assert_eq!(build(&t, Method::POST, "/v1/orders", "  ").expect("valid"), json!({}));
    assert_eq!(build(&t, Method::POST, "/shop.v1.Orders/Ping", "null").expect("valid"), json!({}));
}

#[test]
fn body_field_and_path_override() {
    let t = shop();
    let got = build(
        &t,
        Method::PATCH,
        "/v1/orders/42?validate_only=true",
        r#"{"id": "ignored", "customerId": "c9", "createdAt": "2024-01-02T03:04:05Z"}"#,
    )
    .expect("valid");
    assert_eq!(
        got,
        json!({"order": {"id": "42", "customerId": "c9", "createdAt": "2024-01-02T03:04:05Z"}, "validateOnly": true})
    );
    // body "*" with a path variable: the path wins over the body.
    let got = build(&t, Method::POST, "/v1/orders/7:cancel", r#"{"id": "x", "reason": "late"}"#).expect("valid");
    assert_eq!(got, json!({"id": "7", "reason": "late"}));
}

#[test]
fn multi_segment_variables_keep_slash_escapes() {
    let t = shop();
    let search = Method::from_bytes(b"SEARCH").expect("method");
    let got = build(&t, search, "/v1/files/a/b%2Fc/%C3%A9.txt", "").expect("valid");
    assert_eq!(got, json!({"path": "a/b%2Fc/é.txt"}));
    let got = build(&t, Method::GET, "/v1/orders/a%2Fb", "").expect("valid");
    assert_eq!(got, json!({"id": "a/b"}), "a single-segment variable decodes fully");
    let err = build(&t, Method::GET, "/v1/orders/%FF", "").expect_err("not UTF-8");
    assert_eq!(err, RequestError::InvalidPathValue { field: "id".into() });
}

#[test]
fn wrong_types_name_the_field() {
    let t = shop();
    let err = build(&t, Method::POST, "/v1/orders", r#"{"quantity": "lots"}"#).expect_err("not an int");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "quantity"), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid value for field \"quantity\": expected an integer (invalid digit found in string)"
    );

    let err = build(&t, Method::POST, "/v1/orders", r#"{"items": [{"sku": "A"}, {"quantity": 1.5}]}"#)
        .expect_err("not an int");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "items[1].quantity"), "{err}");

    let err = build(&t, Method::POST, "/v1/orders", r#"{"tags": "x"}"#).expect_err("not a list");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "tags"), "{err}");

    let err = build(&t, Method::POST, "/v1/orders", r#"{"status": "STATUS_LOST"}"#).expect_err("no such enum value");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "status"), "{err}");

    let err = build(&t, Method::GET, "/v1/orders/1?filter.min_items=many", "").expect_err("not an int");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "filter.min_items"), "{err}");

    let err = build(&t, Method::GET, "/v1/orders/1?as_of=yesterday", "").expect_err("not a timestamp");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "as_of"), "{err}");

    let err = build(&t, Method::GET, "/v1/orders/1?include_items=maybe", "").expect_err("not a bool");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "include_items"), "{err}");
}

#[test]
fn unknown_fields_are_rejected_unless_ignored() {
    let t = shop();
    let err = build(&t, Method::POST, "/v1/orders", r#"{"customerId": "c", "colour": "red"}"#).expect_err("unknown");
    assert_eq!(err, RequestError::UnknownField { field: "colour".into() });
    assert_eq!(err.to_string(), "unknown field \"colour\"");
    let err = build(&t, Method::POST, "/v1/orders", r#"{"shippingAddress": {"zip": "1"}}"#).expect_err("unknown");
    assert_eq!(err, RequestError::UnknownField { field: "shippingAddress.zip".into() });

    let lenient = shop_with(|c| c.json.ignore_unknown_fields = true);
    let got = build(&lenient, Method::POST, "/v1/orders", r#"{"customerId": "c", "colour": "red"}"#).expect("ok");
    assert_eq!(got, json!({"customerId": "c"}));
}

#[test]
fn query_parameters_must_name_free_fields() {
    let t = shop();
    for (path, name) in [
        ("/v1/orders/1?nope=1", "nope"),
        ("/v1/orders/1?id=2", "id"),         // bound by the path
        ("/v1/orders/1?filter=x", "filter"), // a message, not a leaf
        ("/v1/orders/1?filter.nope=x", "filter.nope"),
        ("/v1/orders/1?include_items.x=1", "include_items.x"),
    ] {
        let err = build(&t, Method::GET, path, "").expect_err("unknown parameter");
        assert_eq!(err, RequestError::UnknownQueryParameter { name: name.into() }, "{path}");
    }
    let err = build(&t, Method::PATCH, "/v1/orders/1?order.customer_id=x", "{}").expect_err("bound by the body");
    assert!(matches!(err, RequestError::UnknownQueryParameter { .. }));
    let err = build(&t, Method::POST, "/v1/orders?customer_id=x", "{}").expect_err("body is *");
    assert!(matches!(err, RequestError::UnknownQueryParameter { .. }));
    let err = build(&t, Method::GET, "/v1/orders/1?status=1&status=2", "").expect_err("not repeated");
    assert!(matches!(&err, RequestError::InvalidQueryParameter { name, .. } if name == "status"), "{err}");
    let err = build(&t, Method::GET, "/v1/orders/1?fields=%FF", "").expect_err("not UTF-8");
    assert!(matches!(err, RequestError::InvalidQueryParameter { .. }));

    let lenient = shop_with(|c| c.json.ignore_unknown_query_parameters = true);
    let got = build(&lenient, Method::GET, "/v1/orders/1?nope=1&_=123&&fields=a+b", "").expect("ignored");
    assert_eq!(got, json!({"id": "1", "fields": ["a b"]}));
}

#[test]
fn hostile_bodies_are_rejected_cleanly() {
    let t = shop();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let err = build(&t, Method::POST, "/v1/orders", &deep).expect_err("too deep");
    assert!(matches!(&err, RequestError::InvalidJson(m) if m.contains("recursion limit")), "{err}");
    let deep_object = format!(r#"{{"shippingAddress": {}1{}}}"#, r#"{"a":"#.repeat(200), "}".repeat(200));
    assert!(matches!(build(&t, Method::POST, "/v1/orders", &deep_object), Err(RequestError::InvalidJson(_))));
    let err = build(&t, Method::POST, "/v1/orders", r#"{"customerId": "c""#).expect_err("truncated");
    assert!(matches!(err, RequestError::InvalidJson(_)));
    assert_eq!(build(&t, Method::POST, "/v1/orders", "[1, 2]"), Err(RequestError::BodyNotObject));
    assert_eq!(build(&t, Method::POST, "/v1/orders", "\"text\""), Err(RequestError::BodyNotObject));
    let err = build(&t, Method::POST, "/v1/orders", "\u{0}\u{1}garbage").expect_err("binary");
    assert!(matches!(err, RequestError::InvalidJson(_)));
    let err = build(&t, Method::PATCH, "/v1/orders/1", "[]").expect_err("order must be an object");
    assert!(matches!(&err, RequestError::InvalidField { field, .. } if field == "order"), "{err}");
}

#[test]
fn encode_request_writes_one_frame() {
    let t = shop();
    let m = t.route(&Method::POST, "/shop.v1.Orders/Ping", None).expect("fallback");
    let frame = m.encode_request(br#"{"message": "hi"}"#).expect("valid");
    assert_eq!(frame[0], 0, "uncompressed");
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(len, frame.len() - 5);
    let decoded = DynamicMessage::decode(m.method().input(), &frame[5..]).expect("protobuf");
    assert_eq!(decoded.descriptor().full_name(), "shop.v1.PingRequest");
    assert_eq!(decoded.get_field_by_name("message").as_deref().and_then(|v| v.as_str()), Some("hi"));
}

#[test]
fn request_error_body_is_invalid_argument_json() {
    let err = RequestError::UnknownField { field: "colour".into() };
    assert_eq!(err.http_status(), StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&err.to_json()).expect("json");
    assert_eq!(body, json!({"code": 3, "message": "unknown field \"colour\"", "details": []}));
}
