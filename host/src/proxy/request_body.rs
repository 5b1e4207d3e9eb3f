//! Reading the request body before the upstream is called: whole, for a
//! body phase, or its first bytes, so a short body is sent with a length.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http_body::Frame;
use http_body_util::BodyExt;

use crate::body;
use crate::error::ProxyError;
use crate::upstream::Outgoing;

/// Read a whole request body, refusing more than `max` bytes. A refused
/// body is drained in the background ([`body::linger`]) so the 413 reaches
/// a client that is still sending.
pub(super) async fn buffer_request<B>(parts: &Parts, body: B, max: u64) -> Result<Bytes, ProxyError>
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
pub(super) async fn prebuffer<B>(headers: &mut http::HeaderMap, body: B, buffer: u64) -> Result<Outgoing, ProxyError>
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
