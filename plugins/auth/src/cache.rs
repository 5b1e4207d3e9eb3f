//! The per-instance cache of verified tokens.
//!
//! Keyed by a 128-bit keyed hash of the whole token (SipHash-1-3 under a
//! random key drawn per instance, twice, with a different first byte),
//! bounded, first-in
//! first-out. The keys are secret to the instance, so nobody can craft a
//! token that lands on another's entry: a collision would take about 2^64
//! tokens sent to it. (It was SHA-256, which needs no key but cost four
//! times the rest of a cached check: ~13,000 instructions for a 200-byte
//! JWT, against ~1,500.) An entry is only made for a token whose signature
//! verified; it keeps the token's time window and the outcome of every rule
//! that does not depend on the clock, so a hit re-checks `exp`/`nbf` and
//! skips the signature.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

use crate::verdict::Verdict;

/// A token's identity in one cache: its keyed 128-bit hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenId(u64, u64);

impl Hash for TokenId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: its first half is the map's hash.
        state.write_u64(self.0);
    }
}

/// A hasher that passes a [`TokenId`]'s first half through (it is keyed
/// already).
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
}

/// What is remembered about a verified token.
#[derive(Clone)]
pub(crate) struct Entry {
    /// `exp` in milliseconds since the epoch, if the token has one.
    pub(crate) exp_ms: Option<i64>,
    /// `nbf` in milliseconds since the epoch, if the token has one.
    pub(crate) nbf_ms: Option<i64>,
    /// The outcome of the clock-independent rules (issuer, audience, scopes,
    /// claims) and the headers to forward.
    pub(crate) verdict: Verdict,
    /// Until when the entry may be used (milliseconds since the epoch):
    /// an introspection answer's cache time; none for a verified token.
    pub(crate) until_ms: Option<i64>,
}

/// A bounded map from token to [`Entry`].
pub(crate) struct Cache {
    capacity: usize,
    map: HashMap<TokenId, Entry, BuildHasherDefault<PassThrough>>,
    order: VecDeque<TokenId>,
    /// The random key of [`TokenId`]s.
    key: RandomState,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache { capacity, map: HashMap::default(), order: VecDeque::new(), key: RandomState::new() }
    }

    /// `token`'s identity in this cache.
    pub(crate) fn id(&self, token: &str) -> TokenId {
        let half = |domain: u8| {
            let mut h = self.key.build_hasher();
            h.write_u8(domain);
            h.write(token.as_bytes());
            h.finish()
        };
        TokenId(half(0), half(1))
    }

    pub(crate) fn get(&self, id: &TokenId) -> Option<&Entry> {
        self.map.get(id)
    }

    /// Remember `entry`, evicting the oldest entries beyond the capacity.
    pub(crate) fn insert(&mut self, id: TokenId, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(id, entry).is_none() {
            self.order.push_back(id);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Forget every entry (a key they were verified with went away).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
