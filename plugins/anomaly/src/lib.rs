//! `anomaly.wasm`: score every client against its own recent behaviour and
//! act on the ones that look like scanners or floods.
//!
//! Per client (its IP, IPv6 by its `ipv6_prefix` network, or an API key
//! header), the plugin counts requests, error responses and distinct paths
//! over short windows aligned to wall time, keeps an EWMA baseline of the
//! request rate of clients that made `min_requests` requests in a window in
//! host state, and scores each request:
//!
//! ```text
//! score = weights.rate · rate_z + weights.errors · error_ratio + weights.paths · path_ratio
//! ```
//!
//! When the score reaches `threshold` the client is flagged, throttled or
//! challenged for `cooldown` (a state key with that TTL, so every instance
//! and node agrees), and one `anomaly.detected` event is emitted per
//! cooldown. State errors fail open. The README (`plugins/anomaly/README.md`)
//! has the exact formula, every key and the state calls per request.
//!
//! ```toml
//! [plugins.anomaly]
//! module = "anomaly.wasm"
//! config = { key = "header:x-api-key", action = "throttle", window = "10s", threshold = 6.0, cooldown = "1m" }
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use weir_plugin_sdk::StateError;
use weir_plugin_sdk::prelude::*;

mod client;
mod config;
mod signals;

use client::Client;
#[cfg(test)]
use client::path_hash;
use config::{ActionConf, ClientKey, Conf, EventClient, Settings};
use signals::{Baseline, Counts, ONE_ERROR, ONE_PATH, ONE_REQUEST, Record, SATURATION, Signals, score};

/// Window counters live this many windows, so a client's last active
/// window can still be folded into its baseline when it comes back within
/// six windows of it.
const COUNTER_WINDOWS: u64 = 7;
/// Bounds of the per-instance cache (cleared when full, and every window).
const MAX_CACHED_CLIENTS: usize = 4096;
const MAX_CACHED_PATHS: usize = 16384;
/// At most one "state unavailable" log line per instance this often.
const WARN_EVERY_MS: u64 = 10_000;
/// Request-local key carrying the request's client and window to `on_response`.
const LOCAL_KEY: &str = "anomaly";

/// What an instance remembers about a client during one window.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    baseline: Baseline,
    /// Counts of the previous window, if the client was active in it.
    prev: Counts,
    /// The latest request count seen for the window (for [`SATURATION`]).
    requests: u32,
    /// Whether the client has a `b:` record (or this instance already
    /// tried to create it this window).
    recorded: bool,
}

/// Per-instance cache, valid for one window: it saves the baseline read and
/// the path marker for clients and paths this instance already saw. Losing
/// it only costs state calls.
#[derive(Default)]
struct Cache {
    window: u64,
    clients: HashMap<[u8; 16], Known>,
    paths: HashSet<([u8; 16], u64)>,
}

impl Cache {
    fn roll(&mut self, window: u64) {
        if window != self.window {
            self.window = window;
            self.clients.clear();
            self.paths.clear();
        }
    }
}

/// The state value under `cd:<client>`: `1 <until_ms> <score>`.
#[derive(Clone, Copy, Debug)]
struct Cooldown {
    until_ms: u64,
    score: f64,
}

impl Cooldown {
    fn encode(&self) -> String {
        format!("1 {} {:.2}", self.until_ms, self.score)
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split(' ');
        (it.next()? == "1").then_some(())?;
        let until_ms = it.next()?.parse().ok()?;
        let score: f64 = it.next()?.parse().ok()?;
        score.is_finite().then_some(Self { until_ms, score })
    }
}

/// What `on_request` hands to `on_response` for a counted request.
struct Local {
    client: Client,
    window: u64,
    known: Known,
}

impl Local {
    /// Fixed part: id (16), window (8), baseline windows (4), mean (8),
    /// var (8), previous counts (8), source (1).
    const FIXED: usize = 53;

