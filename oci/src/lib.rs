//! Wasm plugin modules from and to OCI registries, with a
//! content-addressed local cache.
//!
//! A module is named by a [`Reference`],
//! `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`. [`Client::pull`] fetches
//! it with the OCI distribution API (spec v1.1, over HTTP/1.1, HTTPS with
//! the system's trusted roots, or plain HTTP with `insecure` for loopback
//! registries); [`Client::push`] publishes one; [`fetch`] puts a
//! [`Cache`] in front of the pull.
//!
//! # What is accepted
//!
//! - Manifests: OCI image manifest
//!   (`application/vnd.oci.image.manifest.v1+json`) and Docker image
//!   manifest v2 schema 2
//!   (`application/vnd.docker.distribution.manifest.v2+json`). An image
//!   index / manifest list (multi-platform), a schema 1 manifest or
//!   anything else is refused with [`OciError::MediaType`].
//! - Exactly one Wasm layer, with media type `application/wasm` (the CNCF
//!   Wasm OCI artifact layout, as `wkg` and `oras` push it),
//!   `application/vnd.wasm.content.layer.v1+wasm` (`wasm-to-oci`) or
//!   `application/vnd.module.wasm.content.layer.v1+wasm` (Istio/solo.io);
//!   see [`WASM_LAYER_MEDIA_TYPES`]. Other layers (a README, a schema)
//!   are ignored; none or several Wasm layers is an error. The layer must
//!   start with the Wasm magic (`\0asm`).
//! - Any config media type; the CNCF one,
//!   `application/vnd.wasm.config.v0+json`, is what `push` writes.
//!
//! Every download is checked: the manifest against the reference's
//! digest (or, pulled by tag, against the registry's
//! `Docker-Content-Digest`), the layer against the manifest's digest and
//! size. Sizes are capped ([`ClientOptions::max_manifest_size`],
//! [`ClientOptions::max_blob_size`]) before reading (declared size,
//! `Content-Length`) and while the body streams.
//!
//! `push` uploads the CNCF layout: a config blob
//! `{"created","architecture":"wasm","os":"wasip2"|"wasip1","layerDigests":[…]}`,
//! one `application/wasm` layer, and an OCI image manifest with the
//! caller's annotations (no `artifactType`: the config's media type
//! already says what it is).
//!
//! # Auth, redirects, plain HTTP
//!
//! A 401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` gets a
//! token from the realm (with the configured basic credentials, if any)
//! and retries with it; `Basic` challenges get the basic credentials.
//! Credentials are never sent over plain HTTP to a token realm on another
//! host, nor to a redirect target on another host. Redirects are followed
//! only to the registry's own `HOST:PORT` unless
//! [`ClientOptions::allow_cross_host_redirects`] is set (blob stores and
//! CDNs). `insecure` (plain HTTP) is refused for hosts that are not
//! loopback unless [`ClientOptions::allow_insecure_remote`] is set;
//! [`Client::check`] tells without any network.
//!
//! # Cache and offline use
//!
//! The [`Cache`] keeps manifests and layers under `blobs/sha256/<hex>`
//! (written to a temporary file and renamed; hashed again on every read)
//! and the last resolution of each tag under `tags/`. [`fetch`] answers
//! from the cache alone whenever a digest determines the answer: the
//! reference has `@sha256:…`, or the caller pins the layer's sha256. So a
//! pinned module already cached never needs the registry. A tag without a
//! pin is always resolved online (and the cache remembers the resolution,
//! for diagnostics only: it is never used to answer).
//!
//! # Not supported
//!
//! Multi-platform indexes, schema 1 manifests, the "compat" variant that
//! wraps `plugin.wasm` in a tar layer, digests other than sha256, chunked
//! uploads and cross-repository mounts, HTTP/2, client certificates, CA
//! files other than the system's trust store, and credential helpers or
//! `~/.docker/config.json` (credentials are given in
//! [`ClientOptions::credentials`]). Cache eviction is left to the caller.

#![warn(missing_docs)]

mod auth;
mod cache;
mod client;
mod error;
mod manifest;
mod reference;
mod transport;

use sha2::{Digest, Sha256};

pub use cache::{Cache, TagRecord};
pub use client::{Client, ClientOptions, Credentials, Pulled};
pub use error::OciError;
pub use manifest::{
    CREATED_ANNOTATION, DOCKER_MANIFEST, MANIFEST_MEDIA_TYPES, OCI_MANIFEST, WASM_CONFIG, WASM_LAYER,
    WASM_LAYER_MEDIA_TYPES,
};
pub use reference::{Reference, SCHEME};

