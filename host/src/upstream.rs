//! Upstream services: targets, round robin, and pooled HTTP clients.
//!
//! The request path hands a finished request to [`Upstream::forward`] and
//! gets a response or a typed error back: everything about reaching the
//! service (picking a target, the connection pool, timeouts) lives here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::UpstreamMetrics;

/// The client used to reach upstreams.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// One upstream service.
pub struct Upstream {
    /// Configured name.
    pub name: Arc<str>,
    targets: Vec<Authority>,
    next: AtomicUsize,
    /// Time allowed for the response head.
    pub timeout: Duration,
    /// Pooled client (shared with other upstreams of the same settings).
    pub client: HttpClient,
    /// Error counters.
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    /// An upstream over parsed targets.
    pub fn new(
        name: Arc<str>,
        targets: Vec<Authority>,
        timeout: Duration,
        client: HttpClient,
        metrics: UpstreamMetrics,
    ) -> Self {
        Self { name, targets, next: AtomicUsize::new(0), timeout, client, metrics }
    }

    /// The next target and its index, round robin.
    pub fn pick(&self) -> (usize, &Authority) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        (i, &self.targets[i])
    }

    /// The targets.
    pub fn targets(&self) -> &[Authority] {
        &self.targets
    }

    /// Send a request to one of the targets and return its response head
    /// (the body streams). `parts` is the request as the chain left it, in
    /// origin form; `host` is the authority the client asked for (kept as
    /// `Host`, or the target's when the client sent none).
    pub async fn forward(
        &self,
        mut parts: Parts,
        body: ProxyBody,
        host: &str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (index, target) = self.pick();
        let target_metrics = self.metrics.targets.get(index);
        let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(target.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::Upstream { upstream: self.name.clone(), detail: e.to_string() })?;
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::try_from(if host.is_empty() { target.as_str() } else { host })
        {
            parts.headers.insert(header::HOST, v);
        }
        let req = Request::from_parts(parts, body);
        let sent = std::time::Instant::now();
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                let elapsed = sent.elapsed();
                self.metrics.duration.observe(elapsed.as_secs_f64());
                self.metrics.live.record(resp.status().is_server_error(), elapsed.as_secs_f64());
                if let Some(m) = target_metrics {
                    m.answered(resp.status().as_u16());
                }
                let (mut parts, incoming) = resp.into_parts();
                parts.extensions.insert(Answered { target: target.clone(), elapsed });
                Ok(Response::from_parts(parts, body::boxed(incoming)))
            }
            Ok(Err(e)) if e.is_connect() => {
                self.metrics.connect.inc();
                self.metrics.live.record(true, sent.elapsed().as_secs_f64());
                if let Some(m) = target_metrics {
                    m.failed();
                }
                Err(ProxyError::UpstreamConnect { upstream: self.name.clone(), detail: error_chain(&e) })
            }
            Ok(Err(e)) => {
                self.metrics.request.inc();
                self.metrics.live.record(true, sent.elapsed().as_secs_f64());
                if let Some(m) = target_metrics {
                    m.failed();
                }
                Err(ProxyError::Upstream { upstream: self.name.clone(), detail: error_chain(&e) })
            }
            Err(_) => {
                self.metrics.timeout.inc();
                self.metrics.live.record(true, sent.elapsed().as_secs_f64());
                if let Some(m) = target_metrics {
                    m.failed();
                }
                Err(ProxyError::UpstreamTimeout { upstream: self.name.clone(), timeout: self.timeout })
            }
        }
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
pub struct Answered {
    /// The target, `host:port`.
    pub target: Authority,
    /// From sending the request to the response head.
    pub elapsed: Duration,
}

/// Parse a `host:port` target.
pub fn parse_target(s: &str) -> Result<Authority, String> {
    let a: Authority = s.parse().map_err(|e| format!("invalid target {s:?}: {e}"))?;
    if a.port_u16().is_none() {
        return Err(format!("target {s:?} needs a port, like \"127.0.0.1:9001\""));
    }
    if s.contains('@') {
        return Err(format!("target {s:?} must not contain credentials"));
    }
    Ok(a)
}

/// Clients by connect timeout, kept across snapshots so a reload does not
/// throw away warm upstream connections.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<Duration, HttpClient>>,
}

impl ClientCache {
    /// The client for `connect_timeout`.
    pub fn get(&self, connect_timeout: Duration) -> HttpClient {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                connector.enforce_http(true);
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .build(connector)
            })
            .clone()
    }
}
