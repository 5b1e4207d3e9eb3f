//! What a request carries from its head to its answer, whichever way it is
//! answered: its id, its trace and server span, its access-log record and
//! its accounting. Every answer leaves through [`Pending::finish`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, Version};

use super::grpc;
use super::reply::{Completion, Observed};
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::headers::{self, names};
use crate::observe::access_log::{AccessLog, Record};
use crate::observe::metrics::RouteMetrics;
use crate::observe::trace::{RequestTrace, Span, SpanKind, Tracer, Value};
use crate::snapshot::{Route, Snapshot};
use crate::upstream::Answered;

/// A request on its way to an answer.
pub(super) struct Pending {
    started: Instant,
    /// Accounting handed to the response body, completed once it is sent.
    done: Completion,
    log: Option<Arc<AccessLog>>,
    /// What the access log says about the request, taken before anything
    /// edits it; `None` when there is no access log. Boxed, like the span
    /// below: this struct lives in every request's future, which hyper
    /// copies as it moves it, and most requests have neither.
    record: Option<Box<Record>>,
    /// The client's `x-request-id` if it is usable, else a new one.
    pub(super) request_id: String,
    tracer: Option<Arc<Tracer>>,
    /// The request's trace: plugin calls and upstream tries are its spans.
    pub(super) trace: RequestTrace,
    server_span: Option<Box<Span>>,
    /// A gRPC call: the gateway's own answers are gRPC errors.
    pub(super) grpc: bool,
}

impl Pending {
    /// Start the bookkeeping of a request that arrived with `parts`.
    pub(super) fn begin(snap: &Snapshot, parts: &Parts, client: SocketAddr) -> Self {
        let started = Instant::now();
        let log = snap.access_log.clone();
        let trace = RequestTrace::begin(&parts.headers, snap.tracer.as_deref());
        let server_span = trace.recording.then(|| {
            Box::new(Span {
                span_id: trace.server_span.clone(),
                parent_id: trace.parent_id.clone(),
                name: parts.method.to_string(),
                kind: SpanKind::Server,
                start_ns: trace.start_ns,
                end_ns: 0,
                attributes: vec![
                    ("http.request.method", Value::Str(parts.method.to_string())),
                    ("url.path", Value::Str(parts.uri.path().to_owned())),
                    ("client.address", Value::Str(client.ip().to_string())),
                ],
                error: None,
            })
        });
        let record = log.as_ref().map(|log| {
            Box::new(Record {
                time_ms: weir_plugin_host::clock::unix_ms(),
                client: client.to_string(),
                method: parts.method.as_str().to_owned(),
                path: match (log.with_query(), parts.uri.path_and_query()) {
                    (true, Some(pq)) => pq.as_str().to_owned(),
                    _ => parts.uri.path().to_owned(),
                },
                version: version_name(parts.version),
                ..Record::default()
            })
        });
        Self {
            started,
            done: Completion::new(started, snap.unrouted.clone()),
            log,
            record,
            request_id: headers::request_id(&parts.headers),
            tracer: snap.tracer.clone(),
            trace,
            server_span,
            grpc: grpc::is_grpc(&parts.headers),
        }
    }

    /// The request matched `route`: it is accounted and named by it.
    pub(super) fn routed(&mut self, route: &Route, method: &Method) {
        self.done.set_metrics(route.metrics.clone());
        if let Some(span) = &mut self.server_span {
            span.name = format!("{method} {}", route.name);
            span.attributes.push(("http.route", Value::Str(route.name.to_string())));
        }
    }

    /// Count the request body's bytes as they are read.
    pub(super) fn count_in(&mut self, counter: Arc<std::sync::atomic::AtomicU64>) {
        self.done.count_in(counter);
    }

    /// What the exchange on `route` adds to the access log line: the
    /// route, its upstream, each plugin call's outcome.
    pub(super) fn exchanged(&mut self, route: &Route, outcomes: Option<String>) {
        if let Some(r) = &mut self.record {
            r.route = route.name.clone();
            r.upstream = route.upstream_name.clone();
            r.plugins = outcomes.unwrap_or_default();
        }
    }

    /// Whether plugin outcomes are collected for the access log.
    pub(super) fn logs_outcomes(&self) -> bool {
        self.record.is_some()
    }

    /// The gateway's answer for `err`, accounted in `metrics`.
    pub(super) fn error(&self, metrics: &RouteMetrics, err: ProxyError) -> Response<ProxyBody> {
        error_response(metrics, err, &self.request_id, self.started, self.grpc)
    }

    /// Account an answer that came from the route (not an error of the
    /// gateway's): its status and latency in the route's metrics.
    pub(super) fn answered(&self, metrics: &RouteMetrics, resp: &Response<ProxyBody>) {
        metrics.record(resp.status().as_u16(), self.started.elapsed().as_secs_f64());
    }

    /// Send the response: add the request id, and hand the access log line,
    /// the spans and the route's accounting to the body, which completes
    /// them once it has been sent.
    pub(super) fn finish(self, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let Self { started, mut done, log, record, request_id, tracer, trace, server_span, .. } = self;
        if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
            resp.headers_mut().insert(names::X_REQUEST_ID, v);
        }
        let status = resp.status().as_u16();
        if let (Some(tracer), Some(mut span)) = (tracer, server_span) {
            span.attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
            span.attributes.push(("weir.request_id", Value::Str(request_id.clone())));
            if status >= 500 {
                span.error = Some(format!("answered {status}"));
            }
            done.trace(tracer, trace.trace_id.clone(), trace.spans, *span);
        }
        if let (Some(log), Some(mut record)) = (log, record)
            && log.wants(status)
        {
            record.request_id = request_id;
            record.trace_id = trace.trace_id;
            record.status = status;
            record.head_ms = started.elapsed().as_secs_f64() * 1000.0;
            if let Some(answered) = resp.extensions().get::<Answered>() {
                record.target = answered.target.to_string();
                record.upstream_ms = Some(answered.elapsed.as_secs_f64() * 1000.0);
            }
            done.log(log, record);
        }
        resp.map(|b| body::boxed(Observed::new(b, done)))
    }
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The gateway's answer for `err`: a JSON error, or on a gRPC call a gRPC
/// error (HTTP 200, the status in `grpc-status`).
fn error_response(
    metrics: &RouteMetrics,
    err: ProxyError,
    request_id: &str,
    started: Instant,
    grpc: bool,
) -> Response<ProxyBody> {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(request_id, source = err.source_kind(), status = status.as_u16(), "{err}");
    } else {
        tracing::debug!(request_id, source = err.source_kind(), status = status.as_u16(), "{err}");
    }
    metrics.record(status.as_u16(), started.elapsed().as_secs_f64());
    if grpc {
        // `finish` adds the request id, as to every answer.
        return grpc::error(grpc::code_for(status), &err.to_string(), &http::HeaderMap::new());
    }
    let body = serde_json::json!({
        "error": err.to_string(),
        "source": err.source_kind(),
        "request_id": request_id,
    });
    let mut resp = Response::new(body::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::try_from(request_id) {
        h.insert(names::X_REQUEST_ID, v);
    }
    if let ProxyError::MethodNotAllowed(allowed) = &err {
        let list = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::try_from(list) {
            h.insert(header::ALLOW, v);
        }
    }
    resp
}
