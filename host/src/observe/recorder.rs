//! The flight recorder (`[recorder]`): when a plugin call goes wrong, what
//! the plugin was given and what became of it, written to a bounded ring
//! of JSON files for `weir plugin replay` to run again offline.
//!
//! Recording is off the request path: on a failure (which is rare) the
//! request copies the head it holds and hands the write to a blocking
//! thread. At most [`MAX_PENDING`] writes wait at once; a storm of failures
//! beyond that is counted as dropped before anything is copied, never
//! queued without bound. (The `5xx` trigger is the exception: it copies
//! the head of every request on a route with plugins, in case it ends 5xx.)
//! Recordings may hold bodies: the folder is made `0700` and the files
//! `0600`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use weir_config::{RecorderConfig, Trigger};
use weir_plugin_host::{Heads, LoadedPlugin, PluginFailure, RequestInfo, sha256_hex};

/// Writes waiting at once; more are dropped (and counted).
const MAX_PENDING: usize = 8;
/// The format of a recording file.
pub(crate) const RECORDING_VERSION: u32 = 1;
/// What a redacted header value becomes.
pub(crate) const REDACTED: &str = "[redacted]";
/// Always redacted (unless `redact = false`).
const CREDENTIALS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// One recording: the file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    /// [`RECORDING_VERSION`].
    pub version: u32,
    /// Its id (also the file's name, without `.json`).
    pub id: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Why it was recorded.
    pub trigger: Trigger,
    /// The route.
    pub route: String,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// The plugin called (none for a `5xx` recording).
    pub plugin: Option<RecordedPlugin>,
    /// The phase: `request`, `request_body`, `response` or `response_body`.
    pub phase: String,
    /// What became of the call (or the request, for `5xx`).
    pub outcome: String,
    /// How long the call took, µs.
    pub duration_us: u64,
    /// The request head as it reached the plugin.
    pub request: RecordedRequest,
    /// The response head as it reached the plugin (response phases).
    pub response: Option<RecordedResponse>,
    /// The buffered body of a body phase, up to `max_body`.
    pub body: Option<RecordedBody>,
    /// What earlier plugins published for this request (`chain-data`).
    pub chain_data: Vec<ChainValue>,
    /// The headers whose values were replaced with `[redacted]`.
    pub redacted: Vec<String>,
}

/// Which plugin, exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedPlugin {
    /// Its `[plugins.NAME]`.
    pub name: String,
    /// Its module file.
    pub module: String,
    /// The module's sha256.
    pub sha256: String,
    /// The sha256 of its `config` table as JSON (the table itself is not
    /// recorded: it may hold secrets).
    pub config_sha256: String,
    /// Its memory limit, bytes.
    pub memory: u64,
    /// Its deadline per call, ms.
    pub deadline_ms: u64,
}

/// A request head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// The method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The authority the client asked for.
    pub authority: String,
    /// The client's address.
    pub client: String,
    /// Path parameters the route captured.
    pub params: Vec<(String, String)>,
    /// The headers, in order (values as text; bytes that are not UTF-8
    /// replaced).
    pub headers: Vec<(String, String)>,
}

/// A response head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// The status.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
}

/// A body, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedBody {
    /// Its bytes (up to `max_body`), base64.
    pub base64: String,
    /// Its whole length.
    pub len: u64,
    /// Whether it was cut at `max_body`.
    pub truncated: bool,
}

impl RecordedBody {
    /// The recorded bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.base64)
    }
}

/// One `chain-data` value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainValue {
    /// The plugin that published it.
    pub plugin: String,
    /// Its key.
    pub key: String,
    /// Its value, base64.
    pub base64: String,
}

/// The recorder of one snapshot.
pub(crate) struct Recorder {
    dir: PathBuf,
    max_recordings: usize,
    max_body: usize,
    triggers: HashSet<Trigger>,
    /// Headers to redact; empty with `redact = false`.
    redact: Vec<String>,
    pending: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

impl Recorder {
    /// From `[recorder]`; `base` anchors a relative `dir`. `None` when it
    /// is disabled.
    pub(crate) fn new(cfg: &RecorderConfig, base: &Path) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        let mut redact: Vec<String> = Vec::new();
        if cfg.redact {
            redact.extend(CREDENTIALS.iter().map(|s| (*s).to_owned()));
            redact.extend(cfg.redact_headers.iter().map(|h| h.to_ascii_lowercase()));
        }
        Some(Self {
            dir: base.join(&cfg.dir),
            max_recordings: cfg.max_recordings.max(1),
            max_body: usize::try_from(cfg.max_body).unwrap_or(usize::MAX),
            triggers: cfg.on.iter().copied().collect(),
            redact,
            pending: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
        })
    }

