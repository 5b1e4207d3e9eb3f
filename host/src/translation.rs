//! Protocol translation on a route, as built with a snapshot: the
//! `grpc_transcode` transcoder and the `grpc_web` settings with their CORS
//! answers, and the bodies that turn an upstream's gRPC answer into JSON
//! (NDJSON for streams) or gRPC-Web. The bytes are rewritten by
//! `weir-transcode`; the request path that uses all this is
//! `proxy::transcode`, whose docs say where it sits.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use weir_config::{CorsConfig, DEFAULT_CORS_HEADERS, GrpcTranscodeConfig, GrpcWebConfig, files};
use weir_transcode::grpc_web::{self, GrpcWebMode, ResponseEncoder};
use weir_transcode::{
    Code, GrpcStatus, JSON_CONTENT_TYPE, JsonOptions, ResponseTranscoder, Transcoder, TranscoderConfig,
};

use crate::body::{self, BoxError, ProxyBody};
use crate::error::ProxyError;

/// A route's protocol translation, built with its snapshot.
pub(crate) struct Translation {
    /// JSON/HTTP → gRPC, with `grpc_transcode`.
    transcoder: Option<Arc<Transcoder>>,
    /// Whether gRPC-Web requests are translated (`grpc_web`).
    web: bool,
    /// `grpc_web.cors`.
    cors: Option<Cors>,
    /// The descriptor file read, watched for reloads.
    pub(crate) descriptors: Option<PathBuf>,
}

/// What a request on a translating route is.
pub(crate) enum Kind<'t> {
    /// JSON/HTTP to transcode.
    Json(&'t Arc<Transcoder>),
    /// gRPC-Web to translate.
    Web(GrpcWebMode),
    /// Anything else (gRPC itself): proxied as it is.
    Plain,
}

impl Translation {
    /// Build what route `route` configures, reading the descriptor file
    /// (relative to `base`) off the runtime threads. `max_message` caps one
    /// upstream response message. The error names the file and the reason.
    pub(crate) async fn build(
        transcode: Option<&GrpcTranscodeConfig>,
        web: Option<&GrpcWebConfig>,
        base: &Path,
        max_message: usize,
    ) -> Result<Option<Self>, String> {
        if transcode.is_none() && web.is_none() {
            return Ok(None);
        }
        let cors = match web.and_then(|w| w.cors.as_ref()) {
            Some(c) => Some(Cors::new(c)?),
            None => None,
        };
        let (transcoder, descriptors) = match transcode {
            None => (None, None),
            Some(t) => {
                t.check()?;
                let file = base.join(&t.descriptors);
                let config = TranscoderConfig {
                    services: t.services.clone(),
                    max_descriptor_size: usize::try_from(t.max_descriptor_size).unwrap_or(usize::MAX),
                    max_response_message_size: max_message,
                    json: JsonOptions {
                        emit_defaults: t.emit_defaults,
                        preserve_proto_field_names: t.preserve_proto_field_names,
                        ignore_unknown_fields: t.ignore_unknown_fields,
                        ignore_unknown_query_parameters: t.ignore_unknown_query_parameters,
                    },
                };
                let (path, cap) = (file.clone(), t.max_descriptor_size);
                // Reading and parsing a descriptor set is blocking work.
                let built = tokio::task::spawn_blocking(move || {
                    let bytes = files::read_bounded(&path, cap, None).map_err(|e| match e {
                        files::FileError::Read(e) => format!("cannot read {}: {e}", path.display()),
                        other => format!("{} {other}", path.display()),
                    })?;
                    Transcoder::new(&bytes, config).map_err(|e| format!("{}: {e}", path.display()))
                })
                .await
                .map_err(|e| format!("{}: {e}", file.display()))?;
                (Some(Arc::new(built.map_err(|e| format!("grpc_transcode: {e}"))?)), Some(file))
            }
        };
        Ok(Some(Self { transcoder, web: web.is_some(), cors, descriptors }))
    }

