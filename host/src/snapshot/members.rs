//! The fleet's members: each gateway in fleet mode keeps a record of itself
//! under `PREFIX/nodes/NODE_ID`, attached to a lease it keeps alive, so a
//! node that dies or is cut off disappears from the list within the
//! lease's TTL. The record says what the node serves: the configuration
//! revision, the snapshot generation, the last reload error, its
//! addresses, version and start time. `/admin/fleet` lists them.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use serde::{Deserialize, Serialize};

use super::etcd::EtcdSource;
use crate::Shared;

/// The record's lease: gone this long after its node stops renewing it.
const TTL: i64 = 10;
/// How often the lease is renewed and the record compared with the node's
/// state (a changed record is written at once).
const EVERY: Duration = Duration::from_secs(2);

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    /// `--node-id`, or `HOSTNAME:PORT`.
    pub(crate) id: String,
    /// The proxy address.
    pub(crate) listen: String,
    /// The admin address, if any.
    pub(crate) admin: Option<String>,
    /// weir's version.
    pub(crate) version: String,
    /// The revision of the configuration it serves (0: its last good state,
    /// not read from etcd).
    pub(crate) revision: i64,
    /// Its snapshot generation.
    pub(crate) generation: u64,
    /// Why its last reload was rejected, if it was.
    pub(crate) last_reload_error: Option<String>,
    /// When it started, ms since the Unix epoch.
    pub(crate) started_at_ms: u64,
}

/// The node's record as of now.
fn record(shared: &Shared, source: &EtcdSource, id: &str, started_at_ms: u64) -> NodeRecord {
    let snap = shared.snapshot.load();
    let error = shared.status.lock().map(|s| s.last_error.clone()).unwrap_or_default();
    NodeRecord {
        id: id.to_owned(),
        listen: snap.server.listen.to_string(),
        admin: snap.server.admin_listen.map(|a| a.to_string()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: source.served(),
        generation: snap.generation,
        last_reload_error: error,
        started_at_ms,
    }
}

/// The id a node goes by without `--node-id`: its host name and proxy port.
pub(crate) fn default_id(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "weir".into());
    format!("{host}:{}", listen.port())
}

/// Keep this node's record in etcd until the handle is dropped.
pub(crate) fn register(shared: Arc<Shared>, source: Arc<EtcdSource>, id: String) -> super::reload::WatchHandle {
    let started = weir_plugin_host::clock::unix_ms();
    super::reload::WatchHandle::new(tokio::spawn(async move {
        let key = format!("{}/nodes/{id}", source.location.prefix());
        let mut backoff = crate::fleet::Backoff::new();
        loop {
            let why = keep(&shared, &source, &key, &id, started, &mut backoff).await;
            tracing::warn!(key, retry_in = ?backoff.pause(), "fleet membership lost: {why}");
            backoff.wait().await;
        }
    }))
}

/// One lease's life: grant, write, renew and rewrite until something fails.
async fn keep(
    shared: &Shared,
    source: &EtcdSource,
    key: &str,
    id: &str,
    started: u64,
    backoff: &mut crate::fleet::Backoff,
) -> String {
    let mut client = match crate::fleet::connect(&source.location, &source.access).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let lease = match client.lease_grant(TTL, None).await {
        Ok(l) => l.id(),
        Err(e) => return format!("lease: {e}"),
    };
    let (mut keeper, mut answers) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return format!("lease keep-alive: {e}"),
    };
    backoff.reset();
    let mut written: Option<NodeRecord> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let now = record(shared, source, id, started);
        if written.as_ref() != Some(&now) {
            let json = match serde_json::to_string(&now) {
                Ok(j) => j,
                Err(e) => return format!("record: {e}"),
            };
            if let Err(e) = client.put(key, json, Some(PutOptions::new().with_lease(lease))).await {
                return format!("writing {key}: {e}");
            }
            written = Some(now);
        }
        if let Err(e) = keeper.keep_alive().await {
            return format!("lease keep-alive: {e}");
        }
        match tokio::time::timeout(Duration::from_secs(5), answers.message()).await {
            Ok(Ok(Some(a))) if a.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "the lease expired".into(),
            Ok(Ok(None)) => return "the lease keep-alive stream ended".into(),
            Ok(Err(e)) => return format!("lease keep-alive: {e}"),
            Err(_) => return "no keep-alive answer in 5s".into(),
        }
    }
}

/// The members as etcd lists them now (`/admin/fleet`), with what each
/// serves against the stored configuration's revision.
pub(crate) async fn list(source: &EtcdSource) -> Result<serde_json::Value, String> {
    let mut client = crate::fleet::connect(&source.location, &source.access).await?;
    let (stored, _) = crate::fleet::read(&mut client, &source.location).await?;
    let current = stored.map_or(0, |s| s.revision);
    let prefix = format!("{}/nodes/", source.location.prefix());
    let resp = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("listing {prefix}: {e}"))?;
    let mut nodes = Vec::new();
    for kv in resp.kvs() {
        let Ok(node) = serde_json::from_slice::<NodeRecord>(kv.value()) else { continue };
        let state = if node.last_reload_error.is_some() {
            "failing"
        } else if node.revision != current {
            "stale"
        } else {
            "current"
        };
        let mut doc = serde_json::to_value(&node).unwrap_or_default();
        doc["state"] = state.into();
        nodes.push(doc);
    }
    Ok(serde_json::json!({ "key": source.location.config_key(), "revision": current, "nodes": nodes }))
}
