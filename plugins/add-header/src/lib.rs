//! `add_header.wasm`: add (or append) one header to requests, responses or
//! both.
//!
//! ```toml
//! [plugins.greet]
//! module = "add_header.wasm"
//! config = { name = "x-greeting", value = "hello", to = "request", append = false }
//! ```

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Header name.
    name: String,
    /// Header value.
    value: String,
    /// `request` (default), `response` or `both`.
    #[serde(default)]
    to: Target,
    /// Append another value instead of replacing existing ones.
    #[serde(default)]
    append: bool,
}

#[derive(Deserialize, Default, PartialEq, Eq, Clone, Copy)]
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
