//! Unit tests for `descriptors` and the load-time checks of `Transcoder`.

use super::*;
use crate::test_support::{BROKEN_PB, SHOP_PB};
use crate::{Transcoder, TranscoderConfig};

fn load(bytes: &[u8], services: &[&str]) -> Result<Transcoder, LoadError> {
    Transcoder::new(bytes, TranscoderConfig::new(services.iter().copied()))
}

#[test]
fn loads_the_shop_service() {
    let t = load(SHOP_PB, &["shop.v1.Orders"]).expect("loads");
    let routes: Vec<_> = t.routes().map(|r| format!("{} {} -> {}", r.http_method, r.pattern, r.grpc_path)).collect();
    assert!(routes.contains(&"GET /v1/orders/{id} -> /shop.v1.Orders/GetOrder".to_owned()), "{routes:?}");
    assert!(routes.contains(&"POST /shop.v1.Orders/Ping -> /shop.v1.Orders/Ping".to_owned()));
    assert!(!routes.iter().any(|r| r.contains("UploadOrders")), "client streaming is not routed");
}

#[test]
fn size_cap_and_garbage_are_errors() {
    let err = load_with_cap(SHOP_PB, 100).expect_err("too large");
    assert!(matches!(err, LoadError::TooLarge { max: 100, .. }), "{err}");
    let err = decode_descriptor_set(b"\x0a\x05hello", DEFAULT_MAX_DESCRIPTOR_SIZE).expect_err("garbage");
    assert!(err.to_string().starts_with("not a valid FileDescriptorSet"), "{err}");
    let err = decode_descriptor_set(&[0xff; 64], DEFAULT_MAX_DESCRIPTOR_SIZE).expect_err("garbage");
    assert!(matches!(err, LoadError::Descriptor(_)));
    // Cut short: truncated protobuf.
    assert!(decode_descriptor_set(&SHOP_PB[..SHOP_PB.len() / 2], DEFAULT_MAX_DESCRIPTOR_SIZE).is_err());
}

fn load_with_cap(bytes: &[u8], cap: usize) -> Result<Transcoder, LoadError> {
    let mut config = TranscoderConfig::new(["shop.v1.Orders"]);
    config.max_descriptor_size = cap;
    Transcoder::new(bytes, config)
}

#[test]
fn unknown_service_names_what_exists() {
    let err = load(SHOP_PB, &["shop.v1.Nope"]).expect_err("unknown");
    assert_eq!(err.to_string(), "service \"shop.v1.Nope\" is not in the descriptor set (it has: shop.v1.Orders)");
    assert!(matches!(load(SHOP_PB, &[]), Err(LoadError::NoServices)));
}

#[test]
fn rule_naming_a_missing_field_is_an_error() {
    let err = load(BROKEN_PB, &["broken.v1.Broken"]).expect_err("bad rule");
    assert_eq!(
        err.to_string(),
        "method broken.v1.Broken/GetThing: rule \"GET /v1/things/{thing_id}\": path variable \"thing_id\": \
         \"thing_id\" is not a field of broken.v1.GetThingRequest"
    );
}

