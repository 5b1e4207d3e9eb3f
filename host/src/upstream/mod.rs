//! Upstream services: targets and their health, load balancing, circuit
//! breaking, retries, and pooled HTTP clients.
//!
//! The request path hands a finished request to [`Upstream::forward`] and
//! gets a response or a typed error back: everything about reaching the
//! service lives here.
//!
//! - [`target`]: targets, their shared health state, the set picked from;
//! - [`balance`]: round robin, least outstanding, consistent hashing;
//! - [`breaker`]: caps on requests in flight and the error-rate breaker;
//! - [`health`]: active checks and passive outlier ejection;
//! - [`discovery`]: DNS names re-resolved and a watched targets file;
//! - [`callout`]: plugins' outbound calls, sent through the same machinery.

pub(crate) mod balance;
pub(crate) mod breaker;
pub(crate) mod callout;
pub(crate) mod connector;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod pool;
pub(crate) mod target;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri, Version};
use tokio::sync::OwnedSemaphorePermit;

use self::balance::HashOn;
use self::balance::TargetSet;
use self::breaker::{Breaker, Refusal};
use self::metrics::UpstreamMetrics;
use self::pool::{Checkout, Pool, SendError};
use self::target::{Target, TargetState};
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use weir_config::{HealthConfig, OutlierConfig, PoolConfig, RetryConfig, RetryOn, UpstreamProtocol};
use weir_plugin_host::clock::monotonic_ms;

/// A request body as the upstream gets it: whole (and so sent again on a
/// retry), or streaming (tried once).
pub(crate) enum Outgoing {
    /// Read completely before the first try.
    Replayable(Bytes),
    /// Streams from the client.
    Stream(ProxyBody),
}

/// One upstream service.
pub(crate) struct Upstream {
    /// Configured name.
    pub(crate) name: Arc<str>,
    /// `[limits] max_response_header_bytes`.
    pub(crate) max_response_head: u64,
    targets: ArcSwap<TargetSet>,
    policy: weir_config::Balance,
    hash_on: HashOn,
    /// Time allowed for one try's response head.
    pub(crate) timeout: Duration,
    total_timeout: Option<Duration>,
    retry: RetryConfig,
    outlier: OutlierConfig,
    health: Option<HealthConfig>,
    /// Caps and the error-rate breaker.
    pub(crate) breaker: Arc<Breaker>,
    active: AtomicUsize,
    retrying: AtomicUsize,
    /// Connections (shared with other upstreams of the same settings).
    pub(crate) pool: Pool,
    /// `http`, or `https` with TLS.
    pub(crate) scheme: http::uri::Scheme,
    /// The HTTP version spoken to targets.
    pub(crate) protocol: UpstreamProtocol,
    /// Counters.
    pub(crate) metrics: UpstreamMetrics,
}

/// A finished try's verdict.
enum Verdict {
    Answer(Response<ProxyBody>),
    Retry(ProxyError),
    RetryStatus(Response<ProxyBody>),
    Fail(ProxyError),
}

impl Upstream {
    /// The targets right now.
    pub(crate) fn targets(&self) -> Arc<TargetSet> {
        self.targets.load_full()
    }

