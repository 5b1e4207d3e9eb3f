//! The host side of the `request` and `response` resources: each method
//! finds the head lent for the current call (see `heads::Lent`) and reads
//! or edits it with the checks in `heads`.

use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use wasmtime::component::Resource;

use super::StoreData;
use crate::bindings::types::{self, EditError, Header};
use crate::bindings::{RequestRes, ResponseRes};
use crate::heads::{
    LentRequest, LentResponse, add_response_header, append_header, remove_header, set_header, set_headers, to_list,
    values,
};

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
        Ok(crate::heads::addr_text(&self.lent_request(&h)?.info.client))
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

    fn add_response_header(
        &mut self,
        h: Resource<RequestRes>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), EditError>> {
        let held = self.lent.as_ref().map_or(0, |l| l.response_headers_held);
        let req = self.lent_request(&h)?;
        Ok(add_response_header(req, held, &name, &value))
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
