//! `weir plugin replay`: run a plugin on a flight recording, offline.
//!
//! The recording (see [`Recording`]) holds what the plugin was given: the
//! request head (and response head, in response phases), the buffered body
//! of a body phase, the values earlier plugins published. Replay loads a
//! module in a local engine with the plugin's limits, gives it its config
//! (from `--config`, checked against its schema like the gateway does), and
//! calls the recorded phase once on that input. No gateway, no network:
//! outbound calls are refused, state is in memory.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use weir_config::{PluginLimits, RuntimeConfig, Source};
use weir_plugin_host::{
    Action, BodyAction, ChunkAction, Heads, LentRequest, LentResponse, LocalPlugin, LocalSpec, Phases, PluginFailure,
    Reply, RequestInfo, RequestSlot, StreamPhases, sha256_hex,
};

pub use crate::observe::recorder::{
    ChainValue, RecordedBody, RecordedPlugin, RecordedRequest, RecordedResponse, Recording,
};

/// What to replay, and with what.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The recording file (`GET /admin/recordings/ID`, or the recorder's
    /// folder).
    pub recording: PathBuf,
    /// The module to run; by default the one `--config` names for the
    /// plugin.
    pub module: Option<PathBuf>,
    /// A `gateway.toml` for the plugin's config table, limits and module.
    pub config: Option<PathBuf>,
    /// The `[plugins.NAME]` to take from `config` (default: the recorded
    /// plugin's name).
    pub plugin: Option<String>,
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The plugin continued (with or without edits) or answered below 500.
    Clean,
    /// It trapped, overran its deadline, its output was refused, or it
    /// answered 5xx.
    Failed,
}

/// A replay's outcome: the report to print and the verdict.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// What happened, for a person.
    pub report: String,
    /// Clean or failed.
    pub verdict: Verdict,
}

