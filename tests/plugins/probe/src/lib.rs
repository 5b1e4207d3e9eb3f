//! `probe.wasm` — a test-only plugin whose behaviour is chosen by config, so
//! integration tests can observe chain order, edits, short-circuits, body
//! phases and host state through the real gateway.

use serde::Deserialize;
use weir_plugin_sdk::prelude::*;
use weir_plugin_sdk::{Callout, OutboundError};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Appended to `x-chain` on the request and `x-chain-resp` on the response.
    #[serde(default)]
    tag: Option<String>,
    /// Answer with this status when the request carries `x-probe-respond`.
    #[serde(default)]
    respond_status: Option<u16>,
    /// Replace the path and query.
    #[serde(default)]
    rewrite_uri: Option<String>,
    /// Replace the method.
    #[serde(default)]
    set_method: Option<String>,
    /// Remove this request header.
    #[serde(default)]
    remove_header: Option<String>,
    /// Set the response status.
    #[serde(default)]
    response_status: Option<u16>,
    /// Uppercase the request body (asks for the request body phase), and
    /// send its length upstream in `x-body-bytes` (a head edit in the body
    /// phase).
    #[serde(default)]
    upper_body: bool,
    /// Append to the response body (asks for the response body phase).
    #[serde(default)]
    body_suffix: Option<String>,
    /// Add 1 to each of these plugin counters on every request (names the
    /// metric-name rule may refuse, to check the host drops what the SDK's
    /// rule refuses).
    #[serde(default)]
    metrics: Vec<String>,
    /// Count requests in host state; the count goes in `x-count`.
    #[serde(default)]
    count: bool,
    /// Reject the configuration with this message.
    #[serde(default)]
    reject: Option<String>,
    /// Keep the request path as a request-local value in `on_request` and
    /// return it in `x-local-<tag>` on the response; report in
    /// `x-local-before-<tag>` (upstream) any value present before it was set.
    #[serde(default)]
    local: bool,
    /// Report the client's TLS connection upstream: `x-probe-tls` is
    /// `VERSION ALPN SNI` (`cleartext` without TLS), `x-probe-client` the
    /// verified client certificate's subject (`none` without one).
    #[serde(default)]
    tls: bool,
    /// Outbound calls on each request, each `"UPSTREAM PATH"`: one is sent
    /// alone, several at once. The outcomes go upstream in `x-callout`,
    /// separated by ` ;; `: `STATUS:BODY` for an answer, the error's kind
    /// otherwise. Each call carries `x-probe-token` from the request.
    #[serde(default)]
    callout: Vec<String>,
    /// The calls' own timeout, ms (the upstream's if absent).
    #[serde(default)]
    callout_timeout_ms: Option<u64>,
    /// Publish `KEY=VALUE` for the rest of the chain (`chain-data`).
    #[serde(default)]
    publish: Option<String>,
    /// Read this many headers one by one (`x-read-0`, `x-read-1`, ...):
    /// the cost of one host call, for benchmarks.
    #[serde(default)]
    header_reads: u32,
    /// Read `PLUGIN.KEY` values published earlier in the chain; they go
    /// upstream in `x-chain-data`, comma-separated, `-` for none.
    #[serde(default)]
    read: Vec<String>,
    /// Add `x-added: VALUE` to the response from `on_request`
    /// (`add_response_header`, contract 0.2.6), first thing.
    #[serde(default)]
    add_response: Option<String>,
    /// Ask for no response phase.
    #[serde(default)]
    request_only: bool,
    /// Trap (after `add_response`) when the request carries `x-probe-trap`.
    #[serde(default)]
    trap: bool,
}

struct Probe {
    s: Settings,
}

impl Plugin for Probe {
    fn new(config: &Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        if let Some(reason) = &s.reject {
            return Err(Error::internal(reason.clone()));
        }
        Ok(Self { s })
    }

    fn phases(&self) -> Phases {
        let mut p = if self.s.request_only {
            Phases::REQUEST_HEADERS
        } else {
            Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS
        };
        if self.s.upper_body {
            p |= Phases::REQUEST_BODY;
        }
        if self.s.body_suffix.is_some() {
            p |= Phases::RESPONSE_BODY;
        }
        p
    }

