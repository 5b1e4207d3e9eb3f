//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Labels come only from names in the configuration (routes, upstreams,
//! plugins) and from plugin-defined metric names, which are capped per
//! plugin: raw paths, client addresses and header values never become
//! labels. Hot-path handles are resolved once per snapshot, so recording a
//! request is a few atomic adds with no allocation.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use weir_plugin_host::HostMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetStatus {
    upstream: String,
    target: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    upstream: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamError {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadResult {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteDirection {
    route: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsHandshake {
    result: &'static str,
    version: &'static str,
    alpn: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50µs .. ~26s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the gateway exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    upstream_errors: Family<UpstreamError, Counter>,
    target_responses: Family<TargetStatus, Counter>,
    target_failures: Family<TargetLabel, Counter>,
    reloads: Family<ReloadResult, Counter>,
    generation: Gauge,
    webhooks: Family<Outcome, Counter>,
    in_flight: Family<RouteLabel, Gauge>,
    bytes_in: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabel>,
    connections: Gauge,
    access_log_dropped: Counter,
    trace_spans: Family<Outcome, Counter>,
    upstream_retries: Family<UpstreamError, Counter>,
    upstream_rejected: Family<UpstreamError, Counter>,
    breaker_state: Family<UpstreamLabel, Gauge>,
    breaker_opened: Family<UpstreamLabel, Counter>,
    target_healthy: Family<TargetLabel, Gauge>,
    target_ejections: Family<TargetLabel, Counter>,
    health_checks: Family<TargetStatus, Counter>,
    cache_requests: Family<RouteStatus, Counter>,
    cache_bytes: Family<RouteLabel, Gauge>,
    cache_entries: Family<RouteLabel, Gauge>,
    tls_handshakes: Family<TlsHandshake, Counter>,
    websocket_upgrades: Family<RouteLabel, Counter>,
    websocket_open: Family<RouteLabel, Gauge>,
    websocket_bytes: Family<RouteDirection, Counter>,
    plugins: HostMetrics,
    live: crate::observe::live::Live,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register all metrics.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("weir");
        let requests = Family::default();
        registry.register("requests", "Downstream requests by route and status class", requests.clone());
        let request_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by route",
            request_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register("upstream_errors", "Failed upstream requests by kind", upstream_errors.clone());
        let target_responses = Family::default();
        registry.register(
            "upstream_target_responses",
            "Responses from each upstream target, by status class",
            target_responses.clone(),
        );
        let target_failures = Family::default();
        registry.register(
            "upstream_target_failures",
            "Tries to each upstream target that got no response (connect error, timeout, reset)",
            target_failures.clone(),
        );
        let plugins = HostMetrics::register(&mut registry);
        let reloads = Family::default();
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        let generation = Gauge::default();
        registry.register("config_generation", "Generation of the serving snapshot", generation.clone());
        let webhooks = Family::default();
        registry.register("event_webhooks", "Event webhook deliveries by result", webhooks.clone());
        let in_flight = Family::default();
        registry.register("route_in_flight", "Requests being served, by route", in_flight.clone());
        let bytes_in = Family::default();
        registry.register("route_bytes_in", "Request body bytes received, by route", bytes_in.clone());
        let bytes_out = Family::default();
        registry.register("route_bytes_out", "Response body bytes sent, by route", bytes_out.clone());
        let upstream_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream",
            upstream_duration.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections_open", "Downstream connections open on the proxy listener", connections.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind",
            access_log_dropped.clone(),
        );
        let trace_spans = Family::default();
        registry.register("trace_spans", "Spans handed to the OTLP exporter, by result", trace_spans.clone());
        let upstream_retries = Family::default();
        registry.register(
            "upstream_retries",
            "Retries by kind: sent, or refused by the retry budget (budget_exhausted)",
            upstream_retries.clone(),
        );
        let upstream_rejected = Family::default();
        registry.register(
            "upstream_rejected",
            "Requests answered 503 without reaching a target, by kind: breaker_open, overflow, no_healthy_target",
            upstream_rejected.clone(),
        );
        let breaker_state = Family::default();
        registry.register(
            "upstream_breaker_state",
            "Error-rate breaker: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let breaker_opened = Family::default();
        registry.register("upstream_breaker_opened", "Times the error-rate breaker opened", breaker_opened.clone());
        let target_healthy = Family::default();
        registry.register(
            "upstream_target_healthy",
            "1 while the target takes requests (not ejected, not failing active checks)",
            target_healthy.clone(),
        );
        let target_ejections = Family::default();
        registry.register(
            "upstream_target_ejections",
            "Times passive health checks ejected the target",
            target_ejections.clone(),
        );
        let health_checks = Family::default();
        registry.register(
            "upstream_health_checks",
            "Active health checks by status: pass or fail",
            health_checks.clone(),
        );
        let cache_requests = Family::default();
        registry.register(
            "cache_requests",
            "Cache lookups by status: hit, miss, stale, bypass",
            cache_requests.clone(),
        );
        let cache_bytes = Family::default();
        registry.register("cache_bytes", "Memory held by the route's cache", cache_bytes.clone());
        let cache_entries = Family::default();
        registry.register("cache_entries", "Responses in the route's cache", cache_entries.clone());
        let tls_handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the TLS listener by result (ok, failed, timeout), version and ALPN protocol",
            tls_handshakes.clone(),
        );
        let websocket_upgrades = Family::default();
        registry.register(
            "websocket_upgrades",
            "WebSocket connections established, by route",
            websocket_upgrades.clone(),
        );
        let websocket_open = Family::default();
        registry.register("websocket_open", "WebSocket connections open now, by route", websocket_open.clone());
        let websocket_bytes = Family::default();
        registry.register(
            "websocket_bytes",
            "Bytes carried over WebSocket connections, by route and direction (downstream: to the client; upstream: to the service)",
            websocket_bytes.clone(),
        );
        Self {
            tls_handshakes,
            websocket_upgrades,
            websocket_open,
            websocket_bytes,
            registry,
            upstream_retries,
            upstream_rejected,
            breaker_state,
            breaker_opened,
            target_healthy,
            target_ejections,
            health_checks,
            cache_requests,
            cache_bytes,
            cache_entries,
            requests,
            request_duration,
            upstream_errors,
            target_responses,
            target_failures,
            reloads,
            generation,
            webhooks,
            in_flight,
            bytes_in,
            bytes_out,
            upstream_duration,
            connections,
            access_log_dropped,
            trace_spans,
            plugins,
            live: crate::observe::live::Live::default(),
        }
    }

    /// Count a TLS handshake; `version` and `alpn` are empty when it failed.
    pub(crate) fn tls_handshake(&self, result: &'static str, version: &'static str, alpn: &'static str) {
        self.tls_handshakes.get_or_create(&TlsHandshake { result, version, alpn }).inc();
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one route.
    pub(crate) fn route(&self, route: &str) -> RouteMetrics {
        let by = |status| self.requests.get_or_create(&RouteStatus { route: route.to_owned(), status }).clone();
        let label = RouteLabel { route: route.to_owned() };
        RouteMetrics {
            by_class: [by("1xx"), by("2xx"), by("3xx"), by("4xx"), by("5xx")],
            duration: self.request_duration.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            bytes_in: self.bytes_in.get_or_create(&label).clone(),
            bytes_out: self.bytes_out.get_or_create(&label).clone(),
            websocket: self.websocket(route),
            live: self.live.route(route),
        }
    }

    /// A route's WebSocket handles. One `get_or_create` per statement: the
    /// family's read guard lives to the end of the statement, and a second
    /// call that has to insert would wait on it forever.
    fn websocket(&self, route: &str) -> WebSocketMetrics {
        let label = RouteLabel { route: route.to_owned() };
        let bytes = |direction| RouteDirection { route: route.to_owned(), direction };
        let upgrades = self.websocket_upgrades.get_or_create(&label).clone();
        let open = self.websocket_open.get_or_create(&label).clone();
        let to_client = self.websocket_bytes.get_or_create(&bytes("downstream")).clone();
        let to_upstream = self.websocket_bytes.get_or_create(&bytes("upstream")).clone();
        WebSocketMetrics { upgrades, open, to_client, to_upstream }
    }

    /// Count requests that matched no route.
    pub(crate) fn unrouted(&self) -> RouteMetrics {
        self.route("")
    }

    /// Handles for one upstream.
    pub(crate) fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let label = |kind| UpstreamError { upstream: upstream.to_owned(), kind };
        // Each handle is taken in a closure of its own: a family's read
        // guard lives to the end of the statement that took it, and a second
        // `get_or_create` on the same family within it would deadlock.
        let by = |kind| self.upstream_errors.get_or_create(&label(kind)).clone();
        let retries = |kind| self.upstream_retries.get_or_create(&label(kind)).clone();
        let rejected = |kind| self.upstream_rejected.get_or_create(&label(kind)).clone();
        let ul = UpstreamLabel { upstream: upstream.to_owned() };
        UpstreamMetrics {
            connect: by("connect"),
            timeout: by("timeout"),
            request: by("request"),
            retries: retries("sent"),
            budget_exhausted: retries("budget_exhausted"),
            breaker_open: rejected("breaker_open"),
            overflow: rejected("overflow"),
            no_healthy: rejected("no_healthy_target"),
            breaker_state: self.breaker_state.get_or_create(&ul).clone(),
            breaker_opened: self.breaker_opened.get_or_create(&ul).clone(),
            duration: self.upstream_duration.get_or_create(&ul).clone(),
            live: self.live.upstream(upstream),
        }
    }

    /// Handles for one target (`host:port`) of `upstream`.
    pub(crate) fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let by = |status| {
            let label = TargetStatus { upstream: upstream.to_owned(), target: target.to_owned(), status };
            self.target_responses.get_or_create(&label).clone()
        };
        let check = |status| {
            let label = TargetStatus { upstream: upstream.to_owned(), target: target.to_owned(), status };
            self.health_checks.get_or_create(&label).clone()
        };
        let label = TargetLabel { upstream: upstream.to_owned(), target: target.to_owned() };
        TargetMetrics {
            by_class: [by("1xx"), by("2xx"), by("3xx"), by("4xx"), by("5xx")],
            failures: self.target_failures.get_or_create(&label).clone(),
            healthy: self.target_healthy.get_or_create(&label).clone(),
            ejections: self.target_ejections.get_or_create(&label).clone(),
            checks_passed: check("pass"),
            checks_failed: check("fail"),
        }
    }

    /// Handles for a route's cache.
    pub(crate) fn cache(&self, route: &str) -> CacheMetrics {
        let by = |status| self.cache_requests.get_or_create(&RouteStatus { route: route.to_owned(), status }).clone();
        let label = RouteLabel { route: route.to_owned() };
        CacheMetrics {
            hit: by("hit"),
            miss: by("miss"),
            stale: by("stale"),
            bypass: by("bypass"),
            bytes: self.cache_bytes.get_or_create(&label).clone(),
            entries: self.cache_entries.get_or_create(&label).clone(),
        }
    }

    /// A reload attempt.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadResult { result: if ok { "success" } else { "failure" } }).inc();
    }

    /// An event webhook delivery: `sent`, `failed` or `dropped`.
    pub(crate) fn webhook(&self, result: &'static str) {
        self.webhooks.get_or_create(&Outcome { result }).inc();
    }

    /// The dashboard's time series.
    pub(crate) fn live(&self) -> &crate::observe::live::Live {
        &self.live
    }

    /// A downstream connection opened (`true`) or closed.
    pub(crate) fn connection(&self, open: bool) {
        if open {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// `n` spans `exported`, `failed` (the collector refused or was away) or
    /// `dropped` (the queue was full).
    pub(crate) fn trace_spans(&self, result: &'static str, n: u64) {
        self.trace_spans.get_or_create(&Outcome { result }).inc_by(n);
    }

    /// An access log line dropped.
    pub(crate) fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// The plugin host's families.
    pub(crate) fn plugins(&self) -> &HostMetrics {
        &self.plugins
    }

    /// The serving generation.
    pub(crate) fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }
}

