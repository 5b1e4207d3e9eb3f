//! A loaded plugin: one named plugin instance from the configuration, its
//! module pre-linked into an `InstancePre`, its config, limits and failure
//! policy, and a pool of initialised instances. A request borrows an
//! instance for one phase call and returns it; an instance that trapped or
//! hit its deadline is dropped, never reused. Repeated traps pause the
//! plugin (crash-loop backoff).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

use wasmtime::Store;
use wasmtime::component::InstancePre;
use weir_config::{CrashLoopConfig, FailurePolicy, Isolation, PluginLimits};

use crate::bindings::{
    self, Action, BodyAction, ChunkAction, DescribeIndices, Phases, StreamPhases, StreamingGuest, StreamingIndices,
};
use crate::engine::{EPOCH_TICK, PluginEngine, deadline_ticks};
use crate::error::{LoadError, PluginFailure};
use crate::heads::{self, Heads};
use crate::imports::{Locals, PluginHost, StoreData};
use crate::metrics::PluginMetrics;
use crate::schema::{ConfigSchema, ModuleSchema, SchemaCache};
use crate::store::{PeakLimits, describe_trap, is_deadline, new_store};

/// What a request holds for one position of its chain, from phase to phase:
/// the plugin's request-local values and, for an `isolation = "request"`
/// plugin, its instance (made fresh for the request, used by all its
/// phases, dropped with it).
#[derive(Default)]
pub struct RequestSlot {
    instance: Option<Instance>,
    locals: Locals,
    /// Headers for the response, added from the request's phases
    /// (`add-response-header`, contract `0.2.6`).
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestSlot {
    /// A slot for the request body's chunk calls, which run while the
    /// request goes on: the values set so far, readable; what the chunk
    /// calls set stays with them. No instance (an `isolation = "request"`
    /// plugin gets a fresh one for the stream).
    pub fn fork(&self) -> RequestSlot {
        RequestSlot { instance: None, locals: self.locals.clone(), response_headers: Vec::new() }
    }

    /// The headers the plugin added for the response (`add-response-header`),
    /// in the order it added them; taken once, at its place in the
    /// response phases.
    pub fn take_response_headers(&mut self) -> Vec<(HeaderName, HeaderValue)> {
        std::mem::take(&mut self.response_headers)
    }
}

/// One initialised instance.
struct Instance {
    store: Store<StoreData>,
    world: bindings::PluginWorld,
    /// Its `streaming` export, when the module has one (contract `0.2.4`).
    streaming: Option<StreamingGuest>,
    /// The instance handle, for exports looked up once (`describe`).
    instance: wasmtime::component::Instance,
}

/// A call into a phase; the heads travel separately (lent to the store).
enum Call<'a> {
    Request,
    RequestBody(&'a [u8]),
    Response,
    ResponseBody(&'a [u8]),
    RequestChunk(&'a [u8], bool),
    ResponseChunk(&'a [u8], bool),
}

enum Answer {
    Head(Action),
    Body(BodyAction),
    Chunk(ChunkAction),
}

impl Instance {
    async fn call(&mut self, call: Call<'_>) -> wasmtime::Result<Answer> {
        let h = self.world.weir_plugin_handler();
        let lent = self.store.data().lent.as_ref().ok_or_else(|| wasmtime::Error::msg("no heads lent"))?;
        let (req, resp) = (lent.request_handle(), lent.response_handle());
        let s = &mut self.store;
        Ok(match call {
            Call::Request => Answer::Head(h.call_on_request(s, req).await?),
            Call::RequestBody(body) => Answer::Body(h.call_on_request_body(s, req, body).await?),
            Call::Response => Answer::Head(h.call_on_response(s, req, resp).await?),
            Call::ResponseBody(body) => Answer::Body(h.call_on_response_body(s, req, resp, body).await?),
            Call::RequestChunk(chunk, end) | Call::ResponseChunk(chunk, end) => {
                let g = self.streaming.as_ref().ok_or_else(|| wasmtime::Error::msg("the module does not stream"))?;
                Answer::Chunk(match call {
                    Call::RequestChunk(..) => g.call_on_request_chunk(s, req, chunk, end).await?,
                    _ => g.call_on_response_chunk(s, req, resp, chunk, end).await?,
                })
            }
        })
    }
}

/// What a plugin needs to be loaded, from the configuration.
pub struct PluginSpec {
    /// Instance name (`[plugins.NAME]`).
    pub name: Arc<str>,
    /// Module file name.
    pub module: String,
    /// Module sha256, hex.
    pub sha256: String,
    /// Config as JSON.
    pub config_json: String,
    /// Failure policy.
    pub failure: FailurePolicy,
    /// Limits.
    pub limits: PluginLimits,
    /// Instance reuse.
    pub isolation: Isolation,
    /// Idle instances kept.
    pub max_idle: usize,
    /// Crash-loop backoff policy.
    pub crash_loop: CrashLoopConfig,
    /// The upstreams it may call through `outbound`.
    pub outbound: Vec<String>,
    /// Whether this is the canary version of plugin `name`: it shares the
    /// name's state, events and chain data, and its calls are counted
    /// apart, as `NAME@canary`.
    pub canary: bool,
}

impl PluginSpec {
    /// The name its calls are counted and logged under: `NAME`, or
    /// `NAME@canary` for a canary version.
    pub fn label(&self) -> std::borrow::Cow<'_, str> {
        if self.canary { format!("{}@canary", self.name).into() } else { (*self.name).into() }
    }
}

/// Crash-loop bookkeeping of one plugin instance name in one snapshot.
#[derive(Debug, Default)]
struct CrashLoop {
    /// Traps in a row.
    consecutive: u32,
    /// Paused until then.
    until: Option<Instant>,
    /// The next pause.
    next_backoff: Duration,
    /// Backoffs so far.
    episodes: u64,
}

/// What `/admin/plugins` shows of a plugin's crash-loop state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrashLoopStatus {
    /// `healthy`, `backoff` (not called) or `probing` (paused before; the
    /// next call decides).
    pub state: &'static str,
    /// Traps in a row.
    pub consecutive_traps: u32,
    /// Time left in the pause, ms.
    pub retry_in_ms: u64,
    /// Backoffs so far.
    pub episodes: u64,
}

/// A named plugin instance ready to serve.
pub struct LoadedPlugin {
    spec: PluginSpec,
    phases: Phases,
    /// The bodies it takes chunk by chunk (none without `streaming`).
    streams: StreamPhases,
    pre: bindings::PluginPre<StoreData>,
    /// Where its `streaming` export is, if it has one.
    streaming: Option<StreamingIndices>,
    /// The JSON Schema it declared for its config (contract `0.2.5`).
    config_schema: Option<Arc<str>>,
    engine: Arc<PluginEngine>,
    host: Arc<PluginHost>,
    idle: Mutex<Vec<Instance>>,
    deadline_ticks: u64,
    /// Whether the module imports `state` or `outbound`, the capabilities
    /// that await I/O on the host. Without them, the epoch deadline alone
    /// bounds a call.
    awaits_host: bool,
    metrics: PluginMetrics,
    crash: Mutex<CrashLoop>,
}

impl LoadedPlugin {
    /// Create a first instance from `pre` and hand it its config.
    pub(crate) async fn load(
        spec: PluginSpec,
        engine: Arc<PluginEngine>,
        pre: InstancePre<StoreData>,
        host: Arc<PluginHost>,
        metrics: PluginMetrics,
        awaits_host: bool,
        schemas: &SchemaCache,
    ) -> Result<Self, LoadError> {
        // Optional: modules built for contract 0.2.3 and before lack it.
        let streaming = StreamingIndices::new(&pre).ok();
        let describe = DescribeIndices::new(&pre).ok();
        let pre = bindings::PluginPre::new(pre).map_err(|e| LoadError::NotAPlugin(format!("{e:#}")))?;
        let deadline_ticks = deadline_ticks(spec.limits.deadline);
        let mut plugin = Self {
            spec,
            phases: Phases::empty(),
            streams: StreamPhases::empty(),
            pre,
            streaming,
            config_schema: None,
            engine,
            host,
            idle: Mutex::new(Vec::new()),
            deadline_ticks,
            awaits_host,
            metrics,
            crash: Mutex::new(CrashLoop::default()),
        };
        if let Some(describe) = &describe {
            let cached = schemas.lock().unwrap_or_else(|p| p.into_inner()).get(&plugin.spec.sha256).cloned();
            let schema = match cached {
                Some(schema) => schema,
                None => {
                    let schema = plugin.describe(describe).await?;
                    schemas
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(plugin.spec.sha256.clone(), schema.clone());
                    schema
                }
            };
            if let Some(schema) = schema {
                let config = plugin.spec.config_json.clone();
                let checked = schema.clone();
                tokio::task::spawn_blocking(move || checked.compiled.check(&config).map_err(LoadError::ConfigSchema))
                    .await
                    .map_err(|e| LoadError::Instantiate(format!("schema check failed: {e}")))??;
                plugin.config_schema = Some(schema.text.clone());
            }
        }
        let mut first = plugin.new_instance().await?;
        let (phases, streams) = plugin.init(&mut first).await?;
        plugin.phases = phases;
        plugin.streams = streams;
        plugin.put_back(first);
        Ok(plugin)
    }

    /// The configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The phases the plugin asked for.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// The bodies the plugin takes chunk by chunk.
    pub fn streams(&self) -> StreamPhases {
        self.streams
    }

    /// Names of the phases the plugin asked for (streamed bodies as
    /// `request_chunks`, `response_chunks`).
    pub fn phase_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = [
            (Phases::REQUEST_HEADERS, "request_headers"),
            (Phases::REQUEST_BODY, "request_body"),
            (Phases::RESPONSE_HEADERS, "response_headers"),
            (Phases::RESPONSE_BODY, "response_body"),
        ]
        .into_iter()
        .filter(|(p, _)| self.phases.contains(*p))
        .map(|(_, n)| n)
        .collect();
        if self.streams.contains(StreamPhases::REQUEST_BODY) {
            names.push("request_chunks");
        }
        if self.streams.contains(StreamPhases::RESPONSE_BODY) {
            names.push("response_chunks");
        }
        names
    }

    /// Its metric handles.
    pub fn metrics(&self) -> &PluginMetrics {
        &self.metrics
    }

    /// Idle instances in the pool.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The JSON Schema the plugin declared for its config, if any.
    pub fn config_schema(&self) -> Option<&str> {
        self.config_schema.as_deref()
    }

    /// Create and initialise a fresh instance.
    async fn instantiate(&self) -> Result<Instance, LoadError> {
        let mut inst = self.new_instance().await?;
        self.init(&mut inst).await?;
        Ok(inst)
    }

    /// A fresh instance, not yet initialised.
    async fn new_instance(&self) -> Result<Instance, LoadError> {
        let data = StoreData::new(self.host.clone(), PeakLimits::new(self.spec.limits.memory));
        let mut store = new_store(&self.engine, data, self.spec.limits.deadline);
        let failed = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
        let instance = self.pre.instance_pre().instantiate_async(&mut store).await.map_err(failed)?;
        let world = bindings::PluginWorld::new(&mut store, &instance).map_err(failed)?;
        let streaming = self.streaming.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(failed)?;
        Ok(Instance { store, world, streaming, instance })
    }

    /// Ask a throwaway instance for the module's config schema (what the
    /// guest allocates to build it does not stay in the pool) and compile
    /// it, on a blocking thread (a schema's patterns are the plugin's).
    async fn describe(&self, describe: &DescribeIndices) -> Result<Option<Arc<ModuleSchema>>, LoadError> {
        let mut inst = self.new_instance().await?;
        let guest =
            describe.load(&mut inst.store, &inst.instance).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let Some(text) = guest
            .call_config_schema(&mut inst.store)
            .await
            .map_err(|e| LoadError::InitTrapped(format!("config-schema: {}", describe_trap(&e))))?
        else {
            return Ok(None);
        };
        drop(inst);
        let text: Arc<str> = text.into();
        let schema = text.clone();
        let compiled =
            tokio::task::spawn_blocking(move || ConfigSchema::compile(&schema).map_err(LoadError::BadSchema))
                .await
                .map_err(|e| LoadError::Instantiate(format!("schema compile failed: {e}")))??;
        Ok(Some(Arc::new(ModuleSchema { text, compiled })))
    }

    /// Hand a fresh instance its config: the phases and bodies it asks for.
    async fn init(&self, inst: &mut Instance) -> Result<(Phases, StreamPhases), LoadError> {
        let info = inst
            .world
            .weir_plugin_handler()
            .call_init(&mut inst.store, &self.spec.config_json)
            .await
            .map_err(|e| LoadError::InitTrapped(describe_trap(&e)))?
            .map_err(LoadError::ConfigRejected)?;
        let streams = match &inst.streaming {
            Some(g) => g.call_streams(&mut inst.store).await.map_err(|e| LoadError::InitTrapped(describe_trap(&e)))?,
            None => StreamPhases::empty(),
        };
        // Host calls are counted for phase calls, not for `init`.
        inst.store.data_mut().host_calls = 0;
        self.metrics.instances.inc();
        Ok((info.phases, streams))
    }

    async fn borrow(&self, held: &mut RequestSlot) -> Result<Instance, PluginFailure> {
        let reused = match self.spec.isolation {
            Isolation::Pool => self.idle.lock().ok().and_then(|mut v| {
                let inst = v.pop();
                self.metrics.pool_idle.set(v.len() as i64);
                inst
            }),
            Isolation::Request => held.instance.take(),
        };
        match reused {
            Some(inst) => Ok(inst),
            None => self.instantiate().await.map_err(|e| PluginFailure::Unavailable(e.to_string())),
        }
    }

    /// Return a healthy instance: to the pool, or to the request holding it.
    fn give_back(&self, inst: Instance, held: &mut RequestSlot) {
        match self.spec.isolation {
            Isolation::Pool => self.put_back(inst),
            Isolation::Request => held.instance = Some(inst),
        }
    }

    fn put_back(&self, inst: Instance) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.spec.max_idle
        {
            idle.push(inst);
            self.metrics.pool_idle.set(idle.len() as i64);
        }
    }

