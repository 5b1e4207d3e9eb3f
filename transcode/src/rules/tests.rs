//! Unit tests for `rules`: template parsing and rule checks.

use super::*;
use crate::test_support::shop;

fn parse(text: &str) -> (PathTemplate, Vec<RawVariable>) {
    match PathTemplate::parse(text) {
        Ok(parsed) => parsed,
        Err(e) => panic!("{text} should parse: {e}"),
    }
}

fn lit(s: &str) -> Segment {
    Segment::Literal(s.into())
}

#[test]
fn parses_variables_wildcards_and_verbs() {
    let (t, vars) = parse("/v1/{name=shelves/*/books/*}:publish");
    assert_eq!(t.segments, vec![lit("v1"), lit("shelves"), Segment::Single, lit("books"), Segment::Single]);
    assert_eq!(t.verb.as_deref(), Some("publish"));
    assert_eq!(vars, vec![RawVariable { path: "name".into(), start: 1, end: 5 }]);

    let (t, vars) = parse("/v1/orders/{order.id}");
    assert_eq!(t.segments, vec![lit("v1"), lit("orders"), Segment::Single]);
    assert_eq!(vars[0].path, "order.id");
    assert_eq!(t.verb, None);

    let (t, vars) = parse("/files/{path=**}");
    assert_eq!(t.segments, vec![lit("files"), Segment::Multi]);
    assert_eq!((vars[0].start, vars[0].end), (1, 2));

    let (t, _) = parse("/a/*/b/**");
    assert_eq!(t.segments, vec![lit("a"), Segment::Single, lit("b"), Segment::Multi]);
}

#[test]
fn rejects_malformed_templates() {
    for bad in [
        "v1/orders",
        "/v1//orders",
        "/v1/{id",
        "/v1/{a{b}}",
        "/v1/**/tail",
        "/v1/{id}/{id}",
        "/v1/{1id}",
        "/v1/orders:",
        "/v1/a:b/c",
        "/v1/{id=}",
        "/v1/a*b",
    ] {
        assert!(PathTemplate::parse(bad).is_err(), "{bad} should be rejected");
    }
}

#[test]
fn shop_rules_resolve_fields() {
    let t = shop();
    let method =
        t.pool().get_service_by_name("shop.v1.Orders").and_then(|s| s.methods().find(|m| m.name() == "UpdateOrder"));
    let method = method.expect("UpdateOrder");
    let bindings = declared_bindings(&method).expect("valid");
    assert_eq!(bindings.len(), 1);
    let b = &bindings[0];
    assert_eq!(b.http_method, Method::PATCH);
    assert!(matches!(&b.body, Body::Field(f) if f.name() == "order"));
    assert_eq!(b.variables[0].fields.iter().map(|f| f.name()).collect::<Vec<_>>(), ["order", "id"]);

    let get = t.pool().get_service_by_name("shop.v1.Orders").and_then(|s| s.methods().find(|m| m.name() == "GetOrder"));
    let bindings = declared_bindings(&get.expect("GetOrder")).expect("valid");
    assert_eq!(bindings.len(), 2, "additional_bindings are read");
    assert_eq!(bindings[1].pattern, "/v1/shops/{shop=shops/*}/orders/{id}");

    let ping = t.pool().get_service_by_name("shop.v1.Orders").and_then(|s| s.methods().find(|m| m.name() == "Ping"));
    let ping = ping.expect("Ping");
    assert!(declared_bindings(&ping).expect("valid").is_empty());
    assert_eq!(fallback_binding(&ping).expect("valid").pattern, "/shop.v1.Orders/Ping");
}

#[test]
fn field_paths_must_exist_and_be_bindable() {
    let t = shop();
    let input = t.pool().get_message_by_name("shop.v1.UpdateOrderRequest").expect("in pool");
    assert!(resolve_field_path(&input, "order.id").is_ok());
    let err = resolve_field_path(&input, "order.nope").expect_err("no such field");
    assert_eq!(err, "\"nope\" is not a field of shop.v1.Order");
    assert!(resolve_field_path(&input, "validate_only.x").is_err(), "a bool has no sub-fields");
    let order = t.pool().get_message_by_name("shop.v1.Order").expect("in pool");
    let tags = order.get_field_by_name("tags").expect("tags");
    let created = order.get_field_by_name("created_at").expect("created_at");
    let address = order.get_field_by_name("shipping_address").expect("shipping_address");
    assert!(!is_bindable_leaf(&tags));
    assert!(is_bindable_leaf(&created));
    assert!(!is_bindable_leaf(&address));
}