/// Run the replay `r`. `Err` when it cannot run at all (unreadable
/// recording, no module, a module that does not load, a phase the plugin
/// does not take).
pub async fn replay(r: &Replay) -> anyhow::Result<Replayed> {
    let text = std::fs::read(&r.recording).with_context(|| format!("cannot read {}", r.recording.display()))?;
    let rec: Recording =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a weir recording", r.recording.display()))?;
    if rec.version != crate::observe::recorder::RECORDING_VERSION {
        bail!("{}: recording format {} is not the one this weir reads", r.recording.display(), rec.version);
    }
    let name = r
        .plugin
        .clone()
        .or_else(|| rec.plugin.as_ref().map(|p| p.name.clone()))
        .ok_or_else(|| anyhow!("the recording names no plugin (a `5xx` recording): say which with --plugin"))?;

    let mut out = String::new();
    let _ =
        writeln!(out, "recording {} ({:?}, route `{}`, request {})", rec.id, rec.trigger, rec.route, rec.request_id);
    let _ = writeln!(out, "  recorded: {} in phase `{}` after {} µs", rec.outcome, rec.phase, rec.duration_us);

    // The plugin's settings: from the config file, or what was recorded.
    let from_config = match &r.config {
        Some(path) => Some(plugin_from_config(path, &name, rec.plugin.as_ref().map(|p| p.sha256.as_str()))?),
        None => None,
    };
    let module_path = match (&r.module, &from_config) {
        (Some(m), _) => m.clone(),
        (None, Some(c)) => c.module.clone(),
        (None, None) => bail!("say which module to run: --module FILE.wasm, or --config gateway.toml"),
    };
    let bytes = std::fs::read(&module_path).with_context(|| format!("cannot read {}", module_path.display()))?;
    let sha256 = sha256_hex(&bytes);
    let recorded = rec.plugin.as_ref();
    let same_module = recorded.is_some_and(|p| p.sha256 == sha256);
    let _ = writeln!(
        out,
        "  module: {} sha256:{} ({})",
        module_path.display(),
        &sha256[..12],
        if same_module { "the recorded module" } else { "not the recorded module" }
    );
    let (config_json, limits, runtime, max_body) = match from_config {
        Some(c) => {
            let same = recorded.is_some_and(|p| p.config_sha256 == sha256_hex(c.config_json.as_bytes()));
            let _ = writeln!(
                out,
                "  config: [plugins.{name}] of {} ({})",
                c.file.display(),
                if same { "the recorded config" } else { "differs from the recorded one" }
            );
            (c.config_json, c.limits, c.runtime, c.max_body)
        }
        None => {
            let _ = writeln!(out, "  config: {{}} (no --config given)");
            let mut limits = PluginLimits::default();
            if let Some(p) = recorded {
                limits.memory = p.memory;
                limits.deadline = Duration::from_millis(p.deadline_ms.max(1));
            }
            (String::from("{}"), limits, RuntimeConfig::default(), u64::MAX)
        }
    };
    if !rec.redacted.is_empty() {
        let _ = writeln!(out, "  redacted headers (replayed as `[redacted]`): {}", rec.redacted.join(", "));
    }

    let local = LocalPlugin::compile(bytes, &runtime).await.map_err(|e| anyhow!("{}: {e}", module_path.display()))?;
    let module_name = module_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let plugin = local
        .load(LocalSpec { name: name.clone(), module: module_name, config_json, limits })
        .await
        .map_err(|e| anyhow!("{out}the plugin did not load, so nothing was replayed: {e}"))?;

    let mut heads = Some(heads_of(&rec)?);
    let before = heads.as_ref().map(view);
    let mut slot = RequestSlot::default();
    let mut body = match &rec.body {
        Some(b) => Bytes::from(b.bytes().context("the recording's body is not base64")?),
        None => Bytes::new(),
    };
    if rec.body.as_ref().is_some_and(|b| b.truncated) {
        let _ = writeln!(
            out,
            "  body: cut at {} of {} bytes when recorded",
            body.len(),
            rec.body.as_ref().map_or(0, |b| b.len)
        );
    }
    let whole = |p: Phases| plugin.phases().contains(p);
    let streams = |s: StreamPhases| plugin.streams().contains(s);
    let started = std::time::Instant::now();
    let outcome = match rec.phase.as_str() {
        "request" if whole(Phases::REQUEST_HEADERS) => head(plugin.on_request(&mut heads, &mut slot).await),
        "response" if whole(Phases::RESPONSE_HEADERS) => head(plugin.on_response(&mut heads, &mut slot).await),
        "request_body" if whole(Phases::REQUEST_BODY) => {
            body_outcome(plugin.on_request_body(&mut heads, &body, &mut slot).await, &mut body)
        }
        "response_body" if whole(Phases::RESPONSE_BODY) => {
            body_outcome(plugin.on_response_body(&mut heads, &body, &mut slot).await, &mut body)
        }
        "request_body" if streams(StreamPhases::REQUEST_BODY) => {
            chunk(plugin.on_request_chunk(&mut heads, &body, true, &mut slot).await, &mut body)
        }
        "response_body" if streams(StreamPhases::RESPONSE_BODY) => {
            chunk(plugin.on_response_chunk(&mut heads, &body, true, &mut slot).await, &mut body)
        }
        phase => bail!(
            "{out}the plugin does not take the `{phase}` phase (it asks for {:?}), so nothing was replayed",
            plugin.phase_names()
        ),
    };
    let took = started.elapsed();
    let verdict = match outcome {
        Outcome::Continue { body_replaced } => {
            let _ = writeln!(out, "replayed: continue ({} µs)", took.as_micros());
            let after = heads.as_ref().map(view);
            for line in diff(before.as_ref(), after.as_ref()) {
                let _ = writeln!(out, "  {line}");
            }
            if body_replaced {
                let _ = writeln!(out, "  body replaced: {} bytes: {}", body.len(), preview(&body));
            }
            Verdict::Clean
        }
        Outcome::Respond(reply) => {
            let _ = writeln!(out, "replayed: respond {} ({} µs)", reply.status, took.as_micros());
            // A 5xx answer (an SDK `Err`) is the plugin failing, as the
            // recorder's `error` trigger counts it.
            let mut failed = (500..600).contains(&reply.status);
            // The checks the gateway makes of an answer before sending it.
            if let Err(e) = crate::proxy::chain::plugin_reply(reply.clone(), max_body, false) {
                let _ = writeln!(out, "  the gateway refuses this answer: {e}");
                failed = true;
            }
            for h in &reply.headers {
                let _ = writeln!(out, "  {}: {}", h.name, String::from_utf8_lossy(&h.value));
            }
            if !reply.body.is_empty() {
                let _ = writeln!(out, "  body: {}", preview(&reply.body));
            }
            if failed { Verdict::Failed } else { Verdict::Clean }
        }
        Outcome::Failed(e) => {
            let _ = writeln!(out, "replayed: {e}");
            Verdict::Failed
        }
    };
    for event in local.take_events() {
        let _ = writeln!(out, "  event {:?} {}: {}", event.severity, event.kind, event.message);
    }
    Ok(Replayed { report: out, verdict })
}

