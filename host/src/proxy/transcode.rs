//! Protocol translation on a route: JSON/HTTP → gRPC (`grpc_transcode`)
//! and gRPC-Web → gRPC (`grpc_web`), with CORS for browsers. The bytes are
//! rewritten by `weir-transcode`; this room moves them.
//!
//! Where it sits on the path: a CORS preflight is answered before the
//! plugins (a preflight carries no credentials for them to check). Every
//! other request runs the request phases as usual — on the JSON or
//! gRPC-Web request as the client sent it — and then, if the route
//! translates it:
//!
//! * **JSON**: the body is read whole (up to `server.max_buffered_body`,
//!   through the plugins that stream request bodies, then the body phase if
//!   a plugin wants it), the request as the chain
//!   left it is matched against the HTTP rules (404, or 405 when the path is
//!   bound under another method, as a JSON error body), encoded as one gRPC
//!   message (400 naming the field when the JSON is wrong) and POSTed to
//!   `/package.Service/Method` through the route's upstream like any
//!   request (retries, breaker, health, `grpc-timeout` as the deadline). The
//!   answer becomes JSON: a unary call's message, or the error body
//!   `{"code", "message", "details"}` under the HTTP status Envoy maps the
//!   gRPC status to; a server-streaming call's messages as NDJSON lines,
//!   each sent as it arrives (the head waits for the first line, so an error
//!   before any gets its proper status). The response phases then see that
//!   JSON answer.
//! * **gRPC-Web**: the body (a browser cannot stream a request) is read
//!   whole, decoded (base64 in `-text` mode; 400 if broken) and sent as a
//!   gRPC request; the answer streams back with its trailers as the last
//!   frame of the body. Gateway errors become gRPC-Web errors (HTTP 200,
//!   `grpc-status` in the headers), which browsers can read.
//!
//! Requests that are already gRPC are not touched: native clients keep
//! working on the same route.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use weir_plugin_host::{ChainData, Heads, LentRequest, Phases};
use weir_transcode::grpc_web::{self, GrpcWebMode, RequestBodyDecoder};
use weir_transcode::{Code, GrpcStatus, Transcoder};

use super::exchange::Exchange;
use super::grpc;
use super::request_body::buffer_request;
use super::stream::{self, Side, Streamer};
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::translation::{Kind, json_answer, json_reply, web_answer, web_error};
use crate::upstream::Outgoing;

