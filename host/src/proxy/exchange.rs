//! One request's trip through its route, after the checks: the request
//! phases, the body (buffered for a body phase, streamed otherwise), the
//! dispatch to the upstream, its cache or the aggregate's parts, and the
//! response phases.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::Body as _;
use weir_config::UpstreamProtocol;
use weir_plugin_host::{ChainData, Heads, LentRequest, LentResponse, OutboundLog, Phases, RequestInfo};

use super::chain::{Chain, Phase};
use super::request_body::{buffer_request, prebuffer};
use super::stream::{self, Side, Streamer};
use super::{grpc, tunnel};
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::headers;
use crate::observe::trace::{Span, SpanKind, Value, new_span_id, now_ns};
use crate::snapshot::{Backend, Route, Snapshot};
use crate::upstream::{Answered, Outgoing, Upstream};

/// One request's trip through a route.
pub(super) struct Exchange<'a> {
    pub(super) snap: &'a Snapshot,
    pub(super) route: &'a Route,
    /// Client, authority, route, request id, path parameters.
    pub(super) info: Arc<RequestInfo>,
    /// The route's plugins as this request runs them; its trace also takes
    /// the upstream's span.
    pub(super) chain: Chain<'a>,
    /// A gRPC call: its own replies are gRPC errors, `grpc-timeout` is the
    /// upstream deadline, and its body streams (no pre-buffering).
    pub(super) grpc: bool,
    /// A WebSocket handshake, and how the client made it.
    pub(super) upgrade: Option<tunnel::Handshake>,
}

