//! The Redis backend: the same operations as the in-process store, each one
//! atomic on the server (a command, a `MULTI`/`EXEC` transaction, or a small
//! Lua script) and one round trip.
//!
//! Failure handling is the point of this module. One multiplexed
//! connection (redis-rs `ConnectionManager`, reconnecting by itself) carries
//! every call, each bounded by `[state] timeout`. When a call fails for a
//! reason other than its arguments, the backend is marked down: for
//! `[state] retry_interval` every call fails at once with
//! [`StateError::Unavailable`] instead of waiting on a dead server, then the
//! next call tries again. The transition is logged once each way; plugins
//! apply their own policy to `Unavailable` (the rate limiter fails open by
//! default), so the gateway keeps serving while Redis is away.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::gcra::{Decision, Throttle};
use super::{StateConfigError, StateError};

/// Compare-and-swap. ARGV: expect-present flag, expected, new value, ttl.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// GCRA (see `gcra.rs`, the same steps), on the server's clock so that
/// nodes with skewed clocks share one budget. KEYS: the key. ARGV: the
/// emission interval and the tolerance in µs, the cost. Returns allowed
/// (0/1), remaining, retry-after ms, reset-after ms. Lua numbers are
/// doubles: every value here stays below 2^53 (µs since the epoch plus at
/// most twenty years).
const THROTTLE: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local v = tonumber(stored)
  if v == nil or v < 0 or v ~= math.floor(v) then
    return redis.error_reply('ERR value is not an integer (not a throttle timestamp)')
  end
  if v > now then tat = v end
end
local allowed, wait, new = 1, 0, nil
if cost <= 0 then
  tat = math.max(tat + cost * t, now)
  if cost < 0 then new = tat end
else
  local last = tat + (cost - 1) * t
  if last - now > tau then
    allowed, wait = 0, last - now - tau
  else
    tat = tat + cost * t
    new = tat
  end
end
if new then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.max(1, math.ceil((new - now) / 1000)))
end
local ahead = tat - now
local remaining = 0
if ahead <= tau then remaining = math.floor((tau - ahead) / t) + 1 end
return {allowed, remaining, math.ceil(wait / 1000), math.ceil(ahead / 1000)}
";

/// Consecutive failed calls (timeouts, server errors) that open the
/// fail-fast window; a refused connection opens it at once. One slow reply
/// does not switch off every plugin's state for a whole `retry_interval`.
const FAILURES_TO_TRIP: u32 = 3;

/// Whether the server is answering, for fail-fast and for the log.
#[derive(Debug, Default)]
struct Health {
    /// Whether any call has finished yet (`reachable` is unknown before).
    checked: bool,
    /// Failed calls since the last success.
    failures: u32,
    /// While set and in the future, calls fail at once; once past, one
    /// call probes and pushes it forward again.
    retry_at: Option<Instant>,
    /// Why the last call failed, while down.
    last_error: Option<String>,
}

/// A Redis URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Parse a Redis URL (no connection is made).
pub(super) fn parse_url(url: &str) -> Result<redis::Client, StateConfigError> {
    redis::Client::open(url).map_err(|e| StateConfigError::InvalidUrl { url: redact(url), reason: e.to_string() })
}

/// State in a Redis server.
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    health: Mutex<Health>,
    cas: Script,
    throttle: Script,
    /// `host:port/db`, without credentials, for logs and status.
    display: String,
}

