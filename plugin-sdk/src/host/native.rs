//! The native stand-in for the gateway's imports, used when a plugin runs
//! under `cargo test` (see `crate::testing`): the heads with the gateway's
//! rules, and an in-memory, per-thread host for state, logs, metrics and
//! events.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::EditError;
use crate::{Event, Level};

// ---- the heads, by the gateway's rules --------------------------------------

/// Headers the gateway owns (framing and hop-by-hop): plugins cannot set
/// them. The same list as the gateway's (`weir_plugin_host::heads`).
const GATEWAY_OWNED: [&str; 9] = [
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];
const MAX_HEADERS: usize = 256;
const MAX_VALUE: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
}

/// A request head lent to a plugin natively, with the gateway's rules:
/// edits checked when made, applied to a copy, committed on `continue`.
pub(crate) struct LocalRequest {
    head: RequestHead,
    edit: Option<RequestHead>,
    editable: bool,
    arrived: usize,
    authority: String,
    client_addr: String,
    route: String,
    params: Vec<(String, String)>,
    tls: Option<crate::Tls>,
    /// Response headers added in this phase (`add-response-header`).
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Most response headers a plugin may add per request (the gateway's
/// `MAX_RESPONSE_HEADERS_ADDED`).
const MAX_RESPONSE_HEADERS_ADDED: usize = 64;

/// Who sent a request the harness lends: client address, route, path
/// parameters, TLS.
pub(crate) type Peer = (String, String, Vec<(String, String)>, Option<crate::Tls>);

impl LocalRequest {
    /// `req` as the gateway would lend it, editable or not.
    pub(crate) fn lend(req: &http::Request<()>, editable: bool, peer: Peer) -> Rc<RefCell<Self>> {
        let (client_addr, route, params, tls) = peer;
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        let uri =
            req.uri().path_and_query().map_or("/", |p| p.as_str()).parse().unwrap_or_else(|_| Uri::from_static("/"));
        Rc::new(RefCell::new(Self {
            head: RequestHead { method: req.method().clone(), uri, headers: req.headers().clone() },
            edit: None,
            editable,
            arrived: req.headers().len(),
            authority,
            client_addr,
            route,
            params,
            tls,
            response_headers: Vec::new(),
        }))
    }

    fn current(&self) -> &RequestHead {
        self.edit.as_ref().unwrap_or(&self.head)
    }

    fn edit(&mut self) -> Result<&mut RequestHead, EditError> {
        if !self.editable {
            return Err(EditError::ReadOnly);
        }
        let head = &self.head;
        Ok(self.edit.get_or_insert_with(|| head.clone()))
    }

    pub(crate) fn commit(&mut self) -> RequestHead {
        if let Some(e) = self.edit.take() {
            self.head = e;
        }
        let added = std::mem::take(&mut self.response_headers);
        with(|h| h.response_headers.extend(added));
        self.head.clone()
    }
}

/// A response head lent to a plugin natively.
pub(crate) struct LocalResponse {
    status: StatusCode,
    headers: HeaderMap,
    edit: Option<(StatusCode, HeaderMap)>,
    editable: bool,
    arrived: usize,
}

impl LocalResponse {
    pub(crate) fn lend(resp: &http::Response<()>, editable: bool) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            status: resp.status(),
            headers: resp.headers().clone(),
            edit: None,
            editable,
            arrived: resp.headers().len(),
        }))
    }

    fn current(&self) -> (StatusCode, &HeaderMap) {
        match &self.edit {
            Some((s, h)) => (*s, h),
            None => (self.status, &self.headers),
        }
    }

    fn edit(&mut self) -> Result<&mut (StatusCode, HeaderMap), EditError> {
        if !self.editable {
            return Err(EditError::ReadOnly);
        }
        let (status, headers) = (self.status, &self.headers);
        Ok(self.edit.get_or_insert_with(|| (status, headers.clone())))
    }

    pub(crate) fn commit(&mut self) -> (StatusCode, HeaderMap) {
        if let Some((s, h)) = self.edit.take() {
            self.status = s;
            self.headers = h;
        }
        (self.status, self.headers.clone())
    }
}

