//! Window arithmetic, pure and integer-only (no rounding in decisions).
//!
//! Windows are aligned to multiples of their length in wall time, so every
//! gateway node agrees on which window `now` is in. With the sliding
//! algorithm a request at `elapsed` ms into a window of `len` ms sees
//!
//! ```text
//! estimate = current + previous × (len − elapsed) / len
//! ```
//!
//! and fits iff `estimate ≤ quota`, compared exactly as
//! `current × len + previous × (len − elapsed) ≤ quota × len`.
//! With fixed windows `previous` is ignored.

/// Where `now` falls: which window, and how far into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    /// `now / len`: the window's number since the Unix epoch.
    pub(crate) index: u64,
    /// Milliseconds since the window began (`0..len`).
    pub(crate) elapsed: u64,
}

/// One limit's arithmetic: `quota` requests per `len` ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) quota: u64,
    /// Window length in ms (≥ 1000).
    pub(crate) len: u64,
    pub(crate) sliding: bool,
}

/// Counts seen for one limit and client; negative counts read as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Requests counted in the current window.
    pub(crate) current: u64,
    /// Requests counted in the previous window (ignored by fixed windows).
    pub(crate) previous: u64,
}

impl Window {
    /// The window `now_ms` falls in.
    pub(crate) fn position(&self, now_ms: u64) -> Position {
        Position { index: now_ms / self.len, elapsed: now_ms % self.len }
    }

    /// The previous window's share still inside the sliding window, in
    /// request·ms (0 for fixed windows).
    fn carried(&self, previous: u64, elapsed: u64) -> u128 {
        if self.sliding { u128::from(previous) * u128::from(self.len - elapsed.min(self.len)) } else { 0 }
    }

    fn capacity(&self) -> u128 {
        u128::from(self.quota) * u128::from(self.len)
    }

    /// Whether `counts` (including the request being decided) are within the quota.
    pub(crate) fn fits(&self, counts: Counts, elapsed: u64) -> bool {
        u128::from(counts.current) * u128::from(self.len) + self.carried(counts.previous, elapsed) <= self.capacity()
    }

    /// How many more requests would fit right now.
    pub(crate) fn remaining(&self, counts: Counts, elapsed: u64) -> u64 {
        let carried = self.carried(counts.previous, elapsed);
        let Some(room) = self.capacity().checked_sub(carried) else { return 0 };
        let whole = u64::try_from(room / u128::from(self.len)).unwrap_or(u64::MAX);
        whole.saturating_sub(counts.current)
    }

    /// Milliseconds until one more request would fit, if nothing else is
    /// counted meanwhile (0: it fits now).
    pub(crate) fn wait_ms(&self, counts: Counts, elapsed: u64) -> u64 {
        let next = Counts { current: counts.current + 1, ..counts };
        if self.fits(next, elapsed) {
            return 0;
        }
        let elapsed = elapsed.min(self.len - 1);
        let to_end = self.len - elapsed;
        if !self.sliding {
            // The next window starts empty and the quota is at least 1.
            return to_end;
        }
        let len = u128::from(self.len);
        if counts.current < self.quota {
            // Later in this window: the previous window's weight must shrink
            // until previous × (len − e) ≤ (quota − current − 1) × len.
            // `previous` > 0 here, or the request would fit.
            let slack = u128::from(self.quota - counts.current - 1) * len;
            let max_left = slack / u128::from(counts.previous.max(1));
            let at = self.len - u64::try_from(max_left.min(len)).unwrap_or(self.len);
            return at.saturating_sub(elapsed).max(1);
        }
        // In the next window this window's count becomes `previous` and
        // `current` starts at 0: 1 × len + current × (len − e) ≤ quota × len.
        let slack = u128::from(self.quota - 1) * len;
        let max_left = slack / u128::from(counts.current);
        let at = self.len - u64::try_from(max_left.min(len)).unwrap_or(self.len);
        to_end + at
    }

    /// Milliseconds until the current window ends.
    pub(crate) fn until_end(&self, elapsed: u64) -> u64 {
        self.len - elapsed.min(self.len - 1)
    }

    /// TTL for a counter created now: long enough to serve as the current
    /// window and, when sliding, as the previous one, plus `slack_ms` for
    /// clock skew between nodes.
    pub(crate) fn ttl_ms(&self, elapsed: u64, slack_ms: u64) -> u64 {
        let windows = if self.sliding { self.len } else { 0 };
        self.until_end(elapsed) + windows + slack_ms
    }
}

/// Whole seconds, rounded up, at least 1 (for `Retry-After` and `t=`).
pub(crate) fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}
