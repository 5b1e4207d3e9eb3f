//! Glue used by [`export_plugin!`](crate::export_plugin) and the test
//! harness. Not a stable API.

use std::cell::OnceCell;

use crate::convert::{self, PhaseError};
use crate::host::{RequestHandle, ResponseHandle};
use crate::{Action, Body, Chunk, Config, Context, Plugin, Request, Response, Streams};

pub use crate::bindings;
pub use bindings::export;
pub use bindings::exports::weir::plugin::describe::Guest as DescribeGuest;
pub use bindings::exports::weir::plugin::handler::Guest;
pub use bindings::exports::weir::plugin::streaming::{ChunkAction as WitChunkAction, Guest as StreamingGuest};
pub use bindings::weir::plugin::types::{
    Action as WitAction, BodyAction as WitBodyAction, PluginInfo, Request as WitRequest, Response as WitResponse,
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

/// A head phase's decision for the gateway. `Continue` sends back what
/// `headers_mut` changed; an error (including a refused edit) answers the
/// client instead.
fn head_action(action: Action, flush: impl FnOnce() -> crate::Result<()>) -> Result<WitAction, PhaseError> {
    match action {
        Action::Continue => {
            flush()?;
            Ok(WitAction::Continue)
        }
        Action::Respond(reply) => Ok(WitAction::Respond(convert::reply_to_wit(reply)?)),
    }
}

/// `on-request`.
pub(crate) fn on_request<P: Plugin>(plugin: Option<&P>, req: RequestHandle) -> WitAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let mut req = Request::new(req);
        let action = plugin.on_request(&mut req, &Context::new())?;
        head_action(action, || req.finish().map(drop))
    };
    run().unwrap_or_else(|e: PhaseError| WitAction::Respond(e.into_reply()))
}

/// `on-request-body`: the head edits go back on `Continue`, with the body.
pub(crate) fn on_request_body<P: Plugin>(plugin: Option<&P>, req: RequestHandle, body: Vec<u8>) -> WitBodyAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let mut req = Request::new(req);
        let mut body = Body::new(body);
        let action = plugin.on_request_body(&mut req, &mut body, &Context::new())?;
        if matches!(action, Action::Continue) {
            req.finish()?;
        }
        body_action(action, body)
    };
    run().unwrap_or_else(|e: PhaseError| WitBodyAction::Respond(e.into_reply()))
}

/// `on-response`.
pub(crate) fn on_response<P: Plugin>(plugin: Option<&P>, req: RequestHandle, resp: ResponseHandle) -> WitAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let req = Request::new(req);
        let mut resp = Response::new(resp);
        let action = plugin.on_response(&req, &mut resp, &Context::new())?;
        head_action(action, || resp.finish().map(drop))
    };
    run().unwrap_or_else(|e: PhaseError| WitAction::Respond(e.into_reply()))
}

/// `on-response-body`.
pub(crate) fn on_response_body<P: Plugin>(
    plugin: Option<&P>,
    req: RequestHandle,
    resp: ResponseHandle,
    body: Vec<u8>,
) -> WitBodyAction {
    let run = || {
        let plugin = initialised(plugin)?;
        let req = Request::new(req);
        let resp = Response::new(resp);
        let mut body = Body::new(body);
        let action = plugin.on_response_body(&req, &resp, &mut body, &Context::new())?;
        body_action(action, body)
    };
    run().unwrap_or_else(|e: PhaseError| WitBodyAction::Respond(e.into_reply()))
}

/// `streams`, after `init`.
pub fn streams<P: Plugin>(plugin: Option<&P>) -> Streams {
    plugin.map_or(Streams::empty(), Plugin::streams)
}

/// A chunk call's decision: an unchanged chunk is not copied back; an
/// error cuts the body off with its message.
fn chunk_action(result: crate::Result<()>, chunk: Chunk) -> WitChunkAction {
    match result {
        Ok(()) => match chunk.into_changed() {
            Some(bytes) => WitChunkAction::Replace(bytes),
            None => WitChunkAction::Pass,
        },
        Err(e) => WitChunkAction::Abort(e.message().to_string()),
    }
}

