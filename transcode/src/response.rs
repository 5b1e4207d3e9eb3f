//! Response transcoding: gRPC frames from the upstream → proto3 JSON.
//!
//! A [`ResponseTranscoder`] is made per call by
//! [`RouteMatch::response_transcoder`]. Feed it the upstream body chunks
//! with [`push`](ResponseTranscoder::push) and end with
//! [`finish`](ResponseTranscoder::finish), passing the response headers and
//! trailers; it owns everything it needs (`'static`), so it can live inside
//! a streaming body.
//!
//! * **Unary**: `push` keeps the one message and returns nothing; `finish`
//!   gives the HTTP status and the whole body: the message as JSON (status
//!   200) or the JSON error body (mapped status, see [`crate::status`]).
//! * **Server streaming** is answered as newline-delimited JSON
//!   (`application/x-ndjson`): each message is one JSON object on its own
//!   line, sent as soon as its frame is complete — chosen over a JSON array
//!   because each line is parseable on arrival, and a failure after some
//!   messages can still be reported. `push` returns the complete lines; if
//!   the call then fails, `finish` returns one last line
//!   `{"error": {"code": …, "message": …, "details": […]}}` (the HTTP status
//!   was already sent). If it fails before any message, `finish` gives the
//!   mapped status and the plain error body, as for unary calls — so a
//!   gateway that holds the response head until the first line or the end
//!   can still answer a proper HTTP error.
//!
//! `response_body: "field"` answers with that field's JSON instead of the
//! whole message. Compressed frames are refused ([`ResponseError::Compressed`]).

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _, SerializeOptions,
};
use serde_json::{Map, Value};

use crate::frame::{FrameDecoder, FrameError};
use crate::status::{Code, GrpcStatus};
use crate::transcoder::{JsonOptions, RouteMatch};

/// `content-type` of a unary answer and of every error body.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// `content-type` of a server-streaming answer.
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";

/// The upstream's answer could not be transcoded: the gateway answers 502.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The body's framing is broken (truncated, or a frame over the cap).
    #[error("upstream gRPC response: {0}")]
    Frame(#[from] FrameError),
    /// A compressed frame: this crate supports no `grpc-encoding`.
    #[error("upstream sent a compressed gRPC message, which the transcoder does not support")]
    Compressed,
    /// A frame with flags other than 0 (e.g. a gRPC-Web trailers frame).
    #[error("upstream sent a gRPC frame with unexpected flags {0:#04x}")]
    UnexpectedFlags(u8),
    /// The payload is not a valid message of the method's output type.
    #[error("upstream sent a message that is not a valid {type_name}: {message}")]
    Decode {
        /// The expected message type.
        type_name: String,
        /// The protobuf decode error.
        message: String,
    },
    /// The message has no JSON form (e.g. an `Any` of an unknown type).
    #[error("upstream message cannot be converted to JSON: {0}")]
    Json(String),
    /// A unary call answered with more than one message.
    #[error("upstream sent more than one message for a unary call")]
    TooManyMessages,
    /// A unary call ended OK with no message.
    #[error("upstream ended a unary call with status OK but no message")]
    MissingMessage,
}

impl ResponseError {
    /// The HTTP status to answer with: 502 Bad Gateway.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::BAD_GATEWAY
    }

    /// The JSON error body (`{"code": 13, "message": …, "details": []}`).
    pub fn to_json(&self) -> Bytes {
        GrpcStatus::new(Code::Internal, self.to_string()).to_json(None)
    }
}

/// How a call ended, from [`ResponseTranscoder::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The gRPC status of the call.
    pub status: GrpcStatus,
    /// The HTTP status to answer with, if the response head has not been
    /// sent yet (for a stream that already sent lines it is 200, whatever the
    /// gRPC status).
    pub http_status: StatusCode,
    /// What to send last: the whole body of a unary answer or of an error
    /// answered before any line; the error line of a stream that failed
    /// midway; empty for a stream that ended OK.
    pub body: Bytes,
    /// The `content-type` that goes with `http_status` and `body`.
    pub content_type: HeaderValue,
}

/// Turns one call's upstream gRPC response into JSON. See the module docs.
#[derive(Debug)]
pub struct ResponseTranscoder {
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    streaming: bool,
    options: JsonOptions,
    decoder: FrameDecoder,
    /// The unary reply, kept for `finish`.
    unary: Option<Bytes>,
    lines_sent: usize,
}

impl RouteMatch<'_> {
    /// The transcoder for this call's response.
    pub fn response_transcoder(&self) -> ResponseTranscoder {
        let config = self.transcoder.config();
        ResponseTranscoder {
            output: self.method().output(),
            response_body: self.route.binding.response_body.clone(),
            streaming: self.is_server_streaming(),
            options: config.json.clone(),
            decoder: FrameDecoder::new(config.max_response_message_size),
            unary: None,
            lines_sent: 0,
        }
    }
}

impl ResponseTranscoder {
    /// The `content-type` of a successful answer: `application/json`, or
    /// `application/x-ndjson` for a server-streaming method.
    pub fn content_type(&self) -> HeaderValue {
        HeaderValue::from_static(if self.streaming { NDJSON_CONTENT_TYPE } else { JSON_CONTENT_TYPE })
    }

    /// Whether the method streams (NDJSON).
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// How many NDJSON lines `push` has returned so far.
    pub fn lines_sent(&self) -> usize {
        self.lines_sent
    }

