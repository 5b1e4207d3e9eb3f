//! The `gateway.toml` schema, in one place.
//!
//! Every struct denies unknown fields, so a typo is an error with a line
//! number rather than a silently ignored setting. Values that are checked
//! against each other (a route's upstream, a chain's plugins) keep their
//! source span so the error can point at them. README's "Configuration
//! reference" documents every key; keep the two in step.
//!
//! The same types derive [`schemars::JsonSchema`], and [`schema()`] is the
//! JSON Schema of the file that editors use: a field's `///` comment is its
//! description there, so write it for someone editing `gateway.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use json_schema::{ByteSizeString, DurationString, NAME_PATTERN, SocketAddrString};

mod canary;
pub mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod json_schema;
mod recorder;
mod tls;
mod transcode;
mod upstream;
pub use canary::{CanaryConfig, RollbackConfig, Sticky};
pub use json_schema::schema;
pub use recorder::{RecorderConfig, Trigger};
pub use tls::*;
pub use transcode::{
    CorsConfig, DEFAULT_CORS_HEADERS, DEFAULT_MAX_DESCRIPTOR_SIZE, GrpcTranscodeConfig, GrpcWebConfig,
};
pub use upstream::*;

/// Longest name of a plugin instance or an aggregate part.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name a plugin instance or an aggregate part: 1 to
/// [`MAX_NAME_LEN`] of `[A-Za-z0-9_-]`. Plugin names namespace state keys,
/// label metrics and appear in logs.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A whole `gateway.toml`: `[server]` is required, every other section
/// has defaults. Unknown keys are errors, at every level.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[server]`: the listeners and server-wide settings.
    pub server: ServerConfig,
    /// `[runtime]`: the plugin engine (read at start; a reload keeps the old
    /// settings).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[state]`: where plugins' shared state lives, in memory or in Redis
    /// (read at start).
    #[serde(default)]
    #[schemars(with = "StateConfig")]
    pub state: Option<Spanned<StateConfig>>,
    /// `[events]`: what happens to the events plugins emit.
    #[serde(default)]
    pub events: EventsConfig,
    /// `[access_log]`: one line per request; no access log without this
    /// section.
    #[serde(default)]
    #[schemars(with = "AccessLogConfig")]
    pub access_log: Option<Spanned<AccessLogConfig>>,
    /// `[limits]`: what a request may be: sizes and counts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[tracing]`: span export over OTLP; none without this section.
    #[serde(default)]
    #[schemars(with = "TracingConfig")]
    pub tracing: Option<Spanned<TracingConfig>>,
    /// `[recorder]`: the flight recorder; off without this section.
    #[serde(default)]
    #[schemars(with = "RecorderConfig")]
    pub recorder: Option<Spanned<RecorderConfig>>,
    /// `[upstreams.NAME]`: the services routes and plugins send requests to.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, UpstreamConfig>")]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    /// `[plugins.NAME]`: named plugin instances; `NAME` is 1 to 64 of
    /// `[A-Za-z0-9_-]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, PluginConfig>", extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub plugins: BTreeMap<String, Spanned<PluginConfig>>,
    /// `[[routes]]`, tried in order: the first match wins.
    #[serde(default)]
    #[schemars(with = "Vec<RouteConfig>")]
    pub routes: Vec<Spanned<RouteConfig>>,
}

