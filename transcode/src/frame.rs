//! The gRPC wire format: length-prefixed message frames, an incremental frame
//! decoder, and the request headers a gRPC upstream expects.
//!
//! Every gRPC message travels as one frame: a flags byte (bit 0 = compressed;
//! gRPC-Web adds bit 7 = trailers), a big-endian `u32` payload length, then
//! the payload. [`encode_frame`] writes one; [`FrameDecoder`] reassembles
//! frames from body chunks of any size without trusting the declared length
//! further than its configured maximum.
//!
//! Compression is not supported: a frame with the compressed bit set is
//! reported by [`Frame::is_compressed`] and the transcoders refuse it with a
//! clear error. Upstreams only compress when the client advertises an
//! encoding, so the gateway should not forward `grpc-accept-encoding` on
//! transcoded calls ([`prepare_upstream_headers`] removes it).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TE};

/// Length of a frame header: one flags byte and a big-endian `u32` length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Flags bit: the payload is compressed with the call's `grpc-encoding`.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flags bit (gRPC-Web only): the payload is the trailers block.
pub const FLAG_TRAILERS: u8 = 0x80;
/// Default cap on one message's payload: 4 MiB, gRPC's own default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// An error in the framing of a gRPC body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body ended in the middle of a frame.
    #[error("gRPC body ended inside a frame ({buffered} bytes of an incomplete frame)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// A frame declared a payload larger than the configured maximum.
    #[error("gRPC frame of {declared} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge {
        /// The length the frame header declared.
        declared: u64,
        /// The configured maximum.
        max: usize,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The flags byte ([`FLAG_COMPRESSED`], [`FLAG_TRAILERS`]).
    pub flags: u8,
    /// The payload, without the 5-byte header.
    pub payload: Bytes,
}

impl Frame {
    /// Whether the compressed bit is set.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Whether this is a gRPC-Web trailers frame (bit 7 set).
    pub fn is_trailers(&self) -> bool {
        self.flags & FLAG_TRAILERS != 0
    }
}

/// Frames `payload` as one uncompressed gRPC message (flags `0`).
///
/// A frame cannot carry 4 GiB or more; callers cap bodies far below that
/// (the length field would saturate).
pub fn encode_frame(payload: &[u8]) -> Bytes {
    encode_frame_with_flags(0, payload)
}

/// Frames `payload` with the given flags byte.
pub(crate) fn encode_frame_with_flags(flags: u8, payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.put_u8(flags);
    out.put_u32(len);
    out.put_slice(payload);
    out.freeze()
}

/// Reassembles gRPC frames from body chunks.
///
/// Feed chunks with [`push`](Self::push), take complete frames with
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`, and call
/// [`finish`](Self::finish) when the body ends to detect a truncated frame.
/// A frame header declaring more than `max_message_size` bytes is an error
/// as soon as its 5 bytes have arrived, so memory stays bounded by the
/// maximum plus one chunk.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_message_size: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self { buf: BytesMut::new(), max_message_size }
    }

    /// Appends a body chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let declared = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(declared).unwrap_or(usize::MAX);
        if len > self.max_message_size {
            return Err(FrameError::TooLarge { declared: u64::from(declared), max: self.max_message_size });
        }
        if self.buf.len() - FRAME_HEADER_LEN < len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Bytes buffered that do not yet form a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks that the body ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated { buffered: self.buf.len() }) }
    }
}

/// Rewrites request headers for a gRPC upstream: `content-type:
/// application/grpc`, `te: trailers`, and removes `content-length` (the body
/// changes size) and `grpc-accept-encoding` (this crate decodes no
/// compressed frames). Used for transcoded and gRPC-Web requests alike; the
/// gateway still sets the request path (see
/// [`RouteMatch::grpc_path`](crate::RouteMatch::grpc_path)) and method `POST`.
pub fn prepare_upstream_headers(headers: &mut HeaderMap) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.remove(CONTENT_LENGTH);
    headers.remove("grpc-accept-encoding");
}

#[cfg(test)]
mod tests;
