//! Conversions between the WIT records and the SDK's `http`-based types.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::__private::bindings::weir::plugin::types::{
    Header, RequestEdits, RequestHead, Response as WitResponse, ResponseEdits, ResponseHead,
};
use crate::{Error, Reply, Request, Response};

/// An error while running a phase: becomes the client's response.
pub(crate) struct PhaseError(Error);

impl PhaseError {
    pub(crate) fn internal(message: &str) -> Self {
        Self(Error::internal(message))
    }

    pub(crate) fn into_response(self) -> WitResponse {
        let body = serde_json::json!({ "error": self.0.message() });
        WitResponse {
            status: self.0.status().as_u16(),
            headers: vec![Header { name: "content-type".into(), value: b"application/json".to_vec() }],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

impl From<Error> for PhaseError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

fn headers_from_wit(headers: Vec<Header>) -> Result<HeaderMap, PhaseError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = HeaderName::try_from(h.name)
            .map_err(|e| PhaseError::internal(&format!("host sent an invalid header name: {e}")))?;
        let value = HeaderValue::try_from(h.value)
            .map_err(|e| PhaseError::internal(&format!("host sent an invalid header value: {e}")))?;
        map.append(name, value);
    }
    Ok(map)
}

pub(crate) fn headers_to_wit(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header { name: name.as_str().to_owned(), value: value.as_bytes().to_vec() })
        .collect()
}

pub(crate) fn request_from_wit(head: RequestHead) -> Result<Request, PhaseError> {
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|e| PhaseError::internal(&format!("host sent an invalid method: {e}")))?;
    let uri = head.uri.parse().map_err(|e| PhaseError::internal(&format!("host sent an invalid uri: {e}")))?;
    Ok(Request {
        method,
        uri,
        authority: head.authority,
        headers: headers_from_wit(head.headers)?,
        client_addr: head.client_addr.parse().ok(),
        route: head.route,
        request_id: head.request_id,
        path_params: head.path_params,
        method_changed: false,
        uri_changed: false,
        headers_changed: false,
    })
}

/// The edits to send back: only what the plugin touched.
pub(crate) fn request_edits(req: Request) -> RequestEdits {
    RequestEdits {
        method: req.method_changed.then(|| req.method.as_str().to_owned()),
        uri: req.uri_changed.then(|| req.uri.to_string()),
        headers: req.headers_changed.then(|| headers_to_wit(&req.headers)),
    }
}

pub(crate) fn response_from_wit(head: ResponseHead) -> Result<Response, PhaseError> {
    let status = StatusCode::from_u16(head.status)
        .map_err(|e| PhaseError::internal(&format!("host sent an invalid status: {e}")))?;
    Ok(Response { status, headers: headers_from_wit(head.headers)?, status_changed: false, headers_changed: false })
}

pub(crate) fn response_edits(resp: Response) -> ResponseEdits {
    ResponseEdits {
        status: resp.status_changed.then(|| resp.status.as_u16()),
        headers: resp.headers_changed.then(|| headers_to_wit(&resp.headers)),
    }
}

pub(crate) fn reply_to_wit(reply: Reply) -> Result<WitResponse, PhaseError> {
    if let Some(invalid) = reply.invalid {
        return Err(PhaseError::internal(&invalid));
    }
    Ok(WitResponse { status: reply.status.as_u16(), headers: headers_to_wit(&reply.headers), body: reply.body })
}

/// Used by the native harness to build the head the gateway would send.
pub(crate) fn request_to_wit(
    req: &http::Request<()>,
    client_addr: &str,
    route: &str,
    path_params: &[(String, String)],
) -> RequestHead {
    RequestHead {
        method: req.method().as_str().to_owned(),
        uri: req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into()),
        authority: req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default(),
        headers: headers_to_wit(req.headers()),
        client_addr: client_addr.to_owned(),
        route: route.to_owned(),
        request_id: "test-request".to_owned(),
        path_params: path_params.to_vec(),
    }
}

pub(crate) fn wit_headers_to_map(headers: Vec<Header>) -> HeaderMap {
    headers_from_wit(headers).unwrap_or_default()
}