    /// Binary, not text: formatting the baseline's floats cost more than
    /// the rest of the request phase's own code. The raw client value
    /// follows only with `event_client = "raw"` (the one use of it).
    fn encode(&self) -> Vec<u8> {
        let b = &self.known.baseline;
        let raw = self.client.raw.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(Self::FIXED + raw.len());
        out.extend_from_slice(&self.client.id);
        out.extend_from_slice(&self.window.to_le_bytes());
        out.extend_from_slice(&b.windows.to_le_bytes());
        out.extend_from_slice(&b.mean.to_bits().to_le_bytes());
        out.extend_from_slice(&b.var.to_bits().to_le_bytes());
        out.extend_from_slice(&self.known.prev.pack().to_le_bytes());
        out.push(client::source_code(self.client.source) | if self.client.raw.is_some() { 0x80 } else { 0 });
        out.extend_from_slice(raw.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (fixed, raw) = bytes.split_at_checked(Self::FIXED)?;
        let (id, rest) = fixed.split_first_chunk::<16>()?;
        let (window, rest) = rest.split_first_chunk::<8>()?;
        let (windows, rest) = rest.split_first_chunk::<4>()?;
        let (mean, rest) = rest.split_first_chunk::<8>()?;
        let (var, rest) = rest.split_first_chunk::<8>()?;
        let (prev, rest) = rest.split_first_chunk::<8>()?;
        let source = client::source_of(*rest.first()?)?;
        let raw = (source.1).then(|| String::from_utf8_lossy(raw).into_owned());
        let client = Client::from_id(*id, source.0, raw);
        let baseline = Baseline {
            windows: u32::from_le_bytes(*windows),
            mean: f64::from_bits(u64::from_le_bytes(*mean)),
            var: f64::from_bits(u64::from_le_bytes(*var)),
        };
        let prev = Counts::unpack(i64::from_le_bytes(*prev));
        Some(Self {
            client,
            window: u64::from_le_bytes(*window),
            known: Known { baseline, prev, requests: 0, recorded: true },
        })
    }
}

#[derive(Serialize)]
struct Throttled {
    error: &'static str,
    retry_after: u64,
}

struct Anomaly {
    conf: Conf,
    cache: RefCell<Cache>,
    /// Client ids and path hashes already worked out.
    memo: RefCell<client::Memo>,
    last_warning_ms: Cell<Option<u64>>,
}

impl Plugin for Anomaly {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        Ok(Self {
            conf: config::load(config)?,
            cache: RefCell::default(),
            memo: RefCell::default(),
            last_warning_ms: Cell::new(None),
        })
    }

    /// Responses are only needed to count errors.
    fn phases(&self) -> Phases {
        if self.counts_errors() { Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS } else { Phases::REQUEST_HEADERS }
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        // Upstreams may trust the flag header: clients cannot send their own,
        // whatever the action (an upstream cannot tell which one is set).
        if !req.header_all(self.conf.flag_header.as_str()).is_empty() {
            req.remove_header(self.conf.flag_header.as_str())?;
        }
        let client = self.memo.borrow_mut().client(client::Identity::of(&self.conf, req, cx));
        let now = cx.wall_now();
        match self.judge(req, cx, &client, now) {
            Ok(action) => Ok(action),
            Err(e) => {
                self.state_failed(cx, &e, now);
                Ok(Action::Continue)
            }
        }
    }

    fn on_response(&self, req: &Request, resp: &mut Response, cx: &Context) -> Result<Action> {
        if !self.conf.is_error(resp.status()) {
            return Ok(Action::Continue);
        }
        // Only requests that were counted (not acted on) carry this.
        let Some(local) = cx.get_local(LOCAL_KEY).and_then(|b| Local::decode(&b)) else {
            return Ok(Action::Continue);
        };
        let now = cx.wall_now();
        if let Err(e) = self.count_error(req.route(), cx, &local, now) {
            self.state_failed(cx, &e, now);
        }
        Ok(Action::Continue)
    }
}

impl Anomaly {
    fn counts_errors(&self) -> bool {
        self.conf.weights.errors > 0.0
    }

    fn counter_ttl(&self) -> u64 {
        self.conf.window_ms * COUNTER_WINDOWS
    }

    /// How far the current window has run, 0..1.
    fn elapsed(&self, now: u64) -> f64 {
        (now % self.conf.window_ms) as f64 / self.conf.window_ms as f64
    }

    /// Act on a client under cooldown, or count and score the request.
    fn judge(&self, req: &mut Request, cx: &Context, client: &Client, now: u64) -> Result<Action, StateError> {
        let state = cx.state();
        if let Some(value) = state.get(&client.cooldown_key())? {
            let cd = Cooldown::decode(&value)
                .unwrap_or(Cooldown { until_ms: now + self.conf.cooldown_ms, score: self.conf.threshold });
            return Ok(self.act(req, cx, &cd, now));
        }

        let window = now / self.conf.window_ms;
        let known = self.known(cx, client, window)?;

        let path = self.memo.borrow_mut().path(req.path(), self.conf.path_segments);
        let seen = self.cache.borrow().paths.contains(&(client.id, path));
        let new_path = !seen && {
            let marks = state.incr(&client.path_key(window, path), 1, self.conf.window_ms)?;
            let mut cache = self.cache.borrow_mut();
            if cache.paths.len() >= MAX_CACHED_PATHS {
                cache.paths.clear();
            }
            cache.paths.insert((client.id, path));
            marks == 1
        };

        let saturated = known.requests >= SATURATION;
        let delta = match (saturated, new_path) {
            (true, _) => 0,
            (false, true) => ONE_REQUEST + ONE_PATH,
            (false, false) => ONE_REQUEST,
        };
        let counts = Counts::unpack(state.incr(&client.counts_key(window), delta, self.counter_ttl())?);
        let record_now = !known.recorded && counts.requests >= self.conf.min_window_requests;
        if let Some(k) = self.cache.borrow_mut().clients.get_mut(&client.id) {
            k.requests = counts.requests;
            k.recorded |= record_now;
        }
        if record_now && let Err(e) = self.start_record(cx, client, window, &known) {
            self.state_failed(cx, &e, now); // and score the request all the same
        }

        let signals = score(&self.conf, &known.baseline, counts, known.prev, self.elapsed(now));
        if signals.score >= self.conf.threshold {
            let cd = self.trigger(req.route(), cx, client, &known, &signals, now)?;
            return Ok(self.act(req, cx, &cd, now));
        }
        if !saturated && self.counts_errors() {
            cx.set_local(LOCAL_KEY, Local { client: client.clone(), window, known }.encode());
        }
        Ok(Action::Continue)
    }

