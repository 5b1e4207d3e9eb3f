//! The plugin chain runner: one loop for all four phases. Each plugin that
//! asked for a phase is called on the lent heads (and, in a body phase, on
//! the buffered body it may replace), in chain order for the request
//! phases and in reverse for the response phases. A plugin that answers
//! ends the phase with its response; a plugin that fails follows its
//! `failure` policy.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use weir_config::FailurePolicy;
use weir_plugin_host::heads::from_plugin;
use weir_plugin_host::{
    Action, BodyAction, ChunkAction, Heads, LoadedPlugin, OutboundRecord, Phases, PluginFailure, Reply, RequestSlot,
    StreamPhases,
};

use super::grpc;
use super::stream::Side;
use crate::body::{self, ProxyBody};
use crate::canary::{Arm, Canary};
use crate::error::ProxyError;
use crate::observe::recorder::Recorder;
use crate::observe::trace::{RequestTrace, Span, SpanKind, Value, new_span_id, now_ns};

/// A plugin phase, in the order a request meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `on-request`, on the request head (editable).
    Request,
    /// `on-request-body`, on the whole request body; the head is settled.
    RequestBody,
    /// `on-response`, on the response head (editable; the request read-only).
    Response,
    /// `on-response-body`, on the whole response body.
    ResponseBody,
}

impl Phase {
    fn wanted(self) -> Phases {
        match self {
            Phase::Request => Phases::REQUEST_HEADERS,
            Phase::RequestBody => Phases::REQUEST_BODY,
            Phase::Response => Phases::RESPONSE_HEADERS,
            Phase::ResponseBody => Phases::RESPONSE_BODY,
        }
    }

    /// The streamed side whose plugins also take this (buffered) body,
    /// as one chunk; a head phase has none.
    fn streamed(self) -> Option<StreamPhases> {
        match self {
            Phase::RequestBody => Some(StreamPhases::REQUEST_BODY),
            Phase::ResponseBody => Some(StreamPhases::RESPONSE_BODY),
            Phase::Request | Phase::Response => None,
        }
    }

    /// The phase's name in spans and logs.
    fn name(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::RequestBody => "request_body",
            Phase::Response => "response",
            Phase::ResponseBody => "response_body",
        }
    }

    /// Response phases run the chain from its end, so the plugin nearest
    /// the client sees the answer last.
    fn reversed(self) -> bool {
        matches!(self, Phase::Response | Phase::ResponseBody)
    }
}

/// A route's chain as one request runs it.
pub(super) struct Chain<'a> {
    plugins: &'a [Arc<LoadedPlugin>],
    /// The route's canaries by chain position (none on most routes).
    canaries: Option<&'a [Option<Arc<Canary>>]>,
    /// Canary positions whose version this request has drawn, and those
    /// where it drew the canary (bit `i` for position `i`).
    drawn: u64,
    on_canary: u64,
    /// Per chain position: request-local values, and the instance of an
    /// `isolation = "request"` plugin.
    held: Vec<RequestSlot>,
    /// The request's trace: each plugin call is a span of it.
    pub(super) trace: &'a mut RequestTrace,
    /// Each plugin call's outcome, for the access log (when it is on).
    pub(super) outcomes: Option<String>,
    /// A gRPC call: a plugin's own answer becomes a gRPC error.
    grpc: bool,
    /// Largest body a plugin may return (`server.max_buffered_body`).
    max_body: u64,
    /// The flight recorder, when `[recorder]` is on.
    recorder: Option<&'a Recorder>,
    /// Whether a plugin call of this request was recorded.
    pub(super) recorded: bool,
}

impl<'a> Chain<'a> {
    /// The chain `plugins` for one request; `outcomes` are kept when
    /// `log_outcomes`.
    pub(super) fn new(
        plugins: &'a [Arc<LoadedPlugin>],
        canaries: Option<&'a [Option<Arc<Canary>>]>,
        trace: &'a mut RequestTrace,
        log_outcomes: bool,
        grpc: bool,
        max_body: u64,
        recorder: Option<&'a Recorder>,
    ) -> Self {
        let held = plugins.iter().map(|_| RequestSlot::default()).collect();
        Self {
            plugins,
            canaries,
            drawn: 0,
            on_canary: 0,
            held,
            trace,
            outcomes: log_outcomes.then(String::new),
            grpc,
            max_body,
            recorder,
            recorded: false,
        }
    }

