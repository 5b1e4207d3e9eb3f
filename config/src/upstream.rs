//! `[upstreams.NAME]` and a route's `cache`: how the gateway reaches a
//! service and what it does when the service is slow or down.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::{UpstreamProtocol, byte_size, duration};
use crate::json_schema::{ByteSizeString, DurationString, HASH_ON_PATTERN, TARGET_PATTERN};

/// `[upstreams.NAME]`: a service and how the gateway reaches it: its
/// targets (`targets`, or `targets_file`), timeouts, retries, health
/// checks, breaker, protocol, TLS and connection pool.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Primary targets: `"host:port"` or `{ address = "host:port", weight = N }`;
    /// required unless `targets_file` is set.
    /// Host names are resolved, and re-resolved every `dns_refresh`; each
    /// address becomes a target.
    #[serde(default)]
    #[schemars(with = "Vec<TargetConfig>")]
    pub targets: Vec<Spanned<TargetConfig>>,
    /// Targets used only while no primary is healthy.
    #[serde(default)]
    #[schemars(with = "Vec<TargetConfig>")]
    pub backup: Vec<Spanned<TargetConfig>>,
    /// A JSON or TOML file of `targets` (and `backup`), relative to the
    /// config file, watched for changes: an external registry can drive
    /// the targets without a config reload. Excludes `targets`/`backup`.
    #[serde(default)]
    #[schemars(with = "PathBuf")]
    pub targets_file: Option<Spanned<PathBuf>>,
    /// Targets from a service registry, watched: instances register
    /// themselves and leave (see the book's "Running a fleet"). Excludes
    /// `targets`, `backup` and `targets_file`.
    #[serde(default)]
    #[schemars(with = "Option<DiscoveryConfig>")]
    pub discovery: Option<Spanned<DiscoveryConfig>>,
    /// How often host names among the targets are resolved again.
    #[serde(default = "defaults::dns_refresh", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub dns_refresh: Duration,
    /// Which addresses of a resolved name become targets.
    #[serde(default)]
    pub dns_family: DnsFamily,
    /// How a target is chosen.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "hash"`: what is hashed (`"client_ip"`,
    /// `"header:NAME"`, `"cookie:NAME"`). A request without the header or
    /// cookie falls back to its client IP.
    #[serde(default)]
    #[schemars(with = "String", pattern(HASH_ON_PATTERN))]
    pub hash_on: Option<Spanned<String>>,
    /// Time allowed to establish a connection (502 beyond).
    #[serde(default = "defaults::connect_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub connect_timeout: Duration,
    /// Time allowed for one try's response head to arrive (504 beyond);
    /// above zero.
    #[serde(default = "defaults::upstream_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
    /// Time allowed for all tries together, backoff included; none by default.
    #[serde(default, deserialize_with = "optional_duration")]
    #[schemars(with = "DurationString")]
    pub total_timeout: Option<Duration>,
    /// `[upstreams.NAME.retry]`: which failures are retried, how often,
    /// and the retry budget.
    #[serde(default)]
    pub retry: RetryConfig,
    /// `[upstreams.NAME.health]`: active health checks; none without it.
    #[serde(default)]
    #[schemars(with = "HealthConfig")]
    pub health: Option<Spanned<HealthConfig>>,
    /// `[upstreams.NAME.outlier]`: passive health checks (outlier
    /// ejection); on by default.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// `[upstreams.NAME.breaker]`: concurrency caps and the error-rate
    /// breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// HTTP version spoken to the targets: `"auto"`, `"h1"` or `"h2"`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the targets: `true`, or a table of settings.
    #[serde(default)]
    #[schemars(with = "super::UpstreamTls")]
    pub tls: Option<Spanned<super::UpstreamTls>>,
    /// `[upstreams.NAME.pool]`: the connections kept open to each target
    /// between requests.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// `[upstreams.NAME.pool]` (or `pool = { ... }`): idle connections kept to each target, so a
/// request finds one ready instead of paying for a new TCP (and TLS)
/// handshake. The connection cap itself is `breaker.max_connections`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Most idle HTTP/1 connections kept per target; a connection that
    /// comes free beyond it is closed. 0 closes every connection after its
    /// request.
    #[serde(default = "defaults::max_idle")]
    pub max_idle: usize,
    /// An idle connection unused this long is closed; above zero. Keep it
    /// below the targets' own keep-alive timeout, so the gateway closes
    /// first.
    #[serde(default = "defaults::idle_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub idle_timeout: Duration,
    /// A connection older than this takes no new request (it closes once
    /// its last one is done), so targets added behind a load balancer or a
    /// rotated certificate are picked up; none by default.
    #[serde(default, deserialize_with = "optional_duration")]
    #[schemars(with = "DurationString")]
    pub max_age: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_idle: defaults::max_idle(), idle_timeout: defaults::idle_timeout(), max_age: None }
    }
}

