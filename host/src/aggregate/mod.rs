//! Aggregate routes: one client request fanned out to several upstreams in
//! parallel, their JSON answers merged into one document.
//!
//! The route's request chain runs once before the fan-out and its response
//! chain once on the merged answer (see `proxy.rs`). Each part has its own
//! timeout, covering its whole answer. A failed optional part is reported
//! under `_errors` with `x-weir-partial: true`; a failed required part
//! fails the request. A part with a `cache` answers from it when fresh,
//! and stale when its upstream fails.

pub(crate) mod build;
pub(crate) mod template;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use serde_json::{Map, Value};

use crate::body::{self, ProxyBody};
use crate::cache::{CACHE_HEADER, RouteCache};
use crate::error::ProxyError;
use crate::headers;
use crate::observe::trace::{RequestTrace, Span, SpanKind, Value as Attr, new_span_id, now_ns};
use crate::upstream::{Outgoing, Upstream};
use template::{Context, Shape, Template, deep_merge};
use weir_plugin_host::RequestInfo;

/// Set on an answer that lacks a failed optional part.
pub(crate) const PARTIAL_HEADER: &str = "x-weir-partial";

/// How the answers become one document.
pub(crate) enum Merge {
    /// Each answer under its part's name.
    Keys,
    /// Objects merged recursively, in part order.
    Deep,
    /// A JSON shape with references.
    Shape(Shape),
}

/// One request of an aggregate route.
pub(crate) struct Part {
    /// Its key in the document and in `_errors`.
    pub(crate) name: Arc<str>,
    /// Where it goes.
    pub(crate) upstream: Arc<Upstream>,
    /// Method.
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) path: Template,
    /// Headers to set.
    pub(crate) headers: Vec<(HeaderName, Template)>,
    /// Time for the whole answer.
    pub(crate) timeout: Duration,
    /// Whether its failure fails the request.
    pub(crate) required: bool,
    /// Kept answers, for hits and stale fallback.
    pub(crate) cache: Option<Arc<RouteCache>>,
}

/// An aggregate route's fan-out.
pub(crate) struct Aggregate {
    /// In merge order.
    pub(crate) parts: Vec<Part>,
    /// How answers are combined.
    pub(crate) merge: Merge,
    /// Client headers every part gets.
    pub(crate) forward_headers: Vec<HeaderName>,
    /// Largest part answer read.
    pub(crate) max_body: usize,
}

/// What one part came back with.
enum Outcome {
    Answer { value: Value, stale: bool },
    Failed { error: String, status: Option<u16>, timeout: bool },
}

/// Why a part's request could not be made from the client's request.
#[derive(Debug, thiserror::Error)]
enum PartRequestError {
    /// The rendered path is not a valid URI path.
    #[error("path {path:?}: {source}")]
    Path {
        /// The path as rendered.
        path: String,
        /// Why.
        source: http::uri::InvalidUri,
    },
    /// The head could not be built.
    #[error("{0}")]
    Head(http::Error),
    /// A templated header value with bytes a header may not hold.
    #[error("header {0}: the templated value is not a valid header value")]
    HeaderValue(String),
}

impl Aggregate {
    /// The upstreams it calls, for logs and the admin API.
    pub(crate) fn upstream_names(&self) -> String {
        let mut names: Vec<&str> = self.parts.iter().map(|p| &*p.upstream.name).collect();
        names.dedup();
        names.join(",")
    }

    /// Send every part at once for the request `req` (as the chain left it)
    /// and merge the answers.
    pub(crate) async fn fetch(
        &self,
        req: &Parts,
        info: &RequestInfo,
        trace: &mut RequestTrace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client = info.client.ip();
        let cx = Context { params: &info.params, query: req.uri.query(), headers: &req.headers };
        let (spans, heads): (Vec<_>, Vec<_>) = self
            .parts
            .iter()
            .map(|part| {
                let span = new_span_id();
                let head = self.head(part, &cx, info, |h| trace.propagate(h, &span));
                (span, head)
            })
            .unzip();
        let t0 = now_ns();
        let outcomes = futures::future::join_all(self.parts.iter().zip(heads).map(|(part, head)| async move {
            match head {
                Ok(head) => part.run(head, client, self.max_body).await,
                Err(error) => Outcome::Failed { error: error.to_string(), status: None, timeout: false },
            }
        }))
        .await;
        let end = now_ns();

        let mut answers = Map::new();
        let mut errors = Map::new();
        let mut stale = Vec::new();
        for ((part, span), outcome) in self.parts.iter().zip(spans).zip(outcomes) {
            let failed = || match &outcome {
                Outcome::Failed { error, .. } => Some(error.clone()),
                Outcome::Answer { .. } => None,
            };
            trace.child(|parent| Span {
                span_id: span,
                parent_id: Some(parent.to_owned()),
                name: format!("part {} upstream {}", part.name, part.upstream.name),
                kind: SpanKind::Client,
                start_ns: t0,
                end_ns: end,
                attributes: vec![
                    ("weir.part", Attr::Str(part.name.to_string())),
                    ("weir.upstream", Attr::Str(part.upstream.name.to_string())),
                ],
                error: failed(),
            });
            match outcome {
                Outcome::Answer { value, stale: was_stale } => {
                    if was_stale {
                        stale.push(Value::String(part.name.to_string()));
                    }
                    answers.insert(part.name.to_string(), value);
                }
                Outcome::Failed { error, timeout, .. } if part.required => {
                    return Err(ProxyError::Part { part: part.name.clone(), detail: error, timeout });
                }
                Outcome::Failed { error, status, timeout } => {
                    let mut e = Map::new();
                    e.insert("error".into(), Value::String(error));
                    if let Some(s) = status {
                        e.insert("status".into(), Value::from(s));
                    }
                    if timeout {
                        e.insert("timeout".into(), Value::Bool(true));
                    }
                    errors.insert(part.name.to_string(), Value::Object(e));
                }
            }
        }

        let mut doc = match &self.merge {
            Merge::Keys => {
                let mut doc = answers;
                for name in errors.keys() {
                    doc.insert(name.clone(), Value::Null);
                }
                // Keep part order, whatever answered.
                let mut ordered = Map::new();
                for p in &self.parts {
                    if let Some(v) = doc.remove(&*p.name) {
                        ordered.insert(p.name.to_string(), v);
                    }
                }
                Value::Object(ordered)
            }
            Merge::Deep => {
                let mut doc = Value::Object(Map::new());
                for p in &self.parts {
                    match answers.remove(&*p.name) {
                        Some(v @ Value::Object(_)) => deep_merge(&mut doc, v),
                        Some(v) => deep_merge(&mut doc, Value::Object(Map::from_iter([(p.name.to_string(), v)]))),
                        None => {}
                    }
                }
                doc
            }
            Merge::Shape(shape) => shape.render(&answers, &cx),
        };
        let partial = !errors.is_empty();
        if let Value::Object(m) = &mut doc {
            if partial {
                m.insert("_errors".into(), Value::Object(errors));
            }
            if !stale.is_empty() {
                m.insert("_stale".into(), Value::Array(stale.clone()));
            }
        }
        let mut resp = Response::new(body::full(doc.to_string()));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if partial {
            h.insert(PARTIAL_HEADER, HeaderValue::from_static("true"));
        }
        if !stale.is_empty() {
            h.insert(crate::cache::STALE_HEADER, HeaderValue::from_static("true"));
        }
        Ok(resp)
    }

