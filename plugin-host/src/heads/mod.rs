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
use http::{Method, StatusCode, Uri};
use wasmtime::component::Resource;

use crate::bindings::types::{EditError, Header};
use crate::bindings::{RequestRes, ResponseRes};

mod rules;
pub use rules::{
    HOP_BY_HOP, HeaderListError, MAX_PLUGIN_HEADER_BYTES, MAX_PLUGIN_HEADERS, from_plugin, is_gateway_owned, to_wit,
    with_plugin_headers,
};

/// Largest header value a plugin may set.
pub const MAX_PLUGIN_VALUE: usize = MAX_PLUGIN_HEADER_BYTES;

/// What a TLS handshake established, for the request path, plugins and
/// the upstream.
#[derive(Debug, Clone)]
pub struct ConnectionTls {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The protocol agreed by ALPN, if any.
    pub alpn: Option<&'static str>,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The verified client certificate's subject (RFC 4514 style, e.g.
    /// `CN=client-1, O=Acme`), when the client presented one.
    pub client_subject: Option<String>,
    /// SHA-256 of the client certificate (hex), when presented.
    pub client_cert_sha256: Option<String>,
}

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
    pub tls: Option<Arc<ConnectionTls>>,
}

impl RequestInfo {
    /// `https` on the TLS listener, `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// `addr` as `Display` writes it (`1.2.3.4:5`, `[::1]:5`), without the
/// formatting machinery for IPv4, the common case: plugins ask for the
/// client's address on most requests (rate limits, anomaly), and
/// `to_string` cost ~1,700 instructions of a ~2,000-instruction host call.
pub fn addr_text(addr: &SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else { return addr.to_string() };
    let mut out = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(&mut out, u32::from(octet));
    }
    out.push(':');
    push_decimal(&mut out, u32::from(v4.port()));
    out
}

fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// The request head while it is lent (or ready to be lent) to plugins.
pub struct LentRequest {
    /// The head as the chain left it so far.
    pub parts: http::request::Parts,
    pub(crate) edit: Option<Box<RequestEdit>>,
    pub(crate) editable: bool,
    pub(crate) info: Arc<RequestInfo>,
    /// Response headers the phase being run added (`add-response-header`,
    /// contract `0.2.6`): moved to the plugin's [`crate::RequestSlot`] when
    /// the phase continues, dropped with its other edits when it does not.
    pub(crate) response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Most response headers one plugin may add from a request's phases
/// (`add-response-header`).
pub const MAX_RESPONSE_HEADERS_ADDED: usize = 64;

pub(crate) struct RequestEdit {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
}

/// The response head while it is lent to plugins.
pub struct LentResponse {
    /// The head as the chain left it so far.
    pub parts: http::response::Parts,
    pub(crate) edit: Option<Box<ResponseEdit>>,
    pub(crate) editable: bool,
}

pub(crate) struct ResponseEdit {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

/// The heads of one exchange: the request, and the response once there is
/// one.
pub struct Heads {
    /// The request (read-only once it has been sent upstream).
    pub request: LentRequest,
    /// The upstream's response, in response phases.
    pub response: Option<LentResponse>,
    /// What the chain's plugins published for each other (`chain-data`).
    pub chain: ChainData,
    /// The outbound calls of the phase being run, and the trace they join.
    pub outbound: OutboundLog,
}

/// A request's trace, as outbound calls carry it on (`traceparent`).
#[derive(Debug, Clone, Copy)]
pub struct TraceContext {
    /// The trace id (written as 32 hex digits).
    pub trace_id: u128,
    /// The sampled flag.
    pub sampled: bool,
}

/// One outbound call a plugin made, for the access log and the trace.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    /// The upstream (`-` for a name the plugin may not call).
    pub upstream: String,
    /// `answered`, `not_allowed`, `invalid`, `limit`, `timeout`,
    /// `unavailable`.
    pub outcome: &'static str,
    /// The answer's status.
    pub status: Option<u16>,
    /// The span id it was sent with, when the request is traced.
    pub span_id: Option<String>,
    /// Start and end, ns since the Unix epoch.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
}

/// The outbound calls of a request's current phase, taken by the chain
/// runner after each plugin call.
#[derive(Debug, Default)]
pub struct OutboundLog {
    /// The trace to carry on, if the request has one.
    pub trace: Option<TraceContext>,
    /// Calls made since the runner last took them.
    pub calls: Vec<OutboundRecord>,
}

/// Most keys one plugin may publish per request.
const MAX_CHAIN_KEYS: usize = 32;
/// Longest key.
const MAX_CHAIN_KEY_LEN: usize = 128;
/// Most bytes of keys and values one plugin may publish per request.
const MAX_CHAIN_BYTES: usize = 16 * 1024;

/// Values published by a chain's plugins for one request: by publisher and
/// key. A phase's values are staged and take effect with its other edits.
#[derive(Debug, Default, Clone)]
pub struct ChainData {
    entries: Vec<ChainEntry>,
    staged: Vec<ChainEntry>,
}

#[derive(Debug, Clone)]
struct ChainEntry {
    plugin: Arc<str>,
    key: String,
    value: Vec<u8>,
}

impl ChainData {
    /// Stage `plugin`'s `key`; false if over the limits.
    pub(crate) fn publish(&mut self, plugin: &Arc<str>, key: String, value: Vec<u8>) -> bool {
        if key.is_empty() || key.len() > MAX_CHAIN_KEY_LEN {
            return false;
        }
        // What the plugin would hold with this value in place.
        let mut keys = 0;
        let mut bytes = key.len() + value.len();
        let mut kept = std::collections::HashSet::new();
        for e in self.staged.iter().rev().chain(self.entries.iter()) {
            if *e.plugin == **plugin && e.key != key && kept.insert(e.key.as_str()) {
                keys += 1;
                bytes += e.key.len() + e.value.len();
            }
        }
        if keys + 1 > MAX_CHAIN_KEYS || bytes > MAX_CHAIN_BYTES {
            return false;
        }
        self.staged.retain(|e| !(*e.plugin == **plugin && e.key == key));
        self.staged.push(ChainEntry { plugin: plugin.clone(), key, value });
        true
    }

