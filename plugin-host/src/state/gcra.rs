//! GCRA, the generic cell rate algorithm: a token bucket kept as one
//! timestamp per key, the theoretical arrival time (TAT) of the next
//! request. Pure arithmetic on microseconds, shared by the in-process
//! backend; the Redis backend runs the same steps in its Lua script
//! (`redis.rs`, `THROTTLE`), on the server's clock.
//!
//! With `T = ⌈period / rate⌉` (the emission interval) and `τ = burst · T`
//! (the tolerance), a request at `now` is allowed iff
//! `max(TAT, now) + (cost − 1) · T − now ≤ τ`, and then
//! `TAT = max(TAT, now) + cost · T`. Each allowed request moves TAT by at
//! least `T` past `max(TAT, start)`, so the n-th allowed one inside an
//! interval `[a, a + period)` needs `(n − 1) · T ≤ τ + (t − a) < τ +
//! rate · T`: at most `rate + burst` per interval, exactly.

use super::{MAX_TTL_MS, StateError};

/// Largest `burst` or `|cost|`.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// A `throttle` call's arguments, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Emission interval `T`, µs (≥ 1).
    interval: u64,
    /// Tolerance `τ = burst · T`, µs.
    tolerance: u64,
    /// Requests this call counts (negative: given back).
    cost: i64,
}

/// What a `throttle` call decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether it fit (and was counted).
    pub allowed: bool,
    /// More single requests that would fit now.
    pub remaining: u64,
    /// Ms until this call would be allowed (0 when it was).
    pub retry_after_ms: u64,
    /// Ms until the key is back to a full burst.
    pub reset_after_ms: u64,
}

impl Throttle {
    /// Check the arguments: `rate` requests per `period_ms`, `burst` more at
    /// once, this call counting `cost`.
    pub fn new(rate: u64, period_ms: u64, burst: u64, cost: i64) -> Result<Self, StateError> {
        let invalid = |m: String| Err(StateError::Invalid(m));
        if rate == 0 || period_ms == 0 {
            return invalid("throttle: rate and period must be above zero".into());
        }
        if period_ms > MAX_TTL_MS {
            return invalid(format!("throttle: period of {period_ms} ms exceeds ten years"));
        }
        if burst > MAX_COUNT || cost.unsigned_abs() > MAX_COUNT {
            return invalid(format!("throttle: burst and cost must be at most {MAX_COUNT}"));
        }
        if cost > 0 && cost.unsigned_abs() > burst + 1 {
            return invalid(format!(
                "throttle: a cost of {cost} exceeds burst + 1 = {} and could never fit",
                burst + 1
            ));
        }
        let interval = (u128::from(period_ms) * 1000).div_ceil(u128::from(rate)).max(1);
        let span = interval * u128::from(burst.max(cost.unsigned_abs()));
        if span > u128::from(MAX_TTL_MS) * 1000 {
            return invalid("throttle: the burst or cost spans more than ten years".into());
        }
        // Both fit: interval ≤ period · 1000 ≤ ten years in µs.
        Ok(Self { interval: interval as u64, tolerance: (interval * u128::from(burst)) as u64, cost })
    }

    /// Emission interval, µs.
    pub fn interval_us(&self) -> u64 {
        self.interval
    }

    /// Tolerance, µs.
    pub fn tolerance_us(&self) -> u64 {
        self.tolerance
    }

    /// Requests counted.
    pub fn cost(&self) -> i64 {
        self.cost
    }

    /// Decide at `now` (µs) for a key whose TAT is `tat` (absent: none).
    /// Returns the decision and the TAT to store, if it changed.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let (t, tau) = (self.interval, self.tolerance);
        let tat = tat.unwrap_or(now).max(now);
        let n = self.cost.unsigned_abs();
        if self.cost <= 0 {
            let new = tat.saturating_sub(n * t).max(now);
            return (self.decision(true, new, now, 0), (self.cost < 0).then_some(new));
        }
        let last = tat + (n - 1) * t;
        if last - now > tau {
            return (self.decision(false, tat, now, last - now - tau), None);
        }
        let new = tat + n * t;
        (self.decision(true, new, now, 0), Some(new))
    }

    fn decision(&self, allowed: bool, tat: u64, now: u64, wait_us: u64) -> Decision {
        let ahead = tat - now;
        let remaining = if ahead > self.tolerance { 0 } else { (self.tolerance - ahead) / self.interval + 1 };
        Decision { allowed, remaining, retry_after_ms: wait_us.div_ceil(1000), reset_after_ms: ahead.div_ceil(1000) }
    }
}

