//! Shared state behind the plugins' `weir:plugin/state` imports.
//!
//! Two backends offer the same six operations (`incr`, `get`, `set`,
//! `compare_and_swap`, `delete`, `throttle`) with the same semantics, so a plugin cannot
//! tell them apart except by latency (`tests/it/cluster.rs` runs one contract
//! against both). Arguments are checked here, before either backend sees
//! them, so both refuse the same calls: keys and values within their
//! limits, TTLs up to ten years, counters that stay within `i64` and are
//! written in canonical decimal form (as Redis requires):
//!
//! * [`MemoryState`] (default): a sharded map in the gateway process.
//! * [`RedisState`]: a Redis server, so every gateway node pointing at it
//!   shares counters (one rate limit across a cluster). Each operation is one
//!   atomic command or script: one round trip.
//!
//! The store lives as long as the gateway (not a snapshot), so counters
//! survive reloads. Keys arrive namespaced by the plugin host
//! (`<plugin>:<key>`).

pub mod gcra;
mod memory;
mod redis;

use std::time::Duration;

pub use self::memory::MemoryState;
pub use self::redis::RedisState;
use weir_config::{StateBackend, StateConfig};

/// Longest key a plugin may use.
pub const MAX_KEY_LEN: usize = 512;
/// Longest plugin instance name, which namespaces its keys.
pub const MAX_NAMESPACE_LEN: usize = weir_config::MAX_NAME_LEN;
/// Longest key the store accepts: a plugin's key in its namespace
/// (`<plugin>:<key>`).
pub const MAX_STORED_KEY_LEN: usize = MAX_NAMESPACE_LEN + 1 + MAX_KEY_LEN;
/// Largest value a plugin may store.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Longest TTL: ten years. (Redis refuses larger expiries; a limit keeps
/// both backends alike.)
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Why `[state]` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateConfigError {
    /// `url` with `backend = "memory"`.
    #[error("`url` is only used with backend = \"redis\"")]
    UrlWithoutRedis,
    /// `max_entries = 0`.
    #[error("`max_entries` must be above zero")]
    NoEntries,
    /// `backend = "redis"` without `url`.
    #[error("backend = \"redis\" needs `url = \"redis://host:port\"`")]
    RedisWithoutUrl,
    /// A zero `timeout` or `retry_interval`.
    #[error("`timeout` and `retry_interval` must be above zero")]
    ZeroTimeout,
    /// The URL does not parse (shown without its password).
    #[error("invalid redis url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, credentials redacted.
        url: String,
        /// The client's reason.
        reason: String,
    },
    /// The client could not be set up.
    #[error("cannot set up the redis client for {server}: {reason}")]
    Client {
        /// `host:port/db`.
        server: String,
        /// The client's reason.
        reason: String,
    },
}

/// Why a state operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend cannot be reached (or is full): the plugin applies its
    /// own policy, e.g. a rate limiter fails open.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    /// The arguments were refused.
    #[error("invalid state call: {0}")]
    Invalid(String),
}