    /// The request head for `part`.
    fn head(
        &self,
        part: &Part,
        cx: &Context<'_>,
        info: &RequestInfo,
        propagate: impl FnOnce(&mut HeaderMap),
    ) -> Result<Parts, PartRequestError> {
        let path = part.path.render_url(cx);
        let uri: Uri = path.parse().map_err(|e| PartRequestError::Path { path: path.clone(), source: e })?;
        let (mut head, ()) = Request::builder()
            .method(part.method.clone())
            .uri(uri)
            .body(())
            .map_err(PartRequestError::Head)?
            .into_parts();
        let h = &mut head.headers;
        for name in &self.forward_headers {
            for v in cx.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        for (name, value) in &part.headers {
            let value = value.render_raw(cx);
            match HeaderValue::try_from(value) {
                Ok(v) if !v.is_empty() => {
                    h.insert(name.clone(), v);
                }
                Ok(_) => {}
                Err(_) => return Err(PartRequestError::HeaderValue(name.to_string())),
            }
        }
        if let Some(id) = cx.headers.get("x-request-id") {
            h.insert("x-request-id", id.clone());
        }
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers::add_forwarding(h, info.client.ip(), &info.authority, info.scheme());
        propagate(h);
        Ok(head)
    }
}

impl Part {
    /// Send the request and read the answer, within the part's timeout.
    async fn run(&self, head: Parts, client: IpAddr, max_body: usize) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        let timed_out =
            || Outcome::Failed { error: format!("no answer within {:?}", self.timeout), status: None, timeout: true };
        // Planned before the head moves into the fetch.
        let plan = self.cache.as_ref().and_then(|c| Some((c, c.plan(&head, &self.upstream.name)?)));
        let fetch = async move {
            let forward = self.upstream.forward(head, Outgoing::Replayable(Bytes::new()), "", client, None);
            match tokio::time::timeout_at(deadline.into(), forward).await {
                Ok(r) => r,
                Err(_) => {
                    Err(ProxyError::UpstreamTimeout { upstream: self.upstream.name.clone(), timeout: self.timeout })
                }
            }
        };
        let result = match plan {
            Some((cache, plan)) => cache.serve(plan, self.timeout, fetch).await,
            None => fetch.await,
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(ProxyError::UpstreamTimeout { .. }) => return timed_out(),
            Err(e) => return Outcome::Failed { error: e.to_string(), status: None, timeout: false },
        };
        let status = resp.status();
        let stale = resp.headers().get(CACHE_HEADER).is_some_and(|v| v == "stale");
        let json =
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
        let bytes = match tokio::time::timeout_at(deadline.into(), body::collect(resp.into_body(), max_body)).await {
            Err(_) => return timed_out(),
            Ok(Err(body::CollectError::TooLarge)) => {
                return Outcome::Failed {
                    error: format!("answer larger than {max_body} bytes"),
                    status: Some(status.as_u16()),
                    timeout: false,
                };
            }
            Ok(Err(body::CollectError::Failed(e))) => {
                return Outcome::Failed {
                    error: format!("answer cut: {e}"),
                    status: Some(status.as_u16()),
                    timeout: false,
                };
            }
            Ok(Ok(b)) => b,
        };
        if !status.is_success() {
            return Outcome::Failed {
                error: format!("upstream `{}` answered {}", self.upstream.name, status.as_u16()),
                status: Some(status.as_u16()),
                timeout: false,
            };
        }
        let value = match serde_json::from_slice::<Value>(&bytes) {
            _ if bytes.is_empty() || status == StatusCode::NO_CONTENT => Value::Null,
            Ok(v) => v,
            Err(e) if json => {
                return Outcome::Failed {
                    error: format!("invalid JSON: {e}"),
                    status: Some(status.as_u16()),
                    timeout: false,
                };
            }
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        Outcome::Answer { value, stale }
    }
}
