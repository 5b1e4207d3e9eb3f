//! The last good configuration: every published snapshot's config text and
//! module files, kept in a state folder, so a restart while a broken config
//! is on disk (a crash, an OOM kill, a reboot or a deploy mid-edit) starts
//! from what last served instead of not at all.
//!
//! The folder (`[server] state_dir`, default [`default_state_dir`]):
//!
//! - `modules/SHA256.wasm`: module files, by digest;
//! - `last-good/config-SHA16.toml`: config texts, by digest;
//! - `last-good/manifest.json`: which config and which modules form the
//!   last good state. It is written last and renamed into place, so a save
//!   cut short (a crash, a full disk) leaves the previous state whole; what
//!   it no longer names is removed after.
//!
//! Everything here blocks on the file system: callers run it on a blocking
//! thread.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_config::Source;
use weir_config::files::{self, FileError};
use weir_plugin_host::sha256_hex;

/// The manifest's format; a manifest of another is refused, not guessed at.
const FORMAT: u32 = 1;

/// The state folder of a config whose `[server]` names none:
/// `$XDG_STATE_HOME/weir/KEY` or `~/.local/state/weir/KEY`, where KEY is the
/// first 16 hex digits of the SHA-256 of the config file's absolute path (so
/// gateways with different configs on one machine keep apart), or
/// `.weir-state` beside the config when there is no home folder.
pub(crate) fn default_state_dir(config_path: &Path) -> PathBuf {
    let absolute = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
    let key = &sha256_hex(absolute.as_os_str().as_encoded_bytes())[..16];
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/state"));
    match xdg.or(home) {
        Some(d) => d.join("weir").join(key),
        None => weir_config::base_dir_of(config_path).join(".weir-state"),
    }
}

/// `state_dir` as a config text gives it, read leniently: the file may be
/// broken elsewhere (that is why it is asked), so only the key is looked
/// for. `None` when the text names none or is not TOML at all.
pub(crate) fn state_dir_in(text: &str, config_path: &Path) -> Option<PathBuf> {
    let dir = match toml::from_str::<toml::Table>(text) {
        Ok(value) => value.get("server")?.get("state_dir")?.as_str()?.to_owned(),
        // Not TOML (a syntax error anywhere): look for the line itself, a
        // `state_dir = "..."` under `[server]`.
        Err(_) => state_dir_line(text)?,
    };
    Some(weir_config::base_dir_of(config_path).join(dir))
}

/// `state_dir = "DIR"` on a line of its own in the `[server]` table.
fn state_dir_line(text: &str) -> Option<String> {
    let mut in_server = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_server = line.trim_end_matches([' ', '#']) == "[server]";
            continue;
        }
        if !in_server {
            continue;
        }
        let Some(rest) = line.strip_prefix("state_dir") else { continue };
        let rest = rest.trim_start().strip_prefix('=')?.trim_start();
        let quoted = rest.strip_prefix('"').or_else(|| rest.strip_prefix('\''))?;
        let end = quoted.find(['"', '\''])?;
        return Some(quoted[..end].to_owned());
    }
    None
}

/// Why the state folder could not be written or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateDirError {
    /// A file or folder in it could not be written.
    #[error("state_dir: cannot write {path}: {source}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A file in it could not be read, or is not what was saved.
    #[error("state_dir: {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// It holds the last good state of another config file.
    #[error("state_dir: {manifest} is the last good state of {saved_for}, not of {config}")]
    Foreign {
        /// The manifest.
        manifest: PathBuf,
        /// The config it was saved for.
        saved_for: PathBuf,
        /// The config being started.
        config: PathBuf,
    },
    /// A module changed on disk between its load and its save.
    #[error("state_dir: {file} changed since it was loaded (sha256 {now}, loaded {loaded}); not saved")]
    Changed {
        /// The module file.
        file: PathBuf,
        /// Its digest now.
        now: String,
        /// Its digest when loaded.
        loaded: String,
    },
}

/// `last-good/manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    /// The config file it was saved for, absolute.
    config_path: PathBuf,
    /// The config text's file in `last-good/`.
    config: String,
    config_sha256: String,
    generation: u64,
    saved_at_ms: u64,
    /// Module file name (as the config names it) → SHA-256.
    modules: BTreeMap<String, String>,
}

/// What a snapshot leaves to be saved.
pub(crate) struct Record {
    /// The config file it was built from.
    pub(crate) config_path: PathBuf,
    /// The text it was built from.
    pub(crate) text: Arc<str>,
    /// Its generation.
    pub(crate) generation: u64,
    /// Module file name, its SHA-256, and where its bytes are now.
    pub(crate) modules: Vec<(String, String, PathBuf)>,
    /// `[runtime] max_module_size`.
    pub(crate) max_module_size: u64,
}