impl Exchange<'_> {
    /// The request phases, the body, the dispatch, the response phases.
    /// On a route with CORS (`grpc_web.cors`), a preflight is answered
    /// first, before the plugins: it carries no credentials.
    pub(super) async fn run<B>(&mut self, parts: Parts, body: B) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let route = self.route;
        if let Some(resp) = route.translation.as_ref().and_then(|t| t.preflight(&parts)) {
            return Ok(resp);
        }
        let max = self.snap.server.max_buffered_body;
        // The heads are lent to each plugin in turn and always come back.
        let request = LentRequest::new(parts, self.info.clone());
        let outbound = self.outbound_log();
        let mut heads = Some(Heads { request, response: None, chain: ChainData::default(), outbound });
        if let Some(resp) = self.chain.run(Phase::Request, &mut heads, None).await? {
            return Ok(resp);
        }
        // What the plugins published travels with the heads to every phase.
        let Some(Heads { request: lent, chain, .. }) = heads.take() else { return Err(lost()) };
        // JSON or gRPC-Web on a route that translates them: its own way.
        let (mut lent, mut chain, body) = match self.translate(lent, chain, body).await? {
            Ok(resp) => return Ok(resp),
            Err(untranslated) => untranslated,
        };

        // The request body: buffered for the body phase (whose plugins may
        // still edit the head), streamed through the plugins that take it
        // chunk by chunk, or streamed as it is.
        let upstream_body = if route.buffer_request {
            let bytes = buffer_request(&lent.parts, body, max).await?;
            let bytes = match self.body_phase(lent, chain, bytes).await? {
                Ok((request, published, bytes)) => {
                    (lent, chain) = (request, published);
                    bytes
                }
                Err(resp) => return Ok(resp),
            };
            lent.parts.headers.remove(header::TRANSFER_ENCODING);
            lent.parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Outgoing::Replayable(bytes)
        } else if route.stream_request && !body.is_end_stream() {
            let view =
                Heads { request: lent.snapshot(), response: None, chain: chain.clone(), outbound: self.outbound_log() };
            let streamer =
                Streamer { side: Side::Request, plugins: self.chain.streaming(Side::Request), heads: Some(view), max };
            // The plugins may change its length: sent chunked.
            lent.parts.headers.remove(header::CONTENT_LENGTH);
            Outgoing::Stream(stream::wrap(streamer, body::boxed(body)))
        } else if self.grpc {
            // A streaming call's messages go on as they come: a client that
            // waits for an answer before sending more must not wait on us.
            Outgoing::Stream(body::boxed(body))
        } else {
            prebuffer(&mut lent.parts.headers, body, self.snap.limits.request_buffer).await?
        };

        // The response phases see the request as the chain left it: keep a
        // read-only copy before the head moves upstream.
        let wants_response = self.chain.wants(Phases::RESPONSE_HEADERS);
        let sent = (wants_response || route.buffer_response || route.stream_response).then(|| lent.snapshot());
        let is_head = lent.parts.method == Method::HEAD;
        let resp = self.dispatch(lent.parts, upstream_body).await?;
        self.respond(sent, chain, resp, is_head).await
    }

    /// The request body phase on the whole body: the request, what the
    /// plugins published and the body as they left them, or the answer of
    /// a plugin that answered itself.
    pub(super) async fn body_phase(
        &mut self,
        lent: LentRequest,
        chain: ChainData,
        mut bytes: Bytes,
    ) -> Result<Result<(LentRequest, ChainData, Bytes), Response<ProxyBody>>, ProxyError> {
        let outbound = self.outbound_log();
        let mut heads = Some(Heads { request: lent, response: None, chain, outbound });
        if let Some(resp) = self.chain.run(Phase::RequestBody, &mut heads, Some(&mut bytes)).await? {
            return Ok(Err(resp));
        }
        let Some(Heads { request, chain, .. }) = heads.take() else { return Err(lost()) };
        Ok(Ok((request, chain, bytes)))
    }

    /// Where plugins' outbound calls are noted, joining this request's trace.
    pub(super) fn outbound_log(&self) -> OutboundLog {
        OutboundLog { trace: Some(self.chain.trace.context()), calls: Vec::new() }
    }

    /// Send the request where the route sends it: its upstream (through its
    /// cache, when it has one) or the aggregate's parts.
    pub(super) async fn dispatch(
        &mut self,
        mut parts: Parts,
        body: Outgoing,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = self.route;
        headers::add_forwarding(&mut parts.headers, self.info.client.ip(), &self.info.authority, self.info.scheme());
        // The upstream try is a client span: its id is the parent the
        // upstream sees in `traceparent`.
        let try_span = new_span_id();
        self.chain.trace.propagate(&mut parts.headers, &try_span);
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
            // Boxed, like the cache below: only aggregate routes pay for its future.
            Backend::Aggregate(agg) => return Box::pin(agg.fetch(&parts, &self.info, self.chain.trace)).await,
        };
        let t0 = now_ns();
        let client_ip = self.info.client.ip();
        let deadline = if self.grpc { grpc::timeout(&parts.headers) } else { None };
        let result = match route.cache.as_ref().and_then(|c| Some((c, c.plan(&parts, &self.info.authority)?))) {
            Some((cache, plan)) => {
                let fetch = upstream.forward(parts, body, &self.info.authority, client_ip, deadline);
                // Boxed: the cache's future is ~7 KB, and inline it would
                // make every request's future (and each copy of it) larger.
                Box::pin(cache.serve(plan, upstream.timeout, fetch)).await
            }
            None => upstream.forward(parts, body, &self.info.authority, client_ip, deadline).await,
        };
        self.chain.trace.child(|parent| upstream_span(upstream, &result, try_span, parent, t0));
        result
    }

    /// The response phases, on the upstream's (or the aggregate's) answer.
    pub(super) async fn respond(
        &mut self,
        sent: Option<LentRequest>,
        chain: ChainData,
        resp: Response<ProxyBody>,
        is_head: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let route = self.route;
        let max = self.snap.server.max_buffered_body;
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        rparts.version = Version::HTTP_11;
        let Some(sent) = sent else {
            self.chain.add_all_response_headers(&mut rparts.headers);
            return Ok(Response::from_parts(rparts, rbody));
        };
        let response = Some(LentResponse::new(rparts));
        let mut heads = Some(Heads { request: sent, response, chain, outbound: self.outbound_log() });
        if let Some(resp) = self.chain.run(Phase::Response, &mut heads, None).await? {
            return Ok(resp);
        }

        // Responses without a body (HEAD, 204, 304) skip the body phases:
        // there is nothing to buffer and their Content-Length must stay.
        let status = heads.as_ref().and_then(|h| h.response.as_ref()).map(|r| r.parts.status);
        let bodyless = is_head
            || matches!(
                status,
                Some(StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS)
            );
        if route.stream_response && !route.buffer_response && !bodyless && !rbody.is_end_stream() {
            let Some(Heads { request, response: Some(response), chain, .. }) = heads.take() else { return Err(lost()) };
            let view = Heads { request, response: Some(response.snapshot()), chain, outbound: self.outbound_log() };
            let streamer = Streamer {
                side: Side::Response,
                plugins: self.chain.streaming(Side::Response),
                heads: Some(view),
                max,
            };
            let mut rparts = response.parts;
            // The plugins may change its length: sent chunked (HTTP/1.1).
            rparts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Response::from_parts(rparts, stream::wrap(streamer, rbody)));
        }
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
        if let Some(resp) = self.chain.run(Phase::ResponseBody, &mut heads, Some(&mut bytes)).await? {
            return Ok(resp);
        }
        let mut rparts = take_response(&mut heads)?;
        rparts.headers.remove(header::TRANSFER_ENCODING);
        rparts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Ok(Response::from_parts(rparts, body::full(bytes)))
    }
}

/// The span of one upstream exchange (the tries inside are the upstream's).
fn upstream_span(
    upstream: &Upstream,
    result: &Result<Response<ProxyBody>, ProxyError>,
    span_id: String,
    parent: &str,
    t0: u64,
) -> Span {
    let mut attributes = vec![("weir.upstream", Value::Str(upstream.name.to_string()))];
    let mut error = None;
    match result {
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
        span_id,
        parent_id: Some(parent.to_owned()),
        name: format!("upstream {}", upstream.name),
        kind: SpanKind::Client,
        start_ns: t0,
        end_ns: now_ns(),
        attributes,
        error,
    }
}

/// The response head back from the plugins.
fn take_response(heads: &mut Option<Heads>) -> Result<http::response::Parts, ProxyError> {
    heads.take().and_then(|h| h.response).map(|r| r.parts).ok_or_else(lost)
}

/// The heads always come back from a phase call; this is the error for the
/// impossible case, rather than a panic on the request path.
pub(super) fn lost() -> ProxyError {
    ProxyError::Internal("request head lost in a plugin call")
}
