//! The request and response heads a plugin sees, and buffered bodies.

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode, Uri};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// A downstream request head, as edited by the plugins before this one.
///
/// Edits made through the setters and [`Request::headers_mut`] are sent back
/// to the gateway; reading costs nothing extra.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) authority: String,
    pub(crate) headers: HeaderMap,
    pub(crate) client_addr: Option<SocketAddr>,
    pub(crate) route: String,
    pub(crate) request_id: String,
    pub(crate) path_params: Vec<(String, String)>,
    pub(crate) method_changed: bool,
    pub(crate) uri_changed: bool,
    pub(crate) headers_changed: bool,
}

impl Request {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Change the method sent upstream.
    pub fn set_method(&mut self, method: Method) {
        self.method = method;
        self.method_changed = true;
    }

    /// Path and query, e.g. `/users/42?expand=1`.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The path, e.g. `/users/42`.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The raw query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    /// The first value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// Change the path and query sent upstream. It must be in origin form
    /// (start with `/`).
    pub fn set_uri(&mut self, uri: &str) -> Result<()> {
        if !uri.starts_with('/') {
            return Err(Error::internal(format!("uri must start with '/': {uri:?}")));
        }
        self.uri = uri.parse()?;
        self.uri_changed = true;
        Ok(())
    }

    /// The authority the client asked for (`Host`), empty if none.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request headers, for editing.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_changed = true;
        &mut self.headers
    }

    /// The first value of header `name` if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The client's socket address.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.client_addr.map(|a| a.ip())
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The gateway's request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// A parameter captured by the route path, e.g. `id` in `/users/{id}`.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An upstream response head.
#[derive(Debug, Clone)]
pub struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) status_changed: bool,
    pub(crate) headers_changed: bool,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Change the status code sent downstream.
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
        self.status_changed = true;
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The response headers, for editing.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_changed = true;
        &mut self.headers
    }

    /// The first value of header `name` if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// A buffered request or response body.
#[derive(Debug, Clone, Default)]
pub struct Body {
    bytes: Vec<u8>,
    changed: bool,
}

impl Body {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, changed: false }
    }

    /// Only a body that was changed travels back to the gateway.
    pub(crate) fn into_changed(self) -> Option<Vec<u8>> {
        self.changed.then_some(self.bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Replace the body.
    pub fn set(&mut self, bytes: impl Into<Vec<u8>>) {
        self.bytes = bytes.into();
        self.changed = true;
    }

    /// The bytes, for editing in place.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        self.changed = true;
        &mut self.bytes
    }

    /// Parse the body as JSON (a 400 error if it is not).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| Error::new(StatusCode::BAD_REQUEST, format!("body is not valid JSON: {e}")))
    }

    /// Replace the body with `value` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.set(serde_json::to_vec(value)?);
        Ok(())
    }
}
