//! Plugin modules from OCI registries: `module = "oci://HOST/REPO:TAG"` or
//! `"…@sha256:DIGEST"`, pulled with `weir-oci` into a content-addressed
//! cache and then loaded exactly like a file module (compiled here, never
//! precompiled code from the registry).
//!
//! Offline first: a module whose digest is known (the reference's
//! `@sha256:`, or the plugin's `sha256` pin) is served from the cache when
//! it is there, so a start or a reload needs no registry; a tag without a
//! pin is resolved at every load.

use std::path::{Path, PathBuf};

use weir_config::RegistryConfig;
use weir_oci::{Cache, Client, ClientOptions, Credentials, Reference};

/// A module fetched for a plugin.
pub(crate) struct Fetched {
    /// Its bytes.
    pub(crate) bytes: Vec<u8>,
    /// The cached file holding them (what the last good state copies).
    pub(crate) file: PathBuf,
    /// `oci://HOST/REPO@sha256:…`: the manifest the reference resolved to,
    /// when known.
    pub(crate) resolved: Option<String>,
}

/// Fetch `module` (an `oci://` reference) into the cache at `cache_dir`.
/// `Err` is a sentence naming the reference and the reason.
pub(crate) async fn fetch(
    cache_dir: &Path,
    module: &str,
    registry: Option<&RegistryConfig>,
    pin: Option<&str>,
    max_size: u64,
) -> Result<Fetched, String> {
    let started = std::time::Instant::now();
    let reference = Reference::parse(module).map_err(|e| e.to_string())?;
    let defaults = RegistryConfig::default();
    let r = registry.unwrap_or(&defaults);
    let credentials = match (&r.username, &r.password_env) {
        (Some(username), Some(var)) => {
            let password = std::env::var(var)
                .map_err(|_| format!("{module}: registry.password_env: the environment variable {var} is not set"))?;
            Some(Credentials { username: username.clone(), password })
        }
        (Some(username), None) => Some(Credentials { username: username.clone(), password: String::new() }),
        (None, Some(_)) => return Err(format!("{module}: registry.password_env needs registry.username")),
        (None, None) => None,
    };
    let client = Client::new(ClientOptions {
        timeout: r.timeout,
        max_blob_size: max_size,
        credentials,
        insecure: r.insecure,
        allow_insecure_remote: r.allow_insecure_remote,
        ..ClientOptions::default()
    });
    client.check(&reference).map_err(|e| e.to_string())?;
    let dir = cache_dir.to_owned();
    let cache = tokio::task::spawn_blocking(move || Cache::open(dir))
        .await
        .map_err(|e| format!("{module}: {e}"))?
        .map_err(|e| format!("{module}: {e}"))?;
    // `timeout` bounds the whole pull, however the registry trickles it.
    let fetched = tokio::time::timeout(r.timeout, weir_oci::fetch(&client, &cache, &reference, pin))
        .await
        .map_err(|_| format!("{module}: the pull did not finish within {:?} (registry.timeout)", r.timeout))?
        .map_err(|e| e.to_string())?;
    let file = cache
        .blob_path(&fetched.layer_digest)
        .ok_or_else(|| format!("{module}: the module is not in the cache at {}", cache_dir.display()))?;
    let resolved = fetched
        .manifest_digest
        .as_ref()
        .map(|d| format!("oci://{}/{}@{d}", reference.registry(), reference.repository()));
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    if fetched.from_cache {
        tracing::debug!(module, took_ms, "module served from the OCI cache");
    } else {
        tracing::info!(module, resolved = resolved.as_deref().unwrap_or("-"), took_ms, "module pulled");
    }
    Ok(Fetched { bytes: fetched.bytes, file, resolved })
}

/// Where pulled modules are kept: next to the compile cache (`oci/` in
/// it), or `.weir-cache/oci` beside the config when that is off.
pub(crate) fn cache_dir(runtime: &weir_config::RuntimeConfig, base: &Path) -> PathBuf {
    runtime.compile_cache.dir(base).map(|d| d.join("oci")).unwrap_or_else(|| base.join(".weir-cache").join("oci"))
}
