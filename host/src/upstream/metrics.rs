//! The upstreams' metric families, registered by this area into the
//! gateway's registry, and the per-upstream and per-target handles a
//! snapshot resolves once.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::observe::live::Series;
use crate::observe::metrics::{HistogramFamily, latency_histogram};

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

/// The upstream families.
#[derive(Clone)]
pub(crate) struct UpstreamFamilies {
    upstream_errors: Family<UpstreamError, Counter>,
    target_responses: Family<TargetStatus, Counter>,
    target_failures: Family<TargetLabel, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabel>,
    upstream_retries: Family<UpstreamError, Counter>,
    upstream_rejected: Family<UpstreamError, Counter>,
    breaker_state: Family<UpstreamLabel, Gauge>,
    breaker_opened: Family<UpstreamLabel, Counter>,
    target_healthy: Family<TargetLabel, Gauge>,
    target_ejections: Family<TargetLabel, Counter>,
    health_checks: Family<TargetStatus, Counter>,
    connection_uses: Family<UpstreamError, Counter>,
}

impl UpstreamFamilies {
    /// Register the families into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
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
        let upstream_duration = HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream",
            upstream_duration.clone(),
        );
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
        let connection_uses = Family::default();
        registry.register(
            "upstream_connection_uses",
            "Tries sent upstream by connection: reused (from the pool) or new; the reuse rate is reused / (reused + new)",
            connection_uses.clone(),
        );
        Self {
            connection_uses,
            upstream_errors,
            target_responses,
            target_failures,
            upstream_duration,
            upstream_retries,
            upstream_rejected,
            breaker_state,
            breaker_opened,
            target_healthy,
            target_ejections,
            health_checks,
        }
    }

    /// Handles for one upstream.
    pub(crate) fn upstream(&self, upstream: &str, live: Arc<Series>) -> UpstreamMetrics {
        let label = |kind| UpstreamError { upstream: upstream.to_owned(), kind };
        // Each handle is taken in a closure of its own: a family's read
        // guard lives to the end of the statement that took it, and a second
        // `get_or_create` on the same family within it would deadlock.
        let by = |kind| self.upstream_errors.get_or_create(&label(kind)).clone();
        let retries = |kind| self.upstream_retries.get_or_create(&label(kind)).clone();
        let rejected = |kind| self.upstream_rejected.get_or_create(&label(kind)).clone();
        let uses = |kind| self.connection_uses.get_or_create(&label(kind)).clone();
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
            reused: uses("reused"),
            new_connection: uses("new"),
            breaker_state: self.breaker_state.get_or_create(&ul).clone(),
            breaker_opened: self.breaker_opened.get_or_create(&ul).clone(),
            duration: self.upstream_duration.get_or_create(&ul).clone(),
            live,
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
    /// Tries sent on a pooled connection.
    pub(crate) reused: Counter,
    /// Tries that opened a connection.
    pub(crate) new_connection: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub(crate) breaker_state: Gauge,
    /// Times the breaker opened.
    pub(crate) breaker_opened: Counter,
    /// Time to the response head.
    pub(crate) duration: Histogram,
    /// The dashboard's series: every try, answered or failed.
    pub(crate) live: Arc<Series>,
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