    /// What the request whose head (as the chain left it) is `headers` is;
    /// `is_grpc` when it is gRPC already.
    pub(crate) fn kind(&self, headers: &HeaderMap, is_grpc: bool) -> Kind<'_> {
        if is_grpc {
            return Kind::Plain;
        }
        if self.web
            && let Some(mode) = GrpcWebMode::from_headers(headers)
        {
            return Kind::Web(mode);
        }
        match &self.transcoder {
            Some(t) => Kind::Json(t),
            None => Kind::Plain,
        }
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), if this is one and CORS is on.
    pub(crate) fn preflight(&self, parts: &Parts) -> Option<Response<ProxyBody>> {
        let cors = self.cors.as_ref()?;
        if parts.method != Method::OPTIONS || !parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = parts.headers.get(header::ORIGIN)?;
        // `vary: origin` is added with the other CORS headers of every answer.
        let mut resp = Response::new(body::empty());
        let Some(allowed) = cors.allow(origin) else {
            *resp.status_mut() = StatusCode::FORBIDDEN;
            return Some(resp);
        };
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.clone());
        if let Some(age) = &cors.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if cors.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        Some(resp)
    }

    /// Adds the CORS headers of an answer to a request from `origin`, when
    /// that origin is allowed.
    pub(crate) fn add_cors(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let (Some(cors), Some(origin)) = (&self.cors, origin) else { return };
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        let Some(allowed) = cors.allow(origin) else { return };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, cors.expose.clone());
        if cors.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// `grpc_web.cors`, as header values ready to send.
struct Cors {
    /// Exact origins; empty with `any`.
    origins: Vec<String>,
    /// `"*"` is among the origins.
    any: bool,
    allow_headers: HeaderValue,
    expose: HeaderValue,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl Cors {
    fn new(c: &CorsConfig) -> Result<Self, String> {
        c.check()?;
        let value = |list: Vec<String>, key: &str| {
            HeaderValue::try_from(list.join(", "))
                .map_err(|_| format!("grpc_web.cors: `{key}` holds a bad header name"))
        };
        let allow = match &c.allow_headers {
            Some(list) => list.clone(),
            None => DEFAULT_CORS_HEADERS.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut expose = vec!["grpc-status".to_owned(), "grpc-message".to_owned()];
        expose.extend(c.expose_headers.iter().cloned());
        for name in allow.iter().chain(&expose) {
            HeaderName::try_from(name.as_str()).map_err(|_| format!("grpc_web.cors: {name:?} is not a header name"))?;
        }
        Ok(Self {
            origins: c.allow_origins.iter().filter(|o| *o != "*").map(|o| o.to_ascii_lowercase()).collect(),
            any: c.allow_origins.iter().any(|o| o == "*"),
            allow_headers: value(allow, "allow_headers")?,
            expose: value(expose, "expose_headers")?,
            max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
            credentials: c.allow_credentials,
        })
    }

    /// The `access-control-allow-origin` for `origin`, if it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(text)) {
            return Some(origin.clone());
        }
        self.any.then(|| HeaderValue::from_static("*"))
    }
}

/// A JSON answer of the gateway's own.
pub(crate) fn json_reply(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    resp
}

