use serde_json::json;
use weir_plugin_sdk::http;
use weir_plugin_sdk::testing::Harness;

use super::*;

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path).header("x-greeting", "old").body(()).expect("request")
}

#[test]
fn sets_request_header_replacing_existing() {
    let h = Harness::<AddHeader>::new(json!({ "name": "x-greeting", "value": "hello" })).expect("init");
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS);
    let req = h.on_request(get("/")).unwrap_continue();
    let values: Vec<_> = req.headers().get_all("x-greeting").iter().collect();
    assert_eq!(values, ["hello"]);
}

#[test]
fn appends_when_asked() {
    let h = Harness::<AddHeader>::new(json!({ "name": "x-greeting", "value": "hi", "append": true })).expect("init");
    let req = h.on_request(get("/")).unwrap_continue();
    let values: Vec<_> = req.headers().get_all("x-greeting").iter().collect();
    assert_eq!(values, ["old", "hi"]);
}

#[test]
fn response_target() {
    let h =
        Harness::<AddHeader>::new(json!({ "name": "x-served-by", "value": "weir", "to": "response" })).expect("init");
    assert_eq!(h.phases(), Phases::RESPONSE_HEADERS);
    let resp = h.on_response(&get("/"), http::Response::new(())).unwrap_continue();
    assert_eq!(resp.headers()["x-served-by"], "weir");
}

#[test]
fn rejects_bad_config() {
    let err = Harness::<AddHeader>::new(json!({ "name": "bad header", "value": "x" })).err().expect("must fail");
    assert!(err.contains("invalid HTTP header name"), "{err}");
    let err = Harness::<AddHeader>::new(json!({ "value": "x" })).err().expect("must fail");
    assert!(err.contains("missing field `name`"), "{err}");
    let err = Harness::<AddHeader>::new(json!({ "name": "a", "value": "x", "colour": 1 })).err().expect("must fail");
    assert!(err.contains("unknown field `colour`"), "{err}");
}
