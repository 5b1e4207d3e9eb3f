//! Plugins' outbound calls (the WIT `outbound` interface) sent through the
//! snapshot's upstreams: the same targets, balancing, health, breaker,
//! pool, TLS, timeouts and retries as proxied traffic, so an identity
//! provider or an authorization service is configured like any upstream.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::Request;
use weir_plugin_host::outbound::{Outbound, OutboundAnswer, OutboundCall, OutboundError, OutboundFuture};

use super::{Outgoing, Upstream};
use crate::body::{self, CollectError};
use crate::error::ProxyError;

/// The upstreams one plugin instance may call, by name.
pub(crate) struct Callouts {
    upstreams: HashMap<String, Arc<Upstream>>,
}

impl Callouts {
    /// Calls to `upstreams` (the instance's `outbound` list, resolved).
    pub(crate) fn new(upstreams: HashMap<String, Arc<Upstream>>) -> Self {
        Self { upstreams }
    }
}

impl Outbound for Callouts {
    fn send(&self, name: &str, call: OutboundCall) -> OutboundFuture {
        let Some(upstream) = self.upstreams.get(name).cloned() else {
            let e = OutboundError::NotAllowed(format!("upstream `{name}` is not in this plugin's `outbound` list"));
            return Box::pin(std::future::ready(Err(e)));
        };
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
