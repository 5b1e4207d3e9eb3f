//! __NAME__: a weir plugin that checks an API key.
//!
//! Config: `header` (default `"x-api-key"`) and `keys`, a table of key →
//! client name. A request without the header is answered `401` with a
//! `WWW-Authenticate` challenge, one with an unknown key `403`, both
//! without reaching the upstream. A known key is removed from the request
//! (the upstream never sees it); the client's name goes to the upstream as
//! `x-client` and is published for later plugins in the chain
//! (`cx.published("NAME", "client")`).
//!
//! The config is read into `Settings`, whose JSON Schema the plugin
//! declares: the gateway checks the table against it before `new` runs
//! (`weir check` shows every mismatch), and `weir plugin schema` prints it.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

/// The `config` table. Its `///` comments are the schema's descriptions,
/// which editors show.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The request header that carries the API key, a valid HTTP header name.
    #[serde(default = "default_header")]
    header: String,
    /// The known keys: key → the client's name, at least one.
    #[schemars(extend("minProperties" = 1))]
    keys: HashMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

struct ApiKeys {
    settings: Settings,
}

impl Plugin for ApiKeys {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if settings.keys.is_empty() {
            return Err(Error::internal("`keys` must name at least one key"));
        }
        Ok(Self { settings })
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let Some(key) = req.header(&self.settings.header).map(str::to_owned) else {
            let reply = Reply::json(StatusCode::UNAUTHORIZED, &serde_json::json!({"error": "an API key is required"}))
                .header("www-authenticate", "ApiKey");
            return Ok(reply.into());
        };
        let Some(client) = self.settings.keys.get(&key) else {
            cx.counter_add("rejected", 1);
            return Ok(Reply::json(StatusCode::FORBIDDEN, &serde_json::json!({"error": "unknown API key"})).into());
        };
        req.remove_header(&self.settings.header)?;
        req.set_header("x-client", client)?;
        cx.publish("client", client);
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(ApiKeys);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::{http, testing};

    fn harness() -> testing::Harness<ApiKeys> {
        testing::Harness::new(serde_json::json!({"keys": {"k-123": "alice"}})).expect("config accepted")
    }

    #[test]
    fn a_known_key_passes_as_its_client() {
        testing::reset();
        let req = http::Request::get("/").header("x-api-key", "k-123").body(()).expect("request");
        let req = harness().on_request(req).unwrap_continue();
        assert_eq!(req.headers()["x-client"], "alice");
        assert!(req.headers().get("x-api-key").is_none(), "the key does not reach the upstream");
        assert_eq!(testing::published("", "client").as_deref(), Some(&b"alice"[..]));
    }

    #[test]
    fn no_key_is_401_and_a_wrong_one_403() {
        let h = harness();
        let resp = h.on_request(http::Request::get("/").body(()).expect("request")).unwrap_respond();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "ApiKey");
        let wrong = http::Request::get("/").header("x-api-key", "nope").body(()).expect("request");
        assert_eq!(h.on_request(wrong).unwrap_respond().status(), 403);
    }

    #[test]
    fn a_config_without_keys_is_refused() {
        assert!(testing::Harness::<ApiKeys>::new(serde_json::json!({"keys": {}})).is_err());
    }

    #[test]
    fn declares_the_schema_of_its_config() {
        let schema: serde_json::Value =
            serde_json::from_str(&ApiKeys::config_schema().expect("a schema")).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["keys"]));
        assert_eq!(schema["properties"]["header"]["default"], "x-api-key");
        assert_eq!(schema["additionalProperties"], false);
    }
}
