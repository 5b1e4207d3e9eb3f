//! Where capability calls go: the gateway's imports on wasm, the in-memory
//! test host natively.

use crate::StateError;

#[cfg(target_arch = "wasm32")]
pub(crate) use self::wasm::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host::*;

/// Key and value limits shared by both hosts, so a plugin that passes its
/// native tests is not refused by the gateway.
pub(crate) const MAX_KEY_LEN: usize = 512;
pub(crate) const MAX_VALUE_LEN: usize = 64 * 1024;
/// Request-local limits (see `wit/plugin.wit`, interface `request-local`).
pub(crate) const MAX_LOCAL_KEYS: usize = 32;
pub(crate) const MAX_LOCAL_KEY_LEN: usize = 128;
pub(crate) const MAX_LOCAL_BYTES: usize = 16 * 1024;

#[allow(dead_code)]
pub(crate) fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(StateError::Invalid(format!("key length must be 1..={MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use crate::__private::bindings::weir::plugin::{clock, events, log as wlog, metrics, request_local, state};
    use crate::{Event, Level, Severity};

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