/// A last good state read back.
pub(crate) struct Saved {
    /// The saved text, as if read from the config file (relative paths and
    /// error messages stay those of the config file).
    pub(crate) source: Source,
    /// Its modules.
    pub(crate) modules: SavedModules,
    /// The generation it was saved at.
    pub(crate) generation: u64,
    /// When, in ms since the Unix epoch.
    pub(crate) saved_at_ms: u64,
}

/// The saved modules of a [`Saved`] state: a config's module names mapped
/// to files in the state folder.
pub(crate) struct SavedModules {
    dir: PathBuf,
    by_name: BTreeMap<String, String>,
}

impl SavedModules {
    /// The saved file for the module the config names `name`, and the
    /// digest it must have.
    pub(crate) fn get(&self, name: &str) -> Option<(PathBuf, &str)> {
        self.by_name.get(name).map(|sha| (self.dir.join(format!("{sha}.wasm")), sha.as_str()))
    }

    /// The folder they are in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A state folder.
#[derive(Debug, Clone)]
pub(crate) struct LastGood {
    dir: PathBuf,
}

impl LastGood {
    /// The state folder at `dir` (created on the first save).
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Where it is.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("last-good").join("manifest.json")
    }

    /// Save `record` as the last good state.
    pub(crate) fn save(&self, record: &Record) -> Result<(), StateDirError> {
        let modules_dir = self.dir.join("modules");
        let good_dir = self.dir.join("last-good");
        for d in [&modules_dir, &good_dir] {
            std::fs::create_dir_all(d).map_err(|source| StateDirError::Write { path: d.clone(), source })?;
        }
        let mut names = BTreeMap::new();
        for (name, sha, from) in &record.modules {
            let to = modules_dir.join(format!("{sha}.wasm"));
            if !to.is_file() {
                let bytes = files::read_bounded(from, record.max_module_size, None)
                    .map_err(|e| StateDirError::Corrupt { path: from.clone(), reason: e.to_string() })?;
                let now = sha256_hex(&bytes);
                if &now != sha {
                    return Err(StateDirError::Changed { file: from.clone(), now, loaded: sha.clone() });
                }
                write_atomic(&to, &bytes)?;
            }
            names.insert(name.clone(), sha.clone());
        }
        let config_sha256 = sha256_hex(record.text.as_bytes());
        let config = format!("config-{}.toml", &config_sha256[..16]);
        write_atomic(&good_dir.join(&config), record.text.as_bytes())?;
        let manifest = Manifest {
            format: FORMAT,
            config_path: std::path::absolute(&record.config_path).unwrap_or_else(|_| record.config_path.clone()),
            config: config.clone(),
            config_sha256,
            generation: record.generation,
            saved_at_ms: weir_plugin_host::clock::unix_ms(),
            modules: names,
        };
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        write_atomic(&self.manifest_path(), &json)?;
        // The manifest names the new state: what it does not name goes.
        let keep: Vec<String> = manifest.modules.values().map(|s| format!("{s}.wasm")).collect();
        remove_others(&modules_dir, |n| keep.iter().any(|k| k == n));
        remove_others(&good_dir, |n| n == config || n == "manifest.json");
        Ok(())
    }

    /// The last good state saved for the config at `config_path`, if any.
    pub(crate) fn read(&self, config_path: &Path) -> Result<Option<Saved>, StateDirError> {
        let path = self.manifest_path();
        let bytes = match files::read_bounded(&path, 1024 * 1024, None) {
            Ok(b) => b,
            Err(FileError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateDirError::Corrupt { path, reason: e.to_string() }),
        };
        let corrupt = |reason: String| StateDirError::Corrupt { path: path.clone(), reason };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(corrupt(format!("format {} (this weir reads {FORMAT})", manifest.format)));
        }
        let config = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
        if manifest.config_path != config {
            return Err(StateDirError::Foreign { manifest: path, saved_for: manifest.config_path, config });
        }
        if manifest.config.contains(['/', '\\']) {
            return Err(corrupt(format!("config {:?} is not a file name", manifest.config)));
        }
        let text_path = self.dir.join("last-good").join(&manifest.config);
        let text = files::read_text(&text_path, files::MAX_CONFIG_SIZE)
            .map_err(|e| StateDirError::Corrupt { path: text_path.clone(), reason: e.to_string() })?;
        if sha256_hex(text.as_bytes()) != manifest.config_sha256 {
            return Err(StateDirError::Corrupt {
                path: text_path,
                reason: "its sha256 is not the one the manifest gives".into(),
            });
        }
        for sha in manifest.modules.values() {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(corrupt(format!("{sha:?} is not a sha256")));
            }
        }
        Ok(Some(Saved {
            source: Source::from_text(config_path, text),
            modules: SavedModules { dir: self.dir.join("modules"), by_name: manifest.modules },
            generation: manifest.generation,
            saved_at_ms: manifest.saved_at_ms,
        }))
    }
}

