use serde_json::{Value, json};
use weir_plugin_sdk::http;
use weir_plugin_sdk::testing::{self, Harness};

use super::*;

fn harness(config: Value) -> Harness<Transform> {
    Harness::<Transform>::new(config).expect("config accepted")
}

fn config_error(config: Value) -> String {
    Harness::<Transform>::new(config).err().expect("config must be rejected")
}

fn get(uri: &str) -> http::Request<()> {
    http::Request::get(uri).header("host", "api.example.com").body(()).expect("request")
}

fn with_headers(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::post(uri).header("host", "api.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

fn json_response(status: u16) -> http::Response<()> {
    http::Response::builder().status(status).header("content-type", "application/json").body(()).expect("response")
}

fn body_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("body is JSON")
}

// ---- phases ---------------------------------------------------------------

#[test]
fn asks_only_for_the_phases_the_config_needs() {
    let cases = [
        (json!({}), Phases::empty()),
        (json!({ "request": { "headers": { "remove": ["x-a"] } } }), Phases::REQUEST_HEADERS),
        (json!({ "request": { "path": { "strip_prefix": "/api" } } }), Phases::REQUEST_HEADERS),
        (json!({ "request": { "query": { "remove": ["a"] } } }), Phases::REQUEST_HEADERS),
        (json!({ "request": { "body": { "remove": ["/a"] } } }), Phases::REQUEST_BODY),
        // Values only added to the response go on it from on_request
        // (add_response_header): no response phase ...
        (json!({ "response": { "headers": { "add": { "x-a": "1" } } } }), Phases::REQUEST_HEADERS),
        (json!({ "response": { "headers": { "add": { "x-a": "{header.x-user}" } } } }), Phases::REQUEST_HEADERS),
        // ... other response header edits need it.
        (json!({ "response": { "headers": { "set": { "x-a": "1" } } } }), Phases::RESPONSE_HEADERS),
        (
            json!({ "response": { "headers": { "add": { "x-a": "1" } }, "status_map": { "404": 200 } } }),
            Phases::RESPONSE_HEADERS,
        ),
        (json!({ "response": { "status_map": { "404": 200 } } }), Phases::RESPONSE_HEADERS),
        (json!({ "response": { "body": { "remove": ["/a"] } } }), Phases::RESPONSE_BODY),
        // Templates of later phases that read values a plugin can change
        // need on_request to keep them ...
        (
            json!({ "response": { "headers": { "set": { "x-a": "{header.x-user}" } } } }),
            Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS,
        ),
        (
            json!({ "request": { "body": { "set": { "/q": "{query.q}" } } } }),
            Phases::REQUEST_HEADERS | Phases::REQUEST_BODY,
        ),
        // ... values that cannot change do not.
        (
            json!({ "response": { "body": { "set": { "/ip": "{client_ip} {path.id} {route} {request_id} {authority}" } } } }),
            Phases::RESPONSE_BODY,
        ),
        (json!({ "request": { "headers": { "set": { "x-a": "{header.b}" } } } }), Phases::REQUEST_HEADERS),
    ];
    for (config, phases) in cases {
        assert_eq!(harness(config.clone()).phases(), phases, "{config}");
    }
}

// ---- headers --------------------------------------------------------------

#[test]
fn header_operations_run_remove_rename_set_add() {
    let h = harness(json!({ "request": { "headers": {
        "remove": ["x-del", "X-Gone"],
        "rename": { "x-old": "x-target" },
        "set": { "x-multi": ["s1", "s2"], "x-new": "fresh" },
        "add": { "x-target": "added", "x-del": "re-added" },
    } } }));
    let req = with_headers(
        "/",
        &[
            ("x-del", "d"),
            ("x-gone", "g"),
            ("x-old", "1"),
            ("x-old", "2"),
            ("x-target", "replaced by the rename"),
            ("x-multi", "m"),
            ("x-kept", "k"),
        ],
    );
    let out = h.on_request(req).unwrap_continue();
    let hs = out.headers();
    assert_eq!(values(hs, "x-del"), ["re-added"], "removed, then added");
    assert!(values(hs, "x-gone").is_empty(), "names are case-insensitive");
    assert!(values(hs, "x-old").is_empty());
    assert_eq!(values(hs, "x-target"), ["1", "2", "added"], "rename replaces the target, add appends");
    assert_eq!(values(hs, "x-multi"), ["s1", "s2"], "set replaces all values");
    assert_eq!(values(hs, "x-new"), ["fresh"]);
    assert_eq!(values(hs, "x-kept"), ["k"]);
}

#[test]
fn rename_of_an_absent_header_leaves_the_target() {
    let h = harness(json!({ "request": { "headers": { "rename": { "x-from": "x-to" } } } }));
    let out = h.on_request(with_headers("/", &[("x-to", "stays")])).unwrap_continue();
    assert_eq!(values(out.headers(), "x-to"), ["stays"]);
}

#[test]
fn response_headers_and_status_map() {
    let h = harness(json!({ "response": {
        "headers": { "remove": ["server"], "rename": { "x-upstream": "x-backend" }, "set": { "cache-control": "no-store" }, "add": { "vary": "x-tenant" } },
        "status_map": { "404": 200, "5xx": 503, "502": 504 },
    } }));
    let resp = http::Response::builder()
        .status(404)
        .header("server", "nginx")
        .header("x-upstream", "u1")
        .header("cache-control", "max-age=60")
        .header("vary", "accept")
        .body(())
        .expect("response");
    let out = h.on_response(&get("/"), resp).unwrap_continue();
    assert_eq!(out.status(), 200);
    assert!(values(out.headers(), "server").is_empty());
    assert_eq!(values(out.headers(), "x-backend"), ["u1"]);
    assert_eq!(values(out.headers(), "cache-control"), ["no-store"]);
    assert_eq!(values(out.headers(), "vary"), ["accept", "x-tenant"]);

    let status = |code: u16| h.on_response(&get("/"), json_response(code)).unwrap_continue().status().as_u16();
    assert_eq!(status(500), 503, "class");
    assert_eq!(status(502), 504, "an exact code wins over its class");
    assert_eq!(status(201), 201, "unmapped");
    assert_eq!(status(403), 403);
}

// ---- templates ------------------------------------------------------------

#[test]
fn templates_read_every_source() {
    let h = harness(json!({ "request": { "headers": { "set": {
        "x-header": "{header.x-user}",
        "x-param": "{path.id}",
        "x-query": "{query.q}",
        "x-ip": "{client_ip}",
        "x-method": "{method}",
        "x-path": "{path}",
        "x-route": "{route}",
        "x-id": "{request_id}",
        "x-authority": "{authority}",
        "x-missing": "[{header.x-none}{query.none}{path.none}]",
        "x-braces": "{{literal}} {method}",
    } } } }))
    .client_addr("10.1.2.3:5555")
    .route("items")
    .path_param("id", "caf%C3%A9");
    let req = with_headers("/items/caf%C3%A9?a=1&q=hello%20world+again&q=second", &[("x-user", "alice")]);
    let out = h.on_request(req).unwrap_continue();
    let one = |n: &str| values(out.headers(), n).join("|");
    assert_eq!(one("x-header"), "alice");
    assert_eq!(one("x-param"), "café", "path values are decoded outside the path");
    assert_eq!(one("x-query"), "hello world again", "first value, decoded");
    assert_eq!(one("x-ip"), "10.1.2.3");
    assert_eq!(one("x-method"), "POST");
    assert_eq!(one("x-path"), "/items/café");
    assert_eq!(one("x-route"), "items");
    assert_eq!(one("x-id"), "test-request");
    assert_eq!(one("x-authority"), "api.example.com");
    assert_eq!(one("x-missing"), "[]", "a missing value renders empty");
    assert_eq!(one("x-braces"), "{literal} POST");
}

#[test]
fn templates_read_the_request_before_this_plugins_edits() {
    let h = harness(json!({ "request": {
        "headers": { "remove": ["x-user"], "set": { "x-copy": "{header.x-user} {path} {query.q}" } },
        "path": { "add_prefix": "/v2" },
        "query": { "remove": ["q"] },
    } }));
    let out = h.on_request(with_headers("/a?q=1", &[("x-user", "bob")])).unwrap_continue();
    assert_eq!(values(out.headers(), "x-copy"), ["bob /a 1"]);
    assert!(values(out.headers(), "x-user").is_empty());
    assert_eq!(out.uri(), "/v2/a");
}

#[test]
fn later_phases_read_values_kept_from_on_request() {
    let h = harness(json!({
        "request": {
            "headers": { "remove": ["x-user"] },
            "query": { "remove": ["q"] },
            "body": { "set": { "/user": "{header.x-user}", "/q": "{query.q}", "/path": "{path}" } },
        },
        "response": { "headers": { "set": { "x-echo": "{header.x-user}/{method}" } } },
    }));
    let sent = h.on_request(with_headers("/p?q=42", &[("x-user", "carol"), ("content-type", "application/json")]));
    // The request as it goes upstream: the header and the parameter are gone.
    let sent = sent.unwrap_continue();
    assert!(sent.headers().get("x-user").is_none());
    assert_eq!(sent.uri(), "/p");
    let body = h.on_request_body(&sent, br#"{"a":1}"#).unwrap_continue();
    assert_eq!(body_json(&body), json!({ "a": 1, "user": "carol", "q": "42", "path": "/p" }));
    let resp = h.on_response(&sent, json_response(200)).unwrap_continue();
    assert_eq!(values(resp.headers(), "x-echo"), ["carol/POST"]);
}

#[test]
fn without_kept_values_later_phases_read_the_request_they_get() {
    // E.g. when the kept values do not fit the request-local store.
    let h = harness(json!({ "response": { "headers": { "set": { "x-echo": "{header.x-user}" } } } }));
    let req = with_headers("/", &[("x-user", "dave")]);
    let resp = h.on_response(&req, json_response(200)).unwrap_continue();
    assert_eq!(values(resp.headers(), "x-echo"), ["dave"]);
}

#[test]
fn oversized_kept_values_fall_back_with_a_warning() {
    testing::reset();
    let h = harness(json!({ "response": { "headers": { "set": { "x-echo": "{header.x-big}" } } } }));
    let big = "b".repeat(17 * 1024);
    let sent = h.on_request(with_headers("/", &[("x-big", &big)])).unwrap_continue();
    assert!(testing::logs().iter().any(|(l, m)| *l == Level::Warn && m.contains("request-local limit")));
    let resp = h.on_response(&sent, json_response(200)).unwrap_continue();
    assert_eq!(values(resp.headers(), "x-echo"), [big]);
}

#[test]
fn invalid_rendered_request_header_is_a_400() {
    let h = harness(json!({ "request": { "headers": { "set": { "x-q": "{query.q}" } } } }));
    let resp = h.on_request(get("/?q=line%0Abreak")).unwrap_respond();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let err = body_json(resp.body());
    assert!(err["error"].as_str().expect("message").contains("header x-q"), "{err}");
    // A valid value passes.
    let out = h.on_request(get("/?q=fine")).unwrap_continue();
    assert_eq!(values(out.headers(), "x-q"), ["fine"]);
}

#[test]
fn invalid_rendered_response_header_is_left_out() {
    testing::reset();
    let h = harness(json!({ "response": { "headers": { "set": { "x-q": "{query.q}", "x-ok": "yes" } } } }));
    let out = h.on_response(&get("/?q=%0D%0Aset-cookie:%20x"), json_response(200)).unwrap_continue();
    assert!(out.headers().get("x-q").is_none());
    assert_eq!(values(out.headers(), "x-ok"), ["yes"]);
    assert!(testing::logs().iter().any(|(l, m)| *l == Level::Warn && m.contains("x-q")));
}

// ---- path -----------------------------------------------------------------

fn rewritten(config: Value, uri: &str) -> String {
    let h = harness(json!({ "request": { "path": config } })).path_param("id", "7");
    h.on_request(get(uri)).unwrap_continue().uri().to_string()
}

#[test]
fn strip_and_add_prefix() {
    let cfg = json!({ "strip_prefix": "/api/", "add_prefix": "/internal/" });
    assert_eq!(rewritten(cfg.clone(), "/api/users/1?x=1"), "/internal/users/1?x=1", "query kept");
    assert_eq!(rewritten(cfg.clone(), "/api"), "/internal/");
    assert_eq!(rewritten(cfg.clone(), "/apix/users"), "/internal/apix/users", "segment boundary");
    assert_eq!(rewritten(json!({ "strip_prefix": "/api" }), "/other"), "/other");
    assert_eq!(rewritten(json!({ "strip_prefix": "/api" }), "/api/"), "/");
    assert_eq!(rewritten(json!({ "add_prefix": "/t/{path.id}" }), "/x?y"), "/t/7/x?y");
}

#[test]
fn regex_replace_with_captures() {
    let cfg = json!({ "regex": "^/users/(\\d+)/posts/(\\d+)$", "replace": "/posts/$2/by/${1}" });
    assert_eq!(rewritten(cfg.clone(), "/users/12/posts/34?page=2"), "/posts/34/by/12?page=2");
    assert_eq!(rewritten(cfg, "/users/x/posts/34"), "/users/x/posts/34", "no match: unchanged");
    let named = json!({ "regex": "^/u/(?P<name>[^/]+)", "replace": "/users/${name}$$" });
    assert_eq!(rewritten(named, "/u/ann/x"), "/users/ann$/x");
    let all = json!({ "regex": "v1", "replace": "v2" });
    assert_eq!(rewritten(all, "/v1/a/v1"), "/v2/a/v2", "every match is replaced");
    let with_template = json!({ "regex": "^/items/(.*)$", "replace": "/{method}/$1/{path.id}" });
    assert_eq!(rewritten(with_template, "/items/a/b"), "/GET/a/b/7");
    let missing_slash = json!({ "regex": "^/(.*)$", "replace": "$1" });
    assert_eq!(rewritten(missing_slash, "/x/y"), "/x/y", "a path always starts with '/'");
}

#[test]
fn path_operations_run_strip_regex_add() {
    let cfg = json!({ "strip_prefix": "/api", "regex": "^/(\\w+)$", "replace": "/$1s", "add_prefix": "/v2" });
    assert_eq!(rewritten(cfg, "/api/user"), "/v2/users");
}

#[test]
fn template_values_are_encoded_in_the_path() {
    let h = harness(json!({ "request": { "path": { "add_prefix": "/t/{header.x-t}/{path.p}" } } }))
        .path_param("p", "caf%C3%A9");
    let enc = |v: &str| h.on_request(with_headers("/x", &[("x-t", v)])).unwrap_continue().uri().to_string();
    assert_eq!(enc("a b/c?d#e%"), "/t/a%20b%2Fc%3Fd%23e%25/caf%C3%A9/x", "one segment; path values kept as sent");
    assert_eq!(enc("café"), "/t/caf%C3%A9/caf%C3%A9/x");
    assert_eq!(enc("%2E%2E"), "/t/%252E%252E/caf%C3%A9/x", "text, not an escaped dot segment");
    assert_eq!(enc("..."), "/t/.../caf%C3%A9/x", "three dots are a name");
}

/// What `on_request` makes of `uri` with a path `config` and route
/// parameters `params`: the new URI, or the status and error message.
fn path_outcome(config: Value, params: &[(&str, &str)], uri: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    let mut h = harness(json!({ "request": { "path": config } }));
    for (name, value) in params {
        h = h.path_param(name, value);
    }
    match h.on_request(with_headers(uri, headers)) {
        testing::Outcome::Continue(req) => Ok(req.uri().to_string()),
        testing::Outcome::Respond(resp) => {
            let err = body_json(resp.body());
            Err(format!("{} {}", resp.status().as_u16(), err["error"].as_str().expect("message")))
        }
    }
}

/// Review finding 1.6: a request value that would become a `.` or `..`
/// segment of the rewritten path could climb out of the configured prefix
/// once the upstream normalises the path; such requests are refused.
#[test]
fn rewritten_paths_never_contain_dot_segments() {
    let tenant = json!({ "add_prefix": "/tenants/{path.t}" });
    let rest = json!({ "regex": "^/f/.*$", "replace": "/files/{path.rest}" });
    let capture = json!({ "regex": "^/t/([^/]+)/(.*)$", "replace": "/tenants/$1/$2" });
    let header = json!({ "add_prefix": "/t/{header.x-t}" });
    let prefixes = json!({ "strip_prefix": "/api", "add_prefix": "/v2" });
    let refused = [
        (&tenant, ("t", ".."), "/x", ("x-t", "")),
        (&tenant, ("t", "."), "/x", ("x-t", "")),
        (&tenant, ("t", "%2e%2E"), "/x", ("x-t", "")),
        (&tenant, ("t", ".%2E"), "/x", ("x-t", "")),
        (&tenant, ("t", "..;x=1"), "/x", ("x-t", "")),
        (&tenant, ("t", "..%2Fadmin"), "/x", ("x-t", "")),
        (&tenant, ("t", "..%5Cadmin"), "/x", ("x-t", "")),
        (&rest, ("rest", "a/../../etc/passwd"), "/f/a/../../etc/passwd", ("x-t", "")),
        (&rest, ("rest", "a/%2E%2E/b"), "/f/a/%2E%2E/b", ("x-t", "")),
        (&rest, ("rest", "."), "/f/.", ("x-t", "")),
        (&capture, ("t", ""), "/t/../admin", ("x-t", "")),
        (&capture, ("t", ""), "/t/acme/../../admin", ("x-t", "")),
        (&header, ("t", ""), "/x", ("x-t", "..")),
        (&header, ("t", ""), "/x", ("x-t", ".")),
        (&prefixes, ("t", ""), "/api/../admin", ("x-t", "")),
    ];
    for (config, param, uri, header) in refused {
        let out = path_outcome(config.clone(), &[param], uri, &[header]);
        let err = out.expect_err(&format!("{config} with {param:?} {uri} {header:?} must be refused"));
        assert!(err.starts_with("400 ") && err.contains("dot segment"), "{err}");
    }
    let allowed = [
        (&tenant, ("t", "acme"), "/x", "/tenants/acme/x"),
        (&tenant, ("t", "..."), "/x", "/tenants/.../x"),
        (&tenant, ("t", ".well-known"), "/x", "/tenants/.well-known/x"),
        (&tenant, ("t", "a..b"), "/x", "/tenants/a..b/x"),
        (&rest, ("rest", "a/b.c/d.."), "/f/a/b.c/d..", "/files/a/b.c/d.."),
        (&capture, ("t", ""), "/t/acme/a.b/c", "/tenants/acme/a.b/c"),
        // The plugin does not rewrite this path: it is none of its business.
        (&capture, ("t", ""), "/other/../x", "/other/../x"),
    ];
    for (config, param, uri, expected) in allowed {
        assert_eq!(path_outcome(config.clone(), &[param], uri, &[]).as_deref(), Ok(expected), "{config} {uri}");
    }
}

// ---- query ----------------------------------------------------------------

fn query_of(config: Value, uri: &str, headers: &[(&str, &str)]) -> String {
    let h = harness(json!({ "request": { "query": config } }));
    h.on_request(with_headers(uri, headers)).unwrap_continue().uri().to_string()
}

#[test]
fn query_operations_run_remove_rename_set_add() {
    let cfg = json!({
        "remove": ["debug", "a b"],
        "rename": { "old": "new" },
        "set": { "page": "1", "tags": ["x", "y"] },
        "add": { "new": "added", "src": "gateway" },
    });
    let out = query_of(cfg, "/s?debug=1&page=5&de%62ug=2&old=o&a+b=3&keep=%2Fk&new=gone&page=6&debug", &[]);
    assert_eq!(out, "/s?page=1&new=o&keep=%2Fk&tags=x&tags=y&new=added&src=gateway");
}

#[test]
fn query_values_are_encoded() {
    let cfg = json!({ "add": { "q": "{header.x-q}", "lit": "a b&c", "ä": "ü" } });
    let out = query_of(cfg, "/s", &[("x-q", "x=1&y=2 #z")]);
    assert_eq!(out, "/s?lit=a%20b%26c&q=x%3D1%26y%3D2%20%23z&%C3%A4=%C3%BC");
}

#[test]
fn query_removed_entirely_and_path_rewrite_keeps_it() {
    assert_eq!(query_of(json!({ "remove": ["a"] }), "/s?a=1&a=2", &[]), "/s", "no empty '?'");
    assert_eq!(query_of(json!({ "remove": ["zz"] }), "/s?a=1", &[]), "/s?a=1");
    let h = harness(json!({ "request": { "path": { "add_prefix": "/v2" }, "query": { "set": { "b": "2" } } } }));
    assert_eq!(h.on_request(get("/s?a=1")).unwrap_continue().uri(), "/v2/s?a=1&b=2");
}

// ---- JSON bodies ----------------------------------------------------------

fn json_req(content_type: &str) -> http::Request<()> {
    with_headers("/", &[("content-type", content_type)])
}

#[test]
fn request_body_remove_rename_set() {
    let h = harness(json!({ "request": { "body": {
        "remove": ["/password", "/items/0", "/absent"],
        "rename": { "/userName": "/user/name", "/a~1b": "/ab" },
        "set": {
            "/user/id": "{path.id}",
            "/meta/gateway": "weir",
            "/meta/count": 3,
            "/meta/tags": ["a", "b"],
            "/items/-": { "added": true },
            "/password": null,
        },
    } } }))
    .path_param("id", "caf%C3%A9");
    let input = br#"{"userName":"eve","password":"s3cr3t","items":[1,2],"a/b":true,"big":12345678901234567890123}"#;
    let out = h.on_request_body(&json_req("application/json; charset=utf-8"), input).unwrap_continue();
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        r#"{"items":[2,{"added":true}],"ab":true,"big":12345678901234567890123,"user":{"name":"eve","id":"café"},"meta":{"count":3,"gateway":"weir","tags":["a","b"]},"password":null}"#
    );
}

#[test]
fn set_skips_through_scalars_and_past_array_ends() {
    let h = harness(json!({ "request": { "body": { "set": { "/s/x": 1, "/l/5": 1, "/ok": 1 } } } }));
    let out = h.on_request_body(&json_req("application/json"), br#"{"s":"str","l":[0]}"#).unwrap_continue();
    assert_eq!(body_json(&out), json!({ "s": "str", "l": [0], "ok": 1 }));
}

#[test]
fn set_root_replaces_the_body() {
    let h = harness(json!({ "request": { "body": { "set": { "": { "replaced": true } } } } }));
    let out = h.on_request_body(&json_req("application/json"), b"[1,2]").unwrap_continue();
    assert_eq!(body_json(&out), json!({ "replaced": true }));
}

/// Review finding 1.5: with duplicate keys on the way to a pointer, every
/// duplicate parent is edited, so an upstream (or client) parser that keeps
/// the first duplicate sees the edit as well as one that keeps the last.
#[test]
fn body_edits_reach_every_duplicate_parent() {
    let h = harness(json!({
        "request": { "body": { "remove": ["/a/role"], "rename": { "/a/name": "/a/user" }, "set": { "/a/via": "gw" } } },
        "response": { "body": { "remove": ["/user/ssn"] } },
    }));
    let req = json_req("application/json");
    for (input, expected) in [
        (r#"{"a":{"role":"admin"},"a":{}}"#, r#"{"a":{"via":"gw"},"a":{"via":"gw"}}"#),
        (r#"{"a":{},"a":{"role":"admin"}}"#, r#"{"a":{"via":"gw"},"a":{"via":"gw"}}"#),
        (
            r#"{"a":{"name":"x","role":"admin"},"a":{"name":"y"}}"#,
            r#"{"a":{"user":"x","via":"gw"},"a":{"user":"y","via":"gw"}}"#,
        ),
    ] {
        let out = h.on_request_body(&req, input.as_bytes()).unwrap_continue();
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{input}");
    }
    for (input, expected) in [
        (r#"{"user":{"ssn":"1"},"user":{"id":2}}"#, r#"{"user":{},"user":{"id":2}}"#),
        (r#"{"user":{"id":2},"user":{"ssn":"1"}}"#, r#"{"user":{"id":2},"user":{}}"#),
    ] {
        let out = h.on_response_body(&req, &json_response(200), input.as_bytes()).unwrap_continue();
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected, "{input}");
    }
}

#[test]
fn only_json_content_types_are_edited() {
    let h = harness(json!({ "request": { "body": { "set": { "/x": 1 } } } }));
    let edited = |ct: &str| h.on_request_body(&json_req(ct), br#"{"a":0}"#).unwrap_continue() != br#"{"a":0}"#;
    assert!(edited("application/json"));
    assert!(edited("Application/JSON"));
    assert!(edited("application/problem+json; charset=utf-8"));
    assert!(edited("application/vnd.api+json"));
    assert!(!edited("text/plain"));
    assert!(!edited("application/jsonp"));
    assert!(!edited("application/x-www-form-urlencoded"));
    assert!(!edited("+json"));
    let no_type = with_headers("/", &[]);
    assert_eq!(h.on_request_body(&no_type, b"{not json").unwrap_continue(), b"{not json", "passes through");
    assert_eq!(h.on_request_body(&json_req("application/json"), b"").unwrap_continue(), b"", "empty body");
}

#[test]
fn invalid_request_json_is_a_400() {
    let h = harness(json!({ "request": { "body": { "remove": ["/a"] } } }));
    let resp = h.on_request_body(&json_req("application/json"), br#"{"a":1,}"#).unwrap_respond();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let err = body_json(resp.body());
    assert!(err["error"].as_str().expect("message").starts_with("body is not valid JSON"), "{err}");
}

#[test]
fn request_body_size_limit_and_encoding() {
    let h = harness(json!({ "max_body": "16B", "request": { "body": { "remove": ["/a"] } } }));
    let small = br#"{"a":1,"b":2}"#;
    assert_eq!(body_json(&h.on_request_body(&json_req("application/json"), small).unwrap_continue()), json!({"b": 2}));
    let big = br#"{"a":1,"b":"0123456789"}"#;
    let resp = h.on_request_body(&json_req("application/json"), big).unwrap_respond();
    assert_eq!(resp.status(), 413);
    assert!(body_json(resp.body())["error"].as_str().expect("message").contains("16 bytes"));
    // A large body that is not JSON is none of our business.
    assert_eq!(h.on_request_body(&json_req("text/plain"), big).unwrap_continue(), big);

    let gz = with_headers("/", &[("content-type", "application/json"), ("content-encoding", "gzip")]);
    assert_eq!(h.on_request_body(&gz, small).unwrap_respond().status(), 415);
    let identity = with_headers("/", &[("content-type", "application/json"), ("content-encoding", "identity")]);
    assert_eq!(body_json(&h.on_request_body(&identity, small).unwrap_continue()), json!({"b": 2}));

    let h = harness(json!({ "max_body": 8, "request": { "body": { "remove": ["/a"] } } }));
    assert_eq!(h.on_request_body(&json_req("application/json"), small).unwrap_respond().status(), 413);
}

#[test]
fn response_body_edits() {
    let h = harness(json!({ "response": { "body": {
        "remove": ["/internal"],
        "rename": { "/userName": "/user_name" },
        "set": { "/served_by": "{route}", "/list/0/flag": true },
    } } }))
    .route("users");
    let body = br#"{"userName":"f","internal":{"x":1},"list":[{"id":1},{"id":2}]}"#;
    let out = h.on_response_body(&get("/"), &json_response(200), body).unwrap_continue();
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        r#"{"user_name":"f","list":[{"id":1,"flag":true},{"id":2}],"served_by":"users"}"#
    );
}

#[test]
fn response_bodies_that_cannot_be_edited_pass_through() {
    testing::reset();
    let h = harness(json!({ "max_body": 32, "response": { "body": { "remove": ["/a"] } } }));
    let req = get("/");
    let invalid = b"{\"a\": oops";
    assert_eq!(h.on_response_body(&req, &json_response(200), invalid).unwrap_continue(), invalid);
    assert_eq!(testing::counter("response_body_skipped_invalid"), 1);

    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(64));
    assert_eq!(h.on_response_body(&req, &json_response(200), big.as_bytes()).unwrap_continue(), big.as_bytes());
    assert_eq!(testing::counter("response_body_skipped_too_large"), 1);

    let gz = http::Response::builder()
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(())
        .expect("response");
    assert_eq!(h.on_response_body(&req, &gz, b"\x1f\x8b...").unwrap_continue(), b"\x1f\x8b...");
    assert_eq!(testing::counter("response_body_skipped_encoded"), 1);
    let warnings = testing::logs().into_iter().filter(|(l, _)| *l == Level::Warn).count();
    assert_eq!(warnings, 3);

    let html = http::Response::builder().header("content-type", "text/html").body(()).expect("response");
    assert_eq!(h.on_response_body(&req, &html, b"<p>{\"a\":1}</p>").unwrap_continue(), b"<p>{\"a\":1}</p>");
    assert_eq!(testing::logs().len(), 3, "not JSON: nothing to report");
}

// ---- configuration --------------------------------------------------------

#[test]
fn max_body_forms() {
    for (value, bytes) in [(json!(10), 10), (json!("2KiB"), 2048), (json!("1MB"), 1_000_000), (json!(" 3 B "), 3)] {
        let h = Harness::<Transform>::new(json!({ "max_body": value })).expect("accepted");
        drop(h);
        let s: config::Settings = serde_json::from_value(json!({ "max_body": value })).expect("parses");
        assert_eq!(s.max_body.expect("set").bytes(), Ok(bytes), "{value}");
    }
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (
            json!({ "request": { "headers": { "remov": ["x"] } } }),
            "at `request.headers.remov`: unknown field `remov`, expected one of `remove`",
        ),
        (json!({ "colour": 1 }), "invalid config at `colour`: unknown field `colour`"),
        (
            json!({ "request": { "headers": { "set": { "x-a": 1 } } } }),
            "at `request.headers.set.x-a`: invalid type: integer `1`, expected a string or an array of strings",
        ),
        (
            json!({ "request": { "headers": { "remove": ["bad header"] } } }),
            "request.headers.remove: \"bad header\" is not a valid header name",
        ),
        (
            json!({ "response": { "headers": { "set": { "content-length": "1" } } } }),
            "response.headers.set: \"content-length\" is managed by the gateway",
        ),
        (
            json!({ "request": { "headers": { "set": { "x-a": "line\nbreak" } } } }),
            "request.headers.set.x-a: \"line\\nbreak\" is not a valid header value",
        ),
        (json!({ "request": { "headers": { "set": { "X-A": "1", "x-a": "2" } } } }), "header \"x-a\" is listed twice"),
        (json!({ "request": { "headers": { "rename": { "a": "b", "b": "c" } } } }), "chain"),
        (json!({ "request": { "headers": { "rename": { "a": "c", "b": "c" } } } }), "two names are renamed to"),
        (json!({ "request": { "headers": { "rename": { "a": "A" } } } }), "renamed to itself"),
        (
            json!({ "request": { "headers": { "set": { "x-a": "{nope}" } } } }),
            "request.headers.set.x-a: unknown template source {nope}",
        ),
        (json!({ "request": { "headers": { "set": { "x-a": "{header.bad name}" } } } }), "is not a valid header name"),
        (json!({ "request": { "headers": { "set": { "x-a": "{path.}" } } } }), "unknown template source {path.}"),
        (json!({ "request": { "headers": { "set": { "x-a": "{method" } } } }), "unclosed '{'"),
        (json!({ "request": { "headers": { "set": { "x-a": "a}b" } } } }), "unmatched '}'"),
        (json!({ "request": { "path": { "regex": "(" } } }), "request.path.regex needs request.path.replace"),
        (json!({ "request": { "path": { "regex": "(", "replace": "/" } } }), "request.path.regex:"),
        (json!({ "request": { "path": { "replace": "/x" } } }), "request.path.replace needs request.path.regex"),
        (
            json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/$2" } } }),
            "$2 is not a group of request.path.regex",
        ),
        (json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/${n}" } } }), "${n} is not a group"),
        (
            json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/$x" } } }),
            "'$' must be followed by a group number",
        ),
        (
            json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/a b" } } }),
            "' ' is not allowed in a URL path",
        ),
        (
            json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/a?b" } } }),
            "'?' is not allowed in a URL path",
        ),
        (
            json!({ "request": { "path": { "strip_prefix": "api" } } }),
            "request.path.strip_prefix: \"api\" must start with '/'",
        ),
        (json!({ "request": { "path": { "strip_prefix": "/" } } }), "would strip nothing"),
        (json!({ "request": { "path": { "add_prefix": "/" } } }), "would add nothing"),
        (json!({ "request": { "path": { "add_prefix": "/100%" } } }), "'%' must start an escape"),
        (
            json!({ "request": { "path": { "add_prefix": "/a/../b" } } }),
            "request.path.add_prefix: \"/a/../b\" contains a dot segment",
        ),
        (json!({ "request": { "path": { "add_prefix": "/t/{path.t}/%2E" } } }), "contains a dot segment"),
        (
            json!({ "request": { "path": { "regex": "^/(a)$", "replace": "/x/./$1" } } }),
            "request.path.replace: \"/x/./$1\" contains a dot segment",
        ),
        (
            json!({ "request": { "query": { "remove": [""] } } }),
            "request.query.remove: a parameter name cannot be empty",
        ),
        (
            json!({ "request": { "query": { "add": { "a": "{bad}" } } } }),
            "request.query.add.a: unknown template source",
        ),
        (
            json!({ "request": { "body": { "remove": ["a"] } } }),
            "request.body.remove: JSON pointer \"a\" must be empty or start with '/'",
        ),
        (json!({ "request": { "body": { "remove": [""] } } }), "whole body and cannot be removed"),
        (json!({ "response": { "body": { "rename": { "/a": "/a/b" } } } }), "inside one another"),
        (json!({ "response": { "body": { "rename": { "/a": "/b", "/b/c": "/d" } } } }), "overlap"),
        (json!({ "response": { "body": { "set": { "/a~x": 1 } } } }), "response.body.set: JSON pointer"),
        (
            json!({ "response": { "body": { "set": { "/a": "{x}" } } } }),
            "response.body.set.\"/a\": unknown template source {x}",
        ),
        (
            json!({ "response": { "status_map": { "404": 700 } } }),
            "response.status_map.\"404\": 700 is not a status code in 200-599",
        ),
        (json!({ "response": { "status_map": { "404": 101 } } }), "101 is not a status code in 200-599"),
        (json!({ "response": { "status_map": { "6xx": 200 } } }), "key \"6xx\" must be a status code"),
        (json!({ "response": { "status_map": { "4044": 200 } } }), "key \"4044\""),
        (json!({ "response": { "status_map": { "404": -1 } } }), "at `response.status_map.404`: invalid value"),
        (json!({ "max_body": "1 parsec" }), "max_body: invalid size \"1 parsec\""),
        (json!({ "max_body": 0 }), "max_body: must be more than 0"),
        (json!({ "max_body": -5 }), "size -5 is negative"),
    ];
    for (config, expected) in cases {
        let err = config_error(config.clone());
        assert!(err.contains(expected), "config {config}\n  error: {err}\n  expected to contain: {expected}");
    }
}

#[test]
fn readme_examples_are_valid_configs() {
    // The README's examples, and the one in the crate docs.
    let crate_doc: String = include_str!("lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect();
    let docs = format!("{}{crate_doc}", include_str!("../README.md"));
    let mut checked = 0;
    for block in docs.split("```toml").skip(1) {
        let block = block.split("```").next().expect("closed block");
        let doc: toml::Table =
            toml::from_str(block).unwrap_or_else(|e| panic!("README example is not TOML: {e}\n{block}"));
        let Some(plugins) = doc.get("plugins").and_then(|p| p.as_table()) else { continue };
        for (name, p) in plugins {
            assert_eq!(p.get("module").and_then(|m| m.as_str()), Some("transform.wasm"), "{name}");
            let config = p.get("config").cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
            let config = serde_json::to_value(&config).expect("TOML as JSON");
            if let Err(e) = Harness::<Transform>::new(config) {
                panic!("README example `{name}` is rejected: {e}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "every example was checked");
}

#[test]
fn readme_walkthroughs_hold() {
    let h = harness(json!({ "request": {
        "headers": { "remove": ["x-debug"], "set": { "x-item-id": "{path.id}", "x-client": "{client_ip}" } },
        "path": { "regex": "^/items/([^/]+)$", "replace": "/v2/things/$1" },
    } }))
    .path_param("id", "42")
    .client_addr("192.0.2.7:1234");
    let out = h.on_request(with_headers("/items/42?full=1", &[("x-debug", "1")])).unwrap_continue();
    assert_eq!(out.uri(), "/v2/things/42?full=1");
    assert_eq!(values(out.headers(), "x-item-id"), ["42"]);
    assert_eq!(values(out.headers(), "x-client"), ["192.0.2.7"]);
    assert!(out.headers().get("x-debug").is_none());

    let h = harness(json!({ "request": { "path": {
        "regex": "^/t/(?P<tenant>[^/]+)/", "replace": "/tenants/${tenant}/{header.x-region}/",
    } } }));
    let out = h.on_request(with_headers("/t/acme/orders", &[("x-region", "eu west")])).unwrap_continue();
    assert_eq!(out.uri(), "/tenants/acme/eu%20west/orders");
}

// ---- the declared config schema (contract 0.2.5) ----------------------------

/// The schema, checked as the gateway checks a `config` table before `new`.
mod schema {
    use super::*;

    fn schema() -> Value {
        let text = Transform::config_schema().expect("transform declares a schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(false).build(&schema()).expect("a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, config: &Value) -> Vec<String> {
        v.iter_errors(config).map(|e| format!("{}: {e}", e.instance_path())).collect()
    }

    /// The keys of a table's schema, in order.
    fn keys(table: &Value) -> Vec<&str> {
        table["properties"].as_object().expect("properties").keys().map(String::as_str).collect()
    }

    #[test]
    fn describes_every_documented_key() {
        let schema = schema();
        let defs = &schema["$defs"];
        for (table, documented) in [
            (&schema, &["request", "response", "max_body"][..]),
            (&defs["RequestSettings"], &["headers", "path", "query", "body"]),
            (&defs["ResponseSettings"], &["headers", "body", "status_map"]),
            (&defs["HeaderSettings"], &["remove", "rename", "set", "add"]),
            (&defs["PathSettings"], &["strip_prefix", "regex", "replace", "add_prefix"]),
            (&defs["QuerySettings"], &["remove", "rename", "set", "add"]),
            (&defs["BodySettings"], &["remove", "rename", "set"]),
        ] {
            assert_eq!(keys(table), documented);
            for key in documented {
                let d = &table["properties"][key]["description"];
                assert!(d.as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
            }
            assert_eq!(table["additionalProperties"], false, "{documented:?}");
            assert!(table.get("required").is_none(), "every key is optional: {documented:?}");
        }
        // Keys with several forms.
        let max_body = &schema["properties"]["max_body"];
        assert_eq!(max_body["type"], json!(["integer", "string"]));
        assert_eq!(max_body["default"], "1MiB");
        assert!(max_body["description"].as_str().is_some_and(|d| d.contains("MiB")));
        let set = &defs["HeaderSettings"]["properties"]["set"]["additionalProperties"];
        assert_eq!(set["type"], json!(["string", "array"]), "a template or a list of them");
        assert_eq!(defs["QuerySettings"]["properties"]["add"]["additionalProperties"], *set);
        assert_eq!(defs["BodySettings"]["properties"]["set"]["additionalProperties"], true, "any JSON value");
        let status_map = &defs["ResponseSettings"]["properties"]["status_map"]["additionalProperties"];
        assert_eq!((&status_map["minimum"], &status_map["maximum"]), (&json!(200), &json!(599)));
        assert!(
            defs["PathSettings"]["properties"]["regex"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("regex-lite"))
        );
        assert_eq!(defs["PathSettings"]["properties"]["regex"]["type"], "string", "an absent key, never null");
    }

    #[test]
    fn accepts_every_form_the_plugin_accepts() {
        let v = validator();
        for config in [
            json!({}),
            json!({ "max_body": 1 }),
            json!({ "max_body": "512KiB" }),
            json!({ "max_body": "2 GB" }),
            json!({ "request": {
                "headers": { "remove": ["x-debug"], "rename": { "x-a": "x-b" },
                             "set": { "x-one": "{path.id}", "x-many": ["a", "{client_ip}"] }, "add": { "x-e": [] } },
                "path": { "strip_prefix": "/api", "regex": "^/items/([^/]+)$", "replace": "/v2/items/$1", "add_prefix": "/x" },
                "query": { "remove": ["token"], "rename": { "q": "search" }, "set": { "a": ["1", "2"] }, "add": { "s": "gw" } },
                "body": { "remove": ["/internal"], "rename": { "/a": "/b" },
                          "set": { "/s": "{client_ip}", "/n": 1, "/b": true, "/l": [1, "x"], "/o": { "k": null } } },
            } }),
            json!({ "response": {
                "headers": { "add": { "x-served-by": "weir" } },
                "body": { "rename": { "/userName": "/user_name" } },
                "status_map": { "404": 200, "5xx": 503, "1XX": 599 },
            } }),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.is_empty(), "{config}: {errors:?}");
            harness(config);
        }
    }

    #[test]
    fn refuses_what_a_schema_can_say() {
        let v = validator();
        for (config, at) in [
            (json!({ "requests": {} }), ""),
            (json!({ "request": { "header": {} } }), "/request"),
            (json!({ "request": { "headers": { "delete": [] } } }), "/request/headers"),
            (json!({ "request": { "headers": { "set": { "x-a": 1 } } } }), "/request/headers/set/x-a"),
            (json!({ "request": { "headers": { "set": { "x-a": [1] } } } }), "/request/headers/set/x-a/0"),
            (json!({ "request": { "headers": { "remove": "x-a" } } }), "/request/headers/remove"),
            (json!({ "request": { "path": { "regex": 7 } } }), "/request/path/regex"),
            (json!({ "request": { "query": { "rename": { "a": 1 } } } }), "/request/query/rename/a"),
            (json!({ "response": { "query": {} } }), "/response"),
            (json!({ "response": { "status_map": { "404": 700 } } }), "/response/status_map/404"),
            (json!({ "response": { "status_map": { "404": 101 } } }), "/response/status_map/404"),
            (json!({ "response": { "status_map": { "404": -1 } } }), "/response/status_map/404"),
            (json!({ "response": { "status_map": { "404": "200" } } }), "/response/status_map/404"),
            (json!({ "max_body": 0 }), "/max_body"),
            (json!({ "max_body": -5 }), "/max_body"),
            (json!({ "max_body": true }), "/max_body"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.iter().any(|e| e.starts_with(&format!("{at}: "))), "{config}: {errors:?}");
            config_error(config);
        }
    }

    #[test]
    fn readme_examples_match_the_schema() {
        let v = validator();
        let crate_doc: String = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
            .collect();
        let docs = format!("{}{crate_doc}", include_str!("../README.md"));
        let mut checked = 0;
        for block in docs.split("```toml").skip(1) {
            let block = block.split("```").next().expect("closed block");
            let doc: toml::Table = toml::from_str(block).expect("README example is TOML");
            for (name, p) in doc.get("plugins").and_then(|p| p.as_table()).into_iter().flatten() {
                let config = p.get("config").cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
                let config = serde_json::to_value(&config).expect("TOML as JSON");
                let errors = errors(&v, &config);
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 6, "every example was checked");
    }
}
