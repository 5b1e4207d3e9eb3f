//! Distributed tracing: W3C trace context on every request, and optional
//! span export over OTLP/HTTP (JSON encoding) from `[tracing]`.
//!
//! Every request gets a [`RequestTrace`]: the client's trace is continued
//! (its `traceparent` parent becomes the parent of the gateway's server
//! span) or a new one is started. Each upstream try is a client span whose
//! id is the parent id the upstream sees in `traceparent`; each plugin phase
//! call is an internal span. With an exporter configured and the trace
//! sampled, the spans of a request are queued when its response has been
//! sent, and a background task POSTs them in batches to the collector. The
//! request path never waits on the collector: a full queue drops spans and
//! counts them (`weir_trace_spans_total{result="dropped"}`).
//!
//! The exporter speaks OTLP/HTTP with the JSON encoding (OpenTelemetry
//! protocol spec, "OTLP/HTTP"), over the gateway's own hyper client, rather
//! than pulling the opentelemetry SDK and its HTTP stack into the proxy: the
//! gateway produces finished spans, so all it needs is the wire format.

use crate::headers::{hex_id, names};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use tokio::sync::mpsc;

use crate::observe::events::{PostClient, SettingError, http_url, post_client, post_json};
use crate::observe::metrics::Metrics;
use weir_config::TracingConfig;

/// OTLP span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// Work inside the gateway (a plugin call).
    Internal = 1,
    /// The gateway serving the client's request.
    Server = 2,
    /// A request to an upstream.
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    /// Its id, 16 hex digits.
    pub(crate) span_id: String,
    /// The parent's id, if any.
    pub(crate) parent_id: Option<String>,
    /// What it was, e.g. `GET orders`, `plugin auth request`.
    pub(crate) name: String,
    /// Server, client or internal.
    pub(crate) kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub(crate) start_ns: u64,
    /// End, ns since the Unix epoch.
    pub(crate) end_ns: u64,
    /// Attributes (OpenTelemetry semantic-convention names where one fits).
    pub(crate) attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed.
    pub(crate) error: Option<String>,
}

/// The trace of one request.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    /// 32 hex digits.
    pub(crate) trace_id: String,
    /// The same, as a number (what plugins' outbound calls carry on).
    id: u128,
    /// The client's span, when the client sent a valid `traceparent`.
    pub(crate) parent_id: Option<String>,
    /// The gateway's server span for this request.
    pub(crate) server_span: String,
    /// The sampled flag passed on upstream.
    pub(crate) sampled: bool,
    /// Whether spans are kept for export.
    pub(crate) recording: bool,
    /// When the request arrived, ns since the epoch.
    pub(crate) start_ns: u64,
    /// Child spans finished so far.
    pub(crate) spans: Vec<Span>,
}

impl RequestTrace {
    /// Continue the trace of `headers`' `traceparent`, or start one. With a
    /// `tracer`, an incoming sampled flag is honoured, and a new trace is
    /// sampled at the configured ratio; without one nothing is recorded and
    /// the flag is passed on as it came (new traces are marked sampled, so
    /// services behind the gateway can record them).
    pub(crate) fn begin(headers: &HeaderMap, tracer: Option<&Tracer>) -> Self {
        let incoming = headers.get(&names::TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse_traceparent);
        let (trace_id, id, parent_id, sampled) = match incoming {
            Some(tp) => {
                let id = u128::from_str_radix(tp.trace_id, 16).unwrap_or_default();
                (tp.trace_id.to_owned(), id, Some(tp.parent_id.to_owned()), tp.sampled)
            }
            None => {
                let sampled = tracer.is_none_or(|t| t.sample >= 1.0 || fastrand::f64() < t.sample);
                let id = fastrand::u128(1..);
                (hex_id(id, 32), id, None, sampled)
            }
        };
        Self {
            trace_id,
            id,
            parent_id,
            server_span: new_span_id(),
            sampled,
            recording: tracer.is_some() && sampled,
            start_ns: now_ns(),
            spans: Vec::new(),
        }
    }