fn name_of(name: &str) -> Result<HeaderName, EditError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| EditError::Invalid(format!("invalid header name {name:?}")))?;
    if GATEWAY_OWNED.contains(&n.as_str()) {
        return Err(EditError::Reserved(n.as_str().to_owned()));
    }
    Ok(n)
}

fn value_of(name: &HeaderName, value: &[u8]) -> Result<HeaderValue, EditError> {
    if value.len() > MAX_VALUE {
        return Err(EditError::TooLarge(format!("value of {name} has {} bytes, at most {MAX_VALUE}", value.len())));
    }
    HeaderValue::from_bytes(value).map_err(|_| {
        EditError::Invalid(format!("invalid value for header {name}: {:?}", String::from_utf8_lossy(value)))
    })
}

fn room(headers: &HeaderMap, arrived: usize) -> Result<(), EditError> {
    if headers.len() >= MAX_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("at most {MAX_HEADERS} header values")));
    }
    Ok(())
}

fn values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name.to_ascii_lowercase().as_str()).iter().map(|v| v.as_bytes().to_vec()).collect()
}

fn pairs(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

fn set_in(headers: &mut HeaderMap, arrived: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
    let n = name_of(name)?;
    let v = value_of(&n, value)?;
    if !headers.contains_key(&n) {
        room(headers, arrived)?;
    }
    headers.insert(n, v);
    Ok(())
}

fn append_in(headers: &mut HeaderMap, arrived: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
    let n = name_of(name)?;
    let v = value_of(&n, value)?;
    room(headers, arrived)?;
    headers.append(n, v);
    Ok(())
}

fn remove_in(headers: &mut HeaderMap, name: &str) -> Result<(), EditError> {
    let n = name_of(name)?;
    headers.remove(n);
    Ok(())
}

fn replace_in(headers: &mut HeaderMap, arrived: usize, list: Vec<(String, Vec<u8>)>) -> Result<(), EditError> {
    if list.len() > MAX_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("{} headers, at most {MAX_HEADERS}", list.len())));
    }
    let mut new = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| EditError::Invalid(format!("invalid header name {name:?}")))?;
        let v = value_of(&n, &value)?;
        if !GATEWAY_OWNED.contains(&n.as_str()) {
            new.append(n, v);
        }
    }
    for name in ["content-length", "transfer-encoding"] {
        for v in headers.get_all(name) {
            new.append(HeaderName::from_static(name), v.clone());
        }
    }
    *headers = new;
    Ok(())
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
    /// Response headers the request's phases added (`add-response-header`),
    /// applied by the harness's `on_response`.
    pub(crate) response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Stubbed outbound answers: upstream, path, answer.
    stubs: Vec<(String, String, Result<crate::outbound::RawAnswer, crate::OutboundError>)>,
    /// Outbound calls made, in order.
    calls: Vec<crate::Callout>,
    /// This plugin's instance name (its `chain-data` namespace).
    instance: Option<String>,
    /// Values other plugins published, for every request: plugin, key, value.
    seeded: Vec<(String, String, Vec<u8>)>,
    /// What is published in the current request.
    chain: Vec<(String, String, Vec<u8>)>,
}

thread_local! {
    static HOST: RefCell<TestHost> = RefCell::new(TestHost::default());
    static START: std::time::Instant = std::time::Instant::now();
}

/// A new request starts: request-local values of the previous one go.
pub(crate) fn new_request() {
    with(|h| {
        h.locals.clear();
        h.response_headers.clear();
        h.chain = h.seeded.clone();
    });
}

/// The response headers the request's phases added, taken once.
pub(crate) fn take_response_headers() -> Vec<(HeaderName, HeaderValue)> {
    with(|h| std::mem::take(&mut h.response_headers))
}

/// The plugin's instance name, its `chain-data` namespace (default
/// `"plugin"`).
pub fn set_instance_name(name: &str) {
    with(|h| h.instance = Some(name.to_owned()));
}

