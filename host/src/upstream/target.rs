//! Targets, what is known about their health, and the set a request picks
//! from.
//!
//! A target's state (requests in flight, check results, ejections) is kept
//! in a [`TargetRegistry`] by upstream name and address, so it survives a
//! config reload and a discovery update: a target ejected a second ago is
//! still ejected in the next snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use http::uri::Authority;

use super::metrics::TargetMetrics;
use super::pool::Endpoint;

/// What the gateway knows about one target, shared across snapshots.
#[derive(Debug, Default)]
pub(crate) struct TargetState {
    /// Requests sent and not yet finished (response body included).
    pub(crate) outstanding: AtomicUsize,
    /// Failed `unhealthy_threshold` active checks in a row (and not yet
    /// passed `healthy_threshold` since).
    pub(super) check_down: AtomicBool,
    pub(super) checked: AtomicBool,
    pub(super) last_check_ms: AtomicU64,
    pub(super) check_passes: AtomicU32,
    pub(super) check_fails: AtomicU32,
    /// Passive: failures in a row.
    pub(super) consecutive: AtomicU32,
    /// Ejected until this time ([`weir_plugin_host::clock::monotonic_ms`]); 0 when not ejected.
    pub(super) ejected_until: AtomicU64,
    pub(super) ejections: AtomicU32,
}

impl TargetState {
    /// Takes requests: not ejected, not failing active checks.
    pub(crate) fn usable(&self, now_ms: u64) -> bool {
        !self.check_down.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Ejected by passive checks right now.
    pub(crate) fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

/// One target of an upstream.
#[derive(Debug)]
pub(crate) struct Target {
    /// `host:port` as connected to (an IP address once resolved).
    pub(crate) addr: Authority,
    /// Share of requests relative to the group's other targets.
    pub(crate) weight: u32,
    /// In the backup group.
    pub(crate) backup: bool,
    /// Health and load, shared across snapshots.
    pub(crate) state: Arc<TargetState>,
    /// Counters.
    pub(crate) metrics: TargetMetrics,
    /// Its connections, taken from the upstream's pool on first use.
    pub(crate) endpoint: OnceLock<Arc<Endpoint>>,
}

/// Target states by upstream and address, weakly held: a state lives as
/// long as some snapshot's target does.
#[derive(Default)]
pub(crate) struct TargetRegistry {
    states: Mutex<HashMap<(String, String), Weak<TargetState>>>,
}

impl TargetRegistry {
    /// The state of `addr` in `upstream`, shared with earlier snapshots.
    pub(crate) fn state(&self, upstream: &str, addr: &str) -> Arc<TargetState> {
        let mut map = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let key = (upstream.to_owned(), addr.to_owned());
        if let Some(state) = map.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        if map.len() > 64 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let state = Arc::new(TargetState::default());
        map.insert(key, Arc::downgrade(&state));
        state
    }
}
