//! `rate_limit.wasm`: limit requests per client (IP, API key header, auth
//! claim header), per route, or any combination, with one or more limits
//! per instance, on the host's shared counters (in-process or Redis, so
//! several gateway nodes share one budget).
//!
//! ```toml
//! [plugins.api-limit]
//! module = "rate_limit.wasm"
//! config = { key = "header:x-api-key", limits = [
//!     { name = "burst", requests = 20, window = "1s" },
//!     { name = "hourly", requests = 1000, window = "1h" },
//! ] }
//! ```
//!
//! A request is allowed iff it fits every limit. Each limit is a sliding
//! window counter (`algorithm = "sliding"`, the default: the current fixed
//! window's count plus the previous window's count weighted by the share of
//! it still inside the sliding window) or a plain fixed window
//! (`algorithm = "fixed"`). Windows are aligned to multiples of their length
//! in wall time, so all nodes agree. Or GCRA (`algorithm = "gcra"`): one
//! atomic `state.throttle` host call per limit, pacing `requests` per
//! `window` with `burst` more at once, and never more than `requests +
//! burst` in any interval of one window. With windows, per request and limit the plugin makes
//! one atomic `incr` of the current window's counter; the previous window's
//! final count is read once per instance and window and then cached. A
//! refused request gives its increments back, so refused retries do not
//! extend a client's ban, and at most `requests` requests are ever allowed
//! per fixed window, under any concurrency and across nodes.
//!
//! Every response the plugin sees carries `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers); a refusal is a `429` with
//! `Retry-After` and a JSON body. See `README.md` beside this crate for every
//! key and the exact arithmetic.

mod cache;
mod config;
mod key;
mod window;

use std::cell::{Cell, RefCell};

use serde::Serialize;
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::{State, StateError};

use crate::cache::PreviousCounts;
use crate::config::{Algorithm, LimitSpec, OnStateError, Settings, Spec};
use crate::key::Subject;
use crate::window::{Counts, Position, Window, ceil_secs};

/// Extra TTL on counters, for clock skew between gateway nodes.
const SKEW_SLACK_MS: u64 = 1_000;
/// A finished window's count is not cached during the first this-many ms of
/// the next window, while late increments (requests in flight at the
/// boundary, nodes whose clocks lag a little) may still land.
const CACHE_GRACE_MS: u64 = 100;
/// State failures are logged at most this often per instance.
const WARN_EVERY_NS: u64 = 10_000_000_000;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One configured limit, ready to use.
struct Limit {
    spec: LimitSpec,
    window: Window,
    /// This limit's `RateLimit-Policy` item, e.g. `"burst";q=20;w=1`.
    policy: String,
    /// The constant start of its state keys, e.g. `burst:1:`.
    key_prefix: String,
}

/// Which limits applied to a request: bit `i` is `limits[i]`
/// ([`config::MAX_LIMITS`] fits).
type Applied = u32;
const _: () = assert!(config::MAX_LIMITS <= Applied::BITS as usize);

/// The plugin instance.
struct RateLimit {
    limits: Vec<Limit>,
    /// `RateLimit-Policy` when every limit applies (the usual case), built
    /// once: requests only copy it.
    policy_all: HeaderValue,
    /// The [`Applied`] set of every limit.
    all: Applied,
    on_state_error: OnStateError,
    headers: bool,
    ipv6_prefix: u8,
    /// `algorithm = "gcra"`: the host's `throttle`, not window counters.
    gcra: bool,
    /// Finished windows' counts (per instance; only saves state calls).
    previous: RefCell<PreviousCounts>,
    /// When the last state warning was logged (monotonic ns).
    last_warning: Cell<Option<u64>>,
    /// State warnings not logged since then.
    suppressed: Cell<u64>,
}

/// One limit's count for the request being decided.
struct Tally {
    limit: usize,
    key: String,
    ttl: u64,
    counts: Counts,
    at: Position,
}

/// Where a request leaves one limit.
struct Standing {
    limit: usize,
    /// Requests left now.
    remaining: u64,
    /// The `t` of the RateLimit header: seconds until the quota is back
    /// (or, with none left, until one more fits).
    reset: u64,
    /// Ms until a refused request would fit (0 when it fits).
    wait_ms: u64,
}