    /// The value `plugin` published under `key` (staged ones first).
    pub fn read(&self, plugin: &str, key: &str) -> Option<&[u8]> {
        self.staged
            .iter()
            .rev()
            .chain(self.entries.iter())
            .find(|e| &*e.plugin == plugin && e.key == key)
            .map(|e| e.value.as_slice())
    }

    /// The values in effect (not the staged ones): publisher, key, value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &[u8])> {
        self.entries.iter().map(|e| (&*e.plugin, e.key.as_str(), e.value.as_slice()))
    }

    /// Put a value in effect as if `plugin` had published it (replaying a
    /// recorded request).
    pub fn restore(&mut self, plugin: &str, key: String, value: Vec<u8>) {
        self.entries.retain(|old| !(&*old.plugin == plugin && old.key == key));
        self.entries.push(ChainEntry { plugin: plugin.into(), key, value });
    }

    fn commit(&mut self) {
        for e in self.staged.drain(..) {
            self.entries.retain(|old| !(old.plugin == e.plugin && old.key == e.key));
            self.entries.push(e);
        }
    }
}

impl LentRequest {
    /// A head plugins may edit.
    /// What the gateway knows of the request beyond its head.
    pub fn info(&self) -> &Arc<RequestInfo> {
        &self.info
    }

    pub fn new(parts: http::request::Parts, info: Arc<RequestInfo>) -> Self {
        Self { parts, edit: None, editable: true, info, response_headers: Vec::new() }
    }

    /// A read-only copy of the head as it is now: what response phases see
    /// of the request that went upstream.
    pub fn snapshot(&self) -> Self {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = self.parts.method.clone();
        parts.uri = self.parts.uri.clone();
        parts.headers = self.parts.headers.clone();
        Self { parts, edit: None, editable: false, info: self.info.clone(), response_headers: Vec::new() }
    }

    /// Stop accepting edits (the body phases run after the head is settled).
    pub fn freeze(&mut self) {
        self.editable = false;
    }

    pub(crate) fn method(&self) -> &Method {
        self.edit.as_ref().map_or(&self.parts.method, |e| &e.method)
    }

    pub(crate) fn uri(&self) -> &Uri {
        self.edit.as_ref().map_or(&self.parts.uri, |e| &e.uri)
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        self.edit.as_ref().map_or(&self.parts.headers, |e| &e.headers)
    }

