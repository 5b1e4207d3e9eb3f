//! # weir-transcode
//!
//! Protocol translation for the weir gateway: JSON/HTTP ↔ gRPC transcoding
//! (as Envoy's `grpc_json_transcoder` and grpc-gateway do) and gRPC-Web ↔
//! gRPC. It is a plain library with no I/O: the gateway reads files, moves
//! bodies and sets headers; this crate decides routes and rewrites bytes.
//!
//! ## Transcoding a unary call
//!
//! ```no_run
//! # fn demo(descriptor_set: &[u8], upstream_headers: &http::HeaderMap, upstream_body: &[u8],
//! #         upstream_trailers: Option<&http::HeaderMap>) -> Result<(), Box<dyn std::error::Error>> {
//! use weir_transcode::{Transcoder, TranscoderConfig};
//!
//! // At configuration load (off the async runtime: it parses the descriptor set).
//! let transcoder = Transcoder::new(descriptor_set, TranscoderConfig::new(["shop.v1.Orders"]))?;
//!
//! // Per request: match, then build the upstream body (a `RequestError` is a 400).
//! let Some(call) = transcoder.route(&http::Method::GET, "/v1/orders/42", Some("include_items=true")) else {
//!     return Ok(()); // 404: not a transcoded path
//! };
//! let grpc_body = call.encode_request(b"")?;
//! // ...send POST `call.grpc_path()` with `grpc_body`, after
//! // `weir_transcode::prepare_upstream_headers(&mut headers)`...
//!
//! // The answer: feed the body, then finish with headers and trailers.
//! let mut response = call.response_transcoder();
//! response.push(upstream_body)?;
//! let done = response.finish(upstream_headers, upstream_trailers, Some(transcoder.pool()))?;
//! // answer `done.http_status`, `content-type: done.content_type`, body `done.body`
//! # Ok(()) }
//! ```
//!
//! A server-streaming call is the same, except that each `push` returns
//! NDJSON lines to forward at once, and `finish` returns a last line only
//! if the call failed midway (see [`response`](crate::ResponseTranscoder)).
//!
//! ## gRPC-Web
//!
//! No descriptors needed; per request (details in [`grpc_web`]):
//!
//! 1. `let Some(mode) = GrpcWebMode::from_headers(req.headers())` — else not gRPC-Web;
//! 2. [`prepare_upstream_headers`] on the request headers; the path stays;
//! 3. each body chunk through [`RequestBodyDecoder::decode`], then `finish()`
//!    (a [`GrpcWebError`] there is a 400);
//! 4. on the answer: [`grpc_web::prepare_response_headers`]; if
//!    [`grpc_web::take_trailers_only`] returns trailers, the body is just
//!    `encoder.finish(&those)`; else each upstream data chunk through
//!    [`ResponseEncoder::encode`] and, at the end, `encoder.finish(&trailers)`
//!    (or `GrpcStatus::from_headers(..).to_trailers()` if the upstream sent
//!    none). The client-facing response has no HTTP trailers.
//!
//! CORS (preflight, `access-control-expose-headers: grpc-status,
//! grpc-message`) is the gateway's configuration, not this crate's.
//!
//! ## Descriptor sets
//!
//! The transcoder reads a compiled `FileDescriptorSet` built with its
//! imports: `protoc --include_imports --descriptor_set_out=api.pb …`,
//! `python3 -m grpc_tools.protoc` (same flags) or `buf build -o api.pb`.
//! grpcio-tools ships `google/protobuf/*.proto` on its include path but not
//! `google/api/annotations.proto`, `google/api/http.proto` or
//! `google/rpc/status.proto`: vendor them from googleapis (Apache-2.0) next
//! to your protos, as `tests/protos/` does here (`tests/protos/regenerate.sh`
//! shows the command). Methods without `google.api.http` rules are still
//! reachable as `POST /package.Service/Method` with a JSON body.
//!
//! ## Out of scope
//!
//! Client-streaming and bidirectional methods are not transcoded: they get
//! no route, and one with an HTTP rule in a selected service is a load
//! error. Compressed gRPC messages (`grpc-encoding`) are refused; the
//! gateway keeps upstreams from compressing by not forwarding
//! `grpc-accept-encoding`. `HttpBody` responses are rendered as JSON like
//! any message.
//!
//! ## Where the limits are
//!
//! * descriptor set: [`TranscoderConfig::max_descriptor_size`] (the gateway
//!   should read the file with the same bound);
//! * request body: capped by the gateway before [`RouteMatch::encode_request`];
//!   JSON nesting is capped at 128 by `serde_json`;
//! * one upstream response message: [`TranscoderConfig::max_response_message_size`];
//! * [`FrameDecoder`] and [`decode_response`] take their own caps.

#![deny(missing_docs)]

mod descriptors;
mod frame;
pub mod grpc_web;
mod request;
mod response;
mod router;
mod rules;
mod status;
mod transcoder;

#[cfg(test)]
mod test_support;

pub use descriptors::{DEFAULT_MAX_DESCRIPTOR_SIZE, LoadError, decode_descriptor_set};
pub use frame::{
    DEFAULT_MAX_MESSAGE_SIZE, FLAG_COMPRESSED, FLAG_TRAILERS, FRAME_HEADER_LEN, Frame, FrameDecoder, FrameError,
    encode_frame, prepare_upstream_headers,
};
pub use grpc_web::{GrpcWebError, GrpcWebMode, GrpcWebResponse, RequestBodyDecoder, ResponseEncoder, decode_response};
pub use request::RequestError;
pub use response::{Finished, JSON_CONTENT_TYPE, NDJSON_CONTENT_TYPE, ResponseError, ResponseTranscoder};
pub use status::{Code, GrpcStatus, MISSING_STATUS_MESSAGE};
pub use transcoder::{JsonOptions, RouteInfo, RouteMatch, Transcoder, TranscoderConfig};

/// Re-exported so callers can name the message types this crate returns
/// ([`RouteMatch::request_message`], [`Transcoder::pool`]) without pinning
/// their own `prost-reflect` version.
pub use prost_reflect;
