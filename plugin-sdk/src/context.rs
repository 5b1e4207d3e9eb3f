//! Host capabilities available to a phase: logging, clocks, shared state,
//! metrics and events.

use std::fmt;

use crate::host;

/// Access to the gateway's capabilities during a phase.
///
/// Natively (under `cargo test`) the same calls reach the in-memory host of
/// [`testing`](crate::testing).
#[derive(Debug)]
pub struct Context {
    _private: (),
}

impl Context {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// Write a log line, tagged by the gateway with the plugin's name.
    pub fn log(&self, level: Level, message: &str) {
        host::log(level, message);
    }

    /// Monotonic time in nanoseconds (only differences are meaningful).
    pub fn monotonic_now(&self) -> u64 {
        host::monotonic_now()
    }

    /// Wall-clock time in milliseconds since the Unix epoch.
    pub fn wall_now(&self) -> u64 {
        host::wall_now()
    }

    /// Shared counters and key-value state.
    pub fn state(&self) -> State {
        State { _private: () }
    }

    /// Publish `value` under `key` for the plugins after this one in the
    /// chain (and this plugin's later phases) to read with
    /// [`Context::published`], for this request only; never sent upstream.
    /// Namespaced by this plugin's instance name. Returns false (and
    /// publishes nothing) beyond 32 keys of up to 128 bytes and 16 KiB in
    /// all. A phase that fails or answers drops what it published.
    pub fn publish(&self, key: &str, value: impl AsRef<[u8]>) -> bool {
        host::chain_publish(key, value.as_ref())
    }

    /// What plugin instance `plugin` (`[plugins.NAME]`; `""` for this one)
    /// published under `key` earlier in this request.
    pub fn published(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        host::chain_read(plugin, key)
    }

    /// A request to the upstream `upstream`, which the instance's
    /// `[plugins.NAME] outbound` list must name: `GET /` until a method and
    /// path are given; see [`crate::outbound`].
    pub fn http(&self, upstream: &str) -> crate::Callout {
        crate::Callout::new(upstream)
    }

    /// Send `calls` at once and wait for all of them (they run in parallel
    /// on the gateway); the results come in the order of `calls`.
    pub fn send_all(&self, calls: Vec<crate::Callout>) -> Vec<Result<http::Response<Vec<u8>>, crate::OutboundError>> {
        host::outbound_send_all(&calls).into_iter().map(|r| r.and_then(crate::outbound::answer)).collect()
    }

    /// A value stored with [`Context::set_local`] by an earlier phase of
    /// this same request (by this plugin, at this position in the chain).
    ///
    /// Use it to carry a decision from `on_request` to `on_response`: the
    /// instance serving the response may not be the one that saw the
    /// request, so fields of the plugin struct cannot carry it.
    pub fn get_local(&self, key: &str) -> Option<Vec<u8>> {
        host::local_get(key)
    }

    /// Keep `value` under `key` until this request ends. Returns `false`
    /// (storing nothing) beyond 32 keys, 128-byte keys or 16 KiB in all.
    pub fn set_local(&self, key: &str, value: impl AsRef<[u8]>) -> bool {
        host::local_set(key, value.as_ref())
    }

    /// Add to a plugin-defined counter metric, exported as
    /// `weir_plugin_custom_total{plugin, name}`. A name that fails
    /// [`crate::is_metric_name`] is dropped.
    pub fn counter_add(&self, name: &str, value: u64) {
        host::counter_add(name, value);
    }

    /// Set a plugin-defined gauge metric, exported as
    /// `weir_plugin_custom_gauge{plugin, name}`. A name that fails
    /// [`crate::is_metric_name`] is dropped.
    pub fn gauge_set(&self, name: &str, value: i64) {
        host::gauge_set(name, value);
    }

    /// Emit an event for operators (logged, counted, possibly forwarded).
    pub fn emit(&self, event: Event) {
        host::emit(event);
    }
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Debugging aid.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// Event urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// For the record.
    Info,
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

/// An event for operators, e.g. an anomaly alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Machine-readable kind, e.g. `anomaly.scan`.
    pub kind: String,
    /// Urgency.
    pub severity: Severity,
    /// A sentence for humans.
    pub message: String,
    /// Structured fields.
    pub attributes: Vec<(String, String)>,
}

impl Event {
    /// A new event without attributes.
    pub fn new(kind: impl Into<String>, severity: Severity, message: impl Into<String>) -> Self {
        Self { kind: kind.into(), severity, message: message.into(), attributes: Vec::new() }
    }

    /// Add an attribute.
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }
}

impl crate::Callout {
    /// Send it and wait for the answer (whatever its status).
    pub fn send(self) -> Result<http::Response<Vec<u8>>, crate::OutboundError> {
        host::outbound_send(&self).and_then(crate::outbound::answer)
    }
}

/// Shared state: counters and key-value pairs with expiry, shared by all
/// instances of this plugin (and all gateway nodes with the Redis backend).
#[derive(Debug)]
pub struct State {
    _private: (),
}

impl State {
    /// Atomically add `delta` to counter `key`, returning the new value. A
    /// new counter starts at 0 and expires `ttl_ms` after creation (0: never).
    pub fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        host::state_incr(key, delta, ttl_ms)
    }

    /// Read a value.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        host::state_get(key)
    }

    /// Write a value that expires after `ttl_ms` (0: never).
    pub fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        host::state_set(key, value, ttl_ms)
    }

    /// Write `value` only if the current value is `expected` (`None`: only if
    /// absent). Returns whether it was written.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError> {
        host::state_cas(key, expected, value, ttl_ms)
    }

    /// Remove a key; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StateError> {
        host::state_delete(key)
    }

    /// A rate limit with an exact bound, decided atomically by the host in
    /// one call (one round trip with Redis): GCRA. `rate` requests per
    /// `period_ms` flow steadily and `burst` more may come at once; in any
    /// interval of `period_ms` at most `rate + burst` are allowed. `cost`
    /// counts this call as that many requests; a negative cost gives
    /// requests back (for one another limit then refused).
    ///
    /// ```no_run
    /// # use weir_plugin_sdk::prelude::*;
    /// # fn f(cx: &Context, client: &str) -> Result<Action> {
    /// // 10 requests per second, bursts of 5 more.
    /// let d = cx.state().throttle(&format!("rl:{client}"), 10, 1000, 5, 1)?;
    /// if !d.allowed {
    ///     let retry = (d.retry_after_ms.div_ceil(1000)).max(1).to_string();
    ///     return Ok(Reply::new(StatusCode::TOO_MANY_REQUESTS).header("retry-after", &retry).into());
    /// }
    /// # Ok(Action::Continue) }
    /// ```
    pub fn throttle(
        &self,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: i64,
    ) -> Result<ThrottleDecision, StateError> {
        host::state_throttle(key, rate, period_ms, burst, cost)
    }
}

/// What [`State::throttle`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleDecision {
    /// Whether the requests fit (and were counted).
    pub allowed: bool,
    /// How many more single requests would fit right now.
    pub remaining: u64,
    /// Milliseconds until the call would be allowed (0 when it was).
    pub retry_after_ms: u64,
    /// Milliseconds until the key is back to a full burst.
    pub reset_after_ms: u64,
}

/// Why a state call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The backend is unreachable; decide whether to fail open or closed.
    Unavailable(String),
    /// The arguments were refused (key too long, value too large).
    Invalid(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Unavailable(m) => write!(f, "state backend unavailable: {m}"),
            StateError::Invalid(m) => write!(f, "invalid state call: {m}"),
        }
    }
}

impl std::error::Error for StateError {}
