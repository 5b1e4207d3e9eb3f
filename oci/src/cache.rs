//! The content-addressed local cache: blobs by sha256, and the last
//! resolution of each tag.
//!
//! ```text
//! DIR/blobs/sha256/<hex>                 manifests and Wasm layers, by digest
//! DIR/tags/<host>/<repo>/@<tag>          JSON: the tag's last resolution
//! ```
//!
//! `<host>` is the registry's `HOST[:PORT]` lowercased with `:` written
//! `_`. Blobs are written to a temporary file in their folder and renamed
//! into place, so a reader never sees half a blob; every read hashes the
//! file again and treats a mismatch as absent (and removes it). The cache
//! is safe to share between processes: the worst a race does is write the
//! same blob twice.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::reference::is_sha256_hex;
use crate::{Fetched, OciError, Pulled, Reference, sha256_digest};

/// What a tag last resolved to, as the cache remembers it. For
/// diagnostics: a tag is always resolved online again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The reference that was resolved (`oci://HOST/REPO:TAG`).
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:HEX`).
    pub manifest_digest: String,
    /// The Wasm layer's digest in that manifest (`sha256:HEX`).
    pub layer_digest: String,
    /// When (RFC 3339, UTC).
    pub resolved_at: String,
}

/// A cache folder. Cheap to clone. Its methods do blocking file I/O
/// (modules are small); [`crate::fetch`] runs them off the async threads.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Open (creating if needed) the cache in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, OciError> {
        let cache = Cache { root: dir.into() };
        for sub in [cache.blob_dir(), cache.root.join("tags")] {
            std::fs::create_dir_all(&sub).map_err(|source| OciError::Cache { path: sub.clone(), source })?;
        }
        Ok(cache)
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where the blob with `digest` (`sha256:HEX`) is or would be; `None`
    /// for anything but a sha256 digest.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").filter(|h| is_sha256_hex(h))?;
        Some(self.blob_dir().join(hex))
    }

    /// The blob with `digest`, if the cache has it intact. A file whose
    /// content does not hash to its name is removed and reported absent.
    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, OciError> {
        let Some(path) = self.blob_path(digest) else { return Ok(None) };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OciError::Cache { path, source }),
        };
        let got = sha256_digest(&bytes);
        if got != digest {
            tracing::warn!(path = %path.display(), %got, "OCI cache: blob does not match its digest; removed");
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Store `bytes` under their digest, which is returned. An intact copy
    /// already there is kept.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, OciError> {
        let digest = sha256_digest(bytes);
        let dir = self.blob_dir();
        let Some(path) = self.blob_path(&digest) else { return Ok(digest) };
        // Already there and intact (a damaged copy was just removed).
        if path.is_file() && self.blob(&digest)?.is_some() {
            return Ok(digest);
        }
        write_atomic(&dir, &path, bytes)?;
        Ok(digest)
    }

    /// Store what [`crate::Client::pull`] returned: the manifest, the
    /// layer, and (for a tag) the tag's resolution.
    pub fn store(&self, reference: &Reference, pulled: &Pulled) -> Result<(), OciError> {
        self.put_blob(&pulled.manifest)?;
        self.put_blob(&pulled.bytes)?;
        if reference.digest().is_none() {
            let record = TagRecord {
                reference: reference.to_string(),
                manifest_digest: pulled.manifest_digest.clone(),
                layer_digest: pulled.layer_digest.clone(),
                resolved_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            };
            let path = self.tag_path(reference);
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
            std::fs::create_dir_all(&dir).map_err(|source| OciError::Cache { path: dir.clone(), source })?;
            let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
            write_atomic(&dir, &path, &json)?;
        }
        Ok(())
    }

    /// What `reference`'s tag (`latest` without one) resolved to when it
    /// was last pulled through this cache, if it was.
    pub fn last_resolution(&self, reference: &Reference) -> Result<Option<TagRecord>, OciError> {
        let path = self.tag_path(reference);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OciError::Cache { path, source }),
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    fn tag_path(&self, reference: &Reference) -> PathBuf {
        let host = reference.registry().to_ascii_lowercase().replace(':', "_");
        let tag = reference.tag().unwrap_or("latest");
        let mut path = self.root.join("tags").join(host);
        for part in reference.repository().split('/') {
            path.push(part);
        }
        path.join(format!("@{tag}"))
    }

    /// The answer the cache alone can give, when a digest determines it:
    /// the reference's manifest digest (whose manifest and layer are
    /// cached), or else the pinned layer digest (`pin`: 64 hex digits,
    /// optionally `sha256:`-prefixed).
    /// `None` when the registry must be asked. A cached manifest whose
    /// layer is not the pin is a [`OciError::PinMismatch`].
    pub fn lookup(&self, reference: &Reference, pin: Option<&str>) -> Result<Option<Fetched>, OciError> {
        let pin = pin.map(|p| p.strip_prefix("sha256:").unwrap_or(p).to_ascii_lowercase());
        let pin = pin.as_deref();
        if let Some(manifest_digest) = reference.digest() {
            let Some(manifest) = self.blob(manifest_digest)? else { return Ok(None) };
            let shown = reference.to_string();
            let layer = Manifest::parse(&shown, &manifest, "")?.wasm_layer(&shown)?.digest.clone();
            if let Some(pin) = pin
                && layer != format!("sha256:{pin}")
            {
                return Err(OciError::PinMismatch {
                    reference: shown,
                    pin: pin.to_owned(),
                    got: layer.trim_start_matches("sha256:").to_owned(),
                });
            }
            return Ok(self.blob(&layer)?.map(|bytes| Fetched {
                bytes,
                manifest_digest: Some(manifest_digest.to_owned()),
                layer_digest: layer,
                from_cache: true,
            }));
        }
        let Some(pin) = pin else { return Ok(None) };
        let layer = format!("sha256:{pin}");
        let Some(bytes) = self.blob(&layer)? else { return Ok(None) };
        let manifest_digest =
            self.last_resolution(reference)?.filter(|r| r.layer_digest == layer).map(|r| r.manifest_digest);
        Ok(Some(Fetched { bytes, manifest_digest, layer_digest: layer, from_cache: true }))
    }
}

/// Write `bytes` to `path` through a temporary file in `dir`.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let fail = |source: io::Error| OciError::Cache { path: path.to_path_buf(), source };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path().join("c")).expect("open");
        let digest = cache.put_blob(b"hello").expect("put");
        assert_eq!(digest, sha256_digest(b"hello"));
        let path = cache.blob_path(&digest).expect("path");
        assert_eq!(path, dir.path().join("c/blobs/sha256").join(digest.trim_start_matches("sha256:")));
        assert_eq!(cache.blob(&digest).expect("read").as_deref(), Some(&b"hello"[..]));
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir")).expect("ls").collect();
        assert_eq!(names.len(), 1);
        // Corrupted on disk: absent, and removed.
        std::fs::write(&path, b"hellO").expect("corrupt");
        assert_eq!(cache.blob(&digest).expect("read"), None);
        assert!(!path.exists());
        assert_eq!(cache.blob("sha256:nothex").expect("read"), None);
        assert_eq!(cache.blob(&sha256_digest(b"other")).expect("read"), None);
    }

    #[test]
    fn tag_paths_do_not_collide() {
        let cache = Cache { root: PathBuf::from("/c") };
        let p = |s: &str| cache.tag_path(&Reference::parse(s).expect("ref"));
        assert_eq!(p("oci://Reg.io:5000/a/b:v1"), PathBuf::from("/c/tags/reg.io_5000/a/b/@v1"));
        assert_eq!(p("oci://[::1]:5000/a"), PathBuf::from("/c/tags/[__1]_5000/a/@latest"));
        assert_ne!(p("oci://h/a:b"), p("oci://h/a/b"));
        assert_ne!(p("oci://h/a/b.tag"), p("oci://h/a:b.tag"));
    }
}