    /// The folder it writes to.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `trigger` is recorded.
    pub(crate) fn wants(&self, trigger: Trigger) -> bool {
        self.triggers.contains(&trigger)
    }

    /// Recordings dropped because too many writes were waiting.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// What a plugin call's result makes the recorder write, if anything:
    /// the trigger and the outcome's words. `answered` is the status the
    /// plugin answered the client with, if it did.
    pub(crate) fn classify(&self, failure: Option<&PluginFailure>, answered: Option<u16>) -> Option<(Trigger, String)> {
        let (trigger, outcome) = match (failure, answered) {
            (Some(e @ (PluginFailure::Trap(_) | PluginFailure::InvalidOutput(_))), _) => (Trigger::Trap, e.to_string()),
            (Some(e @ PluginFailure::Deadline(_)), _) => (Trigger::Deadline, e.to_string()),
            (Some(_), _) => return None,
            (None, Some(status)) if (500..600).contains(&status) => (Trigger::Error, format!("answered {status}")),
            (None, _) => return None,
        };
        self.wants(trigger).then_some((trigger, outcome))
    }

    /// Record a plugin call: `heads` and `body` as the plugin got them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plugin_call(
        &self,
        trigger: Trigger,
        outcome: String,
        plugin: &LoadedPlugin,
        phase: &str,
        took: Duration,
        heads: Option<&Heads>,
        body: Option<&Bytes>,
    ) -> bool {
        let Some(heads) = heads else { return false };
        let Some(slot) = self.reserve() else { return false };
        let spec = plugin.spec();
        let info = heads.request.info();
        let mut redacted = Vec::new();
        let request = self.request(
            &heads.request.parts.method,
            &heads.request.parts.uri,
            &heads.request.parts.headers,
            info,
            &mut redacted,
        );
        let response = heads.response.as_ref().map(|r| RecordedResponse {
            status: r.parts.status.as_u16(),
            headers: self.headers(&r.parts.headers, &mut redacted),
        });
        let chain_data = heads
            .chain
            .entries()
            .map(|(plugin, key, value)| ChainValue {
                plugin: plugin.to_owned(),
                key: key.to_owned(),
                base64: base64::engine::general_purpose::STANDARD.encode(value),
            })
            .collect();
        let recording = Recording {
            version: RECORDING_VERSION,
            id: String::new(),
            time_ms: now_ms(),
            trigger,
            route: info.route.to_string(),
            request_id: info.request_id.clone(),
            plugin: Some(RecordedPlugin {
                name: spec.name.to_string(),
                module: spec.module.clone(),
                sha256: spec.sha256.clone(),
                config_sha256: sha256_hex(spec.config_json.as_bytes()),
                memory: spec.limits.memory,
                deadline_ms: u64::try_from(spec.limits.deadline.as_millis()).unwrap_or(u64::MAX),
            }),
            phase: phase.to_owned(),
            outcome,
            duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            request,
            response,
            body: body.map(|b| self.body(b)),
            chain_data,
            redacted,
        };
        self.write(slot, recording);
        true
    }

    /// The request head as a route's chain received it, for a `5xx`
    /// recording made when the request ends.
    pub(crate) fn request_head(
        &self,
        parts: &http::request::Parts,
        info: &RequestInfo,
    ) -> (RecordedRequest, Vec<String>) {
        let mut redacted = Vec::new();
        let req = self.request(&parts.method, &parts.uri, &parts.headers, info, &mut redacted);
        (req, redacted)
    }

    /// Record a request that ended with `status`.
    pub(crate) fn ended(
        &self,
        status: u16,
        info: &RequestInfo,
        request: RecordedRequest,
        redacted: Vec<String>,
        took: Duration,
    ) {
        let Some(slot) = self.reserve() else { return };
        self.write(
            slot,
            Recording {
                version: RECORDING_VERSION,
                id: String::new(),
                time_ms: now_ms(),
                trigger: Trigger::Status5xx,
                route: info.route.to_string(),
                request_id: info.request_id.clone(),
                plugin: None,
                phase: "request".into(),
                outcome: format!("request ended {status}"),
                duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                request,
                response: None,
                body: None,
                chain_data: Vec::new(),
                redacted,
            },
        );
    }

    fn request(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        info: &RequestInfo,
        redacted: &mut Vec<String>,
    ) -> RecordedRequest {
        RecordedRequest {
            method: method.to_string(),
            uri: uri.path_and_query().map_or_else(|| uri.to_string(), ToString::to_string),
            authority: info.authority.clone(),
            client: info.client.to_string(),
            params: info.params.clone(),
            headers: self.headers(headers, redacted),
        }
    }

    fn headers(&self, headers: &HeaderMap, redacted: &mut Vec<String>) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| {
                let name = n.as_str();
                if self.redact.iter().any(|r| r == name) {
                    if !redacted.iter().any(|r| r == name) {
                        redacted.push(name.to_owned());
                    }
                    (name.to_owned(), REDACTED.to_owned())
                } else {
                    (name.to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
            })
            .collect()
    }

    fn body(&self, body: &Bytes) -> RecordedBody {
        let kept = &body[..body.len().min(self.max_body)];
        RecordedBody {
            base64: base64::engine::general_purpose::STANDARD.encode(kept),
            len: body.len() as u64,
            truncated: kept.len() < body.len(),
        }
    }

    /// A place among the waiting writes, or `None` (counted as dropped)
    /// when [`MAX_PENDING`] wait already.
    fn reserve(&self) -> Option<Pending> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Pending(self.pending.clone()))
    }

    /// Hand the recording to a blocking thread.
    fn write(&self, slot: Pending, mut recording: Recording) {
        // One sequence for the process: recorders of successive snapshots
        // never hand out the same id.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 10_000;
        recording.id = format!("{:013}-{seq:04}", recording.time_ms);
        let (dir, max) = (self.dir.clone(), self.max_recordings);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        handle.spawn_blocking(move || {
            if let Err(e) = store(&dir, max, &recording) {
                tracing::warn!(dir = %dir.display(), "cannot write a recording: {e}");
            } else {
                tracing::info!(id = %recording.id, trigger = ?recording.trigger, "recorded {}", recording.outcome);
            }
            drop(slot);
        });
    }
}