    /// The client's baseline for `window`: from the cache, or read from
    /// state — and, at the client's first request in a new window, fold its
    /// last active window into the baseline (one compare-and-swap decides
    /// which instance does it).
    ///
    /// A client without a `b:` record has no baseline and gets none written
    /// here: only its previous window's counts are read, for the sliding
    /// estimate. Its record is created by [`Anomaly::start_record`] once it
    /// makes `min_requests` requests in one window, so a client that sends
    /// a few requests and goes away leaves only short-lived counters.
    fn known(&self, cx: &Context, client: &Client, window: u64) -> Result<Known, StateError> {
        {
            let mut cache = self.cache.borrow_mut();
            cache.roll(window);
            if let Some(k) = cache.clients.get(&client.id) {
                return Ok(*k);
            }
        }
        let state = cx.state();
        let key = client.baseline_key();
        let stored = state.get(&key)?;
        let record = stored.as_deref().and_then(Record::decode);
        let known = match record {
            // Current (or, with clock skew between nodes, ahead).
            Some(r) if r.window >= window => Known {
                baseline: r.baseline,
                prev: if r.window == window { r.prev } else { Counts::default() },
                requests: 0,
                recorded: true,
            },
            Some(r) => {
                let mut baseline = r.baseline;
                let mut prev = Counts::default();
                if let Some(bytes) = state.get(&client.counts_key(r.window))? {
                    let closed = Counts::from_state(&bytes);
                    if closed.requests > 0 {
                        baseline.fold(f64::from(closed.requests), self.conf.alpha);
                    }
                    if r.window + 1 == window {
                        prev = closed;
                    }
                }
                let next = Record { baseline, window, prev };
                // Losing the swap means another instance folded the same
                // window from the same inputs: use ours, write nothing.
                state.compare_and_swap(&key, stored.as_deref(), next.encode().as_bytes(), self.conf.baseline_ttl_ms)?;
                Known { baseline, prev, requests: 0, recorded: true }
            }
            None => {
                if stored.is_some() {
                    // Not a record this plugin wrote: make room for one.
                    state.delete(&key)?;
                }
                let prev = match window.checked_sub(1) {
                    Some(w) => state.get(&client.counts_key(w))?.map(|b| Counts::from_state(&b)).unwrap_or_default(),
                    None => Counts::default(),
                };
                Known { baseline: Baseline::default(), prev, requests: 0, recorded: false }
            }
        };
        let mut cache = self.cache.borrow_mut();
        if cache.clients.len() >= MAX_CACHED_CLIENTS {
            cache.clients.clear();
        }
        cache.clients.insert(client.id, known);
        Ok(known)
    }

    /// Create the `b:` record of a client that just made `min_requests`
    /// requests in `window`: from now on its active windows are folded into
    /// a baseline. Only if absent, so it never overwrites a fold.
    fn start_record(&self, cx: &Context, client: &Client, window: u64, known: &Known) -> Result<(), StateError> {
        let record = Record { baseline: known.baseline, window, prev: known.prev };
        cx.state().compare_and_swap(
            &client.baseline_key(),
            None,
            record.encode().as_bytes(),
            self.conf.baseline_ttl_ms,
        )?;
        Ok(())
    }

    /// Count an error response and score again: errors arrive after the
    /// request was scored, so a scanner is caught one request earlier.
    fn count_error(&self, route: &str, cx: &Context, local: &Local, now: u64) -> Result<(), StateError> {
        let packed = cx.state().incr(&local.client.counts_key(local.window), ONE_ERROR, self.counter_ttl())?;
        if now / self.conf.window_ms != local.window {
            return Ok(()); // counted in its window; the next request scores it
        }
        let signals =
            score(&self.conf, &local.known.baseline, Counts::unpack(packed), local.known.prev, self.elapsed(now));
        if signals.score >= self.conf.threshold {
            self.trigger(route, cx, &local.client, &local.known, &signals, now)?;
        }
        Ok(())
    }

