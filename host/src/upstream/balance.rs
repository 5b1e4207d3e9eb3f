//! Choosing a target: round robin (weighted), least outstanding (power of
//! two choices) and consistent hashing (a ring of virtual nodes).
//!
//! A pick never allocates: the schedules are built once per target set and
//! a pick is an atomic add plus a scan past unusable targets.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use http::header::{self, HeaderName};

use super::target::Target;
use weir_config::Balance;

/// The targets of an upstream at one moment: primaries and backups, with
/// their pick schedules. Replaced whole when discovery changes targets.
#[derive(Debug)]
pub(crate) struct TargetSet {
    /// Used while at least one is healthy.
    pub(crate) primary: Group,
    /// Used when no primary is.
    pub(crate) backup: Group,
}

/// Primaries or backups.
#[derive(Debug)]
pub(crate) struct Group {
    /// The targets.
    pub(crate) targets: Vec<Arc<Target>>,
    schedule: Schedule,
}

impl Group {
    pub(super) fn new(targets: Vec<Arc<Target>>, policy: Balance) -> Self {
        let schedule = Schedule::new(&targets, policy);
        Self { targets, schedule }
    }
}

impl TargetSet {
    /// Every target, primaries first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.primary.targets.iter().chain(&self.backup.targets)
    }

    /// The set as addresses, to tell whether discovery changed anything.
    pub(crate) fn addresses(&self) -> [Vec<(String, u32)>; 2] {
        let list = |g: &Group| g.targets.iter().map(|t| (t.addr.to_string(), t.weight)).collect();
        [list(&self.primary), list(&self.backup)]
    }
}

/// Virtual nodes per unit of weight on the hash ring.
const VNODES: u32 = 160;

/// How a group's targets are visited.
#[derive(Debug)]
pub(super) struct Schedule {
    policy: Balance,
    /// Round robin: target indices in smooth weighted order.
    order: Vec<u32>,
    next: AtomicUsize,
    /// Hash: (point, target index), sorted by point.
    ring: Vec<(u64, u32)>,
}

