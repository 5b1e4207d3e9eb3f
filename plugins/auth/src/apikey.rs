//! API keys: matched by SHA-256 digest, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::source::Source;
use crate::verdict::{Denial, Grant};

/// The configured API keys.
pub(crate) struct ApiKeys {
    pub(crate) sources: Vec<Source>,
    /// SHA-256 of each key (plain keys are hashed in `new` and not kept).
    pub(crate) digests: Vec<[u8; 32]>,
    /// The headers to set for each key (the consumer's name).
    pub(crate) grants: Vec<Grant>,
}

impl ApiKeys {
    /// The grant of the key `presented` matches.
    ///
    /// The presented key is hashed and its digest compared with every
    /// configured digest without early exit or data-dependent branches, so
    /// the time taken says nothing about how close a guess was.
    pub(crate) fn check(&self, presented: &str) -> Result<Grant, Denial> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = u32::MAX;
        for (i, known) in (0u32..).zip(&self.digests) {
            found.conditional_assign(&i, known.ct_eq(&digest));
        }
        usize::try_from(found).ok().and_then(|i| self.grants.get(i)).cloned().ok_or(Denial::InvalidApiKey)
    }
}

/// Parse a 64-digit hex SHA-256 digest.
pub(crate) fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |b: u8| (b as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}