/// Per-route handles.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    /// WebSocket connections of the route.
    pub(crate) websocket: WebSocketMetrics,
    live: Arc<crate::observe::live::Series>,
}

/// A route's WebSocket connections.
#[derive(Clone, Debug)]
pub(crate) struct WebSocketMetrics {
    /// Established.
    pub(crate) upgrades: Counter,
    /// Open now.
    pub(crate) open: Gauge,
    /// Bytes sent to the client.
    pub(crate) to_client: Counter,
    /// Bytes sent to the upstream.
    pub(crate) to_upstream: Counter,
}

impl RouteMetrics {
    /// Record one answered request (its response head).
    pub(crate) fn record(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
        self.live.record(status >= 500, seconds);
    }

    /// A request starts being served.
    pub(crate) fn enter(&self) {
        self.in_flight.inc();
    }

    /// A request is done (its response sent or abandoned).
    pub(crate) fn leave(&self) {
        self.in_flight.dec();
    }

    /// Requests being served now.
    pub(crate) fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Body bytes of one finished request.
    pub(crate) fn bytes(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
    }
}

/// Per-upstream error counters.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamMetrics {
    /// Connection failures.
    pub(crate) connect: Counter,
    /// No response head in time.
    pub(crate) timeout: Counter,
    /// Other request failures.
    pub(crate) request: Counter,
    /// Retries sent.
    pub(crate) retries: Counter,
    /// Retries the budget refused.
    pub(crate) budget_exhausted: Counter,
    /// Requests refused by an open breaker.
    pub(crate) breaker_open: Counter,
    /// Requests refused by `max_requests` + `max_pending`.
    pub(crate) overflow: Counter,
    /// Requests refused because no target was healthy.
    pub(crate) no_healthy: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub(crate) breaker_state: Gauge,
    /// Times the breaker opened.
    pub(crate) breaker_opened: Counter,
    /// Time to the response head.
    pub(crate) duration: Histogram,
    /// The dashboard's series: every try, answered or failed.
    pub(crate) live: Arc<crate::observe::live::Series>,
}

