//! Building a snapshot: read and parse the config, build every part,
//! collect every error, and publish nothing unless all of it is good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::aggregate;
use crate::cache::{CacheFamilies, RouteCache};
use crate::canary::{Arm, ArmObserver, Canary, CanaryState};
use crate::observe::access_log::AccessLogWriter;
use crate::observe::events::{Events, SnapshotEvents, Webhook};
use crate::observe::metrics::Metrics;
use crate::observe::recorder::Recorder;
use crate::observe::trace::Tracer;
use crate::router::{RouteMatcher, Router};
use crate::tls::ListenerTls;
use crate::translation::Translation;
use crate::upstream::Upstream;
use crate::upstream::discovery::Upstreams;
use crate::upstream::metrics::UpstreamFamilies;
use weir_config::files::{self, FileError};
use weir_config::{AccessLogConfig, GatewayConfig, LoadError, LoadErrors, RouteConfig, RouteKind, Source};
use weir_config::{RuntimeConfig, UpstreamProtocol};
use weir_plugin_host::state::StateStore;
use weir_plugin_host::{EventSink, Phases, PluginRuntime, PluginSpec, StreamPhases, sha256_hex};

use super::last_good::{Record, SavedModules};
use super::{Backend, Route, Snapshot};

/// What snapshot building needs from the gateway; lives as long as it.
pub(crate) struct Loader {
    /// The plugin runtime: engine, linker, compiled modules, state store.
    pub(crate) plugins: PluginRuntime,
    pub(crate) events: Arc<Events>,
    pub(crate) metrics: Arc<Metrics>,
    /// The upstreams' and the route caches' metric families.
    upstream_metrics: UpstreamFamilies,
    cache_metrics: CacheFamilies,
    access_log: AccessLogWriter,
    upstreams: Upstreams,
    /// Route caches by route name, kept across reloads while their
    /// settings stay the same.
    caches: Mutex<HashMap<String, Arc<RouteCache>>>,
    max_idle: usize,
    /// `[runtime] max_module_size`.
    max_module_size: u64,
    /// Where modules pulled from registries are kept.
    oci_cache: PathBuf,
    /// Each plugin's canary comparison, kept across reloads that leave
    /// the canary as it was.
    canaries: Mutex<HashMap<String, Arc<CanaryState>>>,
    /// This node's own settings, over every configuration's.
    node: crate::NodeLocal,
}

impl Loader {
    /// A loader whose snapshots load their plugins on `plugins`.
    pub(crate) fn new(
        plugins: PluginRuntime,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        families: (UpstreamFamilies, CacheFamilies),
        runtime: &RuntimeConfig,
        oci_cache: PathBuf,
        node: crate::NodeLocal,
    ) -> Self {
        let (upstream_metrics, cache_metrics) = families;
        Self {
            plugins,
            events,
            upstream_metrics,
            cache_metrics,
            access_log: AccessLogWriter::new(metrics.clone()),
            metrics,
            upstreams: Upstreams::default(),
            caches: Mutex::default(),
            max_idle: runtime.max_idle_per_plugin,
            max_module_size: runtime.max_module_size,
            oci_cache,
            canaries: Mutex::default(),
            node,
        }
    }

    /// In fleet mode: the etcd that service-registry prefixes are on.
    pub(crate) fn set_fleet(&mut self, location: crate::fleet::Location, access: crate::fleet::Access) {
        self.upstreams.set_fleet(location, access);
    }

    /// This node's own settings.
    pub(crate) fn node(&self) -> &crate::NodeLocal {
        &self.node
    }

    /// Build a complete snapshot from the config file at `path`, or report
    /// every problem found.
    pub(crate) async fn build(&self, path: &Path, generation: u64) -> Result<Snapshot, LoadErrors> {
        let source = Source::read(path)?;
        let config = source.parse()?;
        self.build_from(&source, config, None, generation).await
    }