/// One target: `"host:port"`, or `{ address = "host:port", weight = N }`.
/// The port is required; a host name is resolved, and each of its
/// addresses becomes a target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TargetConfig {
    /// `"host:port"`, weight 1.
    Address(#[schemars(pattern(TARGET_PATTERN))] String),
    /// `{ address = "host:port", weight = N }`.
    Weighted {
        /// `host:port`.
        #[schemars(pattern(TARGET_PATTERN))]
        address: String,
        /// Share of requests relative to the other targets (1 to 1000).
        #[serde(default = "defaults::weight")]
        #[schemars(range(min = 1, max = 1000))]
        weight: u32,
    },
}

impl TargetConfig {
    /// `host:port`.
    pub fn address(&self) -> &str {
        match self {
            TargetConfig::Address(a) | TargetConfig::Weighted { address: a, .. } => a,
        }
    }

    /// The weight (1 unless given).
    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Address(_) => 1,
            TargetConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// `dns_family = "any" | "ipv4" | "ipv6"`: which addresses of a resolved
/// name become targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsFamily {
    /// A and AAAA.
    #[default]
    Any,
    /// A only.
    Ipv4,
    /// AAAA only.
    Ipv6,
}

/// `balance = "round_robin" | "least_outstanding" | "hash"`: how a target
/// is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn, as often as its weight says (smooth weighted
    /// round robin, like nginx).
    #[default]
    RoundRobin,
    /// The less busy of two random targets (power of two choices), by
    /// requests in flight per unit of weight.
    LeastOutstanding,
    /// Consistent hashing on `hash_on` over a ring of virtual nodes: a key
    /// stays on its target, and removing a target moves only its keys.
    Hash,
}

/// `[upstreams.NAME.retry]` (or `retry = { ... }`): which failures are
/// retried, how often, and how many retries may be in flight.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Most tries per request, the first included: 1 to 10 (1 turns
    /// retries off).
    #[serde(default = "defaults::tries")]
    #[schemars(range(min = 1, max = 10))]
    pub tries: u32,
    /// What is retried: `"connect"` (nothing was sent: any method),
    /// `"timeout"` and `"reset"` (idempotent methods only).
    #[serde(default = "defaults::retry_on")]
    pub on: Vec<RetryOn>,
    /// Response statuses retried for idempotent methods (e.g. `[502, 503]`).
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// First backoff; each retry doubles it, with full jitter.
    #[serde(default = "defaults::retry_backoff", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub backoff: Duration,
    /// Largest backoff.
    #[serde(default = "defaults::retry_max_backoff", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub max_backoff: Duration,
    /// Retries in flight may be at most this share of the requests in
    /// flight to the upstream (0 to 1), so retries cannot multiply an
    /// outage.
    #[serde(default = "defaults::retry_budget")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub budget: f64,
    /// Retries always allowed in flight, whatever the budget says.
    #[serde(default = "defaults::retry_min")]
    pub min_concurrent: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            tries: defaults::tries(),
            on: defaults::retry_on(),
            statuses: Vec::new(),
            backoff: defaults::retry_backoff(),
            max_backoff: defaults::retry_max_backoff(),
            budget: defaults::retry_budget(),
            min_concurrent: defaults::retry_min(),
        }
    }
}

/// A kind of failure that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// The connection could not be made.
    Connect,
    /// The try's response head did not come within `timeout`.
    Timeout,
    /// The connection failed after the request was sent.
    Reset,
}

/// `[upstreams.NAME.health]` (or `health = { ... }`): active checks, a
/// `GET` of `path` on every target (backups included).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path requested with GET, starting with `/`; a 2xx or 3xx answer
    /// passes.
    #[schemars(pattern("^/"))]
    pub path: String,
    /// Time between checks of one target; above zero.
    #[serde(default = "defaults::health_interval", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub interval: Duration,
    /// Time a check may take; above zero.
    #[serde(default = "defaults::health_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
    /// Passing checks in a row that bring a target back; at least 1.
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a target out; at least 1.
    #[serde(default = "defaults::two")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: u32,
    /// `Host` header of the check; the target's address if absent.
    #[serde(default)]
    pub host: Option<String>,
}

