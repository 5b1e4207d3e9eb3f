//! The request path, room by room:
//! route → request chain → (request body chain) → upstream →
//! response chain → (response body chain) → reply.
//!
//! Bodies stream straight through unless a plugin on the route asked for a
//! body phase; then that body alone is buffered, up to
//! `server.max_buffered_body`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::access_log::{AccessLog, Record};
use crate::body::{self, ProxyBody};
use crate::config::FailurePolicy;
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::forwarding::{self, names};
use crate::framing;
use crate::grpc;
use crate::plugin::{
    Action, BodyAction, Heads, LentRequest, LentResponse, LoadedPlugin, Phases, PluginFailure, Reply, RequestInfo,
    RequestSlot,
};
use crate::reply::{BodyVerdict, Completion, Counted, Observed};
use crate::router::Match;
use crate::snapshot::{Backend, Route, Snapshot};
use crate::tls::ConnectionTls;
use crate::trace::{RequestTrace, Span, SpanKind, Tracer, Value, new_span_id, now_ns};
use crate::tunnel;
use crate::upstream::{Answered, Outgoing};
use hyper::upgrade::OnUpgrade;

/// Serve one downstream request on `snap`.
pub async fn handle<B>(snap: Arc<Snapshot>, req: Request<B>, client: SocketAddr) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<body::BoxError>,
{
    let started = Instant::now();
    let mut done = Completion::new(started, snap.unrouted.clone());
    let log = snap.access_log.clone();
    let request_id = forwarding::request_id(req.headers());
    let trace = RequestTrace::begin(req.headers(), snap.tracer.as_deref());
    let (mut parts, body) = req.into_parts();
    let grpc = grpc::is_grpc(&parts.headers);
    // A WebSocket handshake: the client's connection, to splice on a 101.
    let upgrade = tunnel::requested(&mut parts);
    let client_upgrade = if upgrade.is_some() { parts.extensions.remove::<OnUpgrade>() } else { None };
    let mut server_span = trace.recording.then(|| Span {
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
    });
    // What the access log says about the request, taken before anything edits it.
    let mut record = log.as_ref().map(|log| Record {
        time_ms: crate::clock::unix_ms(),
        client: client.to_string(),
        method: parts.method.as_str().to_owned(),
        path: match (log.with_query(), parts.uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str().to_owned(),
            _ => parts.uri.path().to_owned(),
        },
        version: version_name(parts.version),
        ..Record::default()
    });
    // Framing, target and Host rules, and [limits]: a refusal closes the
    // connection, and what the client is still sending is drained so the
    // answer reaches it.
    if let Err(e) = framing::check(&parts, &snap.limits) {
        body::linger(body);
        let mut resp = error_response(&snap.unrouted, e, &request_id, started, grpc);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let tracing = Tracing { tracer: snap.tracer.clone(), trace, server_span };
        return reply(resp, done, log, record, request_id, started, tracing);
    }
    let host = authority_of(&parts).to_owned();
    let (route, params) = match snap.router.find(&host, parts.uri.path(), &parts.method) {
        Match::Found(i, params) => (&snap.routes[i], params),
        Match::NotFound => {
            let resp = error_response(&snap.unrouted, ProxyError::NoRoute, &request_id, started, grpc);
            let tracing = Tracing { tracer: snap.tracer.clone(), trace, server_span };
            return reply(resp, done, log, record, request_id, started, tracing);
        }
        Match::MethodNotAllowed(allowed) => {
            let resp =
                error_response(&snap.unrouted, ProxyError::MethodNotAllowed(allowed), &request_id, started, grpc);
            let tracing = Tracing { tracer: snap.tracer.clone(), trace, server_span };
            return reply(resp, done, log, record, request_id, started, tracing);
        }
    };
    done.set_metrics(route.metrics.clone());
    if let Some(span) = &mut server_span {
        span.name = format!("{} {}", parts.method, route.name);
        span.attributes.push(("http.route", Value::Str(route.name.to_string())));
    }

    forwarding::strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        parts.headers.insert(names::X_REQUEST_ID, v);
    }
    // From here on the URI is origin-form; the authority is kept in `host`.
    let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);

    let bytes_in = Arc::new(AtomicU64::new(0));
    done.count_in(bytes_in.clone());
    let verdict = Arc::new(BodyVerdict::default());
    let body = Counted::new(body, bytes_in, snap.limits.max_request_body, verdict.clone());
    let held = route.chain.iter().map(|_| RequestSlot::default()).collect();
    let tls = parts.extensions.remove::<Arc<ConnectionTls>>();
    // `x-forwarded-client-cert`: only the gateway says which client
    // certificate it verified (`[server.tls] forward_client_cert`).
    parts.headers.remove(names::X_FORWARDED_CLIENT_CERT);
    if let Some(t) = &tls
        && snap.tls.as_ref().is_some_and(|l| l.forward_client_cert)
        && let Some(v) = t.forwarded_client_cert().and_then(|v| HeaderValue::try_from(v).ok())
    {
        parts.headers.insert(names::X_FORWARDED_CLIENT_CERT, v);
    }
    let info = Arc::new(RequestInfo { client, authority: host, route: route.name.clone(), request_id, params, tls });
    let outcomes = record.is_some().then(String::new);
    let mut exchange = Exchange { snap: &snap, route, info, held, outcomes, trace, grpc, upgrade };
    let result = exchange.run(parts, body).await;
    let request_id = exchange.info.request_id.clone();
    if let Some(r) = &mut record {
        r.route = route.name.clone();
        r.upstream = route.upstream_name.clone();
        r.plugins = exchange.outcomes.take().unwrap_or_default();
    }
    let tracing = Tracing { tracer: snap.tracer.clone(), trace: exchange.trace, server_span };
    let result = match (result, client_upgrade, &exchange.upgrade, route.websocket) {
        (Ok(resp), Some(client), Some(handshake), Some(idle)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel::splice(resp, client, handshake, idle, route.metrics.websocket.clone())
                .map_err(|e| ProxyError::Upstream { upstream: route.upstream_name.clone(), detail: e.into() })
        }
        (result, ..) => result,
    };
    let resp = match result {
        Ok(resp) => {
            route.metrics.record(resp.status().as_u16(), started.elapsed().as_secs_f64());
            resp
        }
        Err(e) => {
            // Whatever failed downstream of it, a body the client broke or
            // overran is the client's error, and ends the connection.
            let client = verdict.error(snap.limits.max_request_body);
            let closes = client.is_some();
            let mut resp = error_response(&route.metrics, client.unwrap_or(e), &request_id, started, grpc);
            if closes {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    reply(resp, done, log, record, request_id, started, tracing)
}

/// The request's trace, and its server span when it is recorded.
struct Tracing {
    tracer: Option<Arc<Tracer>>,
    trace: RequestTrace,
    server_span: Option<Span>,
}

/// Send the response: add the request id, and hand the access log line and
/// the route's accounting to the body, which completes them once it has
/// been sent.
fn reply(
    mut resp: Response<ProxyBody>,
    mut done: Completion,
    log: Option<Arc<AccessLog>>,
    record: Option<Record>,
    request_id: String,
    started: Instant,
    tracing: Tracing,
) -> Response<ProxyBody> {
    if let Ok(v) = HeaderValue::try_from(request_id.as_str()) {
        resp.headers_mut().insert(names::X_REQUEST_ID, v);
    }
    let status = resp.status().as_u16();
    let Tracing { tracer, trace, server_span } = tracing;
    if let (Some(tracer), Some(mut span)) = (tracer, server_span) {
        span.attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
        span.attributes.push(("weir.request_id", Value::Str(request_id.clone())));
        if status >= 500 {
            span.error = Some(format!("answered {status}"));
        }
        done.trace(tracer, trace.trace_id.clone(), trace.spans, span);
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

/// The authority the client addressed: `:authority`/absolute URI, else `Host`.
fn authority_of(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// One request's trip through a route.
struct Exchange<'a> {
    snap: &'a Snapshot,
    route: &'a Route,
    /// Client, authority, route, request id, path parameters.
    info: Arc<RequestInfo>,
    /// Per chain position: request-local values, and the instance of an
    /// `isolation = "request"` plugin.
    held: Vec<RequestSlot>,
    /// Each plugin call's outcome, for the access log (when it is on).
    outcomes: Option<String>,
    /// The request's trace: plugin calls and upstream tries are its spans.
    trace: RequestTrace,
    /// A gRPC call: its own replies are gRPC errors, `grpc-timeout` is the
    /// upstream deadline, and its body streams (no pre-buffering).
    grpc: bool,
    /// A WebSocket handshake, and how the client made it.
    upgrade: Option<tunnel::Handshake>,
}

impl Exchange<'_> {
    async fn run<B>(&mut self, parts: Parts, body: B) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let route = self.route;
        let max = self.snap.server.max_buffered_body;
        // The heads are lent to each plugin in turn and always come back.
        let mut heads = Some(Heads { request: LentRequest::new(parts, self.info.clone()), response: None });

        // Request chain.
        for (i, plugin) in route.chain.iter().enumerate() {
            if !plugin.phases().contains(Phases::REQUEST_HEADERS) {
                continue;
            }
            let t0 = now_ns();
            let result = plugin.on_request(&mut heads, &mut self.held[i]).await;
            let action = self.guard(plugin, "request", t0, result)?;
            if let Some(Action::Respond(r)) = action
                && let Some(resp) = guard(plugin, plugin_reply(r, max, self.grpc))?
            {
                return Ok(resp);
            }
        }
        let Some(Heads { request: mut lent, .. }) = heads.take() else { return Err(lost()) };

        // Request body chain (buffered), or stream it.
        let upstream_body = if route.buffer_request {
            let mut bytes = buffer_request(&lent.parts, body, max).await?;
            lent.freeze();
            let mut heads = Some(Heads { request: lent, response: None });
            for (i, plugin) in route.chain.iter().enumerate() {
                if !plugin.phases().contains(Phases::REQUEST_BODY) {
                    continue;
                }
                let t0 = now_ns();
                let result = plugin.on_request_body(&mut heads, &bytes, &mut self.held[i]).await;
                let action = self.guard(plugin, "request_body", t0, result)?;
                if let Some(resp) = apply_body_action(plugin, action, &mut bytes, max, self.grpc)? {
                    return Ok(resp);
                }
            }
            let Some(Heads { request, .. }) = heads.take() else { return Err(lost()) };
            lent = request;
            lent.parts.headers.remove(header::TRANSFER_ENCODING);
            lent.parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Outgoing::Replayable(bytes)
        } else if self.grpc {
            // A streaming call's messages go on as they come: a client that
            // waits for an answer before sending more must not wait on us.
            Outgoing::Stream(body::boxed(body))
        } else {
            prebuffer(&mut lent.parts.headers, body, self.snap.limits.request_buffer).await?
        };

        // Upstream. The response phases see the request as the chain left
        // it: keep a read-only copy before the head moves upstream.
        let wants_response = route.chain.iter().any(|p| p.phases().contains(Phases::RESPONSE_HEADERS));
        let sent = (wants_response || route.buffer_response).then(|| lent.snapshot());
        let mut parts = lent.parts;
        let is_head = parts.method == Method::HEAD;
        forwarding::add_forwarding(&mut parts.headers, self.info.client.ip(), &self.info.authority, self.info.scheme());
        // The upstream try is a client span: its id is the parent the
        // upstream sees in `traceparent`.
        let try_span = new_span_id();
        self.trace.propagate(&mut parts.headers, &try_span);
        if let Some(upgrade) = &self.upgrade {
            let refused = || ProxyError::UpgradeRefused { route: route.name.clone() };
            match (&route.backend, route.websocket) {
                (Backend::Upstream(u), Some(_)) if u.protocol != UpstreamProtocol::H2 => {
                    tunnel::prepare_request(&mut parts.headers, upgrade);
                }
                _ => return Err(refused()),
            }
        }
        let upstream = match &route.backend {
            Backend::Upstream(upstream) => upstream,
            Backend::Aggregate(agg) => {
                let (info, trace) = (&self.info, &mut self.trace);
                let resp = agg.fetch(&parts, info, trace).await?;
                return self.respond(sent, resp, is_head).await;
            }
        };
        let t0 = now_ns();
        let client_ip = self.info.client.ip();
        let deadline = if self.grpc { grpc::timeout(&parts.headers) } else { None };
        let result = match route.cache.as_ref().and_then(|c| Some((c, c.plan(&parts, &self.info.authority)?))) {
            Some((cache, plan)) => {
                let fetch = upstream.forward(parts, upstream_body, &self.info.authority, client_ip, deadline);
                // Boxed: the cache's future is ~7 KB, and inline it would
                // make every request's future (and each copy of it) larger.
                Box::pin(cache.serve(plan, upstream.timeout, fetch)).await
            }
            None => upstream.forward(parts, upstream_body, &self.info.authority, client_ip, deadline).await,
        };
        self.trace.child(|parent| {
            let mut attributes = vec![("weir.upstream", Value::Str(upstream.name.to_string()))];
            let mut error = None;
            match &result {
                Ok(resp) => {
                    attributes.push(("http.response.status_code", Value::Int(i64::from(resp.status().as_u16()))));
                    if let Some(a) = resp.extensions().get::<Answered>() {
                        attributes.push(("server.address", Value::Str(a.target.to_string())));
                    }
                    if resp.status().is_server_error() {
                        error = Some(format!("answered {}", resp.status().as_u16()));
                    }
                }
                Err(e) => error = Some(e.to_string()),
            }
            Span {
                span_id: try_span,
                parent_id: Some(parent.to_owned()),
                name: format!("upstream {}", upstream.name),
                kind: SpanKind::Client,
                start_ns: t0,
                end_ns: now_ns(),
                attributes,
                error,
            }
        });
        self.respond(sent, result?, is_head).await
    }

    /// The response phases, on the upstream's (or the aggregate's) answer.
    async fn respond(
        &mut self,
        sent: Option<LentRequest>,
        resp: Response<ProxyBody>,
        is_head: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = self.route;
        let max = self.snap.server.max_buffered_body;
        let (mut rparts, rbody) = resp.into_parts();
        forwarding::strip_hop_by_hop(&mut rparts.headers);
        rparts.version = Version::HTTP_11;
        let Some(sent) = sent else {
            return Ok(Response::from_parts(rparts, rbody));
        };

        // Response chain, in reverse order.
        let mut heads = Some(Heads { request: sent, response: Some(LentResponse::new(rparts)) });
        for (i, plugin) in route.chain.iter().enumerate().rev() {
            if !plugin.phases().contains(Phases::RESPONSE_HEADERS) {
                continue;
            }
            let t0 = now_ns();
            let result = plugin.on_response(&mut heads, &mut self.held[i]).await;
            let action = self.guard(plugin, "response", t0, result)?;
            if let Some(Action::Respond(r)) = action
                && let Some(resp) = guard(plugin, plugin_reply(r, max, self.grpc))?
            {
                return Ok(resp);
            }
        }

        // Responses without a body (HEAD, 204, 304) skip the body phases:
        // there is nothing to buffer and their Content-Length must stay.
        let status = heads.as_ref().and_then(|h| h.response.as_ref()).map(|r| r.parts.status);
        let bodyless = is_head
            || matches!(
                status,
                Some(StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS)
            );
        if !route.buffer_response || bodyless {
            let rparts = take_response(&mut heads)?;
            return Ok(Response::from_parts(rparts, rbody));
        }
        let mut bytes = match body::collect(rbody, max as usize).await {
            Ok(bytes) => bytes,
            Err(body::CollectError::TooLarge) => return Err(ProxyError::ResponseBodyTooLarge(max)),
            Err(body::CollectError::Failed(e)) => {
                return Err(ProxyError::Upstream { upstream: route.upstream_name.clone(), detail: e.to_string() });
            }
        };
        if let Some(r) = heads.as_mut().and_then(|h| h.response.as_mut()) {
            r.freeze();
        }
        for (i, plugin) in route.chain.iter().enumerate().rev() {
            if !plugin.phases().contains(Phases::RESPONSE_BODY) {
                continue;
            }
            let t0 = now_ns();
            let result = plugin.on_response_body(&mut heads, &bytes, &mut self.held[i]).await;
            let action = self.guard(plugin, "response_body", t0, result)?;
            if let Some(resp) = apply_body_action(plugin, action, &mut bytes, max, self.grpc)? {
                return Ok(resp);
            }
        }
        let mut rparts = take_response(&mut heads)?;
        rparts.headers.remove(header::TRANSFER_ENCODING);
        rparts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Ok(Response::from_parts(rparts, body::full(bytes)))
    }
}

impl Exchange<'_> {
    /// [`guard`], noting the outcome for the access log and, when the trace
    /// is recorded, as a span of the `phase` call that started at `t0`.
    fn guard<T: Responds>(
        &mut self,
        plugin: &LoadedPlugin,
        phase: &'static str,
        t0: u64,
        result: Result<T, PluginFailure>,
    ) -> Result<Option<T>, ProxyError> {
        let what = match &result {
            Ok(a) if a.responded() => "respond",
            Ok(_) => "ok",
            Err(_) if plugin.spec().failure == FailurePolicy::Open => "skipped",
            Err(_) => "failed",
        };
        self.trace.child(|parent| Span {
            span_id: new_span_id(),
            parent_id: Some(parent.to_owned()),
            name: format!("plugin {} {phase}", plugin.name()),
            kind: SpanKind::Internal,
            start_ns: t0,
            end_ns: now_ns(),
            attributes: vec![
                ("weir.plugin", Value::Str(plugin.name().to_string())),
                ("weir.plugin.module", Value::Str(plugin.spec().module.clone())),
                ("weir.phase", Value::Str(phase.to_owned())),
                ("weir.outcome", Value::Str(what.to_owned())),
            ],
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        if let Some(out) = &mut self.outcomes {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(plugin.name());
            out.push(':');
            out.push_str(what);
        }
        guard(plugin, result)
    }
}

/// Whether a phase's decision answered the client.
trait Responds {
    fn responded(&self) -> bool;
}

impl Responds for Action {
    fn responded(&self) -> bool {
        matches!(self, Action::Respond(_))
    }
}

impl Responds for BodyAction {
    fn responded(&self) -> bool {
        matches!(self, BodyAction::Respond(_))
    }
}

/// The response head back from the plugins.
fn take_response(heads: &mut Option<Heads>) -> Result<http::response::Parts, ProxyError> {
    heads.take().and_then(|h| h.response).map(|r| r.parts).ok_or_else(lost)
}

/// The heads always come back from a phase call; this is the error for the
/// impossible case, rather than a panic on the request path.
fn lost() -> ProxyError {
    ProxyError::Internal("request head lost in a plugin call")
}

/// Read a whole request body, refusing more than `max` bytes. A refused
/// body is drained in the background ([`body::linger`]) so the 413 reaches
/// a client that is still sending.
async fn buffer_request<B>(parts: &Parts, body: B, max: u64) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        body::linger(body);
        return Err(ProxyError::RequestBodyTooLarge(max));
    }
    let mut body = Box::pin(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::RequestBody(Into::<body::BoxError>::into(e).to_string()))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > max {
                body::linger(body);
                return Err(ProxyError::RequestBodyTooLarge(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Read up to `buffer` bytes of a streamed request body before the upstream
/// is called. A body that ends within it is sent whole with a
/// `Content-Length`, so a malformed or cut body is refused (400) before
/// anything reaches the upstream; a longer one streams on after what was
/// read, and a failure later aborts the upstream request midway (the
/// upstream never sees a complete message).
async fn prebuffer<B>(headers: &mut http::HeaderMap, body: B, buffer: u64) -> Result<Outgoing, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<body::BoxError>,
{
    if body.is_end_stream() {
        return Ok(Outgoing::Replayable(Bytes::new()));
    }
    let mut body = Box::pin(body);
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                headers.remove(header::TRANSFER_ENCODING);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(buf.len()));
                return Ok(Outgoing::Replayable(buf.freeze()));
            }
            Some(Err(e)) => return Err(ProxyError::RequestBody(Into::<body::BoxError>::into(e).to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() as u64 > buffer {
                        let rest = body::Prefixed::new(vec![Frame::data(buf.freeze())], body);
                        return Ok(Outgoing::Stream(body::boxed(rest)));
                    }
                }
                // Trailers: nothing more comes but them; stream it all.
                Err(trailers) => {
                    let rest = body::Prefixed::new(vec![Frame::data(buf.freeze()), trailers], body);
                    return Ok(Outgoing::Stream(body::boxed(rest)));
                }
            },
        }
    }
}

fn invalid(msg: String) -> PluginFailure {
    PluginFailure::InvalidOutput(msg)
}

/// A status a plugin may answer with: a final one (200-999).
fn final_status(s: u16) -> Result<StatusCode, PluginFailure> {
    StatusCode::from_u16(s).ok().filter(|s| s.as_u16() >= 200).ok_or_else(|| invalid(format!("invalid status {s}")))
}

/// A body a plugin returned, within the buffer limit.
fn check_body(body: Vec<u8>, max: u64) -> Result<Vec<u8>, PluginFailure> {
    if body.len() as u64 > max {
        return Err(invalid(format!("body of {} bytes exceeds {max}", body.len())));
    }
    Ok(body)
}

/// Apply a plugin's failure policy: `Ok(None)` means "skip this plugin".
/// Invalid output counts as a failure of the plugin, like a trap.
fn guard<T>(plugin: &LoadedPlugin, result: Result<T, PluginFailure>) -> Result<Option<T>, ProxyError> {
    if let Err(PluginFailure::InvalidOutput(_)) = &result {
        plugin.count_invalid();
    }
    match result {
        Ok(v) => Ok(Some(v)),
        Err(failure) if plugin.spec().failure == FailurePolicy::Open => {
            tracing::warn!(plugin = %plugin.name(), %failure, "plugin failed; skipped (failure = \"open\")");
            Ok(None)
        }
        Err(failure) => Err(ProxyError::Plugin { plugin: plugin.name().clone(), failure }),
    }
}

/// Carry out a body phase's decision: replace `bytes`, or return the
/// plugin's own response (`None` from `guard` means the plugin was skipped).
fn apply_body_action(
    plugin: &LoadedPlugin,
    action: Option<BodyAction>,
    bytes: &mut Bytes,
    max: u64,
    grpc: bool,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    match action {
        Some(BodyAction::Continue(Some(new))) => {
            if let Some(new) = guard(plugin, check_body(new, max))? {
                *bytes = new.into();
            }
            Ok(None)
        }
        Some(BodyAction::Respond(r)) => guard(plugin, plugin_reply(r, max, grpc)),
        Some(BodyAction::Continue(None)) | None => Ok(None),
    }
}

/// A plugin's own response, validated; on a gRPC call, as a gRPC error.
fn plugin_reply(r: Reply, max_body: u64, grpc: bool) -> Result<Response<ProxyBody>, PluginFailure> {
    let status = final_status(r.status)?;
    let body = check_body(r.body, max_body)?;
    let headers = forwarding::from_plugin(r.headers).map_err(invalid)?;
    if grpc {
        return Ok(grpc::from_reply(status, &headers, &body));
    }
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The gateway's answer for `err`: a JSON error, or on a gRPC call a gRPC
/// error (HTTP 200, the status in `grpc-status`).
fn error_response(
    metrics: &crate::metrics::RouteMetrics,
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
        // `reply` adds the request id, as to every answer.
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
