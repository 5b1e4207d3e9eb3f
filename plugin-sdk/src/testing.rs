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
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::__private::bindings::weir::plugin::types::{
    BodyAction, RequestAction, Response as WitResponse, ResponseAction, ResponseHead,
};
use crate::{__private, Event, Level, Phases, Plugin, convert};

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

    fn head(&self, req: &http::Request<()>) -> crate::__private::RequestHead {
        convert::request_to_wit(req, &self.client_addr, &self.route, &self.path_params)
    }

    /// The phases the plugin asked for.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// Run `on-request`; this starts a new request (request-local values
    /// of the previous one are forgotten).
    pub fn on_request(&self, mut req: http::Request<()>) -> Outcome<http::Request<()>> {
        with(|h| h.locals.clear());
        let head = self.head(&req);
        match __private::on_request::<P>(self.plugin.get(), head) {
            RequestAction::Respond(r) => Outcome::Respond(response(r)),
            RequestAction::Continue(edits) => {
                if let Some(m) = edits.method.and_then(|m| http::Method::from_bytes(m.as_bytes()).ok()) {
                    *req.method_mut() = m;
                }
                if let Some(uri) = edits.uri.and_then(|u| u.parse().ok()) {
                    *req.uri_mut() = uri;
                }
                if let Some(headers) = edits.headers {
                    *req.headers_mut() = convert::wit_headers_to_map(headers);
                }
                Outcome::Continue(req)
            }
        }
    }

    /// Run `on-request-body`; continues with the (possibly new) body.
    pub fn on_request_body(&self, req: &http::Request<()>, body: &[u8]) -> Outcome<Vec<u8>> {
        let head = self.head(req);
        body_outcome(__private::on_request_body::<P>(self.plugin.get(), head, body.to_vec()), body)
    }

    /// Run `on-response` for `req` and `resp`.
    pub fn on_response(&self, req: &http::Request<()>, mut resp: http::Response<()>) -> Outcome<http::Response<()>> {
        let head = self.head(req);
        match __private::on_response::<P>(self.plugin.get(), head, response_head(&resp)) {
            ResponseAction::Respond(r) => Outcome::Respond(response(r)),
            ResponseAction::Continue(edits) => {
                if let Some(s) = edits.status.and_then(|s| http::StatusCode::from_u16(s).ok()) {
                    *resp.status_mut() = s;
                }
                if let Some(headers) = edits.headers {
                    *resp.headers_mut() = convert::wit_headers_to_map(headers);
                }
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
        let head = self.head(req);
        body_outcome(
            __private::on_response_body::<P>(self.plugin.get(), head, response_head(resp), body.to_vec()),
            body,
        )
    }
}

fn response_head(resp: &http::Response<()>) -> ResponseHead {
    ResponseHead { status: resp.status().as_u16(), headers: convert::headers_to_wit(resp.headers()) }
}

fn body_outcome(action: BodyAction, original: &[u8]) -> Outcome<Vec<u8>> {
    match action {
        BodyAction::Continue(new) => Outcome::Continue(new.unwrap_or_else(|| original.to_vec())),
        BodyAction::Respond(r) => Outcome::Respond(response(r)),
    }
}

fn response(r: WitResponse) -> http::Response<Vec<u8>> {
    let mut resp = http::Response::new(r.body);
    *resp.status_mut() = http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    *resp.headers_mut() = convert::wit_headers_to_map(r.headers);
    resp
}

// ---- the in-memory host -------------------------------------------------

#[derive(Default)]
struct TestHost {
    logs: Vec<(Level, String)>,
    state: HashMap<String, (Vec<u8>, Option<u64>)>,
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, i64>,
    events: Vec<Event>,
    clock_offset: Duration,
    /// Set by [`set_wall_clock`]: the clocks read this (plus the offset)
    /// instead of the real time.
    pinned_ms: Option<u64>,
    state_unavailable: bool,
    locals: Vec<(String, Vec<u8>)>,
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
    static START: std::time::Instant = std::time::Instant::now();
}

fn with<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// Log lines the plugin wrote on this thread.
pub fn logs() -> Vec<(Level, String)> {
    with(|h| h.logs.clone())
}

/// Events the plugin emitted on this thread.
pub fn events() -> Vec<Event> {
    with(|h| h.events.clone())
}

/// A plugin-defined counter's value.
pub fn counter(name: &str) -> u64 {
    with(|h| h.counters.get(name).copied().unwrap_or(0))
}

/// A plugin-defined gauge's value.
pub fn gauge(name: &str) -> Option<i64> {
    with(|h| h.gauges.get(name).copied())
}

/// Move both clocks forward (expiring state as time passes).
pub fn advance(by: Duration) {
    with(|h| h.clock_offset += by);
}

/// Pin both clocks: from now on the wall clock reads `unix_ms` (and the
/// monotonic clock `unix_ms` in nanoseconds) until [`advance`] moves them,
/// so tests of time windows are exact however slowly they run. [`reset`]
/// unpins them.
pub fn set_wall_clock(unix_ms: u64) {
    with(|h| {
        h.pinned_ms = Some(unix_ms);
        h.clock_offset = Duration::ZERO;
    });
}

/// Make every state call fail with `Unavailable`, as when Redis is down.
pub fn set_state_unavailable(down: bool) {
    with(|h| h.state_unavailable = down);
}

/// Forget all state, logs, metrics and events, and reset the clock.
pub fn reset() {
    with(|h| *h = TestHost::default());
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod host {
    use super::*;
    use crate::StateError;
    use crate::host::{MAX_LOCAL_BYTES, MAX_LOCAL_KEY_LEN, MAX_LOCAL_KEYS, MAX_VALUE_LEN, check_key};

    pub(crate) fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_owned())));
    }

    pub(crate) fn monotonic_now() -> u64 {
        let (pinned, offset) = with(|h| (h.pinned_ms, h.clock_offset));
        let base = match pinned {
            Some(ms) => Duration::from_millis(ms),
            None => START.with(|s| s.elapsed()),
        };
        (base + offset).as_nanos() as u64
    }

    pub(crate) fn wall_now() -> u64 {
        let (pinned, offset) = with(|h| (h.pinned_ms, h.clock_offset));
        let base = match pinned {
            Some(ms) => Duration::from_millis(ms),
            None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
        };
        (base + offset).as_millis() as u64
    }

    fn live<R>(key: &str, f: impl FnOnce(&mut TestHost, u64) -> R) -> Result<R, StateError> {
        check_key(key)?;
        let now = wall_now();
        with(|h| {
            if h.state_unavailable {
                return Err(StateError::Unavailable("test host: state marked unavailable".into()));
            }
            if matches!(h.state.get(key), Some((_, Some(exp))) if *exp <= now) {
                h.state.remove(key);
            }
            Ok(f(h, now))
        })
    }

    fn expiry(now: u64, ttl_ms: u64) -> Option<u64> {
        (ttl_ms > 0).then(|| now + ttl_ms)
    }

    fn check_value(value: &[u8]) -> Result<(), StateError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(StateError::Invalid(format!("value larger than {MAX_VALUE_LEN} bytes")));
        }
        Ok(())
    }

    pub(crate) fn state_incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        live(key, |h, now| {
            let entry = h.state.entry(key.to_owned()).or_insert_with(|| (b"0".to_vec(), expiry(now, ttl_ms)));
            let current: i64 = std::str::from_utf8(&entry.0).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let next = current.saturating_add(delta);
            entry.0 = next.to_string().into_bytes();
            next
        })
    }

    pub(crate) fn state_get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        live(key, |h, _| h.state.get(key).map(|(v, _)| v.clone()))
    }

    pub(crate) fn state_set(key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        check_value(value)?;
        live(key, |h, now| {
            h.state.insert(key.to_owned(), (value.to_vec(), expiry(now, ttl_ms)));
        })
    }

    pub(crate) fn state_cas(key: &str, expected: Option<&[u8]>, value: &[u8], ttl_ms: u64) -> Result<bool, StateError> {
        check_value(value)?;
        live(key, |h, now| {
            let current = h.state.get(key).map(|(v, _)| v.as_slice());
            if current != expected {
                return false;
            }
            h.state.insert(key.to_owned(), (value.to_vec(), expiry(now, ttl_ms)));
            true
        })
    }

    pub(crate) fn state_delete(key: &str) -> Result<bool, StateError> {
        live(key, |h, _| h.state.remove(key).is_some())
    }

    pub(crate) fn local_get(key: &str) -> Option<Vec<u8>> {
        with(|h| h.locals.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    /// The same limits as the gateway's (`host/src/plugin/host.rs`).
    pub(crate) fn local_set(key: &str, value: &[u8]) -> bool {
        with(|h| {
            let others: usize =
                h.locals.iter().filter(|(k, _)| k != key).map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let exists = h.locals.iter().any(|(k, _)| k == key);
            if key.is_empty()
                || key.len() > MAX_LOCAL_KEY_LEN
                || others + key.len() + value.len() > MAX_LOCAL_BYTES
                || (!exists && h.locals.len() >= MAX_LOCAL_KEYS)
            {
                return false;
            }
            match h.locals.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.to_vec(),
                None => h.locals.push((key.to_owned(), value.to_vec())),
            }
            true
        })
    }

    pub(crate) fn counter_add(name: &str, value: u64) {
        with(|h| *h.counters.entry(name.to_owned()).or_default() += value);
    }

    pub(crate) fn gauge_set(name: &str, value: i64) {
        with(|h| {
            h.gauges.insert(name.to_owned(), value);
        });
    }

    pub(crate) fn emit(event: Event) {
        with(|h| h.events.push(event));
    }
}
