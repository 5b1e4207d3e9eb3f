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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteStatus {
    pub(crate) route: String,
    pub(crate) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabel {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
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

pub(crate) type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub(crate) fn latency_histogram() -> Histogram {
    // 50µs .. ~26s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the gateway exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    reloads: Family<ReloadResult, Counter>,
    generation: Gauge,
    serving_last_good: Gauge,
    last_good_saves: Family<ReloadResult, Counter>,
    webhooks: Family<Outcome, Counter>,
    in_flight: Family<RouteLabel, Gauge>,
    bytes_in: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    access_log_dropped: Counter,
    trace_spans: Family<Outcome, Counter>,
    websocket_upgrades: Family<RouteLabel, Counter>,
    websocket_open: Family<RouteLabel, Gauge>,
    websocket_bytes: Family<RouteDirection, Counter>,
    canary_state: Family<PluginLabel, Gauge>,
    canary_rollbacks: Family<PluginLabel, Counter>,
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
        let reloads = Family::default();
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        let generation = Gauge::default();
        registry.register("config_generation", "Generation of the serving snapshot", generation.clone());
        let serving_last_good = Gauge::default();
        registry.register(
            "serving_last_good",
            "1 while the gateway serves its last good state because the config on disk failed at start",
            serving_last_good.clone(),
        );
        let last_good_saves = Family::default();
        registry.register(
            "last_good_saves",
            "Saves of the last good state to state_dir, by result",
            last_good_saves.clone(),
        );
        let webhooks = Family::default();
        registry.register("event_webhooks", "Event webhook deliveries by result", webhooks.clone());
        let in_flight = Family::default();
        registry.register("route_in_flight", "Requests being served, by route", in_flight.clone());
        let bytes_in = Family::default();
        registry.register("route_bytes_in", "Request body bytes received, by route", bytes_in.clone());
        let bytes_out = Family::default();
        registry.register("route_bytes_out", "Response body bytes sent, by route", bytes_out.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind",
            access_log_dropped.clone(),
        );
        let trace_spans = Family::default();
        registry.register("trace_spans", "Spans handed to the OTLP exporter, by result", trace_spans.clone());
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
        let canary_state = Family::default();
        registry.register(
            "plugin_canary_state",
            "A plugin canary's state: 0 comparing, 1 rolled back, 2 promoted, 3 aborted",
            canary_state.clone(),
        );
        let canary_rollbacks = Family::default();
        registry.register(
            "plugin_canary_rollbacks",
            "Canary versions the gateway rolled back, by plugin",
            canary_rollbacks.clone(),
        );
        Self {
            canary_state,
            canary_rollbacks,
            websocket_upgrades,
            websocket_open,
            websocket_bytes,
            registry,
            requests,
            request_duration,
            reloads,
            generation,
            serving_last_good,
            last_good_saves,
            webhooks,
            in_flight,
            bytes_in,
            bytes_out,
            access_log_dropped,
            trace_spans,
            live: crate::observe::live::Live::default(),
        }
    }

    /// The registry, for the other areas to register their families into
    /// before the gateway starts (see `Gateway::load`).
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
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

    /// A reload attempt.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadResult { result: if ok { "success" } else { "failure" } }).inc();
    }

    /// Whether the serving snapshot is the last good state (not the disk's).
    pub(crate) fn set_serving_last_good(&self, yes: bool) {
        self.serving_last_good.set(i64::from(yes));
    }

    /// A save of the last good state.
    pub(crate) fn last_good_saved(&self, ok: bool) {
        self.last_good_saves.get_or_create(&ReloadResult { result: if ok { "success" } else { "failure" } }).inc();
    }

    /// An event webhook delivery: `sent`, `failed` or `dropped`.
    pub(crate) fn webhook(&self, result: &'static str) {
        self.webhooks.get_or_create(&Outcome { result }).inc();
    }

    /// The dashboard's time series.
    pub(crate) fn live(&self) -> &crate::observe::live::Live {
        &self.live
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

    /// Plugin `plugin`'s canary is now in `state` (see `plugin_canary_state`).
    pub(crate) fn canary_state(&self, plugin: &str, state: i64) {
        self.canary_state.get_or_create(&PluginLabel { plugin: plugin.to_owned() }).set(state);
    }

    /// Plugin `plugin`'s canary was rolled back.
    pub(crate) fn canary_rolled_back(&self, plugin: &str) {
        self.canary_rollbacks.get_or_create(&PluginLabel { plugin: plugin.to_owned() }).inc();
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
