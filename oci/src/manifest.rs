//! Image manifests: the media types accepted, reading one and finding its
//! Wasm layer, and writing the one `push` uploads.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::OciError;
use crate::reference::check_digest;

/// OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest v2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image index (multi-platform); not accepted.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list (multi-platform); not accepted.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest media types a pull accepts.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];

/// The Wasm layer media type of the CNCF Wasm OCI artifact layout, and the
/// one `push` writes.
pub const WASM_LAYER: &str = "application/wasm";
/// The layer media types taken as a Wasm module: `application/wasm`
/// (CNCF Wasm OCI artifact; `wkg`, `oras`), the older
/// `application/vnd.wasm.content.layer.v1+wasm` (`wasm-to-oci`), and
/// Istio/solo.io's `application/vnd.module.wasm.content.layer.v1+wasm`.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] =
    &[WASM_LAYER, "application/vnd.wasm.content.layer.v1+wasm", "application/vnd.module.wasm.content.layer.v1+wasm"];
/// The config media type of the CNCF Wasm OCI artifact layout; the one
/// `push` writes. Pulls accept any config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// The annotation whose value (RFC 3339) `push` uses as the config's
/// `created` time, so that pushing the same module with the same
/// annotations gives the same manifest digest.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// A content descriptor (digest, size, media type).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker schema 2), as far as this crate reads
/// it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

/// Just enough of any manifest-like JSON to tell what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Strip parameters (`; charset=…`) and lowercase a `Content-Type`.
pub(crate) fn bare_media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

impl Manifest {
    /// Read a manifest the registry served with `content_type` (may be
    /// empty). Accepts OCI image manifests and Docker schema 2 manifests;
    /// an index, a manifest list or a schema 1 manifest is a
    /// [`OciError::MediaType`].
    pub(crate) fn parse(reference: &str, bytes: &[u8], content_type: &str) -> Result<Self, OciError> {
        let malformed = |reason: String| OciError::Manifest { reference: reference.to_owned(), reason };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
        let header = bare_media_type(content_type);
        // The body's own `mediaType` wins; generic or missing headers
        // (`application/json`, `application/octet-stream`) are ignored.
        let declared = match (&probe.media_type, header.as_str()) {
            (Some(m), _) => Some(m.to_ascii_lowercase()),
            (None, h) if h.starts_with("application/vnd.") => Some(h.to_owned()),
            (None, _) => None,
        };
        let unsupported = |found: &str| OciError::MediaType {
            reference: reference.to_owned(),
            what: "manifest".into(),
            found: found.to_owned(),
            accepted: MANIFEST_MEDIA_TYPES.join(", "),
        };
        match declared.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_LIST) => {
                return Err(OciError::MediaType {
                    reference: reference.to_owned(),
                    what: "manifest".into(),
                    found: format!("{} (a multi-platform index)", declared.unwrap_or_default()),
                    accepted: MANIFEST_MEDIA_TYPES.join(", "),
                });
            }
            Some(m) if MANIFEST_MEDIA_TYPES.contains(&m) => {}
            Some(other) => return Err(unsupported(other)),
            None if probe.manifests.is_some() => return Err(unsupported("an image index (no mediaType)")),
            None => {}
        }
        match probe.schema_version {
            Some(2) => {}
            Some(v) => return Err(unsupported(&format!("schemaVersion {v} manifest"))),
            None => return Err(malformed("no `schemaVersion`".into())),
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            check_digest(&d.digest).map_err(|r| malformed(format!("descriptor of `{}`: {r}", d.media_type)))?;
        }
        Ok(manifest)
    }

    /// The one Wasm layer.
    pub(crate) fn wasm_layer(&self, reference: &str) -> Result<&Descriptor, OciError> {
        let wasm: Vec<&Descriptor> = self
            .layers
            .iter()
            .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&bare_media_type(&l.media_type).as_str()))
            .collect();
        match wasm.as_slice() {
            [one] => Ok(one),
            [] => Err(OciError::NoWasmLayer {
                reference: reference.to_owned(),
                found: if self.layers.is_empty() {
                    "none".into()
                } else {
                    self.layers.iter().map(|l| format!("`{}`", l.media_type)).collect::<Vec<_>>().join(", ")
                },
                accepted: WASM_LAYER_MEDIA_TYPES.join(", "),
            }),
            many => Err(OciError::SeveralWasmLayers { reference: reference.to_owned(), count: many.len() }),
        }
    }
}

/// The config blob of the CNCF Wasm OCI artifact layout.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    layer_digests: Vec<&'a str>,
}

/// Whether `bytes` start like a Wasm binary (`\0asm`).
pub(crate) fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

/// `wasip2` for a component (binary layer 1), `wasip1` for a core
/// module, as the artifact layout's `os` field has it.
fn wasm_os(bytes: &[u8]) -> &'static str {
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes.get(6..8) == Some(&[1, 0]) { "wasip2" } else { "wasip1" }
}

