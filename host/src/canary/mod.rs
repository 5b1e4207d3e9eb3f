//! Canary plugin versions: `[plugins.NAME] canary = { module, percent,
//! sticky, rollback }` runs a second module for a share of the requests
//! and compares it with the stable one.
//!
//! - **Who gets the canary**: a request's key (its client address, a
//!   header, a chain value, or nothing for a draw per request) is hashed
//!   with the plugin name into 0..10000; below `percent × 100` runs the
//!   canary. The hash is FNV-1a, the same on every node and every release,
//!   so a client stays on one version across a fleet.
//! - **The comparison**: every call of either version is counted in a
//!   sliding window ([`window`]): calls, failures (traps, deadline
//!   overruns, refused output, 5xx answers) and a latency histogram. After
//!   each canary call with enough calls in the window, the canary's
//!   failure share and p99 are held against the stable version's.
//! - **The verdict**: crossing a threshold rolls the canary back: every
//!   request runs the stable module from then on, an event
//!   (`canary.rolled_back`, critical) goes to the log, `/admin/events` and
//!   the webhook, and `/admin/plugins` and the dashboard show the reason.
//!   An operator may `promote` (every request runs the canary) or `abort`
//!   (none does) through the admin API.
//!
//! The state outlives snapshots: a reload that leaves a plugin's canary
//! as it was (same modules, config and settings) keeps its comparison and
//! verdict; one that changes it starts afresh. It does not outlive the
//! process: after a restart a rolled-back canary is compared again.

mod window;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use weir_config::{CanaryConfig, RollbackConfig, Severity, Sticky};
use weir_plugin_host::{CallObserver, EventRecord, EventSink, Heads, LoadedPlugin};

use crate::observe::metrics::Metrics;
use weir_plugin_host::clock::unix_ms_of;
use window::{Summary, Window};

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// Taking its share, being compared.
    Comparing = 0,
    /// Taken back by the gateway: no request runs it.
    RolledBack = 1,
    /// Made the version every request runs, by an operator.
    Promoted = 2,
    /// Taken back by an operator.
    Aborted = 3,
}

impl Status {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Status::RolledBack,
            2 => Status::Promoted,
            3 => Status::Aborted,
            _ => Status::Comparing,
        }
    }

    /// Its name in the admin API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Comparing => "comparing",
            Status::RolledBack => "rolled_back",
            Status::Promoted => "promoted",
            Status::Aborted => "aborted",
        }
    }
}

/// Which version a call ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arm {
    Stable,
    Canary,
}

/// Why and when the canary left `comparing`.
#[derive(Debug, Clone)]
struct Verdict {
    reason: String,
    at: SystemTime,
    /// The canary's calls in the window when it was decided.
    canary_calls: u64,
    canary_failures: u64,
}

/// The two windows, side by side.
struct Comparison {
    stable: Window,
    canary: Window,
    /// Canary calls since the latency rule was last checked.
    since_latency_check: u32,
}

/// A plugin's canary across snapshots: settings, comparison, verdict.
pub(crate) struct CanaryState {
    /// The plugin's name.
    plugin: Arc<str>,
    /// What makes it the same canary from one reload to the next.
    fingerprint: String,
    /// `percent × 100`: requests hashed below it run the canary.
    threshold: u32,
    sticky: Sticky,
    rollback: RollbackConfig,
    status: AtomicU8,
    verdict: Mutex<Option<Verdict>>,
    comparison: Mutex<Comparison>,
    started: SystemTime,
    metrics: Arc<Metrics>,
}

/// How often (in canary calls) the latency rule is checked: it sums every
/// histogram bucket of both windows.
const LATENCY_CHECK_EVERY: u32 = 16;