impl Exchange<'_> {
    /// Translates the request if the route does and it is JSON or gRPC-Web
    /// (see the module docs); hands it back otherwise.
    pub(super) async fn translate<B>(
        &mut self,
        lent: LentRequest,
        chain: ChainData,
        body: B,
    ) -> Result<Result<Response<ProxyBody>, (LentRequest, ChainData, B)>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let Some(translation) = self.route.translation.clone() else { return Ok(Err((lent, chain, body))) };
        let is_grpc = self.grpc || grpc::is_grpc(&lent.parts.headers);
        match translation.kind(&lent.parts.headers, is_grpc) {
            Kind::Plain => Ok(Err((lent, chain, body))),
            // Boxed, so translating does not grow every request's future.
            Kind::Json(t) => Box::pin(self.transcode(lent, chain, body, t)).await.map(Ok),
            Kind::Web(mode) => Box::pin(self.grpc_web(lent, chain, body, mode)).await.map(Ok),
        }
    }

    /// Reads the whole body — through the plugins that take it chunk by
    /// chunk, if any — and runs the body phase if a plugin wants it: the
    /// request as it then is, or the phase's own answer.
    async fn read_body<B>(
        &mut self,
        lent: LentRequest,
        chain: ChainData,
        body: B,
    ) -> Result<Result<(LentRequest, ChainData, Bytes), Response<ProxyBody>>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let max = self.snap.server.max_buffered_body;
        let bytes = if self.route.stream_request && !body.is_end_stream() {
            let view =
                Heads { request: lent.snapshot(), response: None, chain: chain.clone(), outbound: self.outbound_log() };
            let plugins = self.chain.streaming(Side::Request);
            let streamer = Streamer { side: Side::Request, plugins, heads: Some(view), max };
            buffer_request(&lent.parts, stream::wrap(streamer, body::boxed(body)), max).await?
        } else {
            buffer_request(&lent.parts, body, max).await?
        };
        if !self.route.buffer_request {
            return Ok(Ok((lent, chain, bytes)));
        }
        self.body_phase(lent, chain, bytes).await
    }

    /// JSON/HTTP → gRPC → JSON.
    async fn transcode<B>(
        &mut self,
        lent: LentRequest,
        chain: ChainData,
        body: B,
        t: &Arc<Transcoder>,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let (lent, chain, bytes) = match self.read_body(lent, chain, body).await? {
            Ok(read) => read,
            Err(answer) => return Ok(answer),
        };
        let (method, uri) = (&lent.parts.method, &lent.parts.uri);
        let Some(call) = t.route(method, uri.path(), uri.query()) else {
            let (status, message) = if t.path_matches_any_method(uri.path()) {
                (StatusCode::METHOD_NOT_ALLOWED, format!("{} is not bound for method {method}", uri.path()))
            } else {
                (StatusCode::NOT_FOUND, format!("no gRPC method is bound to {method} {}", uri.path()))
            };
            let error = GrpcStatus::new(Code::from_http_status(status), message);
            return Ok(json_reply(status, error.to_json(None)));
        };
        let grpc_body = match call.encode_request(&bytes) {
            Ok(b) => b,
            Err(e) => return Ok(json_reply(e.http_status(), e.to_json())),
        };
        let transcoder = call.response_transcoder();
        let path = Uri::try_from(call.grpc_path()).map_err(|_| ProxyError::Internal("gRPC path is not a URI"))?;
        drop(call);
        let sent = self.wants_response().then(|| lent.snapshot());
        let mut parts = lent.parts;
        parts.method = Method::POST;
        parts.uri = path;
        grpc_web::prepare_upstream_headers(&mut parts.headers);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(grpc_body.len()));
        // Upstream, this is a gRPC call: `grpc-timeout` is its deadline.
        self.grpc = true;
        let resp = self.dispatch(parts, Outgoing::Replayable(grpc_body)).await?;
        let resp = json_answer(resp, transcoder, t.clone(), &self.route.upstream_name).await?;
        self.respond(sent, chain, resp, false).await
    }

    /// gRPC-Web → gRPC → gRPC-Web.
    async fn grpc_web<B>(
        &mut self,
        lent: LentRequest,
        chain: ChainData,
        body: B,
        mode: GrpcWebMode,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let (lent, chain, bytes) = match self.read_body(lent, chain, body).await? {
            Ok(read) => read,
            Err(answer) => return Ok(answer),
        };
        let mut decoder = RequestBodyDecoder::new(mode);
        let grpc_body = decoder
            .decode(bytes)
            .and_then(|b| decoder.finish().map(|()| b))
            .map_err(|e| ProxyError::Malformed(e.to_string()))?;
        let sent = self.wants_response().then(|| lent.snapshot());
        let mut parts = lent.parts;
        grpc_web::prepare_upstream_headers(&mut parts.headers);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(grpc_body.len()));
        self.grpc = true;
        let resp = match self.dispatch(parts, Outgoing::Replayable(grpc_body)).await {
            Ok(resp) => web_answer(resp, mode),
            // A browser reads a gRPC-Web error, not an error page.
            Err(e) => {
                tracing::warn!(upstream = %self.route.upstream_name, status = e.status().as_u16(), "gRPC-Web call: {e}");
                let status = GrpcStatus::new(Code::from_i32(grpc::code_for(e.status()) as i32), e.to_string());
                web_error(mode, &status)
            }
        };
        self.respond(sent, chain, resp, false).await
    }

    /// Whether a response phase will want the request as the chain left it.
    fn wants_response(&self) -> bool {
        self.chain.wants(Phases::RESPONSE_HEADERS) || self.route.buffer_response || self.route.stream_response
    }
}