/// `[upstreams.NAME.outlier]` (or `outlier = { ... }`): passive checks,
/// ejecting a target whose tries keep failing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Off switch.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Connect errors, timeouts, resets or 5xx answers in a row that eject
    /// a target; at least 1.
    #[serde(default = "defaults::consecutive_failures")]
    #[schemars(range(min = 1))]
    pub consecutive_failures: u32,
    /// First ejection time; each repeated ejection adds as much again.
    #[serde(default = "defaults::base_ejection", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(default = "defaults::max_ejection", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub max_ejection: Duration,
    /// Most targets of a group (primaries, or backups) ejected at once, in
    /// percent, at most 100; the group's last usable target is never
    /// ejected.
    #[serde(default = "defaults::max_ejected_percent")]
    #[schemars(range(max = 100))]
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: defaults::consecutive_failures(),
            base_ejection: defaults::base_ejection(),
            max_ejection: defaults::max_ejection(),
            max_ejected_percent: defaults::max_ejected_percent(),
        }
    }
}

/// `[upstreams.NAME.breaker]` (or `breaker = { ... }`): concurrency caps
/// and the error-rate breaker.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Most requests in flight to the upstream at once.
    #[serde(default = "defaults::max_requests")]
    pub max_requests: usize,
    /// Most requests waiting for one of `max_requests`; beyond, 503 at once.
    #[serde(default = "defaults::max_pending")]
    pub max_pending: usize,
    /// Most connections open to each target (in use or idle).
    #[serde(default = "defaults::max_connections_per_target")]
    pub max_connections: usize,
    /// Open the breaker when this share of the window's tries failed
    /// (connect error, timeout, reset, 502/503/504): above 0, at most 1;
    /// off when absent.
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1))]
    pub error_rate: Option<f64>,
    /// Fewest tries in the window before the rate counts.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u32,
    /// The sliding window the rate is taken over; at least `10ms`.
    #[serde(default = "defaults::breaker_window", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub window: Duration,
    /// How long an open breaker refuses before letting probes through.
    #[serde(default = "defaults::open_for", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub open_for: Duration,
    /// Probe requests let through half-open; all must succeed to close.
    #[serde(default = "defaults::probes")]
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            max_requests: defaults::max_requests(),
            max_pending: defaults::max_pending(),
            max_connections: defaults::max_connections_per_target(),
            error_rate: None,
            min_requests: defaults::min_requests(),
            window: defaults::breaker_window(),
            open_for: defaults::open_for(),
            probes: defaults::probes(),
        }
    }
}

/// A route's (or an aggregate part's) `cache`: responses kept in
/// memory, and served stale when the upstream fails.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory for all of the route's entries (bodies and headers).
    #[serde(default = "defaults::cache_size", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_size: u64,
    /// Largest response stored; larger ones pass through uncached.
    #[serde(default = "defaults::cache_entry", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_entry: u64,
    /// Freshness of a response that gives none (`Cache-Control: max-age`,
    /// `s-maxage` or `Expires`); 0 stores it for stale fallback only.
    #[serde(default, deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub default_ttl: Duration,
    /// How long after it went stale a response may still be served when
    /// the upstream fails (a response's own `stale-if-error=N` wins).
    #[serde(default = "defaults::stale_if_error", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub stale_if_error: Duration,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

mod defaults {
    use std::time::Duration;

    use super::RetryOn;

    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn weight() -> u32 {
        1
    }
    pub(super) fn two() -> u32 {
        2
    }
    pub(super) fn dns_refresh() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn upstream_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn tries() -> u32 {
        2
    }
    pub(super) fn retry_on() -> Vec<RetryOn> {
        vec![RetryOn::Connect]
    }
    pub(super) fn retry_backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub(super) fn retry_max_backoff() -> Duration {
        Duration::from_millis(250)
    }
    pub(super) fn retry_budget() -> f64 {
        0.2
    }
    pub(super) fn retry_min() -> u32 {
        3
    }
    pub(super) fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn consecutive_failures() -> u32 {
        5
    }
    pub(super) fn base_ejection() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn max_ejected_percent() -> u32 {
        50
    }
    pub(super) fn max_requests() -> usize {
        1024
    }
    pub(super) fn max_pending() -> usize {
        1024
    }
    pub(super) fn max_connections_per_target() -> usize {
        1024
    }
    pub(super) fn max_idle() -> usize {
        256
    }
    pub(super) fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn min_requests() -> u32 {
        20
    }
    pub(super) fn breaker_window() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn open_for() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn probes() -> u32 {
        3
    }
    pub(super) fn cache_size() -> u64 {
        64 << 20
    }
    pub(super) fn cache_entry() -> u64 {
        1 << 20
    }
    pub(super) fn stale_if_error() -> Duration {
        Duration::from_secs(300)
    }
}

/// `discovery = { etcd = "/services/orders" }`: the upstream's targets are
/// the instances registered under that etcd key prefix, each key holding
/// `{"addr": "10.0.0.5:8080", "weight": 10, "zone": "eu-1"}` (weight and
/// zone optional), usually on a lease its instance keeps alive.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The key prefix: `/services/orders` on the fleet's own etcd (fleet
    /// mode), or `etcd://HOST:PORT/services/orders` on another.
    pub etcd: String,
}