/// A module as [`fetch`] returns it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The module.
    pub bytes: Vec<u8>,
    /// The manifest's digest (`sha256:HEX`): what a tag resolved to. `None`
    /// only when the module came from the cache by its pin alone and the
    /// cache does not know the manifest.
    pub manifest_digest: Option<String>,
    /// The module's digest (`sha256:HEX`).
    pub layer_digest: String,
    /// Whether it came from the cache, without the registry.
    pub from_cache: bool,
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes).iter().fold(String::with_capacity(71), |mut s, b| {
        if s.is_empty() {
            s.push_str("sha256:");
        }
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The module `reference` names, cache first when a digest determines it.
///
/// `pin` is the module's (the Wasm layer's) expected sha256, as 64 hex
/// digits or `sha256:HEX`. When the reference has a digest, or there is a
/// pin, and the cache holds the answer, it is returned with no network.
/// Otherwise the module is pulled, checked against the pin, and stored
/// (a cache that cannot be written is logged, not an error: the module
/// itself was verified).
pub async fn fetch(
    client: &Client,
    cache: &Cache,
    reference: &Reference,
    pin: Option<&str>,
) -> Result<Fetched, OciError> {
    let pin = pin.map(|p| normalize_pin(reference, p)).transpose()?;
    client.check(reference)?;
    let lookup = {
        let (c, r, p) = (cache.clone(), reference.clone(), pin.clone());
        blocking(cache.root(), move || c.lookup(&r, p.as_deref())).await?
    };
    if let Some(found) = lookup {
        return Ok(found);
    }
    let pulled = client.pull(reference).await?;
    if let Some(pin) = &pin
        && pulled.layer_digest != format!("sha256:{pin}")
    {
        return Err(OciError::PinMismatch {
            reference: reference.to_string(),
            pin: pin.clone(),
            got: pulled.layer_digest.trim_start_matches("sha256:").to_owned(),
        });
    }
    let (c, r) = (cache.clone(), reference.clone());
    let (pulled, stored) = tokio::task::spawn_blocking(move || {
        let stored = c.store(&r, &pulled);
        (pulled, stored)
    })
    .await
    .map_err(|e| OciError::Cache { path: cache.root().to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
    if let Err(e) = stored {
        tracing::warn!(reference = %reference, error = %e, "OCI cache: module pulled but not cached");
    }
    Ok(Fetched {
        bytes: pulled.bytes,
        manifest_digest: Some(pulled.manifest_digest),
        layer_digest: pulled.layer_digest,
        from_cache: false,
    })
}

/// `HEX` from `HEX` or `sha256:HEX` (any case).
fn normalize_pin(reference: &Reference, pin: &str) -> Result<String, OciError> {
    let hex = pin.strip_prefix("sha256:").unwrap_or(pin).to_ascii_lowercase();
    if reference::is_sha256_hex(&hex) {
        Ok(hex)
    } else {
        Err(OciError::InvalidReference {
            input: format!("{reference} (pin `{pin}`)"),
            reason: "the pin is not a sha256 digest (64 hex digits, optionally `sha256:`-prefixed)".into(),
        })
    }
}

/// Run cache I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    root: &std::path::Path,
    f: impl FnOnce() -> Result<T, OciError> + Send + 'static,
) -> Result<T, OciError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OciError::Cache { path: root.to_path_buf(), source: std::io::Error::other(e.to_string()) })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_pins() {
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let r = Reference::parse("oci://h/r:t").expect("ref");
        let hex = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(normalize_pin(&r, hex).expect("pin"), hex.to_ascii_lowercase());
        assert_eq!(normalize_pin(&r, &format!("sha256:{hex}")).expect("pin"), hex.to_ascii_lowercase());
        let e = normalize_pin(&r, "abc").expect_err("short").to_string();
        assert!(e.contains("oci://h/r:t (pin `abc`)") && e.contains("not a sha256 digest"), "{e}");
    }

    #[test]
    fn insecure_is_for_loopback_unless_allowed() {
        let insecure = Client::new(ClientOptions { insecure: true, ..ClientOptions::default() });
        let remote = Reference::parse("oci://registry.example.com/auth:1").expect("ref");
        let e = insecure.check(&remote).expect_err("refused").to_string();
        assert!(
            e.starts_with("oci://registry.example.com/auth:1: ")
                && e.contains("only allowed for loopback")
                && e.contains("allow_insecure_remote"),
            "{e}"
        );
        for local in ["oci://127.0.0.1:5000/a", "oci://localhost/a", "oci://[::1]:1/a"] {
            insecure.check(&Reference::parse(local).expect("ref")).expect("loopback is fine");
        }
        let allowed =
            Client::new(ClientOptions { insecure: true, allow_insecure_remote: true, ..ClientOptions::default() });
        allowed.check(&remote).expect("allowed");
        Client::new(ClientOptions::default()).check(&remote).expect("https is always fine");
    }

    #[tokio::test]
    async fn insecure_refusal_comes_before_any_network_or_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path()).expect("cache");
        let client = Client::new(ClientOptions { insecure: true, ..ClientOptions::default() });
        // 192.0.2.0/24 is TEST-NET-1: never contacted, the check refuses first.
        let remote = Reference::parse("oci://192.0.2.1:5000/auth:1").expect("ref");
        let e = fetch(&client, &cache, &remote, None).await.expect_err("refused");
        assert!(matches!(e, OciError::InsecureRefused { .. }), "{e}");
        let e = client.pull(&remote).await.expect_err("refused");
        assert!(matches!(e, OciError::InsecureRefused { .. }), "{e}");
        let e = client.push(&remote, b"\0asm\x01\0\0\0", Default::default()).await.expect_err("refused");
        assert!(matches!(e, OciError::InsecureRefused { .. }), "{e}");
    }
}
