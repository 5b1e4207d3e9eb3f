//! The Redis backend: the same operations as the in-process store, each one
//! atomic on the server (a command or a small Lua script) and one round trip.
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
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};

use super::StateError;

/// `INCRBY` that sets the expiry only when it creates the counter, like the
/// in-process store: a fixed window ends `ttl` after its first hit.
const INCR: &str = r"
local created = redis.call('EXISTS', KEYS[1]) == 0
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

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

/// Whether the server is answering, for fail-fast and for the log.
#[derive(Debug, Default)]
struct Health {
    /// While set and in the future, calls fail at once.
    retry_at: Option<Instant>,
    /// Why the last call failed, while down.
    last_error: Option<String>,
}

/// State in a Redis server.
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    retry_interval: Duration,
    health: Mutex<Health>,
    incr: Script,
    cas: Script,
    /// `host:port/db`, without credentials, for logs and status.
    display: String,
}

impl RedisState {
    /// A backend for `url`. Connects lazily, so an unreachable server does
    /// not fail the gateway's start; it is reported as unavailable instead.
    pub fn new(url: &str, prefix: &str, timeout: Duration, retry_interval: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid redis url {url:?}: {e}"))?;
        let info = client.get_connection_info();
        let display = format!("{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One attempt per reconnect; the fail-fast window paces retries.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("cannot set up the redis client for {display}: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            retry_interval,
            health: Mutex::new(Health::default()),
            incr: Script::new(INCR),
            cas: Script::new(CAS),
            display,
        })
    }

    /// For `/admin/status`.
    pub fn describe(&self) -> serde_json::Value {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "backend": "redis",
            "address": self.display,
            "key_prefix": self.prefix,
            "reachable": health.last_error.is_none(),
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
    /// `op` is called again once when a probe after an outage meets the
    /// connection that failed during the outage: that error only starts the
    /// reconnection (the command never reached a server), and the retry
    /// waits for the new connection, so the first probe after Redis returns
    /// already succeeds.
    async fn run<T, F>(&self, op: impl Fn() -> F) -> Result<T, StateError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let probing = match self.failing_fast() {
            Some(Ok(())) => true,
            Some(Err(e)) => return Err(e),
            None => false,
        };
        let mut result = tokio::time::timeout(self.timeout, op()).await;
        if probing && matches!(&result, Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped()) {
            result = tokio::time::timeout(self.timeout, op()).await;
        }
        match result {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) if is_argument_error(&e) => Err(StateError::Invalid(e.to_string())),
            Ok(Err(e)) => Err(self.mark_down(e.to_string())),
            Err(_) => Err(self.mark_down(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// `None` while healthy; while down, `Err` inside the fail-fast window
    /// and `Ok` (a probe may go) after it.
    fn failing_fast(&self) -> Option<Result<(), StateError>> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let retry_at = health.retry_at?;
        let now = Instant::now();
        if now >= retry_at {
            return Some(Ok(()));
        }
        Some(Err(StateError::Unavailable(format!(
            "redis at {} is unreachable ({}); next attempt in {} ms",
            self.display,
            health.last_error.as_deref().unwrap_or("unknown error"),
            (retry_at - now).as_millis()
        ))))
    }

    fn mark_up(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.last_error.take().is_some() {
            health.retry_at = None;
            tracing::warn!(redis = %self.display, "state backend reachable again");
        }
    }

    fn mark_down(&self, error: String) -> StateError {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.last_error.is_none() {
            tracing::warn!(
                redis = %self.display,
                %error,
                retry_interval = ?self.retry_interval,
                "state backend unreachable: plugins get `unavailable` and apply their own policy \
                 (the rate limiter fails open by default)"
            );
        }
        health.retry_at = Some(Instant::now() + self.retry_interval);
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

    pub(super) async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        let mut call = self.incr.key(self.key(key));
        call.arg(delta).arg(ttl_ms);
        self.script(&call).await
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

    pub(super) async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let removed: i64 = self.query(redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(removed > 0)
    }
}

/// The server refused this call's arguments (e.g. `INCRBY` on a value that
/// is not a number): the caller's fault, not an outage.
fn is_argument_error(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::Extension)
}