    /// What `snap`, built from the config at `config_path`, leaves to the
    /// last good state: its text and each module once.
    pub(crate) fn record(&self, snap: &Snapshot, config_path: &Path) -> Record {
        let mut modules: Vec<(String, String, std::path::PathBuf)> = Vec::new();
        let versions = snap.plugins.values().chain(snap.canaries.values().map(|c| &c.canary));
        for p in versions {
            let spec = p.spec();
            if !modules.iter().any(|(name, ..)| *name == spec.module) {
                let file = snap.module_files.get(&spec.module).cloned();
                modules.push((
                    spec.module.clone(),
                    spec.sha256.clone(),
                    file.unwrap_or_else(|| snap.plugins_dir.join(&spec.module)),
                ));
            }
        }
        Record {
            config_path: config_path.to_owned(),
            text: snap.config_text.clone(),
            generation: snap.generation,
            modules,
            max_module_size: self.max_module_size,
        }
    }

    /// Build from a parsed config; modules come from `saved` when given,
    /// else from the plugins folder.
    pub(crate) async fn build_from(
        &self,
        src: &Source,
        mut cfg: GatewayConfig,
        saved: Option<&SavedModules>,
        generation: u64,
    ) -> Result<Snapshot, LoadErrors> {
        self.node.apply(&mut cfg);
        let mut errors = Vec::new();
        let plugins_dir = src.base_dir().join(&cfg.server.plugins_dir);

        let webhook = Webhook::from_config(&cfg.events).unwrap_or_else(|e| {
            let span = cfg.events.webhook.as_ref().map_or(0..0, |w| w.span());
            errors.push(src.error(span, format!("[events]: {e}")));
            None
        });
        let tracer = match &cfg.tracing {
            None => None,
            Some(t) => Tracer::from_config(t.get_ref(), self.metrics.clone()).unwrap_or_else(|e| {
                errors.push(src.error(t.span(), format!("[tracing]: {e}")));
                None
            }),
        };
        // `[recorder]`: the flight recorder, off without the section.
        let recorder = match &cfg.recorder {
            None => None,
            Some(r) => {
                let bad: Vec<&String> = r
                    .get_ref()
                    .redact_headers
                    .iter()
                    .filter(|h| http::HeaderName::try_from(h.as_str()).is_err())
                    .collect();
                if let Some(h) = bad.first() {
                    errors.push(src.error(r.span(), format!("[recorder]: redact_headers: {h:?} is not a header name")));
                }
                if !(1..=10_000).contains(&r.get_ref().max_recordings) {
                    errors.push(src.error(r.span(), "[recorder]: max_recordings must be 1 to 10000"));
                }
                Recorder::new(r.get_ref(), &src.base_dir()).map(Arc::new)
            }
        };
        // No `[access_log]` section: no access log.
        let log_cfg = match &cfg.access_log {
            Some(l) => l.get_ref().clone(),
            None => AccessLogConfig { enabled: false, ..AccessLogConfig::default() },
        };
        let access_log = match self.access_log.for_snapshot(&log_cfg, &src.base_dir()) {
            Ok(log) => log_cfg.enabled.then_some(log),
            Err(e) => {
                let span = cfg.access_log.as_ref().map_or(0..0, |l| l.span());
                errors.push(src.error(span, format!("[access_log]: {e}")));
                None
            }
        };
        // `[state]` applies at start only, but a file that could not start
        // must not be accepted by a reload either.
        if let Some(state) = &cfg.state
            && let Err(e) = StateStore::check_config(state.get_ref())
        {
            errors.push(src.error(state.span(), format!("[state]: {e}")));
        }

        // The TLS listener: certificates are read on every load, so a
        // renewed one is served from the next snapshot and a broken one
        // keeps the last good snapshot serving.
        let tls = match &cfg.server.tls {
            None => None,
            Some(t) => match ListenerTls::build(t.get_ref(), &src.base_dir()) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(e) => {
                    errors.push(src.error(t.span(), format!("[server.tls]: {e}")));
                    None
                }
            },
        };

