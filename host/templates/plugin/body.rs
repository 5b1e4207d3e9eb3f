//! __NAME__: a weir plugin that checks a buffered request body, then edits
//! the request head.
//!
//! Config: `field` (default `"id"`). A request body must be a JSON object
//! whose `field` is a string: that value goes to the upstream as the
//! header `x-<field>`. A body that is not JSON is answered `400`, one
//! without the field `422`, without reaching the upstream.
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
    /// The body's field whose string value goes upstream as the header
    /// `x-<field>` (so it must make a valid header name).
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "id".into()
}

struct BodyCheck {
    field: String,
    header: HeaderName,
}

impl Plugin for BodyCheck {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let Settings { field } = config.parse()?;
        let header = format!("x-{field}").parse()?;
        Ok(Self { field, header })
    }

    /// Only the body phase: the gateway buffers the request body (up to the
    /// plugin's `limits.body`) and calls `on_request_body` with it.
    fn phases(&self) -> Phases {
        Phases::REQUEST_BODY
    }

    fn on_request_body(&self, req: &mut Request, body: &mut Body, _cx: &Context) -> Result<Action> {
        let doc: serde_json::Value = body.json()?; // not JSON: a 400
        let Some(value) = doc.get(&self.field).and_then(|v| v.as_str()) else {
            let message = format!("the body needs a string field `{}`", self.field);
            return Ok(Reply::json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({"error": message})).into());
        };
        // The head is editable here: the edit reaches the upstream with the body.
        req.set_header(&self.header, value)?;
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(BodyCheck);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::{http, testing};

    fn harness() -> testing::Harness<BodyCheck> {
        testing::Harness::new(serde_json::json!({"field": "order"})).expect("config accepted")
    }

    #[test]
    fn the_field_goes_to_the_upstream_as_a_header() {
        let mut req = http::Request::post("/orders").body(()).expect("request");
        harness().on_request_body_mut(&mut req, br#"{"order": "o-7"}"#).unwrap_continue();
        assert_eq!(req.headers()["x-order"], "o-7");
    }

    #[test]
    fn declares_the_schema_of_its_config() {
        let schema: serde_json::Value =
            serde_json::from_str(&BodyCheck::config_schema().expect("a schema")).expect("JSON");
        assert_eq!(schema["properties"]["field"]["default"], "id");
        assert_eq!(schema["additionalProperties"], false);
    }

    #[test]
    fn a_body_without_the_field_is_422_and_one_that_is_not_json_400() {
        let h = harness();
        let req = http::Request::post("/orders").body(()).expect("request");
        assert_eq!(h.on_request_body(&req, b"{}").unwrap_respond().status(), 422);
        assert_eq!(h.on_request_body(&req, b"not json").unwrap_respond().status(), 400);
    }
}
