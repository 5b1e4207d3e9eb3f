//! Upstream services: targets, round robin, and pooled HTTP clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
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

    /// The next target, round robin.
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// The targets.
    pub fn targets(&self) -> &[Authority] {
        &self.targets
    }
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