/// Builds a descriptor set in code: `test.v1.Svc` with one method `Call`
/// (request and reply `test.v1.Req { string id; string name; }`) carrying
/// `rule` as its `google.api.http` option, plus the shop set's google/
/// files. The options are set through a `DynamicMessage` of the whole set,
/// since `prost_types` would drop the extension.
fn set_with_rule(client_streaming: bool, rule: prost_reflect::DynamicMessage) -> Vec<u8> {
    use prost::Message as _;
    use prost_reflect::prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto, field_descriptor_proto::Type,
    };
    use prost_reflect::{DynamicMessage, Value};
    let pool = decode_descriptor_set(SHOP_PB, DEFAULT_MAX_DESCRIPTOR_SIZE).expect("shop");
    let mut files: Vec<FileDescriptorProto> =
        pool.files().filter(|f| f.name().starts_with("google/")).map(|f| f.file_descriptor_proto().clone()).collect();
    let field = |name: &str, number: i32| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(Type::String as i32),
        json_name: Some(name.into()),
        ..Default::default()
    };
    files.push(FileDescriptorProto {
        name: Some("test/v1/test.proto".into()),
        package: Some("test.v1".into()),
        dependency: vec!["google/api/annotations.proto".into()],
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("Req".into()),
            field: vec![field("id", 1), field("name", 2)],
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Svc".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Call".into()),
                input_type: Some(".test.v1.Req".into()),
                output_type: Some(".test.v1.Req".into()),
                client_streaming: Some(client_streaming),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    let bytes = FileDescriptorSet { file: files }.encode_to_vec();
    let set_desc = pool.get_message_by_name("google.protobuf.FileDescriptorSet").expect("descriptor.proto");
    let mut set = DynamicMessage::decode(set_desc, bytes.as_slice()).expect("decodes");
    let ext = pool.get_extension_by_name("google.api.http").expect("annotations in pool");
    let method = set
        .get_field_by_name_mut("file")
        .and_then(Value::as_list_mut)
        .and_then(|files| files.last_mut())
        .and_then(Value::as_message_mut)
        .and_then(|file| file.get_field_by_name_mut("service"))
        .and_then(Value::as_list_mut)
        .and_then(|services| services.first_mut())
        .and_then(Value::as_message_mut)
        .and_then(|service| service.get_field_by_name_mut("method"))
        .and_then(Value::as_list_mut)
        .and_then(|methods| methods.first_mut())
        .and_then(Value::as_message_mut)
        .expect("the test method");
    let options = method.get_field_by_name_mut("options").and_then(Value::as_message_mut).expect("options");
    options.set_extension(&ext, Value::Message(rule));
    set.encode_to_vec()
}

fn rule(json: serde_json::Value) -> prost_reflect::DynamicMessage {
    let pool = decode_descriptor_set(SHOP_PB, DEFAULT_MAX_DESCRIPTOR_SIZE).expect("shop");
    let desc = pool.get_message_by_name("google.api.HttpRule").expect("http.proto in pool");
    prost_reflect::DynamicMessage::deserialize(desc, json).expect("valid HttpRule JSON")
}

#[test]
fn programmatic_rules_are_checked() {
    let ok = set_with_rule(false, rule(serde_json::json!({"get": "/v1/things/{id}", "body": "name"})));
    let t = load(&ok, &["test.v1.Svc"]).expect("valid");
    assert!(t.route(&http::Method::GET, "/v1/things/1", None).is_some());

    let cases = [
        (serde_json::json!({"get": "/v1/things/{id}", "body": "nope"}), "body \"nope\" is not a top-level field"),
        (serde_json::json!({"get": "/v1/things/{id}", "responseBody": "nope"}), "response_body \"nope\""),
        (serde_json::json!({"get": "/v1/things/{id}", "body": "id"}), "bound by both the path and the body"),
        (serde_json::json!({"get": "v1/things"}), "must start with '/'"),
        (serde_json::json!({"body": "*"}), "HTTP rule has no pattern"),
        (serde_json::json!({"custom": {"kind": "BAD METHOD", "path": "/x"}}), "custom HTTP method"),
        (
            serde_json::json!({"get": "/v1/things/{id}", "additionalBindings": [{"get": "/v2/{missing}"}]}),
            "path variable \"missing\"",
        ),
    ];
    for (json, expected) in cases {
        let set = set_with_rule(false, rule(json.clone()));
        let err = load(&set, &["test.v1.Svc"]).expect_err("invalid rule");
        let text = err.to_string();
        assert!(text.starts_with("method test.v1.Svc/Call: "), "{text}");
        assert!(text.contains(expected), "{json}: {text}");
    }
}

#[test]
fn client_streaming_with_a_rule_is_an_error() {
    let set = set_with_rule(true, rule(serde_json::json!({"post": "/v1/things", "body": "*"})));
    let err = load(&set, &["test.v1.Svc"]).expect_err("client streaming");
    assert!(matches!(&err, LoadError::ClientStreaming { method } if method == "test.v1.Svc/Call"), "{err}");
}

#[test]
fn duplicate_bindings_are_an_error() {
    let set = set_with_rule(
        false,
        rule(serde_json::json!({"get": "/v1/things/{id}", "additionalBindings": [{"get": "/v1/things/{name}"}]})),
    );
    let err = load(&set, &["test.v1.Svc"]).expect_err("duplicate");
    assert!(matches!(err, LoadError::DuplicateRoute { .. }), "{err}");
}
