//! Typed errors of the request path. Each knows who caused it (client,
//! plugin, upstream, gateway) and the status it becomes.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use weir_plugin_host::PluginFailure;

/// Why a request was answered by the gateway instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No route matches host and path.
    #[error("no route matches this request")]
    NoRoute,
    /// A route matches host and path, but not the method.
    #[error("method not allowed")]
    MethodNotAllowed(Vec<Method>),
    /// A body a plugin asked to buffer is larger than allowed.
    #[error("request body exceeds {0} bytes")]
    RequestBodyTooLarge(u64),
    /// The client's body could not be read.
    #[error("cannot read request body: {0}")]
    RequestBody(String),
    /// The request is malformed or ambiguous (framing, target, Host).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request asks for something the gateway does not do.
    #[error("not implemented: {0}")]
    Unsupported(String),
    /// The request target is longer than allowed.
    #[error("request target exceeds {0} bytes")]
    UriTooLong(u64),
    /// A plugin failed and its policy is `failure = "closed"`.
    #[error("plugin `{plugin}`: {failure}")]
    Plugin {
        /// Plugin instance name.
        plugin: Arc<str>,
        /// What went wrong.
        failure: PluginFailure,
    },
    /// The upstream could not be connected to.
    #[error("cannot connect to upstream `{upstream}`: {detail}")]
    UpstreamConnect {
        /// Upstream name.
        upstream: Arc<str>,
        /// Cause.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// Upstream name.
        upstream: Arc<str>,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The upstream failed otherwise.
    #[error("upstream `{upstream}` failed: {detail}")]
    Upstream {
        /// Upstream name.
        upstream: Arc<str>,
        /// Cause.
        detail: String,
    },
    /// The upstream's error-rate breaker is open.
    #[error("upstream `{upstream}` is failing; circuit breaker open, retry in {}s", retry_after.as_secs().max(1))]
    BreakerOpen {
        /// Upstream name.
        upstream: Arc<str>,
        /// Until it lets requests through again.
        retry_after: Duration,
    },
    /// `max_requests` are in flight to the upstream and `max_pending` wait.
    #[error("upstream `{upstream}` is at capacity")]
    Overloaded {
        /// Upstream name.
        upstream: Arc<str>,
    },
    /// Every target of the upstream is down or ejected (or none resolved).
    #[error("upstream `{upstream}` has no healthy target")]
    NoHealthyTarget {
        /// Upstream name.
        upstream: Arc<str>,
    },
    /// A response body a plugin asked to buffer is larger than allowed.
    #[error("upstream response body exceeds {0} bytes")]
    ResponseBodyTooLarge(u64),
    /// A required part of an aggregate route failed.
    #[error("required part `{part}` failed: {detail}")]
    Part {
        /// Part name.
        part: Arc<str>,
        /// What went wrong.
        detail: String,
        /// Whether it ran out of time.
        timeout: bool,
    },
    /// A WebSocket handshake on a route that does not take them (`websocket
    /// = false`, an aggregate route, or an HTTP/2-only upstream).
    #[error("route `{route}` does not take WebSocket connections")]
    UpgradeRefused {
        /// Route name.
        route: Arc<str>,
    },
    /// A bug in the gateway itself, answered rather than panicking.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    /// The upstream failed or could not be tried: a stale cached answer
    /// may stand in.
    pub(crate) fn upstream_failed(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect { .. }
                | ProxyError::UpstreamTimeout { .. }
                | ProxyError::Upstream { .. }
                | ProxyError::BreakerOpen { .. }
                | ProxyError::Overloaded { .. }
                | ProxyError::NoHealthyTarget { .. }
        )
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpgradeRefused { .. } => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RequestBodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBody(_) | ProxyError::Malformed(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::Plugin { failure, .. } => match failure {
                PluginFailure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
                PluginFailure::Unavailable(_) | PluginFailure::CrashLoop(_) => StatusCode::SERVICE_UNAVAILABLE,
                PluginFailure::Trap(_) | PluginFailure::InvalidOutput(_) => StatusCode::INTERNAL_SERVER_ERROR,
                PluginFailure::Aborted(_) => StatusCode::BAD_GATEWAY,
            },
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } | ProxyError::ResponseBodyTooLarge(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } | ProxyError::Part { timeout: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Part { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BreakerOpen { .. } | ProxyError::Overloaded { .. } | ProxyError::NoHealthyTarget { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Who caused it, for logs and the error body.
    pub(crate) fn source_kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute
            | ProxyError::UpgradeRefused { .. }
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::RequestBodyTooLarge(_)
            | ProxyError::RequestBody(_)
            | ProxyError::Malformed(_)
            | ProxyError::Unsupported(_)
            | ProxyError::UriTooLong(_) => "client",
            ProxyError::Plugin { .. } => "plugin",
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BreakerOpen { .. }
            | ProxyError::Overloaded { .. }
            | ProxyError::NoHealthyTarget { .. }
            | ProxyError::ResponseBodyTooLarge(_)
            | ProxyError::Part { .. } => "upstream",
            ProxyError::Internal(_) => "gateway",
        }
    }
}
