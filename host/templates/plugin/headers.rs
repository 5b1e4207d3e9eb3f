//! __NAME__: a weir plugin that edits request and response heads.
//!
//! Config (`[plugins.NAME] config = { ... }` in gateway.toml):
//! `header` (default `"x-hello"`) and `value` (default `"world"`): set on
//! every request before the upstream sees it; each response gets
//! `x-served-by: __NAME__`.
//!
//! The config is read into `Settings`, whose JSON Schema the plugin
//! declares: the gateway checks the table against it before `new` runs
//! (`weir check` shows every mismatch), and `weir plugin schema` prints it.

use schemars::JsonSchema;
use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The `config` table. Its `///` comments are the schema's descriptions,
/// which editors show.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The request header to set, a valid HTTP header name.
    #[serde(default = "default_header")]
    header: String,
    /// Its value.
    #[serde(default = "default_value")]
    value: String,
}

fn default_header() -> String {
    "x-hello".into()
}

fn default_value() -> String {
    "world".into()
}

/// Built once per instance from the config.
struct Headers {
    header: HeaderName,
    value: HeaderValue,
}

impl Plugin for Headers {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        // What a schema cannot say is checked here: a header name is valid.
        Ok(Self { header: s.header.parse()?, value: s.value.parse()? })
    }

    fn on_request(&self, req: &mut Request, _cx: &Context) -> Result<Action> {
        req.set_header(&self.header, &self.value)?;
        Ok(Action::Continue)
    }

    fn on_response(&self, _req: &Request, resp: &mut Response, _cx: &Context) -> Result<Action> {
        resp.set_header("x-served-by", "__NAME__")?;
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(Headers);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::{http, testing};

    #[test]
    fn sets_the_configured_request_header_and_marks_responses() {
        let h = testing::Harness::<Headers>::new(serde_json::json!({"header": "x-team", "value": "blue"}))
            .expect("config accepted");
        let req = h.on_request(http::Request::get("/orders").body(()).expect("request")).unwrap_continue();
        assert_eq!(req.headers()["x-team"], "blue");

        let resp = h.on_response(&req, http::Response::new(())).unwrap_continue();
        assert_eq!(resp.headers()["x-served-by"], "__NAME__");
    }

    #[test]
    fn refuses_a_header_name_that_is_not_one() {
        assert!(testing::Harness::<Headers>::new(serde_json::json!({"header": "no spaces allowed"})).is_err());
        assert!(testing::Harness::<Headers>::new(serde_json::json!({"heder": "x-team"})).is_err(), "a typo");
    }

    #[test]
    fn declares_the_schema_of_its_config() {
        let schema: serde_json::Value =
            serde_json::from_str(&Headers::config_schema().expect("a schema")).expect("JSON");
        assert_eq!(schema["properties"]["header"]["default"], "x-hello");
        assert_eq!(schema["properties"]["value"]["default"], "world");
        assert_eq!(schema["additionalProperties"], false);
    }
}
