//! The in-process backend: a sharded hash map with lazy expiry and a
//! periodic sweep. It lives in the gateway, not in a snapshot, so counters
//! survive reloads. Arguments are checked by [`super::StateStore`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::gcra::{self, Decision, Throttle};
use super::{StateError, parse_counter};

const SHARDS: usize = 16;

#[derive(Debug)]
enum Value {
    Int(i64),
    Bytes(Vec<u8>),
}

impl Value {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Value::Int(n) => n.to_string().into_bytes(),
            Value::Bytes(b) => b.clone(),
        }
    }

    fn eq_bytes(&self, other: &[u8]) -> bool {
        match self {
            Value::Int(n) => n.to_string().as_bytes() == other,
            Value::Bytes(b) => b == other,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The in-process store shared by all plugins of a gateway.
#[derive(Debug)]
pub struct MemoryState {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    max_entries_per_shard: usize,
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl MemoryState {
    /// A store holding at most about `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_entries_per_shard: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update of plain
        // data; the map itself is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the live entry for `key` (expired entries are removed first).
    fn with_live<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut HashMap<String, Entry>, Instant, bool) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        let now = Instant::now();
        let mut map = self.shard(key);
        if map.get(key).is_some_and(|e| !e.live(now)) {
            map.remove(key);
        }
        let mut full = map.len() >= self.max_entries_per_shard && !map.contains_key(key);
        if full {
            // Full of expired entries is not full: sweep this shard first.
            map.retain(|_, e| e.live(now));
            full = map.len() >= self.max_entries_per_shard;
        }
        f(&mut map, now, full)
    }

    fn full_error() -> StateError {
        StateError::Unavailable("state store is full".into())
    }

    /// Atomically add `delta` to a counter; creates it (with `ttl_ms`) if absent.
    pub async fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, StateError> {
        self.with_live(key, |map, now, full| {
            if let Some(e) = map.get_mut(key) {
                let current = match &e.value {
                    Value::Int(n) => *n,
                    Value::Bytes(b) => {
                        parse_counter(b).ok_or_else(|| StateError::Invalid("value is not a counter".into()))?
                    }
                };
                let next = current
                    .checked_add(delta)
                    .ok_or_else(|| StateError::Invalid("increment or decrement would overflow".into()))?;
                e.value = Value::Int(next);
                return Ok(next);
            }
            if full {
                return Err(Self::full_error());
            }
            map.insert(key.to_owned(), Entry { value: Value::Int(delta), expires_at: expiry(now, ttl_ms) });
            Ok(delta)
        })
    }

    /// Read a value.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.with_live(key, |map, _, _| Ok(map.get(key).map(|e| e.value.to_bytes())))
    }

    /// Write a value.
    pub async fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), StateError> {
        self.with_live(key, |map, now, full| {
            if full {
                return Err(Self::full_error());
            }
            map.insert(key.to_owned(), Entry { value: Value::Bytes(value.to_vec()), expires_at: expiry(now, ttl_ms) });
            Ok(())
        })
    }

    /// Write `value` if the current value is `expected` (`None`: absent).
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, StateError> {
        self.with_live(key, |map, now, full| {
            let matches = match (map.get(key), expected) {
                (None, None) => true,
                (Some(e), Some(exp)) => e.value.eq_bytes(exp),
                _ => false,
            };
            if !matches {
                return Ok(false);
            }
            if full {
                return Err(Self::full_error());
            }
            map.insert(key.to_owned(), Entry { value: Value::Bytes(value.to_vec()), expires_at: expiry(now, ttl_ms) });
            Ok(true)
        })
    }

    /// GCRA on the key's timestamp, at `now_us` (the wall clock, in µs).
    pub async fn throttle(&self, key: &str, throttle: &Throttle, now_us: u64) -> Result<Decision, StateError> {
        self.with_live(key, |map, now, full| {
            let tat = match map.get(key) {
                None => None,
                Some(e) => {
                    let n = match &e.value {
                        Value::Int(n) => Some(*n),
                        Value::Bytes(b) => parse_counter(b),
                    };
                    let tat = n.and_then(|n| u64::try_from(n).ok());
                    Some(tat.ok_or_else(|| StateError::Invalid("value is not a throttle timestamp".into()))?)
                }
            };
            let (decision, new) = throttle.decide(tat, now_us);
            if let Some(new) = new {
                if tat.is_none() && full {
                    return Err(Self::full_error());
                }
                let expires_at = expiry(now, gcra::ttl_ms(new, now_us));
                map.insert(key.to_owned(), Entry { value: Value::Int(new as i64), expires_at });
            }
            Ok(decision)
        })
    }

    /// Remove a key.
    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.with_live(key, |map, _, _| Ok(map.remove(key).is_some()))
    }

    /// Entries held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop expired entries; returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, e| e.live(now));
            removed += before - map.len();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_and_expiry() {
        let s = MemoryState::new(100);
        assert_eq!(s.incr("a", 1, 50).await, Ok(1));
        assert_eq!(s.incr("a", 2, 50).await, Ok(3));
        assert_eq!(s.get("a").await, Ok(Some(b"3".to_vec())));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(s.get("a").await, Ok(None), "expired");
        assert_eq!(s.incr("a", 1, 0).await, Ok(1), "window restarts");
        assert_eq!(s.sweep(), 0);
    }

    #[tokio::test]
    async fn compare_and_swap() {
        let s = MemoryState::new(100);
        assert_eq!(s.compare_and_swap("k", None, b"1", 0).await, Ok(true));
        assert_eq!(s.compare_and_swap("k", None, b"2", 0).await, Ok(false));
        assert_eq!(s.compare_and_swap("k", Some(b"1"), b"2", 0).await, Ok(true));
        assert_eq!(s.get("k").await, Ok(Some(b"2".to_vec())));
        assert_eq!(s.delete("k").await, Ok(true));
        assert_eq!(s.delete("k").await, Ok(false));
    }

    #[tokio::test]
    async fn capacity() {
        let s = MemoryState::new(16);
        let mut full = false;
        for i in 0..100 {
            if s.set(&format!("k{i}"), b"v", 0).await.is_err() {
                full = true;
            }
        }
        assert!(full, "capacity must be enforced");
    }
}
