//! The request and response heads a plugin sees, and buffered bodies.
//!
//! A head lives in the gateway; [`Request`] and [`Response`] read it on
//! demand and cache what they read, so a plugin pays only for what it
//! touches: [`Request::header`] asks the gateway for one header, while
//! [`Request::headers`] fetches them all once. Edits
//! ([`Request::set_header`] and friends) are checked by the gateway when
//! they are made, and take effect when the phase returns
//! [`Action::Continue`](crate::Action::Continue).

use std::cell::OnceCell;
use std::net::SocketAddr;

use elsa::FrozenVec;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host::{RequestHandle, ResponseHandle};
use crate::{Error, Result};

/// A header value read on its own: the name it was asked for, and its first
/// value if that is visible ASCII.
struct Memo {
    name: String,
    value: Option<String>,
}

/// Reads of single headers, newest last: an edit of a header pushes a fresh
/// entry, so a lookup from the end is always current.
#[derive(Default)]
struct HeaderMemo(FrozenVec<Box<Memo>>);

impl HeaderMemo {
    fn find(&self, name: &str) -> Option<&Memo> {
        let len = self.0.len();
        (0..len).rev().filter_map(|i| self.0.get(i)).find(|m| m.name.eq_ignore_ascii_case(name))
    }

    fn push(&self, name: &str, value: Option<String>) -> &Memo {
        self.0.push_get(Box::new(Memo { name: name.to_ascii_lowercase(), value }))
    }
}

fn first_text(values: &[Vec<u8>]) -> Option<String> {
    values.first().and_then(|v| HeaderValue::from_bytes(v).ok()).and_then(|v| v.to_str().ok().map(str::to_owned))
}

fn to_map(list: Vec<(String, Vec<u8>)>) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            map.append(n, v);
        }
    }
    map
}

fn refused(what: &str, why: crate::host::EditError) -> Error {
    Error::internal(format!("the gateway refused {what}: {why}"))
}

/// The headers of a head: fetched whole on first use of `headers()`, kept
/// in step with single-header edits, sent back whole if changed through
/// `headers_mut()`.
#[derive(Default)]
struct Headers {
    all: OnceCell<HeaderMap>,
    dirty: bool,
    /// The map as fetched, kept when `headers_mut()` is first called: at
    /// the end of the phase only the headers that differ go back.
    original: Option<HeaderMap>,
    memo: HeaderMemo,
}

/// The most changed header names sent back one by one; more go back as
/// one whole list.
const MAX_SINGLE_EDITS: usize = 8;

/// What `headers_mut()` changed: each header whose values differ, with its
/// new values (none: removed); `None` when so much changed that sending the
/// whole map is cheaper.
fn changed(original: &HeaderMap, now: &HeaderMap) -> Option<Vec<(HeaderName, Vec<HeaderValue>)>> {
    let mut out = Vec::new();
    for name in now.keys() {
        if !original.get_all(name).iter().eq(now.get_all(name).iter()) {
            out.push((name.clone(), now.get_all(name).iter().cloned().collect()));
        }
    }
    for name in original.keys() {
        if !now.contains_key(name) {
            out.push((name.clone(), Vec::new()));
        }
    }
    (out.len() <= MAX_SINGLE_EDITS).then_some(out)
}

impl Headers {
    /// `headers_mut()`: the map, marked dirty, the original kept.
    fn for_edit(&mut self) -> &mut HeaderMap {
        if !self.dirty {
            self.dirty = true;
            self.original = self.all.get().cloned();
        }
        self.all.get_mut().expect("fetched before editing")
    }

