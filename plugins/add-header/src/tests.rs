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

/// The declared config schema (contract 0.2.5), checked as the gateway
/// checks a `config` table before `new` runs.
mod schema {
    use serde_json::{Value, json};

    use super::*;

    fn schema() -> Value {
        let text = AddHeader::config_schema().expect("add-header declares a schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(false).build(&schema()).expect("a valid JSON Schema")
    }

    #[test]
    fn describes_every_documented_key() {
        let schema = schema();
        let props = schema["properties"].as_object().expect("properties");
        assert_eq!(props.keys().collect::<Vec<_>>(), ["name", "value", "to", "append"]);
        for (key, prop) in props {
            assert!(prop["description"].as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
        }
        assert_eq!(schema["required"], json!(["name", "value"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(props["append"]["default"], false);
        assert_eq!(props["to"]["default"], "request");
        assert!(props["name"]["description"].as_str().is_some_and(|d| d.contains("header name")));
    }

    #[test]
    fn accepts_what_the_plugin_accepts_and_names_mistakes() {
        let v = validator();
        for config in [
            json!({ "name": "x-greeting", "value": "hello" }),
            json!({ "name": "x-served-by", "value": "weir", "to": "response" }),
            json!({ "name": "x-a", "value": "", "to": "both", "append": true }),
        ] {
            assert!(v.is_valid(&config), "{config}");
            Harness::<AddHeader>::new(config).expect("the plugin accepts it too");
        }
        for bad in [
            json!({ "value": "x" }),
            json!({ "name": "a", "value": "x", "colour": 1 }),
            json!({ "name": "a", "value": "x", "to": "upstream" }),
            json!({ "name": "a", "value": 1 }),
            json!({ "name": "a", "value": "x", "append": "yes" }),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
            assert!(Harness::<AddHeader>::new(bad).is_err(), "the plugin refuses it too");
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
                let config = serde_json::to_value(p.get("config").expect("a config")).expect("TOML as JSON");
                let errors: Vec<String> = v.iter_errors(&config).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2);
    }
}
