//! `add_header.wasm`: add (or append) one header to requests, responses or
//! both.
//!
//! ```toml
//! [plugins.greet]
//! module = "add_header.wasm"
//! config = { name = "x-greeting", value = "hello", to = "request", append = false }
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_plugin_sdk::prelude::*;

/// The `config` table of an `add_header.wasm` instance.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "add-header config")]
struct Settings {
    /// The header's name, a valid HTTP header name (case-insensitive), e.g. `"x-greeting"`.
    name: String,
    /// The header's value: text without control characters other than tab (no line breaks).
    value: String,
    /// Which head gets the header: `"request"` (on its way upstream), `"response"` (on its way back) or `"both"`.
    #[serde(default)]
    to: Target,
    /// Add another value instead of replacing the header's existing values.
    #[serde(default)]
    append: bool,
}

/// Which head gets the header: requests, responses or both.
// No doc comments on the variants: the schema then lists them as a plain
// `enum`, which a config check names in its message.
#[derive(Deserialize, Serialize, JsonSchema, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Target {
    #[default]
    Request,
    Response,
    Both,
}

struct AddHeader {
    name: HeaderName,
    value: HeaderValue,
    to: Target,
    append: bool,
}

impl Plugin for AddHeader {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(Self { name: s.name.parse()?, value: s.value.parse()?, to: s.to, append: s.append })
    }

    fn phases(&self) -> Phases {
        match self.to {
            Target::Request => Phases::REQUEST_HEADERS,
            Target::Response => Phases::RESPONSE_HEADERS,
            Target::Both => Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS,
        }
    }

    fn on_request(&self, req: &mut Request, _cx: &Context) -> Result<Action> {
        if self.append {
            req.append_header(&self.name, &self.value)?;
        } else {
            req.set_header(&self.name, &self.value)?;
        }
        Ok(Action::Continue)
    }

    fn on_response(&self, _req: &Request, resp: &mut Response, _cx: &Context) -> Result<Action> {
        if self.append {
            resp.append_header(&self.name, &self.value)?;
        } else {
            resp.set_header(&self.name, &self.value)?;
        }
        Ok(Action::Continue)
    }
}

weir_plugin_sdk::export_plugin!(AddHeader);

#[cfg(test)]
mod tests;
