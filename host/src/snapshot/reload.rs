//! Hot reload: watch the config file and the plugins folder, rebuild a
//! whole snapshot off the request path, publish it only if it is entirely
//! valid. A failed attempt is logged with file, line and reason, recorded
//! for `/admin/status`, and the serving snapshot stays as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Snapshot;
use super::last_good::StateDirError;
use crate::Shared;
use weir_config::LoadErrors;

/// Quiet period after the last file event before reloading: editors and
/// `cp` write files in several steps.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);
/// Upper bound on how long a stream of events can postpone a reload.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Build and publish a new snapshot. Returns the new generation.
pub(crate) async fn reload(shared: &Shared) -> Result<u64, LoadErrors> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let current = shared.snapshot.load_full();
    let generation = current.generation + 1;
    let mut from_revision = None;
    let result = match &shared.origin {
        crate::Origin::File => shared.loader.build(&shared.config_path, generation).await,
        crate::Origin::Etcd(etcd) => match etcd.latest() {
            Some(stored) => {
                from_revision = Some(stored.revision);
                let source = weir_config::Source::from_text(&shared.config_path, stored.text)
                    .with_base_dir(etcd.base_dir.clone());
                match source.parse() {
                    Ok(cfg) => shared.loader.build_from(&source, cfg, None, generation).await,
                    Err(e) => Err(e),
                }
            }
            None => Err(super::file_error(&shared.config_path, "nothing read from etcd yet")),
        },
    };
    if let Ok(next) = &result {
        // Saved before it is published: once it serves, a restart can
        // start from it.
        save_last_good(shared, next).await;
    }
    let mut status = shared.status.lock().unwrap_or_else(|p| p.into_inner());
    status.last_attempt = Some(SystemTime::now());
    match result {
        Ok(next) => {
            if next.server.listen != current.server.listen || next.server.admin_listen != current.server.admin_listen {
                tracing::warn!("listen addresses changed in the config: they take effect on restart");
            }
            if next.state != current.state {
                tracing::warn!("[state] changed in the config: it takes effect on restart");
            }
            if next.server.state_dir != current.server.state_dir {
                tracing::warn!("[server] state_dir changed in the config: it takes effect on restart");
            }
            if status.serving_last_good {
                tracing::info!("the config on disk loads again: no longer serving the last good state");
                status.serving_last_good = false;
                shared.metrics.set_serving_last_good(false);
            }
            shared.snapshot.store(Arc::new(next));
            if let (crate::Origin::Etcd(etcd), Some(revision)) = (&shared.origin, from_revision) {
                etcd.set_served(revision);
            }
            shared.metrics.set_generation(generation);
            shared.metrics.reload(true);
            status.last_error = None;
            status.successes += 1;
            status.push(crate::ReloadEntry {
                at_ms: weir_plugin_host::clock::unix_ms(),
                generation: Some(generation),
                error: None,
            });
            tracing::info!(generation, "configuration reloaded");
            Ok(generation)
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), line = e.line, "reload rejected: {}", e.message);
            }
            shared.metrics.reload(false);
            status.last_error = Some(errors.to_string());
            status.failures += 1;
            status.push(crate::ReloadEntry {
                at_ms: weir_plugin_host::clock::unix_ms(),
                generation: None,
                error: Some(errors.to_string()),
            });
            Err(errors)
        }
    }
}

/// Save `snap` as the last good state, on a blocking thread. A failure (a
/// state folder that cannot be written, a module changed since its load) is
/// logged, counted and shown in `/admin/status`; it never stops a reload.
pub(crate) async fn save_last_good(shared: &Shared, snap: &Snapshot) {
    let Some(store) = shared.last_good.clone() else { return };
    let record = shared.loader.record(snap, &shared.config_path);
    let result = tokio::task::spawn_blocking(move || store.save(&record))
        .await
        .unwrap_or_else(|e| Err(StateDirError::Write { path: PathBuf::new(), source: std::io::Error::other(e) }));
    shared.metrics.last_good_saved(result.is_ok());
    let mut status = shared.status.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => {
            status.last_good_saved = Some((snap.generation, SystemTime::now()));
            status.last_good_error = None;
        }
        Err(e) => {
            tracing::warn!(
                "the last good state was not saved, so a restart with a broken config cannot fall back to this one: {e}"
            );
            status.last_good_error = Some(e.to_string());
        }
    }
}

