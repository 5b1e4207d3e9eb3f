//! Calls from a plugin to the gateway's named upstreams (the WIT
//! `outbound` interface): an identity provider's keys, an authorization
//! service. The instance's `[plugins.NAME] outbound` list says which
//! upstreams it may call; the gateway sends through the upstream's targets,
//! balancing, health checks, breaker, pool, TLS, timeouts and retries.
//!
//! ```no_run
//! # use weir_plugin_sdk::prelude::*;
//! # fn f(cx: &Context, token: &str) -> Result<Action> {
//! let answer = cx.http("authz").post("/check").header("authorization", token).body("{}").send()?;
//! if answer.status() != StatusCode::OK {
//!     return Ok(Reply::new(StatusCode::FORBIDDEN).into());
//! }
//! # Ok(Action::Continue) }
//! ```

use std::fmt;
use std::time::Duration;

use http::{Method, Response};

/// A request to send to an upstream: made by [`Context::http`](crate::Context::http),
/// sent by `Callout::send` or, with others at once, by
/// [`Context::send_all`](crate::Context::send_all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub(crate) upstream: String,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
}

impl Callout {
    pub(crate) fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
            method: Method::GET,
            path: "/".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// `GET path` (path and query, from `/`).
    pub fn get(self, path: &str) -> Self {
        self.request(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(self, path: &str) -> Self {
        self.request(Method::POST, path)
    }

    /// Any method.
    pub fn request(mut self, method: Method, path: &str) -> Self {
        self.method = method;
        path.clone_into(&mut self.path);
        self
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// The body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// How long the call may take (the upstream's `timeout` otherwise; the
    /// phase's deadline bounds it either way).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The upstream it goes to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Its method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Its path and query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its headers, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// Its body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// An answer as the host gives it: status, headers, body.
pub(crate) type RawAnswer = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

/// An answer as the plugin gets it.
pub(crate) fn answer((status, headers, body): RawAnswer) -> Result<Response<Vec<u8>>, OutboundError> {
    let mut b = Response::builder().status(status);
    for (name, value) in headers {
        b = b.header(name, value);
    }
    b.body(body).map_err(|e| OutboundError::Invalid(format!("the answer could not be read: {e}")))
}

/// Why a call got no answer. An answer with any status (a 403, a 500) is
/// an answer, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The upstream is not in the instance's `outbound` list.
    NotAllowed(String),
    /// The call was malformed (method, path, a header).
    Invalid(String),
    /// A limit was reached: calls per phase, or a body size.
    Limit(String),
    /// No answer within the call's timeout.
    Timeout(String),
    /// The upstream could not answer (no healthy target, circuit open,
    /// connection refused or reset).
    Unavailable(String),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllowed(m) => write!(f, "outbound call not allowed: {m}"),
            Self::Invalid(m) => write!(f, "invalid outbound call: {m}"),
            Self::Limit(m) => write!(f, "outbound limit reached: {m}"),
            Self::Timeout(m) => write!(f, "outbound call timed out: {m}"),
            Self::Unavailable(m) => write!(f, "upstream unavailable: {m}"),
        }
    }
}

impl std::error::Error for OutboundError {}
