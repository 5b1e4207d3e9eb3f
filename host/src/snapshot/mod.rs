//! A snapshot: everything a request needs, built whole from one version of
//! the configuration and the plugin modules, validated, then published
//! atomically. A request keeps the snapshot it started with to the end.
//!
//! The configuration comes from a file (`reload` watches it) or, in fleet
//! mode, from etcd (`etcd` watches it; `members` keeps the node's record in
//! the fleet's member list).

mod build;
pub(crate) mod etcd;
pub(crate) mod last_good;
pub(crate) mod members;
pub(crate) mod oci;
pub(crate) mod reload;

pub(crate) use build::{Loader, file_error};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use weir_config::{ServerConfig, StateConfig};
use weir_plugin_host::LoadedPlugin;

use crate::aggregate::Aggregate;
use crate::cache::RouteCache;
use crate::canary::Canary;
use crate::observe::access_log::AccessLog;
use crate::observe::events::Webhook;
use crate::observe::metrics::RouteMetrics;
use crate::observe::trace::Tracer;
use crate::router::Router;
use crate::tls::ListenerTls;
use crate::upstream::Upstream;

/// A route ready to serve.
pub(crate) struct Route {
    /// Configured name.
    pub(crate) name: Arc<str>,
    /// Where requests go.
    pub(crate) backend: Backend,
    /// The upstream, or the parts' upstreams, for logs and the admin API.
    pub(crate) upstream_name: Arc<str>,
    /// Plugins in chain order (their stable versions).
    pub(crate) chain: Vec<Arc<LoadedPlugin>>,
    /// The canaries of the chain's plugins, by chain position; `None` when
    /// no plugin of the chain has one.
    pub(crate) canaries: Option<Box<[Option<Arc<Canary>>]>>,
    /// Whether some plugin wants the whole request body.
    pub(crate) buffer_request: bool,
    /// Whether some plugin wants the whole response body.
    pub(crate) buffer_response: bool,
    /// Whether some plugin takes the request body chunk by chunk.
    pub(crate) stream_request: bool,
    /// Whether some plugin takes the response body chunk by chunk.
    pub(crate) stream_response: bool,
    /// Metric handles.
    pub(crate) metrics: RouteMetrics,
    /// What the route matches, as configured (for the admin API).
    pub(crate) matches: serde_json::Value,
    /// The response cache, when the route has one.
    pub(crate) cache: Option<Arc<RouteCache>>,
    /// The WebSocket idle timeout; `None` when upgrades are refused.
    pub(crate) websocket: Option<std::time::Duration>,
    /// JSON/HTTP and gRPC-Web translation to gRPC (`grpc_transcode`,
    /// `grpc_web`), when the route has either.
    pub(crate) translation: Option<Arc<crate::translation::Translation>>,
}

/// What a route sends requests to.
pub(crate) enum Backend {
    /// One upstream.
    Upstream(Arc<Upstream>),
    /// Several, in parallel, answers merged.
    Aggregate(Arc<Aggregate>),
}

/// One published state of the gateway.
pub(crate) struct Snapshot {
    /// Increments with every published snapshot.
    pub(crate) generation: u64,
    /// The config text it was built from.
    pub(crate) config_text: Arc<str>,
    /// When it was built.
    pub(crate) loaded_at: SystemTime,
    /// `[server]` of the file it came from.
    pub(crate) server: ServerConfig,
    /// The plugins folder, resolved.
    pub(crate) plugins_dir: PathBuf,
    /// Routes, in match order.
    pub(crate) routes: Vec<Route>,
    /// The matcher over `routes`.
    pub(crate) router: Router,
    /// Upstreams by name.
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Plugins by name (their stable versions).
    pub(crate) plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// The canary versions, by plugin name.
    pub(crate) canaries: BTreeMap<String, Arc<Canary>>,
    /// Metrics for requests no route matched.
    pub(crate) unrouted: RouteMetrics,
    /// `[state]` of the file it came from (the store itself is built once,
    /// at start).
    pub(crate) state: StateConfig,
    /// Where events are POSTed, from `[events]`.
    pub(crate) webhook: Option<Arc<Webhook>>,
    /// The access log, from `[access_log]` (none when it is off).
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// The span exporter, from `[tracing]` (none without an endpoint).
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// The file each module was read from (a pulled module's is in the
    /// OCI cache), by the name the config gives it.
    pub(crate) module_files: BTreeMap<String, PathBuf>,
    /// What each `oci://` module resolved to (`oci://HOST/REPO@sha256:…`).
    pub(crate) resolved: BTreeMap<String, String>,
    /// The flight recorder, from `[recorder]` (none when it is off).
    pub(crate) recorder: Option<Arc<crate::observe::recorder::Recorder>>,
    /// `[limits]`.
    pub(crate) limits: weir_config::LimitsConfig,
    /// The TLS listener's certificates and settings, from `[server.tls]`.
    pub(crate) tls: Option<Arc<ListenerTls>>,
    /// Certificate, key and CA files the snapshot read (listener and
    /// upstreams), and the routes' descriptor sets: a change to one reloads.
    pub(crate) tls_files: Vec<PathBuf>,
}