    /// Feeds one chunk of the upstream body. Returns the JSON to send now:
    /// complete NDJSON lines for a stream, always empty for a unary call.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, ResponseError> {
        self.decoder.push(chunk);
        let mut out = BytesMut::new();
        while let Some(frame) = self.decoder.next_frame()? {
            if frame.is_compressed() {
                return Err(ResponseError::Compressed);
            }
            if frame.flags != 0 {
                return Err(ResponseError::UnexpectedFlags(frame.flags));
            }
            if self.streaming {
                out.extend_from_slice(&self.message_to_json(frame.payload)?);
                out.extend_from_slice(b"\n");
                self.lines_sent += 1;
            } else if self.unary.replace(frame.payload).is_some() {
                return Err(ResponseError::TooManyMessages);
            }
        }
        Ok(out.freeze())
    }

    /// Ends the call. `headers` are the upstream response headers and
    /// `trailers` its trailers, if any (a trailers-only answer has none).
    /// `pool` resolves the types of error details (pass
    /// [`Transcoder::pool`](crate::Transcoder::pool)).
    ///
    /// An `Err` means the upstream's answer was broken (502); a gRPC error
    /// status is an `Ok` whose `status` is not OK.
    pub fn finish(
        mut self,
        headers: &HeaderMap,
        trailers: Option<&HeaderMap>,
        pool: Option<&DescriptorPool>,
    ) -> Result<Finished, ResponseError> {
        let status = GrpcStatus::from_headers(headers, trailers);
        if !status.is_ok() {
            // A broken tail does not matter once the call failed: report the
            // upstream's status.
            return Ok(self.error(status, pool));
        }
        self.decoder.finish()?;
        if self.streaming {
            return Ok(Finished {
                status,
                http_status: StatusCode::OK,
                body: Bytes::new(),
                content_type: self.content_type(),
            });
        }
        let payload = self.unary.take().ok_or(ResponseError::MissingMessage)?;
        let body = self.message_to_json(payload)?;
        Ok(Finished { status, http_status: StatusCode::OK, body, content_type: self.content_type() })
    }

    fn error(&self, status: GrpcStatus, pool: Option<&DescriptorPool>) -> Finished {
        if self.streaming && self.lines_sent > 0 {
            let mut line = Map::new();
            line.insert("error".into(), status.to_json_value(pool));
            let mut body = Value::Object(line).to_string().into_bytes();
            body.push(b'\n');
            return Finished {
                status,
                http_status: StatusCode::OK,
                body: Bytes::from(body),
                content_type: self.content_type(),
            };
        }
        Finished {
            http_status: status.http_status(),
            body: status.to_json(pool),
            status,
            content_type: HeaderValue::from_static(JSON_CONTENT_TYPE),
        }
    }

    /// Decodes one message payload and renders it (or its `response_body`
    /// field) as JSON.
    pub fn message_to_json(&self, payload: Bytes) -> Result<Bytes, ResponseError> {
        let message = DynamicMessage::decode(self.output.clone(), payload).map_err(|e| ResponseError::Decode {
            type_name: self.output.full_name().to_owned(),
            message: e.to_string(),
        })?;
        let options = serialize_options(&self.options);
        let json = match &self.response_body {
            None => {
                let mut ser = serde_json::Serializer::new(Vec::new());
                message.serialize_with_options(&mut ser, &options).map_err(|e| ResponseError::Json(e.to_string()))?;
                ser.into_inner()
            }
            Some(field) => {
                let inner = field_json(&message, field, &options, self.options.preserve_proto_field_names)?;
                serde_json::to_vec(&inner).map_err(|e| ResponseError::Json(e.to_string()))?
            }
        };
        Ok(Bytes::from(json))
    }
}

/// The JSON of one field of `message` (for `response_body`). The JSON
/// mapping is only exposed for whole messages, so a message holding just
/// that field is serialized and the field taken out; an unset field gives
/// its default (`{}` for a message, `[]`, `""`, `0`…).
fn field_json(
    message: &DynamicMessage,
    field: &FieldDescriptor,
    options: &SerializeOptions,
    proto_names: bool,
) -> Result<Value, ResponseError> {
    let json_err = |e: serde_json::Error| ResponseError::Json(e.to_string());
    let key = if proto_names { field.name() } else { field.json_name() };
    let mut only = DynamicMessage::new(message.descriptor());
    only.set_field(field, message.get_field(field).into_owned());
    let value = only.serialize_with_options(serde_json::value::Serializer, options).map_err(json_err)?;
    if let Value::Object(mut map) = value
        && let Some(inner) = map.remove(key)
    {
        return Ok(inner);
    }
    match field.kind() {
        Kind::Message(m) if !field.is_list() && !field.is_map() => {
            DynamicMessage::new(m).serialize_with_options(serde_json::value::Serializer, options).map_err(json_err)
        }
        // Scalars, enums, lists and maps: printing defaults adds only this
        // field, whose default holds no nested message.
        _ => {
            let value = only
                .serialize_with_options(serde_json::value::Serializer, &options.clone().skip_default_fields(false))
                .map_err(json_err)?;
            Ok(match value {
                Value::Object(mut map) => map.remove(key).unwrap_or(Value::Null),
                _ => Value::Null,
            })
        }
    }
}

/// The prost-reflect serializer options for `options`.
pub(crate) fn serialize_options(options: &JsonOptions) -> SerializeOptions {
    SerializeOptions::new()
        .skip_default_fields(!options.emit_defaults)
        .use_proto_field_name(options.preserve_proto_field_names)
}

#[cfg(test)]
mod tests;