    /// The copy edits go to, made at the first edit.
    pub(crate) fn edit(&mut self) -> Result<&mut RequestEdit, EditError> {
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

    /// A read-only copy of the head as it is now: what chunk calls see of
    /// a response whose head has gone to the client.
    pub fn snapshot(&self) -> Self {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = self.status();
        parts.version = self.parts.version;
        parts.headers = self.headers().clone();
        Self { parts, edit: None, editable: false }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.edit.as_ref().map_or(self.parts.status, |e| e.status)
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        self.edit.as_ref().map_or(&self.parts.headers, |e| &e.headers)
    }

    /// Append a header a plugin added from the request's phases
    /// (`add-response-header`, already checked) at that plugin's place in
    /// the response phases. Not an edit of the phase being run: the head as
    /// the chain left it gets it, and the response's limits do not apply
    /// (at most [`MAX_RESPONSE_HEADERS_ADDED`] per plugin).
    pub fn add_header(&mut self, name: HeaderName, value: HeaderValue) {
        match &mut self.edit {
            Some(e) => e.headers.append(name, value),
            None => self.parts.headers.append(name, value),
        };
    }

    pub(crate) fn edit(&mut self) -> Result<&mut ResponseEdit, EditError> {
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
        self.chain.commit();
    }

    /// The edits of a phase that failed or answered are dropped.
    pub fn discard(&mut self) {
        self.request.edit = None;
        self.request.response_headers.clear();
        if let Some(r) = &mut self.response {
            r.edit = None;
        }
        self.chain.staged.clear();
    }
}

/// The heads lent to one instance for one call, and the handles naming them.
pub(crate) struct Lent {
    pub(crate) heads: Heads,
    /// Response headers the plugin added in this request's earlier phases
    /// (they count towards [`MAX_RESPONSE_HEADERS_ADDED`]).
    pub(crate) response_headers_held: usize,
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

pub(crate) fn header_name(name: &str) -> Result<HeaderName, EditError> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| EditError::Invalid(format!("invalid header name {name:?}")))?;
    if is_gateway_owned(name.as_str()) {
        return Err(EditError::Reserved(name.as_str().to_owned()));
    }
    Ok(name)
}

pub(crate) fn header_value(name: &HeaderName, value: &[u8]) -> Result<HeaderValue, EditError> {
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
pub(crate) fn room(headers: &HeaderMap, arrived: usize) -> Result<(), EditError> {
    if headers.len() >= MAX_PLUGIN_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("at most {MAX_PLUGIN_HEADERS} header values")));
    }
    Ok(())
}

pub(crate) fn values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect()
}

pub(crate) fn to_list(headers: &HeaderMap) -> Vec<Header> {
    to_wit(headers)
}

pub(crate) fn set_header(headers: &mut HeaderMap, arrived: usize, name: &str, value: &[u8]) -> Result<(), EditError> {
    let name = header_name(name)?;
    let value = header_value(&name, value)?;
    if !headers.contains_key(&name) {
        room(headers, arrived)?;
    }
    headers.insert(name, value);
    Ok(())
}

pub(crate) fn append_header(
    headers: &mut HeaderMap,
    arrived: usize,
    name: &str,
    value: &[u8],
) -> Result<(), EditError> {
    let name = header_name(name)?;
    let value = header_value(&name, value)?;
    room(headers, arrived)?;
    headers.append(name, value);
    Ok(())
}

/// Stage a header for the response to `req` (`add-response-header`): checked
/// as an edit now, kept if the phase continues.
pub(crate) fn add_response_header(
    req: &mut LentRequest,
    held: usize,
    name: &str,
    value: &[u8],
) -> Result<(), EditError> {
    if !req.editable {
        return Err(EditError::ReadOnly);
    }
    let name = header_name(name)?;
    let value = header_value(&name, value)?;
    if held + req.response_headers.len() >= MAX_RESPONSE_HEADERS_ADDED {
        return Err(EditError::TooLarge(format!(
            "at most {MAX_RESPONSE_HEADERS_ADDED} response headers added per plugin and request"
        )));
    }
    req.response_headers.push((name, value));
    Ok(())
}

pub(crate) fn remove_header(headers: &mut HeaderMap, name: &str) -> Result<(), EditError> {
    let name = header_name(name)?;
    headers.remove(name);
    Ok(())
}

/// Replace `headers` with `list`, keeping the gateway-owned (framing)
/// headers it has; gateway-owned names in `list` are skipped.
pub(crate) fn set_headers(headers: &mut HeaderMap, arrived: usize, list: Vec<Header>) -> Result<(), EditError> {
    if list.len() > MAX_PLUGIN_HEADERS.max(arrived) {
        return Err(EditError::TooLarge(format!("{} headers, at most {MAX_PLUGIN_HEADERS}", list.len())));
    }
    *headers = with_plugin_headers(headers, list).map_err(|e| EditError::Invalid(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