/// What the RateLimit headers say about one request.
struct Verdict<'a> {
    /// The limits listed in `RateLimit-Policy`.
    applied: Applied,
    /// `RateLimit` value (the policy closest to exhaustion).
    current: String,
    /// Name of that policy.
    closest: &'a str,
    /// Seconds until a refused request may succeed (≥ 1).
    retry_after: u64,
}

#[derive(Serialize)]
struct Refusal<'a> {
    error: &'a str,
    policy: &'a str,
    retry_after: u64,
}

#[derive(Serialize)]
struct Failure<'a> {
    error: &'a str,
}

/// The `RateLimit` item `"name";r=REMAINING;t=RESET` (per request: no
/// `format!`).
fn current_item(name: &str, remaining: u64, reset: u64) -> String {
    let mut n = itoa::Buffer::new();
    let mut out = String::with_capacity(name.len() + 48);
    out.push('"');
    out.push_str(name);
    out.push_str("\";r=");
    out.push_str(n.format(remaining));
    out.push_str(";t=");
    out.push_str(n.format(reset));
    out
}

fn non_negative(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl RateLimit {
    /// The previous window's count for `subject`: cached, else read once.
    fn previous(&self, state: &State, limit: usize, subject: &str, at: Position, now: u64) -> Result<u64, StateError> {
        let window = at.index.saturating_sub(1);
        let key = key::state_key(&self.limits[limit].key_prefix, window, subject);
        if let Some(n) = self.previous.borrow().get(&key) {
            return Ok(n);
        }
        let count = state
            .get(&key)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<i64>().ok())
            .map_or(0, non_negative);
        if at.elapsed >= CACHE_GRACE_MS {
            let limits = &self.limits;
            // An entry is stale once its window is no longer the previous one.
            let stale = |i: usize, w: u64| limits.get(i).is_none_or(|l| w + 1 < l.window.position(now).index);
            self.previous.borrow_mut().insert(key, limit, window, count, stale);
        }
        Ok(count)
    }

    /// Log at most once per [`WARN_EVERY_NS`]; count the rest.
    fn warn(&self, cx: &Context, level: Level, message: &str) {
        let now = cx.monotonic_now();
        match self.last_warning.get() {
            Some(last) if now.saturating_sub(last) < WARN_EVERY_NS => self.suppressed.set(self.suppressed.get() + 1),
            _ => {
                let n = self.suppressed.replace(0);
                if n > 0 {
                    cx.log(level, &format!("{message} ({n} similar warnings suppressed)"));
                } else {
                    cx.log(level, message);
                }
                self.last_warning.set(Some(now));
            }
        }
    }

    /// Undo this request's increments (best effort: stops at the first failure).
    fn give_back(&self, cx: &Context, state: &State, tallies: &mut [Tally]) {
        let mut failed = false;
        for t in tallies.iter_mut() {
            if !failed && let Err(e) = state.incr(&t.key, -1, t.ttl) {
                failed = true;
                cx.counter_add("state_errors", 1);
                self.warn(cx, Level::Warn, &format!("rate limit: could not give back a refused request's count: {e}"));
            }
            t.counts.current = t.counts.current.saturating_sub(1);
        }
    }

    /// The backend failed: apply `on_state_error` (`give_back` undoes what
    /// was counted when the request is refused).
    fn state_failed(&self, cx: &Context, err: &StateError, give_back: impl FnOnce()) -> Action {
        cx.counter_add("state_errors", 1);
        let level = match err {
            StateError::Unavailable(_) => Level::Warn,
            StateError::Invalid(_) => Level::Error,
        };
        match self.on_state_error {
            OnStateError::Allow => {
                self.warn(cx, level, &format!("rate limit not enforced (on_state_error = \"allow\"): {err}"));
                cx.counter_add("allowed", 1);
                Action::Continue
            }
            OnStateError::Deny => {
                self.warn(cx, level, &format!("rate limit refusing requests (on_state_error = \"deny\"): {err}"));
                give_back();
                Reply::json(StatusCode::SERVICE_UNAVAILABLE, &Failure { error: "rate limit state unavailable" }).into()
            }
        }
    }

    /// Where a window-counted request leaves each limit.
    fn standings(&self, tallies: &[Tally]) -> Vec<Standing> {
        tallies
            .iter()
            .map(|t| {
                let w = &self.limits[t.limit].window;
                let remaining = w.remaining(t.counts, t.at.elapsed);
                let wait_ms = w.wait_ms(t.counts, t.at.elapsed);
                let reset = if remaining > 0 { ceil_secs(w.until_end(t.at.elapsed)) } else { ceil_secs(wait_ms) };
                Standing { limit: t.limit, remaining, reset, wait_ms }
            })
            .collect()
    }

    /// The header values and retry time for the limits a request was
    /// counted against (`None` if no limit applied).
    fn verdict(&self, standings: &[Standing]) -> Option<Verdict<'_>> {
        let mut applied: Applied = 0;
        let mut closest: Option<(&str, u64, u64)> = None;
        let mut wait_max = 0;
        for s in standings {
            let l = &self.limits[s.limit];
            wait_max = wait_max.max(s.wait_ms);
            applied |= 1 << s.limit;
            // Fewest requests left wins; on a tie, the longer wait.
            if closest.is_none_or(|(_, r, t)| s.remaining < r || (s.remaining == r && s.reset > t)) {
                closest = Some((&l.spec.name, s.remaining, s.reset));
            }
        }
        let (name, remaining, reset) = closest?;
        Some(Verdict {
            applied,
            current: current_item(name, remaining, reset),
            closest: name,
            retry_after: ceil_secs(wait_max),
        })
    }

    /// Let the request through (keeping the headers for `on_response`) or
    /// refuse it with `429`, as `allowed` says.
    fn finish(&self, req: &mut Request, cx: &Context, allowed: bool, standings: &[Standing]) -> Result<Action> {
        if allowed {
            cx.counter_add("allowed", 1);
            if self.headers
                && let Some(v) = self.verdict(standings)
            {
                // For the response, without taking its phase (contract
                // 0.2.6). Appended: an upstream's own policies stay listed.
                req.add_response_header(RATELIMIT_POLICY.as_str(), self.policy(v.applied)?.as_bytes())?;
                req.add_response_header(RATELIMIT.as_str(), &v.current)?;
            }
            return Ok(Action::Continue);
        }
        cx.counter_add("limited", 1);
        // A refusal always has at least one counted limit, so a verdict.
        let verdict = self.verdict(standings);
        let retry_after = verdict.as_ref().map_or(1, |v| v.retry_after);
        let body =
            Refusal { error: "rate limit exceeded", policy: verdict.as_ref().map_or("", |v| v.closest), retry_after };
        let mut reply =
            Reply::json(StatusCode::TOO_MANY_REQUESTS, &body).header("retry-after", &retry_after.to_string());
        if let Some(v) = &verdict {
            reply.headers_mut().append(RATELIMIT_POLICY, self.policy(v.applied)?);
            reply = reply.header(RATELIMIT.as_str(), &v.current);
        }
        Ok(reply.into())
    }

    /// GCRA: one `throttle` per limit, in order, stopping at the first
    /// refusal, whose earlier limits get their request back.
    fn gcra(&self, req: &mut Request, cx: &Context, subjects: Vec<(usize, String)>) -> Result<Action> {
        let state = cx.state();
        let mut counted: Vec<(usize, String)> = Vec::with_capacity(subjects.len());
        let mut standings = Vec::with_capacity(subjects.len());
        let mut allowed = true;
        for (i, subject) in subjects {
            let l = &self.limits[i];
            let key = format!("{}gcra:{subject}", l.key_prefix);
            let d = match state.throttle(&key, l.spec.requests, l.window.len, l.spec.burst, 1) {
                Ok(d) => d,
                Err(e) => return Ok(self.state_failed(cx, &e, || self.give_back_gcra(cx, &state, &counted))),
            };
            // Time until one more fits once none is left: the bucket must
            // drain below its tolerance.
            let interval_us = (l.window.len * 1000).div_ceil(l.spec.requests);
            let next_ms = d.reset_after_ms.saturating_sub(l.spec.burst * interval_us / 1000);
            let reset = if !d.allowed {
                ceil_secs(d.retry_after_ms)
            } else if d.remaining > 0 {
                ceil_secs(d.reset_after_ms)
            } else {
                ceil_secs(next_ms)
            };
            standings.push(Standing { limit: i, remaining: d.remaining, reset, wait_ms: d.retry_after_ms });
            if !d.allowed {
                allowed = false;
                break;
            }
            counted.push((i, key));
        }
        if !allowed {
            self.give_back_gcra(cx, &state, &counted);
        }
        self.finish(req, cx, allowed, &standings)
    }

    /// Give back one request to each GCRA limit in `counted` (best effort).
    fn give_back_gcra(&self, cx: &Context, state: &State, counted: &[(usize, String)]) {
        for (i, key) in counted {
            let l = &self.limits[*i];
            if let Err(e) = state.throttle(key, l.spec.requests, l.window.len, l.spec.burst, -1) {
                cx.counter_add("state_errors", 1);
                self.warn(cx, Level::Warn, &format!("rate limit: could not give back a refused request: {e}"));
                return;
            }
        }
    }

    /// The `RateLimit-Policy` value listing the `applied` limits: the
    /// prebuilt one when all applied, else built now (only when a
    /// `missing = "allow"` limit was skipped).
    fn policy(&self, applied: Applied) -> Result<HeaderValue> {
        if applied == self.all {
            return Ok(self.policy_all.clone());
        }
        let items = self.limits.iter().enumerate().filter(|(i, _)| applied & (1 << i) != 0).map(|(_, l)| &l.policy);
        Ok(HeaderValue::try_from(items.map(String::as_str).collect::<Vec<_>>().join(", "))?)
    }
}

