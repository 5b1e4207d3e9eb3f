//! Run a plugin natively under `cargo test`: no gateway, no wasm.
//!
//! [`Harness`] drives a plugin through the same conversions the gateway
//! uses, and an in-memory host stands in for the gateway's capabilities:
//! state (with expiry against a clock you can [`advance`]), logs, metrics and
//! events you can inspect. The host is per thread, so parallel tests do not
//! see each other's state.
//!
//! The harness serves one request at a time: each [`Harness::on_request`]
//! starts a new request, so values kept with
//! [`Context::set_local`](crate::Context::set_local) are forgotten there and
//! kept through the following body and response phases, as in the gateway.
//!
//! ```
//! use weir_plugin_sdk::prelude::*;
//! use weir_plugin_sdk::testing::{Harness, Outcome};
//!
//! struct Deny;
//! impl Plugin for Deny {
//!     fn new(_: &Config) -> Result<Self> { Ok(Deny) }
//!     fn on_request(&self, req: &mut Request, _: &Context) -> Result<Action> {
//!         if req.header("x-deny").is_some() {
//!             return Ok(Reply::new(StatusCode::FORBIDDEN).into());
//!         }
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! let h = Harness::<Deny>::new(serde_json::json!({})).unwrap();
//! let req = http::Request::get("/x").header("x-deny", "1").body(()).unwrap();
//! match h.on_request(req) {
//!     Outcome::Respond(resp) => assert_eq!(resp.status(), 403),
//!     Outcome::Continue(_) => panic!("should deny"),
//! }
//! ```

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::bindings::weir::plugin::types::{Action as WitAction, BodyAction as WitBodyAction, Reply as WitReply};
use crate::host::native::{LocalRequest, LocalResponse, new_request, take_response_headers};
use crate::host::{RequestHandle, ResponseHandle};
use crate::{__private, Phases, Plugin};

pub use crate::host::native::{
    advance, counter, events, gauge, logs, outbound_calls, published, reset, set_instance_name, set_published,
    set_state_unavailable, set_wall_clock, stub_outbound, stub_outbound_error,
};

/// What a phase did, with the edits applied.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The phase continued; this is the (edited) request, response or body.
    Continue(T),
    /// The phase answered with this response.
    Respond(http::Response<Vec<u8>>),
}

impl<T> Outcome<T> {
    /// The continued value; panics with the response if the phase answered.
    #[track_caller]
    pub fn unwrap_continue(self) -> T {
        match self {
            Outcome::Continue(t) => t,
            Outcome::Respond(r) => {
                panic!("expected Continue, got a {} response: {}", r.status(), String::from_utf8_lossy(r.body()))
            }
        }
    }

    /// The response; panics if the phase continued.
    #[track_caller]
    pub fn unwrap_respond(self) -> http::Response<Vec<u8>> {
        match self {
            Outcome::Respond(r) => r,
            Outcome::Continue(_) => panic!("expected Respond, got Continue"),
        }
    }
}

/// A plugin instance driven natively.
pub struct Harness<P: Plugin> {
    plugin: OnceCell<P>,
    phases: Phases,
    client_addr: String,
    route: String,
    path_params: Vec<(String, String)>,
    tls: Option<crate::Tls>,
}

impl<P: Plugin> Harness<P> {
    /// Initialise the plugin with `config`, as the gateway would.
    pub fn new(config: serde_json::Value) -> Result<Self, String> {
        let plugin = OnceCell::new();
        let info = __private::init::<P>(&plugin, &config.to_string())?;
        Ok(Self {
            plugin,
            phases: info.phases,
            client_addr: "127.0.0.1:40000".into(),
            route: "test".into(),
            path_params: Vec::new(),
            tls: None,
        })
    }

    /// Set the client address requests come from (default `127.0.0.1:40000`).
    pub fn client_addr(mut self, addr: &str) -> Self {
        self.client_addr = addr.into();
        self
    }

    /// Set the route name (default `test`).
    pub fn route(mut self, route: &str) -> Self {
        self.route = route.into();
        self
    }

    /// Add a path parameter, as captured by a route such as `/users/{id}`.
    pub fn path_param(mut self, name: &str, value: &str) -> Self {
        self.path_params.push((name.into(), value.into()));
        self
    }

    /// Requests come in over TLS, as the gateway's TLS listener saw it
    /// (default: cleartext).
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The phases the plugin asked for.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    fn lend(&self, req: &http::Request<()>, editable: bool) -> Rc<RefCell<LocalRequest>> {
        let peer = (self.client_addr.clone(), self.route.clone(), self.path_params.clone(), self.tls.clone());
        LocalRequest::lend(req, editable, peer)
    }

    /// Run `on-request`; this starts a new request (request-local values
    /// of the previous one are forgotten).
    pub fn on_request(&self, mut req: http::Request<()>) -> Outcome<http::Request<()>> {
        new_request();
        let local = self.lend(&req, true);
        match __private::on_request::<P>(self.plugin.get(), RequestHandle(local.clone())) {
            WitAction::Respond(r) => Outcome::Respond(response(r)),
            WitAction::Continue => {
                let head = local.borrow_mut().commit();
                *req.method_mut() = head.method;
                *req.uri_mut() = head.uri;
                *req.headers_mut() = head.headers;
                Outcome::Continue(req)
            }
        }
    }