/// `on-request-chunk`.
pub(crate) fn on_request_chunk<P: Plugin>(
    plugin: Option<&P>,
    req: RequestHandle,
    chunk: Vec<u8>,
    end: bool,
) -> WitChunkAction {
    let Some(plugin) = plugin else { return WitChunkAction::Abort(NOT_INITIALISED.into()) };
    let req = Request::new(req);
    let mut chunk = Chunk::new(chunk, end);
    let result = plugin.on_request_chunk(&req, &mut chunk, &Context::new());
    chunk_action(result, chunk)
}

/// `on-response-chunk`.
pub(crate) fn on_response_chunk<P: Plugin>(
    plugin: Option<&P>,
    req: RequestHandle,
    resp: ResponseHandle,
    chunk: Vec<u8>,
    end: bool,
) -> WitChunkAction {
    let Some(plugin) = plugin else { return WitChunkAction::Abort(NOT_INITIALISED.into()) };
    let req = Request::new(req);
    let resp = Response::new(resp);
    let mut chunk = Chunk::new(chunk, end);
    let result = plugin.on_response_chunk(&req, &resp, &mut chunk, &Context::new());
    chunk_action(result, chunk)
}

/// A body phase can replace the body or answer; the head was settled by the
/// head phases. An unchanged body is not copied back to the host.
fn body_action(action: Action, body: Body) -> Result<WitBodyAction, PhaseError> {
    match action {
        Action::Continue => Ok(WitBodyAction::Continue(body.into_changed())),
        Action::Respond(reply) => Ok(WitBodyAction::Respond(convert::reply_to_wit(reply)?)),
    }
}

/// The wasm export glue: lend the borrowed handles to the SDK types.
#[cfg(target_arch = "wasm32")]
pub mod lend {
    use super::*;

    /// `on-request`, from the export.
    pub fn on_request<P: Plugin>(plugin: Option<&P>, req: &WitRequest) -> WitAction {
        super::on_request(plugin, RequestHandle::lend(req))
    }

    /// `on-request-body`, from the export.
    pub fn on_request_body<P: Plugin>(plugin: Option<&P>, req: &WitRequest, body: Vec<u8>) -> WitBodyAction {
        super::on_request_body(plugin, RequestHandle::lend(req), body)
    }

    /// `on-response`, from the export.
    pub fn on_response<P: Plugin>(plugin: Option<&P>, req: &WitRequest, resp: &WitResponse) -> WitAction {
        super::on_response(plugin, RequestHandle::lend(req), ResponseHandle::lend(resp))
    }

    /// `on-request-chunk`, from the export.
    pub fn on_request_chunk<P: Plugin>(
        plugin: Option<&P>,
        req: &WitRequest,
        chunk: Vec<u8>,
        end: bool,
    ) -> WitChunkAction {
        super::on_request_chunk(plugin, RequestHandle::lend(req), chunk, end)
    }

    /// `on-response-chunk`, from the export.
    pub fn on_response_chunk<P: Plugin>(
        plugin: Option<&P>,
        req: &WitRequest,
        resp: &WitResponse,
        chunk: Vec<u8>,
        end: bool,
    ) -> WitChunkAction {
        super::on_response_chunk(plugin, RequestHandle::lend(req), ResponseHandle::lend(resp), chunk, end)
    }

    /// `on-response-body`, from the export.
    pub fn on_response_body<P: Plugin>(
        plugin: Option<&P>,
        req: &WitRequest,
        resp: &WitResponse,
        body: Vec<u8>,
    ) -> WitBodyAction {
        super::on_response_body(plugin, RequestHandle::lend(req), ResponseHandle::lend(resp), body)
    }
}