/// Per-target counters.
#[derive(Clone, Debug)]
pub(crate) struct TargetMetrics {
    by_class: [Counter; 5],
    failures: Counter,
    /// 1 while the target takes requests.
    pub(crate) healthy: Gauge,
    /// Passive ejections.
    pub(crate) ejections: Counter,
    /// Active checks passed.
    pub(crate) checks_passed: Counter,
    /// Active checks failed.
    pub(crate) checks_failed: Counter,
}

/// A route cache's handles.
#[derive(Clone, Debug)]
pub(crate) struct CacheMetrics {
    /// Served fresh from the cache.
    pub(crate) hit: Counter,
    /// Not in the cache (or not fresh): asked upstream.
    pub(crate) miss: Counter,
    /// Served stale because the upstream failed.
    pub(crate) stale: Counter,
    /// Not cacheable (method, request directives).
    pub(crate) bypass: Counter,
    /// Memory held.
    pub(crate) bytes: Gauge,
    /// Entries held.
    pub(crate) entries: Gauge,
}

impl TargetMetrics {
    /// The target answered with `status`.
    pub(crate) fn answered(&self, status: u16) {
        self.by_class[(status / 100).clamp(1, 5) as usize - 1].inc();
    }

    /// The target gave no answer.
    pub(crate) fn failed(&self) {
        self.failures.inc();
    }

    /// Responses so far, by class (`1xx`..`5xx`), and tries with no answer.
    pub(crate) fn counts(&self) -> ([u64; 5], u64) {
        (std::array::from_fn(|i| self.by_class[i].get()), self.failures.get())
    }
}