/// The config blob for `wasm` (whose digest is `layer_digest`): created at
/// the `org.opencontainers.image.created` annotation if there is one,
/// else now.
pub(crate) fn wasm_config(wasm: &[u8], layer_digest: &str, annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let now;
    let created = match annotations.get(CREATED_ANNOTATION) {
        Some(c) => c.as_str(),
        None => {
            now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            now.as_str()
        }
    };
    let config = WasmConfig { created, architecture: "wasm", os: wasm_os(wasm), layer_digests: vec![layer_digest] };
    // A struct of strings always serializes.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The manifest `push` uploads: OCI image manifest with the Wasm config
/// and one `application/wasm` layer. No `artifactType`: the image spec
/// requires it only with an empty config, and takes the config's media
/// type as the artifact type otherwise.
pub(crate) fn wasm_manifest(config: Descriptor, layer: Descriptor, annotations: BTreeMap<String, String>) -> Vec<u8> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config,
        layers: vec![layer],
        annotations: if annotations.is_empty() { None } else { Some(annotations) },
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const D2: &str = "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest(media_type: Option<&str>, layers: &[&str]) -> Vec<u8> {
        let layers: Vec<_> =
            layers.iter().map(|m| serde_json::json!({"mediaType": m, "digest": D2, "size": 10})).collect();
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": WASM_CONFIG, "digest": D1, "size": 2},
            "layers": layers,
        });
        if let Some(m) = media_type {
            v["mediaType"] = m.into();
        }
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn accepts_oci_and_docker_manifests_and_finds_the_wasm_layer() {
        for (mt, header) in [
            (Some(OCI_MANIFEST), ""),
            (None, OCI_MANIFEST),
            (None, "application/json"),
            (Some(DOCKER_MANIFEST), DOCKER_MANIFEST),
        ] {
            for layer in WASM_LAYER_MEDIA_TYPES {
                let m = Manifest::parse("r", &manifest(mt, &["text/plain", layer]), header).expect("parse");
                assert_eq!(m.wasm_layer("r").expect("layer").media_type, *layer);
            }
        }
    }

    #[test]
    fn refuses_indexes_other_kinds_and_bad_json() {
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        let e = Manifest::parse("oci://h/r:t", &serde_json::to_vec(&index).expect("json"), OCI_INDEX)
            .expect_err("index")
            .to_string();
        assert!(e.contains("multi-platform index") && e.starts_with("oci://h/r:t: "), "{e}");
        let no_type = serde_json::json!({"schemaVersion": 2, "manifests": []});
        let e = Manifest::parse("r", &serde_json::to_vec(&no_type).expect("json"), "").expect_err("index");
        assert!(matches!(e, OciError::MediaType { .. }), "{e}");
        let e = Manifest::parse("r", &manifest(Some("application/vnd.foo"), &[]), "").expect_err("other");
        assert!(e.to_string().contains("unsupported media type `application/vnd.foo`"), "{e}");
        let schema1 = serde_json::json!({"schemaVersion": 1, "name": "x"});
        let e = Manifest::parse("r", &serde_json::to_vec(&schema1).expect("json"), "").expect_err("schema 1");
        assert!(e.to_string().contains("schemaVersion 1"), "{e}");
        let e = Manifest::parse("r", b"{nope", OCI_MANIFEST).expect_err("json");
        assert!(matches!(e, OciError::Manifest { .. }) && e.to_string().contains("malformed manifest"), "{e}");
        let e = Manifest::parse("r", br#"{"schemaVersion":2,"layers":[]}"#, OCI_MANIFEST).expect_err("config");
        assert!(e.to_string().contains("missing field `config`"), "{e}");
        let bad_digest = serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": WASM_CONFIG, "digest": "md5:x", "size": 2}, "layers": []});
        let e = Manifest::parse("r", &serde_json::to_vec(&bad_digest).expect("json"), "").expect_err("digest");
        assert!(e.to_string().contains("only sha256"), "{e}");
    }

    #[test]
    fn wasm_layer_count() {
        let none =
            Manifest::parse("r", &manifest(None, &["application/vnd.oci.image.layer.v1.tar+gzip"]), "").expect("parse");
        let e = none.wasm_layer("r").expect_err("none").to_string();
        assert!(e.contains("no Wasm layer") && e.contains("tar+gzip") && e.contains("application/wasm"), "{e}");
        let empty = Manifest::parse("r", &manifest(None, &[]), "").expect("parse");
        assert!(empty.wasm_layer("r").expect_err("none").to_string().contains("its layers: none"));
        let two = Manifest::parse("r", &manifest(None, &[WASM_LAYER, WASM_LAYER]), "").expect("parse");
        assert!(matches!(two.wasm_layer("r"), Err(OciError::SeveralWasmLayers { count: 2, .. })));
    }

    #[test]
    fn config_and_manifest_written_for_push() {
        let component = b"\0asm\x0d\x00\x01\x00rest";
        let module = b"\0asm\x01\x00\x00\x00rest";
        let mut ann = BTreeMap::new();
        ann.insert(CREATED_ANNOTATION.to_owned(), "2025-01-02T03:04:05Z".to_owned());
        let c: serde_json::Value = serde_json::from_slice(&wasm_config(component, D2, &ann)).expect("json");
        assert_eq!(
            c,
            serde_json::json!({"created": "2025-01-02T03:04:05Z", "architecture": "wasm", "os": "wasip2",
                "layerDigests": [D2]})
        );
        let c: serde_json::Value = serde_json::from_slice(&wasm_config(module, D2, &BTreeMap::new())).expect("json");
        assert_eq!(c["os"], "wasip1");
        assert!(c["created"].as_str().is_some_and(|s| s.ends_with('Z')));

        let d = |m: &str, digest: &str| Descriptor {
            media_type: m.into(),
            digest: digest.into(),
            size: 1,
            annotations: None,
        };
        let bytes = wasm_manifest(d(WASM_CONFIG, D1), d(WASM_LAYER, D2), ann);
        let m = Manifest::parse("r", &bytes, OCI_MANIFEST).expect("own manifest parses");
        assert_eq!(m.wasm_layer("r").expect("layer").digest, D2);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["mediaType"], OCI_MANIFEST);
        assert_eq!(v["config"]["mediaType"], WASM_CONFIG);
        assert!(v.get("artifactType").is_none());
        assert_eq!(v["annotations"][CREATED_ANNOTATION], "2025-01-02T03:04:05Z");
    }
}
