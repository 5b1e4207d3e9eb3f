//! The body type used on both sides of the proxy.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Errors a body stream may yield.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming or complete body.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub(crate) fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Box any body.
pub(crate) fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// How much of a refused request body is still read and thrown away.
const LINGER_BYTES: u64 = 16 << 20;
/// How long a refused request body is still read and thrown away.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// After refusing a request body (413), keep reading and discarding what the
/// client is still sending, up to [`LINGER_BYTES`] or [`LINGER_TIME`], like
/// nginx's lingering close. Closing a socket with unread data makes the
/// kernel answer with a reset, which can destroy the refusal before the
/// client reads it; draining lets the client finish its write and read the
/// answer.
pub(crate) fn linger<B>(body: B)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    let mut body = Box::pin(body);
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// A body that yields some frames already read, then the rest of `inner`.
pub(crate) struct Prefixed<B> {
    first: std::collections::VecDeque<http_body::Frame<Bytes>>,
    inner: std::pin::Pin<Box<B>>,
}

impl<B> Prefixed<B> {
    /// `first`, then `inner`.
    pub(crate) fn new(first: Vec<http_body::Frame<Bytes>>, inner: std::pin::Pin<Box<B>>) -> Self {
        Self { first: first.into(), inner }
    }
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        if let Some(f) = self.first.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_empty() && self.inner.is_end_stream()
    }
}

/// Why [`collect`] stopped.
#[derive(Debug)]
pub(crate) enum CollectError {
    /// More than the limit arrived.
    TooLarge,
    /// The stream failed.
    Failed(BoxError),
}

/// Read a whole body into memory, refusing more than `max` bytes.
pub(crate) async fn collect(mut body: ProxyBody, max: usize) -> Result<Bytes, CollectError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Failed)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(CollectError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
