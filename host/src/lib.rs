//! # weir — a WebAssembly plugin-host API gateway
//!
//! `weir` is a reverse proxy whose routes run ordered chains of sandboxed
//! Wasm plugins (components built against `wit/plugin.wit`, usually with the
//! `weir-plugin-sdk` crate). Configuration and modules reload live: a new
//! snapshot is built whole off the request path and published atomically.
//!
//! The crate's folders follow a request (see the book's architecture
//! chapter); each is a private module:
//!
//! | step | module |
//! |------|--------|
//! | accept: listeners, protocol detection, the wire sniffer, TLS handshakes, drain | `listen` |
//! | the request path: checks, the plugin chains, dispatch, the reply, gRPC, WebSocket | `proxy` |
//! | canary plugin versions: who runs them, the comparison, rollback | `canary` |
//! | route matching | `router` |
//! | dispatch to an upstream: targets, balancing, health, breaker, retries, TLS | `upstream` |
//! | dispatch through the response cache | `cache` |
//! | dispatch to several upstreams at once, answers merged | `aggregate` |
//! | metrics, the dashboard's series, access log, traces, plugin events | `observe` |
//! | the admin API and the dashboard | `admin` |
//! | snapshots: building one from the config, hot reload (from a file or etcd), the node's record in the fleet | `snapshot` |
//! | fleet mode's etcd side: locations, push and pull, the service registry | `fleet` |
//! | shared by the rooms: bodies, the typed error, header rules, TLS material | `body`, `error`, `headers`, `tls` |
//!
//! The config schema is the `weir-config` crate; everything that touches
//! wasmtime (the plugin engine, instances, host imports, plugin state) is
//! the `weir-plugin-host` crate.
//!
//! Embedding (this is what the integration tests do):
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let gateway = weir::Gateway::load("gateway.toml").await?;
//! let bound = gateway.bind().await?;
//! println!("proxy on {}", bound.proxy_addr());
//! bound.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod admin;
mod aggregate;
mod body;
mod cache;
mod canary;
mod error;
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod headers;
mod listen;
mod observe;
mod proxy;
pub mod replay;
mod router;
pub mod scaffold;
mod snapshot;
mod tls;
mod translation;
mod upstream;

pub use listen::Workers;
pub use weir_config::{LoadError, LoadErrors};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::cache::CacheFamilies;
use crate::listen::metrics::ListenerMetrics;
use crate::observe::events::Events;
use crate::observe::metrics::Metrics;
use crate::snapshot::last_good::{LastGood, Saved, default_state_dir};
use crate::snapshot::reload;
use crate::snapshot::{Loader, Snapshot};
use crate::upstream::metrics::UpstreamFamilies;
use weir_config::Source;
use weir_plugin_host::{HostMetrics, PluginRuntime, StateStore};

/// What the gateway shares between listeners, the watcher and admin.
pub(crate) struct Shared {
    /// The serving snapshot.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Builds snapshots.
    pub(crate) loader: Loader,
    /// The config file (for a configuration in etcd, what errors name it:
    /// `etcd://HOST:PORT/PREFIX/config`).
    pub(crate) config_path: PathBuf,
    /// Where the configuration comes from.
    pub(crate) origin: Origin,
    /// Reload bookkeeping.
    pub(crate) status: Mutex<ReloadStatus>,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Metrics registry.
    pub(crate) metrics: Arc<Metrics>,
    /// Connections and TLS handshakes.
    pub(crate) listener_metrics: ListenerMetrics,
    /// Where each published snapshot is saved as the last good state
    /// (none for a gateway made by [`Gateway::load`]).
    pub(crate) last_good: Option<LastGood>,
}

/// Where a gateway's configuration comes from.
#[derive(Clone)]
pub(crate) enum Origin {
    /// The file at `Shared::config_path`, watched.
    File,
    /// A document in etcd, watched.
    Etcd(Arc<snapshot::etcd::EtcdSource>),
}

