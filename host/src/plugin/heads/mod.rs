//! The request and response heads lent to a plugin for one phase call, and
//! the host side of the `request` and `response` resources.
//!
//! A plugin reads and edits a head through resource methods, so only what it
//! touches crosses into the sandbox. The head is *moved* into the instance's
//! store for the call and moved back after it (no copy). Edits go to a
//! copy-on-write version made at the first edit: when the phase continues
//! they replace the head all at once ([`Heads::commit`]); when it traps,
//! times out or responds they are dropped ([`Heads::discard`]), so a failed
//! phase never leaves half of its edits behind. Every edit is checked when
//! it is made and refused with an `edit-error` the plugin can handle.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use wasmtime::component::Resource;

use super::bindings::types::{self, EditError, Header};
use super::host::StoreData;
use crate::forwarding;

/// Most header values a plugin may leave in a head (a head that arrived
/// with more keeps its count).
pub const MAX_PLUGIN_HEADERS: usize = forwarding::MAX_PLUGIN_HEADERS;
/// Largest header value a plugin may set.
pub const MAX_PLUGIN_VALUE: usize = forwarding::MAX_PLUGIN_HEADER_BYTES;

/// The `request` resource: its data is the [`LentRequest`] in the store.
pub struct RequestRes;
/// The `response` resource: its data is the [`LentResponse`] in the store.
pub struct ResponseRes;

/// What the gateway knows about a request beyond its head, shared by all of
/// its phase calls.
#[derive(Debug)]
pub struct RequestInfo {
    /// The client's socket address.
    pub client: SocketAddr,
    /// The authority the client asked for.
    pub authority: String,
    /// The matched route's name.
    pub route: Arc<str>,
    /// The request id.
    pub request_id: String,
    /// Path parameters captured by the route.
    pub params: Vec<(String, String)>,
    /// What the TLS handshake established, on the TLS listener.
    pub tls: Option<Arc<crate::tls::ConnectionTls>>,
}

impl RequestInfo {
    /// `https` on the TLS listener, `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// The request head while it is lent (or ready to be lent) to plugins.
pub struct LentRequest {
    /// The head as the chain left it so far.
    pub parts: http::request::Parts,
    edit: Option<Box<RequestEdit>>,
    editable: bool,
    info: Arc<RequestInfo>,
}

struct RequestEdit {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// The response head while it is lent to plugins.
pub struct LentResponse {
    /// The head as the chain left it so far.
    pub parts: http::response::Parts,
    edit: Option<Box<ResponseEdit>>,
    editable: bool,
}

struct ResponseEdit {
    status: StatusCode,
    headers: HeaderMap,
}

/// The heads of one exchange: the request, and the response once there is
/// one.
pub struct Heads {
    /// The request (read-only once it has been sent upstream).
    pub request: LentRequest,
    /// The upstream's response, in response phases.
    pub response: Option<LentResponse>,
}

impl LentRequest {
    /// A head plugins may edit.
    pub fn new(parts: http::request::Parts, info: Arc<RequestInfo>) -> Self {
        Self { parts, edit: None, editable: true, info }
    }

    /// A read-only copy of the head as it is now: what response phases see
    /// of the request that went upstream.
    pub fn snapshot(&self) -> Self {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = self.parts.method.clone();
        parts.uri = self.parts.uri.clone();
        parts.headers = self.parts.headers.clone();
        Self { parts, edit: None, editable: false, info: self.info.clone() }
    }

    /// Stop accepting edits (the body phases run after the head is settled).
    pub fn freeze(&mut self) {
        self.editable = false;
    }

    fn method(&self) -> &Method {
        self.edit.as_ref().map_or(&self.parts.method, |e| &e.method)
    }

    fn uri(&self) -> &Uri {
        self.edit.as_ref().map_or(&self.parts.uri, |e| &e.uri)
    }

    fn headers(&self) -> &HeaderMap {
        self.edit.as_ref().map_or(&self.parts.headers, |e| &e.headers)
    }

    /// The copy edits go to, made at the first edit.
    fn edit(&mut self) -> Result<&mut RequestEdit, EditError> {
        if !self.editable {
            return Err(EditError::ReadOnly);
        }
        let parts = &self.parts;
        Ok(self.edit.get_or_insert_with(|| {
            Box::new(RequestEdit {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            })
        }))
    }

    fn commit(&mut self) {
        if let Some(e) = self.edit.take() {
            self.parts.method = e.method;
            self.parts.uri = e.uri;
            self.parts.headers = e.headers;
        }
    }
}

impl LentResponse {
    /// A head plugins may edit.
    pub fn new(parts: http::response::Parts) -> Self {
        Self { parts, edit: None, editable: true }
    }

    /// Stop accepting edits.
    pub fn freeze(&mut self) {
        self.editable = false;
    }

    fn status(&self) -> StatusCode {
        self.edit.as_ref().map_or(self.parts.status, |e| e.status)
    }

    fn headers(&self) -> &HeaderMap {
        self.edit.as_ref().map_or(&self.parts.headers, |e| &e.headers)
    }