        let mut tls_files = tls.as_ref().map(|t| t.files.clone()).unwrap_or_default();
        for up in cfg.upstreams.values() {
            if let Some(t) = up.get_ref().tls.as_ref().and_then(|t| t.get_ref().settings()) {
                tls_files.extend([t.ca, t.cert, t.key].into_iter().flatten().map(|f| src.base_dir().join(f)));
            }
        }

        // Upstreams.
        let mut upstreams = BTreeMap::new();
        for (name, up) in &cfg.upstreams {
            match self.upstreams.build(name, up, src, &self.upstream_metrics, self.metrics.live(), &cfg.limits).await {
                Ok(u) => {
                    upstreams.insert(name.clone(), u);
                }
                Err(e) => errors.extend(e),
            }
        }

        // Plugins: validate, compile each distinct module once, instantiate.
        let mut plugins = BTreeMap::new();
        // The snapshot's event sink (its webhook), shared by its plugins.
        let events: Arc<dyn EventSink> = Arc::new(SnapshotEvents::new(self.events.clone(), webhook.clone()));
        let mut book = ModuleBook::default();
        let mut canaries: BTreeMap<String, Arc<Canary>> = BTreeMap::new();
        for (name, p) in &cfg.plugins {
            let span = p.span();
            let p = p.get_ref();
            if !weir_config::valid_name(name) {
                errors.push(src.error(span.clone(), format!("plugin name `{name}` must be 1 to 64 of [A-Za-z0-9_-]")));
                continue;
            }
            let module = p.module.get_ref();
            if let Some(r) = &p.registry
                && !module.starts_with(weir_oci::SCHEME)
                && p.canary.as_ref().is_none_or(|c| !c.get_ref().module.starts_with(weir_oci::SCHEME))
            {
                errors.push(src.error(r.span(), format!("plugin `{name}`: `registry` applies to oci:// modules only")));
                continue;
            }
            if p.limits.memory > self.plugins.max_memory() {
                errors.push(src.error(
                    span.clone(),
                    format!(
                        "plugin `{name}`: limits.memory {} exceeds [runtime] max_memory {}",
                        p.limits.memory,
                        self.plugins.max_memory()
                    ),
                ));
                continue;
            }
            if p.limits.deadline.is_zero() {
                errors.push(src.error(span.clone(), format!("plugin `{name}`: limits.deadline must be above zero")));
                continue;
            }
            let pin = p.sha256.as_ref().map(|s| (s.get_ref().as_str(), s.span()));
            let wanted = Wanted { plugin: name, module, span: p.module.span(), pin, registry: &p.registry };
            let Some((sha256, module_code)) =
                self.module(src, &wanted, saved, &plugins_dir, &mut book, &mut errors).await
            else {
                continue;
            };
            // The canary's module, loaded the same way.
            let canary = match &p.canary {
                None => None,
                Some(c) => {
                    let (cfg, at) = (c.get_ref(), c.span());
                    if let Err(e) = cfg.check() {
                        errors.push(src.error(at, format!("plugin `{name}`: canary: {e}")));
                        continue;
                    }
                    let pin = cfg.sha256.as_deref().map(|s| (s, at.clone()));
                    let wanted = Wanted { plugin: name, module: &cfg.module, span: at, pin, registry: &p.registry };
                    match self.module(src, &wanted, saved, &plugins_dir, &mut book, &mut errors).await {
                        Some(loaded) => Some((cfg, loaded)),
                        None => continue,
                    }
                }
            };
            let config_json = match &p.config {
                Some(c) => serde_json::to_string(c.get_ref()).unwrap_or_else(|_| "{}".into()),
                None => "{}".into(),
            };
            // The upstreams it may call: each must be configured.
            let mut callable = std::collections::HashMap::new();
            if let Some(list) = &p.outbound {
                for u in list.get_ref() {
                    match upstreams.get(u) {
                        Some(up) => {
                            callable.insert(u.clone(), Arc::clone(up));
                        }
                        None if !cfg.upstreams.contains_key(u) => errors.push(src.error(
                            list.span(),
                            format!("plugin `{name}`: outbound upstream `{u}` is not configured in [upstreams]"),
                        )),
                        None => {} // the upstream's own error is reported above
                    }
                }
            }
            let outbound: Arc<crate::upstream::callout::Callouts> =
                Arc::new(crate::upstream::callout::Callouts::new(callable));
            let spec = |module: &str, sha256: String, canary: bool| PluginSpec {
                outbound: p.outbound.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default(),
                name: name.as_str().into(),
                module: module.to_owned(),
                sha256,
                config_json: config_json.clone(),
                failure: p.failure,
                limits: p.limits,
                isolation: p.isolation,
                max_idle: self.max_idle,
                crash_loop: p.crash_loop,
                canary,
            };
            let at = p.config.as_ref().map_or(span.clone(), |c| c.span());
            let Some((canary_cfg, (canary_sha, canary_code))) = canary else {
                let live = self.metrics.live().plugin(name);
                let spec = spec(module, sha256, false);
                if let Some(loaded) =
                    self.load(spec, &module_code, &events, live, &outbound, src, at, &mut errors).await
                {
                    plugins.insert(name.clone(), Arc::new(loaded));
                }
                continue;
            };
            // A canary: both versions report their calls to the comparison
            // it shares with earlier snapshots, unless it changed.
            let fingerprint = format!(
                "{sha256}/{canary_sha}/{}/{:?}/{:?}/{:?}",
                sha256_hex(config_json.as_bytes()),
                p.failure,
                p.limits,
                canary_cfg
            );
            let state = match self.canaries.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
                Some(s) if s.fingerprint() == fingerprint => s.clone(),
                _ => Arc::new(CanaryState::new(name, canary_cfg, fingerprint, self.metrics.clone())),
            };
            let observer = |arm, live| -> Arc<dyn weir_plugin_host::CallObserver> {
                Arc::new(ArmObserver { live, state: state.clone(), arm, events: events.clone() })
            };
            let live = observer(Arm::Stable, self.metrics.live().plugin(name));
            let stable = self.load(
                spec(module, sha256, false),
                &module_code,
                &events,
                live,
                &outbound,
                src,
                at.clone(),
                &mut errors,
            );
            let Some(stable) = stable.await else { continue };
            let live = observer(Arm::Canary, self.metrics.live().plugin(&format!("{name}@canary")));
            let spec = spec(&canary_cfg.module, canary_sha, true);
            let Some(canary) = self.load(spec, &canary_code, &events, live, &outbound, src, at, &mut errors).await
            else {
                continue;
            };
            plugins.insert(name.clone(), Arc::new(stable));
            canaries.insert(name.clone(), Arc::new(Canary { canary: Arc::new(canary), state, events: events.clone() }));
        }

        // Routes.
        let mut routes = Vec::new();
        let mut matchers = Vec::new();
        let mut names = HashSet::new();
        let max_body = usize::try_from(cfg.server.max_buffered_body).unwrap_or(usize::MAX);
        for r in &cfg.routes {
            let span = r.span();
            let r = r.get_ref();
            if !names.insert(r.name.clone()) {
                errors.push(src.error(span.clone(), format!("route name `{}` is used twice", r.name)));
            }
            let matcher = RouteMatcher::new(
                r.host.as_deref(),
                r.path.as_ref().map(|p| p.get_ref().as_str()),
                r.path_prefix.as_ref().map(|p| p.get_ref().as_str()),
                r.methods.as_ref().map(|m| m.get_ref().as_slice()),
            );
            let matcher = match matcher {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.push(src.error(span.clone(), format!("route `{}`: {e}", r.name)));
                    None
                }
            };
            let params = matcher.as_ref().map(|m| m.param_names()).unwrap_or_default();
            let backend = self.backend(src, &cfg, r, &upstreams, &params, span.clone(), max_body, &mut errors);
            let translation = self.translation(src, &cfg, r, span.clone(), max_body, &mut errors).await;
            if let Some(file) = translation.as_ref().and_then(|t| t.descriptors.clone()) {
                tls_files.push(file);
            }
            let mut chain = Vec::new();
            for c in &r.chain {
                match plugins.get(c.get_ref()) {
                    Some(p) => chain.push(Arc::clone(p)),
                    None if !cfg.plugins.contains_key(c.get_ref()) => {
                        errors
                            .push(src.error(c.span(), format!("route `{}`: unknown plugin `{}`", r.name, c.get_ref())));
                    }
                    None => {} // the plugin's own error is reported above
                }
            }
            // The canaries of the chain's plugins, by position; the route
            // buffers and streams what either version of each wants.
            let mut versions: Vec<&Arc<weir_plugin_host::LoadedPlugin>> = chain.iter().collect();
            let mut route_canaries = None;
            for (i, c) in r.chain.iter().enumerate() {
                let Some(canary) = canaries.get(c.get_ref()) else { continue };
                if i >= 64 {
                    let why = format!(
                        "route `{}`: plugin `{}` has a canary, so it must be among the chain's first 64",
                        r.name,
                        c.get_ref()
                    );
                    errors.push(src.error(c.span(), why));
                    continue;
                }
                route_canaries.get_or_insert_with(|| vec![None; r.chain.len()])[i] = Some(canary.clone());
                versions.push(&canary.canary);
            }
            let cache = r.cache.as_ref().map(|c| self.cache(&r.name, c.get_ref()));
            if let (Some(m), Some((backend, upstream_name))) = (matcher, backend) {
                matchers.push(m);
                routes.push(Route {
                    name: r.name.as_str().into(),
                    backend,
                    upstream_name,
                    buffer_request: versions.iter().any(|p| p.phases().contains(Phases::REQUEST_BODY)),
                    buffer_response: versions.iter().any(|p| p.phases().contains(Phases::RESPONSE_BODY)),
                    stream_request: versions.iter().any(|p| p.streams().contains(StreamPhases::REQUEST_BODY)),
                    stream_response: versions.iter().any(|p| p.streams().contains(StreamPhases::RESPONSE_BODY)),
                    canaries: route_canaries.map(Vec::into_boxed_slice),
                    chain,
                    metrics: self.metrics.route(&r.name),
                    matches: serde_json::json!({
                        "host": r.host,
                        "path": r.path.as_ref().map(|p| p.get_ref()),
                        "path_prefix": r.path_prefix.as_ref().map(|p| p.get_ref()),
                        "methods": r.methods.as_ref().map(|m| m.get_ref()),
                    }),
                    cache,
                    websocket: r.websocket.then_some(r.websocket_idle_timeout),
                    translation,
                });
            }
        }

        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        self.plugins.retain_modules(&book.used);
        // The comparisons this snapshot carries on; the others end.
        {
            let mut kept = self.canaries.lock().unwrap_or_else(|p| p.into_inner());
            *kept = canaries.iter().map(|(name, c)| (name.clone(), c.state.clone())).collect();
            for (name, c) in &canaries {
                self.metrics.canary_state(name, c.state.status() as i64);
            }
        }
        let ModuleBook { files: module_files, resolved, .. } = book;
        Ok(Snapshot {
            generation,
            config_text: src.text().into(),
            loaded_at: SystemTime::now(),
            server: cfg.server,
            plugins_dir,
            routes,
            router: Router::new(matchers),
            upstreams,
            plugins,
            unrouted: self.metrics.unrouted(),
            state: cfg.state.map(|s| s.into_inner()).unwrap_or_default(),
            webhook,
            access_log,
            tracer,
            recorder,
            module_files,
            resolved,
            canaries,
            limits: cfg.limits,
            tls,
            tls_files,
        })
    }

    /// A route's backend: its upstream, or its aggregate's parts; `None`
    /// with the problems pushed to `errors`.
    #[allow(clippy::too_many_arguments)]
    fn backend(
        &self,
        src: &Source,
        cfg: &GatewayConfig,
        r: &RouteConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        params: &[&str],
        span: std::ops::Range<usize>,
        max_body: usize,
        errors: &mut Vec<LoadError>,
    ) -> Option<(Backend, Arc<str>)> {
        let before = errors.len();
        // An upstream by name: `None` if unknown (reported) or if it failed
        // to build (reported with the upstream).
        let lookup = |name: &toml::Spanned<String>, errors: &mut Vec<LoadError>| {
            let found = upstreams.get(name.get_ref()).cloned();
            if found.is_none() && !cfg.upstreams.contains_key(name.get_ref()) {
                errors
                    .push(src.error(name.span(), format!("route `{}`: unknown upstream `{}`", r.name, name.get_ref())));
            }
            found
        };
        match r.kind {
            RouteKind::Proxy => {
                let unused = [
                    (!r.parts.is_empty(), "parts"),
                    (r.merge.is_some(), "merge"),
                    (r.template.is_some(), "template"),
                    (!r.forward_headers.is_empty(), "forward_headers"),
                ];
                for (_, key) in unused.iter().filter(|(set, _)| *set) {
                    errors.push(src.error(
                        span.clone(),
                        format!("route `{}`: `{key}` is for `kind = \"aggregate\"` routes", r.name),
                    ));
                }
                let Some(name) = &r.upstream else {
                    errors.push(src.error(span, format!("route `{}`: `upstream` is required", r.name)));
                    return None;
                };
                let upstream = lookup(name, errors)?;
                let upstream_name = upstream.name.clone();
                (errors.len() == before).then_some((Backend::Upstream(upstream), upstream_name))
            }
            RouteKind::Aggregate => {
                let cache = |name: &str, c: &weir_config::CacheConfig| self.cache(name, c);
                let agg = aggregate::build::from_config(src, r, params, span, max_body, lookup, cache, errors)?;
                let upstream_name = agg.upstream_names().into();
                Some((Backend::Aggregate(Arc::new(agg)), upstream_name))
            }
        }
    }

    /// A route's protocol translation (`grpc_transcode`, `grpc_web`), its
    /// descriptor set read and checked; `None` without either key, or with
    /// the problems pushed to `errors`. Translating needs HTTP/2 to the
    /// route's one upstream, so its upstream must say `protocol = "h2"`.
    async fn translation(
        &self,
        src: &Source,
        cfg: &GatewayConfig,
        r: &RouteConfig,
        span: std::ops::Range<usize>,
        max_body: usize,
        errors: &mut Vec<LoadError>,
    ) -> Option<Arc<Translation>> {
        let transcode = r.grpc_transcode.as_ref();
        if transcode.is_none() && r.grpc_web.is_none() {
            return None;
        }
        let at = transcode.map_or(span, |t| t.span());
        let key = if transcode.is_some() { "grpc_transcode" } else { "grpc_web" };
        if r.kind != RouteKind::Proxy {
            errors.push(src.error(at, format!("route `{}`: `{key}` is for `kind = \"proxy\"` routes", r.name)));
            return None;
        }
        if let Some(name) = &r.upstream
            && let Some(up) = cfg.upstreams.get(name.get_ref())
            && up.get_ref().protocol != UpstreamProtocol::H2
        {
            let why = format!(
                "route `{}`: `{key}` calls the upstream with gRPC, which needs HTTP/2: set `protocol = \"h2\"` on [upstreams.{}]",
                r.name,
                name.get_ref()
            );
            errors.push(src.error(at, why));
            return None;
        }
        let built =
            Translation::build(transcode.map(|t| t.get_ref()), r.grpc_web.as_ref(), &src.base_dir(), max_body).await;
        match built {
            Ok(t) => t.map(Arc::new),
            Err(e) => {
                errors.push(src.error(at, format!("route `{}`: {e}", r.name)));
                None
            }
        }
    }

    /// The cache of route `name`: the one it had if its settings are the same.
    fn cache(&self, name: &str, config: &weir_config::CacheConfig) -> Arc<RouteCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        match caches.get(name) {
            Some(c) if c.config == *config => c.clone(),
            _ => {
                let c = Arc::new(RouteCache::new(config.clone(), self.cache_metrics.cache(name)));
                caches.insert(name.to_owned(), c.clone());
                c
            }
        }
    }
}