    /// Send what `headers_mut()` changed through `handle`: header by
    /// header, or the whole list when much changed.
    fn send_back<H: HeaderEdits>(&mut self, handle: &mut H) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let Some(now) = self.all.take() else { return Ok(()) };
        let Some(edits) = self.original.take().and_then(|o| changed(&o, &now)) else {
            return handle.set_headers(to_list(&now)).map_err(|e| refused("the headers", e));
        };
        for (name, values) in edits {
            let refused = |e| refused(&format!("header {name}"), e);
            match values.split_first() {
                None => handle.remove_header(name.as_str()).map_err(refused)?,
                Some((first, rest)) => {
                    handle.set_header(name.as_str(), first.as_bytes()).map_err(refused)?;
                    for v in rest {
                        handle.append_header(name.as_str(), v.as_bytes()).map_err(refused)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The header edits both heads' handles make.
trait HeaderEdits {
    fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), crate::host::EditError>;
    fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), crate::host::EditError>;
    fn remove_header(&mut self, name: &str) -> Result<(), crate::host::EditError>;
    fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), crate::host::EditError>;
}

macro_rules! header_edits {
    ($handle:ty) => {
        impl HeaderEdits for $handle {
            fn set_header(&mut self, name: &str, value: &[u8]) -> Result<(), crate::host::EditError> {
                <$handle>::set_header(self, name, value)
            }
            fn append_header(&mut self, name: &str, value: &[u8]) -> Result<(), crate::host::EditError> {
                <$handle>::append_header(self, name, value)
            }
            fn remove_header(&mut self, name: &str) -> Result<(), crate::host::EditError> {
                <$handle>::remove_header(self, name)
            }
            fn set_headers(&mut self, list: Vec<(String, Vec<u8>)>) -> Result<(), crate::host::EditError> {
                <$handle>::set_headers(self, list)
            }
        }
    };
}

header_edits!(RequestHandle);
header_edits!(ResponseHandle);

impl Headers {
    fn all(&self, fetch: impl FnOnce() -> Vec<(String, Vec<u8>)>) -> &HeaderMap {
        self.all.get_or_init(|| to_map(fetch()))
    }

    fn header(&self, name: &str, fetch: impl FnOnce() -> Vec<Vec<u8>>) -> Option<&str> {
        if let Some(map) = self.all.get() {
            return map.get(name)?.to_str().ok();
        }
        let memo = match self.memo.find(name) {
            Some(m) => m,
            None => self.memo.push(name, first_text(&fetch())),
        };
        memo.value.as_deref()
    }

    fn values(&self, name: &str, fetch: impl FnOnce() -> Vec<Vec<u8>>) -> Vec<HeaderValue> {
        match self.all.get() {
            Some(map) => map.get_all(name).iter().cloned().collect(),
            None => fetch().into_iter().filter_map(|v| HeaderValue::try_from(v).ok()).collect(),
        }
    }

    /// Keep the caches in step after the gateway accepted an edit of `name`.
    fn edited(
        &mut self,
        name: &str,
        edit: impl FnOnce(&mut HeaderMap, HeaderName),
        now: impl FnOnce() -> Vec<Vec<u8>>,
    ) {
        if let Some(map) = self.all.get_mut()
            && let Ok(n) = HeaderName::try_from(name)
        {
            edit(map, n);
        }
        if self.memo.find(name).is_some() {
            self.memo.push(name, first_text(&now()));
        }
    }
}

/// A downstream request head, as edited by the plugins before this one.
///
/// Read what you need ([`Request::header`], [`Request::path`], ...) and edit
/// through the setters; nothing else crosses from the gateway.
pub struct Request {
    handle: RequestHandle,
    method: OnceCell<Method>,
    uri: OnceCell<Uri>,
    authority: OnceCell<String>,
    client_addr: OnceCell<Option<SocketAddr>>,
    route: OnceCell<String>,
    request_id: OnceCell<String>,
    path_params: OnceCell<Vec<(String, String)>>,
    tls: OnceCell<Option<Tls>>,
    headers: Headers,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("method", self.method()).field("uri", self.uri()).finish_non_exhaustive()
    }
}

impl Request {
    pub(crate) fn new(handle: RequestHandle) -> Self {
        Self {
            handle,
            method: OnceCell::new(),
            uri: OnceCell::new(),
            authority: OnceCell::new(),
            client_addr: OnceCell::new(),
            route: OnceCell::new(),
            request_id: OnceCell::new(),
            path_params: OnceCell::new(),
            tls: OnceCell::new(),
            headers: Headers::default(),
        }
    }

