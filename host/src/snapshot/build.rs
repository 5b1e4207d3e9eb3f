//! Building a snapshot: read and parse the config, build every part,
//! collect every error, and publish nothing unless all of it is good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::aggregate;
use crate::cache::{CacheFamilies, RouteCache};
use crate::observe::access_log::AccessLogWriter;
use crate::observe::events::{Events, SnapshotEvents, Webhook};
use crate::observe::metrics::Metrics;
use crate::observe::recorder::Recorder;
use crate::observe::trace::Tracer;
use crate::router::{RouteMatcher, Router};
use crate::tls::ListenerTls;
use crate::upstream::Upstream;
use crate::upstream::discovery::Upstreams;
use crate::upstream::metrics::UpstreamFamilies;
use weir_config::RuntimeConfig;
use weir_config::files::{self, FileError};
use weir_config::{AccessLogConfig, GatewayConfig, LoadError, LoadErrors, RouteConfig, RouteKind, Source};
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
        }
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
        for p in snap.plugins.values() {
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
        cfg: GatewayConfig,
        saved: Option<&SavedModules>,
        generation: u64,
    ) -> Result<Snapshot, LoadErrors> {
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
        let mut used_modules = HashSet::new();
        // Where each module was read from, and what an oci:// one resolved to.
        let mut module_files: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut resolved: BTreeMap<String, String> = BTreeMap::new();
        let mut pulled_this_build: HashMap<String, Vec<u8>> = HashMap::new();
        for (name, p) in &cfg.plugins {
            let mut pulled: Option<Vec<u8>> = None;
            let span = p.span();
            let p = p.get_ref();
            if !weir_config::valid_name(name) {
                errors.push(src.error(span.clone(), format!("plugin name `{name}` must be 1 to 64 of [A-Za-z0-9_-]")));
                continue;
            }
            let module = p.module.get_ref();
            let from_registry = module.starts_with(weir_oci::SCHEME);
            if !from_registry && (module.contains(['/', '\\']) || module.starts_with('.') || module.is_empty()) {
                errors.push(src.error(
                    p.module.span(),
                    format!(
                        "plugin `{name}`: module {module:?} must be a file name in plugins_dir or an oci:// reference"
                    ),
                ));
                continue;
            }
            if let Some(r) = &p.registry
                && !from_registry
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
            // A registry module (unless the last good state has it).
            if from_registry
                && saved.is_none()
                && let Some(bytes) = pulled_this_build.get(module)
            {
                // Another plugin of this config names it: pulled once.
                pulled = Some(bytes.clone());
            } else if from_registry && saved.is_none() {
                let registry = p.registry.as_ref().map(|r| r.get_ref());
                let pin = p.sha256.as_ref().map(|s| s.get_ref().as_str());
                match super::oci::fetch(&self.oci_cache, module, registry, pin, self.max_module_size).await {
                    Ok(fetched) => {
                        module_files.insert(module.clone(), fetched.file);
                        if let Some(r) = fetched.resolved {
                            resolved.insert(module.clone(), r);
                        }
                        pulled_this_build.insert(module.clone(), fetched.bytes.clone());
                        pulled = Some(fetched.bytes);
                    }
                    Err(e) => {
                        errors.push(src.error(p.module.span(), format!("plugin `{name}`: {e}")));
                        continue;
                    }
                }
            }
            let (file, within, expected) = match saved {
                None if from_registry => (module_files.get(module).cloned().unwrap_or_default(), PathBuf::new(), None),
                None => (plugins_dir.join(module), plugins_dir.clone(), None),
                Some(saved) => match saved.get(module) {
                    Some((file, sha)) => (file, saved.dir().to_owned(), Some(sha)),
                    None => {
                        let why = format!("{module} is not in the last good state's modules");
                        errors.push(src.error(p.module.span(), format!("plugin `{name}`: {why}")));
                        continue;
                    }
                },
            };
            let read = match pulled.take() {
                Some(bytes) => Ok(bytes),
                None => read_module(&file, &within, self.max_module_size).await,
            };
            module_files.insert(module.clone(), file.clone());
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    let why = match e {
                        FileError::Read(e) => format!("cannot read {}: {e}", file.display()),
                        other => format!("{} {other}", file.display()),
                    };
                    errors.push(src.error(p.module.span(), format!("plugin `{name}`: {why}")));
                    continue;
                }
            };
            let sha256 = sha256_hex(&bytes);
            if let Some(expected) = expected
                && expected != sha256
            {
                let why = format!("saved module {} has sha256 {sha256}, not {expected}", file.display());
                errors.push(src.error(p.module.span(), format!("plugin `{name}`: {why}")));
                continue;
            }
            if let Some(pin) = &p.sha256
                && !pin.get_ref().eq_ignore_ascii_case(&sha256)
            {
                errors.push(src.error(
                    pin.span(),
                    format!(
                        "plugin `{name}`: {} has sha256 {sha256}, but the config pins {}",
                        file.display(),
                        pin.get_ref()
                    ),
                ));
                continue;
            }
            let module_code = match self.plugins.compile(&sha256, bytes).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(src.error(
                        p.module.span(),
                        format!("plugin `{name}`: {} is not a valid plugin component: {e}", file.display()),
                    ));
                    continue;
                }
            };
            used_modules.insert(sha256.clone());
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
            let outbound = Arc::new(crate::upstream::callout::Callouts::new(callable));
            let spec = PluginSpec {
                outbound: p.outbound.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default(),
                name: name.as_str().into(),
                module: module.clone(),
                sha256,
                config_json,
                failure: p.failure,
                limits: p.limits,
                isolation: p.isolation,
                max_idle: self.max_idle,
                crash_loop: p.crash_loop,
            };
            let live = self.metrics.live().plugin(name);
            match self.plugins.load(spec, &module_code, events.clone(), live, outbound).await {
                Ok(loaded) => {
                    plugins.insert(name.clone(), Arc::new(loaded));
                }
                // One error per mismatch with the plugin's schema, so each
                // key path gets its own line.
                Err(weir_plugin_host::LoadError::ConfigSchema(list)) => {
                    let at = p.config.as_ref().map_or(span.clone(), |c| c.span());
                    for e in list {
                        errors.push(
                            src.error(at.clone(), format!("plugin `{name}` ({module}): {e} (its config schema)")),
                        );
                    }
                }
                Err(e) => {
                    let at = p.config.as_ref().map_or(span.clone(), |c| c.span());
                    errors.push(src.error(at, format!("plugin `{name}` ({module}): {e}")));
                }
            }
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
            let cache = r.cache.as_ref().map(|c| self.cache(&r.name, c.get_ref()));
            if let (Some(m), Some((backend, upstream_name))) = (matcher, backend) {
                matchers.push(m);
                routes.push(Route {
                    name: r.name.as_str().into(),
                    backend,
                    upstream_name,
                    buffer_request: chain.iter().any(|p| p.phases().contains(Phases::REQUEST_BODY)),
                    buffer_response: chain.iter().any(|p| p.phases().contains(Phases::RESPONSE_BODY)),
                    stream_request: chain.iter().any(|p| p.streams().contains(StreamPhases::REQUEST_BODY)),
                    stream_response: chain.iter().any(|p| p.streams().contains(StreamPhases::RESPONSE_BODY)),
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
                });
            }
        }

        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        self.plugins.retain_modules(&used_modules);
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