fn check(key: &str, value: Option<&[u8]>, ttl_ms: u64) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_STORED_KEY_LEN {
        return Err(StateError::Invalid(format!(
            "key length must be 1..={MAX_STORED_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    if let Some(v) = value
        && v.len() > MAX_VALUE_LEN
    {
        return Err(StateError::Invalid(format!("value of {} bytes exceeds {MAX_VALUE_LEN}", v.len())));
    }
    if ttl_ms > MAX_TTL_MS {
        return Err(StateError::Invalid(format!("ttl of {ttl_ms} ms exceeds {MAX_TTL_MS} (ten years)")));
    }
    Ok(())
}

/// A counter's value as Redis reads one: canonical decimal `i64` (optional
/// `-`, no `+`, no leading zeros, no spaces).
pub(crate) fn parse_counter(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => bytes.len() == 1,
        [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The state store shared by all plugins of a gateway.
pub enum StateStore {
    /// In-process.
    Memory(MemoryState),
    /// Shared through Redis.
    Redis(RedisState),
}

impl Default for StateStore {
    fn default() -> Self {
        Self::Memory(MemoryState::new(StateConfig::default().max_entries))
    }
}

impl StateStore {
    /// The store `[state]` asks for. Redis is connected lazily: an
    /// unreachable server does not stop the gateway from starting, its
    /// calls fail as unavailable until it answers.
    pub fn from_config(cfg: &StateConfig) -> Result<Self, StateConfigError> {
        Self::check_config(cfg)?;
        match (cfg.backend, cfg.url.as_deref()) {
            (StateBackend::Redis, Some(url)) => {
                RedisState::new(url, &cfg.key_prefix, cfg.timeout, cfg.retry_interval).map(Self::Redis)
            }
            _ => Ok(Self::Memory(MemoryState::new(cfg.max_entries))),
        }
    }

    /// Check `[state]` without building anything (no connection, no task):
    /// what `weir check` and a reload use.
    pub fn check_config(cfg: &StateConfig) -> Result<(), StateConfigError> {
        match (cfg.backend, cfg.url.as_deref()) {
            (StateBackend::Memory, Some(_)) => Err(StateConfigError::UrlWithoutRedis),
            (StateBackend::Memory, None) if cfg.max_entries == 0 => Err(StateConfigError::NoEntries),
            (StateBackend::Memory, None) => Ok(()),
            (StateBackend::Redis, None) => Err(StateConfigError::RedisWithoutUrl),
            (StateBackend::Redis, Some(url)) => {
                redis::parse_url(url)?;
                if cfg.timeout.is_zero() || cfg.retry_interval.is_zero() {
                    return Err(StateConfigError::ZeroTimeout);
                }
                Ok(())
            }
        }
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> StateBackend {
        match self {
            Self::Memory(_) => StateBackend::Memory,
            Self::Redis(_) => StateBackend::Redis,
        }
    }

    /// For `/admin/status`: the backend, and for Redis its address (no
    /// credentials) and whether it is reachable.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Self::Memory(m) => serde_json::json!({ "backend": "memory", "entries": m.len() }),
            Self::Redis(r) => r.describe(),
        }
    }

    /// Atomically add `delta` to a counter; a new counter starts at 0 and
    /// expires `ttl_ms` after creation (0: never).
    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        check(key, None, ttl_ms)?;
        match self {
            Self::Memory(m) => m.incr(key, delta, ttl_ms).await,
            Self::Redis(r) => r.incr(key, delta, ttl_ms).await,
        }
    }

    /// Read a value (a counter reads as its decimal form).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        check(key, None, 0)?;
        match self {
            Self::Memory(m) => m.get(key).await,
            Self::Redis(r) => r.get(key).await,
        }
    }

    /// Write a value that expires after `ttl_ms` (0: never).
    pub async fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        check(key, Some(value), ttl_ms)?;
        match self {
            Self::Memory(m) => m.set(key, value, ttl_ms).await,
            Self::Redis(r) => r.set(key, value, ttl_ms).await,
        }
    }

    /// Write `value` if the current value is `expected` (`None`: absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError> {
        check(key, Some(value), ttl_ms)?;
        if let Some(e) = expected {
            check(key, Some(e), ttl_ms)?;
        }
        match self {
            Self::Memory(m) => m.compare_and_swap(key, expected, value, ttl_ms).await,
            Self::Redis(r) => r.compare_and_swap(key, expected, value, ttl_ms).await,
        }
    }

    /// GCRA: whether `cost` more requests fit `rate` per `period_ms` with
    /// `burst` on top, counted if they do (see [`gcra`]). The in-process
    /// store reads the gateway's clock, Redis the server's.
    pub async fn throttle(
        &self,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: i64,
    ) -> Result<gcra::Decision, StateError> {
        check(key, None, 0)?;
        let throttle = gcra::Throttle::new(rate, period_ms, burst, cost)?;
        match self {
            Self::Memory(m) => m.throttle(key, &throttle, crate::clock::unix_us()).await,
            Self::Redis(r) => r.throttle(key, &throttle).await,
        }
    }

    /// Remove a key; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        check(key, None, 0)?;
        match self {
            Self::Memory(m) => m.delete(key).await,
            Self::Redis(r) => r.delete(key).await,
        }
    }

    /// Periodic housekeeping: drop expired in-process entries (Redis
    /// expires keys itself).
    pub fn sweep(&self) {
        if let Self::Memory(m) = self {
            m.sweep();
        }
    }

    /// How often [`StateStore::sweep`] should run.
    pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_are_checked_for_every_backend() {
        let s = StateStore::default();
        assert!(matches!(s.get("").await, Err(StateError::Invalid(_))));
        assert!(matches!(s.get(&"k".repeat(MAX_STORED_KEY_LEN + 1)).await, Err(StateError::Invalid(_))));
        assert!(matches!(s.incr("k", 1, MAX_TTL_MS + 1).await, Err(StateError::Invalid(_))));
        assert!(matches!(s.set("k", &vec![0; MAX_VALUE_LEN + 1], 0).await, Err(StateError::Invalid(_))));
        assert!(matches!(s.incr("", 1, 0).await, Err(StateError::Invalid(_))));
        assert_eq!(s.incr("k", 1, 0).await, Ok(1));
    }

    #[test]
    fn config_is_validated() {
        let mut cfg = StateConfig { url: Some("redis://127.0.0.1:1".into()), ..StateConfig::default() };
        assert!(StateStore::from_config(&cfg).err().is_some_and(|e| e.to_string().contains("only used with")));
        cfg.backend = StateBackend::Redis;
        cfg.url = None;
        assert!(StateStore::from_config(&cfg).err().is_some_and(|e| e.to_string().contains("needs `url")));
        cfg.url = Some("http://user:hunter2@127.0.0.1:6379".into());
        let e = StateStore::from_config(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid redis url"), "{e}");
        assert!(!e.contains("hunter2"), "credentials stay out of errors: {e}");
        cfg.url = Some("redis://127.0.0.1:6379".into());
        cfg.retry_interval = Duration::ZERO;
        assert!(StateStore::check_config(&cfg).is_err_and(|e| e.to_string().contains("above zero")));
    }

    #[test]
    fn counters_parse_like_redis() {
        for (text, value) in
            [("0", Some(0)), ("-7", Some(-7)), ("42", Some(42)), ("9223372036854775807", Some(i64::MAX))]
        {
            assert_eq!(parse_counter(text.as_bytes()), value, "{text}");
        }
        for text in ["", "-", "+5", "007", "-0", " 1", "1 ", "1e3", "9223372036854775808"] {
            assert_eq!(parse_counter(text.as_bytes()), None, "{text:?}");
        }
    }
}
