//! `transform.wasm`: rewrite requests and responses — headers, path, query
//! parameters, JSON bodies and status codes — with values taken from the
//! request through templates (`{header.x-user}`, `{path.id}`,
//! `{query.q}`, `{client_ip}`, …).
//!
//! ```toml
//! [plugins.items-v2]
//! module = "transform.wasm"
//!
//! [plugins.items-v2.config.request]
//! headers = { remove = ["x-debug"], set = { "x-item" = "{path.id}" } }
//! path = { strip_prefix = "/api", regex = "^/items/([^/]+)$", replace = "/v2/items/$1" }
//! query = { remove = ["token"], add = { source = "gateway" } }
//! body = { remove = ["/internal"], set = { "/meta/client" = "{client_ip}" } }
//!
//! [plugins.items-v2.config.response]
//! headers = { add = { "x-served-by" = "weir" } }
//! body = { rename = { "/userName" = "/user_name" } }
//! status_map = { "404" = 200, "5xx" = 503 }
//! ```
//!
//! Everything is checked and compiled in `new` (header names, pointers,
//! the regex, templates, status codes); the plugin asks only for the phases
//! its config needs. Order of operations, per direction: headers (remove →
//! rename → set → add), path (strip_prefix → regex → add_prefix), query
//! (remove → rename → set → add), JSON body (remove → rename → set), status
//! map. `README.md` beside this crate is the full reference.
//!
//! Templates read the request as it reached this plugin's `on_request`
//! (before its own edits). Values a plugin can change (headers, query,
//! method, path) that later phases' templates need are kept with
//! `cx.set_local` in `on_request`; the rest is the same in every phase.

use weir_plugin_sdk::prelude::*;

mod body;
mod config;
mod headers;
mod json;
mod path;
mod query;
mod template;

use body::{BodyPlan, Outcome};
use headers::HeaderPlan;
use path::PathPlan;
use query::QueryPlan;
use template::{Source, Vars};

/// Default `max_body`: 1 MiB, the gateway's default buffer limit.
const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// The request-local key under which `on_request` keeps template values.
const KEPT: &str = "transform.request";

/// A compiled configuration.
struct Transform {
    req_headers: HeaderPlan,
    path: Option<PathPlan>,
    query: QueryPlan,
    req_body: BodyPlan,
    resp_headers: HeaderPlan,
    resp_body: BodyPlan,
    status_map: StatusMap,
    max_body: usize,
    /// Changeable sources that the body and response phases' templates
    /// read, kept from `on_request` so they see the request as it was.
    kept: Vec<Source>,
    /// The response headers are only values to add (and no status is
    /// mapped): they are rendered and go on the response from `on_request`
    /// (`add_response_header`), and the plugin takes no response phase.
    resp_adds_early: bool,
}

impl Plugin for Transform {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<config::Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        let s: config::Settings = serde_path_to_error::deserialize(config.as_json()).map_err(|e| {
            let at = e.path().to_string();
            if at == "." {
                Error::internal(format!("invalid config: {}", e.inner()))
            } else {
                Error::internal(format!("invalid config at `{at}`: {}", e.inner()))
            }
        })?;
        Self::compile(&s).map_err(Error::internal)
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::empty();
        if !self.req_headers.is_empty() || self.path.is_some() || !self.query.is_empty() || !self.kept.is_empty() {
            p |= Phases::REQUEST_HEADERS;
        }
        if !self.req_body.is_empty() {
            p |= Phases::REQUEST_BODY;
        }
        if self.resp_adds_early {
            p |= Phases::REQUEST_HEADERS;
        } else if !self.resp_headers.is_empty() || !self.status_map.is_empty() {
            p |= Phases::RESPONSE_HEADERS;
        }
        if !self.resp_body.is_empty() {
            p |= Phases::RESPONSE_BODY;
        }
        p
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        if !self.kept.is_empty() {
            self.keep(req, cx);
        }
        // Render everything first, from the request as it arrived; then edit.
        let vars = Vars::new(req);
        let headers = if self.req_headers.changes(req) {
            let (values, invalid) = self.req_headers.render(&vars);
            if let Some(bad) = invalid.first() {
                // Fail closed: skipping a `set` could let a client's own
                // value of the header through.
                return Err(Error::new(
                    StatusCode::BAD_REQUEST,
                    format!("header {} would get an invalid value from the request: {}", bad.header, bad.reason),
                ));
            }
            Some(values)
        } else {
            None
        };
        let path = match &self.path {
            Some(plan) => plan.apply(req.path(), &vars).map_err(|e| Error::new(StatusCode::BAD_REQUEST, e))?,
            None => None,
        };
        let query = self.query.apply(req.query(), &vars);
        // Their templates read the request as it arrived, as the response
        // phase's would (it reads the values kept here).
        let resp_adds = self.resp_adds_early.then(|| self.rendered_response_headers(&vars, cx));