/// What the replayed call did.
enum Outcome {
    Continue { body_replaced: bool },
    Respond(Reply),
    Failed(PluginFailure),
}

fn head(result: Result<Action, PluginFailure>) -> Outcome {
    match result {
        Ok(Action::Continue) => Outcome::Continue { body_replaced: false },
        Ok(Action::Respond(r)) => Outcome::Respond(r),
        Err(e) => Outcome::Failed(e),
    }
}

fn body_outcome(result: Result<BodyAction, PluginFailure>, body: &mut Bytes) -> Outcome {
    match result {
        Ok(BodyAction::Continue(new)) => {
            let body_replaced = new.is_some();
            if let Some(new) = new {
                *body = new.into();
            }
            Outcome::Continue { body_replaced }
        }
        Ok(BodyAction::Respond(r)) => Outcome::Respond(r),
        Err(e) => Outcome::Failed(e),
    }
}

fn chunk(result: Result<ChunkAction, PluginFailure>, body: &mut Bytes) -> Outcome {
    match result {
        Ok(ChunkAction::Pass) => Outcome::Continue { body_replaced: false },
        Ok(ChunkAction::Replace(new)) => {
            *body = new.into();
            Outcome::Continue { body_replaced: true }
        }
        Ok(ChunkAction::Abort(reason)) => Outcome::Failed(PluginFailure::Aborted(reason)),
        Err(e) => Outcome::Failed(e),
    }
}

/// A plugin's settings in a config file.
struct FromConfig {
    file: PathBuf,
    module: PathBuf,
    config_json: String,
    limits: PluginLimits,
    runtime: RuntimeConfig,
    /// `[server] max_buffered_body`: the largest answer a plugin may give.
    max_body: u64,
}

fn plugin_from_config(path: &Path, name: &str, recorded_sha: Option<&str>) -> anyhow::Result<FromConfig> {
    let errors = |e: weir_config::LoadErrors| anyhow!("{e}");
    let src = Source::read(path).map_err(errors)?;
    let cfg = src.parse().map_err(errors)?;
    let p = cfg.plugins.get(name).ok_or_else(|| anyhow!("{}: no [plugins.{name}]", path.display()))?.get_ref();
    let config_json = match &p.config {
        Some(c) => serde_json::to_string(c.get_ref())?,
        None => "{}".into(),
    };
    let module = p.module.get_ref();
    let module = if module.starts_with(weir_oci::SCHEME) {
        // A registry module: the file the gateway cached, by its digest.
        let sha =
            recorded_sha.ok_or_else(|| anyhow!("{module}: the recording names no module digest: pass --module"))?;
        let dir = crate::snapshot::oci::cache_dir(&cfg.runtime, &src.base_dir());
        let cache = weir_oci::Cache::open(&dir)?;
        cache.blob_path(&format!("sha256:{sha}")).filter(|f| f.is_file()).ok_or_else(|| {
            anyhow!("{module} (sha256:{sha}) is not in the OCI cache at {}: pass --module", dir.display())
        })?
    } else {
        src.base_dir().join(&cfg.server.plugins_dir).join(module)
    };
    Ok(FromConfig {
        file: path.to_owned(),
        module,
        config_json,
        limits: p.limits,
        max_body: cfg.server.max_buffered_body,
        runtime: cfg.runtime,
    })
}