impl CanaryState {
    /// A new comparison for plugin `plugin`'s canary `config`.
    pub(crate) fn new(plugin: &str, config: &CanaryConfig, fingerprint: String, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let window = config.rollback.window;
        metrics.canary_state(plugin, Status::Comparing as i64);
        Self {
            plugin: plugin.into(),
            fingerprint,
            threshold: (config.percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            sticky: config.sticky.clone(),
            rollback: config.rollback.clone(),
            status: AtomicU8::new(Status::Comparing as u8),
            verdict: Mutex::new(None),
            comparison: Mutex::new(Comparison {
                stable: Window::new(window, now),
                canary: Window::new(window, now),
                since_latency_check: 0,
            }),
            started: SystemTime::now(),
            metrics,
        }
    }

    /// What makes it the same canary from one reload to the next.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where it stands.
    pub(crate) fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Acquire))
    }

    /// One call of `arm` finished.
    fn record(&self, arm: Arm, failed: bool, seconds: f64, events: &dyn EventSink) {
        if self.status() != Status::Comparing {
            return;
        }
        let now = Instant::now();
        let verdict = {
            let mut c = self.comparison.lock().unwrap_or_else(|p| p.into_inner());
            match arm {
                Arm::Stable => {
                    c.stable.record(now, failed, seconds);
                    None
                }
                Arm::Canary => {
                    c.canary.record(now, failed, seconds);
                    self.judge(&mut c, now)
                }
            }
        };
        if let Some(v) = verdict {
            self.roll_back(v, events);
        }
    }

    /// A call of `arm` already recorded answered with a 5xx, or its output
    /// was refused: a failure after all.
    /// A call that was never made (paused after traps, no instance to be
    /// had) counts as one that failed, in no time.
    pub(crate) fn failed(&self, arm: Arm, counted: bool, events: &dyn EventSink) {
        if self.status() != Status::Comparing {
            return;
        }
        let now = Instant::now();
        let verdict = {
            let mut c = self.comparison.lock().unwrap_or_else(|p| p.into_inner());
            let window = match arm {
                Arm::Stable => &mut c.stable,
                Arm::Canary => &mut c.canary,
            };
            if counted {
                window.fail_one(now);
            } else {
                window.record(now, true, 0.0);
            }
            match arm {
                Arm::Stable => None,
                Arm::Canary => self.judge(&mut c, now),
            }
        };
        if let Some(v) = verdict {
            self.roll_back(v, events);
        }
    }

    /// The rule the canary breaks now, if any.
    fn judge(&self, c: &mut Comparison, now: Instant) -> Option<Verdict> {
        let r = &self.rollback;
        let (calls, failures) = c.canary.counts(now);
        if calls < r.min_requests {
            return None;
        }
        let (stable_calls, stable_failures) = c.stable.counts(now);
        let rate = failures as f64 / calls as f64;
        let stable_rate = if stable_calls == 0 { 0.0 } else { stable_failures as f64 / stable_calls as f64 };
        if rate > stable_rate + r.max_error_rate {
            return Some(Verdict {
                reason: format!(
                    "error rate {:.1}% ({failures} of {calls} calls) against the stable version's {:.1}% \
                     ({stable_failures} of {stable_calls}): more than {:.1} points above it",
                    rate * 100.0,
                    stable_rate * 100.0,
                    r.max_error_rate * 100.0
                ),
                at: SystemTime::now(),
                canary_calls: calls,
                canary_failures: failures,
            });
        }
        let max_ratio = r.max_p99_ratio?;
        c.since_latency_check += 1;
        if c.since_latency_check < LATENCY_CHECK_EVERY || stable_calls < r.min_requests {
            return None;
        }
        c.since_latency_check = 0;
        let (canary, stable) = (c.canary.summary(now), c.stable.summary(now));
        (stable.p99 > 0.0 && canary.p99 > stable.p99 * max_ratio).then(|| Verdict {
            reason: format!(
                "p99 {:.3} ms against the stable version's {:.3} ms ({:.2}×): above {max_ratio}×",
                canary.p99 * 1e3,
                stable.p99 * 1e3,
                canary.p99 / stable.p99
            ),
            at: SystemTime::now(),
            canary_calls: calls,
            canary_failures: failures,
        })
    }

    /// Take the canary back (once) for `verdict`.
    fn roll_back(&self, verdict: Verdict, events: &dyn EventSink) {
        if !self.settle(Status::Comparing, Status::RolledBack) {
            return;
        }
        self.metrics.canary_rolled_back(&self.plugin);
        let mut attributes = serde_json::Map::new();
        attributes.insert("reason".into(), verdict.reason.clone().into());
        attributes.insert("canary_calls".into(), verdict.canary_calls.into());
        attributes.insert("canary_failures".into(), verdict.canary_failures.into());
        events.emit(EventRecord {
            time_ms: unix_ms_of(verdict.at),
            plugin: self.plugin.to_string(),
            kind: "canary.rolled_back".into(),
            severity: Severity::Critical,
            message: format!("canary of plugin `{}` rolled back: {}", self.plugin, verdict.reason),
            attributes,
        });
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
    }

    /// Move from `from` to `to`; false if it was not in `from`.
    fn settle(&self, from: Status, to: Status) -> bool {
        let moved = self.status.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if moved {
            self.metrics.canary_state(&self.plugin, to as i64);
        }
        moved
    }

    /// An operator's `promote` (from `comparing`) or `abort` (from
    /// `comparing` or `promoted`): the new status, or why not.
    pub(crate) fn operator(&self, to: Status, events: &dyn EventSink) -> Result<Status, String> {
        let from = self.status();
        let allowed = match to {
            Status::Promoted => from == Status::Comparing,
            Status::Aborted => matches!(from, Status::Comparing | Status::Promoted),
            Status::Comparing | Status::RolledBack => false,
        };
        if !allowed {
            let why = self.verdict.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|v| v.reason.clone());
            return Err(match why {
                Some(why) => {
                    format!("the canary is {} ({why}); a reload that changes it starts a new one", from.as_str())
                }
                None => format!("the canary is {}", from.as_str()),
            });
        }
        if !self.settle(from, to) {
            return Err("the canary changed state meanwhile; try again".into());
        }
        let (kind, what) = match to {
            Status::Promoted => ("canary.promoted", "promoted: every request runs it"),
            _ => ("canary.aborted", "aborted: no request runs it"),
        };
        let at = SystemTime::now();
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Verdict { reason: format!("{what} (by an operator)"), at, canary_calls: 0, canary_failures: 0 });
        events.emit(EventRecord {
            time_ms: unix_ms_of(at),
            plugin: self.plugin.to_string(),
            kind: kind.into(),
            severity: Severity::Info,
            message: format!("canary of plugin `{}` {what}", self.plugin),
            attributes: serde_json::Map::new(),
        });
        Ok(to)
    }

    /// Which version a request runs, given what it is keyed by.
    fn arm(&self, heads: Option<&Heads>, client: std::net::IpAddr) -> Arm {
        match self.status() {
            Status::Promoted => return Arm::Canary,
            Status::RolledBack | Status::Aborted => return Arm::Stable,
            Status::Comparing => {}
        }
        if self.threshold == 0 {
            return Arm::Stable;
        }
        if self.threshold >= 10_000 {
            return Arm::Canary;
        }
        let draw = match &self.sticky {
            Sticky::Request => fastrand::u32(0..10_000),
            sticky => {
                let mut h = Fnv::new(self.plugin.as_bytes());
                let key = heads.and_then(|heads| match sticky {
                    Sticky::Header(name) => heads.request.parts.headers.get(name.as_str()).map(|v| v.as_bytes()),
                    Sticky::Chain(plugin, key) => heads.chain.read(plugin, key),
                    Sticky::Client | Sticky::Request => None,
                });
                match key {
                    Some(k) => h.write(k),
                    None => match client {
                        std::net::IpAddr::V4(a) => h.write(&a.octets()),
                        std::net::IpAddr::V6(a) => h.write(&a.octets()),
                    },
                }
                (h.finish() % 10_000) as u32
            }
        };
        if draw < self.threshold { Arm::Canary } else { Arm::Stable }
    }

    /// What `/admin/plugins` shows.
    pub(crate) fn to_json(&self, module: &str, sha256: &str) -> serde_json::Value {
        let now = Instant::now();
        let (stable, canary) = {
            let c = self.comparison.lock().unwrap_or_else(|p| p.into_inner());
            (c.stable.summary(now), c.canary.summary(now))
        };
        let side = |s: Summary| {
            serde_json::json!({
                "calls": s.calls,
                "failures": s.failures,
                "error_rate": s.error_rate(),
                "p99_ms": (s.p99 * 1e6).round() / 1e3,
            })
        };
        let verdict = self.verdict.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let r = &self.rollback;
        serde_json::json!({
            "module": module,
            "sha256": sha256,
            "percent": f64::from(self.threshold) / 100.0,
            "sticky": self.sticky.to_string(),
            "state": self.status().as_str(),
            "reason": verdict.as_ref().map(|v| v.reason.clone()),
            "decided_at_ms": verdict.as_ref().map(|v| unix_ms_of(v.at)),
            "since_ms": unix_ms_of(self.started),
            "rollback": {
                "max_error_rate": r.max_error_rate,
                "max_p99_ratio": r.max_p99_ratio,
                "min_requests": r.min_requests,
                "window_ms": r.window.as_millis() as u64,
            },
            "window": { "stable": side(stable), "canary": side(canary) },
        })
    }
}