    /// Set `traceparent` for an upstream try whose span is `span_id`.
    pub(crate) fn propagate(&self, headers: &mut HeaderMap, span_id: &str) {
        let mut v = String::with_capacity(55);
        v.push_str("00-");
        v.push_str(&self.trace_id);
        v.push('-');
        v.push_str(span_id);
        v.push_str(if self.sampled { "-01" } else { "-00" });
        if let Ok(v) = HeaderValue::try_from(v) {
            headers.insert(names::TRACEPARENT, v);
        }
    }

    /// Keep a finished child span of the server span (when recording).
    /// What plugins' outbound calls carry on in `traceparent` (copied into
    /// each phase's heads, so no allocation).
    pub(crate) fn context(&self) -> weir_plugin_host::TraceContext {
        weir_plugin_host::TraceContext { trace_id: self.id, sampled: self.sampled }
    }

    pub(crate) fn child(&mut self, span: impl FnOnce(&str) -> Span) {
        if self.recording {
            let s = span(&self.server_span);
            self.spans.push(s);
        }
    }
}

/// A fresh non-zero span id.
pub(crate) fn new_span_id() -> String {
    hex_id(u128::from(fastrand::u64(1..)), 16)
}

/// Now, ns since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A valid `traceparent`, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TraceParent<'a> {
    /// 32 lower-case hex digits, not all zero.
    pub(crate) trace_id: &'a str,
    /// 16 lower-case hex digits, not all zero.
    pub(crate) parent_id: &'a str,
    /// The sampled flag.
    pub(crate) sampled: bool,
}

/// `version-traceid-parentid-flags`, with the W3C validity rules: lower-case
/// hex, ids not all zero, version `ff` invalid, nothing after the flags in
/// version `00` (later versions may append fields).
pub(crate) fn parse_traceparent(v: &str) -> Option<TraceParent<'_>> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    valid.then_some(TraceParent { trace_id: trace, parent_id: parent, sampled })
}

/// A snapshot's span exporter, from `[tracing]`.
pub(crate) struct Tracer {
    sample: f64,
    queue: mpsc::Sender<(String, Vec<Span>)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("sample", &self.sample).finish_non_exhaustive()
    }
}

impl Tracer {
    /// The exporter `cfg` asks for (none without an endpoint); `Err` says
    /// what is wrong. Starts the export task, which ends when the tracer is
    /// dropped (its snapshot was replaced), after sending what it holds.
    pub(crate) fn from_config(cfg: &TracingConfig, metrics: Arc<Metrics>) -> Result<Option<Arc<Self>>, SettingError> {
        if !(0.0..=1.0).contains(&cfg.sample) {
            return Err(SettingError::Sample(cfg.sample));
        }
        if cfg.batch == 0 || cfg.queue == 0 {
            return Err(SettingError::Zero("`batch` and `queue` must be at least 1"));
        }
        if cfg.timeout.is_zero() {
            return Err(SettingError::Zero("`timeout` must be above zero"));
        }
        let Some(url) = &cfg.otlp_endpoint else { return Ok(None) };
        let uri = http_url("otlp_endpoint", url)?;
        let (tx, rx) = mpsc::channel(cfg.queue);
        let export = Export {
            uri,
            service: cfg.service_name.clone(),
            batch: cfg.batch,
            interval: cfg.interval,
            timeout: cfg.timeout,
            metrics: metrics.clone(),
        };
        tokio::spawn(export.run(rx));
        Ok(Some(Arc::new(Self { sample: cfg.sample, queue: tx, metrics })))
    }

    /// Queue a finished request's spans; dropped (and counted) when the
    /// exporter is behind.
    pub(crate) fn finish(&self, trace_id: String, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.queue.try_send((trace_id, spans)).is_err() {
            self.metrics.trace_spans("dropped", n);
        }
    }
}

