//! Live time series for the dashboard: per route and per upstream, one
//! point a second for the last [`KEEP`] seconds — request rate, error
//! ratio, p50 and p99 latency.
//!
//! Prometheus histograms answer "since start"; an operator looking at the
//! dashboard asks "in the last minutes". Each [`Series`] counts the current
//! second with atomics (three `fetch_add`s per request, no lock on the
//! request path); once a second [`Live::tick`] closes that second into a
//! point. Latencies go into log-scale bins four to an octave (16 µs ..
//! ~67 s), so a quantile is read to within 19%.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Points kept per series: 15 minutes at one a second.
pub(crate) const KEEP: usize = 900;
/// Latency bins: four an octave from 16 µs.
const BINS: usize = 90;
const FIRST_US: f64 = 16.0;

/// Upper bound of bin `i`, in µs.
fn bin_upper_us(i: usize) -> f64 {
    FIRST_US * 2f64.powf((i + 1) as f64 / 4.0)
}

fn bin_of(us: f64) -> usize {
    if us <= FIRST_US {
        return 0;
    }
    let i = ((us / FIRST_US).log2() * 4.0).ceil() as usize;
    i.saturating_sub(1).min(BINS - 1)
}

/// One closed second.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Point {
    /// End of the second, ms since the Unix epoch.
    pub(crate) t: u64,
    /// Requests answered in that second.
    pub(crate) requests: u64,
    /// Of which errors (5xx, or a failure to get an answer).
    pub(crate) errors: u64,
    /// Median latency, ms (0 when no request).
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, ms (0 when no request).
    pub(crate) p99_ms: f64,
}

/// The current second of one route, upstream or plugin, and its recent
/// history.
#[derive(Debug)]
pub(crate) struct Series {
    requests: AtomicU64,
    errors: AtomicU64,
    bins: [AtomicU32; BINS],
    history: Mutex<VecDeque<Point>>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bins: std::array::from_fn(|_| AtomicU32::new(0)),
            history: Mutex::new(VecDeque::with_capacity(KEEP)),
        }
    }
}

impl weir_plugin_host::CallObserver for Series {
    fn record(&self, failed: bool, seconds: f64) {
        Series::record(self, failed, seconds);
    }
}

impl Series {
    /// One answered request that took `seconds`.
    pub(crate) fn record(&self, error: bool, seconds: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.bins[bin_of(seconds * 1e6)].fetch_add(1, Ordering::Relaxed);
    }

    /// Close the current second as a point at `t`.
    fn close(&self, t: u64) {
        let requests = self.requests.swap(0, Ordering::Relaxed);
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let bins: Vec<u64> = self.bins.iter().map(|b| u64::from(b.swap(0, Ordering::Relaxed))).collect();
        let total: u64 = bins.iter().sum();
        let quantile = |q: f64| {
            if total == 0 {
                return 0.0;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in bins.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bin_upper_us(i).round() / 1000.0;
                }
            }
            bin_upper_us(BINS - 1) / 1000.0
        };
        let point = Point { t, requests, errors: errors.min(requests), p50_ms: quantile(0.5), p99_ms: quantile(0.99) };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == KEEP {
            h.pop_front();
        }
        h.push_back(point);
    }

    /// The newest `n` points, oldest first.
    pub(crate) fn last(&self, n: usize) -> Vec<Point> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().skip(h.len().saturating_sub(n)).copied().collect()
    }

    /// Points after `since` (ms since the epoch), oldest first.
    pub(crate) fn since(&self, since: u64) -> Vec<Point> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().filter(|p| p.t > since).copied().collect()
    }
}

/// Every live series, by kind and name. Names come from the config (routes,
/// upstreams), so the set is bounded; a name no longer configured keeps its
/// history until it is pruned.
#[derive(Debug, Default)]
pub(crate) struct Live {
    routes: Mutex<BTreeMap<String, Arc<Series>>>,
    upstreams: Mutex<BTreeMap<String, Arc<Series>>>,
    plugins: Mutex<BTreeMap<String, Arc<Series>>>,
}

