//! __NAME__: a weir plugin that edits request and response heads.
//!
//! Config (`[plugins.NAME] config = { ... }` in gateway.toml):
//! `header` (default `"x-hello"`) and `value` (default `"world"`): set on
//! every request before the upstream sees it; each response gets
//! `x-served-by: __NAME__`.

use weir_plugin_sdk::prelude::*;

/// Built once per instance from the config.
struct Headers {
    header: HeaderName,
    value: HeaderValue,
}

impl Plugin for Headers {
    fn new(config: &Config) -> Result<Self> {
        let header = config.get_str("header").unwrap_or("x-hello");
        let value = config.get_str("value").unwrap_or("world");
        Ok(Self { header: header.parse()?, value: value.parse()? })
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
    }
}