/// FNV-1a, 64 bits: a hash that is the same everywhere, for assignment.
struct Fnv(u64);

impl Fnv {
    fn new(seed: &[u8]) -> Self {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.write(seed);
        h.write(&[0xff]);
        h
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        // FNV's low bits mix poorly for short keys: fold the high half in.
        self.0 ^ (self.0 >> 32)
    }
}

/// A plugin's canary in one snapshot: the loaded canary version (the
/// stable one is the snapshot's plugin of that name) and the state they
/// share with the snapshots before and after.
pub(crate) struct Canary {
    pub(crate) canary: Arc<LoadedPlugin>,
    pub(crate) state: Arc<CanaryState>,
    /// The snapshot's event sink.
    pub(crate) events: Arc<dyn EventSink>,
}

impl Canary {
    /// The version a request runs, keyed by its heads as the chain left
    /// them when it reached the plugin.
    pub(crate) fn choose(&self, heads: Option<&Heads>, client: std::net::IpAddr) -> Arm {
        self.state.arm(heads, client)
    }

    /// A call of `arm` failed in a way its call observer did not see: its
    /// answer was a 5xx or was refused (`counted`: the call itself was
    /// recorded as a success), or it was never made.
    pub(crate) fn failed(&self, arm: Arm, counted: bool) {
        self.state.failed(arm, counted, &*self.events);
    }
}

/// The call observer of one version of a plugin with a canary: the live
/// series as usual, and the comparison.
pub(crate) struct ArmObserver {
    pub(crate) live: Arc<dyn CallObserver>,
    pub(crate) state: Arc<CanaryState>,
    pub(crate) arm: Arm,
    pub(crate) events: Arc<dyn EventSink>,
}

impl CallObserver for ArmObserver {
    fn record(&self, failed: bool, seconds: f64) {
        self.live.record(failed, seconds);
        self.state.record(self.arm, failed, seconds, &*self.events);
    }
}

#[cfg(test)]
mod tests;