        if let Some(values) = headers {
            self.req_headers.apply(req, values)?;
        }
        if path.is_some() || query.is_some() {
            let path = path.unwrap_or_else(|| req.path().to_owned());
            let query = query.unwrap_or_else(|| req.query().map(str::to_owned));
            let uri = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            req.set_uri(&uri).map_err(|e| Error::internal(format!("rewritten uri {uri:?} is invalid: {e}")))?;
        }
        if let Some(values) = resp_adds {
            for (n, v) in self.resp_headers.added(values) {
                req.add_response_header(n.as_str(), v.as_bytes())?;
            }
        }
        Ok(Action::Continue)
    }

    fn on_request_body(&self, req: &mut Request, body: &mut Body, cx: &Context) -> Result<Action> {
        let kept = self.kept_values(cx);
        let vars = self.vars(req, kept.as_deref());
        match self.req_body.transform(req.headers(), body.as_bytes(), self.max_body, &vars) {
            Outcome::Unchanged => {}
            Outcome::Changed(bytes) => body.set(bytes),
            Outcome::Encoded(enc) => {
                return Err(Error::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("cannot transform a JSON body with content-encoding {enc:?}"),
                ));
            }
            Outcome::TooLarge(n) => {
                return Err(Error::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("JSON body of {n} bytes is larger than the transform limit of {} bytes", self.max_body),
                ));
            }
            Outcome::Invalid(e) => {
                return Err(Error::new(StatusCode::BAD_REQUEST, format!("body is not valid JSON: {e}")));
            }
        }
        Ok(Action::Continue)
    }

    fn on_response(&self, req: &Request, resp: &mut Response, cx: &Context) -> Result<Action> {
        if let Some(status) = self.status_map.get(resp.status()) {
            resp.set_status(status)?;
        }
        if self.resp_headers.changes(resp) {
            let kept = self.kept_values(cx);
            let vars = self.vars(req, kept.as_deref());
            let values = self.rendered_response_headers(&vars, cx);
            self.resp_headers.apply(resp, values)?;
        }
        Ok(Action::Continue)
    }

    fn on_response_body(&self, req: &Request, resp: &Response, body: &mut Body, cx: &Context) -> Result<Action> {
        let kept = self.kept_values(cx);
        let vars = self.vars(req, kept.as_deref());
        // A response the plugin cannot edit is passed on as it is.
        let (counter, why) = match self.resp_body.transform(resp.headers(), body.as_bytes(), self.max_body, &vars) {
            Outcome::Unchanged => return Ok(Action::Continue),
            Outcome::Changed(bytes) => {
                body.set(bytes);
                return Ok(Action::Continue);
            }
            Outcome::Encoded(enc) => ("response_body_skipped_encoded", format!("content-encoding {enc:?}")),
            Outcome::TooLarge(n) => {
                ("response_body_skipped_too_large", format!("{n} bytes, limit {} bytes", self.max_body))
            }
            Outcome::Invalid(e) => ("response_body_skipped_invalid", format!("invalid JSON: {e}")),
        };
        cx.counter_add(counter, 1);
        cx.log(Level::Warn, &format!("response body passed through unchanged: {why}"));
        Ok(Action::Continue)
    }
}

