//! gRPC status: reading it from response headers or trailers, mapping it to
//! an HTTP status, and rendering the JSON error body.
//!
//! The HTTP mapping is the one Envoy's `grpc_json_transcoder` and
//! grpc-gateway use ([`Code::http_status`]). The error body is
//! `{"code": N, "message": "...", "details": [...]}`: `message` is the
//! percent-decoded `grpc-message`, and `details` come from
//! `grpc-status-details-bin` (a base64 `google.rpc.Status`, padded or not),
//! each rendered as a JSON `Any` (`{"@type": "type.googleapis.com/x.Y",
//! ...fields}`) when its type is in the descriptor pool, else as
//! `{"@type": ..., "value": "<base64>"}`.

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// `0 OK`.
    Ok,
    /// `1 CANCELLED`.
    Cancelled,
    /// `2 UNKNOWN`; also what an unrecognised number maps to.
    Unknown,
    /// `3 INVALID_ARGUMENT`.
    InvalidArgument,
    /// `4 DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// `5 NOT_FOUND`.
    NotFound,
    /// `6 ALREADY_EXISTS`.
    AlreadyExists,
    /// `7 PERMISSION_DENIED`.
    PermissionDenied,
    /// `8 RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// `9 FAILED_PRECONDITION`.
    FailedPrecondition,
    /// `10 ABORTED`.
    Aborted,
    /// `11 OUT_OF_RANGE`.
    OutOfRange,
    /// `12 UNIMPLEMENTED`.
    Unimplemented,
    /// `13 INTERNAL`.
    Internal,
    /// `14 UNAVAILABLE`.
    Unavailable,
    /// `15 DATA_LOSS`.
    DataLoss,
    /// `16 UNAUTHENTICATED`.
    Unauthenticated,
}

const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The code for a number; numbers outside `0..=16` are `Unknown`.
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n).ok().and_then(|i| ALL_CODES.get(i).copied()).unwrap_or(Code::Unknown)
    }

    /// The code's number (`NOT_FOUND` is 5).
    pub fn as_i32(self) -> i32 {
        // The enum is declared in numeric order; the position is the number.
        ALL_CODES.iter().position(|c| *c == self).and_then(|i| i32::try_from(i).ok()).unwrap_or(2)
    }

    /// The HTTP status Envoy and grpc-gateway answer with for this code
    /// (`CANCELLED` is nginx's 499 "client closed request").
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Ok => StatusCode::OK,
            Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// The code gRPC clients infer from the HTTP status of a response that
    /// carries no `grpc-status` (gRPC's `http-grpc-status-mapping.md`): for an
    /// upstream that answered with a plain HTTP error.
    pub fn from_http_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    /// The canonical upper-case name (`NOT_FOUND`).
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The status a gRPC call ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcStatus {
    /// The status code.
    pub code: Code,
    /// The percent-decoded `grpc-message` (empty if absent).
    pub message: String,
    /// The raw `google.rpc.Status` bytes from `grpc-status-details-bin`,
    /// base64-decoded, if the upstream sent them.
    pub details: Option<Bytes>,
}

/// Standard base64 that accepts both padded and unpadded input, as gRPC
/// binary headers may be either.
const BASE64_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What `grpc-message` percent-encodes besides non-ASCII: controls and `%`.
const GRPC_MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// The message of the status made up when an upstream sent no `grpc-status`.
pub const MISSING_STATUS_MESSAGE: &str = "upstream gRPC response carried no grpc-status";

