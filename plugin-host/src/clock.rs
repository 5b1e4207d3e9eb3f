//! The two clocks the gateway reads: wall time in Unix milliseconds (logs,
//! the admin API, the dashboard's series) and a monotonic clock from
//! process start (deadlines and health state kept in atomics, the
//! plugins' `monotonic-now`).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    unix_ms_of(SystemTime::now())
}

/// Microseconds since the Unix epoch, now (the in-process `throttle`).
pub fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Nanoseconds since the Unix epoch, now (the start and end of spans).
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A fresh non-zero span id: 16 hex digits (W3C trace context).
pub fn span_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A counter mixed with the process's random hasher keys: unique within
    // the process, unpredictable across processes, never zero.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mixed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), n) | 1;
    format!("{mixed:016x}")
}

/// Milliseconds since the Unix epoch at `t` (0 before it).
pub fn unix_ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// When the process first read the monotonic clock.
pub fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds on the monotonic clock, never 0 (0 can then mean "never").
pub fn monotonic_ms() -> u64 {
    process_start().elapsed().as_millis() as u64 + 1
}
