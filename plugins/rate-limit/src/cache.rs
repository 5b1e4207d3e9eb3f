//! Per-instance cache of finished windows' counts.
//!
//! Once a window has ended its count no longer changes (up to the few
//! requests still in flight at the boundary), so each instance reads the
//! previous window's counter once and remembers it for the rest of the
//! current window. The cache is bounded; it only saves state calls, so
//! losing it (a new instance, eviction) costs a `get`, never correctness.

use std::collections::HashMap;

/// Entries kept per instance (each is a state key and three numbers).
pub(crate) const CAPACITY: usize = 4096;

/// A cached count of a finished window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Which limit (index into the instance's limits).
    limit: usize,
    /// The finished window's index.
    window: u64,
    /// Its final count.
    count: u64,
}

/// Finished windows' counts, by state key.
#[derive(Debug, Default)]
pub(crate) struct PreviousCounts {
    map: HashMap<String, Entry>,
}

impl PreviousCounts {
    /// The cached count for `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        self.map.get(key).map(|e| e.count)
    }

    /// Remember `count` for `key`, the counter of `limit`'s window `window`.
    ///
    /// When full, entries for which `stale(limit, window)` holds are
    /// dropped first; if that frees nothing, the whole cache is.
    pub(crate) fn insert(
        &mut self,
        key: String,
        limit: usize,
        window: u64,
        count: u64,
        stale: impl Fn(usize, u64) -> bool,
    ) {
        if self.map.len() >= CAPACITY && !self.map.contains_key(&key) {
            self.map.retain(|_, e| !stale(e.limit, e.window));
            if self.map.len() >= CAPACITY {
                self.map.clear();
            }
        }
        self.map.insert(key, Entry { limit, window, count });
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