/// Have plugin `plugin` publish `value` under `key` before every request,
/// as a plugin earlier in the chain would.
pub fn set_published(plugin: &str, key: &str, value: &[u8]) {
    with(|h| {
        h.seeded.retain(|(p, k, _)| !(p == plugin && k == key));
        h.seeded.push((plugin.to_owned(), key.to_owned(), value.to_vec()));
    });
}

/// What `plugin` (`""` for the plugin under test) has published in the
/// latest request.
pub fn published(plugin: &str, key: &str) -> Option<Vec<u8>> {
    host::chain_read(plugin, key)
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

/// Answer outbound calls to `upstream` for `path` (path and query as the
/// plugin sends it, or the path alone to match any query) with `answer`.
/// A later stub for the same upstream and path replaces the earlier one.
/// A call to an upstream without any stub is refused as `NotAllowed` (as
/// the gateway refuses one its `outbound` list does not name); a call to a
/// stubbed upstream on a path without a stub is `Unavailable`.
pub fn stub_outbound(upstream: &str, path: &str, answer: http::Response<Vec<u8>>) {
    let (parts, body) = answer.into_parts();
    let headers = parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect::<Vec<_>>();
    stub(upstream, path, Ok((parts.status.as_u16(), headers, body)));
}

/// Make outbound calls to `upstream` for `path` fail with `error` (a
/// timeout, an unavailable upstream).
pub fn stub_outbound_error(upstream: &str, path: &str, error: crate::OutboundError) {
    stub(upstream, path, Err(error));
}

fn stub(upstream: &str, path: &str, answer: Result<crate::outbound::RawAnswer, crate::OutboundError>) {
    with(|h| {
        h.stubs.retain(|(u, p, _)| !(u == upstream && p == path));
        h.stubs.push((upstream.to_owned(), path.to_owned(), answer));
    });
}

/// The outbound calls the plugin made on this thread, in order.
pub fn outbound_calls() -> Vec<crate::Callout> {
    with(|h| h.calls.clone())
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

    /// The request lent for one phase call (shared with the harness, which
    /// reads the outcome back).
    pub(crate) struct RequestHandle(pub(crate) Rc<RefCell<LocalRequest>>);

    /// The response lent for one phase call.
    pub(crate) struct ResponseHandle(pub(crate) Rc<RefCell<LocalResponse>>);

    impl RequestHandle {
        pub(crate) fn method(&self) -> String {
            self.0.borrow().current().method.as_str().to_owned()
        }
        pub(crate) fn path_with_query(&self) -> String {
            self.0.borrow().current().uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
        }
        pub(crate) fn authority(&self) -> String {
            self.0.borrow().authority.clone()
        }
        pub(crate) fn header(&self, name: &str) -> Vec<Vec<u8>> {
            values(&self.0.borrow().current().headers, name)
        }
        pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
            pairs(&self.0.borrow().current().headers)
        }
        pub(crate) fn client_addr(&self) -> String {
            self.0.borrow().client_addr.clone()
        }
        pub(crate) fn route(&self) -> String {
            self.0.borrow().route.clone()
        }
        pub(crate) fn request_id(&self) -> String {
            "test-request".into()
        }
        pub(crate) fn path_params(&self) -> Vec<(String, String)> {
            self.0.borrow().params.clone()
        }
        pub(crate) fn tls(&self) -> Option<crate::Tls> {
            self.0.borrow().tls.clone()
        }
        pub(crate) fn set_method(&mut self, m: &str) -> Result<(), EditError> {
            let method =
                Method::from_bytes(m.as_bytes()).map_err(|_| EditError::Invalid(format!("invalid method {m:?}")))?;
            self.0.borrow_mut().edit()?.method = method;
            Ok(())
        }
        pub(crate) fn set_path_with_query(&mut self, pq: &str) -> Result<(), EditError> {
            let uri: Uri = pq
                .parse()
                .ok()
                .filter(|u: &Uri| pq.starts_with('/') && u.authority().is_none())
                .ok_or_else(|| EditError::Invalid(format!("invalid path {pq:?}: must be a path like /a?b=c")))?;
            self.0.borrow_mut().edit()?.uri = uri;
            Ok(())
        }
        pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            set_in(&mut r.edit()?.headers, arrived, name, value)
        }
        pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            append_in(&mut r.edit()?.headers, arrived, name, value)
        }
        pub(crate) fn remove_header(&mut self, name: &str) -> Result<(), EditError> {
            remove_in(&mut self.0.borrow_mut().edit()?.headers, name)
        }
        pub(crate) fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            if !r.editable {
                return Err(EditError::ReadOnly);
            }
            let n = name_of(name)?;
            let v = value_of(&n, value)?;
            let held = with(|h| h.response_headers.len());
            if held + r.response_headers.len() >= MAX_RESPONSE_HEADERS_ADDED {
                return Err(EditError::TooLarge(format!(
                    "at most {MAX_RESPONSE_HEADERS_ADDED} response headers added per plugin and request"
                )));
            }
            r.response_headers.push((n, v));
            Ok(())
        }
        pub(crate) fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            replace_in(&mut r.edit()?.headers, arrived, list)
        }
    }

    impl ResponseHandle {
        pub(crate) fn status(&self) -> u16 {
            self.0.borrow().current().0.as_u16()
        }
        pub(crate) fn header(&self, name: &str) -> Vec<Vec<u8>> {
            values(self.0.borrow().current().1, name)
        }
        pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
            pairs(self.0.borrow().current().1)
        }
        pub(crate) fn set_status(&mut self, status: u16) -> Result<(), EditError> {
            let s = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| EditError::Invalid(format!("invalid status {status}: must be 200-999")))?;
            self.0.borrow_mut().edit()?.0 = s;
            Ok(())
        }
        pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            set_in(&mut r.edit()?.1, arrived, name, value)
        }
        pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            append_in(&mut r.edit()?.1, arrived, name, value)
        }
        pub(crate) fn remove_header(&mut self, name: &str) -> Result<(), EditError> {
            remove_in(&mut self.0.borrow_mut().edit()?.1, name)
        }
        pub(crate) fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), EditError> {
            let mut r = self.0.borrow_mut();
            let arrived = r.arrived;
            replace_in(&mut r.edit()?.1, arrived, list)
        }
    }
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

    /// The wall clock in µs (what `throttle` reads).
    fn wall_now_us() -> u64 {
        let (pinned, offset) = with(|h| (h.pinned_ms, h.clock_offset));
        let base = match pinned {
            Some(ms) => Duration::from_millis(ms),
            None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
        };
        (base + offset).as_micros() as u64
    }

    pub(crate) fn wall_now() -> u64 {
        wall_now_us() / 1000
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

    /// GCRA as the gateway runs it (`plugin-host/src/state/gcra.rs`, whose
    /// comment gives the bound), on this host's clock in µs: the same
    /// argument checks, the same rounding, the same figures.
    pub(crate) fn state_throttle(
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: i64,
    ) -> Result<crate::ThrottleDecision, StateError> {
        const MAX_COUNT: u64 = 1_000_000_000;
        const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
        let invalid = |m: &str| Err(StateError::Invalid(format!("throttle: {m}")));
        if rate == 0 || period_ms == 0 {
            return invalid("rate and period must be above zero");
        }
        if period_ms > TEN_YEARS_MS || burst > MAX_COUNT || cost.unsigned_abs() > MAX_COUNT {
            return invalid("period, burst or cost out of range");
        }
        if cost > 0 && cost.unsigned_abs() > burst + 1 {
            return invalid("a cost over burst + 1 could never fit");
        }
        let t = (u128::from(period_ms) * 1000).div_ceil(u128::from(rate)).max(1);
        if t * u128::from(burst.max(cost.unsigned_abs())) > u128::from(TEN_YEARS_MS) * 1000 {
            return invalid("the burst or cost spans more than ten years");
        }
        let (t, tau) = (t as u64, (t * u128::from(burst)) as u64);
        let now_us = wall_now_us();
        live(key, |h, now_ms| {
            let stored = h.state.get(key).and_then(|(v, _)| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
            let mut tat = stored.unwrap_or(now_us).max(now_us);
            let n = cost.unsigned_abs();
            let (mut allowed, mut wait, mut new) = (true, 0, None);
            if cost <= 0 {
                tat = tat.saturating_sub(n * t).max(now_us);
                new = (cost < 0).then_some(tat);
            } else if tat + (n - 1) * t - now_us > tau {
                (allowed, wait) = (false, tat + (n - 1) * t - now_us - tau);
            } else {
                tat += n * t;
                new = Some(tat);
            }
            if let Some(new) = new {
                let ttl = (new - now_us).div_ceil(1000).max(1);
                h.state.insert(key.to_owned(), (new.to_string().into_bytes(), expiry(now_ms, ttl)));
            }
            let ahead = tat - now_us;
            crate::ThrottleDecision {
                allowed,
                remaining: if ahead > tau { 0 } else { (tau - ahead) / t + 1 },
                retry_after_ms: wait.div_ceil(1000),
                reset_after_ms: ahead.div_ceil(1000),
            }
        })
    }

    pub(crate) fn outbound_send(c: &crate::Callout) -> Result<crate::outbound::RawAnswer, crate::OutboundError> {
        use crate::OutboundError as E;
        with(|h| {
            h.calls.push(c.clone());
            if !h.stubs.iter().any(|(u, _, _)| *u == c.upstream) {
                return Err(E::NotAllowed(format!(
                    "upstream `{}`: no stub (testing::stub_outbound) for it",
                    c.upstream
                )));
            }
            let bare = c.path.split('?').next().unwrap_or_default();
            let found = |p: &str| h.stubs.iter().find(|(u, sp, _)| *u == c.upstream && sp == p);
            match found(&c.path).or_else(|| found(bare)) {
                Some((_, _, answer)) => answer.clone(),
                None => Err(E::Unavailable(format!("upstream `{}`: no stub for {} {}", c.upstream, c.method, c.path))),
            }
        })
    }

    pub(crate) fn outbound_send_all(
        calls: &[crate::Callout],
    ) -> Vec<Result<crate::outbound::RawAnswer, crate::OutboundError>> {
        calls.iter().map(outbound_send).collect()
    }

    /// The same limits as the gateway's (`plugin-host/src/heads/mod.rs`).
    pub(crate) fn chain_publish(key: &str, value: &[u8]) -> bool {
        with(|h| {
            let me = h.instance.clone().unwrap_or_else(|| "plugin".into());
            let others: Vec<_> = h.chain.iter().filter(|(p, k, _)| *p == me && k != key).collect();
            let bytes: usize =
                others.iter().map(|(_, k, v)| k.len() + v.len()).sum::<usize>() + key.len() + value.len();
            if key.is_empty()
                || key.len() > MAX_LOCAL_KEY_LEN
                || others.len() + 1 > MAX_LOCAL_KEYS
                || bytes > MAX_LOCAL_BYTES
            {
                return false;
            }
            h.chain.retain(|(p, k, _)| !(*p == me && k == key));
            h.chain.push((me, key.to_owned(), value.to_vec()));
            true
        })
    }

    pub(crate) fn chain_read(plugin: &str, key: &str) -> Option<Vec<u8>> {
        with(|h| {
            let me = h.instance.clone().unwrap_or_else(|| "plugin".into());
            let plugin = if plugin.is_empty() { me.as_str() } else { plugin };
            h.chain.iter().find(|(p, k, _)| p == plugin && k == key).map(|(_, _, v)| v.clone())
        })
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

    // As the gateway does: a name that breaks the rule is dropped, so a
    // test asserting on it fails here rather than in production.
    pub(crate) fn counter_add(name: &str, value: u64) {
        if crate::is_metric_name(name) {
            with(|h| *h.counters.entry(name.to_owned()).or_default() += value);
        }
    }

    pub(crate) fn gauge_set(name: &str, value: i64) {
        if crate::is_metric_name(name) {
            with(|h| {
                h.gauges.insert(name.to_owned(), value);
            });
        }
    }

    pub(crate) fn emit(event: Event) {
        with(|h| h.events.push(event));
    }
}
