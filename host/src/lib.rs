//! # weir — a WebAssembly plugin-host API gateway
//!
//! `weir` is a reverse proxy whose routes run ordered chains of sandboxed
//! Wasm plugins (components built against `wit/plugin.wit`, usually with the
//! `weir-plugin-sdk` crate). Configuration and modules reload live: a new
//! snapshot is built whole off the request path and published atomically.
//!
//! Where things live, following the request:
//!
//! | room | module |
//! |------|--------|
//! | accept, HTTP/1.1 + h2c, drain | [`server`] |
//! | TLS: listener certificates by SNI, ALPN, client certificates | [`tls`] |
//! | route matching | [`router`] |
//! | the request path (chains, upstream) | [`proxy`] |
//! | the reply: accounting and the access log | [`reply`], [`access_log`] |
//! | request checks: framing, target, Host, `[limits]` | [`framing`], [`sniff`] |
//! | header rules (hop-by-hop, forwarding) | [`forwarding`] |
//! | gRPC: deadlines, errors as gRPC statuses | [`grpc`] |
//! | WebSocket: the upgrade and the spliced connection | [`tunnel`] |
//! | the dashboard's time series | [`live`] |
//! | trace context and OTLP span export | [`trace`] |
//! | upstream targets and clients | [`upstream`] |
//! | plugin runtime (pool, phases, host imports) | [`plugin`] |
//! | wasmtime policy (pooling, deadlines, limits, WASI) | [`engine`] |
//! | config schema | [`config`] |
//! | snapshots and hot reload | [`snapshot`], [`reload`] |
//! | admin API and metrics | [`admin`], [`metrics`] |
//! | plugin state (in-process or Redis) | [`state`] |
//! | plugin events (log, history, webhook) | [`events`] |
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

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod forwarding;
pub mod framing;
pub mod fuzzing;
pub mod grpc;
pub mod live;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod reply;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod sniff;
pub mod state;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{LoadErrors, Source};
use crate::engine::PluginEngine;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::snapshot::{Loader, Snapshot};
use crate::state::StateStore;

/// What the gateway shares between listeners, the watcher and admin.
pub struct Shared {
    /// The serving snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Builds snapshots.
    pub loader: Loader,
    /// The config file.
    pub config_path: PathBuf,
    /// Reload bookkeeping.
    pub status: Mutex<ReloadStatus>,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// The outcome of the latest reload attempts.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// The last failed attempt's message, cleared by a success.
    pub last_error: Option<String>,
    /// When the last attempt finished.
    pub last_attempt: Option<SystemTime>,
    /// Successful reloads.
    pub successes: u64,
    /// Failed reloads.
    pub failures: u64,
    /// The latest attempts, oldest first (at most [`ReloadStatus::HISTORY`]).
    pub history: std::collections::VecDeque<ReloadEntry>,
}

impl ReloadStatus {
    /// Reload attempts remembered for the dashboard.
    pub const HISTORY: usize = 50;

    fn push(&mut self, entry: ReloadEntry) {
        if self.history.len() == Self::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }
}

/// One reload attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEntry {
    /// When it finished, ms since the Unix epoch.
    pub at_ms: u64,
    /// The generation it published, if it succeeded.
    pub generation: Option<u64>,
    /// Why it was rejected, if it failed.
    pub error: Option<String>,
}

/// A gateway with its first snapshot loaded.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Load `config_path` and everything it names, or report every error.
    pub async fn load(config_path: impl AsRef<Path>) -> Result<Self, LoadErrors> {
        let path = config_path.as_ref().to_owned();
        let source = Source::read(&path)?;
        let cfg = source.parse()?;
        let engine = PluginEngine::new(&cfg.runtime, &source.base_dir())
            .map_err(|e| snapshot::file_error(&path, format!("cannot create the plugin engine: {e:#}")))?;
        let metrics = Arc::new(Metrics::new());
        let state_cfg = cfg.state.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default();
        let state = StateStore::from_config(&state_cfg).map_err(|e| {
            let span = cfg.state.as_ref().map_or(0..0, |s| s.span());
            LoadErrors(vec![source.error(span, format!("[state]: {e}"))])
        })?;
        let events = Arc::new(Events::new(cfg.events.queue, metrics.clone()));
        let loader = Loader::new(engine, Arc::new(state), events, metrics.clone(), cfg.runtime.max_idle_per_plugin)
            .map_err(|e| snapshot::file_error(&path, format!("cannot link the plugin host: {e:#}")))?;
        let snapshot = loader.build(&path, 1).await?;
        metrics.set_generation(1);
        Ok(Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                loader,
                config_path: path,
                status: Mutex::new(ReloadStatus::default()),
                reload_lock: tokio::sync::Mutex::new(()),
                metrics,
            }),
        })
    }

    /// The shared state (snapshot, metrics, reload status).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Bind the proxy and admin listeners from `[server]`.
    pub async fn bind(self) -> std::io::Result<Bound> {
        let server = self.shared.snapshot.load().server.clone();
        let proxy = TcpListener::bind(server.listen).await?;
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
            Some(t) => Some(TcpListener::bind(t.listen).await?),
            None => None,
        };
        // Watch from here on, so no change made after `bind` returns is missed.
        let watch = if server.watch {
            match reload::watch(self.shared.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!("file watching unavailable, reload with POST /admin/reload: {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(Bound { shared: self.shared, proxy, tls, admin, watch })
    }
}

/// A gateway with its listeners bound, ready to serve.
pub struct Bound {
    shared: Arc<Shared>,
    proxy: TcpListener,
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
    watch: Option<reload::WatchHandle>,
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

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests for at
    /// most `server.drain_timeout`.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
        let result = server::serve(self.shared, self.proxy, self.tls, self.admin, shutdown).await;
        drop(self.watch);
        result
    }
}
