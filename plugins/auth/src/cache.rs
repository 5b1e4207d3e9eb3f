//! The per-instance cache of verified tokens.
//!
//! Keyed by the SHA-256 of the whole token (so two tokens share an entry
//! only if they are the same string), bounded, first-in first-out. An entry
//! is only made for a token whose signature verified; it keeps the token's
//! time window and the outcome of every rule that does not depend on the
//! clock, so a hit re-checks `exp`/`nbf` and skips the signature.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use sha2::{Digest, Sha256};

use crate::verdict::Verdict;

/// A token's identity: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenId([u8; 32]);

impl TokenId {
    pub(crate) fn of(token: &str) -> TokenId {
        TokenId(Sha256::digest(token.as_bytes()).into())
    }
}

impl Hash for TokenId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is already uniform: its first 8 bytes are the hash.
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// A hasher that passes a [`TokenId`]'s prefix through (no random seed is
/// needed: nobody can choose SHA-256 outputs).
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
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache { capacity, map: HashMap::default(), order: VecDeque::new() }
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
