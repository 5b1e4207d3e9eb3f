//! The last room of the request path: the reply goes out, and once it has
//! (or the client went away), the request is accounted for — route metrics
//! (in-flight, bytes) and the access log line, with final durations and
//! byte counts.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::observe::access_log::{AccessLog, Record};
use crate::observe::metrics::RouteMetrics;
use crate::observe::trace::{Span, Tracer};

/// What to do once a response has been sent.
pub(crate) struct Completion {
    started: Instant,
    metrics: RouteMetrics,
    bytes_in: Option<Arc<AtomicU64>>,
    log: Option<(Arc<AccessLog>, Box<Record>)>,
    trace: Option<Box<FinishTrace>>,
}

/// A recorded trace waiting for its server span to end.
struct FinishTrace {
    tracer: Arc<Tracer>,
    trace_id: String,
    spans: Vec<Span>,
    server: Span,
}

impl Completion {
    /// Account for a request that started at `started`; `metrics` counts it
    /// in flight until [`Completion::finish`].
    pub(crate) fn new(started: Instant, metrics: RouteMetrics) -> Self {
        metrics.enter();
        Self { started, metrics, bytes_in: None, log: None, trace: None }
    }

    /// Count the request body's bytes through `counter`.
    pub(crate) fn count_in(&mut self, counter: Arc<AtomicU64>) {
        self.bytes_in = Some(counter);
    }

    /// Write `record` to `log` when done.
    pub(crate) fn log(&mut self, log: Arc<AccessLog>, record: Box<Record>) {
        self.log = Some((log, record));
    }

    /// Export `spans` and the `server` span, ended when done, to `tracer`.
    pub(crate) fn trace(&mut self, tracer: Arc<Tracer>, trace_id: String, spans: Vec<Span>, server: Span) {
        self.trace = Some(Box::new(FinishTrace { tracer, trace_id, spans, server }));
    }

    /// Change the metrics the request is counted under (it matched a route).
    pub(crate) fn set_metrics(&mut self, metrics: RouteMetrics) {
        self.metrics.leave();
        metrics.enter();
        self.metrics = metrics;
    }

    fn finish(self, bytes_out: u64, completed: bool) {
        let bytes_in = self.bytes_in.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
        self.metrics.leave();
        self.metrics.bytes(bytes_in, bytes_out);
        if let Some((log, mut record)) = self.log {
            record.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            record.bytes_in = bytes_in;
            record.bytes_out = bytes_out;
            record.completed = completed;
            log.write(*record);
        }
        if let Some(t) = self.trace {
            let FinishTrace { tracer, trace_id, mut spans, mut server } = *t;
            server.end_ns = crate::observe::trace::now_ns();
            server.attributes.push(("http.response.body.size", crate::observe::trace::Value::Int(bytes_out as i64)));
            if !completed && server.error.is_none() {
                server.error = Some("the client left before the response was sent".into());
            }
            spans.push(server);
            tracer.finish(trace_id, spans);
        }
    }
}

/// A response body that calls its [`Completion`] when it has been sent
/// (end of stream), has failed, or is dropped unfinished.
pub(crate) struct Observed {
    inner: ProxyBody,
    sent: u64,
    done: Option<Completion>,
}

impl Observed {
    /// Watch `inner`.
    pub(crate) fn new(inner: ProxyBody, done: Completion) -> Self {
        Self { inner, sent: 0, done: Some(done) }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(done) = self.done.take() {
            done.finish(self.sent, completed);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // A body with nothing left to send was sent completely (hyper does
        // not poll an empty body); anything else was cut short.
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}

/// How a client's request body ended, when it did not end well: whoever
/// reads the body (a body phase, the upstream client) sees only an error,
/// and this tells the request path it was the client's doing.
#[derive(Debug, Default)]
pub(crate) struct BodyVerdict(std::sync::atomic::AtomicU8);

impl BodyVerdict {
    const BROKEN: u8 = 1;
    const TOO_LARGE: u8 = 2;

    /// The client's error, if its body failed or ran over `limit`.
    pub(crate) fn error(&self, limit: u64) -> Option<crate::error::ProxyError> {
        match self.0.load(Ordering::Relaxed) {
            Self::BROKEN => Some(crate::error::ProxyError::RequestBody("the request body is malformed or cut".into())),
            Self::TOO_LARGE => Some(crate::error::ProxyError::RequestBodyTooLarge(limit)),
            _ => None,
        }
    }
}

/// A request body that counts the bytes passing through it, stops at
/// `limit` bytes, and records in its [`BodyVerdict`] why it failed.
pub(crate) struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    limit: u64,
    verdict: Arc<BodyVerdict>,
}

impl<B> Counted<B> {
    /// Count `inner`'s bytes into `count`, refusing more than `limit`.
    pub(crate) fn new(inner: B, count: Arc<AtomicU64>, limit: u64, verdict: Arc<BodyVerdict>) -> Self {
        Self { inner, count, limit, verdict }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = self.count.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > self.limit {
                        self.verdict.0.store(BodyVerdict::TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(format!("request body exceeds {} bytes", self.limit).into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.verdict.0.store(BodyVerdict::BROKEN, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::body;
    use crate::observe::metrics::Metrics;

    #[tokio::test]
    async fn counts_bytes_and_in_flight_once() {
        let m = Metrics::new();
        let route = m.route("r");
        let done = Completion::new(Instant::now(), route.clone());
        assert_eq!(route.in_flight(), 1);
        let body = Observed::new(body::full("hello"), done);
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(route.in_flight(), 0, "left once, at the end");
        assert!(m.encode().contains("weir_route_bytes_out_total{route=\"r\"} 5"), "{}", m.encode());
    }

    #[tokio::test]
    async fn a_dropped_body_still_leaves() {
        let m = Metrics::new();
        let route = m.route("r");
        drop(Observed::new(body::full("unsent"), Completion::new(Instant::now(), route.clone())));
        assert_eq!(route.in_flight(), 0);
    }
}