    /// Send back what `headers_mut` changed, and give the handle back.
    pub(crate) fn finish(mut self) -> Result<RequestHandle> {
        self.headers.send_back(&mut self.handle)?;
        Ok(self.handle)
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        self.method.get_or_init(|| Method::from_bytes(self.handle.method().as_bytes()).unwrap_or(Method::GET))
    }

    /// Change the method sent upstream.
    pub fn set_method(&mut self, method: Method) -> Result<()> {
        self.handle.set_method(method.as_str()).map_err(|e| refused("the method", e))?;
        self.method = OnceCell::from(method);
        Ok(())
    }

    /// Path and query, e.g. `/users/42?expand=1`.
    pub fn uri(&self) -> &Uri {
        self.uri.get_or_init(|| self.handle.path_with_query().parse().unwrap_or_else(|_| Uri::from_static("/")))
    }

    /// The path, e.g. `/users/42`.
    pub fn path(&self) -> &str {
        self.uri().path()
    }

    /// The raw query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.uri().query()
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
        let parsed: Uri = uri.parse()?;
        self.handle.set_path_with_query(uri).map_err(|e| refused("the uri", e))?;
        self.uri = OnceCell::from(parsed);
        Ok(())
    }

    /// The authority the client asked for (`Host`), empty if none.
    pub fn authority(&self) -> &str {
        self.authority.get_or_init(|| self.handle.authority())
    }

    /// The first value of header `name` (any case), if it is visible ASCII.
    /// Asks the gateway for this one header (once).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name, || self.handle.header(name))
    }

    /// Every value of header `name`, raw, in order.
    pub fn header_all(&self, name: &str) -> Vec<HeaderValue> {
        self.headers.values(name, || self.handle.header(name))
    }

    /// All request headers, fetched from the gateway on first use.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.all(|| self.handle.headers())
    }

    /// All request headers, for editing as a map; the whole map goes back
    /// to the gateway when the phase returns. For a few changes,
    /// [`Request::set_header`], [`Request::append_header`] and
    /// [`Request::remove_header`] are cheaper.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        let _ = self.headers();
        self.headers.for_edit()
    }

    /// Replace every value of header `name` with `value`. The gateway
    /// refuses invalid names and values and the headers it owns (framing and
    /// hop-by-hop: `content-length`, `transfer-encoding`, `connection`, ...).
    pub fn set_header(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.handle.set_header(name, value).map_err(|e| refused(&format!("header {name}"), e))?;
        let v = HeaderValue::from_bytes(value).ok();
        // Its only value now is `value`: no need to ask the gateway again.
        self.headers.edited(name, |m, n| set_in(m, n, v), || vec![value.to_vec()]);
        Ok(())
    }

    /// Add a value to header `name`, after any it has.
    pub fn append_header(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.handle.append_header(name, value).map_err(|e| refused(&format!("header {name}"), e))?;
        let v = HeaderValue::from_bytes(value).ok();
        let handle = &self.handle;
        self.headers.edited(name, |m, n| append_in(m, n, v), || handle.header(name));
        Ok(())
    }

    /// Remove every value of header `name`.
    pub fn remove_header(&mut self, name: impl AsRef<str>) -> Result<()> {
        let name = name.as_ref();
        self.handle.remove_header(name).map_err(|e| refused(&format!("header {name}"), e))?;
        self.headers.edited(name, |m, n| drop(m.remove(n)), Vec::new);
        Ok(())
    }

    /// Add a value to header `name` of the response this request will get
    /// from its upstream (or the route's cache), after any it has, without
    /// asking for the response phase (contract `0.2.6`). Use it for headers
    /// decided now that only the response carries: rate-limit quotas, a
    /// decision's id, CORS. The gateway adds it where this plugin's
    /// `on_response` would run (before it, if the plugin has one); a
    /// response a plugin makes itself ([`Reply`](crate::Reply)) does not get
    /// it. Checked now like [`Request::append_header`], and kept only if
    /// the phase continues; at most 64 per plugin and request; allowed in
    /// `on_request` and `on_request_body`.
    ///
    /// ```
    /// # use weir_plugin_sdk::prelude::*;
    /// # struct Quota;
    /// # impl Plugin for Quota {
    /// #     fn new(_: &Config) -> Result<Self> { Ok(Quota) }
    /// // No response phase needed.
    /// fn phases(&self) -> Phases {
    ///     Phases::REQUEST_HEADERS
    /// }
    ///
    /// fn on_request(&self, req: &mut Request, _cx: &Context) -> Result<Action> {
    ///     req.add_response_header("x-quota-left", "41")?;
    ///     Ok(Action::Continue)
    /// }
    /// # }
    /// # let h = weir_plugin_sdk::testing::Harness::<Quota>::new(serde_json::json!({})).unwrap();
    /// # h.on_request(http::Request::new(())).unwrap_continue();
    /// # let resp = h.on_response(&http::Request::new(()), http::Response::new(())).unwrap_continue();
    /// # assert_eq!(resp.headers()["x-quota-left"], "41");
    /// ```
    pub fn add_response_header(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.handle.add_response_header(name, value).map_err(|e| refused(&format!("response header {name}"), e))
    }

    /// The client's socket address.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        *self.client_addr.get_or_init(|| self.handle.client_addr().parse().ok())
    }

    /// The client's IP address.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.client_addr().map(|a| a.ip())
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        self.route.get_or_init(|| self.handle.route())
    }

    /// The gateway's request id.
    pub fn request_id(&self) -> &str {
        self.request_id.get_or_init(|| self.handle.request_id())
    }

    /// A parameter captured by the route path, e.g. `id` in `/users/{id}`.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        let params = self.path_params.get_or_init(|| self.handle.path_params());
        params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The client's TLS connection, when the request came in on the
    /// gateway's TLS listener; `None` in cleartext. With mutual TLS,
    /// [`Tls::client_subject`] is the client certificate the gateway
    /// verified: an identity a plugin can authorise on.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.get_or_init(|| self.handle.tls()).as_ref()
    }
}