/// Write `bytes` to `path` whole or not at all: a temporary file beside
/// it, synced, renamed over it, and the folder synced, so a crash or a
/// power cut leaves the old file or the new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateDirError> {
    let err = |source| StateDirError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Remove the files in `dir` that `keep` does not want (best effort).
fn remove_others(dir: &Path, keep: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !keep(&name.to_string_lossy()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &Path, text: &str, module: &[u8]) -> Record {
        std::fs::write(dir.join("m.wasm"), module).expect("module");
        Record {
            config_path: dir.join("gateway.toml"),
            text: text.into(),
            generation: 3,
            modules: vec![("m.wasm".into(), sha256_hex(module), dir.join("m.wasm"))],
            max_module_size: 1024,
        }
    }

    #[test]
    fn a_saved_state_reads_back_and_replaces_the_one_before() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = LastGood::new(tmp.path().join("state"));
        assert!(store.read(&tmp.path().join("gateway.toml")).expect("empty").is_none());
        store.save(&record(tmp.path(), "a = 1\n", b"one")).expect("save");
        store.save(&record(tmp.path(), "a = 2\n", b"two")).expect("save");
        let saved = store.read(&tmp.path().join("gateway.toml")).expect("read").expect("saved");
        assert_eq!(saved.source.text(), "a = 2\n");
        assert_eq!(saved.generation, 3);
        let (file, sha) = saved.modules.get("m.wasm").expect("module");
        assert_eq!(std::fs::read(file).expect("saved module"), b"two");
        assert_eq!(sha, sha256_hex(b"two"));
        // The first state's files are gone.
        assert_eq!(std::fs::read_dir(saved.modules.dir()).expect("modules").count(), 1);
        assert_eq!(std::fs::read_dir(tmp.path().join("state/last-good")).expect("last-good").count(), 2);
    }

    #[test]
    fn a_corrupt_or_foreign_state_is_an_error_not_a_guess() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = LastGood::new(tmp.path().join("state"));
        store.save(&record(tmp.path(), "a = 1\n", b"one")).expect("save");
        let err = store.read(&tmp.path().join("other.toml")).err().expect("foreign");
        assert!(err.to_string().contains("is the last good state of"), "{err}");
        let manifest = tmp.path().join("state/last-good/manifest.json");
        std::fs::write(&manifest, "{ not json").expect("corrupt");
        let err = store.read(&tmp.path().join("gateway.toml")).err().expect("corrupt");
        assert!(err.to_string().contains("manifest.json"), "{err}");
        // A text that is not the one saved.
        store.save(&record(tmp.path(), "a = 1\n", b"one")).expect("save");
        let text = std::fs::read_dir(tmp.path().join("state/last-good"))
            .expect("dir")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("config-"))
            .expect("config text");
        std::fs::write(text.path(), "a = 666\n").expect("tamper");
        let err = store.read(&tmp.path().join("gateway.toml")).err().expect("tampered");
        assert!(err.to_string().contains("sha256"), "{err}");
    }

    #[test]
    fn a_module_changed_since_its_load_is_not_saved() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = LastGood::new(tmp.path().join("state"));
        let mut r = record(tmp.path(), "a = 1\n", b"one");
        r.modules[0].1 = sha256_hex(b"what was loaded");
        let err = store.save(&r).expect_err("changed");
        assert!(err.to_string().contains("changed since it was loaded"), "{err}");
    }

    #[test]
    fn an_unwritable_state_dir_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("file"), "").expect("file");
        let store = LastGood::new(tmp.path().join("file"));
        let err = store.save(&record(tmp.path(), "a = 1\n", b"one")).expect_err("unwritable");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }

    #[test]
    fn state_dir_is_found_in_a_config_broken_elsewhere() {
        let base = Path::new("/etc/weir/gateway.toml");
        let text = "[server]\nstate_dir = \"st\"\nlisten = 7\n[nonsense]\n";
        assert_eq!(state_dir_in(text, base), Some(PathBuf::from("/etc/weir/st")));
        assert_eq!(state_dir_in("not [ toml", base), None);
        // A syntax error elsewhere: the line is still found.
        let broken = "[server]\nlisten = \"127.0.0.1:8080\"\nstate_dir = \"/var/lib/weir\"\n[[routes]\nname = \n";
        assert_eq!(state_dir_in(broken, base), Some(PathBuf::from("/var/lib/weir")));
        assert_eq!(state_dir_in("[other]\nstate_dir = \"x\"\n[[bad\n", base), None);
    }
}