/// What stays node-local when many gateways share one configuration: each
/// overrides the configuration's `[server]` key of the same name.
#[derive(Debug, Clone, Default)]
pub struct NodeLocal {
    /// Over `[server] listen`.
    pub listen: Option<SocketAddr>,
    /// Over `[server] admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Over `[server] plugins_dir` (absolute, or relative to where
    /// relative paths of the configuration resolve).
    pub plugins_dir: Option<PathBuf>,
    /// The node's name in the fleet's member list (default:
    /// `HOSTNAME:PORT`).
    pub node_id: Option<String>,
}

impl NodeLocal {
    /// Put the node's own settings into `cfg`.
    pub(crate) fn apply(&self, cfg: &mut weir_config::GatewayConfig) {
        if let Some(a) = self.listen {
            cfg.server.listen = a;
        }
        if let Some(a) = self.admin_listen {
            cfg.server.admin_listen = Some(a);
        }
        if let Some(d) = &self.plugins_dir {
            cfg.server.plugins_dir = d.clone();
        }
    }
}

/// The outcome of the latest reload attempts.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReloadStatus {
    /// The last failed attempt's message, cleared by a success.
    pub(crate) last_error: Option<String>,
    /// When the last attempt finished.
    pub(crate) last_attempt: Option<SystemTime>,
    /// Successful reloads.
    pub(crate) successes: u64,
    /// Failed reloads.
    pub(crate) failures: u64,
    /// The latest attempts, oldest first (at most [`ReloadStatus::HISTORY`]).
    pub(crate) history: std::collections::VecDeque<ReloadEntry>,
    /// The serving snapshot is the last good state: the config on disk
    /// failed at start. Cleared by the first successful reload.
    pub(crate) serving_last_good: bool,
    /// The generation last saved to the state folder, and when.
    pub(crate) last_good_saved: Option<(u64, SystemTime)>,
    /// Why the latest save failed, cleared by a success.
    pub(crate) last_good_error: Option<String>,
}

impl ReloadStatus {
    /// Reload attempts remembered for the dashboard.
    pub(crate) const HISTORY: usize = 50;

    fn push(&mut self, entry: ReloadEntry) {
        if self.history.len() == Self::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }
}

/// One reload attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReloadEntry {
    /// When it finished, ms since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The generation it published, if it succeeded.
    pub(crate) generation: Option<u64>,
    /// Why it was rejected, if it failed.
    pub(crate) error: Option<String>,
}

/// What a loaded configuration holds, as `weir check` reports it.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Routes.
    pub routes: usize,
    /// Upstreams.
    pub upstreams: usize,
    /// Plugin instances: name, module file, module sha256.
    pub plugins: Vec<(String, String, String)>,
}

/// How [`Gateway::start`] treats a config that fails to load.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Refuse to start instead of falling back to the last good state (for
    /// CI and first deploys).
    pub strict: bool,
    /// The state folder, over `[server] state_dir` and the default.
    pub state_dir: Option<PathBuf>,
    /// This node's own listen addresses and plugins folder, over the
    /// configuration's.
    pub node: NodeLocal,
}

/// Where a gateway being booted saves its last good state.
enum StateDir {
    /// Nowhere (`Gateway::load`).
    Off,
    /// This folder.
    At(PathBuf),
    /// The override given, else `[server] state_dir` of the config being
    /// booted, else the default.
    Configured(Option<PathBuf>),
}