impl Plugin for RateLimit {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let spec = Spec::from_config(config)?;
        let sliding = spec.algorithm == Algorithm::Sliding;
        let limits: Vec<Limit> = spec
            .limits
            .into_iter()
            .map(|s| Limit {
                window: Window { quota: s.requests, len: s.window_secs * 1000, sliding },
                policy: format!("\"{}\";q={};w={}", s.name, s.requests, s.window_secs),
                key_prefix: key::key_prefix(&s.name, s.window_secs),
                spec: s,
            })
            .collect();
        let policy_all = limits.iter().map(|l| l.policy.as_str()).collect::<Vec<_>>().join(", ");
        Ok(Self {
            policy_all: HeaderValue::try_from(policy_all)?,
            all: Applied::MAX >> (Applied::BITS as usize - limits.len()),
            limits,
            on_state_error: spec.on_state_error,
            headers: spec.headers,
            ipv6_prefix: spec.ipv6_prefix,
            gcra: spec.algorithm == Algorithm::Gcra,
            previous: RefCell::default(),
            last_warning: Cell::new(None),
            suppressed: Cell::new(0),
        })
    }

    fn phases(&self) -> Phases {
        // The RateLimit headers go on the response with
        // `add_response_header`: no response phase.
        Phases::REQUEST_HEADERS
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let mut subjects = Vec::with_capacity(self.limits.len());
        for (i, limit) in self.limits.iter().enumerate() {
            match key::subject(req, cx, &limit.spec.key, limit.spec.missing, self.ipv6_prefix) {
                Subject::Key(s) => subjects.push((i, s)),
                Subject::Skip => {}
                Subject::Refuse(what) => {
                    cx.counter_add("missing_key", 1);
                    let error = format!("{what} is required");
                    return Ok(Reply::json(StatusCode::BAD_REQUEST, &Failure { error: &error }).into());
                }
            }
        }

        if self.gcra {
            return self.gcra(req, cx, subjects);
        }
        let now = cx.wall_now();
        let state = cx.state();
        let mut tallies = Vec::with_capacity(subjects.len());
        for (i, subject) in subjects {
            let limit = &self.limits[i];
            let at = limit.window.position(now);
            let previous = if limit.window.sliding {
                match self.previous(&state, i, &subject, at, now) {
                    Ok(n) => n,
                    Err(e) => return Ok(self.state_failed(cx, &e, || self.give_back(cx, &state, &mut tallies))),
                }
            } else {
                0
            };
            let key = key::state_key(&limit.key_prefix, at.index, &subject);
            let ttl = limit.window.ttl_ms(at.elapsed, SKEW_SLACK_MS);
            let current = match state.incr(&key, 1, ttl) {
                Ok(n) => non_negative(n),
                Err(e) => return Ok(self.state_failed(cx, &e, || self.give_back(cx, &state, &mut tallies))),
            };
            tallies.push(Tally { limit: i, key, ttl, counts: Counts { current, previous }, at });
        }

        let allowed = tallies.iter().all(|t| self.limits[t.limit].window.fits(t.counts, t.at.elapsed));
        if !allowed {
            self.give_back(cx, &state, &mut tallies);
        }
        self.finish(req, cx, allowed, &self.standings(&tallies))
    }
}

weir_plugin_sdk::export_plugin!(RateLimit);

#[cfg(test)]
mod tests;