impl Transform {
    fn compile(s: &config::Settings) -> Result<Self, String> {
        let max_body = match &s.max_body {
            Some(size) => size.bytes().map_err(|e| format!("max_body: {e}"))?,
            None => DEFAULT_MAX_BODY,
        };
        if max_body == 0 {
            return Err("max_body: must be more than 0".into());
        }
        let mut t = Self {
            req_headers: HeaderPlan::compile("request.headers", &s.request.headers)?,
            path: PathPlan::compile(&s.request.path)?,
            query: QueryPlan::compile(&s.request.query)?,
            req_body: BodyPlan::compile("request.body", &s.request.body)?,
            resp_headers: HeaderPlan::compile("response.headers", &s.response.headers)?,
            resp_body: BodyPlan::compile("response.body", &s.response.body)?,
            status_map: StatusMap::compile(&s.response.status_map)?,
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            kept: Vec::new(),
            resp_adds_early: false,
        };
        t.resp_adds_early = t.status_map.is_empty() && t.resp_headers.only_adds();
        let mut kept: Vec<Source> = Vec::new();
        // Early response headers are rendered in `on_request` itself.
        let resp_header_sources = (!t.resp_adds_early).then(|| t.resp_headers.sources()).into_iter().flatten();
        for src in t.req_body.sources().chain(resp_header_sources).chain(t.resp_body.sources()) {
            if src.is_mutable() && !kept.contains(src) {
                kept.push(src.clone());
            }
        }
        t.kept = kept;
        Ok(t)
    }

    /// The response headers' values. A bad one is left out and logged, not
    /// turned into an error response: the upstream answers all the same.
    fn rendered_response_headers(&self, vars: &Vars<'_>, cx: &Context) -> headers::Rendered {
        let (values, invalid) = self.resp_headers.render(vars);
        for bad in invalid {
            cx.log(Level::Warn, &format!("response header {} left out: invalid value ({})", bad.header, bad.reason));
        }
        values
    }

    /// Keep the changeable values later phases' templates need.
    fn keep(&self, req: &Request, cx: &Context) {
        let values: Vec<String> = self.kept.iter().map(|s| template::current(req, s).into_owned()).collect();
        let stored = serde_json::to_vec(&values).is_ok_and(|bytes| cx.set_local(KEPT, bytes));
        if !stored {
            cx.log(
                Level::Warn,
                "request values for templates exceed the request-local limit (16 KiB); \
                 later phases read the request as sent upstream",
            );
        }
    }

    fn kept_values(&self, cx: &Context) -> Option<Vec<String>> {
        if self.kept.is_empty() {
            return None;
        }
        cx.get_local(KEPT).and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    fn vars<'a>(&'a self, req: &'a Request, kept: Option<&'a [String]>) -> Vars<'a> {
        match kept {
            Some(values) => Vars::with_kept(req, &self.kept, values),
            None => Vars::new(req),
        }
    }
}

/// `status_map`: exact codes first, then classes (`"5xx"`).
#[derive(Default)]
struct StatusMap {
    exact: Vec<(u16, StatusCode)>,
    class: [Option<StatusCode>; 6],
}

impl StatusMap {
    fn compile(map: &std::collections::BTreeMap<String, u16>) -> Result<Self, String> {
        let mut out = Self::default();
        for (key, &to) in map {
            let target = StatusCode::from_u16(to)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| format!("response.status_map.\"{key}\": {to} is not a status code in 200-599"))?;
            let bytes = key.as_bytes();
            if bytes.len() == 3 && (b'1'..=b'5').contains(&bytes[0]) && key[1..].eq_ignore_ascii_case("xx") {
                out.class[usize::from(bytes[0] - b'0')] = Some(target);
            } else if let Some(code) = key.parse::<u16>().ok().filter(|c| bytes.len() == 3 && (100..=599).contains(c)) {
                out.exact.push((code, target));
            } else {
                return Err(format!(
                    "response.status_map: key {key:?} must be a status code (\"404\") or a class (\"5xx\")"
                ));
            }
        }
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.class.iter().all(Option::is_none)
    }

    fn get(&self, status: StatusCode) -> Option<StatusCode> {
        let code = status.as_u16();
        self.exact
            .iter()
            .find(|(from, _)| *from == code)
            .map(|(_, to)| *to)
            .or_else(|| self.class.get(usize::from(code / 100)).copied().flatten())
    }
}

weir_plugin_sdk::export_plugin!(Transform);

#[cfg(test)]
mod tests;