/// A gateway with its first snapshot loaded.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Load `config_path` and everything it names, or report every error.
    /// Nothing is saved and nothing falls back: this is what `weir check`
    /// and embedders (the tests) use; `weir run` uses [`Gateway::start`].
    pub async fn load(config_path: impl AsRef<Path>) -> Result<Self, LoadErrors> {
        let source = Source::read(config_path.as_ref())?;
        Self::boot(&source, None, StateDir::Off, Origin::File, NodeLocal::default()).await
    }

    /// Load `config_path` and everything it names. If that fails and
    /// `options.strict` is off, start from the last good state saved in the
    /// state folder instead: the errors are logged, shown in `/admin/status`
    /// (`last_reload_error`, `serving_last_good`) and counted, and the file
    /// is watched as usual, so fixing it reloads. Every snapshot published
    /// is saved as the new last good state.
    pub async fn start(config_path: impl AsRef<Path>, options: StartOptions) -> Result<Self, LoadErrors> {
        let path = config_path.as_ref().to_owned();
        let source = Source::read(&path);
        Self::start_from(path, source, Origin::File, options).await
    }

    /// [`Gateway::start`] for a configuration kept in etcd, at `location`
    /// (`etcd://HOST:PORT[,HOST:PORT]/PREFIX`): read once now, then watched
    /// from [`Gateway::bind`] on. With etcd out of reach (or nothing pushed
    /// yet) it starts from the last good state, as for a broken file, and
    /// the watch picks up the configuration once etcd answers. Relative
    /// paths in the configuration resolve against the working directory.
    pub async fn start_etcd(location: &str, access: fleet::Access, options: StartOptions) -> Result<Self, LoadErrors> {
        let loc =
            fleet::Location::parse(location, access.tls()).map_err(|e| snapshot::file_error(Path::new(location), e))?;
        let path = loc.source_path();
        let base =
            std::env::current_dir().map_err(|e| snapshot::file_error(&path, format!("the working directory: {e}")))?;
        let etcd = Arc::new(snapshot::etcd::EtcdSource::new(loc, access, base.clone()));
        let source = match etcd.fetch().await {
            Ok(Some(stored)) => {
                let source = Source::from_text(&path, stored.text.clone()).with_base_dir(base);
                etcd.set_latest(stored);
                Ok(source)
            }
            Ok(None) => Err(snapshot::file_error(
                &path,
                "no configuration has been pushed here yet: `weir config push gateway.toml LOCATION`",
            )),
            Err(e) => Err(snapshot::file_error(&path, e)),
        };
        Self::start_from(path, source, Origin::Etcd(etcd), options).await
    }

    /// Start from `source` (read from `path`), or from the last good state.
    async fn start_from(
        path: PathBuf,
        source: Result<Source, LoadErrors>,
        origin: Origin,
        options: StartOptions,
    ) -> Result<Self, LoadErrors> {
        let base = match &origin {
            Origin::Etcd(e) => Some(e.base_dir.clone()),
            Origin::File => None,
        };
        let disk = match &source {
            Ok(source) => {
                let state = StateDir::Configured(options.state_dir.clone());
                Self::boot(source, None, state, origin.clone(), options.node.clone()).await
            }
            Err(e) => Err(e.clone()),
        };
        let errors = match disk {
            Ok(gateway) => {
                if let Origin::Etcd(etcd) = &gateway.shared.origin
                    && let Some(read) = etcd.latest()
                {
                    etcd.set_served(read.revision);
                }
                reload::save_last_good(&gateway.shared, &gateway.shared.snapshot.load_full()).await;
                tracing::info!(
                    state_dir = %gateway.shared.last_good.as_ref().map(|s| s.dir().display().to_string()).unwrap_or_default(),
                    "saved as the last good state"
                );
                return Ok(gateway);
            }
            Err(errors) if options.strict => return Err(errors),
            Err(errors) => errors,
        };
        // The state folder the broken file would have used.
        let dir = options
            .state_dir
            .clone()
            .or_else(|| source.as_ref().ok().and_then(|s| snapshot::last_good::state_dir_in(s.text(), &path)))
            .unwrap_or_else(|| default_state_dir(&path));
        let store = LastGood::new(dir.clone());
        let mut saved = match tokio::task::spawn_blocking({
            let (store, path) = (store.clone(), path.clone());
            move || store.read(&path)
        })
        .await
        {
            Ok(Ok(Some(saved))) => saved,
            Ok(Ok(None)) => return Err(errors),
            Ok(Err(e)) => {
                let mut all = errors;
                all.0.push(LoadError {
                    file: dir,
                    line: None,
                    message: format!("no last good state to start from: {e}"),
                });
                return Err(all);
            }
            Err(e) => return Err(snapshot::file_error(&dir, format!("reading the last good state: {e}"))),
        };
        for e in &errors.0 {
            tracing::error!(file = %e.file.display(), line = e.line, "config rejected at start: {}", e.message);
        }
        tracing::error!(
            state_dir = %dir.display(),
            generation = saved.generation,
            saved_at_ms = saved.saved_at_ms,
            "STARTING FROM THE LAST GOOD CONFIG: {} failed to load (errors above); serving what was last published and watching for a new one",
            path.display(),
        );
        if let Some(base) = base {
            saved.source = saved.source.with_base_dir(base);
        }
        let gateway =
            match Self::boot(&saved.source, Some(&saved), StateDir::At(dir.clone()), origin, options.node).await {
                Ok(g) => g,
                Err(more) => {
                    let mut all = errors;
                    all.0.extend(more.0.into_iter().map(|mut e| {
                        e.message = format!("in the last good state ({}): {}", dir.display(), e.message);
                        e
                    }));
                    return Err(all);
                }
            };
        {
            let mut status = gateway.shared.status.lock().unwrap_or_else(|p| p.into_inner());
            status.serving_last_good = true;
            status.last_error = Some(errors.to_string());
            status.last_attempt = Some(SystemTime::now());
            status.failures += 1;
            status.last_good_saved =
                Some((saved.generation, SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(saved.saved_at_ms)));
        }
        gateway.shared.metrics.set_serving_last_good(true);
        gateway.shared.metrics.reload(false);
        Ok(gateway)
    }

    /// Build the runtime and a first snapshot from `source` (modules from
    /// `saved` when given, else the plugins folder). Each published snapshot
    /// is saved to the state folder `state_dir` resolves to, if any.
    async fn boot(
        source: &Source,
        saved: Option<&Saved>,
        state_dir: StateDir,
        origin: Origin,
        node: NodeLocal,
    ) -> Result<Self, LoadErrors> {
        let path = source.path().to_owned();
        let cfg = source.parse()?;
        let state_dir = match state_dir {
            StateDir::Off => None,
            StateDir::At(dir) => Some(dir),
            StateDir::Configured(over) => Some(
                over.or_else(|| cfg.server.state_dir.as_ref().map(|d| source.base_dir().join(d)))
                    .unwrap_or_else(|| default_state_dir(&path)),
            ),
        };
        // Each area registers its own metric families into one registry.
        let mut metrics = Metrics::new();
        let plugin_metrics = HostMetrics::register(metrics.registry_mut());
        let upstream_metrics = UpstreamFamilies::register(metrics.registry_mut());
        let cache_metrics = CacheFamilies::register(metrics.registry_mut());
        let listener_metrics = ListenerMetrics::register(metrics.registry_mut());
        let metrics = Arc::new(metrics);
        let state_cfg = cfg.state.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default();
        let state = StateStore::from_config(&state_cfg).map_err(|e| {
            let span = cfg.state.as_ref().map_or(0..0, |s| s.span());
            LoadErrors(vec![source.error(span, format!("[state]: {e}"))])
        })?;
        let plugins = PluginRuntime::new(&cfg.runtime, &source.base_dir(), Arc::new(state), plugin_metrics)
            .map_err(|e| snapshot::file_error(&path, e.to_string()))?;
        let events = Arc::new(Events::new(cfg.events.queue, metrics.clone()));
        let families = (upstream_metrics, cache_metrics);
        let oci_cache = snapshot::oci::cache_dir(&cfg.runtime, &source.base_dir());
        let mut loader = Loader::new(plugins, events, metrics.clone(), families, &cfg.runtime, oci_cache, node);
        if let Origin::Etcd(etcd) = &origin {
            loader.set_fleet(etcd.location.clone(), etcd.access.clone());
        }
        let snapshot = loader.build_from(source, cfg, saved.map(|s| &s.modules), 1).await?;
        metrics.set_generation(1);
        Ok(Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                loader,
                config_path: path,
                origin,
                status: Mutex::new(ReloadStatus::default()),
                reload_lock: tokio::sync::Mutex::new(()),
                metrics,
                listener_metrics,
                last_good: state_dir.map(LastGood::new),
            }),
        })
    }

    /// What `weir check` prints: the routes, upstreams and plugins loaded.
    pub fn summary(&self) -> Summary {
        let snap = self.shared.snapshot.load();
        Summary {
            routes: snap.routes.len(),
            upstreams: snap.upstreams.len(),
            plugins: snap
                .plugins
                .values()
                .map(|p| (p.name().to_string(), p.spec().module.clone(), p.spec().sha256.clone()))
                .collect(),
        }
    }

    /// The plugin instance `name` of the serving snapshot (benchmarks call
    /// its phases directly).
    pub fn plugin(&self, name: &str) -> Option<Arc<weir_plugin_host::LoadedPlugin>> {
        self.shared.snapshot.load().plugins.get(name).cloned()
    }

    /// Bind the proxy and admin listeners from `[server]`, served on the
    /// caller's runtime.
    pub async fn bind(self) -> std::io::Result<Bound> {
        self.bind_with(Workers::Shared).await
    }

    /// Bind the listeners for `workers`: with [`Workers::ReusePort`] the
    /// proxy listeners take `SO_REUSEPORT`, and each worker binds its own.
    pub async fn bind_with(self, workers: Workers) -> std::io::Result<Bound> {
        let server = self.shared.snapshot.load().server.clone();
        let reuse_port = matches!(workers, Workers::ReusePort(_));
        let proxy = listen::bind(server.listen, reuse_port)?;
        let admin = match server.admin_listen {
            Some(a) => {
                if !a.ip().is_loopback() && server.admin_token.is_none() {
                    tracing::warn!(
                        addr = %a,
                        "the admin API listens beyond loopback without [server] admin_token: anyone who can reach it can read the config and reload"
                    );
                }
                Some(TcpListener::bind(a).await?)
            }
            None => None,
        };
        let tls = match &self.shared.snapshot.load().tls {
            Some(t) => Some(listen::bind(t.listen, reuse_port)?),
            None => None,
        };
        // Watch from here on, so no change made after `bind` returns is missed.
        let watch = if server.watch {
            match snapshot::reload::watch(self.shared.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!("file watching unavailable, reload with POST /admin/reload: {e}");
                    None
                }
            }
        } else {
            None
        };
        // Fleet mode: watch the configuration, and keep this node in the
        // member list.
        let etcd = match &self.shared.origin {
            Origin::Etcd(source) => {
                let listen = proxy.local_addr().unwrap_or(server.listen);
                let id =
                    self.shared.loader.node().node_id.clone().unwrap_or_else(|| snapshot::members::default_id(listen));
                Some([
                    snapshot::etcd::watch(self.shared.clone(), source.clone()),
                    snapshot::members::register(self.shared.clone(), source.clone(), id),
                ])
            }
            Origin::File => None,
        };
        Ok(Bound { shared: self.shared, proxy, tls, admin, watch, etcd, workers })
    }
}

/// A gateway with its listeners bound, ready to serve.
pub struct Bound {
    shared: Arc<Shared>,
    proxy: TcpListener,
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
    watch: Option<snapshot::reload::WatchHandle>,
    /// The etcd watch and the membership, in fleet mode.
    etcd: Option<[snapshot::reload::WatchHandle; 2]>,
    workers: Workers,
}

impl Bound {
    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The TLS listener's address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The admin listener's address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests for at
    /// most `server.drain_timeout`.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
        let result = listen::serve(self.shared, self.proxy, self.tls, self.admin, self.workers, shutdown).await;
        drop(self.watch);
        drop(self.etcd);
        result
    }
}
