//! A sliding window of plugin calls for one version of a plugin: calls,
//! failures and a latency histogram, over the last `window`, in
//! [`SLOTS`] slots that expire one by one. Recording is a few adds; a
//! summary sums the live slots.
//!
//! Latency goes in log-spaced buckets, [`PER_OCTAVE`] to a doubling from
//! 1 µs to about 17 s, so a percentile is known to within about 9%,
//! enough to compare two versions by a ratio.

use std::time::{Duration, Instant};

/// Slots per window: the window slides by a twelfth of itself.
pub(crate) const SLOTS: usize = 12;
/// Buckets per doubling of call time.
const PER_OCTAVE: f64 = 8.0;
/// Buckets: 1 µs · 2^(i/8), up to 2^24 µs (~17 s); longer calls go in the
/// last.
const BUCKETS: usize = 24 * 8;

/// One slot: what happened in one twelfth of the window.
#[derive(Clone)]
struct Slot {
    /// The slot period this slot holds (periods since the window's origin).
    period: u64,
    calls: u64,
    failures: u64,
    buckets: Box<[u32; BUCKETS]>,
}

impl Slot {
    fn empty() -> Self {
        Self { period: u64::MAX, calls: 0, failures: 0, buckets: Box::new([0; BUCKETS]) }
    }
}

/// The calls of one version over the last window.
pub(crate) struct Window {
    origin: Instant,
    slot_len: Duration,
    slots: Vec<Slot>,
}

/// What a window holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Summary {
    /// Calls in the window.
    pub(crate) calls: u64,
    /// Failed ones: traps, deadline overruns, refused output, 5xx answers.
    pub(crate) failures: u64,
    /// The 99th percentile call time, seconds (0 without calls).
    pub(crate) p99: f64,
}

impl Summary {
    /// Failures over calls (0 without calls).
    pub(crate) fn error_rate(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { self.failures as f64 / self.calls as f64 }
    }
}

impl Window {
    /// An empty window of length `window`, starting at `origin`.
    pub(crate) fn new(window: Duration, origin: Instant) -> Self {
        let slot_len = (window / SLOTS as u32).max(Duration::from_millis(1));
        Self { origin, slot_len, slots: vec![Slot::empty(); SLOTS] }
    }

    fn period(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.origin).as_nanos() / self.slot_len.as_nanos()) as u64
    }

    /// The slot for `at`, emptied if it last held an older period.
    fn slot(&mut self, at: Instant) -> &mut Slot {
        let period = self.period(at);
        let slot = &mut self.slots[(period % SLOTS as u64) as usize];
        if slot.period != period {
            slot.period = period;
            slot.calls = 0;
            slot.failures = 0;
            slot.buckets.fill(0);
        }
        slot
    }

    /// One call at `at` that took `seconds`, `failed` or not.
    pub(crate) fn record(&mut self, at: Instant, failed: bool, seconds: f64) {
        let slot = self.slot(at);
        slot.calls += 1;
        slot.failures += u64::from(failed);
        let b = bucket(seconds);
        slot.buckets[b] = slot.buckets[b].saturating_add(1);
    }

    /// A call already recorded turned out a failure (its answer was a 5xx
    /// or refused).
    pub(crate) fn fail_one(&mut self, at: Instant) {
        let slot = self.slot(at);
        if slot.failures < slot.calls {
            slot.failures += 1;
        }
    }

    /// Calls and failures in the window at `at`, without the percentile.
    pub(crate) fn counts(&self, at: Instant) -> (u64, u64) {
        self.live(at).fold((0, 0), |(c, f), s| (c + s.calls, f + s.failures))
    }

    /// Everything the window holds at `at`.
    pub(crate) fn summary(&self, at: Instant) -> Summary {
        let mut buckets = [0u64; BUCKETS];
        let (mut calls, mut failures) = (0, 0);
        for s in self.live(at) {
            calls += s.calls;
            failures += s.failures;
            for (sum, n) in buckets.iter_mut().zip(s.buckets.iter()) {
                *sum += u64::from(*n);
            }
        }
        Summary { calls, failures, p99: percentile(&buckets, 0.99) }
    }

    /// The slots of the window that ends at `at`.
    fn live(&self, at: Instant) -> impl Iterator<Item = &Slot> {
        let now = self.period(at);
        let oldest = now.saturating_sub(SLOTS as u64 - 1);
        self.slots.iter().filter(move |s| s.period != u64::MAX && s.period >= oldest && s.period <= now)
    }
}

/// The bucket of a call of `seconds`.
fn bucket(seconds: f64) -> usize {
    let micros = seconds * 1e6;
    if !micros.is_finite() || micros <= 1.0 {
        return 0;
    }
    ((micros.log2() * PER_OCTAVE).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, seconds.
fn upper(i: usize) -> f64 {
    (i as f64 / PER_OCTAVE).exp2() / 1e6
}

/// The `q` quantile of `buckets`: the upper bound of the bucket it falls in.
fn percentile(buckets: &[u64; BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return upper(i);
        }
    }
    upper(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentile_over_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(12), t0);
        for i in 0..100u32 {
            // 1 ms, except one slow call in a hundred: 50 ms.
            let secs = if i == 99 { 0.05 } else { 0.001 };
            w.record(t0 + Duration::from_millis(u64::from(i)), i.is_multiple_of(10), secs);
        }
        let s = w.summary(t0 + Duration::from_millis(200));
        assert_eq!((s.calls, s.failures), (100, 10));
        assert!((s.error_rate() - 0.1).abs() < 1e-9);
        // p99 is the 99th call: 1 ms, within a bucket's width.
        assert!((0.001..0.00110).contains(&s.p99), "{}", s.p99);
        w.record(t0 + Duration::from_millis(300), false, 0.05);
        let s = w.summary(t0 + Duration::from_millis(300));
        assert!((0.05..0.055).contains(&s.p99), "{}", s.p99);
    }

    #[test]
    fn old_slots_expire_and_are_reused() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(12), t0);
        w.record(t0, true, 0.001);
        assert_eq!(w.counts(t0 + Duration::from_secs(11)), (1, 1));
        // A window later, the first slot is out of it.
        assert_eq!(w.counts(t0 + Duration::from_secs(12)), (0, 0));
        // Its place is taken by a new period, emptied first.
        w.record(t0 + Duration::from_secs(12), false, 0.001);
        assert_eq!(w.counts(t0 + Duration::from_secs(12)), (1, 0));
        w.fail_one(t0 + Duration::from_secs(12));
        w.fail_one(t0 + Duration::from_secs(12));
        assert_eq!(w.counts(t0 + Duration::from_secs(12)), (1, 1), "no more failures than calls");
    }

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for micros in [0.0, 0.5, 1.0, 1.5, 10.0, 1000.0, 1e6, 1e9, f64::INFINITY, f64::NAN] {
            let b = bucket(micros / 1e6);
            assert!(b < BUCKETS);
            if micros.is_finite() {
                assert!(b >= last, "{micros}");
                last = b;
            }
        }
        // A bucket's upper bound holds what went in it.
        for micros in [2.0, 3.7, 100.0, 12345.0] {
            let b = bucket(micros / 1e6);
            assert!(upper(b) * 1e6 >= micros * 0.9999 && upper(b) * 1e6 <= micros * 1.1, "{micros}");
        }
    }
}