struct Export {
    uri: Uri,
    service: String,
    batch: usize,
    interval: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Export {
    /// Gather spans until `batch` of them or `interval` passed, then POST.
    async fn run(self, mut rx: mpsc::Receiver<(String, Vec<Span>)>) {
        let client = post_client();
        let mut pending: Vec<(String, Span)> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            let deadline = tokio::time::sleep(self.interval);
            tokio::pin!(deadline);
            while open && pending.len() < self.batch {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some((trace, spans)) => pending.extend(spans.into_iter().map(|s| (trace.clone(), s))),
                        None => open = false,
                    },
                    _ = &mut deadline => break,
                }
            }
            if pending.is_empty() {
                continue;
            }
            let take = pending.len().min(self.batch);
            let batch: Vec<(String, Span)> = pending.drain(..take).collect();
            self.post(&client, &batch).await;
        }
    }

    async fn post(&self, client: &PostClient, batch: &[(String, Span)]) {
        let body = Bytes::from(encode(&self.service, batch));
        match post_json(client, &self.uri, body, self.timeout).await {
            Ok(()) => self.metrics.trace_spans("exported", batch.len() as u64),
            Err(e) => {
                self.metrics.trace_spans("failed", batch.len() as u64);
                tracing::warn!(endpoint = %self.uri, spans = batch.len(), "span export failed: {e}");
            }
        }
    }
}

/// An OTLP `ExportTraceServiceRequest` in the JSON encoding (ids in hex,
/// 64-bit integers as decimal strings).
pub(crate) fn encode(service: &str, batch: &[(String, Span)]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = batch
        .iter()
        .map(|(trace, s)| {
            let attributes: Vec<serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Str(s) => serde_json::json!({ "stringValue": s }),
                        Value::Int(i) => serde_json::json!({ "intValue": i.to_string() }),
                    };
                    serde_json::json!({ "key": k, "value": value })
                })
                .collect();
            let mut span = serde_json::json!({
                "traceId": trace,
                "spanId": s.span_id,
                "name": s.name,
                "kind": s.kind as u8,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.max(s.start_ns).to_string(),
                "attributes": attributes,
                "status": match &s.error {
                    Some(m) => serde_json::json!({ "code": 2, "message": m }),
                    None => serde_json::json!({ "code": 0 }),
                },
            });
            if let Some(p) = &s.parent_id {
                span["parentSpanId"] = serde_json::Value::String(p.clone());
            }
            span
        })
        .collect();
    let doc = serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service } }] },
            "scopeSpans": [{ "scope": { "name": "weir", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
        }],
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_rules() {
        let ok = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").expect("valid");
        assert_eq!(ok.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(ok.parent_id, "b7ad6b7169203331");
        assert!(ok.sampled);
        assert!(!parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").expect("valid").sampled);
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future").is_some());
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn begin_continues_or_starts_and_propagates_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        let t = RequestTrace::begin(&h, None);
        assert_eq!(t.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t.parent_id.as_deref(), Some("b7ad6b7169203331"));
        assert!(!t.sampled && !t.recording);
        let span = new_span_id();
        t.propagate(&mut h, &span);
        assert_eq!(h["traceparent"], format!("00-0af7651916cd43dd8448eb211c80319c-{span}-00").as_str());

        let fresh = RequestTrace::begin(&HeaderMap::new(), None);
        assert_eq!(fresh.trace_id.len(), 32);
        assert!(fresh.sampled, "without an exporter new traces are passed on as sampled");
        assert_eq!(fresh.parent_id, None);
        assert_ne!(fresh.server_span, "0000000000000000");
    }

    #[test]
    fn otlp_json_shape() {
        let span = Span {
            span_id: "00f067aa0ba902b7".into(),
            parent_id: Some("b7ad6b7169203331".into()),
            name: "GET orders".into(),
            kind: SpanKind::Server,
            start_ns: 1_000,
            end_ns: 2_500,
            attributes: vec![
                ("http.request.method", Value::Str("GET".into())),
                ("http.response.status_code", Value::Int(200)),
            ],
            error: None,
        };
        let doc: serde_json::Value =
            serde_json::from_slice(&encode("weir", &[("4bf92f3577b34da6a3ce929d0e0e4736".into(), span)]))
                .expect("json");
        let s = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "weir");
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1000");
        assert_eq!(s["endTimeUnixNano"], "2500");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
        assert_eq!(s["status"]["code"], 0);
    }
}
