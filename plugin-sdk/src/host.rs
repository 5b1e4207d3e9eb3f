//! Where capability calls go: the gateway's imports on wasm, the in-memory
//! test host natively. The head handles ([`RequestHandle`],
//! [`ResponseHandle`]) have the same methods in both.

use std::fmt;

use crate::StateError;

#[cfg(target_arch = "wasm32")]
pub(crate) use self::wasm::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use self::native::host::*;

/// Key and value limits the test host shares with the gateway, so a plugin
/// that passes its native tests is not refused by the gateway.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const MAX_KEY_LEN: usize = 512;
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const MAX_VALUE_LEN: usize = 64 * 1024;
/// Request-local limits (see `wit/plugin.wit`, interface `request-local`).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const MAX_LOCAL_KEYS: usize = 32;
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const MAX_LOCAL_KEY_LEN: usize = 128;
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const MAX_LOCAL_BYTES: usize = 16 * 1024;

/// Why the gateway (or the test host, by the same rules) refused an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EditError {
    Invalid(String),
    Reserved(String),
    ReadOnly,
    TooLarge(String),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Invalid(m) => write!(f, "{m}"),
            EditError::Reserved(h) => write!(f, "header {h} belongs to the gateway"),
            EditError::ReadOnly => write!(f, "this head is read-only in this phase"),
            EditError::TooLarge(m) => write!(f, "{m}"),
        }
    }
}

