//! Plugins' outbound calls (the WIT `outbound` interface) sent through the
//! snapshot's upstreams: the same targets, balancing, health, breaker,
//! pool, TLS, timeouts and retries as proxied traffic, so an identity
//! provider or an authorization service is configured like any upstream.
//!
//! Identical reads in flight at once are sent once: a `GET` or `HEAD`
//! without a body, with the same path and headers, to the same upstream,
//! joins the call already under way and gets a copy of its answer. When a
//! key set expires, every pooled instance of an `auth` plugin asks for it
//! together; the identity provider sees one request (the single flight of
//! nginx's `proxy_cache_lock` and Envoy's JWKS fetcher).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use http::{Method, Request};
use weir_plugin_host::outbound::{Outbound, OutboundAnswer, OutboundCall, OutboundError, OutboundFuture};

use super::{Outgoing, Upstream};
use crate::body::{self, CollectError};
use crate::error::ProxyError;

/// The upstreams one plugin's instances may call, by name.
pub(crate) struct Callouts {
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Reads in flight, for identical ones to join.
    inflight: Arc<Mutex<HashMap<ReadKey, InFlight>>>,
}

/// What makes two reads the same: the upstream, method, path, headers and
/// body cap (the answer one caller may take, another may not).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    upstream: String,
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    max_body: u64,
}

type Answer = Result<Arc<OutboundAnswer>, OutboundError>;

/// A read under way. Weak, so that a call every caller gave up on is
/// dropped (and cancelled) rather than kept for the next one to resume.
struct InFlight {
    id: u64,
    call: WeakShared<BoxFuture<'static, Answer>>,
}

impl Callouts {
    /// Calls to `upstreams` (a plugin's `outbound` list, resolved).
    pub(crate) fn new(upstreams: HashMap<String, Arc<Upstream>>) -> Self {
        Self { upstreams, inflight: Arc::default() }
    }

    /// The read `key`: joined if one is under way, else started.
    fn read(&self, upstream: Arc<Upstream>, key: ReadKey, call: OutboundCall) -> OutboundFuture {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let timeout = call.timeout;
        let shared: Shared<BoxFuture<'static, Answer>> = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key).and_then(|f| f.call.upgrade()) {
                Some(running) => running,
                None => {
                    let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let table = Arc::clone(&self.inflight);
                    let done_key = key.clone();
                    let fut: BoxFuture<'static, Answer> = Box::pin(async move {
                        let answer = send(&upstream, call).await.map(Arc::new);
                        let mut inflight = table.lock().unwrap_or_else(|p| p.into_inner());
                        if inflight.get(&done_key).is_some_and(|f| f.id == id) {
                            inflight.remove(&done_key);
                        }
                        answer
                    });
                    let shared = fut.shared();
                    let weak = shared.downgrade().expect("a shared future not yet polled has a weak handle");
                    inflight.insert(key, InFlight { id, call: weak });
                    shared
                }
            }
        };
        Box::pin(async move {
            // A caller that joined keeps its own timeout.
            let answer = match timeout {
                Some(t) => tokio::time::timeout(t, shared)
                    .await
                    .map_err(|_| OutboundError::Timeout(format!("no answer within {t:?}")))?,
                None => shared.await,
            };
            answer.map(Arc::unwrap_or_clone)
        })
    }
}

impl Outbound for Callouts {
    fn send(&self, name: &str, call: OutboundCall) -> OutboundFuture {
        let Some(upstream) = self.upstreams.get(name).cloned() else {
            let e = OutboundError::NotAllowed(format!("upstream `{name}` is not in this plugin's `outbound` list"));
            return Box::pin(std::future::ready(Err(e)));
        };
        if (call.method == Method::GET || call.method == Method::HEAD) && call.body.is_empty() {
            let key = ReadKey {
                upstream: name.to_owned(),
                method: call.method.clone(),
                path: call.path.as_str().to_owned(),
                // Each call carries its own trace; a joiner's is not sent.
                headers: call
                    .headers
                    .iter()
                    .filter(|(n, _)| *n != "traceparent" && *n != "tracestate")
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                max_body: call.max_body,
            };
            return self.read(upstream, key, call);
        }
        Box::pin(async move { send(&upstream, call).await })
    }
}

async fn send(upstream: &Upstream, call: OutboundCall) -> Result<OutboundAnswer, OutboundError> {
    let mut request = Request::builder().method(call.method).uri(call.path);
    if let Some(headers) = request.headers_mut() {
        *headers = call.headers;
    }
    let (parts, ()) = request.body(()).map_err(|e| OutboundError::Invalid(e.to_string()))?.into_parts();
    // The gateway itself is the client: hashing balancers key on loopback.
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let body = Outgoing::Replayable(call.body.into());
    let response = upstream.forward(parts, body, "", client, call.timeout).await.map_err(|e| match e {
        ProxyError::UpstreamTimeout { timeout, .. } => OutboundError::Timeout(format!("no answer within {timeout:?}")),
        e => OutboundError::Unavailable(e.to_string()),
    })?;
    let (parts, body) = response.into_parts();
    let max = usize::try_from(call.max_body).unwrap_or(usize::MAX);
    let body = body::collect(body, max).await.map_err(|e| match e {
        CollectError::TooLarge => {
            OutboundError::Limit(format!("the answer's body is over limits.outbound_body ({} bytes)", call.max_body))
        }
        CollectError::Failed(e) => OutboundError::Unavailable(format!("the answer's body broke off: {e}")),
    })?;
    Ok(OutboundAnswer { status: parts.status.as_u16(), headers: parts.headers, body: body.to_vec() })
}
