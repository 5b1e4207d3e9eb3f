//! Outbound calls: what a plugin's `outbound` imports hand to the gateway.
//!
//! The plugin host does not know upstreams: the gateway gives each plugin
//! instance an [`Outbound`] that knows the upstreams its `outbound` list
//! names and sends through them. Here the call is checked (method, path,
//! headers, sizes, the per-phase cap) before it leaves the sandbox, and its
//! outcome is counted per plugin and upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method};

use crate::bindings::{Header, outbound};
use crate::heads::{from_plugin, to_wit};

/// A checked call.
#[derive(Debug)]
pub struct OutboundCall {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: PathAndQuery,
    /// Headers (no hop-by-hop or framing ones).
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// The call's own timeout; `None` for the upstream's.
    pub timeout: Option<Duration>,
    /// Largest answer body accepted.
    pub max_body: u64,
}

/// An upstream's answer.
#[derive(Debug, Clone)]
pub struct OutboundAnswer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Why a call got no answer (the WIT `outbound.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// Not in the instance's `outbound` list.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// A malformed call.
    #[error("invalid call: {0}")]
    Invalid(String),
    /// A limit was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The upstream could not answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl OutboundError {
    /// The `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotAllowed(_) => "not_allowed",
            Self::Invalid(_) => "invalid",
            Self::Limit(_) => "limit",
            Self::Timeout(_) => "timeout",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// The answer to a call, when it comes.
pub type OutboundFuture = Pin<Box<dyn Future<Output = Result<OutboundAnswer, OutboundError>> + Send + 'static>>;

/// Sends a plugin instance's calls: implemented by the gateway over the
/// upstreams the instance may call.
pub trait Outbound: Send + Sync {
    /// Send `call` to `upstream`. The future owns what it needs, so a
    /// phase cut at its deadline just drops it.
    fn send(&self, upstream: &str, call: OutboundCall) -> OutboundFuture;
}

/// What one plugin instance may call: the sender, the upstream names its
/// `outbound` list gives, and its limits.
pub(crate) struct Grant {
    /// Sends the calls.
    pub(crate) sender: Arc<dyn Outbound>,
    /// The upstreams it may call.
    pub(crate) upstreams: Vec<String>,
    /// `limits.outbound_calls`.
    pub(crate) max_calls: u32,
    /// `limits.outbound_body`.
    pub(crate) max_body: u64,
}

/// Check a WIT call.
pub(crate) fn check(call: outbound::Call, max_body: u64) -> Result<OutboundCall, OutboundError> {
    let invalid = |m: String| OutboundError::Invalid(m);
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|_| invalid(format!("method {:?} is not a method", call.method)))?;
    if !call.path.starts_with('/') {
        return Err(invalid(format!("path {:?} must start with `/`", call.path)));
    }
    let path = PathAndQuery::try_from(call.path.as_str()).map_err(|e| invalid(format!("path {:?}: {e}", call.path)))?;
    let mut headers = from_plugin(call.headers).map_err(|e| invalid(e.to_string()))?;
    headers.remove(http::header::HOST);
    if call.body.len() as u64 > max_body {
        return Err(OutboundError::Limit(format!(
            "a body of {} bytes, over limits.outbound_body ({max_body})",
            call.body.len()
        )));
    }
    let timeout = (call.timeout_ms > 0).then(|| Duration::from_millis(u64::from(call.timeout_ms)));
    Ok(OutboundCall { method, path, headers, body: call.body, timeout, max_body })
}

/// An answer as the WIT record.
pub(crate) fn to_answer(a: OutboundAnswer) -> outbound::Answer {
    let headers: Vec<Header> = to_wit(&a.headers);
    outbound::Answer { status: a.status, headers, body: a.body }
}

/// An error as the WIT variant.
pub(crate) fn to_error(e: OutboundError) -> outbound::Error {
    match e {
        OutboundError::NotAllowed(m) => outbound::Error::NotAllowed(m),
        OutboundError::Invalid(m) => outbound::Error::Invalid(m),
        OutboundError::Limit(m) => outbound::Error::Limit(m),
        OutboundError::Timeout(m) => outbound::Error::Timeout(m),
        OutboundError::Unavailable(m) => outbound::Error::Unavailable(m),
    }
}