    fn edit(&mut self) -> Result<&mut ResponseEdit, EditError> {
        if !self.editable {
            return Err(EditError::ReadOnly);
        }
        let parts = &self.parts;
        Ok(self
            .edit
            .get_or_insert_with(|| Box::new(ResponseEdit { status: parts.status, headers: parts.headers.clone() })))
    }

    fn commit(&mut self) {
        if let Some(e) = self.edit.take() {
            self.parts.status = e.status;
            self.parts.headers = e.headers;
        }
    }
}

impl Heads {
    /// The edits of the phase that just continued take effect.
    pub fn commit(&mut self) {
        self.request.commit();
        if let Some(r) = &mut self.response {
            r.commit();
        }
    }

    /// The edits of a phase that failed or answered are dropped.
    pub fn discard(&mut self) {
        self.request.edit = None;
        if let Some(r) = &mut self.response {
            r.edit = None;
        }
    }
}

/// The heads lent to one instance for one call, and the handles naming them.
pub(crate) struct Lent {
    pub(crate) heads: Heads,
    /// The `rep` of this call's request handle; the response's is `+ 1`.
    /// Each call uses new ones, so a handle kept from an earlier call is
    /// recognised and refused.
    pub(crate) rep: u32,
}

impl Lent {
    pub(crate) fn request_handle(&self) -> Resource<RequestRes> {
        Resource::new_borrow(self.rep)
    }

    pub(crate) fn response_handle(&self) -> Resource<ResponseRes> {
        Resource::new_borrow(self.rep + 1)
    }
}

// ---- checks shared by both heads ------------------------------------------

fn header_name(name: &str) -> Result<HeaderName, EditError> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| EditError::Invalid(format!("invalid header name {name:?}")))?;
    if forwarding::is_gateway_owned(name.as_str()) {
        return Err(EditError::Reserved(name.as_str().to_owned()));
    }
    Ok(name)
}

fn header_value(name: &HeaderName, value: &[u8]) -> Result<HeaderValue, EditError> {
    if value.len() > MAX_PLUGIN_VALUE {
        return Err(EditError::TooLarge(format!(
            "value of {name} has {} bytes, at most {MAX_PLUGIN_VALUE}",
            value.len()
        )));
    }
    HeaderValue::from_bytes(value).map_err(|_| {
        EditError::Invalid(format!("invalid value for header {name}: {:?}", String::from_utf8_lossy(value)))
    })
}

/// Room for one more value: at most [`MAX_PLUGIN_HEADERS`], or as many as
/// the head arrived with.
fn room(headers: &HeaderMap, arrived: usize) -> Result<(), EditError> {
    if headers.len() >= MAX_PLUGIN_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("at most {MAX_PLUGIN_HEADERS} header values")));
    }
    Ok(())
}

fn values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect()
}

fn to_list(headers: &HeaderMap) -> Vec<Header> {
    forwarding::to_wit(headers)
}

fn set_header(headers: &mut HeaderMap, arrived: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
    let name = header_name(name)?;
    let value = header_value(&name, value)?;
    if !headers.contains_key(&name) {
        room(headers, arrived)?;
    }
    headers.insert(name, value);
    Ok(())
}

fn append_header(headers: &mut HeaderMap, arrived: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
    let name = header_name(name)?;
    let value = header_value(&name, value)?;
    room(headers, arrived)?;
    headers.append(name, value);
    Ok(())
}

fn remove_header(headers: &mut HeaderMap, name: &str) -> Result<(), EditError> {
    let name = header_name(name)?;
    headers.remove(name);
    Ok(())
}

/// Replace `headers` with `list`, keeping the gateway-owned (framing)
/// headers it has; gateway-owned names in `list` are skipped.
fn set_headers(headers: &mut HeaderMap, arrived: usize, list: Vec<Header>) -> Result<(), EditError> {
    if list.len() > MAX_PLUGIN_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("{} headers, at most {MAX_PLUGIN_HEADERS}", list.len())));
    }
    *headers = forwarding::with_plugin_headers(headers, list).map_err(EditError::Invalid)?;
    Ok(())
}

/// A handle must name this call's head; anything else is a guest bug.
fn stale(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("{what} handle used outside the phase call that received it"))
}

impl StoreData {
    fn lent_request(&mut self, handle: &Resource<RequestRes>) -> wasmtime::Result<&mut LentRequest> {
        match &mut self.lent {
            Some(l) if handle.rep() == l.rep => Ok(&mut l.heads.request),
            _ => Err(stale("request")),
        }
    }

    fn lent_response(&mut self, handle: &Resource<ResponseRes>) -> wasmtime::Result<&mut LentResponse> {
        match &mut self.lent {
            Some(l) if handle.rep() == l.rep + 1 => l.heads.response.as_mut().ok_or_else(|| stale("response")),
            _ => Err(stale("response")),
        }
    }
}

