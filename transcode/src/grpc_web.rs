//! gRPC-Web ([PROTOCOL-WEB.md]) ↔ gRPC, for browsers that cannot read HTTP
//! trailers.
//!
//! * **Recognise** the request: [`GrpcWebMode::from_headers`] accepts
//!   `application/grpc-web`, `application/grpc-web+proto` (binary) and
//!   `application/grpc-web-text`, `application/grpc-web-text+proto`
//!   (base64); other `+suffixes` (such as `+json`) are not recognised.
//! * **Request**: rewrite the headers with [`prepare_upstream_headers`] and
//!   pass the body through a [`RequestBodyDecoder`]: binary bodies are
//!   already gRPC frames; `-text` bodies are base64, decoded incrementally,
//!   and may be several padded chunks concatenated.
//! * **Response**: set the client headers with [`prepare_response_headers`]
//!   (content type [`GrpcWebMode::response_content_type`]), then pass each
//!   upstream data chunk through [`ResponseEncoder::encode`] and end with
//!   [`ResponseEncoder::finish`], which appends the trailers as a frame with
//!   flags `0x80` and payload `name: value\r\n` lines. A trailers-only
//!   upstream answer (status in the headers, no body) is turned into a
//!   trailers frame too: take its status headers out with
//!   [`take_trailers_only`] and give them to `finish`. In `-text` mode the
//!   encoder base64-encodes as it goes, carrying the 1–2 bytes of an
//!   incomplete 3-byte group to the next chunk; at the end of each gRPC frame
//!   it pads and flushes, so a streamed message is never held back.
//! * **Tests** read a gRPC-Web answer back with [`decode_response`].
//!
//! [PROTOCOL-WEB.md]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

pub use crate::frame::prepare_upstream_headers;
use crate::frame::{FLAG_TRAILERS, FRAME_HEADER_LEN, FrameDecoder, FrameError, encode_frame_with_flags};

/// A gRPC-Web problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcWebError {
    /// A `-text` body is not valid base64.
    #[error("gRPC-Web text body is not valid base64: {0}")]
    InvalidBase64(String),
    /// A `-text` body ended inside a 4-character base64 group.
    #[error("gRPC-Web text body ended inside a base64 group")]
    TruncatedBase64,
    /// The frames are broken.
    #[error("gRPC-Web body: {0}")]
    Frame(#[from] FrameError),
    /// The trailers frame is not `name: value\r\n` lines.
    #[error("gRPC-Web trailers frame is malformed: {0}")]
    InvalidTrailers(String),
    /// A data frame came after the trailers frame.
    #[error("gRPC-Web body has data after the trailers frame")]
    DataAfterTrailers,
}

impl GrpcWebError {
    /// 400 for a request body the client got wrong.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Which gRPC-Web encoding a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcWebMode {
    /// `application/grpc-web[+proto]`: frames as they are.
    Binary,
    /// `application/grpc-web-text[+proto]`: frames in base64.
    Text,
}

impl GrpcWebMode {
    /// Recognises a `content-type` value (parameters such as `; charset=`
    /// are ignored, case-insensitively).
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Some(Self::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(Self::Text),
            _ => None,
        }
    }

    /// Recognises a request by its `content-type` header.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(Self::from_content_type)
    }

    /// The `content-type` to answer with: `application/grpc-web+proto` or
    /// `application/grpc-web-text+proto`.
    pub fn response_content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Binary => "application/grpc-web+proto",
            Self::Text => "application/grpc-web-text+proto",
        })
    }
}

/// Sets the client-facing response headers: the gRPC-Web content type, and
/// no `content-length` (the trailers frame changes the body's size).
pub fn prepare_response_headers(headers: &mut HeaderMap, mode: GrpcWebMode) {
    headers.insert(CONTENT_TYPE, mode.response_content_type());
    headers.remove(CONTENT_LENGTH);
}

