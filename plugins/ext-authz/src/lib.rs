//! `ext_authz.wasm`: ask an external authorization service about every
//! request, as Envoy's `ext_authz` filter does in HTTP mode.
//!
//! For each request the plugin calls the configured upstream (through the
//! gateway's `outbound` capability, so the service is configured, balanced,
//! health-checked and broken like any upstream) with the original method,
//! `path_prefix` + the original path and query, the `forward_headers` of the
//! request, and `x-forwarded-for` / `x-request-id`. A 2xx answer allows the
//! request and copies the answer's `upstream_headers` into it; any other
//! answer denies it with the service's status, its `client_headers` and its
//! body; no answer (a timeout, the service down, the call refused) follows
//! `failure`. Decisions may be cached in host state by a key template for a
//! TTL. See `README.md` beside this crate.

mod config;

use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::{Callout, OutboundError, State, http};

use crate::config::{Failure, Settings, Spec};

/// A decision as cached: status, headers to copy, body (for denials).
#[derive(serde::Serialize, serde::Deserialize)]
struct Decision {
    status: u16,
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

struct ExtAuthz {
    spec: Spec,
}

impl ExtAuthz {
    /// The check request for `req`.
    fn check(&self, req: &Request, cx: &Context) -> Callout {
        let target = match req.query() {
            Some(q) => format!("{}{}?{q}", self.spec.path_prefix, req.path()),
            None => format!("{}{}", self.spec.path_prefix, req.path()),
        };
        let mut call = cx.http(&self.spec.upstream).request(req.method().clone(), &target).timeout(self.spec.timeout);
        for name in &self.spec.forward_headers {
            for value in req.header_all(name.as_str()) {
                call = call.header(name.as_str(), value.as_bytes());
            }
        }
        if let Some(ip) = req.client_ip() {
            call = call.header("x-forwarded-for", ip.to_string());
        }
        call.header("x-request-id", req.request_id())
    }

    /// The decision an answer carries: allowed (2xx) with the headers to
    /// add upstream, or denied with what the client gets.
    fn decide(&self, answer: &http::Response<Vec<u8>>) -> Decision {
        let status = answer.status().as_u16();
        let allowed = answer.status().is_success();
        let names = if allowed { &self.spec.upstream_headers } else { &self.spec.client_headers };
        let mut headers = Vec::new();
        for name in names {
            for v in answer.headers().get_all(name.as_str()) {
                if let Ok(v) = v.to_str() {
                    headers.push((name.as_str().to_owned(), v.to_owned()));
                }
            }
        }
        if !allowed && let Some(ct) = answer.headers().get("content-type").and_then(|v| v.to_str().ok()) {
            headers.push(("content-type".into(), ct.to_owned()));
        }
        let body = if allowed { String::new() } else { String::from_utf8_lossy(answer.body()).into_owned() };
        Decision { status, headers, body }
    }

    /// Apply a decision to the request: continue with headers added, or
    /// answer the client.
    fn apply(&self, decision: &Decision, req: &mut Request, cx: &Context) -> Result<Action> {
        if (200..300).contains(&decision.status) {
            cx.counter_add("allowed", 1);
            // Header by header: `headers_mut` would fetch the whole map
            // and work out what changed in it when the phase returns.
            for (name, value) in &decision.headers {
                req.set_header(name, value)?;
            }
            return Ok(Action::Continue);
        }
        cx.counter_add("denied", 1);
        let status = StatusCode::from_u16(decision.status).unwrap_or(StatusCode::FORBIDDEN);
        let mut reply = Reply::new(status).body(decision.body.clone().into_bytes());
        for (name, value) in &decision.headers {
            reply = reply.header(name, value);
        }
        Ok(reply.into())
    }

    /// No answer: `failure` decides.
    fn failed(&self, err: &OutboundError, cx: &Context) -> Result<Action> {
        cx.counter_add("errors", 1);
        cx.log(Level::Warn, &format!("ext_authz: no decision from `{}`: {err}", self.spec.upstream));
        match self.spec.failure {
            Failure::Allow => Ok(Action::Continue),
            Failure::Deny => {
                let body = serde_json::json!({ "error": "authorization service unavailable" });
                Ok(Reply::json(self.spec.failure_status, &body).into())
            }
        }
    }

    fn cached(&self, state: &State, key: &str) -> Option<Decision> {
        let bytes = state.get(key).ok()??;
        serde_json::from_slice(&bytes).ok()
    }
}

impl Plugin for ExtAuthz {
    fn config_schema() -> Option<String> {
        weir_plugin_sdk::schema_for::<Settings>()
    }

    fn new(config: &Config) -> Result<Self> {
        Ok(Self { spec: Spec::from_config(config)? })
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        let cache_key = self.spec.cache.as_ref().map(|c| c.key_for(req));
        if let Some(key) = &cache_key
            && let Some(decision) = self.cached(&cx.state(), key)
        {
            cx.counter_add("cache_hits", 1);
            return self.apply(&decision, req, cx);
        }
        let answer = match self.check(req, cx).send() {
            Ok(answer) => answer,
            Err(e) => return self.failed(&e, cx),
        };
        let decision = self.decide(&answer);
        // Decisions are cached; the service's own failures (5xx) are not.
        if let (Some(key), Some(cache)) = (&cache_key, &self.spec.cache)
            && decision.status < 500
            && let Ok(bytes) = serde_json::to_vec(&decision)
            && cx.state().set(key, &bytes, cache.ttl_ms).is_err()
        {
            cx.counter_add("cache_errors", 1);
        }
        self.apply(&decision, req, cx)
    }
}

weir_plugin_sdk::export_plugin!(ExtAuthz);

#[cfg(test)]
mod tests;
