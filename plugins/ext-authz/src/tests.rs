use serde_json::{Value, json};
use weir_plugin_sdk::testing::{self, Harness};
use weir_plugin_sdk::{OutboundError, http};

use super::*;

fn plugin(config: Value) -> Harness<ExtAuthz> {
    testing::reset();
    Harness::<ExtAuthz>::new(config).expect("config accepted").client_addr("10.0.0.9:5000")
}

fn get(token: &str) -> http::Request<()> {
    http::Request::get("/orders/7?full=1").header("authorization", token).body(()).expect("request")
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> http::Response<Vec<u8>> {
    let mut b = http::Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(body.as_bytes().to_vec()).expect("answer")
}

fn rejects(config: Value) -> String {
    Harness::<ExtAuthz>::new(config).err().expect("config must be rejected")
}

#[test]
fn a_2xx_allows_and_copies_the_upstream_headers() {
    let h = plugin(json!({ "upstream": "authz", "path_prefix": "/check", "upstream_headers": ["x-user-id"] }));
    testing::stub_outbound("authz", "/check/orders/7", answer(200, &[("x-user-id", "42"), ("x-other", "no")], ""));
    let req = h.on_request(get("Bearer good")).unwrap_continue();
    assert_eq!(req.headers()["x-user-id"], "42");
    assert!(req.headers().get("x-other").is_none(), "only upstream_headers are copied");
    // What the service was asked: method, prefixed path and query, the
    // forwarded credentials, the client and the request id.
    let calls = testing::outbound_calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!((c.upstream(), c.method().as_str(), c.path()), ("authz", "GET", "/check/orders/7?full=1"));
    let header =
        |n: &str| c.headers().iter().find(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert_eq!(header("authorization").as_deref(), Some("Bearer good"));
    assert_eq!(header("x-forwarded-for").as_deref(), Some("10.0.0.9"));
    assert!(header("x-request-id").is_some());
    assert_eq!(testing::counter("allowed"), 1);
}

#[test]
fn any_other_answer_denies_with_the_services_status_headers_and_body() {
    let h = plugin(json!({ "upstream": "authz" }));
    let no = answer(
        401,
        &[("www-authenticate", "Bearer realm=\"api\""), ("content-type", "application/json"), ("x-internal", "secret")],
        "{\"error\":\"expired\"}",
    );
    testing::stub_outbound("authz", "/orders/7", no);
    let denied = h.on_request(get("Bearer old")).unwrap_respond();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer realm=\"api\"");
    assert_eq!(denied.headers()["content-type"], "application/json");
    assert!(denied.headers().get("x-internal").is_none(), "only client_headers reach the client");
    assert_eq!(denied.body(), b"{\"error\":\"expired\"}");
    assert_eq!(testing::counter("denied"), 1);
}

#[test]
fn without_an_answer_failure_decides() {
    let h = plugin(json!({ "upstream": "authz" }));
    testing::stub_outbound_error("authz", "/orders/7", OutboundError::Timeout("200ms".into()));
    let refused = h.on_request(get("Bearer t")).unwrap_respond();
    assert_eq!(refused.status(), 503);
    assert_eq!(testing::counter("errors"), 1);

    let h = plugin(json!({ "upstream": "authz", "failure": "allow" }));
    testing::stub_outbound_error("authz", "/orders/7", OutboundError::Unavailable("down".into()));
    h.on_request(get("Bearer t")).unwrap_continue();

    // An upstream the instance may not call is no answer either.
    let h = plugin(json!({ "upstream": "authz", "failure_status": 403 }));
    assert_eq!(h.on_request(get("Bearer t")).unwrap_respond().status(), 403);
}

#[test]
fn decisions_are_cached_per_key_but_failures_of_the_service_are_not() {
    let h = plugin(json!({ "upstream": "authz", "upstream_headers": ["x-user-id"], "cache": { "ttl": "30s" } }));
    testing::stub_outbound("authz", "/orders/7", answer(200, &[("x-user-id", "42")], ""));
    for _ in 0..3 {
        let req = h.on_request(get("Bearer a")).unwrap_continue();
        assert_eq!(req.headers()["x-user-id"], "42", "the cached decision adds the headers too");
    }
    assert_eq!(testing::outbound_calls().len(), 1, "asked once");
    assert_eq!(testing::counter("cache_hits"), 2);
    // Another token is another key.
    testing::stub_outbound("authz", "/orders/7", answer(403, &[], "no"));
    assert_eq!(h.on_request(get("Bearer b")).unwrap_respond().status(), 403);
    assert_eq!(h.on_request(get("Bearer b")).unwrap_respond().status(), 403, "denials are cached");
    assert_eq!(testing::outbound_calls().len(), 2);
    // The TTL ends it.
    testing::advance(std::time::Duration::from_secs(31));
    assert_eq!(h.on_request(get("Bearer a")).unwrap_respond().status(), 403);
    // A 5xx from the service is passed on, not remembered.
    testing::stub_outbound("authz", "/orders/7", answer(500, &[], "oops"));
    assert_eq!(h.on_request(get("Bearer c")).unwrap_respond().status(), 500);
    testing::stub_outbound("authz", "/orders/7", answer(200, &[("x-user-id", "9")], ""));
    assert_eq!(h.on_request(get("Bearer c")).unwrap_continue().headers()["x-user-id"], "9");
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    for (config, expect) in [
        (json!({}), "missing field `upstream`"),
        (json!({ "upstream": "" }), "upstream:"),
        (json!({ "upstream": "a", "path_prefix": "check" }), "path_prefix:"),
        (json!({ "upstream": "a", "failure_status": 200 }), "failure_status:"),
        (json!({ "upstream": "a", "timeout": "forever" }), "timeout: invalid duration"),
        (json!({ "upstream": "a", "timeout": "2m" }), "timeout: must be above zero and at most 1m"),
        (json!({ "upstream": "a", "forward_headers": ["bad name"] }), "forward_headers[0]"),
        (json!({ "upstream": "a", "cache": { "ttl": "30s", "key": "{cookie}" } }), "cache.key: unknown `{cookie}`"),
        (
            json!({ "upstream": "a", "cache": { "ttl": "30s", "key": "static" } }),
            "cache.key: the template names nothing",
        ),
        (json!({ "upstream": "a", "cache": { "key": "{path}" } }), "missing field `ttl`"),
        (json!({ "upstream": "a", "extra": 1 }), "unknown field `extra`"),
    ] {
        let err = rejects(config.clone());
        assert!(err.contains(expect), "{config}: {err}");
    }
}

// ---- the declared config schema (contract 0.2.5) ----------------------------

/// The schema, checked as the gateway checks a `config` table before `new`.
mod schema {
    use super::*;

    fn schema() -> Value {
        let text = ExtAuthz::config_schema().expect("ext-authz declares a schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(false).build(&schema()).expect("a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, config: &Value) -> Vec<String> {
        v.iter_errors(config).map(|e| format!("{}: {e}", e.instance_path())).collect()
    }

    #[test]
    fn describes_every_documented_key() {
        let schema = schema();
        let props = schema["properties"].as_object().expect("properties");
        let documented = [
            "upstream",
            "path_prefix",
            "forward_headers",
            "upstream_headers",
            "client_headers",
            "failure",
            "failure_status",
            "timeout",
            "cache",
        ];
        assert_eq!(props.keys().collect::<Vec<_>>(), documented);
        for (key, prop) in props {
            assert!(prop["description"].as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
        }
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], json!(["upstream"]));
        assert_eq!(props["forward_headers"]["default"], json!(["authorization"]));
        assert_eq!(props["client_headers"]["default"], json!(["www-authenticate"]));
        assert_eq!(props["failure"]["default"], "deny");
        assert_eq!(schema["$defs"]["Failure"]["enum"], json!(["deny", "allow"]));
        assert_eq!(
            (&props["failure_status"]["minimum"], &props["failure_status"]["maximum"]),
            (&json!(400), &json!(599))
        );
        assert_eq!(props["timeout"]["default"], "200ms");
        assert!(props["timeout"]["description"].as_str().is_some_and(|d| d.contains("duration")));
        for key in ["forward_headers", "upstream_headers", "client_headers"] {
            assert!(props[key]["description"].as_str().is_some_and(|d| d.contains("header names")), "{key}");
        }
        let cache = &schema["$defs"]["CacheSettings"];
        assert_eq!(props["cache"]["$ref"], "#/$defs/CacheSettings", "a table, never null");
        assert_eq!(cache["properties"].as_object().expect("cache").keys().collect::<Vec<_>>(), ["key", "ttl"]);
        assert_eq!(cache["required"], json!(["ttl"]));
        assert_eq!(cache["additionalProperties"], false);
        assert_eq!(cache["properties"]["key"]["default"], "{method} {path} {header:authorization}");
    }

    #[test]
    fn accepts_every_form_the_plugin_accepts() {
        let v = validator();
        for config in [
            json!({ "upstream": "authz" }),
            json!({ "upstream": "authz", "path_prefix": "", "failure": "allow", "failure_status": 403, "timeout": "1m" }),
            json!({ "upstream": "authz", "forward_headers": [], "upstream_headers": ["x-user-id"], "client_headers": [] }),
            json!({ "upstream": "authz", "cache": { "ttl": "1h" } }),
            json!({ "upstream": "authz", "cache": { "key": "{client_ip}", "ttl": "1s 500ms" } }),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.is_empty(), "{config}: {errors:?}");
            plugin(config);
        }
    }

    #[test]
    fn refuses_what_a_schema_can_say() {
        let v = validator();
        for (config, at) in [
            (json!({}), ""),
            (json!({ "upstream": "a", "extra": 1 }), ""),
            (json!({ "upstream": "" }), "/upstream"),
            (json!({ "upstream": "a", "failure_status": 200 }), "/failure_status"),
            (json!({ "upstream": "a", "failure": "open" }), "/failure"),
            (json!({ "upstream": "a", "timeout": 200 }), "/timeout"),
            (json!({ "upstream": "a", "forward_headers": "authorization" }), "/forward_headers"),
            (json!({ "upstream": "a", "cache": { "key": "{path}" } }), "/cache"),
            (json!({ "upstream": "a", "cache": { "ttl": "1s", "size": 9 } }), "/cache"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.iter().any(|e| e.starts_with(&format!("{at}: "))), "{config}: {errors:?}");
            rejects(config);
        }
    }

    #[test]
    fn readme_examples_match_the_schema() {
        let v = validator();
        let mut checked = 0;
        for block in include_str!("../README.md").split("```toml").skip(1) {
            let block = block.split("```").next().expect("closed block");
            let doc: toml::Table = toml::from_str(block).expect("README example is TOML");
            for (name, p) in doc.get("plugins").and_then(|p| p.as_table()).into_iter().flatten() {
                assert_eq!(p.get("module").and_then(|m| m.as_str()), Some("ext_authz.wasm"), "{name}");
                let config = serde_json::to_value(p.get("config").expect("a config")).expect("TOML as JSON");
                let errors = errors(&v, &config);
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                plugin(config);
                checked += 1;
            }
        }
        assert_eq!(checked, 1, "every example was checked");
    }
}