/// For a trailers-only upstream answer (its headers carry `grpc-status`),
/// moves `grpc-status`, `grpc-message` and `grpc-status-details-bin` out of
/// `headers` into a trailer map for [`ResponseEncoder::finish`]; `None` if
/// the headers carry no status.
pub fn take_trailers_only(headers: &mut HeaderMap) -> Option<HeaderMap> {
    if !headers.contains_key("grpc-status") {
        return None;
    }
    let mut trailers = HeaderMap::new();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        if let Some(value) = headers.remove(name) {
            trailers.insert(HeaderName::from_static(name), value);
        }
    }
    Some(trailers)
}

/// Incremental base64 decoder for `-text` bodies: accepts any chunking and
/// several concatenated padded base64 strings; ASCII whitespace is skipped.
#[derive(Debug, Default)]
struct Base64Decoder {
    /// Up to 3 characters of an incomplete group.
    pending: Vec<u8>,
}

impl Base64Decoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Bytes, GrpcWebError> {
        let mut input = std::mem::take(&mut self.pending);
        input.extend(chunk.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = input.len() / 4 * 4;
        self.pending = input.split_off(whole);
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Decode run by run: a run ends after a group holding padding.
        let mut from = 0;
        for (i, group) in input.chunks_exact(4).enumerate() {
            let end = (i + 1) * 4;
            if group.contains(&b'=') || end == whole {
                STANDARD
                    .decode_vec(&input[from..end], &mut out)
                    .map_err(|e| GrpcWebError::InvalidBase64(e.to_string()))?;
                from = end;
            }
        }
        Ok(Bytes::from(out))
    }

    fn finish(&self) -> Result<(), GrpcWebError> {
        if self.pending.is_empty() { Ok(()) } else { Err(GrpcWebError::TruncatedBase64) }
    }
}

/// Turns a gRPC-Web request body into a gRPC request body, chunk by chunk.
#[derive(Debug)]
pub struct RequestBodyDecoder {
    mode: GrpcWebMode,
    text: Base64Decoder,
}

impl RequestBodyDecoder {
    /// A decoder for a request in `mode`.
    pub fn new(mode: GrpcWebMode) -> Self {
        Self { mode, text: Base64Decoder::default() }
    }

    /// The gRPC bytes for one body chunk (the chunk itself in binary mode;
    /// possibly empty in text mode while a base64 group is incomplete).
    pub fn decode(&mut self, chunk: Bytes) -> Result<Bytes, GrpcWebError> {
        match self.mode {
            GrpcWebMode::Binary => Ok(chunk),
            GrpcWebMode::Text => self.text.push(&chunk),
        }
    }

    /// Checks the body ended cleanly (no partial base64 group).
    pub fn finish(&self) -> Result<(), GrpcWebError> {
        self.text.finish()
    }
}

/// Turns the upstream gRPC response body and trailers into a gRPC-Web body.
#[derive(Debug)]
pub struct ResponseEncoder {
    mode: GrpcWebMode,
    /// Text mode: 0–2 bytes waiting for a complete 3-byte group.
    carry: Vec<u8>,
    /// Bytes of the current frame header seen so far (0–4).
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    remaining: usize,
}

impl ResponseEncoder {
    /// An encoder answering in `mode`.
    pub fn new(mode: GrpcWebMode) -> Self {
        Self { mode, carry: Vec::new(), header: Vec::with_capacity(FRAME_HEADER_LEN), remaining: 0 }
    }

    /// Encodes one chunk of the upstream body (gRPC frames, any chunking).
    pub fn encode(&mut self, chunk: Bytes) -> Bytes {
        match self.mode {
            GrpcWebMode::Binary => chunk,
            GrpcWebMode::Text => {
                self.track_frames(&chunk);
                let at_boundary = self.header.is_empty() && self.remaining == 0;
                let mut data = std::mem::take(&mut self.carry);
                data.extend_from_slice(&chunk);
                let cut = if at_boundary { data.len() } else { data.len() / 3 * 3 };
                self.carry = data.split_off(cut);
                Bytes::from(STANDARD.encode(&data))
            }
        }
    }

