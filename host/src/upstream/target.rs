//! Targets, what is known about their health, and the set a request picks
//! from.
//!
//! A target's state (requests in flight, check results, ejections) is kept
//! in a [`TargetRegistry`] by upstream name and address, so it survives a
//! config reload and a discovery update: a target ejected a second ago is
//! still ejected in the next snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use http::uri::Authority;

use super::balance::Schedule;
use crate::config::Balance;
use crate::metrics::TargetMetrics;

/// What the gateway knows about one target, shared across snapshots.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Requests sent and not yet finished (response body included).
    pub outstanding: AtomicUsize,
    /// Failed `unhealthy_threshold` active checks in a row (and not yet
    /// passed `healthy_threshold` since).
    pub(super) check_down: AtomicBool,
    pub(super) checked: AtomicBool,
    pub(super) last_check_ms: AtomicU64,
    pub(super) check_passes: AtomicU32,
    pub(super) check_fails: AtomicU32,
    /// Passive: failures in a row.
    pub(super) consecutive: AtomicU32,
    /// Ejected until this time ([`crate::clock::monotonic_ms`]); 0 when not ejected.
    pub(super) ejected_until: AtomicU64,
    pub(super) ejections: AtomicU32,
}

impl TargetState {
    /// Takes requests: not ejected, not failing active checks.
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.check_down.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// Ejected by passive checks right now.
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

/// One target of an upstream.
#[derive(Debug)]
pub struct Target {
    /// `host:port` as connected to (an IP address once resolved).
    pub addr: Authority,
    /// Share of requests relative to the group's other targets.
    pub weight: u32,
    /// In the backup group.
    pub backup: bool,
    /// Health and load, shared across snapshots.
    pub state: Arc<TargetState>,
    /// Counters.
    pub metrics: TargetMetrics,
}

/// The targets of an upstream at one moment: primaries and backups, with
/// their pick schedules. Replaced whole when discovery changes targets.
#[derive(Debug)]
pub struct TargetSet {
    /// Used while at least one is healthy.
    pub primary: Group,
    /// Used when no primary is.
    pub backup: Group,
}

/// Primaries or backups.
#[derive(Debug)]
pub struct Group {
    /// The targets.
    pub targets: Vec<Arc<Target>>,
    pub(super) schedule: Schedule,
}

impl Group {
    pub(super) fn new(targets: Vec<Arc<Target>>, policy: Balance) -> Self {
        let schedule = Schedule::new(&targets, policy);
        Self { targets, schedule }
    }
}

impl TargetSet {
    /// Every target, primaries first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.primary.targets.iter().chain(&self.backup.targets)
    }

    /// The set as addresses, to tell whether discovery changed anything.
    pub fn addresses(&self) -> [Vec<(String, u32)>; 2] {
        let list = |g: &Group| g.targets.iter().map(|t| (t.addr.to_string(), t.weight)).collect();
        [list(&self.primary), list(&self.backup)]
    }
}

/// Target states by upstream and address, weakly held: a state lives as
/// long as some snapshot's target does.
#[derive(Default)]
pub struct TargetRegistry {
    states: Mutex<HashMap<(String, String), Weak<TargetState>>>,
}

impl TargetRegistry {
    /// The state of `addr` in `upstream`, shared with earlier snapshots.
    pub fn state(&self, upstream: &str, addr: &str) -> Arc<TargetState> {
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
