//! The arithmetic: packed window counters, the EWMA baseline and its state
//! record, and the score. No host calls here.

use crate::config::Conf;

/// Bits per field of a packed window counter.
const FIELD_BITS: u32 = 21;
const FIELD_MASK: i64 = (1 << FIELD_BITS) - 1;

/// `incr` delta adding one request to a packed counter.
pub(crate) const ONE_REQUEST: i64 = 1;
/// `incr` delta adding one error response.
pub(crate) const ONE_ERROR: i64 = 1 << FIELD_BITS;
/// `incr` delta adding one distinct path.
pub(crate) const ONE_PATH: i64 = 1 << (2 * FIELD_BITS);

/// Past this many requests in one window a client's requests stop being
/// counted (they are still scored), so no field can carry into the next:
/// errors and paths never exceed the requests counted, and the counted
/// requests stay below 2^21 even with many instances racing past the cap.
pub(crate) const SATURATION: u32 = 1 << 20;

/// One client's counts in one window, as one host counter: requests in bits
/// 0-20, error responses in bits 21-41, distinct paths in bits 42-62. One
/// `incr` both updates and reads all three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) requests: u32,
    pub(crate) errors: u32,
    pub(crate) paths: u32,
}

impl Counts {
    pub(crate) fn unpack(v: i64) -> Self {
        if v < 0 {
            return Self::default();
        }
        let field = |shift: u32| ((v >> shift) & FIELD_MASK) as u32;
        Self { requests: field(0), errors: field(FIELD_BITS), paths: field(2 * FIELD_BITS) }
    }

    pub(crate) fn pack(self) -> i64 {
        let f = |n: u32| i64::from(n) & FIELD_MASK;
        f(self.requests) | (f(self.errors) << FIELD_BITS) | (f(self.paths) << (2 * FIELD_BITS))
    }

    /// A counter as the host returns it from `get` (decimal ASCII).
    pub(crate) fn from_state(bytes: &[u8]) -> Self {
        std::str::from_utf8(bytes).ok().and_then(|s| s.trim().parse().ok()).map(Self::unpack).unwrap_or_default()
    }
}

/// Exponentially weighted mean and variance of a client's requests per
/// active window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Baseline {
    /// Windows folded in so far.
    pub(crate) windows: u32,
    pub(crate) mean: f64,
    pub(crate) var: f64,
}

impl Baseline {
    /// Fold one closed window's request count in. The first window sets
    /// the mean; then `mean += α·d`, `var = (1-α)·(var + α·d²)` with
    /// `d = x - mean` (the usual incremental EWMA variance).
    pub(crate) fn fold(&mut self, x: f64, alpha: f64) {
        if self.windows == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        }
        self.windows = self.windows.saturating_add(1);
    }
}

/// What the state key `b:<client>` holds: the baseline, the window it is
/// current for (the client's latest active window) and the counts of the
/// window before that one if the client was active in it (for the sliding
/// estimate). Text, so it can be read in `redis-cli`:
/// `1 <windows> <mean> <var> <window> <previous packed counts>`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) baseline: Baseline,
    pub(crate) window: u64,
    pub(crate) prev: Counts,
}

impl Record {
    pub(crate) fn encode(&self) -> String {
        let b = &self.baseline;
        format!("1 {} {} {} {} {}", b.windows, b.mean, b.var, self.window, self.prev.pack())
    }

    /// `None` for anything not written by [`Record::encode`].
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split(' ');
        if it.next()? != "1" {
            return None;
        }
        let windows = it.next()?.parse().ok()?;
        let mean: f64 = it.next()?.parse().ok()?;
        let var: f64 = it.next()?.parse().ok()?;
        let window = it.next()?.parse().ok()?;
        let prev = Counts::unpack(it.next()?.parse().ok()?);
        if it.next().is_some() || !mean.is_finite() || !var.is_finite() || mean < 0.0 || var < 0.0 {
            return None;
        }
        Some(Self { baseline: Baseline { windows, mean, var }, window, prev })
    }
}

/// A request's signals and score.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Signals {
    /// Sliding-window estimates.
    pub(crate) requests: f64,
    pub(crate) errors: f64,
    pub(crate) paths: f64,
    pub(crate) rate_z: f64,
    pub(crate) error_ratio: f64,
    pub(crate) path_ratio: f64,
    pub(crate) score: f64,
}

/// Score a client from its counts in the current window (`cur`), in the
/// previous one (`prev`), how far the current window has run (`elapsed`,
/// 0..1) and its baseline. The formula is in the README.
pub(crate) fn score(conf: &Conf, baseline: &Baseline, cur: Counts, prev: Counts, elapsed: f64) -> Signals {
    let carry = (1.0 - elapsed).clamp(0.0, 1.0);
    let slide = |c: u32, p: u32| f64::from(c) + carry * f64::from(p);
    let requests = slide(cur.requests, prev.requests);
    let errors = slide(cur.errors, prev.errors);
    let paths = slide(cur.paths, prev.paths);

    let rate_z = if baseline.windows >= conf.warmup_windows {
        let mean = baseline.mean.max(conf.min_per_window);
        let sd = baseline.var.sqrt().max(mean.sqrt()).max(1.0);
        ((requests - mean) / sd).max(0.0)
    } else {
        0.0
    };
    let (error_ratio, path_ratio) = if requests >= conf.min_requests && requests > 0.0 {
        ((errors / requests).clamp(0.0, 1.0), (paths / requests).clamp(0.0, 1.0))
    } else {
        (0.0, 0.0)
    };
    let w = conf.weights;
    let score = w.rate * rate_z + w.errors * error_ratio + w.paths * path_ratio;
    Signals { requests, errors, paths, rate_z, error_ratio, path_ratio, score }
}
