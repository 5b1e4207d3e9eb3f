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