impl types::HostRequest for StoreData {
    fn method(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.method().as_str().to_owned())
    }

    fn path_with_query(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.uri().path_and_query().map_or("/", PathAndQuery::as_str).to_owned())
    }

    fn authority(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.info.authority.clone())
    }

    fn header(&mut self, h: Resource<RequestRes>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(values(self.lent_request(&h)?.headers(), &name.to_ascii_lowercase()))
    }

    fn headers(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<Vec<Header>> {
        Ok(to_list(self.lent_request(&h)?.headers()))
    }

    fn client_addr(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.info.client.to_string())
    }

    fn route(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.info.route.to_string())
    }

    fn request_id(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.lent_request(&h)?.info.request_id.clone())
    }

    fn path_params(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.lent_request(&h)?.info.params.clone())
    }

    fn tls(&mut self, h: Resource<RequestRes>) -> wasmtime::Result<Option<types::TlsInfo>> {
        Ok(self.lent_request(&h)?.info.tls.as_deref().map(|t| types::TlsInfo {
            version: t.version.to_owned(),
            alpn: t.alpn.map(str::to_owned),
            server_name: t.server_name.clone(),
            client_subject: t.client_subject.clone(),
            client_cert_sha256: t.client_cert_sha256.clone(),
        }))
    }

    fn set_method(&mut self, h: Resource<RequestRes>, method: String) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        Ok((|| {
            let m = Method::from_bytes(method.as_bytes())
                .map_err(|_| EditError::Invalid(format!("invalid method {method:?}")))?;
            req.edit()?.method = m;
            Ok(())
        })())
    }

    fn set_path_with_query(&mut self, h: Resource<RequestRes>, pq: String) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        Ok((|| {
            let parsed = pq
                .parse::<PathAndQuery>()
                .ok()
                .filter(|_| pq.starts_with('/'))
                .ok_or_else(|| EditError::Invalid(format!("invalid path {pq:?}: must be a path like /a?b=c")))?;
            req.edit()?.uri = Uri::from(parsed);
            Ok(())
        })())
    }

    fn set_header(
        &mut self,
        h: Resource<RequestRes>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        let arrived = req.parts.headers.len();
        Ok(req.edit().and_then(|e| set_header(&mut e.headers, arrived, &name, &value)))
    }

    fn append_header(
        &mut self,
        h: Resource<RequestRes>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        let arrived = req.parts.headers.len();
        Ok(req.edit().and_then(|e| append_header(&mut e.headers, arrived, &name, &value)))
    }

    fn remove_header(&mut self, h: Resource<RequestRes>, name: String) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        Ok(req.edit().and_then(|e| remove_header(&mut e.headers, &name)))
    }

    fn set_headers(&mut self, h: Resource<RequestRes>, list: Vec<Header>) -> wasmtime::Result<Result<(), EditError>> {
        let req = self.lent_request(&h)?;
        let arrived = req.parts.headers.len();
        Ok(req.edit().and_then(|e| set_headers(&mut e.headers, arrived, list)))
    }

    fn drop(&mut self, _h: Resource<RequestRes>) -> wasmtime::Result<()> {
        // Heads are only ever lent (borrowed), never given: nothing to free.
        Ok(())
    }
}

impl types::HostResponse for StoreData {
    fn status(&mut self, h: Resource<ResponseRes>) -> wasmtime::Result<u16> {
        Ok(self.lent_response(&h)?.status().as_u16())
    }

    fn header(&mut self, h: Resource<ResponseRes>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(values(self.lent_response(&h)?.headers(), &name.to_ascii_lowercase()))
    }

    fn headers(&mut self, h: Resource<ResponseRes>) -> wasmtime::Result<Vec<Header>> {
        Ok(to_list(self.lent_response(&h)?.headers()))
    }

    fn set_status(&mut self, h: Resource<ResponseRes>, status: u16) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.lent_response(&h)?;
        Ok((|| {
            let s = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| EditError::Invalid(format!("invalid status {status}: must be 200-999")))?;
            resp.edit()?.status = s;
            Ok(())
        })())
    }

    fn set_header(
        &mut self,
        h: Resource<ResponseRes>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.lent_response(&h)?;
        let arrived = resp.parts.headers.len();
        Ok(resp.edit().and_then(|e| set_header(&mut e.headers, arrived, &name, &value)))
    }

    fn append_header(
        &mut self,
        h: Resource<ResponseRes>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.lent_response(&h)?;
        let arrived = resp.parts.headers.len();
        Ok(resp.edit().and_then(|e| append_header(&mut e.headers, arrived, &name, &value)))
    }

    fn remove_header(&mut self, h: Resource<ResponseRes>, name: String) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.lent_response(&h)?;
        Ok(resp.edit().and_then(|e| remove_header(&mut e.headers, &name)))
    }

    fn set_headers(&mut self, h: Resource<ResponseRes>, list: Vec<Header>) -> wasmtime::Result<Result<(), EditError>> {
        let resp = self.lent_response(&h)?;
        let arrived = resp.parts.headers.len();
        Ok(resp.edit().and_then(|e| set_headers(&mut e.headers, arrived, list)))
    }

    fn drop(&mut self, _h: Resource<ResponseRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