    /// Run `on-request-body`; continues with the (possibly new) body. Head
    /// edits are not kept: see [`Harness::on_request_body_mut`].
    pub fn on_request_body(&self, req: &http::Request<()>, body: &[u8]) -> Outcome<Vec<u8>> {
        let local = self.lend(req, true);
        let action = __private::on_request_body::<P>(self.plugin.get(), RequestHandle(local.clone()), body.to_vec());
        if matches!(action, WitBodyAction::Continue(_)) {
            // Keeps the response headers it added.
            local.borrow_mut().commit();
        }
        body_outcome(action, body)
    }

    /// Run `on-request-body` and, when it continues, apply its head edits
    /// to `req` (a plugin that checks the body, then sets a header).
    pub fn on_request_body_mut(&self, req: &mut http::Request<()>, body: &[u8]) -> Outcome<Vec<u8>> {
        let local = self.lend(req, true);
        let action = __private::on_request_body::<P>(self.plugin.get(), RequestHandle(local.clone()), body.to_vec());
        if matches!(action, WitBodyAction::Continue(_)) {
            let head = local.borrow_mut().commit();
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.headers_mut() = head.headers;
        }
        body_outcome(action, body)
    }

    /// The bodies the plugin takes chunk by chunk.
    pub fn streams(&self) -> crate::Streams {
        __private::streams::<P>(self.plugin.get())
    }

    /// Run `on-request-chunk` on `chunk` (`end` for the last): what it
    /// passes on, or the reason it cut the body off.
    pub fn on_request_chunk(&self, req: &http::Request<()>, chunk: &[u8], end: bool) -> Result<Vec<u8>, String> {
        let local = self.lend(req, false);
        chunk_outcome(
            __private::on_request_chunk::<P>(self.plugin.get(), RequestHandle(local), chunk.to_vec(), end),
            chunk,
        )
    }

    /// Run `on-response-chunk`, as [`Harness::on_request_chunk`].
    pub fn on_response_chunk(
        &self,
        req: &http::Request<()>,
        resp: &http::Response<()>,
        chunk: &[u8],
        end: bool,
    ) -> Result<Vec<u8>, String> {
        let handles = (RequestHandle(self.lend(req, false)), ResponseHandle(LocalResponse::lend(resp, false)));
        let action = __private::on_response_chunk::<P>(self.plugin.get(), handles.0, handles.1, chunk.to_vec(), end);
        chunk_outcome(action, chunk)
    }

    /// Stream `chunks` through `on-response-chunk` as the gateway would
    /// (the last with `end`, then an empty end call if `chunks` is empty):
    /// what the client receives, chunk by chunk.
    pub fn stream_response(
        &self,
        req: &http::Request<()>,
        resp: &http::Response<()>,
        chunks: &[&[u8]],
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        let last = chunks.len().saturating_sub(1);
        if chunks.is_empty() {
            out.push(self.on_response_chunk(req, resp, b"", true)?);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            out.push(self.on_response_chunk(req, resp, chunk, i == last)?);
        }
        Ok(out)
    }

    /// Run `on-response` for `req` and `resp`, as the gateway would: first
    /// the headers the request's phases added for the response
    /// ([`Request::add_response_header`](crate::Request::add_response_header)),
    /// then the plugin's `on_response` if it asked for the phase.
    pub fn on_response(&self, req: &http::Request<()>, mut resp: http::Response<()>) -> Outcome<http::Response<()>> {
        for (name, value) in take_response_headers() {
            resp.headers_mut().append(name, value);
        }
        if !self.phases.contains(Phases::RESPONSE_HEADERS) {
            return Outcome::Continue(resp);
        }
        let local = LocalResponse::lend(&resp, true);
        let handles = (RequestHandle(self.lend(req, false)), ResponseHandle(local.clone()));
        match __private::on_response::<P>(self.plugin.get(), handles.0, handles.1) {
            WitAction::Respond(r) => Outcome::Respond(response(r)),
            WitAction::Continue => {
                let (status, headers) = local.borrow_mut().commit();
                *resp.status_mut() = status;
                *resp.headers_mut() = headers;
                Outcome::Continue(resp)
            }
        }
    }

    /// Run `on-response-body`.
    pub fn on_response_body(
        &self,
        req: &http::Request<()>,
        resp: &http::Response<()>,
        body: &[u8],
    ) -> Outcome<Vec<u8>> {
        let handles = (RequestHandle(self.lend(req, false)), ResponseHandle(LocalResponse::lend(resp, false)));
        body_outcome(__private::on_response_body::<P>(self.plugin.get(), handles.0, handles.1, body.to_vec()), body)
    }
}

fn chunk_outcome(action: __private::WitChunkAction, original: &[u8]) -> Result<Vec<u8>, String> {
    match action {
        __private::WitChunkAction::Pass => Ok(original.to_vec()),
        __private::WitChunkAction::Replace(bytes) => Ok(bytes),
        __private::WitChunkAction::Abort(reason) => Err(reason),
    }
}

fn body_outcome(action: WitBodyAction, original: &[u8]) -> Outcome<Vec<u8>> {
    match action {
        WitBodyAction::Continue(new) => Outcome::Continue(new.unwrap_or_else(|| original.to_vec())),
        WitBodyAction::Respond(r) => Outcome::Respond(response(r)),
    }
}

fn response(r: WitReply) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(r.body);
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    for h in r.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(h.name), HeaderValue::try_from(h.value)) {
            headers.append(n, v);
        }
    }
    *resp.headers_mut() = headers;
    resp
}