/// Watch the config file, the plugins folder and the TLS files the
/// snapshot read, until the returned handle is dropped.
pub(crate) fn watch(shared: Arc<Shared>) -> notify::Result<WatchHandle> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !matches!(ev.kind, EventKind::Access(_))
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    // A configuration in etcd has its own watch: here only its plugins
    // folder and TLS files are watched.
    let (config_dir, config_name) = match &shared.origin {
        crate::Origin::File => (parent_dir(&shared.config_path), shared.config_path.file_name().map(ToOwned::to_owned)),
        crate::Origin::Etcd(etcd) => (etcd.base_dir.clone(), None),
    };
    watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
    let mut watched =
        Watched { config_name, config_dir, plugins_dir: PathBuf::new(), tls_files: Vec::new(), dirs: Vec::new() };
    watched.follow(&mut watcher, &shared.snapshot.load());

    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            tracing::debug!(path = %first.display(), "file event");
            let mut relevant = watched.relevant(&first);
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    Some(p) = rx.recv() => {
                        relevant |= watched.relevant(&p);
                        if tokio::time::Instant::now() >= deadline { break; }
                    }
                    () = quiet => break,
                }
            }
            if !relevant {
                tracing::debug!(path = %first.display(), "file events ignored");
                continue;
            }
            if reload(&shared).await.is_ok() {
                watched.follow(&mut watcher, &shared.snapshot.load());
            }
        }
        drop(watcher);
    });
    Ok(WatchHandle { task })
}

/// What the watcher looks at besides the config file.
struct Watched {
    config_name: Option<std::ffi::OsString>,
    config_dir: PathBuf,
    plugins_dir: PathBuf,
    /// Certificate, key and CA files.
    tls_files: Vec<PathBuf>,
    /// Folders watched besides the config's.
    dirs: Vec<PathBuf>,
}

impl Watched {
    /// Watch the folders `snap` reads from, and only those.
    fn follow(&mut self, watcher: &mut impl Watcher, snap: &crate::snapshot::Snapshot) {
        self.plugins_dir = snap.plugins_dir.clone();
        self.tls_files = snap.tls_files.clone();
        let mut wanted: Vec<PathBuf> = vec![self.plugins_dir.clone()];
        wanted.extend(self.tls_files.iter().map(|f| parent_dir(f)));
        wanted.retain(|d| !same_dir(d, &self.config_dir));
        wanted.sort();
        wanted.dedup();
        for gone in self.dirs.iter().filter(|d| !wanted.contains(d)) {
            let _ = watcher.unwatch(gone);
        }
        for new in wanted.iter().filter(|d| !self.dirs.contains(d)) {
            watch_dir(watcher, new);
        }
        self.dirs = wanted;
    }

    /// The config file, a `.wasm` in the plugins folder, or a TLS file. A
    /// TLS file counts when its name matches, or when a name starting with
    /// `..` changes beside it: Kubernetes swaps a mounted secret's files
    /// by renaming a `..data` link.
    fn relevant(&self, path: &Path) -> bool {
        let name = path.file_name();
        let parent = path.parent();
        if name.is_some() && name == self.config_name.as_deref() {
            return true;
        }
        if parent.is_some_and(|d| same_dir(d, &self.plugins_dir)) && path.extension().is_some_and(|e| e == "wasm") {
            return true;
        }
        let swapped = name.and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".."));
        self.tls_files
            .iter()
            .any(|f| parent.is_some_and(|d| same_dir(d, &parent_dir(f))) && (swapped || f.file_name() == name))
    }
}

fn watch_dir(watcher: &mut impl Watcher, dir: &Path) {
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), "cannot watch folder: {e}");
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Stops a watch (of files, of etcd, or the fleet membership) when
/// dropped.
pub(crate) struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl WatchHandle {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self { task }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
