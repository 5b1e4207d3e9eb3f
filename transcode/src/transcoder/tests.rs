//! Unit tests for `transcoder`: configuration defaults and route listing.

use super::*;
use crate::test_support::shop;

#[test]
fn config_defaults() {
    let config = TranscoderConfig::new(["a.B"]);
    assert_eq!(config.services, ["a.B"]);
    assert_eq!(config.max_descriptor_size, DEFAULT_MAX_DESCRIPTOR_SIZE);
    assert_eq!(config.max_response_message_size, DEFAULT_MAX_MESSAGE_SIZE);
    assert_eq!(config.json, JsonOptions::default());
}

#[test]
fn annotations_are_listed_before_fallbacks() {
    let t = shop();
    let routes: Vec<RouteInfo> = t.routes().collect();
    let first_fallback = routes.iter().position(|r| r.pattern.starts_with("/shop.")).expect("fallbacks");
    assert!(routes[..first_fallback].iter().all(|r| r.pattern.starts_with("/v1/")));
    // 7 annotated methods, one with an additional binding; 8 fallbacks
    // (every method but the client-streaming one).
    assert_eq!(first_fallback, 8);
    assert_eq!(routes.len() - first_fallback, 8);
}

#[test]
fn route_match_exposes_the_method() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders/1", Some("a=b")).expect("match");
    assert_eq!(m.method().full_name(), "shop.v1.Orders.GetOrder");
    assert_eq!(m.pattern(), "/v1/orders/{id}");
    assert!(!m.expects_body());
    assert!(!m.is_server_streaming());
}