impl GrpcStatus {
    /// A status with a code and a message and no details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None }
    }

    /// Reads the status of a finished call.
    ///
    /// `trailers` are the HTTP trailers, if the response had any. The status
    /// is taken from the trailers when they carry `grpc-status`, otherwise
    /// from the response headers (a *trailers-only* response: an error
    /// answered with headers and no body). When neither has one — a broken
    /// upstream or one that is not gRPC — the result is `UNKNOWN` (HTTP 500)
    /// with [`MISSING_STATUS_MESSAGE`]; an unparseable `grpc-status` is
    /// `UNKNOWN` too, saying so.
    pub fn from_headers(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Self {
        let source = match trailers {
            Some(t) if t.contains_key("grpc-status") => t,
            _ if headers.contains_key("grpc-status") => headers,
            _ => return Self::new(Code::Unknown, MISSING_STATUS_MESSAGE),
        };
        let raw = source.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("").trim();
        let Ok(number) = raw.parse::<i32>() else {
            return Self::new(Code::Unknown, format!("upstream sent an invalid grpc-status {raw:?}"));
        };
        let message = source
            .get("grpc-message")
            .map(|v| percent_decode_str(&String::from_utf8_lossy(v.as_bytes())).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        let details = source
            .get("grpc-status-details-bin")
            .and_then(|v| BASE64_ANY_PAD.decode(v.as_bytes().trim_ascii()).ok())
            .map(Bytes::from);
        Self { code: Code::from_i32(number), message, details }
    }

    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// The HTTP status to answer with ([`Code::http_status`]).
    pub fn http_status(&self) -> StatusCode {
        self.code.http_status()
    }

    /// The status as gRPC trailers: `grpc-status`, `grpc-message`
    /// (percent-encoded as the gRPC spec says) when not empty, and
    /// `grpc-status-details-bin` (unpadded base64) when there are details.
    /// For gRPC-Web answers the gateway makes up itself (e.g. the upstream is
    /// unreachable).
    pub fn to_trailers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from(self.code.as_i32()));
        if !self.message.is_empty() {
            let encoded = utf8_percent_encode(&self.message, GRPC_MESSAGE_ESCAPES).to_string();
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                map.insert("grpc-message", value);
            }
        }
        if let Some(details) = &self.details
            && let Ok(value) = HeaderValue::from_str(&general_purpose::STANDARD_NO_PAD.encode(details))
        {
            map.insert("grpc-status-details-bin", value);
        }
        map
    }

    /// The JSON error body `{"code", "message", "details"}` as a
    /// [`serde_json::Value`]. `pool` resolves detail types; see the module
    /// docs for how details are rendered.
    pub fn to_json_value(&self, pool: Option<&DescriptorPool>) -> Value {
        let details = self.details.as_deref().map(|b| render_details(b, pool)).unwrap_or_default();
        let mut map = Map::new();
        map.insert("code".into(), Value::from(self.code.as_i32()));
        map.insert("message".into(), Value::from(self.message.clone()));
        map.insert("details".into(), Value::Array(details));
        Value::Object(map)
    }

    /// The JSON error body as bytes, for a response with `content-type:
    /// application/json`.
    pub fn to_json(&self, pool: Option<&DescriptorPool>) -> Bytes {
        Bytes::from(self.to_json_value(pool).to_string())
    }
}

/// `google.rpc.Status`, decoded without needing it in the pool.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// Renders the details of a `google.rpc.Status`; undecodable bytes give no
/// details rather than hiding the status itself.
fn render_details(bytes: &[u8], pool: Option<&DescriptorPool>) -> Vec<Value> {
    let Ok(status) = RpcStatus::decode(bytes) else {
        return Vec::new();
    };
    status.details.iter().map(|any| render_any(any, pool)).collect()
}

fn render_any(any: &RpcAny, pool: Option<&DescriptorPool>) -> Value {
    let mut map = Map::new();
    map.insert("@type".into(), Value::from(any.type_url.clone()));
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let decoded = pool
        .and_then(|p| p.get_message_by_name(type_name))
        .and_then(|desc| DynamicMessage::decode(desc, any.value.clone()).ok())
        .and_then(|msg| msg.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new()).ok());
    match decoded {
        Some(Value::Object(fields)) => map.extend(fields),
        // Well-known types with a non-object JSON form go under "value", as in
        // the proto3 JSON mapping of Any.
        Some(other) => {
            map.insert("value".into(), other);
        }
        None => {
            map.insert("value".into(), Value::from(general_purpose::STANDARD.encode(&any.value)));
        }
    }
    Value::Object(map)
}

#[cfg(test)]
pub(crate) fn encode_rpc_status_for_tests(code: i32, message: &str, details: &[(&str, Vec<u8>)]) -> Vec<u8> {
    RpcStatus {
        code,
        message: message.into(),
        details: details
            .iter()
            .map(|(url, value)| RpcAny { type_url: (*url).into(), value: Bytes::from(value.clone()) })
            .collect(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests;