    /// Start a cooldown. Whoever creates the key (one compare-and-swap)
    /// emits the event, so there is one event per client per cooldown
    /// however many instances and nodes see the crossing.
    fn trigger(
        &self,
        route: &str,
        cx: &Context,
        client: &Client,
        known: &Known,
        signals: &Signals,
        now: u64,
    ) -> Result<Cooldown, StateError> {
        let cd = Cooldown { until_ms: now + self.conf.cooldown_ms, score: signals.score };
        let created =
            cx.state().compare_and_swap(&client.cooldown_key(), None, cd.encode().as_bytes(), self.conf.cooldown_ms)?;
        if created {
            cx.emit(self.event(route, client, known, signals));
            cx.counter_add("events", 1);
        }
        Ok(cd)
    }

    /// Apply the configured action to a request of a client under cooldown.
    fn act(&self, req: &mut Request, cx: &Context, cd: &Cooldown, now: u64) -> Action {
        match &self.conf.action {
            ActionConf::Flag => {
                cx.counter_add("flagged", 1);
                let _ = req.set_header(self.conf.flag_header.as_str(), format!("score={:.1}", cd.score));
                Action::Continue
            }
            ActionConf::Throttle => {
                cx.counter_add("throttled", 1);
                let left = cd.until_ms.saturating_sub(now).min(self.conf.cooldown_ms);
                let retry_after = left.div_ceil(1000).max(1);
                let body = Throttled { error: "too many requests: anomalous traffic from this client", retry_after };
                Reply::json(StatusCode::TOO_MANY_REQUESTS, &body).header("retry-after", &retry_after.to_string()).into()
            }
            ActionConf::Challenge { status, headers, body } => {
                cx.counter_add("challenged", 1);
                let mut reply = Reply::new(*status).body(body.clone());
                *reply.headers_mut() = headers.clone();
                reply.into()
            }
        }
    }

    fn event(&self, route: &str, client: &Client, known: &Known, s: &Signals) -> Event {
        let who = match (self.conf.event_client, &client.raw) {
            (EventClient::Raw, Some(raw)) => raw.clone(),
            _ => client.hex.clone(),
        };
        let key = match (&self.conf.key, client.source) {
            (ClientKey::Header(name), "header") => format!("header:{name}"),
            _ => "ip".to_owned(),
        };
        let action = self.conf.action.name();
        let window = humantime::format_duration(Duration::from_millis(self.conf.window_ms)).to_string();
        let cooldown = humantime::format_duration(Duration::from_millis(self.conf.cooldown_ms)).to_string();
        let message = format!(
            "client {who} ({key}) scored {:.1} (threshold {}): {:.0} requests, {:.0} errors, {:.0} distinct paths \
             in the last {window}; {action} for {cooldown}",
            s.score, self.conf.threshold, s.requests, s.errors, s.paths
        );
        Event::new("anomaly.detected", Severity::Warning, message)
            .attr("client", who)
            .attr("key", key)
            .attr("score", format!("{:.1}", s.score))
            .attr("threshold", self.conf.threshold.to_string())
            .attr("action", action)
            .attr("cooldown", cooldown)
            .attr("route", route)
            .attr("window", window)
            .attr("requests", format!("{:.0}", s.requests))
            .attr("errors", format!("{:.0}", s.errors))
            .attr("distinct_paths", format!("{:.0}", s.paths))
            .attr("rate_z", format!("{:.2}", s.rate_z))
            .attr("error_ratio", format!("{:.2}", s.error_ratio))
            .attr("path_ratio", format!("{:.2}", s.path_ratio))
            .attr("baseline_mean", format!("{:.1}", known.baseline.mean))
            .attr("baseline_windows", known.baseline.windows.to_string())
    }

    /// Fail open: count it, and log at most once per [`WARN_EVERY_MS`].
    fn state_failed(&self, cx: &Context, e: &StateError, now: u64) {
        cx.counter_add("state_errors", 1);
        if self.last_warning_ms.get().is_some_and(|last| now.saturating_sub(last) < WARN_EVERY_MS) {
            return;
        }
        self.last_warning_ms.set(Some(now));
        let level = match e {
            StateError::Unavailable(_) => Level::Warn,
            StateError::Invalid(_) => Level::Error,
        };
        cx.log(level, &format!("{e}; requests pass unscored until state is back (fail open)"));
    }
}

weir_plugin_sdk::export_plugin!(Anomaly);

#[cfg(test)]
mod tests;