/// How long to keep a TAT of `tat` at `now` (µs): until it is in the past,
/// when the key's absence means the same thing. At least 1 ms.
pub fn ttl_ms(tat: u64, now: u64) -> u64 {
    tat.saturating_sub(now).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls at `times` (µs) on one key; the times allowed.
    fn run(th: Throttle, times: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut tat = None;
        let mut allowed = Vec::new();
        for now in times {
            let (d, new) = th.decide(tat, now);
            if let Some(new) = new {
                tat = Some(new);
            }
            if d.allowed {
                allowed.push(now);
            }
        }
        allowed
    }

    #[test]
    fn no_interval_of_one_period_ever_holds_more_than_rate_plus_burst() {
        // Pinned clocks: every arrival pattern here is exact, however
        // slowly the test runs.
        for (rate, period_ms, burst) in [(10, 1000, 0), (10, 1000, 5), (3, 1000, 2), (100, 60_000, 20), (7, 999, 1)] {
            let th = Throttle::new(rate, period_ms, burst, 1).expect("valid");
            let period = period_ms * 1000;
            // Steady floods at several speeds, and bursts straddling a
            // period boundary (the sliding window's weak spot).
            let mut patterns: Vec<Vec<u64>> = [1_000, 7_919, 33_333, 100_000]
                .iter()
                .map(|step| (0..(3 * period / step)).map(|i| 1_000_000_000 + i * step).collect())
                .collect();
            let edge = 1_000_000_000 + period;
            patterns.push((0..500).map(|i| edge - 250 + i).collect());
            patterns.push((0..40).flat_map(|i| [edge - period / 2 + i * 10, edge + i * 10]).collect());
            for times in patterns {
                let allowed = run(th, times);
                for (i, &start) in allowed.iter().enumerate() {
                    let within = allowed[i..].iter().take_while(|&&t| t < start + period).count() as u64;
                    assert!(within <= rate + burst, "{rate}/{period_ms}ms+{burst}: {within} in one period");
                }
                assert!(!allowed.is_empty());
            }
        }
    }

    #[test]
    fn a_fresh_key_allows_burst_plus_one_then_one_per_interval() {
        let th = Throttle::new(10, 1000, 4, 1).expect("valid"); // T = 100 ms
        let now = 5_000_000;
        let allowed = run(th, std::iter::repeat_n(now, 20));
        assert_eq!(allowed.len(), 5);
        let (d, _) = th.decide(Some(now + 500_000), now);
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after_ms, d.reset_after_ms), (0, 100, 500));
        // 100 ms later exactly one more fits.
        let (d, new) = th.decide(Some(now + 500_000), now + 100_000);
        assert!(d.allowed);
        assert_eq!((d.remaining, new), (0, Some(now + 600_000)));
        // Idle for a second: a full burst again.
        let (d, _) = th.decide(Some(now + 600_000), now + 1_600_000);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn costs_count_several_and_negative_costs_give_back() {
        let th = Throttle::new(10, 1000, 4, 3).expect("valid");
        let (d, tat) = th.decide(None, 0);
        assert!(d.allowed);
        assert_eq!((d.remaining, tat), (2, Some(300_000)));
        let (d, _) = th.decide(tat, 0);
        assert!(!d.allowed, "3 more do not fit in the 2 left");
        let back = Throttle::new(10, 1000, 4, -2).expect("valid");
        let (d, tat) = back.decide(Some(300_000), 0);
        assert_eq!((d.remaining, tat), (4, Some(100_000)));
        // Never beyond a full burst.
        let (d, tat) = back.decide(Some(100_000), 0);
        assert_eq!((d.remaining, tat), (5, Some(0)));
    }

    #[test]
    fn arguments_that_cannot_work_are_refused() {
        assert!(Throttle::new(0, 1000, 0, 1).is_err());
        assert!(Throttle::new(1, 0, 0, 1).is_err());
        assert!(Throttle::new(1, MAX_TTL_MS + 1, 0, 1).is_err());
        assert!(Throttle::new(1, 1000, 2, 4).is_err(), "cost over burst + 1");
        assert!(Throttle::new(1, MAX_TTL_MS, MAX_COUNT, 1).is_err(), "a burst of eons");
        assert!(Throttle::new(1, 1000, MAX_COUNT + 1, 1).is_err());
        // A rate finer than a microsecond rounds the interval up to 1 µs.
        assert_eq!(Throttle::new(10_000_000, 1000, 0, 1).expect("valid").interval_us(), 1);
        // The interval is rounded up: 1000 ms / 3 = 333,334 µs.
        assert_eq!(Throttle::new(3, 1000, 0, 1).expect("valid").interval_us(), 333_334);
    }
}