/// What the gateway's TLS listener established with the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tls {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The protocol agreed by ALPN (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// The name the client asked for by SNI, if any.
    pub server_name: Option<String>,
    /// The verified client certificate's subject, e.g. `CN=client-1, O=Acme`.
    pub client_subject: Option<String>,
    /// SHA-256 of the client certificate (DER, lower-case hex).
    pub client_cert_sha256: Option<String>,
}

impl Tls {
    /// A connection of `version` (e.g. `TLSv1.3`), for tests with
    /// [`crate::testing::Harness::tls`].
    pub fn new(version: &str) -> Self {
        Self { version: version.to_owned(), ..Self::default() }
    }

    /// With a verified client certificate of this subject.
    pub fn with_client_subject(mut self, subject: &str) -> Self {
        self.client_subject = Some(subject.to_owned());
        self
    }

    /// With this SNI name.
    pub fn with_server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_owned());
        self
    }
}

/// An upstream response head, as edited by the plugins after this one in
/// the chain (response phases run in reverse order).
pub struct Response {
    handle: ResponseHandle,
    status: OnceCell<StatusCode>,
    headers: Headers,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl Response {
    pub(crate) fn new(handle: ResponseHandle) -> Self {
        Self { handle, status: OnceCell::new(), headers: Headers::default() }
    }

    /// Send back what `headers_mut` changed, and give the handle back.
    pub(crate) fn finish(mut self) -> Result<ResponseHandle> {
        self.headers.send_back(&mut self.handle)?;
        Ok(self.handle)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        *self.status.get_or_init(|| StatusCode::from_u16(self.handle.status()).unwrap_or(StatusCode::BAD_GATEWAY))
    }

    /// Change the status code sent downstream (200-999).
    pub fn set_status(&mut self, status: StatusCode) -> Result<()> {
        self.handle.set_status(status.as_u16()).map_err(|e| refused("the status", e))?;
        self.status = OnceCell::from(status);
        Ok(())
    }

    /// The first value of header `name`, if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name, || self.handle.header(name))
    }

    /// Every value of header `name`, raw, in order.
    pub fn header_all(&self, name: &str) -> Vec<HeaderValue> {
        self.headers.values(name, || self.handle.header(name))
    }