    /// Follows frame boundaries so text mode can flush at the end of each
    /// message.
    fn track_frames(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let need = FRAME_HEADER_LEN - self.header.len();
            let n = need.min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.header.len() == FRAME_HEADER_LEN {
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.remaining = usize::try_from(len).unwrap_or(usize::MAX);
                self.header.clear();
            }
        }
    }

    /// Ends the body: the trailers frame built from `trailers` (the
    /// upstream's HTTP trailers, or [`take_trailers_only`]'s result, or
    /// [`GrpcStatus::to_trailers`](crate::GrpcStatus::to_trailers) for an
    /// error the gateway makes up), after any carried text-mode bytes.
    pub fn finish(&mut self, trailers: &HeaderMap) -> Bytes {
        let frame = trailers_frame(trailers);
        match self.mode {
            GrpcWebMode::Binary => frame,
            GrpcWebMode::Text => {
                let mut data = std::mem::take(&mut self.carry);
                data.extend_from_slice(&frame);
                Bytes::from(STANDARD.encode(&data))
            }
        }
    }
}

/// A binary trailers frame: flags `0x80`, payload `name: value\r\n` for each
/// trailer (names are lower-case, as `http` stores them).
pub fn trailers_frame(trailers: &HeaderMap) -> Bytes {
    let mut payload = Vec::new();
    for (name, value) in trailers {
        payload.extend_from_slice(name.as_str().as_bytes());
        payload.extend_from_slice(b": ");
        payload.extend_from_slice(value.as_bytes());
        payload.extend_from_slice(b"\r\n");
    }
    encode_frame_with_flags(FLAG_TRAILERS, &payload)
}

/// A gRPC-Web response body read back by [`decode_response`].
#[derive(Debug, Clone, Default)]
pub struct GrpcWebResponse {
    /// The message payloads (without frame headers), in order.
    pub messages: Vec<Bytes>,
    /// The trailers frame, if there was one.
    pub trailers: Option<HeaderMap>,
}

/// Reads a whole gRPC-Web response body (for tests and tools): base64 first
/// in text mode, then the data frames and the trailers frame. Frames over
/// `max_message_size` are an error.
pub fn decode_response(
    mode: GrpcWebMode,
    body: &[u8],
    max_message_size: usize,
) -> Result<GrpcWebResponse, GrpcWebError> {
    let raw = match mode {
        GrpcWebMode::Binary => Bytes::copy_from_slice(body),
        GrpcWebMode::Text => {
            let mut decoder = Base64Decoder::default();
            let raw = decoder.push(body)?;
            decoder.finish()?;
            raw
        }
    };
    let mut frames = FrameDecoder::new(max_message_size);
    frames.push(&raw);
    let mut response = GrpcWebResponse::default();
    while let Some(frame) = frames.next_frame()? {
        if response.trailers.is_some() {
            return Err(GrpcWebError::DataAfterTrailers);
        }
        if frame.is_trailers() {
            response.trailers = Some(parse_trailers(&frame.payload)?);
        } else {
            response.messages.push(frame.payload);
        }
    }
    frames.finish()?;
    Ok(response)
}

fn parse_trailers(payload: &[u8]) -> Result<HeaderMap, GrpcWebError> {
    let mut map = HeaderMap::new();
    for line in payload.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or_else(|| {
            GrpcWebError::InvalidTrailers(format!("line without ':': {:?}", String::from_utf8_lossy(line)))
        })?;
        let name = HeaderName::from_bytes(line[..colon].trim_ascii())
            .map_err(|e| GrpcWebError::InvalidTrailers(e.to_string()))?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
            .map_err(|e| GrpcWebError::InvalidTrailers(e.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