/// The client-facing head for a translated answer: the upstream's metadata
/// headers, without gRPC's own and without framing.
fn answer_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let framing = matches!(
            name.as_str(),
            "content-type" | "content-length" | "transfer-encoding" | "te" | "trailer" | "content-encoding"
        );
        if !framing && !name.as_str().starts_with("grpc-") {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The JSON answer for the upstream's gRPC answer: whole for a unary call
/// or an error, NDJSON streaming from the first line for a stream.
pub(crate) async fn json_answer(
    resp: Response<ProxyBody>,
    mut transcoder: ResponseTranscoder,
    t: Arc<Transcoder>,
    upstream: &Arc<str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, mut body) = resp.into_parts();
    let broken = |detail: String| ProxyError::Upstream { upstream: upstream.clone(), detail };
    let mut headers = answer_headers(&parts.headers);
    let mut reply = |status: StatusCode, content_type: HeaderValue, body: ProxyBody| {
        headers.insert(header::CONTENT_TYPE, content_type);
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = std::mem::take(&mut headers);
        *resp.extensions_mut() = parts.extensions.clone();
        resp
    };
    // Not a gRPC answer at all (a proxy's error page, say).
    if parts.status != StatusCode::OK && !parts.headers.contains_key("grpc-status") {
        let code = Code::from_http_status(parts.status);
        let status =
            GrpcStatus::new(code, format!("upstream answered HTTP {} without a gRPC status", parts.status.as_u16()));
        return Ok(reply(
            status.http_status(),
            HeaderValue::from_static(JSON_CONTENT_TYPE),
            body::full(status.to_json(None)),
        ));
    }
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| broken(e.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                let lines = transcoder.push(&data).map_err(|e| broken(e.to_string()))?;
                if !lines.is_empty() {
                    // A stream's first line: the head goes now, with it.
                    let content_type = transcoder.content_type();
                    let stream = Ndjson {
                        first: Some(lines),
                        inner: body,
                        transcoder: Some(transcoder),
                        headers: parts.headers.clone(),
                        trailers: None,
                        t,
                    };
                    return Ok(reply(StatusCode::OK, content_type, body::boxed(stream)));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let done =
        transcoder.finish(&parts.headers, trailers.as_ref(), Some(t.pool())).map_err(|e| broken(e.to_string()))?;
    let length = HeaderValue::from(done.body.len());
    let mut resp = reply(done.http_status, done.content_type, body::full(done.body));
    resp.headers_mut().insert(header::CONTENT_LENGTH, length);
    Ok(resp)
}

/// A server-streaming answer as NDJSON: each complete message becomes a
/// line as it arrives; the call's failure, if any, a last `{"error": …}`
/// line. Holds at most one message being received.
struct Ndjson {
    /// The line(s) read before the head was sent.
    first: Option<Bytes>,
    inner: ProxyBody,
    /// `None` once the body has ended.
    transcoder: Option<ResponseTranscoder>,
    /// The upstream's response headers (a status may be there).
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    t: Arc<Transcoder>,
}

impl Ndjson {
    /// The last line for a stream that broke: the client already has a 200.
    fn broken(&mut self, code: Code, message: String) -> Frame<Bytes> {
        self.transcoder = None;
        let mut line = serde_json::json!({ "error": GrpcStatus::new(code, message).to_json_value(None) }).to_string();
        line.push('\n');
        Frame::data(Bytes::from(line))
    }
}

impl Body for Ndjson {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            let Some(transcoder) = this.transcoder.as_mut() else { return Poll::Ready(None) };
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match transcoder.push(&data) {
                        Ok(lines) if lines.is_empty() => {}
                        Ok(lines) => return Poll::Ready(Some(Ok(Frame::data(lines)))),
                        Err(e) => return Poll::Ready(Some(Ok(this.broken(Code::Internal, e.to_string())))),
                    },
                    Err(frame) => this.trailers = frame.into_trailers().ok(),
                },
                Some(Err(e)) => {
                    let message = format!("upstream stream failed: {e}");
                    return Poll::Ready(Some(Ok(this.broken(Code::Unavailable, message))));
                }
                None => {
                    let Some(transcoder) = this.transcoder.take() else { return Poll::Ready(None) };
                    return match transcoder.finish(&this.headers, this.trailers.as_ref(), Some(this.t.pool())) {
                        Ok(done) if done.body.is_empty() => Poll::Ready(None),
                        Ok(done) => Poll::Ready(Some(Ok(Frame::data(done.body)))),
                        Err(e) => Poll::Ready(Some(Ok(this.broken(Code::Internal, e.to_string())))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.transcoder.is_none()
    }
}

/// The gRPC-Web answer for the upstream's gRPC answer.
pub(crate) fn web_answer(resp: Response<ProxyBody>, mode: GrpcWebMode) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::OK && !parts.headers.contains_key("grpc-status") {
        let code = Code::from_http_status(parts.status);
        let message = format!("upstream answered HTTP {} without a gRPC status", parts.status.as_u16());
        return web_error(mode, &GrpcStatus::new(code, message));
    }
    parts.headers.remove(header::TRAILER);
    grpc_web::prepare_response_headers(&mut parts.headers, mode);
    let mut encoder = ResponseEncoder::new(mode);
    let body = match grpc_web::take_trailers_only(&mut parts.headers) {
        Some(trailers) => body::full(encoder.finish(&trailers)),
        None => body::boxed(WebBody { inner: body, encoder, headers: parts.headers.clone(), done: false }),
    };
    Response::from_parts(parts, body)
}

/// A gRPC-Web error answer: HTTP 200, the status in a trailers frame (and,
/// for clients that read it there, in the headers too).
pub(crate) fn web_error(mode: GrpcWebMode, status: &GrpcStatus) -> Response<ProxyBody> {
    let trailers = status.to_trailers();
    let mut resp = Response::new(body::full(ResponseEncoder::new(mode).finish(&trailers)));
    let h = resp.headers_mut();
    h.extend(trailers);
    grpc_web::prepare_response_headers(h, mode);
    resp
}

/// The upstream's gRPC body with its trailers appended as a gRPC-Web
/// trailers frame (base64 as it goes in `-text` mode).
struct WebBody {
    inner: ProxyBody,
    encoder: ResponseEncoder,
    /// The upstream's response headers, for a status when no trailers come.
    headers: HeaderMap,
    done: bool,
}

impl Body for WebBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.encoder.encode(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.done = true;
                            return Poll::Ready(Some(Ok(Frame::data(this.encoder.finish(&trailers)))));
                        }
                    }
                },
                // Mid-frame, a trailers frame would corrupt the body: abort.
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let trailers = GrpcStatus::from_headers(&this.headers, None).to_trailers();
                    return Poll::Ready(Some(Ok(Frame::data(this.encoder.finish(&trailers)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;