/// `[server]`: the listeners and server-wide settings; `listen` is
/// required.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the proxy listener (HTTP/1.1 and h2c), e.g.
    /// `"127.0.0.1:8080"`; port 0 picks one. Read at start.
    #[schemars(with = "SocketAddrString")]
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/metrics`, `/admin/*`,
    /// `/dashboard`); none if absent. Bind it to loopback.
    #[serde(default)]
    #[schemars(with = "SocketAddrString")]
    pub admin_listen: Option<SocketAddr>,
    /// When set, the admin API and `/metrics` need `Authorization: Bearer
    /// TOKEN` (`/healthz`, `/readyz` and the dashboard page stay open).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Folder of `.wasm` modules, relative to the config file.
    #[serde(default = "defaults::plugins_dir")]
    pub plugins_dir: PathBuf,
    /// Reload when the config file, a module in `plugins_dir`, or a TLS
    /// certificate, key or CA file changes.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// Time allowed for a client to send a complete request head; also how
    /// long a new or idle keep-alive connection may stay silent.
    #[serde(default = "defaults::header_read_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(default = "defaults::drain_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub drain_timeout: Duration,
    /// Most downstream connections open at once on the proxy listener; at
    /// the cap new connections wait to be accepted.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most downstream connections open at once from one client address
    /// (IPv6: per /64); none by default. At a cap, the oldest connections
    /// that have not sent a complete request head are closed first.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Largest body buffered for a plugin body phase (413/502 beyond).
    #[serde(default = "defaults::max_buffered_body", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_buffered_body: u64,
    /// `[server.tls]`: a TLS listener, beside the cleartext one.
    #[serde(default)]
    #[schemars(with = "ListenerTlsConfig")]
    pub tls: Option<Spanned<ListenerTlsConfig>>,
    /// Where the last good configuration and its modules are kept, so a
    /// restart with a broken file on disk starts from them (relative to the
    /// config file). Default: a folder per config under
    /// `$XDG_STATE_HOME/weir` (`~/.local/state/weir`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// The folder relative paths in a config file are taken from.
pub fn base_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `[runtime]`: the plugin engine. Sizes the pooling allocator, so it is
/// read once at start.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Most plugin instances alive at once, over all plugins (pool slots).
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
    /// Largest memory limit a plugin may be given.
    #[serde(default = "defaults::max_memory", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_memory: u64,
    /// Idle instances kept per plugin for reuse.
    #[serde(default = "defaults::max_idle_per_plugin")]
    pub max_idle_per_plugin: usize,
    /// Where compiled plugins are cached between runs: `true` (default) for
    /// the user's cache folder, `false` for no cache, or a folder (relative
    /// to the config file).
    #[serde(default)]
    pub compile_cache: CompileCache,
    /// Largest plugin module file read (`"64MiB"` by default): a larger
    /// file, or one that is not a regular file, is refused.
    #[serde(default = "defaults::max_module_size", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_module_size: u64,
}

/// `compile_cache = true | false | "folder"`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(untagged)]
pub enum CompileCache {
    /// `true`: `$XDG_CACHE_HOME/weir` or `~/.cache/weir`; `false`: off.
    Default(bool),
    /// A folder of its own.
    Dir(PathBuf),
}

impl Default for CompileCache {
    fn default() -> Self {
        Self::Default(true)
    }
}

impl CompileCache {
    /// The folder to use, if caching is on; relative paths are taken from
    /// `base` (the config file's folder).
    pub fn dir(&self, base: &Path) -> Option<PathBuf> {
        match self {
            Self::Default(false) => None,
            Self::Default(true) => {
                let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
                let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache"));
                xdg.or(home).map(|d| d.join("weir"))
            }
            // Absolute: wasmtime's cache refuses a relative folder, and a
            // config given as `gateway.toml` has the relative base `.`.
            Self::Dir(d) => {
                let dir = base.join(d);
                Some(std::path::absolute(&dir).unwrap_or(dir))
            }
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: defaults::max_instances(),
            max_memory: defaults::max_memory(),
            max_idle_per_plugin: defaults::max_idle_per_plugin(),
            compile_cache: CompileCache::default(),
            max_module_size: defaults::max_module_size(),
        }
    }
}

/// `[state]`: the backend behind the plugins' `state` calls. Read at start
/// (counters must not silently move between backends on a reload).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` (in-process, default) or `redis` (shared by gateway nodes).
    #[serde(default)]
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port[/db]`; required with `backend = "redis"`.
    #[serde(default)]
    pub url: Option<String>,
    /// Prefix of every Redis key, so several gateway clusters can share one Redis.
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// Time allowed for one Redis operation before it counts as unavailable.
    #[serde(default = "defaults::state_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
    /// After a Redis failure, calls fail fast for this long before the next try.
    #[serde(default = "defaults::state_retry_interval", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub retry_interval: Duration,
    /// Most keys the memory backend holds (writes beyond fail as unavailable).
    #[serde(default = "defaults::state_max_entries")]
    pub max_entries: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::default(),
            url: None,
            key_prefix: defaults::key_prefix(),
            timeout: defaults::state_timeout(),
            retry_interval: defaults::state_retry_interval(),
            max_entries: defaults::state_max_entries(),
        }
    }
}

/// `backend = "memory" | "redis"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// A sharded map inside the gateway process.
    #[default]
    Memory,
    /// A Redis server shared by every node pointing at it.
    Redis,
}

/// `[events]`: plugin events (e.g. anomaly alerts) are always logged and
/// counted; this section can also POST them to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// `http://host:port/path` each event is POSTed to as JSON; none if absent.
    #[serde(default)]
    #[schemars(with = "String")]
    pub webhook: Option<Spanned<String>>,
    /// Least severity POSTed to the webhook: `info`, `warning` or `critical`.
    #[serde(default = "defaults::min_severity")]
    pub min_severity: Severity,
    /// Time allowed for one webhook POST.
    #[serde(default = "defaults::webhook_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
    /// Events waiting to be POSTed; beyond this, new ones are dropped (and counted).
    #[serde(default = "defaults::webhook_queue")]
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            min_severity: defaults::min_severity(),
            timeout: defaults::webhook_timeout(),
            queue: defaults::webhook_queue(),
        }
    }
}

/// `[access_log]`: one line per request, written when the response has
/// been sent.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write access log lines at all.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (relative to the config file).
    #[serde(default = "defaults::stdout")]
    pub target: String,
    /// `json` (one object per line) or `logfmt`.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Share of requests logged, 0 to 1 (5xx responses are always logged).
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: f64,
    /// Log the query string with the path (it may carry credentials).
    #[serde(default)]
    pub query: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target: defaults::stdout(),
            format: AccessLogFormat::default(),
            sample: 1.0,
            query: false,
        }
    }
}

/// `[limits]`: what a request may be. `max_header_count` and
/// `max_header_bytes` configure the HTTP/1 parser and apply at start; the
/// others apply on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body (413 beyond; a declared length is refused
    /// before anything is read).
    #[serde(default = "defaults::max_request_body", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_request_body: u64,
    /// Most request header fields (431 beyond).
    #[serde(default = "defaults::max_header_count")]
    pub max_header_count: usize,
    /// Largest request head, request line and headers together (431 beyond).
    #[serde(default = "defaults::max_header_bytes", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_header_bytes: u64,
    /// Longest request target (414 beyond).
    #[serde(default = "defaults::max_uri_bytes", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_uri_bytes: u64,
    /// Request bodies up to this size are read whole before the upstream is
    /// called, so a malformed or cut body is refused (400) with nothing
    /// sent upstream; larger bodies stream after this much.
    #[serde(default = "defaults::request_buffer", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub request_buffer: u64,
    /// Largest upstream response head (status line and headers); a larger
    /// one is answered `502`, never forwarded.
    #[serde(default = "defaults::max_header_bytes", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub max_response_header_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body: defaults::max_request_body(),
            max_header_count: defaults::max_header_count(),
            max_header_bytes: defaults::max_header_bytes(),
            max_uri_bytes: defaults::max_uri_bytes(),
            request_buffer: defaults::request_buffer(),
            max_response_header_bytes: defaults::max_header_bytes(),
        }
    }
}

/// `[tracing]`: spans of each request (server span, plugin calls, upstream
/// tries) exported over OTLP/HTTP with the JSON encoding.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces`;
    /// no export if absent (trace context is still propagated).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1; a client's sampled flag is
    /// honoured.
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: f64,
    /// `service.name` of the exported resource.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Most spans in one export request.
    #[serde(default = "defaults::span_batch")]
    pub batch: usize,
    /// Requests whose spans wait for export; beyond, spans are dropped.
    #[serde(default = "defaults::span_queue")]
    pub queue: usize,
    /// Longest a span waits before its batch is sent.
    #[serde(default = "defaults::span_interval", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub interval: Duration,
    /// Time allowed for one export request.
    #[serde(default = "defaults::span_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
}

/// `format = "json" | "logfmt"`: the access log's line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// `key=value` pairs.
    Logfmt,
}

/// Event severity, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Worth a look.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// `[plugins.NAME]`: a named instance of a plugin module with its own
/// `config`, limits and failure policy.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// File name of the module in `plugins_dir` (no paths), e.g.
    /// `"auth.wasm"`, or a module in an OCI registry:
    /// `"oci://HOST[:PORT]/REPO:TAG"` or `"oci://HOST[:PORT]/REPO@sha256:DIGEST"`.
    #[schemars(with = "String")]
    pub module: Spanned<String>,
    /// How to reach the registry of an `oci://` module.
    #[serde(default)]
    #[schemars(with = "RegistryConfig")]
    pub registry: Option<Spanned<RegistryConfig>>,
    /// The plugin's own settings, handed to its `init` as JSON; the plugin
    /// validates them (see its documentation).
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub config: Option<Spanned<toml::Table>>,
    /// What a trap or deadline does to the request.
    #[serde(default)]
    pub failure: FailurePolicy,
    /// Memory and CPU limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// Instance reuse.
    #[serde(default)]
    pub isolation: Isolation,
    /// If set, the module's sha256 (hex) must match, or the config is
    /// refused. For an `oci://` module: the digest of its Wasm layer, which
    /// lets it load from the local cache with the registry down.
    #[serde(default)]
    #[schemars(with = "String")]
    pub sha256: Option<Spanned<String>>,
    /// When a plugin that keeps trapping stops being called for a while.
    #[serde(default)]
    pub crash_loop: CrashLoopConfig,
    /// The upstreams this instance may call through the `outbound`
    /// interface; none if absent.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub outbound: Option<Spanned<Vec<String>>>,
    /// A second version of the module that takes a share of the traffic
    /// and is rolled back automatically when it does worse than this one.
    #[serde(default)]
    #[schemars(with = "Option<CanaryConfig>")]
    pub canary: Option<Spanned<CanaryConfig>>,
}

/// `registry = { ... }` of an `oci://` module: plain HTTP, credentials,
/// time allowed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Plain HTTP instead of HTTPS: only for a registry on a loopback
    /// address unless `allow_insecure_remote`.
    #[serde(default)]
    pub insecure: bool,
    /// Allow `insecure` for a registry that is not on loopback (traffic and
    /// credentials in the clear: for a trusted private network only).
    #[serde(default)]
    pub allow_insecure_remote: bool,
    /// User name for the registry (basic auth, or to obtain a token).
    #[serde(default)]
    pub username: Option<String>,
    /// The name of an environment variable holding the password (not the
    /// password itself, which would sit in the config).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Time allowed for pulling a module: all its registry requests.
    #[serde(default = "defaults::registry_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: false,
            allow_insecure_remote: false,
            username: None,
            password_env: None,
            timeout: defaults::registry_timeout(),
        }
    }
}

/// `crash_loop = { after = 5, backoff = "1s", max_backoff = "1m" }`: after
/// `after` traps in a row the plugin is not called for `backoff` (its
/// requests get the failure policy: 503, or skipped when open); each
/// further episode doubles the pause, up to `max_backoff`; a call that
/// succeeds ends it. `after = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashLoopConfig {
    /// Traps in a row that start a backoff (0: never).
    #[serde(default = "defaults::crash_after")]
    pub after: u32,
    /// The first pause.
    #[serde(default = "defaults::crash_backoff", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub backoff: Duration,
    /// The longest pause.
    #[serde(default = "defaults::crash_max_backoff", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub max_backoff: Duration,
}

impl Default for CrashLoopConfig {
    fn default() -> Self {
        Self {
            after: defaults::crash_after(),
            backoff: defaults::crash_backoff(),
            max_backoff: defaults::crash_max_backoff(),
        }
    }
}

/// `failure = "closed" | "open"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// A trap answers 500, a deadline 504.
    #[default]
    Closed,
    /// A trap or deadline skips the plugin; the request goes on.
    Open,
}

/// `isolation = "pool" | "request"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Initialised instances are reused, one request at a time.
    #[default]
    Pool,
    /// Every request gets a fresh instance (for plugins handling secrets).
    Request,
}

/// `limits = { memory = "16MiB", deadline = "50ms" }`
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Linear memory limit per instance.
    #[serde(default = "defaults::plugin_memory", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub memory: u64,
    /// CPU deadline per phase call.
    #[serde(default = "defaults::plugin_deadline", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub deadline: Duration,
    /// Largest body of an answer to an outbound call.
    #[serde(default = "defaults::outbound_body", deserialize_with = "byte_size")]
    #[schemars(with = "ByteSizeString")]
    pub outbound_body: u64,
    /// Most outbound calls per phase call.
    #[serde(default = "defaults::outbound_calls")]
    pub outbound_calls: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: defaults::plugin_memory(),
            deadline: defaults::plugin_deadline(),
            outbound_body: defaults::outbound_body(),
            outbound_calls: defaults::outbound_calls(),
        }
    }
}

/// `[[routes]]`: which requests a route takes (`host`, `path` or
/// `path_prefix`, `methods`), the plugins they go through (`chain`) and
/// where they go (`upstream`, or `parts` for `kind = "aggregate"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in metrics, logs and the plugins' request head.
    pub name: String,
    /// Host to match (port ignored, case-insensitive); `*.example.com`
    /// matches any subdomain. Any host if absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Exact path, or a pattern with `{param}` segments and a final `{*rest}`.
    #[serde(default)]
    #[schemars(with = "String")]
    pub path: Option<Spanned<String>>,
    /// Path prefix, matched on segment boundaries (`/users` matches
    /// `/users` and `/users/7`, not `/usersx`); `"/"` when neither `path`
    /// nor `path_prefix` is set.
    #[serde(default)]
    #[schemars(with = "String")]
    pub path_prefix: Option<Spanned<String>>,
    /// Methods to match, e.g. `["GET", "POST"]`; any if absent.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub methods: Option<Spanned<Vec<String>>>,
    /// `proxy` (forward to `upstream`) or `aggregate` (fan out to `parts`).
    #[serde(default)]
    pub kind: RouteKind,
    /// The upstream to forward to (`kind = "proxy"`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub upstream: Option<Spanned<String>>,
    /// Names of `[plugins.NAME]` instances to run, in order.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub chain: Vec<Spanned<String>>,
    /// Keep responses in memory and serve them stale when the upstream fails.
    #[serde(default)]
    #[schemars(with = "CacheConfig")]
    pub cache: Option<Spanned<CacheConfig>>,
    /// The requests an aggregate route sends in parallel, in merge order.
    #[serde(default)]
    #[schemars(with = "Vec<PartConfig>")]
    pub parts: Vec<Spanned<PartConfig>>,
    /// How an aggregate route merges its parts' JSON answers.
    #[serde(default)]
    pub merge: Option<Merge>,
    /// A JSON shape for an aggregate route's answer, instead of `merge`:
    /// strings `"${part.field}"`, `"${path.x}"`, `"${query.x}"` and
    /// `"${header.x}"` are replaced.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub template: Option<Spanned<toml::Value>>,
    /// Client request headers an aggregate route passes on to every part.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Let WebSocket handshakes (`Upgrade: websocket`) through to the
    /// upstream; `false` answers them `403`.
    #[serde(default = "defaults::yes")]
    pub websocket: bool,
    /// A WebSocket connection with no byte either way for this long is
    /// closed.
    #[serde(default = "defaults::websocket_idle_timeout", deserialize_with = "duration")]
    #[schemars(with = "DurationString")]
    pub websocket_idle_timeout: Duration,
    /// Answer JSON/HTTP requests by calling gRPC methods upstream, bound by
    /// the `google.api.http` rules of a descriptor set.
    #[serde(default)]
    #[schemars(with = "GrpcTranscodeConfig")]
    pub grpc_transcode: Option<Spanned<GrpcTranscodeConfig>>,
    /// Accept gRPC-Web from browsers (`true`, or a table with `cors`) and
    /// call the upstream with gRPC.
    #[serde(default, deserialize_with = "transcode::grpc_web")]
    #[schemars(with = "Option<transcode::GrpcWebSetting>")]
    pub grpc_web: Option<GrpcWebConfig>,
}

/// `kind = "proxy" | "aggregate"`: what a route does with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// Forward it to one upstream.
    #[default]
    Proxy,
    /// Send `parts` in parallel and merge the answers into one JSON document.
    Aggregate,
}

/// `merge = "keys" | "deep"`: how an aggregate route combines its parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// `{"part": answer, ...}`.
    #[default]
    Keys,
    /// Objects merged recursively in part order (later keys win); an answer
    /// that is not an object stays under its part's name.
    Deep,
}

/// `[[routes.parts]]`: one request of an aggregate route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartConfig {
    /// Key of its answer in the merged document: 1 to 64 of
    /// `[A-Za-z0-9_-]`, unique in the route.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// The `[upstreams.NAME]` it is sent to.
    #[schemars(with = "String")]
    pub upstream: Spanned<String>,
    /// Method; `GET` if absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query, with `{path.x}`, `{query.x}` and `{header.x}`
    /// filled from the client's request.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// Headers to send, values templated like `path`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time for its whole answer, body included; the upstream's `timeout`
    /// if absent.
    #[serde(default, deserialize_with = "optional_duration")]
    #[schemars(with = "DurationString")]
    pub timeout: Option<Duration>,
    /// Its failure fails the whole request (otherwise it is reported in
    /// `_errors` and the answer is partial).
    #[serde(default)]
    pub required: bool,
    /// Keep its answers, to serve one stale when it fails.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

mod defaults {
    pub(super) fn registry_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }

    pub(super) fn websocket_idle_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(300)
    }

    use std::path::PathBuf;
    use std::time::Duration;

    pub(super) fn plugins_dir() -> PathBuf {
        PathBuf::from("plugins")
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn max_connections() -> usize {
        10_000
    }
    pub(super) fn max_request_body() -> u64 {
        64 << 20
    }
    pub(super) fn max_header_count() -> usize {
        100
    }
    pub(super) fn max_header_bytes() -> u64 {
        64 << 10
    }
    pub(super) fn max_uri_bytes() -> u64 {
        8 << 10
    }
    pub(super) fn request_buffer() -> u64 {
        64 << 10
    }
    pub(super) fn crash_after() -> u32 {
        5
    }
    pub(super) fn crash_backoff() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn crash_max_backoff() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn service_name() -> String {
        "weir".into()
    }
    pub(super) fn span_batch() -> usize {
        512
    }
    pub(super) fn span_queue() -> usize {
        4096
    }
    pub(super) fn span_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn span_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn stdout() -> String {
        "stdout".into()
    }
    pub(super) fn one() -> f64 {
        1.0
    }
    pub(super) fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn max_buffered_body() -> u64 {
        1 << 20
    }
    pub(super) fn max_instances() -> u32 {
        1000
    }
    pub(super) fn max_memory() -> u64 {
        256 << 20
    }
    pub(super) fn max_idle_per_plugin() -> usize {
        64
    }
    pub(super) fn max_module_size() -> u64 {
        64 << 20
    }
    pub(super) fn plugin_memory() -> u64 {
        32 << 20
    }
    pub(super) fn plugin_deadline() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn outbound_body() -> u64 {
        1 << 20
    }
    pub(super) fn outbound_calls() -> u32 {
        8
    }
    pub(super) fn key_prefix() -> String {
        "weir:".into()
    }
    pub(super) fn state_timeout() -> Duration {
        Duration::from_millis(50)
    }
    pub(super) fn state_retry_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn state_max_entries() -> usize {
        1_000_000
    }
    pub(super) fn min_severity() -> super::Severity {
        super::Severity::Warning
    }
    pub(super) fn webhook_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn webhook_queue() -> usize {
        1024
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_byte_size(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid size {s:?}: expected e.g. \"512KiB\", \"16MiB\", \"1GiB\""))
    })
}

/// `"16MiB"` → 16777216. Units: B, KB, KiB, MB, MiB, GB, GiB.
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A problem in the configuration or a plugin, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file at fault (config or module).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found while loading; a configuration is all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// The source text of a config file, to turn spans into line numbers.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path of the file as given (what errors name: for a configuration
    /// kept in etcd, `etcd://HOST:PORT/PREFIX/config`).
    pub path: PathBuf,
    text: String,
    /// Where relative paths resolve, when not beside `path`.
    base: Option<PathBuf>,
}

impl Source {
    /// Read a config file.
    pub fn read(path: &Path) -> Result<Self, LoadErrors> {
        let text = files::read_text(path, files::MAX_CONFIG_SIZE)
            .map_err(|e| LoadErrors(vec![LoadError { file: path.to_owned(), line: None, message: e.to_string() }]))?;
        Ok(Self { path: path.to_owned(), text, base: None })
    }

    /// A source from text (tests, fuzzing).
    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into(), base: None }
    }

    /// The same text with relative paths resolved against `dir` (a
    /// configuration that is not a file: etcd's).
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base = Some(dir.into());
        self
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// An error located at `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> LoadError {
        LoadError { file: self.path.clone(), line: Some(self.line_of(span.start)), message: message.into() }
    }

    /// Parse the text; syntax and schema errors carry their line.
    pub fn parse(&self) -> Result<GatewayConfig, LoadErrors> {
        toml::from_str(&self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of(s.start));
            LoadErrors(vec![LoadError { file: self.path.clone(), line, message: e.message().trim_end().to_owned() }])
        })
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.base.clone().unwrap_or_else(|| base_dir_of(&self.path))
    }

    /// The text as read.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod schema_tests;