    /// Borrow an instance, lend it the heads, run one phase under the
    /// deadline, take the heads back, return the instance. The heads come
    /// back in every case; the caller commits or discards the phase's edits.
    async fn run(
        &self,
        call: Call<'_>,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
    ) -> Result<Answer, PluginFailure> {
        if let Some(wait) = self.paused() {
            return Err(PluginFailure::CrashLoop(wait));
        }
        let started = Instant::now();
        let mut inst = match self.borrow(held).await {
            Ok(inst) => inst,
            Err(e) => {
                self.crashed();
                return Err(e);
            }
        };
        inst.store.set_epoch_deadline(self.deadline_ticks);
        let data = inst.store.data_mut();
        // The request's locals and heads travel with it, not with the instance.
        data.locals = std::mem::take(&mut held.locals);
        let rep = data.next_rep;
        data.next_rep = data.next_rep.wrapping_add(2);
        let response_headers_held = held.response_headers.len();
        data.lent = heads.take().map(|heads| heads::Lent { heads, rep, response_headers_held });
        data.outbound_calls = 0;
        // The epoch deadline stops guest code; this timeout also bounds time
        // spent awaiting host I/O (state and outbound calls), which epochs
        // do not see.
        let result = if self.awaits_host {
            let budget = self.spec.limits.deadline + EPOCH_TICK * 2;
            tokio::time::timeout(budget, inst.call(call)).await
        } else {
            Ok(inst.call(call).await)
        };
        let data = inst.store.data_mut();
        // Non-zero only with WEIR_COUNT_HOST_CALLS=1: no atomic add otherwise.
        let host_calls = std::mem::take(&mut data.host_calls);
        if host_calls > 0 {
            self.metrics.host_calls.inc_by(host_calls);
        }
        held.locals = std::mem::take(&mut data.locals);
        *heads = data.lent.take().map(|l| l.heads);
        let took = started.elapsed().as_secs_f64();
        self.metrics.duration.observe(took);
        self.metrics.memory_peak(data.limits.peak());
        self.metrics.live.record(!matches!(result, Ok(Ok(_))), took);
        match result {
            Ok(Ok(answer)) => {
                self.give_back(inst, held);
                self.recovered();
                Ok(answer)
            }
            Ok(Err(e)) if is_deadline(&e) => {
                self.metrics.timeout.inc();
                Err(PluginFailure::Deadline(self.spec.limits.deadline))
            }
            Err(_elapsed) => {
                self.metrics.timeout.inc();
                Err(PluginFailure::Deadline(self.spec.limits.deadline))
            }
            Ok(Err(e)) => {
                self.metrics.trap.inc();
                self.crashed();
                let msg = describe_trap(&e);
                tracing::warn!(plugin = %self.spec.label(), error = %msg, "plugin trapped; instance discarded");
                Err(PluginFailure::Trap(msg))
            }
        }
    }

