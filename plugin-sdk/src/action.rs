//! What a phase decides: continue, or answer the client.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// The outcome of a phase.
#[derive(Debug)]
pub enum Action {
    /// Carry on with the (possibly edited) request or response.
    Continue,
    /// Answer the client with this reply; in a request phase the upstream
    /// and the rest of the chain are skipped.
    Respond(Reply),
}

/// A complete response produced by a plugin.
///
/// ```
/// # use weir_plugin_sdk::prelude::*;
/// let reply = Reply::new(StatusCode::TOO_MANY_REQUESTS)
///     .header("retry-after", "3")
///     .body("slow down");
/// ```
#[derive(Debug)]
pub struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The first invalid header given to [`Reply::header`]; the reply then
    /// becomes a 500 naming it rather than silently dropping the header.
    pub(crate) invalid: Option<String>,
}

impl Reply {
    /// An empty reply with `status`.
    pub fn new(status: StatusCode) -> Self {
        Self { status, headers: HeaderMap::new(), body: Vec::new(), invalid: None }
    }

    /// A reply whose body is `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status).header("content-type", "application/json").body(body),
            Err(e) => {
                let mut reply = Self::new(StatusCode::INTERNAL_SERVER_ERROR);
                reply.invalid = Some(format!("reply body could not be serialised: {e}"));
                reply
            }
        }
    }

    /// Append a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ if self.invalid.is_none() => {
                self.invalid = Some(format!("invalid reply header {name:?}: {value:?}"));
            }
            _ => {}
        }
        self
    }

    /// The headers, for editing.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Self {
        Action::Respond(reply)
    }
}