/// A module a plugin names: its own, or its canary's.
struct Wanted<'a> {
    plugin: &'a str,
    /// A file name in `plugins_dir` or an `oci://` reference.
    module: &'a str,
    /// Where the config names it.
    span: std::ops::Range<usize>,
    /// The sha256 the config pins, and where.
    pin: Option<(&'a str, std::ops::Range<usize>)>,
    registry: &'a Option<toml::Spanned<weir_config::RegistryConfig>>,
}

/// What loading a snapshot's modules keeps track of.
#[derive(Default)]
struct ModuleBook {
    /// The digests the snapshot uses (the compile cache keeps these).
    used: HashSet<String>,
    /// Where each module was read from, by the name the config gives it.
    files: BTreeMap<String, PathBuf>,
    /// What each `oci://` module resolved to.
    resolved: BTreeMap<String, String>,
    /// Registry modules pulled by this build: each is pulled once.
    pulled: HashMap<String, Vec<u8>>,
}

impl Loader {
    /// Read (or pull), check and compile the module `w` names: its digest
    /// and compiled code, or `None` with the problem pushed to `errors`.
    async fn module(
        &self,
        src: &Source,
        w: &Wanted<'_>,
        saved: Option<&SavedModules>,
        plugins_dir: &Path,
        book: &mut ModuleBook,
        errors: &mut Vec<LoadError>,
    ) -> Option<(String, weir_plugin_host::Module)> {
        let (name, module) = (w.plugin, w.module);
        let from_registry = module.starts_with(weir_oci::SCHEME);
        if !from_registry && (module.contains(['/', '\\']) || module.starts_with('.') || module.is_empty()) {
            errors.push(src.error(
                w.span.clone(),
                format!("plugin `{name}`: module {module:?} must be a file name in plugins_dir or an oci:// reference"),
            ));
            return None;
        }
        // A registry module (unless the last good state has it): pulled
        // once per build, however many plugins name it.
        let mut pulled = None;
        if from_registry && saved.is_none() {
            if let Some(bytes) = book.pulled.get(module) {
                pulled = Some(bytes.clone());
            } else {
                let registry = w.registry.as_ref().map(|r| r.get_ref());
                let pin = w.pin.as_ref().map(|(p, _)| *p);
                match super::oci::fetch(&self.oci_cache, module, registry, pin, self.max_module_size).await {
                    Ok(fetched) => {
                        book.files.insert(module.to_owned(), fetched.file);
                        if let Some(r) = fetched.resolved {
                            book.resolved.insert(module.to_owned(), r);
                        }
                        book.pulled.insert(module.to_owned(), fetched.bytes.clone());
                        pulled = Some(fetched.bytes);
                    }
                    Err(e) => {
                        errors.push(src.error(w.span.clone(), format!("plugin `{name}`: {e}")));
                        return None;
                    }
                }
            }
        }
        let (file, within, expected) = match saved {
            None if from_registry => (book.files.get(module).cloned().unwrap_or_default(), PathBuf::new(), None),
            None => (plugins_dir.join(module), plugins_dir.to_owned(), None),
            Some(saved) => match saved.get(module) {
                Some((file, sha)) => (file, saved.dir().to_owned(), Some(sha)),
                None => {
                    let why = format!("{module} is not in the last good state's modules");
                    errors.push(src.error(w.span.clone(), format!("plugin `{name}`: {why}")));
                    return None;
                }
            },
        };
        let read = match pulled {
            Some(bytes) => Ok(bytes),
            None => read_module(&file, &within, self.max_module_size).await,
        };
        book.files.insert(module.to_owned(), file.clone());
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let why = match e {
                    FileError::Read(e) => format!("cannot read {}: {e}", file.display()),
                    other => format!("{} {other}", file.display()),
                };
                errors.push(src.error(w.span.clone(), format!("plugin `{name}`: {why}")));
                return None;
            }
        };
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = expected
            && expected != sha256
        {
            let why = format!("saved module {} has sha256 {sha256}, not {expected}", file.display());
            errors.push(src.error(w.span.clone(), format!("plugin `{name}`: {why}")));
            return None;
        }
        if let Some((pin, at)) = &w.pin
            && !pin.eq_ignore_ascii_case(&sha256)
        {
            errors.push(src.error(
                at.clone(),
                format!("plugin `{name}`: {} has sha256 {sha256}, but the config pins {pin}", file.display()),
            ));
            return None;
        }
        match self.plugins.compile(&sha256, bytes).await {
            Ok(code) => {
                book.used.insert(sha256.clone());
                Some((sha256, code))
            }
            Err(e) => {
                errors.push(src.error(
                    w.span.clone(),
                    format!("plugin `{name}`: {} is not a valid plugin component: {e}", file.display()),
                ));
                None
            }
        }
    }

    /// Load the plugin `spec` on `code`: `None` with its problems pushed to
    /// `errors`, at `at` (its config).
    #[allow(clippy::too_many_arguments)]
    async fn load(
        &self,
        spec: PluginSpec,
        code: &weir_plugin_host::Module,
        events: &Arc<dyn EventSink>,
        live: Arc<dyn weir_plugin_host::CallObserver>,
        outbound: &Arc<crate::upstream::callout::Callouts>,
        src: &Source,
        at: std::ops::Range<usize>,
        errors: &mut Vec<LoadError>,
    ) -> Option<weir_plugin_host::LoadedPlugin> {
        let (name, module) = (spec.name.clone(), spec.module.clone());
        let version = if spec.canary { " canary" } else { "" };
        match self.plugins.load(spec, code, events.clone(), live, outbound.clone()).await {
            Ok(loaded) => Some(loaded),
            // One error per mismatch with the plugin's schema, so each key
            // path gets its own line.
            Err(weir_plugin_host::LoadError::ConfigSchema(list)) => {
                for e in list {
                    errors.push(
                        src.error(at.clone(), format!("plugin `{name}`{version} ({module}): {e} (its config schema)")),
                    );
                }
                None
            }
            Err(e) => {
                errors.push(src.error(at, format!("plugin `{name}`{version} ({module}): {e}")));
                None
            }
        }
    }
}

/// A plugin module, read on a blocking thread: a regular file of at most
/// `cap` bytes that resolves inside `plugins_dir` (symlinks within it are
/// followed). A FIFO, a device or a link out of the folder is refused
/// without stalling the runtime or growing memory.
async fn read_module(file: &Path, plugins_dir: &Path, cap: u64) -> Result<Vec<u8>, FileError> {
    let (file, dir) = (file.to_owned(), plugins_dir.to_owned());
    tokio::task::spawn_blocking(move || files::read_bounded(&file, cap, Some(&dir)))
        .await
        .unwrap_or_else(|e| Err(FileError::Read(std::io::Error::other(e))))
}

/// Errors for a whole file that failed before any item could be checked.
pub(crate) fn file_error(path: &Path, message: impl Into<String>) -> LoadErrors {
    LoadErrors(vec![LoadError { file: path.to_owned(), line: None, message: message.into() }])
}
