//! Glue used by [`export_plugin!`](crate::export_plugin) and the test
//! harness. Not a stable API.

use std::cell::OnceCell;

use crate::convert::{self, PhaseError};
use crate::{Action, Body, Config, Context, Plugin};

/// The generated bindings, quarantined here: plugin authors use the
/// curated types of the crate root instead.
#[allow(missing_docs, unsafe_code, unreachable_pub, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "weir_plugin_sdk::__private::bindings",
    });
}

pub use bindings::export;
pub use bindings::exports::weir::plugin::handler::Guest;
pub use bindings::weir::plugin::types::{
    BodyAction, PluginInfo, RequestAction, RequestHead, ResponseAction, ResponseHead,
};

const NOT_INITIALISED: &str = "plugin phase called before init";

/// `init`: build the plugin from its JSON config, once per instance.
pub fn init<P: Plugin>(slot: &OnceCell<P>, config: &str) -> Result<PluginInfo, String> {
    let config = Config::from_json_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let plugin = P::new(&config).map_err(|e| e.message().to_string())?;
    let phases = plugin.phases();
    slot.set(plugin).map_err(|_| "instance initialised twice".to_string())?;
    Ok(PluginInfo { phases })
}

fn initialised<P>(plugin: Option<&P>) -> Result<&P, PhaseError> {
    plugin.ok_or_else(|| PhaseError::internal(NOT_INITIALISED))
}

/// `on-request`.
pub fn on_request<P: Plugin>(plugin: Option<&P>, head: RequestHead) -> RequestAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let mut req = convert::request_from_wit(head)?;
        match plugin.on_request(&mut req, &Context::new())? {
            Action::Continue => Ok(RequestAction::Continue(convert::request_edits(req))),
            Action::Respond(reply) => Ok(RequestAction::Respond(convert::reply_to_wit(reply)?)),
        }
    };
    run().unwrap_or_else(|e: PhaseError| RequestAction::Respond(e.into_response()))
}

/// `on-request-body`.
pub fn on_request_body<P: Plugin>(plugin: Option<&P>, head: RequestHead, body: Vec<u8>) -> BodyAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let req = convert::request_from_wit(head)?;
        let mut body = Body::new(body);
        let action = plugin.on_request_body(&req, &mut body, &Context::new())?;
        body_action(action, body)
    };
    run().unwrap_or_else(|e: PhaseError| BodyAction::Respond(e.into_response()))
}

/// `on-response`.
pub fn on_response<P: Plugin>(plugin: Option<&P>, head: RequestHead, resp: ResponseHead) -> ResponseAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let req = convert::request_from_wit(head)?;
        let mut resp = convert::response_from_wit(resp)?;
        match plugin.on_response(&req, &mut resp, &Context::new())? {
            Action::Continue => Ok(ResponseAction::Continue(convert::response_edits(resp))),
            Action::Respond(reply) => Ok(ResponseAction::Respond(convert::reply_to_wit(reply)?)),
        }
    };
    run().unwrap_or_else(|e: PhaseError| ResponseAction::Respond(e.into_response()))
}

/// `on-response-body`.
pub fn on_response_body<P: Plugin>(
    plugin: Option<&P>,
    head: RequestHead,
    resp: ResponseHead,
    body: Vec<u8>,
) -> BodyAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let req = convert::request_from_wit(head)?;
        let resp = convert::response_from_wit(resp)?;
        let mut body = Body::new(body);
        let action = plugin.on_response_body(&req, &resp, &mut body, &Context::new())?;
        body_action(action, body)
    };
    run().unwrap_or_else(|e: PhaseError| BodyAction::Respond(e.into_response()))
}

/// A body phase can replace the body or answer; the head was settled by the
/// head phases. An unchanged body is not copied back to the host.
fn body_action(action: Action, body: Body) -> Result<BodyAction, PhaseError> {
    match action {
        Action::Continue => Ok(BodyAction::Continue(body.into_changed())),
        Action::Respond(reply) => Ok(BodyAction::Respond(convert::reply_to_wit(reply)?)),
    }
}