/// The heads as the recording has them.
fn heads_of(rec: &Recording) -> anyhow::Result<Heads> {
    let r = &rec.request;
    let mut req = http::Request::new(());
    *req.method_mut() = Method::from_bytes(r.method.as_bytes()).context("recorded method")?;
    *req.uri_mut() = Uri::from_str(&r.uri).context("recorded uri")?;
    *req.headers_mut() = header_map(&r.headers)?;
    let info = Arc::new(RequestInfo {
        client: r.client.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
        authority: r.authority.clone(),
        route: rec.route.as_str().into(),
        request_id: rec.request_id.clone(),
        params: r.params.clone(),
        tls: None,
    });
    let mut request = LentRequest::new(req.into_parts().0, info);
    let response = match &rec.response {
        Some(resp) => {
            let mut head = http::Response::new(());
            *head.status_mut() = StatusCode::from_u16(resp.status).context("recorded status")?;
            *head.headers_mut() = header_map(&resp.headers)?;
            // In a response phase the request is what went upstream: read-only.
            request = request.snapshot();
            Some(LentResponse::new(head.into_parts().0))
        }
        None => None,
    };
    let mut chain = weir_plugin_host::ChainData::default();
    for v in &rec.chain_data {
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD.decode(&v.base64).context("recorded chain data")?;
        chain.restore(&v.plugin, v.key.clone(), value);
    }
    Ok(Heads { request, response, chain, outbound: Default::default() })
}

fn header_map(headers: &[(String, String)]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        let name = HeaderName::from_bytes(n.as_bytes()).with_context(|| format!("recorded header name {n:?}"))?;
        let value = HeaderValue::from_bytes(v.as_bytes()).with_context(|| format!("recorded value of {n}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// What a diff compares: method, uri, request headers, response status and
/// headers.
struct View {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    status: Option<u16>,
    response_headers: Vec<(String, String)>,
}

fn view(h: &Heads) -> View {
    let pairs = |m: &HeaderMap| -> Vec<(String, String)> {
        m.iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
    };
    View {
        method: h.request.parts.method.to_string(),
        uri: h.request.parts.uri.to_string(),
        headers: pairs(&h.request.parts.headers),
        status: h.response.as_ref().map(|r| r.parts.status.as_u16()),
        response_headers: h.response.as_ref().map(|r| pairs(&r.parts.headers)).unwrap_or_default(),
    }
}

/// The edits a continuing call made, one per line.
fn diff(before: Option<&View>, after: Option<&View>) -> Vec<String> {
    let (Some(b), Some(a)) = (before, after) else { return Vec::new() };
    let mut lines = Vec::new();
    if b.method != a.method {
        lines.push(format!("method: {} -> {}", b.method, a.method));
    }
    if b.uri != a.uri {
        lines.push(format!("uri: {} -> {}", b.uri, a.uri));
    }
    header_diff("request", &b.headers, &a.headers, &mut lines);
    if b.status != a.status {
        lines.push(format!("status: {:?} -> {:?}", b.status, a.status));
    }
    header_diff("response", &b.response_headers, &a.response_headers, &mut lines);
    if lines.is_empty() {
        lines.push("no edits".into());
    }
    lines
}

fn header_diff(side: &str, before: &[(String, String)], after: &[(String, String)], lines: &mut Vec<String>) {
    for h in before.iter().filter(|h| !after.contains(h)) {
        lines.push(format!("{side} header removed: {}: {}", h.0, h.1));
    }
    for h in after.iter().filter(|h| !before.contains(h)) {
        lines.push(format!("{side} header set: {}: {}", h.0, h.1));
    }
}

/// The start of a body, as text.
fn preview(body: &[u8]) -> String {
    let cut = &body[..body.len().min(512)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < body.len() {
        s.push_str(" …");
    }
    s
}