#[allow(dead_code)]
pub(crate) fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StateError::Invalid(format!("key length must be 1..={MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::mem::ManuallyDrop;

    use super::*;
    use crate::bindings::weir::plugin::types::{self as wit, EditError as WitEditError, Header};
    use crate::bindings::weir::plugin::{
        chain_data, clock, events, log as wlog, metrics, outbound, request_local, state,
    };
    use crate::{Event, Level, Severity};

    fn edit(r: Result<(), WitEditError>) -> Result<(), EditError> {
        r.map_err(|e| match e {
            WitEditError::Invalid(m) => EditError::Invalid(m),
            WitEditError::Reserved(h) => EditError::Reserved(h),
            WitEditError::ReadOnly => EditError::ReadOnly,
            WitEditError::TooLarge(m) => EditError::TooLarge(m),
        })
    }

    fn pairs(list: Vec<Header>) -> Vec<(String, Vec<u8>)> {
        list.into_iter().map(|h| (h.name, h.value)).collect()
    }

    fn headers(list: Vec<(String, Vec<u8>)>) -> Vec<Header> {
        list.into_iter().map(|(name, value)| Header { name, value }).collect()
    }

    /// The gateway's request, lent for one phase call.
    pub(crate) struct RequestHandle(ManuallyDrop<wit::Request>);

    /// The gateway's response, lent for one phase call.
    pub(crate) struct ResponseHandle(ManuallyDrop<wit::Response>);

    impl RequestHandle {
        /// Wrap the handle a phase export received as `borrow<request>`.
        pub(crate) fn lend(req: &wit::Request) -> Self {
            // SAFETY: the handle is this call's borrow. The wrapper never
            // outlives the call (the SDK keeps it inside the `Request` it
            // lends to the plugin as `&mut`, which cannot be moved out or
            // cloned) and is never dropped as an owned handle (ManuallyDrop),
            // so it is used exactly as the `&wit::Request` it came from.
            #[allow(unsafe_code)]
            Self(ManuallyDrop::new(unsafe { wit::Request::from_handle(req.handle()) }))
        }
        pub(crate) fn method(&self) -> String {
            self.0.method()
        }
        pub(crate) fn path_with_query(&self) -> String {
            self.0.path_with_query()
        }
        pub(crate) fn authority(&self) -> String {
            self.0.authority()
        }
        pub(crate) fn header(&self, name: &str) -> Vec<Vec<u8>> {
            self.0.header(name)
        }
        pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
            pairs(self.0.headers())
        }
        pub(crate) fn client_addr(&self) -> String {
            self.0.client_addr()
        }
        pub(crate) fn route(&self) -> String {
            self.0.route()
        }
        pub(crate) fn request_id(&self) -> String {
            self.0.request_id()
        }
        pub(crate) fn path_params(&self) -> Vec<(String, String)> {
            self.0.path_params()
        }
        pub(crate) fn tls(&self) -> Option<crate::Tls> {
            self.0.tls().map(|t| crate::Tls {
                version: t.version,
                alpn: t.alpn,
                server_name: t.server_name,
                client_subject: t.client_subject,
                client_cert_sha256: t.client_cert_sha256,
            })
        }
        pub(crate) fn set_method(&mut self, m: &str) -> Result<(), EditError> {
            edit(self.0.set_method(m))
        }
        pub(crate) fn set_path_with_query(&mut self, pq: &str) -> Result<(), EditError> {
            edit(self.0.set_path_with_query(pq))
        }
        pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            edit(self.0.set_header(name, value))
        }
        pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            edit(self.0.append_header(name, value))
        }
        pub(crate) fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            edit(self.0.add_response_header(name, value))
        }
        pub(crate) fn remove_header(&mut self, name: &str) -> Result<(), EditError> {
            edit(self.0.remove_header(name))
        }
        pub(crate) fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), EditError> {
            edit(self.0.set_headers(&headers(list)))
        }
    }

    impl ResponseHandle {
        /// Wrap the handle a phase export received as `borrow<response>`.
        pub(crate) fn lend(resp: &wit::Response) -> Self {
            // SAFETY: as in `RequestHandle::lend`.
            #[allow(unsafe_code)]
            Self(ManuallyDrop::new(unsafe { wit::Response::from_handle(resp.handle()) }))
        }
        pub(crate) fn status(&self) -> u16 {
            self.0.status()
        }
        pub(crate) fn header(&self, name: &str) -> Vec<Vec<u8>> {
            self.0.header(name)
        }
        pub(crate) fn headers(&self) -> Vec<(String, Vec<u8>)> {
            pairs(self.0.headers())
        }
        pub(crate) fn set_status(&mut self, status: u16) -> Result<(), EditError> {
            edit(self.0.set_status(status))
        }
        pub(crate) fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            edit(self.0.set_header(name, value))
        }
        pub(crate) fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), EditError> {
            edit(self.0.append_header(name, value))
        }
        pub(crate) fn remove_header(&mut self, name: &str) -> Result<(), EditError> {
            edit(self.0.remove_header(name))
        }
        pub(crate) fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), EditError> {
            edit(self.0.set_headers(&headers(list)))
        }
    }

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wlog::Level::Trace,
            Level::Debug => wlog::Level::Debug,
            Level::Info => wlog::Level::Info,
            Level::Warn => wlog::Level::Warn,
            Level::Error => wlog::Level::Error,
        };
        wlog::log(level, message);
    }

    pub(crate) fn monotonic_now() -> u64 {
        clock::monotonic_now()
    }

    pub(crate) fn wall_now() -> u64 {
        clock::wall_now()
    }

    fn err(e: state::Error) -> StateError {
        match e {
            state::Error::Unavailable(m) => StateError::Unavailable(m),
            state::Error::Invalid(m) => StateError::Invalid(m),
        }
    }

    pub(crate) fn state_incr(key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        state::incr(key, delta, ttl_ms).map_err(err)
    }

    pub(crate) fn state_get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        state::get(key).map_err(err)
    }

    pub(crate) fn state_set(key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        state::set(key, value, ttl_ms).map_err(err)
    }

    pub(crate) fn state_cas(key: &str, expected: Option<&[u8]>, value: &[u8], ttl_ms: u64) -> Result<bool, StateError> {
        state::compare_and_swap(key, expected, value, ttl_ms).map_err(err)
    }

    pub(crate) fn state_delete(key: &str) -> Result<bool, StateError> {
        state::delete(key).map_err(err)
    }

    pub(crate) fn state_throttle(
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: i64,
    ) -> Result<crate::ThrottleDecision, StateError> {
        let d = state::throttle(key, rate, period_ms, burst, cost).map_err(err)?;
        Ok(crate::ThrottleDecision {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after_ms: d.retry_after_ms,
            reset_after_ms: d.reset_after_ms,
        })
    }

    fn call_of(c: &crate::Callout) -> outbound::Call {
        outbound::Call {
            method: c.method.as_str().to_owned(),
            path: c.path.clone(),
            headers: c.headers.iter().map(|(n, v)| Header { name: n.clone(), value: v.clone() }).collect(),
            body: c.body.clone(),
            timeout_ms: c.timeout.map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)),
        }
    }

    fn outcome(
        r: Result<outbound::Answer, outbound::Error>,
    ) -> Result<crate::outbound::RawAnswer, crate::OutboundError> {
        use crate::OutboundError as E;
        match r {
            Ok(a) => Ok((a.status, pairs(a.headers), a.body)),
            Err(outbound::Error::NotAllowed(m)) => Err(E::NotAllowed(m)),
            Err(outbound::Error::Invalid(m)) => Err(E::Invalid(m)),
            Err(outbound::Error::Limit(m)) => Err(E::Limit(m)),
            Err(outbound::Error::Timeout(m)) => Err(E::Timeout(m)),
            Err(outbound::Error::Unavailable(m)) => Err(E::Unavailable(m)),
        }
    }

    pub(crate) fn outbound_send(c: &crate::Callout) -> Result<crate::outbound::RawAnswer, crate::OutboundError> {
        outcome(outbound::send(&c.upstream, &call_of(c)))
    }

    pub(crate) fn outbound_send_all(
        calls: &[crate::Callout],
    ) -> Vec<Result<crate::outbound::RawAnswer, crate::OutboundError>> {
        let list: Vec<(String, outbound::Call)> = calls.iter().map(|c| (c.upstream.clone(), call_of(c))).collect();
        outbound::send_all(&list).into_iter().map(outcome).collect()
    }

    pub(crate) fn chain_publish(key: &str, value: &[u8]) -> bool {
        chain_data::publish(key, value)
    }

    pub(crate) fn chain_read(plugin: &str, key: &str) -> Option<Vec<u8>> {
        chain_data::read(plugin, key)
    }

    pub(crate) fn local_get(key: &str) -> Option<Vec<u8>> {
        request_local::get(key)
    }

    pub(crate) fn local_set(key: &str, value: &[u8]) -> bool {
        request_local::set(key, value)
    }

    pub(crate) fn counter_add(name: &str, value: u64) {
        metrics::counter_add(name, value);
    }

    pub(crate) fn gauge_set(name: &str, value: i64) {
        metrics::gauge_set(name, value);
    }

    pub(crate) fn emit(event: Event) {
        let severity = match event.severity {
            Severity::Info => events::Severity::Info,
            Severity::Warning => events::Severity::Warning,
            Severity::Critical => events::Severity::Critical,
        };
        events::emit(&events::Event {
            kind: event.kind,
            severity,
            message: event.message,
            attributes: event.attributes,
        });
    }
}
