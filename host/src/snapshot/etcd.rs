//! A running gateway's configuration from etcd: the latest document it
//! read, and the watch that keeps it current.
//!
//! The watch starts from the revision after the one the gateway last
//! read, so nothing written while it was away is missed: after etcd was
//! down or the node cut off, it reconnects with backoff (250 ms doubling to
//! 2 s) and resumes from there. When etcd has compacted that revision away
//! it reads the document afresh instead. Each new document is handed to a
//! reload, which validates and publishes it like a file, or rejects it and
//! keeps serving. Through all of this the gateway serves what it last
//! published, and `/admin/status` shows the watch's state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::{EventType, WatchOptions};

use super::reload::WatchHandle;
use crate::Shared;
use crate::fleet::{self, Access, Location, Stored};

/// The configuration's home in etcd, as a running gateway knows it.
pub(crate) struct EtcdSource {
    pub(crate) location: Location,
    pub(crate) access: Access,
    /// Where relative paths in the document resolve: the node's working
    /// directory when it started.
    pub(crate) base_dir: PathBuf,
    /// The latest document read (none before the first read).
    latest: Mutex<Option<Stored>>,
    /// The watch's state, for `/admin/status`.
    status: Mutex<WatchStatus>,
    /// The revision of the document the serving snapshot was built from
    /// (0 while serving the last good state).
    served: AtomicI64,
}

/// The watch's state.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct WatchStatus {
    /// Whether the watch stream is open.
    pub(crate) connected: bool,
    /// The revision of the document last read.
    pub(crate) revision: i64,
    /// Why the last attempt to reach etcd failed, cleared on success.
    pub(crate) last_error: Option<String>,
    /// When the watch last (re)connected, ms since the Unix epoch.
    pub(crate) connected_at_ms: Option<u64>,
    /// Reconnections after the first connection.
    pub(crate) reconnects: u64,
}

impl EtcdSource {
    pub(crate) fn new(location: Location, access: Access, base_dir: PathBuf) -> Self {
        Self {
            location,
            access,
            base_dir,
            latest: Mutex::new(None),
            status: Mutex::default(),
            served: AtomicI64::new(0),
        }
    }

    /// The latest document read.
    pub(crate) fn latest(&self) -> Option<Stored> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keep `stored` as the latest document; false if it is not newer.
    pub(crate) fn set_latest(&self, stored: Stored) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if latest.as_ref().is_some_and(|l| l.revision >= stored.revision) {
            return false;
        }
        self.status.lock().unwrap_or_else(|p| p.into_inner()).revision = stored.revision;
        *latest = Some(stored);
        true
    }

    /// The revision of the document being served.
    pub(crate) fn served(&self) -> i64 {
        self.served.load(Ordering::Relaxed)
    }

    /// A snapshot built from the document at `revision` was published.
    pub(crate) fn set_served(&self, revision: i64) {
        self.served.store(revision, Ordering::Relaxed);
    }

    /// The watch's state.
    pub(crate) fn status(&self) -> WatchStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut WatchStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Read the document now: `Ok(None)` when there is none.
    pub(crate) async fn fetch(&self) -> Result<Option<Stored>, String> {
        let mut client = fleet::connect(&self.location, &self.access).await?;
        Ok(fleet::read(&mut client, &self.location).await?.0)
    }
}

/// Watch the configuration document for `shared` until the handle is
/// dropped: each change is read and reloaded.
pub(crate) fn watch(shared: Arc<Shared>, source: Arc<EtcdSource>) -> WatchHandle {
    WatchHandle::new(tokio::spawn(run(shared, source)))
}

async fn run(shared: Arc<Shared>, source: Arc<EtcdSource>) {
    let key = source.location.config_key();
    let mut backoff = fleet::Backoff::new();
    let mut connected_once = false;
    loop {
        let outcome = watch_once(&shared, &source, &key, &mut connected_once, &mut backoff).await;
        source.update(|s| {
            s.connected = false;
            s.last_error = Some(outcome.clone());
        });
        tracing::warn!(key, retry_in = ?backoff.pause(), "etcd watch lost: {outcome}; serving the last configuration meanwhile");
        backoff.wait().await;
    }
}

/// One connection's watch: returns why it ended.
async fn watch_once(
    shared: &Arc<Shared>,
    source: &EtcdSource,
    key: &str,
    connected_once: &mut bool,
    backoff: &mut fleet::Backoff,
) -> String {
    let mut client = match fleet::connect(&source.location, &source.access).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    // Catch up first: what changed while the watch was away (or since the
    // gateway read the document at start).
    let from = match fleet::read(&mut client, &source.location).await {
        Ok((Some(stored), at)) => {
            if source.set_latest(stored) {
                reload(shared).await;
            }
            at + 1
        }
        Ok((None, at)) => at + 1,
        Err(e) => return e,
    };
    let options = WatchOptions::new().with_start_revision(from).with_progress_notify();
    let mut stream = match client.watch(key, Some(options)).await {
        Ok(s) => s,
        Err(e) => return format!("watching {key}: {e}"),
    };
    source.update(|s| {
        s.connected = true;
        s.last_error = None;
        s.connected_at_ms = Some(weir_plugin_host::clock::unix_ms());
        if *connected_once {
            s.reconnects += 1;
        }
    });
    if *connected_once {
        tracing::info!(key, from_revision = from, "etcd watch resumed");
    }
    *connected_once = true;
    backoff.reset();
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "the watch stream ended".into(),
            Err(e) => return format!("watching {key}: {e}"),
        };
        if message.canceled() {
            // Compacted past the revision asked for: the catch-up read of
            // the next connection gets the current document.
            return format!("the watch was cancelled ({})", message.cancel_reason());
        }
        let mut changed = false;
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => match String::from_utf8(kv.value().to_vec()) {
                    Ok(text) => changed |= source.set_latest(Stored { text, revision: kv.mod_revision() }),
                    Err(_) => tracing::error!(
                        key,
                        revision = kv.mod_revision(),
                        "the configuration in etcd is not UTF-8: ignored"
                    ),
                },
                EventType::Delete => tracing::error!(
                    key,
                    revision = kv.mod_revision(),
                    "the configuration was deleted from etcd: serving the last one; push a configuration to change it"
                ),
            }
        }
        if changed {
            reload(shared).await;
        }
    }
}

/// Reload from the latest document; the outcome is logged and recorded by
/// the reload itself.
async fn reload(shared: &Shared) {
    let _ = crate::snapshot::reload::reload(shared).await;
}