    /// Hand a plugin call that went wrong to the flight recorder (when it
    /// wants that kind): `failure` when the call failed or its output was
    /// refused, `answered` when it answered the client with that status.
    /// The heads and body are as the plugin got them, since a failed or
    /// answering phase leaves them untouched.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        i: usize,
        plugin: &LoadedPlugin,
        phase: Phase,
        t0: u64,
        failure: Option<&PluginFailure>,
        answered: Option<u16>,
        heads: &Option<Heads>,
        body: Option<&Bytes>,
    ) {
        if let Some((canary, arm)) = self.canary_at(i) {
            // Traps and overruns reached the comparison through the call
            // observer; what fails after the call, or without one, here.
            match failure {
                Some(PluginFailure::InvalidOutput(_)) => canary.failed(arm, true),
                Some(PluginFailure::CrashLoop(_) | PluginFailure::Unavailable(_)) => canary.failed(arm, false),
                Some(_) => {}
                None if answered.is_some_and(|s| s >= 500) => canary.failed(arm, true),
                None => {}
            }
        }
        let Some(recorder) = self.recorder else { return };
        if let Some((trigger, outcome)) = recorder.classify(failure, answered) {
            let took = std::time::Duration::from_nanos(now_ns().saturating_sub(t0));
            self.recorded |= recorder.plugin_call(trigger, outcome, plugin, phase.name(), took, heads.as_ref(), body);
        }
    }

    /// The plugin this request runs at chain position `i`: the stable
    /// version unless it drew the canary there.
    fn plugin_at(&self, i: usize) -> &'a Arc<LoadedPlugin> {
        match self.canary_at(i) {
            Some((c, Arm::Canary)) => &c.canary,
            _ => &self.plugins[i],
        }
    }

    /// The canary at position `i`, if any, and the version drawn there.
    fn canary_at(&self, i: usize) -> Option<(&'a Canary, Arm)> {
        let c = self.canaries?.get(i)?.as_deref()?;
        let arm = if self.on_canary & (1 << i) != 0 { Arm::Canary } else { Arm::Stable };
        Some((c, arm))
    }

    /// Draw the version of position `i`'s plugin, once, as the request
    /// reaches it (so a header or chain value set before it can key it).
    fn draw(&mut self, i: usize, heads: &Option<Heads>) {
        let Some(c) = self.canaries.and_then(|c| c.get(i)).and_then(Option::as_deref) else { return };
        let bit = 1u64 << i;
        if self.drawn & bit != 0 {
            return;
        }
        self.drawn |= bit;
        let client = heads.as_ref().map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |h| h.request.info().client.ip());
        if c.choose(heads.as_ref(), client) == Arm::Canary {
            self.on_canary |= bit;
        }
    }

    /// The headers plugin `i` added for the response from the request's
    /// phases (`add-response-header`), at its place in the response phase.
    fn add_response_headers(&mut self, i: usize, heads: &mut Option<Heads>) {
        let Some(resp) = heads.as_mut().and_then(|h| h.response.as_mut()) else { return };
        for (name, value) in self.held[i].take_response_headers() {
            resp.add_header(name, value);
        }
    }

    /// The headers the plugins added for the response, in response-phase
    /// order, on a response no plugin's response phase sees.
    pub(super) fn add_all_response_headers(&mut self, headers: &mut http::HeaderMap) {
        for slot in self.held.iter_mut().rev() {
            for (name, value) in slot.take_response_headers() {
                headers.append(name, value);
            }
        }
    }

    /// Whether a plugin this request runs wants `phases`.
    pub(super) fn wants(&self, phases: Phases) -> bool {
        (0..self.plugins.len()).any(|i| self.plugin_at(i).phases().intersects(phases))
    }

    /// The plugins that stream `side`, in call order, each with its slot:
    /// for the request a fork (the request's phases go on beside the
    /// stream), for the response the slot itself (the chain is done).
    pub(super) fn streaming(&mut self, side: Side) -> Vec<(Arc<LoadedPlugin>, RequestSlot)> {
        let wanted = match side {
            Side::Request => StreamPhases::REQUEST_BODY,
            Side::Response => StreamPhases::RESPONSE_BODY,
        };
        let mut out: Vec<(Arc<LoadedPlugin>, RequestSlot)> = Vec::new();
        for i in 0..self.plugins.len() {
            let plugin = self.plugin_at(i);
            if plugin.streams().contains(wanted) {
                let slot = &mut self.held[i];
                let slot = match side {
                    Side::Request => slot.fork(),
                    Side::Response => std::mem::take(slot),
                };
                out.push((Arc::clone(plugin), slot));
            }
        }
        if side == Side::Response {
            out.reverse();
        }
        out
    }

    /// Run `phase` over the chain. `body` is the buffered body of a body
    /// phase. `Ok(Some(response))` when a plugin answered the client.
    pub(super) async fn run(
        &mut self,
        phase: Phase,
        heads: &mut Option<Heads>,
        body: Option<&mut Bytes>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        if self.plugins.is_empty() {
            return Ok(None);
        }
        // Boxed: the plugin calls' futures (wasmtime's fiber call under a
        // timeout) are ~2 KB, and inline they would grow every request's
        // future, plugins or not, which hyper copies as it moves it.
        Box::pin(self.run_plugins(phase, heads, body)).await
    }

    async fn run_plugins(
        &mut self,
        phase: Phase,
        heads: &mut Option<Heads>,
        mut body: Option<&mut Bytes>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        let len = self.plugins.len();
        let max = self.max_body;
        for k in 0..len {
            let i = if phase.reversed() { len - 1 - k } else { k };
            if phase == Phase::Request {
                self.draw(i, heads);
            }
            if phase == Phase::Response {
                self.add_response_headers(i, heads);
            }
            let plugin = self.plugin_at(i);
            let whole = plugin.phases().contains(phase.wanted());
            if !whole && !phase.streamed().is_some_and(|side| plugin.streams().contains(side)) {
                continue;
            }
            let t0 = now_ns();
            let slot = &mut self.held[i];
            let reply = match phase {
                Phase::Request | Phase::Response => {
                    let result = if phase == Phase::Request {
                        plugin.on_request(heads, slot).await
                    } else {
                        plugin.on_response(heads, slot).await
                    };
                    if let Err(e) = &result {
                        self.record(i, plugin, phase, t0, Some(e), None, heads, None);
                    }
                    match self.guard(plugin, phase, t0, result, outbound_calls(heads))? {
                        Some(Action::Respond(r)) => Some(r),
                        Some(Action::Continue) | None => None,
                    }
                }
                Phase::RequestBody | Phase::ResponseBody if !whole => {
                    // A streaming plugin on a buffered side: the whole body
                    // as one chunk.
                    let Some(bytes) = body.as_deref_mut() else {
                        return Err(ProxyError::Internal("body phase without a body"));
                    };
                    let result = if phase == Phase::RequestBody {
                        plugin.on_request_chunk(heads, bytes, true, slot).await
                    } else {
                        plugin.on_response_chunk(heads, bytes, true, slot).await
                    };
                    let result = match result {
                        Ok(ChunkAction::Abort(reason)) => Err(PluginFailure::Aborted(reason)),
                        other => other,
                    };
                    if let Err(e) = &result {
                        self.record(i, plugin, phase, t0, Some(e), None, heads, Some(&*bytes));
                    }
                    match self.guard(plugin, phase, t0, result, outbound_calls(heads))? {
                        Some(ChunkAction::Replace(new)) => {
                            let checked = check_body(new, max);
                            if let Err(e) = &checked {
                                self.record(i, plugin, phase, t0, Some(e), None, heads, Some(&*bytes));
                            }
                            if let Some(new) = guard(plugin, checked)? {
                                *bytes = new.into();
                            }
                        }
                        Some(ChunkAction::Pass | ChunkAction::Abort(_)) | None => {}
                    }
                    None
                }
                Phase::RequestBody | Phase::ResponseBody => {
                    let Some(bytes) = body.as_deref_mut() else {
                        return Err(ProxyError::Internal("body phase without a body"));
                    };
                    let result = if phase == Phase::RequestBody {
                        plugin.on_request_body(heads, bytes, slot).await
                    } else {
                        plugin.on_response_body(heads, bytes, slot).await
                    };
                    if let Err(e) = &result {
                        self.record(i, plugin, phase, t0, Some(e), None, heads, Some(&*bytes));
                    }
                    match self.guard(plugin, phase, t0, result, outbound_calls(heads))? {
                        Some(BodyAction::Respond(r)) => Some(r),
                        Some(BodyAction::Continue(Some(new))) => {
                            let checked = check_body(new, max);
                            if let Err(e) = &checked {
                                self.record(i, plugin, phase, t0, Some(e), None, heads, Some(&*bytes));
                            }
                            if let Some(new) = guard(plugin, checked)? {
                                *bytes = new.into();
                            }
                            None
                        }
                        Some(BodyAction::Continue(None)) | None => None,
                    }
                }
            };
            if let Some(r) = reply {
                // The answer as the gateway takes it: refused output is a
                // failure of the plugin, a 5xx an error.
                let status = r.status;
                let answer = plugin_reply(r, max, self.grpc);
                match &answer {
                    Err(e) => self.record(i, plugin, phase, t0, Some(e), None, heads, body.as_deref()),
                    Ok(_) => self.record(i, plugin, phase, t0, None, Some(status), heads, body.as_deref()),
                }
                if let Some(resp) = guard(plugin, answer)? {
                    return Ok(Some(resp));
                }
            }
        }
        Ok(None)
    }

    /// [`guard`], noting the outcome (and the outbound `calls` the plugin
    /// made) for the access log and, when the trace is recorded, as spans:
    /// the `phase` call that started at `t0`, and a client span per call.
    fn guard<T: Responds>(
        &mut self,
        plugin: &LoadedPlugin,
        phase: Phase,
        t0: u64,
        result: Result<T, PluginFailure>,
        calls: Vec<OutboundRecord>,
    ) -> Result<Option<T>, ProxyError> {
        let what = match &result {
            Ok(a) if a.responded() => "respond",
            Ok(_) => "ok",
            Err(_) if plugin.spec().failure == FailurePolicy::Open => "skipped",
            Err(_) => "failed",
        };
        // Made only when spans are kept: most requests are not traced.
        let plugin_span = if self.trace.recording { new_span_id() } else { String::new() };
        for call in &calls {
            self.trace.child(|_| Span {
                span_id: call.span_id.clone().unwrap_or_else(new_span_id),
                parent_id: Some(plugin_span.clone()),
                name: format!("outbound {}", call.upstream),
                kind: SpanKind::Client,
                start_ns: call.start_ns,
                end_ns: call.end_ns,
                attributes: vec![
                    ("weir.plugin", Value::Str(plugin.name().to_string())),
                    ("weir.upstream", Value::Str(call.upstream.clone())),
                    ("weir.outcome", Value::Str(call.outcome.to_owned())),
                    ("http.response.status_code", Value::Int(call.status.map_or(0, i64::from))),
                ],
                error: (call.outcome != "answered").then(|| call.outcome.to_owned()),
            });
        }
        self.trace.child(|parent| Span {
            span_id: plugin_span.clone(),
            parent_id: Some(parent.to_owned()),
            name: format!("plugin {} {}", plugin.name(), phase.name()),
            kind: SpanKind::Internal,
            start_ns: t0,
            end_ns: now_ns(),
            attributes: vec![
                ("weir.plugin", Value::Str(plugin.name().to_string())),
                ("weir.plugin.module", Value::Str(plugin.spec().module.clone())),
                ("weir.phase", Value::Str(phase.name().to_owned())),
                ("weir.outcome", Value::Str(what.to_owned())),
            ],
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        if let Some(out) = &mut self.outcomes {
            if !out.is_empty() {
                out.push(' ');
            }
            // `auth@canary:ok` for a canary version's call.
            out.push_str(&plugin.spec().label());
            out.push(':');
            out.push_str(what);
            // `auth:ok(idp=200,authz=timeout)`: each outbound call.
            for (i, call) in calls.iter().enumerate() {
                out.push(if i == 0 { '(' } else { ',' });
                out.push_str(&call.upstream);
                out.push('=');
                match call.status {
                    Some(status) => out.push_str(&status.to_string()),
                    None => out.push_str(call.outcome),
                }
            }
            if !calls.is_empty() {
                out.push(')');
            }
        }
        guard(plugin, result)
    }
}

/// The outbound calls the plugin just made, taken from the heads.
fn outbound_calls(heads: &mut Option<Heads>) -> Vec<OutboundRecord> {
    heads.as_mut().map(|h| std::mem::take(&mut h.outbound.calls)).unwrap_or_default()
}

/// Whether a phase's decision answered the client, and with what status.
trait Responds {
    fn answered(&self) -> Option<u16>;

    fn responded(&self) -> bool {
        self.answered().is_some()
    }
}

impl Responds for Action {
    fn answered(&self) -> Option<u16> {
        match self {
            Action::Respond(r) => Some(r.status),
            Action::Continue => None,
        }
    }
}

impl Responds for BodyAction {
    fn answered(&self) -> Option<u16> {
        match self {
            BodyAction::Respond(r) => Some(r.status),
            BodyAction::Continue(_) => None,
        }
    }
}

impl Responds for ChunkAction {
    fn answered(&self) -> Option<u16> {
        None
    }
}

/// Apply a plugin's failure policy: `Ok(None)` means "skip this plugin".
/// Invalid output counts as a failure of the plugin, like a trap.
fn guard<T>(plugin: &LoadedPlugin, result: Result<T, PluginFailure>) -> Result<Option<T>, ProxyError> {
    if let Err(PluginFailure::InvalidOutput(_)) = &result {
        plugin.count_invalid();
    }
    match result {
        Ok(v) => Ok(Some(v)),
        Err(failure) if plugin.spec().failure == FailurePolicy::Open => {
            tracing::warn!(plugin = %plugin.name(), %failure, "plugin failed; skipped (failure = \"open\")");
            Ok(None)
        }
        Err(failure) => Err(ProxyError::Plugin { plugin: plugin.name().clone(), failure }),
    }
}

fn invalid(msg: String) -> PluginFailure {
    PluginFailure::InvalidOutput(msg)
}

/// A status a plugin may answer with: a final one (200-999).
fn final_status(s: u16) -> Result<StatusCode, PluginFailure> {
    StatusCode::from_u16(s).ok().filter(|s| s.as_u16() >= 200).ok_or_else(|| invalid(format!("invalid status {s}")))
}

/// A body a plugin returned, within the buffer limit.
fn check_body(body: Vec<u8>, max: u64) -> Result<Vec<u8>, PluginFailure> {
    if body.len() as u64 > max {
        return Err(invalid(format!("body of {} bytes exceeds {max}", body.len())));
    }
    Ok(body)
}

/// A plugin's own response, validated; on a gRPC call, as a gRPC error.
pub(crate) fn plugin_reply(r: Reply, max_body: u64, grpc: bool) -> Result<Response<ProxyBody>, PluginFailure> {
    let status = final_status(r.status)?;
    let body = check_body(r.body, max_body)?;
    let headers = from_plugin(r.headers).map_err(|e| invalid(e.to_string()))?;
    if grpc {
        return Ok(grpc::from_reply(status, &headers, &body));
    }
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