/// `GET /admin/series` as data.
#[derive(Debug, Serialize)]
pub(crate) struct SeriesDoc {
    /// Milliseconds between points.
    pub(crate) interval_ms: u64,
    /// The end of the newest point, ms since the epoch.
    pub(crate) now_ms: u64,
    /// Points by route.
    pub(crate) routes: BTreeMap<String, Vec<Point>>,
    /// Points by upstream.
    pub(crate) upstreams: BTreeMap<String, Vec<Point>>,
    /// Points by plugin instance (calls; errors are traps, timeouts and
    /// refused output).
    pub(crate) plugins: BTreeMap<String, Vec<Point>>,
}

impl Live {
    /// The series of route `name`.
    pub(crate) fn route(&self, name: &str) -> Arc<Series> {
        Self::get(&self.routes, name)
    }

    /// The series of upstream `name`.
    pub(crate) fn upstream(&self, name: &str) -> Arc<Series> {
        Self::get(&self.upstreams, name)
    }

    /// The series of plugin instance `name`.
    pub(crate) fn plugin(&self, name: &str) -> Arc<Series> {
        Self::get(&self.plugins, name)
    }

    fn get(map: &Mutex<BTreeMap<String, Arc<Series>>>, name: &str) -> Arc<Series> {
        map.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_default().clone()
    }

    /// Close the current second of every series.
    pub(crate) fn tick(&self) {
        let t = weir_plugin_host::clock::unix_ms();
        for map in [&self.routes, &self.upstreams, &self.plugins] {
            let all: Vec<Arc<Series>> = map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            for s in all {
                s.close(t);
            }
        }
    }

    /// Forget series whose names are no longer configured.
    pub(crate) fn retain(&self, routes: &[&str], upstreams: &[&str], plugins: &[&str]) {
        self.plugins.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| plugins.contains(&k.as_str()));
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| routes.contains(&k.as_str()));
        self.upstreams.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| upstreams.contains(&k.as_str()));
    }

    /// Every series' points after `since`.
    pub(crate) fn since(&self, since: u64) -> SeriesDoc {
        let collect = |map: &Mutex<BTreeMap<String, Arc<Series>>>| {
            let all: Vec<(String, Arc<Series>)> =
                map.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            all.into_iter().map(|(k, s)| (k, s.since(since))).collect()
        };
        SeriesDoc {
            interval_ms: 1000,
            now_ms: weir_plugin_host::clock::unix_ms(),
            routes: collect(&self.routes),
            upstreams: collect(&self.upstreams),
            plugins: collect(&self.plugins),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_their_values() {
        for us in [1.0, 16.0, 17.0, 100.0, 999.0, 1000.0, 25_000.0, 1e6, 6e7] {
            let i = bin_of(us);
            assert!(us <= bin_upper_us(i) || i == BINS - 1, "{us} in bin {i} ≤ {}", bin_upper_us(i));
            assert!(i == 0 || us > bin_upper_us(i - 1), "{us} not in a lower bin");
        }
    }

    #[test]
    fn a_second_becomes_a_point_with_quantiles() {
        let s = Series::default();
        for _ in 0..98 {
            s.record(false, 0.001);
        }
        s.record(true, 0.5);
        s.record(true, 0.5);
        s.close(1000);
        let p = s.since(0)[0];
        assert_eq!((p.t, p.requests, p.errors), (1000, 100, 2));
        assert!(p.p50_ms >= 1.0 && p.p50_ms < 1.2, "{p:?}");
        assert!(p.p99_ms >= 500.0 && p.p99_ms < 600.0, "{p:?}");
        s.close(2000);
        let p = s.since(1000);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].requests, p[0].p99_ms), (0, 0.0), "an idle second is a zero point");
    }

    #[test]
    fn history_is_bounded() {
        let s = Series::default();
        for t in 0..(KEEP as u64 + 10) {
            s.close(t);
        }
        let all = s.since(0);
        assert_eq!(all.len(), KEEP, "the oldest 10 were dropped");
        assert_eq!(all[0].t, 10);
        assert_eq!(all.last().map(|p| p.t), Some(KEEP as u64 + 9));
    }
}