impl RedisState {
    /// A backend for `url`. Connects lazily, so an unreachable server does
    /// not fail the gateway's start; it is reported as unavailable instead.
    pub fn new(url: &str, prefix: &str, timeout: Duration, retry_interval: Duration) -> Result<Self, StateConfigError> {
        let client = parse_url(url)?;
        let info = client.get_connection_info();
        let display = format!("{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One attempt per reconnect; the fail-fast window paces retries.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StateConfigError::Client { server: display.clone(), reason: e.to_string() })?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            retry_interval,
            health: Mutex::new(Health::default()),
            cas: Script::new(CAS),
            throttle: Script::new(THROTTLE),
            display,
        })
    }

    /// For `/admin/status`.
    pub fn describe(&self) -> serde_json::Value {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let reachable = health.checked.then_some(health.retry_at.is_none());
        serde_json::json!({
            "backend": "redis",
            "address": self.display,
            "key_prefix": self.prefix,
            "reachable": reachable,
            "last_error": health.last_error,
        })
    }

    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// Run one operation under the timeout and the fail-fast window.
    ///
    /// `op` is called a second time (within the same timeout) only when a
    /// probe after an outage meets the connection that was refused during
    /// the outage: that error only starts the reconnection (nothing was
    /// sent), and the retry waits for the new connection, so the first probe
    /// after Redis returns already succeeds.
    async fn run<T, F>(&self, op: impl Fn() -> F) -> Result<T, StateError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let probing = self.admit()?;
        let attempts = async {
            let first = op().await;
            match first {
                Err(e) if probing && e.is_connection_refusal() => op().await,
                other => other,
            }
        };
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) if is_argument_error(&e) => {
                self.succeeded();
                Err(StateError::Invalid(e.to_string()))
            }
            Ok(Err(e)) => Err(self.failed(e.to_string(), e.is_connection_refusal())),
            Err(_) => Err(self.failed(format!("no answer within {:?}", self.timeout), false)),
        }
    }

    /// Whether a call may go to Redis: `Ok(false)` normally, `Ok(true)` for
    /// the one probe after a fail-fast window (which pushes the window
    /// forward, so concurrent calls keep failing fast), `Err` inside it.
    fn admit(&self) -> Result<bool, StateError> {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let Some(retry_at) = health.retry_at else { return Ok(false) };
        let now = Instant::now();
        if now >= retry_at {
            health.retry_at = Some(now + self.retry_interval);
            return Ok(true);
        }
        Err(StateError::Unavailable(format!(
            "redis at {} is unreachable ({}); next attempt in {} ms",
            self.display,
            health.last_error.as_deref().unwrap_or("unknown error"),
            (retry_at - now).as_millis()
        )))
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.checked = true;
        health.failures = 0;
        if health.retry_at.take().is_some() {
            health.last_error = None;
            tracing::warn!(redis = %self.display, "state backend reachable again");
        }
    }

    fn failed(&self, error: String, refused: bool) -> StateError {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.checked = true;
        health.failures += 1;
        let tripping = health.retry_at.is_none() && (refused || health.failures >= FAILURES_TO_TRIP);
        if tripping {
            tracing::warn!(
                redis = %self.display,
                %error,
                retry_interval = ?self.retry_interval,
                "state backend unreachable: plugins get `unavailable` and apply their own policy \
                 (the rate limiter fails open by default)"
            );
        }
        if tripping || health.retry_at.is_some() {
            health.retry_at = Some(Instant::now() + self.retry_interval);
        }
        health.last_error = Some(error.clone());
        StateError::Unavailable(format!("redis at {}: {error}", self.display))
    }

    /// Run a command on a clone of the shared connection.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StateError> {
        self.run(|| {
            let mut conn = self.conn.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .await
    }

    /// Run one of the scripts.
    async fn script<T: redis::FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T, StateError> {
        self.run(|| {
            let mut conn = self.conn.clone();
            async move { call.invoke_async(&mut conn).await }
        })
        .await
    }

    /// `SET key 0 NX PX ttl` then `INCRBY`, in one transaction: the expiry is
    /// set only when the counter is created, like the in-process store (a
    /// fixed window ends `ttl` after its first hit). Not a Lua script: Lua
    /// numbers are doubles, which would round counters beyond 2^53.
    pub(super) async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        let key = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if ttl_ms > 0 {
            pipe.cmd("SET").arg(&key).arg(0).arg("NX").arg("PX").arg(ttl_ms).ignore();
        }
        pipe.cmd("INCRBY").arg(&key).arg(delta);
        let (value,): (i64,) = self
            .run(|| {
                let mut conn = self.conn.clone();
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(value)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if ttl_ms > 0 {
            cmd.arg("PX").arg(ttl_ms);
        }
        self.query(&cmd).await
    }

    pub(super) async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError> {
        let mut call = self.cas.key(self.key(key));
        call.arg(if expected.is_some() { "1" } else { "0" }).arg(expected.unwrap_or_default()).arg(value).arg(ttl_ms);
        let swapped: i64 = self.script(&call).await?;
        Ok(swapped == 1)
    }

    pub(super) async fn throttle(&self, key: &str, throttle: &Throttle) -> Result<Decision, StateError> {
        let mut call = self.throttle.key(self.key(key));
        call.arg(throttle.interval_us()).arg(throttle.tolerance_us()).arg(throttle.cost());
        let (allowed, remaining, retry_after_ms, reset_after_ms): (i64, u64, u64, u64) = self.script(&call).await?;
        Ok(Decision { allowed: allowed == 1, remaining, retry_after_ms, reset_after_ms })
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let removed: i64 = self.query(redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(removed > 0)
    }
}

/// The server refused this call's arguments — a counter operation on a
/// value that is not a counter, or one that would overflow: the caller's
/// fault, not an outage. Every other error (OOM, NOAUTH, READONLY,
/// MISCONF, LOADING, ...) means the backend cannot serve: unavailable.
fn is_argument_error(e: &RedisError) -> bool {
    // Matched on the text: inside MULTI/EXEC or a script the server wraps
    // the original error, and its code is no longer the first word.
    let text = e.to_string();
    text.contains("WRONGTYPE") || text.contains("not an integer") || text.contains("would overflow")
}