    fn on_request(&self, req: &mut Request, cx: &Context) -> Result<Action> {
        if let Some(value) = &self.s.add_response {
            req.add_response_header("x-added", value)?;
        }
        if self.s.trap && req.header("x-probe-trap").is_some() {
            panic!("probe: trap requested");
        }
        for i in 0..self.s.header_reads {
            std::hint::black_box(req.header_all(&format!("x-read-{i}")));
        }
        if let (Some(status), Some(_)) = (self.s.respond_status, req.header("x-probe-respond")) {
            let status = StatusCode::from_u16(status)?;
            let tag = self.s.tag.as_deref().unwrap_or("probe");
            return Ok(Reply::new(status).header("x-responded-by", tag).body(format!("short-circuit by {tag}")).into());
        }
        if let Some(tag) = &self.s.tag {
            append(req.headers_mut(), "x-chain", tag)?;
        }
        if let Some(uri) = &self.s.rewrite_uri {
            req.set_uri(uri)?;
        }
        if let Some(m) = &self.s.set_method {
            req.set_method(Method::from_bytes(m.as_bytes())?)?;
        }
        if let Some(h) = &self.s.remove_header {
            req.headers_mut().remove(h.as_str());
        }
        if self.s.local {
            let tag = self.s.tag.as_deref().unwrap_or("probe");
            if let Some(before) = cx.get_local("path") {
                req.headers_mut().insert(HeaderName::try_from(format!("x-local-before-{tag}"))?, before.try_into()?);
            }
            let path = req.path().to_owned();
            if !cx.set_local("path", path.as_bytes()) {
                return Err(Error::internal("set_local refused"));
            }
        }
        if self.s.tls {
            let (conn, client) = match req.tls() {
                Some(t) => (
                    format!(
                        "{} {} {}",
                        t.version,
                        t.alpn.as_deref().unwrap_or("-"),
                        t.server_name.as_deref().unwrap_or("-")
                    ),
                    t.client_subject.clone().unwrap_or_else(|| "none".into()),
                ),
                None => ("cleartext".to_owned(), "none".to_owned()),
            };
            req.headers_mut().insert("x-probe-tls", conn.try_into()?);
            req.headers_mut().insert("x-probe-client", client.try_into()?);
        }
        if let Some((key, value)) = self.s.publish.as_deref().and_then(|p| p.split_once('='))
            && !cx.publish(key, value)
        {
            return Err(Error::internal("publish refused"));
        }
        if !self.s.read.is_empty() {
            let values: Vec<String> = self
                .s
                .read
                .iter()
                .map(|spec| {
                    let (plugin, key) = spec.split_once('.').unwrap_or(("", spec.as_str()));
                    cx.published(plugin, key)
                        .map_or_else(|| "-".to_owned(), |v| String::from_utf8_lossy(&v).into_owned())
                })
                .collect();
            req.headers_mut().insert("x-chain-data", values.join(",").try_into()?);
        }
        if !self.s.callout.is_empty() {
            let token = req.header("x-probe-token").unwrap_or_default().to_owned();
            let calls: Vec<Callout> = self
                .s
                .callout
                .iter()
                .map(|spec| {
                    let (upstream, path) = spec.split_once(' ').unwrap_or((spec.as_str(), "/"));
                    let call = cx.http(upstream).get(path).header("x-probe-token", &token);
                    match self.s.callout_timeout_ms {
                        Some(ms) => call.timeout(std::time::Duration::from_millis(ms)),
                        None => call,
                    }
                })
                .collect();
            let results =
                if calls.len() == 1 { calls.into_iter().map(Callout::send).collect() } else { cx.send_all(calls) };
            let outcomes: Vec<String> = results
                .into_iter()
                .map(|r| match r {
                    Ok(answer) => {
                        format!("{}:{}", answer.status().as_u16(), String::from_utf8_lossy(answer.body()).trim())
                    }
                    Err(OutboundError::NotAllowed(_)) => "not_allowed".into(),
                    Err(OutboundError::Invalid(_)) => "invalid".into(),
                    Err(OutboundError::Limit(_)) => "limit".into(),
                    Err(OutboundError::Timeout(_)) => "timeout".into(),
                    Err(OutboundError::Unavailable(_)) => "unavailable".into(),
                })
                .collect();
            req.headers_mut().insert("x-callout", outcomes.join(" ;; ").try_into()?);
        }
        for name in &self.s.metrics {
            cx.counter_add(name, 1);
        }
        if self.s.count {
            let n = cx.state().incr("requests", 1, 0)?;
            req.headers_mut().insert("x-count", HeaderValue::from(n));
            cx.counter_add("probe_requests", 1);
        }
        Ok(Action::Continue)
    }

    fn on_request_body(&self, req: &mut Request, body: &mut Body, _cx: &Context) -> Result<Action> {
        if self.s.upper_body {
            // The body checked, a header for the upstream (contract 0.2.4).
            req.headers_mut().insert("x-body-bytes", HeaderValue::from(body.len()));
            let upper = body.as_bytes().to_ascii_uppercase();
            body.set(upper);
        }
        Ok(Action::Continue)
    }

    fn on_response(&self, _req: &Request, resp: &mut Response, cx: &Context) -> Result<Action> {
        if let Some(tag) = &self.s.tag {
            append(resp.headers_mut(), "x-chain-resp", tag)?;
        }
        if self.s.local {
            let tag = self.s.tag.as_deref().unwrap_or("probe");
            let kept = cx.get_local("path").unwrap_or_else(|| b"(none)".to_vec());
            resp.headers_mut().insert(HeaderName::try_from(format!("x-local-{tag}"))?, kept.try_into()?);
        }
        if let Some(status) = self.s.response_status {
            resp.set_status(StatusCode::from_u16(status)?)?;
        }
        Ok(Action::Continue)
    }

    fn on_response_body(&self, _req: &Request, _resp: &Response, body: &mut Body, _cx: &Context) -> Result<Action> {
        if let Some(suffix) = &self.s.body_suffix {
            body.bytes_mut().extend_from_slice(suffix.as_bytes());
        }
        Ok(Action::Continue)
    }
}

/// Append `tag` to a comma-separated header.
fn append(headers: &mut HeaderMap, name: &'static str, tag: &str) -> Result<()> {
    let value = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev},{tag}"),
        None => tag.to_owned(),
    };
    headers.insert(name, value.parse()?);
    Ok(())
}

weir_plugin_sdk::export_plugin!(Probe);