    /// All response headers, fetched on first use.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.all(|| self.handle.headers())
    }

    /// All response headers, for editing as a map (sent back whole).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        let _ = self.headers();
        self.headers.for_edit()
    }

    /// Replace every value of header `name` with `value`.
    pub fn set_header(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.handle.set_header(name, value).map_err(|e| refused(&format!("header {name}"), e))?;
        let v = HeaderValue::from_bytes(value).ok();
        // Its only value now is `value`: no need to ask the gateway again.
        self.headers.edited(name, |m, n| set_in(m, n, v), || vec![value.to_vec()]);
        Ok(())
    }

    /// Add a value to header `name`.
    pub fn append_header(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<()> {
        let (name, value) = (name.as_ref(), value.as_ref());
        self.handle.append_header(name, value).map_err(|e| refused(&format!("header {name}"), e))?;
        let v = HeaderValue::from_bytes(value).ok();
        let handle = &self.handle;
        self.headers.edited(name, |m, n| append_in(m, n, v), || handle.header(name));
        Ok(())
    }

    /// Remove every value of header `name`.
    pub fn remove_header(&mut self, name: impl AsRef<str>) -> Result<()> {
        let name = name.as_ref();
        self.handle.remove_header(name).map_err(|e| refused(&format!("header {name}"), e))?;
        self.headers.edited(name, |m, n| drop(m.remove(n)), Vec::new);
        Ok(())
    }
}

fn set_in(map: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => drop(map.insert(name, v)),
        None => drop(map.remove(name)),
    }
}

fn append_in(map: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    if let Some(v) = value {
        map.append(name, v);
    }
}

fn to_list(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
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

/// A chunk of a streamed body (see [`Plugin::streams`](crate::Plugin::streams)):
/// the bytes that arrived, which the plugin may pass on unchanged, replace
/// or drop.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    end: bool,
    changed: bool,
}

impl Chunk {
    /// A chunk of `bytes`; `end` for the body's last.
    pub(crate) fn new(bytes: Vec<u8>, end: bool) -> Self {
        Self { bytes, end, changed: false }
    }

    /// Only a chunk that was changed travels back to the gateway.
    pub(crate) fn into_changed(self) -> Option<Vec<u8>> {
        self.changed.then_some(self.bytes)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this is the body's last chunk (it may be empty: the place
    /// to pass on what was held back, or to append).
    pub fn is_end(&self) -> bool {
        self.end
    }

    /// Pass `bytes` on in place of this chunk.
    pub fn set(&mut self, bytes: impl Into<Vec<u8>>) {
        self.bytes = bytes.into();
        self.changed = true;
    }

    /// Pass nothing on for this chunk.
    pub fn clear(&mut self) {
        self.set(Vec::new());
    }

    /// The bytes, for editing in place.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        self.changed = true;
        &mut self.bytes
    }
}

#[cfg(test)]
mod edits {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(HeaderName::try_from(*n).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        m
    }

    #[test]
    fn only_changed_headers_go_back() {
        let before = map(&[("a", "1"), ("b", "2"), ("c", "3"), ("c", "4")]);
        let after = map(&[("a", "1"), ("b", "20"), ("c", "3"), ("c", "4"), ("c", "5"), ("d", "6")]);
        let mut edits = changed(&before, &after).expect("few edits");
        edits.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        let names: Vec<(&str, usize)> = edits.iter().map(|(n, v)| (n.as_str(), v.len())).collect();
        assert_eq!(names, [("b", 1), ("c", 3), ("d", 1)]);
        let removed = changed(&before, &map(&[("a", "1"), ("b", "2")])).expect("few edits");
        assert_eq!(removed.len(), 1);
        assert!(removed[0].1.is_empty(), "`c` removed");
        assert!(changed(&before, &before).expect("none").is_empty());
        let many: Vec<(String, String)> = (0..20).map(|i| (format!("h{i}"), "v".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert!(changed(&before, &map(&many)).is_none(), "a whole new map goes back whole");
    }
}