    /// Send a request to a target and return its response head (the body
    /// streams). Retries per `[retry]` on another target when it can;
    /// `parts` is the request as the chain left it, in origin form; `host`
    /// is the authority the client asked for (kept as `Host`, or the
    /// target's when the client sent none); `client` feeds `hash_on`.
    /// `deadline` (a gRPC call's `grpc-timeout`) replaces both `timeout`
    /// and `total_timeout`: every try must answer within what is left of it.
    pub(crate) async fn forward(
        &self,
        parts: Parts,
        body: Outgoing,
        host: &str,
        client: IpAddr,
        deadline: Option<Duration>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (try_timeout, total_timeout) = match deadline {
            Some(d) => (d, Some(d)),
            None => (self.timeout, self.total_timeout),
        };
        let _active = InFlight::new(&self.active);
        let started = Instant::now();
        let key = match self.policy {
            weir_config::Balance::Hash => self.hash_on.key(&parts.headers, client),
            _ => 0,
        };
        let idempotent = is_idempotent(&parts.method);
        let (bytes, stream) = match body {
            Outgoing::Replayable(b) => (Some(b), None),
            Outgoing::Stream(s) => (None, Some(s)),
        };
        let tries = if bytes.is_some() { self.retry.tries.max(1) } else { 1 };
        let mut request = Attempt {
            head: Some(parts),
            bytes,
            stream,
            // A retry after a failed connect needs no copy: nothing was
            // spent. Only retries after the request was sent do.
            keep: self.retry.on.iter().any(|k| *k != RetryOn::Connect) || !self.retry.statuses.is_empty(),
        };
        let mut tried: Vec<Arc<Target>> = Vec::new();
        // A retry counts against the budget until it has finished.
        let mut _retrying: Option<InFlight<'_>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= tries;
            let budget = match total_timeout {
                Some(total) => match total.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => left.min(try_timeout),
                    _ => return Err(ProxyError::UpstreamTimeout { upstream: self.name.clone(), timeout: total }),
                },
                None => try_timeout,
            };
            let set = self.targets.load();
            let Some(target) = set.pick(key, &tried, monotonic_ms()).cloned() else {
                self.metrics.no_healthy.inc();
                return Err(ProxyError::NoHealthyTarget { upstream: self.name.clone() });
            };
            drop(set);
            let admission = match self.breaker.admit() {
                Ok(a) => a,
                Err(refusal) => return Err(self.refused(refusal)),
            };
            let slot = match self.breaker.slot(budget).await {
                Ok(s) => s,
                Err(refusal) => return Err(self.refused(refusal)),
            };
            let verdict = self.try_once(&target, &mut request, last, host, budget, slot, idempotent).await;
            let failed_for_breaker = match &verdict {
                Verdict::Answer(r) | Verdict::RetryStatus(r) => matches!(r.status().as_u16(), 502..=504),
                Verdict::Retry(..) | Verdict::Fail(_) => true,
            };
            admission.done(failed_for_breaker);
            let (retry_err, retry_resp) = match verdict {
                Verdict::Answer(r) => return Ok(r),
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry(e) if last => return Err(e),
                Verdict::RetryStatus(r) if last => return Ok(r),
                Verdict::Retry(e) => (Some(e), None),
                Verdict::RetryStatus(r) => (None, Some(r)),
            };
            // A retry, if the budget allows: retries in flight stay below a
            // share of the requests in flight.
            let active = self.active.load(Ordering::Relaxed);
            let allowed = (self.retry.budget * active as f64) as usize;
            if self.retrying.load(Ordering::Relaxed) >= allowed.max(self.retry.min_concurrent as usize) {
                self.metrics.budget_exhausted.inc();
                return match (retry_err, retry_resp) {
                    (_, Some(r)) => Ok(r),
                    (Some(e), None) => Err(e),
                    (None, None) => Err(ProxyError::Internal("retry without a cause")),
                };
            }
            drop(retry_resp);
            if request.head.is_none() {
                // Spent on this try (its retry was not foreseen): no other.
                return Err(retry_err.unwrap_or(ProxyError::Internal("request spent")));
            }
            if _retrying.is_none() {
                _retrying = Some(InFlight::new(&self.retrying));
            }
            self.metrics.retries.inc();
            tried.push(target);
            let cap = self.retry.backoff.saturating_mul(1 << (attempt - 1).min(16)).min(self.retry.max_backoff);
            let pause = Duration::from_micros(fastrand::u64(..=cap.as_micros() as u64));
            tokio::time::sleep(pause).await;
        }
    }

    fn refused(&self, refusal: Refusal) -> ProxyError {
        match refusal {
            Refusal::Open { retry_after } => {
                self.metrics.breaker_open.inc();
                ProxyError::BreakerOpen { upstream: self.name.clone(), retry_after }
            }
            Refusal::Overflow => {
                self.metrics.overflow.inc();
                ProxyError::Overloaded { upstream: self.name.clone() }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_once(
        &self,
        target: &Arc<Target>,
        request: &mut Attempt,
        last: bool,
        host: &str,
        timeout: Duration,
        slot: OwnedSemaphorePermit,
        idempotent: bool,
    ) -> Verdict {
        // Only a request that asks to upgrade may be answered `101`.
        let upgrade_asked = request.head.as_ref().is_some_and(|h| h.headers.contains_key(header::UPGRADE));
        let lease = Lease::new(target.state.clone(), slot);
        let sent = Instant::now();
        let endpoint = target.endpoint.get_or_init(|| self.pool.endpoint(&target.addr));
        let exchange = async {
            let ready = self.pool.checkout(endpoint).await?;
            let Some((mut parts, body)) = request.take(last) else {
                return Err(SendError::Spent);
            };
            // Origin form; the pool adds the scheme and authority for HTTP/2.
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                parts.uri = Uri::from(pq);
            }
            parts.version = Version::HTTP_11;
            if self.protocol == UpstreamProtocol::H2 {
                // HTTP/2 carries the authority in `:authority` (the target);
                // a `Host` naming something else would make the request
                // malformed (RFC 9113 §8.3.1). The client's host is in
                // `x-forwarded-host`.
                parts.headers.remove(header::HOST);
            } else if !parts.headers.contains_key(header::HOST)
                && let Ok(v) = HeaderValue::try_from(if host.is_empty() { target.addr.as_str() } else { host })
            {
                parts.headers.insert(header::HOST, v);
            }
            self.pool.send(endpoint, ready, Request::from_parts(parts, body)).await
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        let elapsed = sent.elapsed();
        let now = monotonic_ms();
        let (err, kind) = match result {
            Ok(Ok((resp, _))) if let Some(why) = malformed(&resp, upgrade_asked, self.max_response_head) => {
                // Nothing was sent to the client yet: refuse the answer
                // whole rather than forward a length that lies.
                self.metrics.request.inc();
                target.metrics.failed();
                health::observe(self, target, true, now);
                drop(lease);
                let detail = format!("malformed response from {}: {why}", target.addr);
                return Verdict::Fail(ProxyError::Upstream { upstream: self.name.clone(), detail });
            }
            Ok(Ok((resp, conn))) => {
                if conn.reused { &self.metrics.reused } else { &self.metrics.new_connection }.inc();
                let (mut parts, mut incoming) = resp.into_parts();
                normalize_length(&mut parts.headers, &incoming);
                // A chunked body is decoded only after the head, so a broken
                // first chunk (a size that overflows, not hex) would reach the
                // client as a connection closed with no status at all. Its
                // first frame is read here, while a 502 can still be sent.
                let first = match first_frame(&parts, &mut incoming).await {
                    Ok(first) => first,
                    Err(e) => {
                        self.metrics.request.inc();
                        target.metrics.failed();
                        health::observe(self, target, true, now);
                        drop(lease);
                        let detail = format!("malformed response from {}: {}", target.addr, error_chain(&e));
                        return Verdict::Fail(ProxyError::Upstream { upstream: self.name.clone(), detail });
                    }
                };
                let status = parts.status.as_u16();
                self.metrics.duration.observe(elapsed.as_secs_f64());
                self.metrics.live.record(status >= 500, elapsed.as_secs_f64());
                target.metrics.answered(status);
                health::observe(self, target, status >= 500, now);
                parts.extensions.insert(Answered { target: target.addr.clone(), elapsed });
                // An upgraded connection is the tunnel's, not the pool's.
                let conn = if status == 101 {
                    conn.detach();
                    None
                } else {
                    Some(conn)
                };
                let body = match first {
                    None => body::boxed(Leased::new(incoming, lease, conn)),
                    Some(frame) => {
                        let inner = body::Prefixed::new(vec![frame], Box::pin(incoming));
                        body::boxed(Leased::new(inner, lease, conn))
                    }
                };
                let resp = Response::from_parts(parts, body);
                return if idempotent && self.retry.statuses.contains(&status) {
                    Verdict::RetryStatus(resp)
                } else {
                    Verdict::Answer(resp)
                };
            }
            Ok(Err(SendError::Capped(_))) => {
                // The target is busy, not broken: no health or breaker penalty.
                drop(lease);
                self.metrics.overflow.inc();
                return Verdict::Fail(ProxyError::Overloaded { upstream: self.name.clone() });
            }
            Ok(Err(e @ SendError::Connect(_))) => {
                self.metrics.connect.inc();
                (ProxyError::UpstreamConnect { upstream: self.name.clone(), detail: error_chain(&e) }, RetryOn::Connect)
            }
            Ok(Err(e)) => {
                self.metrics.request.inc();
                (ProxyError::Upstream { upstream: self.name.clone(), detail: error_chain(&e) }, RetryOn::Reset)
            }
            Err(_) => {
                self.metrics.timeout.inc();
                (ProxyError::UpstreamTimeout { upstream: self.name.clone(), timeout }, RetryOn::Timeout)
            }
        };
        self.metrics.live.record(true, elapsed.as_secs_f64());
        target.metrics.failed();
        health::observe(self, target, true, now);
        // Nothing was sent on a failed connect, so any method may go
        // again; after a timeout or reset the upstream may have acted on
        // it, so only idempotent methods do.
        let retryable = self.retry.on.contains(&kind) && (kind == RetryOn::Connect || idempotent);
        if retryable { Verdict::Retry(err) } else { Verdict::Fail(err) }
    }

    /// The upstream as JSON for `/admin/upstreams` and `/admin/status`.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let now = monotonic_ms();
        let set = self.targets.load();
        let targets: Vec<_> = set
            .all()
            .map(|t| {
                let s = &t.state;
                let (by_class, failures) = t.metrics.counts();
                serde_json::json!({
                    "address": t.addr.as_str(),
                    "weight": t.weight,
                    "backup": t.backup,
                    "healthy": s.usable(now),
                    "check": if self.health.is_none() || !s.checked.load(Ordering::Relaxed) {
                        "unknown"
                    } else if s.check_down.load(Ordering::Relaxed) { "down" } else { "up" },
                    "ejected_for_ms": s.ejected_until.load(Ordering::Relaxed).saturating_sub(now),
                    "ejections": s.ejections.load(Ordering::Relaxed),
                    "outstanding": s.outstanding.load(Ordering::Relaxed),
                    "responses": {
                        "1xx": by_class[0], "2xx": by_class[1], "3xx": by_class[2],
                        "4xx": by_class[3], "5xx": by_class[4],
                    },
                    "failures": failures,
                    "idle_connections": t.endpoint.get().map_or(0, |e| e.open_idle().0),
                    "h2_connection": t.endpoint.get().is_some_and(|e| e.open_idle().1),
                })
            })
            .collect();
        let (in_flight, pending) = self.breaker.load();
        serde_json::json!({
            "name": &*self.name,
            "balance": match self.policy {
                weir_config::Balance::RoundRobin => "round_robin",
                weir_config::Balance::LeastOutstanding => "least_outstanding",
                weir_config::Balance::Hash => "hash",
            },
            "targets": targets,
            "breaker": {
                "state": self.breaker.state(),
                "in_flight": in_flight,
                "pending": pending,
            },
            "errors": {
                "connect": self.metrics.connect.get(),
                "timeout": self.metrics.timeout.get(),
                "request": self.metrics.request.get(),
            },
            "connections": {
                "new": self.metrics.new_connection.get(),
                "reused": self.metrics.reused.get(),
            },
            "retries": self.metrics.retries.get(),
            "retry_budget_exhausted": self.metrics.budget_exhausted.get(),
            "rejected": {
                "breaker_open": self.metrics.breaker_open.get(),
                "overflow": self.metrics.overflow.get(),
                "no_healthy_target": self.metrics.no_healthy.get(),
            },
        })
    }

    /// Set each target's `healthy` gauge from its state.
    fn refresh_gauges(&self) {
        let now = monotonic_ms();
        for t in self.targets.load().all() {
            t.metrics.healthy.set(i64::from(t.state.usable(now)));
        }
    }
}

/// Idempotent methods (RFC 9110 §9.2.2) may be sent again after a failure
/// that happened once the upstream may have seen them.
fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The request across tries: the head and whole body kept while a retry
/// may need them.
struct Attempt {
    head: Option<Parts>,
    bytes: Option<Bytes>,
    stream: Option<ProxyBody>,
    /// A retry could follow a try that sent the request: tries before the
    /// last send a copy.
    keep: bool,
}

impl Attempt {
    /// The request for a try that has its connection: the originals on the
    /// last try or when no retry could need them, else a copy.
    fn take(&mut self, last: bool) -> Option<(Parts, ProxyBody)> {
        if last || !self.keep || self.stream.is_some() {
            let parts = self.head.take()?;
            let body = match (self.stream.take(), self.bytes.take()) {
                (Some(s), _) => s,
                (None, Some(b)) => body::full(b),
                (None, None) => body::empty(),
            };
            Some((parts, body))
        } else {
            let parts = clone_head(self.head.as_ref()?);
            Some((parts, body::full(self.bytes.clone().unwrap_or_default())))
        }
    }
}

fn clone_head(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// Increments a counter for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A try's hold on its target (a request outstanding) and on a breaker
/// slot, until its response body is done.
struct Lease {
    state: Arc<TargetState>,
    _slot: OwnedSemaphorePermit,
}

impl Lease {
    fn new(state: Arc<TargetState>, slot: OwnedSemaphorePermit) -> Self {
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        Self { state, _slot: slot }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its try's [`Lease`] until it is dropped, and
/// gives its connection back to the pool once read to the end.
struct Leased<B> {
    inner: B,
    _lease: Lease,
    conn: Option<Checkout>,
    /// The end was seen (or there was no body): the connection may be reused.
    ended: bool,
}

impl<B: http_body::Body> Leased<B> {
    fn new(inner: B, lease: Lease, conn: Option<Checkout>) -> Self {
        let ended = inner.is_end_stream();
        Self { inner, _lease: lease, conn, ended }
    }
}

impl<B> Drop for Leased<B> {
    fn drop(&mut self) {
        if self.ended
            && let Some(conn) = self.conn.take()
        {
            conn.finish();
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Leased<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                // A broken body: the connection is not reused.
                this.conn = None;
                false
            }
            Poll::Pending => false,
        };
        if end {
            this.ended = true;
            // Back to the pool now rather than when the proxy is done
            // writing the body to its client.
            if let Some(conn) = this.conn.take() {
                conn.finish();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Added to a response's extensions by [`Upstream::forward`]: which target
/// answered, and how long it took to send the response head.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    /// The target, `host:port`.
    pub(crate) target: Authority,
    /// From sending the request to the response head.
    pub(crate) elapsed: Duration,
}

/// Why an upstream response head must not be forwarded (RFC 9112 §6.3:
/// an intermediary must not forward both a `Transfer-Encoding` and a
/// `Content-Length`), if it must not.
/// One plain `Content-Length`: an upstream may send a list of equal
/// values (`4, 4`) or the header twice, which hyper accepts as one length
/// (RFC 9110 §8.6), but a client might read otherwise; the client gets the
/// length hyper reads by.
fn normalize_length(headers: &mut http::HeaderMap, incoming: &hyper::body::Incoming) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = match (values.next(), values.next()) {
        (Some(v), None) => !v.as_bytes().contains(&b','),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !plain && let Some(n) = http_body::Body::size_hint(incoming).exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// How long the head of a chunked answer waits for its first chunk, so a
/// broken one is a `502` rather than a reply cut before its status. The first
/// chunk nearly always comes with the head; a stream that starts later (a
/// slow computation) gets its head this much later. Server-sent events are
/// passed at once.
const FIRST_FRAME_GRACE: Duration = Duration::from_millis(20);

/// The first frame of a chunked HTTP/1 body, if it comes within
/// [`FIRST_FRAME_GRACE`]; the decoder's error if that chunk is broken.
/// Bodies with a length (or none) are left alone: their only failure, an
/// early close, is a truncation the client sees as such.
pub(crate) async fn first_frame(
    parts: &http::response::Parts,
    incoming: &mut hyper::body::Incoming,
) -> Result<Option<http_body::Frame<Bytes>>, hyper::Error> {
    use http_body_util::BodyExt;
    if parts.version != Version::HTTP_11
        || !parts.headers.contains_key(header::TRANSFER_ENCODING)
        || http_body::Body::is_end_stream(incoming)
        || parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return Ok(None);
    }
    match tokio::time::timeout(FIRST_FRAME_GRACE, incoming.frame()).await {
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Why an upstream's answer cannot be forwarded as it is, if it cannot:
/// framing a client would read differently from the gateway (a length with
/// a transfer coding, a coding other than chunked), a status HTTP does not
/// have, an upgrade nobody asked for, a head over `max_head` bytes.
pub(crate) fn malformed(resp: &Response<hyper::body::Incoming>, upgrade_asked: bool, max_head: u64) -> Option<String> {
    let headers = resp.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH) {
        return Some("both Transfer-Encoding and Content-Length".into());
    }
    if let Some(coding) = headers.get(header::TRANSFER_ENCODING)
        && (headers.get_all(header::TRANSFER_ENCODING).iter().count() > 1
            || !coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        // The gateway re-frames bodies and drops hop-by-hop headers, so a
        // coding it does not decode (gzip, chunked twice) would reach the
        // client as bytes without the name of their coding.
        return Some(format!("Transfer-Encoding {:?}, not just chunked", String::from_utf8_lossy(coding.as_bytes())));
    }
    if resp.status().as_u16() > 599 {
        return Some(format!("status {} outside 100-599", resp.status().as_u16()));
    }
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade_asked {
        return Some("101 Switching Protocols to a request that did not ask to upgrade".into());
    }
    let size: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if size as u64 > max_head {
        return Some(format!("a head of {size} bytes, over the {max_head}-byte limit (max_response_header_bytes)"));
    }
    None
}

/// Why a target address or weight was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// Not an authority.
    #[error("invalid target {target:?}: {reason}")]
    Invalid {
        /// As written.
        target: String,
        /// Why.
        reason: String,
    },
    /// No port.
    #[error("target {0:?} needs a port, like \"127.0.0.1:9001\"")]
    NoPort(String),
    /// `user@host:port`.
    #[error("target {0:?} must not contain credentials")]
    Credentials(String),
    /// A weight out of range.
    #[error("target {target:?}: weight must be 1 to {max}, not {weight}")]
    Weight {
        /// As written.
        target: String,
        /// The weight given.
        weight: u32,
        /// The largest weight.
        max: u32,
    },
}

/// Parse a `host:port` target.
pub(crate) fn parse_target(s: &str) -> Result<Authority, TargetError> {
    let a: Authority = s
        .parse()
        .map_err(|e: http::uri::InvalidUri| TargetError::Invalid { target: s.to_owned(), reason: e.to_string() })?;
    if a.port_u16().is_none() {
        return Err(TargetError::NoPort(s.to_owned()));
    }
    if s.contains('@') {
        return Err(TargetError::Credentials(s.to_owned()));
    }
    Ok(a)
}

/// What upstreams must agree on to share a pool of connections.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout: Duration,
    max_connections: usize,
    protocol: UpstreamProtocol,
    /// Fingerprint of the TLS settings and files; `None` in cleartext.
    tls: Option<[u8; 32]>,
    limits: PoolConfig,
}

/// Pools by connect timeout, connection cap, protocol, TLS settings and
/// pool limits, kept across snapshots so a reload does not throw away warm
/// upstream connections.
#[derive(Default)]
pub(crate) struct PoolCache {
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

impl PoolCache {
    /// The pool for `connect_timeout`, at most `max_connections` open to
    /// each target, `protocol`, TLS (with its fingerprint) if any, and the
    /// idle connection `limits`.
    pub(crate) fn get(
        &self,
        connect_timeout: Duration,
        max_connections: usize,
        protocol: UpstreamProtocol,
        tls: Option<(connector::TlsClient, [u8; 32])>,
        limits: &PoolConfig,
    ) -> Pool {
        let key = PoolKey {
            connect_timeout,
            max_connections,
            protocol,
            tls: tls.as_ref().map(|(_, f)| *f),
            limits: limits.clone(),
        };
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                Pool::new(pool::Settings {
                    connect_timeout,
                    max_connections,
                    protocol,
                    tls: tls.map(|(client, _)| client),
                    limits: limits.clone(),
                })
            })
            .clone()
    }
}