/// A reserved place among the waiting writes, given back when dropped.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Write one recording (to a temporary name, then renamed, so a reader
/// never sees half of one) and drop the oldest beyond `max`.
fn store(dir: &Path, max: usize, recording: &Recording) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let json = serde_json::to_vec_pretty(recording).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{}.tmp", recording.id));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(&json)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(format!("{}.json", recording.id)))?;
    let mut ids = list_ids(dir)?;
    if ids.len() > max {
        ids.sort();
        for old in &ids[..ids.len() - max] {
            let _ = std::fs::remove_file(dir.join(format!("{old}.json")));
        }
    }
    Ok(())
}

/// The ids of the recordings in `dir`.
fn list_ids(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).filter(|id| valid_id(id)) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// An id as the recorder makes them: `<13 digits>-<4 digits>`.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 18 && id.bytes().enumerate().all(|(i, b)| if i == 13 { b == b'-' } else { b.is_ascii_digit() })
}

/// Most recordings `GET /admin/recordings` reads and lists.
pub(crate) const MAX_LISTED: usize = 200;

/// Newest first: the summaries of the newest [`MAX_LISTED`] recordings,
/// and how many there are, for `GET /admin/recordings`.
pub(crate) fn list(dir: &Path) -> (Vec<serde_json::Value>, usize) {
    let mut ids = list_ids(dir).unwrap_or_default();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let total = ids.len();
    let listed = ids
        .iter()
        .take(MAX_LISTED)
        .filter_map(|id| read(dir, id))
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "time_ms": r.time_ms,
                "trigger": r.trigger,
                "route": r.route,
                "request_id": r.request_id,
                "plugin": r.plugin.as_ref().map(|p| p.name.clone()),
                "module_sha256": r.plugin.as_ref().map(|p| p.sha256.clone()),
                "phase": r.phase,
                "outcome": r.outcome,
                "method": r.request.method,
                "uri": r.request.uri,
            })
        })
        .collect();
    (listed, total)
}

/// One recording by id, for `GET /admin/recordings/ID`.
pub(crate) fn read(dir: &Path, id: &str) -> Option<Recording> {
    if !valid_id(id) {
        return None;
    }
    let text = std::fs::read(dir.join(format!("{id}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