impl Schedule {
    pub(super) fn new(targets: &[Arc<Target>], policy: Balance) -> Self {
        let weights: Vec<u32> = targets.iter().map(|t| t.weight.max(1)).collect();
        let order = match policy {
            Balance::RoundRobin => smooth_order(&weights),
            _ => Vec::new(),
        };
        let ring = match policy {
            Balance::Hash => ring(targets),
            _ => Vec::new(),
        };
        Self { policy, order, next: AtomicUsize::new(0), ring }
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: weights
/// 5, 1, 1 give a a b a c a a rather than a a a a a b c.
fn smooth_order(weights: &[u32]) -> Vec<u32> {
    let gcd = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / gcd.max(1))).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn ring(targets: &[Arc<Target>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let addr = t.addr.as_str();
        for v in 0..VNODES * t.weight.max(1) {
            ring.push((hash64(format!("{addr}#{v}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// A 64-bit hash that is the same on every node and every build (FNV-1a,
/// then a murmur3 finaliser to spread it), so several gateways send a key
/// to the same target.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `hash_on`: what a request's key is.
#[derive(Debug, Clone)]
pub(crate) enum HashOn {
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

/// Why `hash_on` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HashOnError {
    /// `header:NAME` with an invalid name.
    #[error("invalid header name {0:?}")]
    Header(String),
    /// None of the forms.
    #[error("hash_on {0:?}: expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"")]
    Unknown(String),
}

impl HashOn {
    /// Parse `client_ip`, `header:NAME` or `cookie:NAME`.
    pub(crate) fn parse(s: &str) -> Result<Self, HashOnError> {
        if s == "client_ip" {
            return Ok(Self::ClientIp);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::try_from(h).map(Self::Header).map_err(|_| HashOnError::Header(h.to_owned()));
        }
        if let Some(c) = s.strip_prefix("cookie:")
            && !c.is_empty()
        {
            return Ok(Self::Cookie(c.to_owned()));
        }
        Err(HashOnError::Unknown(s.to_owned()))
    }

    /// The request's key; the client IP when the header or cookie is absent.
    pub(crate) fn key(&self, headers: &HeaderMap, client: IpAddr) -> u64 {
        let found = match self {
            HashOn::ClientIp => None,
            HashOn::Header(name) => headers.get(name).map(|v| hash64(v.as_bytes())),
            HashOn::Cookie(name) => cookie(headers, name).map(hash64),
        };
        found.unwrap_or_else(|| match client {
            IpAddr::V4(ip) => hash64(&ip.octets()),
            IpAddr::V6(ip) => hash64(&ip.octets()),
        })
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if let Some(rest) = pair.strip_prefix(name.as_bytes())
                && let Some(v) = rest.strip_prefix(b"=")
            {
                return Some(v);
            }
        }
    }
    None
}

impl TargetSet {
    /// The target for a try: a usable primary not tried yet, else a usable
    /// backup not tried yet, else any usable one (a lone target is tried
    /// again). `None` when no target is usable.
    pub(crate) fn pick(&self, key: u64, tried: &[Arc<Target>], now_ms: u64) -> Option<&Arc<Target>> {
        let fresh = |t: &Target| t.state.usable(now_ms) && !tried.iter().any(|x| std::ptr::eq(&**x, t));
        let usable = |t: &Target| t.state.usable(now_ms);
        self.primary
            .pick(key, &fresh)
            .or_else(|| self.backup.pick(key, &fresh))
            .or_else(|| self.primary.pick(key, &usable))
            .or_else(|| self.backup.pick(key, &usable))
    }
}

impl Group {
    fn pick(&self, key: u64, ok: &dyn Fn(&Target) -> bool) -> Option<&Arc<Target>> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        let s = &self.schedule;
        match s.policy {
            Balance::RoundRobin => {
                // An unusable target's turn goes to whoever comes next in the
                // shared order, not to its neighbour: with one of three
                // targets out, the other two still get half each.
                let len = s.order.len();
                (0..len)
                    .map(|_| &self.targets[s.order[s.next.fetch_add(1, Ordering::Relaxed) % len] as usize])
                    .find(|t| ok(t))
            }
            Balance::LeastOutstanding => {
                let a = fastrand::usize(..n);
                let b = if n > 1 { (a + 1 + fastrand::usize(..n - 1)) % n } else { a };
                let (ta, tb) = (&self.targets[a], &self.targets[b]);
                match (ok(ta), ok(tb)) {
                    (true, true) => Some(if load(tb) < load(ta) { tb } else { ta }),
                    (true, false) => Some(ta),
                    (false, true) => Some(tb),
                    (false, false) => {
                        // Both unusable: the least loaded of the rest.
                        self.targets.iter().filter(|t| ok(t)).min_by_key(|t| load(t))
                    }
                }
            }
            Balance::Hash => {
                let at = s.ring.partition_point(|&(point, _)| point < key);
                let len = s.ring.len();
                (0..len).map(|k| &self.targets[s.ring[(at + k) % len].1 as usize]).find(|t| ok(t))
            }
        }
    }
}

/// Requests in flight per unit of weight, scaled to stay an integer.
fn load(t: &Target) -> u64 {
    t.state.outstanding.load(Ordering::Relaxed) as u64 * 1000 / u64::from(t.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::metrics::UpstreamFamilies;
    use crate::upstream::target::TargetState;

    fn set(addrs: &[(&str, u32)], policy: Balance) -> TargetSet {
        let metrics = UpstreamFamilies::register(&mut prometheus_client::registry::Registry::default());
        let targets = addrs
            .iter()
            .map(|(a, w)| {
                Arc::new(Target {
                    addr: a.parse().unwrap_or_else(|_| panic!("{a}")),
                    weight: *w,
                    backup: false,
                    state: Arc::new(TargetState::default()),
                    metrics: metrics.target("u", a),
                    endpoint: std::sync::OnceLock::new(),
                })
            })
            .collect();
        TargetSet { primary: Group::new(targets, policy), backup: Group::new(Vec::new(), policy) }
    }

    fn pick(s: &TargetSet, key: u64) -> String {
        s.pick(key, &[], 0).map(|t| t.addr.to_string()).unwrap_or_default()
    }

    #[test]
    fn smooth_weighted_order_interleaves() {
        assert_eq!(smooth_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_order(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn weighted_round_robin_shares() {
        let s = set(&[("a:1", 3), ("b:1", 1)], Balance::RoundRobin);
        let picks: Vec<String> = (0..8).map(|_| pick(&s, 0)).collect();
        assert_eq!(picks.iter().filter(|p| *p == "a:1").count(), 6);
    }

    #[test]
    fn round_robin_skips_unusable_targets() {
        let s = set(&[("a:1", 1), ("b:1", 1), ("c:1", 1)], Balance::RoundRobin);
        s.primary.targets[1].state.ejected_until.store(u64::MAX, Ordering::Relaxed);
        for _ in 0..10 {
            assert_ne!(pick(&s, 0), "b:1");
        }
    }

    #[test]
    fn least_outstanding_avoids_the_busy_target() {
        let s = set(&[("a:1", 1), ("b:1", 1)], Balance::LeastOutstanding);
        s.primary.targets[0].state.outstanding.store(10, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(pick(&s, 0), "b:1");
        }
    }

    #[test]
    fn hashing_is_stable_and_removing_a_target_moves_only_its_keys() {
        let addrs: Vec<String> = (1..=5).map(|i| format!("10.0.0.{i}:80")).collect();
        let all: Vec<(&str, u32)> = addrs.iter().map(|a| (a.as_str(), 1)).collect();
        let full = set(&all, Balance::Hash);
        let fewer = set(&all[..4], Balance::Hash);
        let keys: Vec<u64> = (0..10_000u32).map(|k| hash64(&k.to_be_bytes())).collect();
        let mut moved = 0;
        let mut share = std::collections::HashMap::new();
        for &k in &keys {
            let before = pick(&full, k);
            assert_eq!(before, pick(&full, k), "the same key goes to the same target");
            *share.entry(before.clone()).or_insert(0) += 1;
            let after = pick(&fewer, k);
            if before != after {
                assert_eq!(before, addrs[4], "only the removed target's keys move");
                moved += 1;
            }
        }
        // About 1/5 of the keys lived on the removed target.
        let moved_share = f64::from(moved) / keys.len() as f64;
        assert!((0.12..0.28).contains(&moved_share), "moved {moved_share}");
        for (t, n) in share {
            assert!((1200..2800).contains(&n), "{t} got {n} of 10000 keys");
        }
    }

    #[test]
    fn hash_on_parses_and_reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; session=abc; b=2".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let on = HashOn::parse("cookie:session").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(on.key(&h, ip), hash64(b"abc"));
        assert_eq!(HashOn::parse("header:x-user").map(|_| ()), Ok(()));
        assert!(HashOn::parse("path").is_err());
    }
}
