//! Circuit breaking: caps on requests in flight and waiting, and an
//! error-rate breaker (closed → open → half-open → closed).
//!
//! Both are kept across reloads while the upstream's `[breaker]` settings
//! stay the same, so a reload does not close an open breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use weir_config::BreakerConfig;
use weir_plugin_host::clock::monotonic_ms;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const BUCKETS: u64 = 10;

/// An upstream's breaker.
pub(crate) struct Breaker {
    /// The settings it was built from.
    pub(crate) config: BreakerConfig,
    slots: Arc<Semaphore>,
    pending: AtomicUsize,
    rate: Option<RateBreaker>,
}

/// Why a request was refused before reaching the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The error-rate breaker is open (or half-open with its probes out).
    Open {
        /// When it lets requests through again.
        retry_after: Duration,
    },
    /// `max_requests` are in flight and `max_pending` wait.
    Overflow,
}

/// A try's place in the breaker: record its outcome with [`Admission::done`].
pub(crate) struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Admission<'_> {
    /// Record the try's outcome.
    pub(crate) fn done(mut self, failed: bool) {
        self.recorded = true;
        if let Some(rate) = &self.breaker.rate {
            rate.record(monotonic_ms(), self.probe, failed);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        // A probe abandoned without an outcome gives its slot back.
        if self.probe
            && !self.recorded
            && let Some(rate) = &self.breaker.rate
        {
            rate.probes_issued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Breaker {
    /// A breaker for `config`, reporting on `state` and `opened`.
    pub(crate) fn new(config: BreakerConfig, state: Gauge, opened: Counter) -> Self {
        let rate = config.error_rate.map(|rate| RateBreaker {
            error_rate: rate,
            min_requests: config.min_requests,
            bucket_ms: (config.window.as_millis() as u64 / BUCKETS).max(1),
            open_ms: config.open_for.as_millis() as u64,
            probes: config.probes.max(1),
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            probes_issued: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            buckets: std::array::from_fn(|_| Bucket::default()),
            state_gauge: state,
            opened,
        });
        Self { slots: Arc::new(Semaphore::new(config.max_requests.max(1))), pending: AtomicUsize::new(0), rate, config }
    }

    /// Ask to send a try.
    pub(crate) fn admit(&self) -> Result<Admission<'_>, Refusal> {
        let probe = match &self.rate {
            None => false,
            Some(rate) => rate.admit(monotonic_ms())?,
        };
        Ok(Admission { breaker: self, probe, recorded: false })
    }

    /// A slot among `max_requests`, waiting up to `wait` when all are taken
    /// (unless `max_pending` already wait).
    pub(crate) async fn slot(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.config.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Overflow);
        }
        let got = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Refusal::Overflow),
        }
    }

    /// `closed`, `open` or `half_open` (`closed` without an error-rate breaker).
    pub(crate) fn state(&self) -> &'static str {
        match self.rate.as_ref().map(|r| r.current(monotonic_ms())) {
            Some(OPEN) => "open",
            Some(HALF_OPEN) => "half_open",
            _ => "closed",
        }
    }

    /// Requests in flight and waiting.
    pub(crate) fn load(&self) -> (usize, usize) {
        (self.config.max_requests.max(1) - self.slots.available_permits(), self.pending.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
struct Bucket {
    epoch: AtomicU64,
    total: AtomicU32,
    failed: AtomicU32,
}

struct RateBreaker {
    error_rate: f64,
    min_requests: u32,
    bucket_ms: u64,
    open_ms: u64,
    probes: u32,
    state: AtomicU8,
    opened_at: AtomicU64,
    probes_issued: AtomicU32,
    probes_ok: AtomicU32,
    buckets: [Bucket; BUCKETS as usize],
    state_gauge: Gauge,
    opened: Counter,
}

impl RateBreaker {
    /// The state, with an open breaker whose time is up shown as half-open.
    fn current(&self, now: u64) -> u8 {
        let s = self.state.load(Ordering::Acquire);
        if s == OPEN && now >= self.opened_at.load(Ordering::Relaxed) + self.open_ms { HALF_OPEN } else { s }
    }

    /// `Ok(true)` for a half-open probe.
    fn admit(&self, now: u64) -> Result<bool, Refusal> {
        let mut s = self.state.load(Ordering::Acquire);
        if s == CLOSED {
            return Ok(false);
        }
        if s == OPEN {
            let until = self.opened_at.load(Ordering::Relaxed) + self.open_ms;
            if now < until {
                return Err(Refusal::Open { retry_after: Duration::from_millis(until - now) });
            }
            if self.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.probes_issued.store(0, Ordering::Relaxed);
                self.probes_ok.store(0, Ordering::Relaxed);
                self.state_gauge.set(i64::from(HALF_OPEN));
                tracing::info!("circuit breaker half-open: letting {} probe requests through", self.probes);
            }
            s = self.state.load(Ordering::Acquire);
            if s == CLOSED {
                return Ok(false);
            }
        }
        if s == HALF_OPEN && self.probes_issued.fetch_add(1, Ordering::Relaxed) < self.probes {
            return Ok(true);
        }
        if s == HALF_OPEN {
            self.probes_issued.fetch_sub(1, Ordering::Relaxed);
        }
        Err(Refusal::Open { retry_after: Duration::from_secs(1) })
    }

    fn record(&self, now: u64, probe: bool, failed: bool) {
        if probe {
            if failed {
                self.trip(now, "a probe request failed");
            } else if self.probes_ok.fetch_add(1, Ordering::Relaxed) + 1 >= self.probes
                && self.state.compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                for b in &self.buckets {
                    b.total.store(0, Ordering::Relaxed);
                    b.failed.store(0, Ordering::Relaxed);
                }
                self.state_gauge.set(i64::from(CLOSED));
                tracing::info!("circuit breaker closed: {} probe requests succeeded", self.probes);
            }
            return;
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let epoch = now / self.bucket_ms;
        let b = &self.buckets[(epoch % BUCKETS) as usize];
        if b.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            b.total.store(0, Ordering::Relaxed);
            b.failed.store(0, Ordering::Relaxed);
        }
        b.total.fetch_add(1, Ordering::Relaxed);
        if !failed {
            return;
        }
        b.failed.fetch_add(1, Ordering::Relaxed);
        let (mut total, mut bad) = (0u32, 0u32);
        for b in &self.buckets {
            if epoch.saturating_sub(b.epoch.load(Ordering::Relaxed)) < BUCKETS {
                total += b.total.load(Ordering::Relaxed);
                bad += b.failed.load(Ordering::Relaxed);
            }
        }
        if total >= self.min_requests && f64::from(bad) >= self.error_rate * f64::from(total) {
            self.trip(now, &format!("{bad} of the last {total} tries failed"));
        }
    }

    fn trip(&self, now: u64, why: &str) {
        self.opened_at.store(now, Ordering::Relaxed);
        if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
            self.opened.inc();
            self.state_gauge.set(i64::from(OPEN));
            tracing::warn!("circuit breaker open for {} ms: {why}", self.open_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(rate: f64) -> Breaker {
        let config = BreakerConfig {
            error_rate: Some(rate),
            min_requests: 4,
            open_for: Duration::from_millis(50),
            probes: 2,
            ..BreakerConfig::default()
        };
        Breaker::new(config, Gauge::default(), Counter::default())
    }

    #[test]
    fn opens_on_error_rate_then_half_opens_and_closes() {
        let b = breaker(0.5);
        for failed in [false, true, false, true] {
            b.admit().unwrap_or_else(|e| panic!("{e:?}")).done(failed);
        }
        assert_eq!(b.state(), "open");
        assert!(matches!(b.admit().err(), Some(Refusal::Open { .. })));
        std::thread::sleep(Duration::from_millis(60));
        let p1 = b.admit().unwrap_or_else(|e| panic!("{e:?}"));
        let p2 = b.admit().unwrap_or_else(|e| panic!("{e:?}"));
        assert!(b.admit().is_err(), "only `probes` requests go through half-open");
        p1.done(false);
        p2.done(false);
        assert_eq!(b.state(), "closed");
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_one_frees_its_slot() {
        let b = breaker(0.5);
        for _ in 0..4 {
            b.admit().unwrap_or_else(|e| panic!("{e:?}")).done(true);
        }
        std::thread::sleep(Duration::from_millis(60));
        drop(b.admit().unwrap_or_else(|e| panic!("{e:?}")));
        b.admit().unwrap_or_else(|e| panic!("{e:?}")).done(true);
        assert_eq!(b.state(), "open");
    }

    #[test]
    fn below_min_requests_it_stays_closed() {
        let b = breaker(0.5);
        for _ in 0..3 {
            b.admit().unwrap_or_else(|e| panic!("{e:?}")).done(true);
        }
        assert_eq!(b.state(), "closed");
    }
}
