//! Unit tests for `router`, through `Transcoder::route` on the shop fixture.

use http::Method;

use crate::test_support::shop;

fn vars(m: &crate::RouteMatch<'_>) -> Vec<(String, String)> {
    m.path_variables().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[test]
fn matches_methods_and_binds_variables() {
    let t = shop();
    let m = t.route(&Method::GET, "/v1/orders/42", None).expect("GetOrder");
    assert_eq!(m.grpc_path(), "/shop.v1.Orders/GetOrder");
    assert_eq!(vars(&m), [("id".to_owned(), "42".to_owned())]);

    let m = t.route(&Method::GET, "/v1/orders", None).expect("ListOrders");
    assert_eq!(m.grpc_path(), "/shop.v1.Orders/ListOrders");
    assert!(m.is_server_streaming());

    let m = t.route(&Method::PATCH, "/v1/orders/7", None).expect("UpdateOrder");
    assert_eq!(vars(&m), [("order.id".to_owned(), "7".to_owned())]);

    let m = t.route(&Method::DELETE, "/v1/orders/7", None).expect("DeleteOrder");
    assert_eq!(m.grpc_path(), "/shop.v1.Orders/DeleteOrder");

    let m = t.route(&Method::GET, "/v1/shops/shops/berlin/orders/9", None).expect("additional binding");
    assert_eq!(vars(&m), [("shop".to_owned(), "shops/berlin".to_owned()), ("id".to_owned(), "9".to_owned())]);
}

#[test]
fn verb_routes_win_and_need_their_verb() {
    let t = shop();
    let m = t.route(&Method::POST, "/v1/orders/42:cancel", None).expect("CancelOrder");
    assert_eq!(m.grpc_path(), "/shop.v1.Orders/CancelOrder");
    assert_eq!(vars(&m), [("id".to_owned(), "42".to_owned())]);
    // Without a verb route for GET, the colon is part of the id.
    let m = t.route(&Method::GET, "/v1/orders/42:cancel", None).expect("GetOrder");
    assert_eq!(vars(&m), [("id".to_owned(), "42:cancel".to_owned())]);
    assert!(t.route(&Method::POST, "/v1/orders/:cancel", None).is_none());
    assert!(t.route(&Method::POST, "/v1/orders/42:refund", None).is_none());
}

#[test]
fn double_wildcard_and_custom_methods() {
    let t = shop();
    let search = Method::from_bytes(b"SEARCH").expect("valid method");
    let m = t.route(&search, "/v1/files/a/b%2Fc/d.txt", None).expect("GetFile");
    assert_eq!(vars(&m), [("path".to_owned(), "a/b%2Fc/d.txt".to_owned())]);
    let m = t.route(&search, "/v1/files", None).expect("** matches zero segments");
    assert_eq!(vars(&m), [("path".to_owned(), String::new())]);
    assert!(t.route(&Method::GET, "/v1/files/a", None).is_none());
}

#[test]
fn fallback_routes_and_misses() {
    let t = shop();
    for method in ["GetOrder", "Ping", "ListOrders"] {
        let path = format!("/shop.v1.Orders/{method}");
        let m = t.route(&Method::POST, &path, None).expect("fallback");
        assert_eq!(m.grpc_path(), path);
        assert!(m.expects_body());
    }
    // Client streaming is not routed at all.
    assert!(t.route(&Method::POST, "/shop.v1.Orders/UploadOrders", None).is_none());
    assert!(t.route(&Method::GET, "/shop.v1.Orders/Ping", None).is_none());
    assert!(t.route(&Method::GET, "/v1/orders/", None).is_none(), "* needs a non-empty segment");
    assert!(t.route(&Method::GET, "/v1/orders/1/2", None).is_none());
    assert!(t.route(&Method::GET, "v1/orders/1", None).is_none());
    assert!(t.route(&Method::PUT, "/v1/orders/1", None).is_none());
    assert!(t.path_matches_any_method("/v1/orders/1"));
    assert!(!t.path_matches_any_method("/v2/orders/1"));
}

#[test]
fn literals_compare_decoded_and_slash_escapes_do_not_split() {
    let t = shop();
    assert!(t.route(&Method::GET, "/v1/%6Frders/1", None).is_some(), "%6F is 'o'");
    let m = t.route(&Method::GET, "/v1/orders/a%2Fb", None).expect("one segment");
    assert_eq!(vars(&m), [("id".to_owned(), "a%2Fb".to_owned())]);
}