    /// How long the plugin is still paused for, if it is in backoff.
    fn paused(&self) -> Option<Duration> {
        let c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        let left = c.until?.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// A trap (or an instance that could not be made): one more in a row;
    /// enough of them start a pause, which doubles on each episode.
    fn crashed(&self) {
        let policy = self.spec.crash_loop;
        if policy.after == 0 {
            return;
        }
        let mut c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        c.consecutive = c.consecutive.saturating_add(1);
        if c.consecutive >= policy.after && c.until.is_none_or(|u| u <= Instant::now()) {
            let pause = if c.next_backoff.is_zero() { policy.backoff } else { c.next_backoff };
            c.until = Some(Instant::now() + pause);
            c.next_backoff = (pause * 2).min(policy.max_backoff);
            c.episodes += 1;
            self.metrics.crash_looping.set(1);
            self.metrics.crash_loops.inc();
            tracing::warn!(
                plugin = %self.spec.label(),
                traps_in_a_row = c.consecutive,
                pause = ?pause,
                "plugin is crash-looping: not called until the pause ends"
            );
        }
    }

    /// A call that succeeded ends any crash loop.
    fn recovered(&self) {
        let mut c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        if c.consecutive > 0 || c.until.is_some() {
            if c.until.is_some() {
                tracing::info!(plugin = %self.spec.label(), "plugin recovered from its crash loop");
            }
            c.consecutive = 0;
            c.until = None;
            c.next_backoff = Duration::ZERO;
            self.metrics.crash_looping.set(0);
        }
    }

    /// The crash-loop state, for the admin API.
    pub fn crash_loop(&self) -> CrashLoopStatus {
        let c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        let left = c.until.and_then(|u| u.checked_duration_since(Instant::now())).unwrap_or_default();
        let state = match c.until {
            None => "healthy",
            Some(_) if !left.is_zero() => "backoff",
            Some(_) => "probing",
        };
        CrashLoopStatus {
            state,
            consecutive_traps: c.consecutive,
            retry_in_ms: left.as_millis() as u64,
            episodes: c.episodes,
        }
    }

    fn count(&self, responded: bool) {
        if responded { &self.metrics.respond } else { &self.metrics.ok }.inc();
    }

    /// Count output the gateway refused.
    pub fn count_invalid(&self) {
        self.metrics.invalid.inc();
    }

    /// Run a call, then keep the heads' staged edits (and published values)
    /// when `commits` says the answer takes effect, else drop them.
    async fn settle(
        &self,
        call: Call<'_>,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
        commits: fn(&Answer) -> bool,
    ) -> Result<Answer, PluginFailure> {
        let answer = self.run(call, heads, held).await;
        let commit = answer.as_ref().is_ok_and(commits);
        if let Some(h) = heads.as_mut() {
            if commit {
                h.commit();
                held.response_headers.append(&mut h.request.response_headers);
            } else {
                h.discard();
            }
        }
        answer
    }

    /// A head phase: `on-request` (with `heads.response` unset) or
    /// `on-response`. On `continue` the phase's edits take effect; on
    /// anything else they are dropped.
    async fn head_phase(
        &self,
        call: Call<'_>,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
    ) -> Result<Action, PluginFailure> {
        match self.settle(call, heads, held, |a| matches!(a, Answer::Head(Action::Continue))).await? {
            Answer::Head(a) => {
                self.count(matches!(a, Action::Respond(_)));
                Ok(a)
            }
            _ => unreachable_answer(),
        }
    }

    /// A buffered-body phase. The edits it made (to the request head in
    /// `on-request-body`; published values) take effect on `continue`.
    async fn body_phase(
        &self,
        call: Call<'_>,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
    ) -> Result<BodyAction, PluginFailure> {
        match self.settle(call, heads, held, |a| matches!(a, Answer::Body(BodyAction::Continue(_)))).await? {
            Answer::Body(a) => {
                self.count(matches!(a, BodyAction::Respond(_)));
                Ok(a)
            }
            _ => unreachable_answer(),
        }
    }

    /// A chunk call; the heads are read-only, anything staged is dropped.
    async fn chunk_call(
        &self,
        call: Call<'_>,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
    ) -> Result<ChunkAction, PluginFailure> {
        match self.settle(call, heads, held, |_| false).await? {
            Answer::Chunk(a) => {
                self.count(matches!(a, ChunkAction::Abort(_)));
                Ok(a)
            }
            _ => unreachable_answer(),
        }
    }

    /// `on-request-chunk` (the heads lent read-only).
    pub async fn on_request_chunk(
        &self,
        heads: &mut Option<Heads>,
        chunk: &[u8],
        end: bool,
        held: &mut RequestSlot,
    ) -> Result<ChunkAction, PluginFailure> {
        self.chunk_call(Call::RequestChunk(chunk, end), heads, held).await
    }

    /// `on-response-chunk` (the heads lent read-only).
    pub async fn on_response_chunk(
        &self,
        heads: &mut Option<Heads>,
        chunk: &[u8],
        end: bool,
        held: &mut RequestSlot,
    ) -> Result<ChunkAction, PluginFailure> {
        self.chunk_call(Call::ResponseChunk(chunk, end), heads, held).await
    }

    /// `on-request`, on `heads.request` (editable).
    pub async fn on_request(&self, heads: &mut Option<Heads>, held: &mut RequestSlot) -> Result<Action, PluginFailure> {
        self.head_phase(Call::Request, heads, held).await
    }

    /// `on-request-body`; the request head may still be edited.
    pub async fn on_request_body(
        &self,
        heads: &mut Option<Heads>,
        body: &[u8],
        held: &mut RequestSlot,
    ) -> Result<BodyAction, PluginFailure> {
        self.body_phase(Call::RequestBody(body), heads, held).await
    }

    /// `on-response`, on `heads.response` (editable; the request read-only).
    pub async fn on_response(
        &self,
        heads: &mut Option<Heads>,
        held: &mut RequestSlot,
    ) -> Result<Action, PluginFailure> {
        self.head_phase(Call::Response, heads, held).await
    }

    /// `on-response-body`; both heads are read-only by now.
    pub async fn on_response_body(
        &self,
        heads: &mut Option<Heads>,
        body: &[u8],
        held: &mut RequestSlot,
    ) -> Result<BodyAction, PluginFailure> {
        self.body_phase(Call::ResponseBody(body), heads, held).await
    }
}

#[cfg(feature = "bench")]
impl LoadedPlugin {
    /// Run `on-request` once on a small synthetic `GET` head, outside any
    /// request: the per-call cost of the runtime (borrow an instance, lend
    /// the head, call, return it) without the network. For benchmarks and
    /// diagnostics.
    pub async fn probe_on_request(&self, path: &str, headers: &[(&str, &str)]) -> Result<(), PluginFailure> {
        let mut req = http::Request::get(path)
            .header("host", "bench.local")
            .body(())
            .map_err(|e| PluginFailure::InvalidOutput(e.to_string()))?;
        for (n, v) in headers {
            let name = http::HeaderName::try_from(*n).map_err(|e| PluginFailure::InvalidOutput(e.to_string()))?;
            let value = http::HeaderValue::try_from(*v).map_err(|e| PluginFailure::InvalidOutput(e.to_string()))?;
            req.headers_mut().append(name, value);
        }
        let info = Arc::new(crate::heads::RequestInfo {
            client: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
            authority: "bench.local".into(),
            route: "bench".into(),
            request_id: "0123456789abcdef0123456789abcdef".into(),
            params: Vec::new(),
            tls: None,
        });
        let mut heads = Some(Heads {
            request: crate::heads::LentRequest::new(req.into_parts().0, info),
            response: None,
            chain: Default::default(),
            outbound: Default::default(),
        });
        self.on_request(&mut heads, &mut RequestSlot::default()).await.map(drop)
    }
}

/// `Instance::call` answers each call with its own variant.
fn unreachable_answer<T>() -> Result<T, PluginFailure> {
    Err(PluginFailure::Trap("internal: phase answered with another phase's type".into()))
}
