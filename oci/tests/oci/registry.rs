//! Against a real registry (CNCF distribution, Debian's `docker-registry`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_oci::{
    CREATED_ANNOTATION, Cache, ClientOptions, DOCKER_MANIFEST, OCI_MANIFEST, OciError, WASM_CONFIG, WASM_LAYER, fetch,
    sha256_digest,
};

use crate::support::{Registry, client, client_with, component, credentials, hex};

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn push_then_pull_by_tag_and_by_digest() {
    let registry = Registry::start();
    let client = client();
    let wasm = component(20_000, 1);
    let reference = registry.reference("team/auth:v1");
    let ann = annotations(&[
        (CREATED_ANNOTATION, "2025-01-02T03:04:05Z"),
        ("org.opencontainers.image.description", "the auth plugin"),
    ]);
    let digest = client.push(&reference, &wasm, ann.clone()).await.expect("push");
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");

    let by_tag = client.pull(&reference).await.expect("pull by tag");
    assert_eq!(by_tag.bytes, wasm);
    assert_eq!(by_tag.manifest_digest, digest);
    assert_eq!(by_tag.layer_digest, sha256_digest(&wasm));
    assert_eq!(by_tag.tag.as_deref(), Some("v1"));
    assert_eq!(by_tag.annotations, ann);
    assert_eq!(sha256_digest(&by_tag.manifest), digest);

    for r in [format!("team/auth@{digest}"), format!("team/auth:v1@{digest}")] {
        let by_digest = client.pull(&registry.reference(&r)).await.expect("pull by digest");
        assert_eq!(by_digest.bytes, wasm);
        assert_eq!(by_digest.manifest_digest, digest);
        assert_eq!(by_digest.tag, None);
    }

    // What landed in the registry is the CNCF Wasm artifact layout.
    let manifest = registry.get_manifest("team/auth", "v1");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG);
    assert_eq!(manifest["layers"][0]["mediaType"], WASM_LAYER);
    assert_eq!(manifest["layers"][0]["size"], wasm.len());
    let config_digest = manifest["config"]["digest"].as_str().expect("config digest");
    let config: serde_json::Value =
        serde_json::from_slice(&registry.get_blob("team/auth", config_digest)).expect("config json");
    assert_eq!(
        config,
        json!({"created": "2025-01-02T03:04:05Z", "architecture": "wasm", "os": "wasip2",
            "layerDigests": [sha256_digest(&wasm)]})
    );

    // Pushing the same module with the same annotations again: the blobs
    // are there already, and the digest is the same.
    let again = client.push(&registry.reference("team/auth:v1-again"), &wasm, ann).await.expect("push again");
    assert_eq!(again, digest);

    // A push needs a tag, and Wasm.
    let e = client.push(&registry.reference(&format!("team/auth@{digest}")), &wasm, BTreeMap::new()).await;
    assert!(matches!(e, Err(OciError::InvalidReference { .. })), "{e:?}");
    let e = client.push(&reference, b"not wasm", BTreeMap::new()).await.expect_err("not wasm");
    assert!(matches!(e, OciError::NotWasm { .. }), "{e}");
}

#[tokio::test]
async fn fetch_twice_second_from_cache() {
    let registry = Registry::start();
    let client = client();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(dir.path()).expect("cache");
    let wasm = component(5_000, 2);
    let tagged = registry.reference("auth:v1");
    let digest = client.push(&tagged, &wasm, BTreeMap::new()).await.expect("push");
    let pinned = registry.reference(&format!("auth@{digest}"));

    // By digest: the second comes from the cache.
    let first = fetch(&client, &cache, &pinned, None).await.expect("first");
    assert!(!first.from_cache);
    let second = fetch(&client, &cache, &pinned, None).await.expect("second");
    assert!(second.from_cache);
    assert_eq!(second.bytes, wasm);
    assert_eq!(second.manifest_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(second.layer_digest, sha256_digest(&wasm));

    // A tag with a pin: likewise, and the pin may be `sha256:`-prefixed.
    let pin = hex(&wasm);
    let other = Cache::open(dir.path().join("other")).expect("cache");
    assert!(!fetch(&client, &other, &tagged, Some(&pin)).await.expect("first").from_cache);
    let again = fetch(&client, &other, &tagged, Some(&format!("sha256:{pin}"))).await.expect("second");
    assert!(again.from_cache);
    assert_eq!(again.manifest_digest.as_deref(), Some(digest.as_str()));

    // A tag without a pin is resolved online every time, and the cache
    // remembers the resolution.
    assert!(!fetch(&client, &cache, &tagged, None).await.expect("tag").from_cache);
    assert!(!fetch(&client, &cache, &tagged, None).await.expect("tag").from_cache);
    let record = cache.last_resolution(&tagged).expect("read").expect("recorded");
    assert_eq!(record.manifest_digest, digest);
    assert_eq!(record.layer_digest, sha256_digest(&wasm));
    assert_eq!(record.reference, tagged.to_string());
    assert!(cache.blob_path(&digest).expect("path").is_file());
}

#[tokio::test]
async fn registry_down_pinned_fetch_served_from_cache_unpinned_tag_unreachable() {
    let mut registry = Registry::start();
    let client = client();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(dir.path()).expect("cache");
    let wasm = component(5_000, 3);
    let tagged = registry.reference("auth:v1");
    let digest = client.push(&tagged, &wasm, BTreeMap::new()).await.expect("push");
    let pin = hex(&wasm);
    assert!(!fetch(&client, &cache, &tagged, Some(&pin)).await.expect("warm the cache").from_cache);

    registry.stop();

    let offline = fetch(&client, &cache, &tagged, Some(&pin)).await.expect("pinned, offline");
    assert!(offline.from_cache);
    assert_eq!(offline.bytes, wasm);
    assert_eq!(offline.manifest_digest.as_deref(), Some(digest.as_str()));
    // The tag's pull stored the manifest too, so its digest serves offline.
    let by_digest = registry.reference(&format!("auth@{digest}"));
    assert!(fetch(&client, &cache, &by_digest, None).await.expect("digest, offline").from_cache);

    let e = fetch(&client, &cache, &tagged, None).await.expect_err("unpinned tag needs the registry");
    assert!(e.is_unreachable(), "{e}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("{tagged}: registry unreachable")), "{text}");
    // A pin the cache does not have needs the registry too.
    let e = fetch(&client, &cache, &tagged, Some(&hex(b"other"))).await.expect_err("unknown pin");
    assert!(matches!(e, OciError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn pin_mismatch_is_an_error() {
    let registry = Registry::start();
    let client = client();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::open(dir.path()).expect("cache");
    let wasm = component(3_000, 4);
    let tagged = registry.reference("auth:v1");
    let digest = client.push(&tagged, &wasm, BTreeMap::new()).await.expect("push");
    let wrong = hex(b"something else");

    let e = fetch(&client, &cache, &tagged, Some(&wrong)).await.expect_err("mismatch online");
    let text = e.to_string();
    assert!(matches!(e, OciError::PinMismatch { .. }), "{text}");
    assert!(text.contains(&wrong) && text.contains(&hex(&wasm)) && text.starts_with(&tagged.to_string()), "{text}");

    // From the cache: a cached manifest whose layer is not the pin.
    let by_digest = registry.reference(&format!("auth@{digest}"));
    fetch(&client, &cache, &by_digest, None).await.expect("cache it");
    let e = fetch(&client, &cache, &by_digest, Some(&wrong)).await.expect_err("mismatch from cache");
    assert!(matches!(e, OciError::PinMismatch { .. }), "{e}");
    let e = fetch(&client, &cache, &by_digest, Some("not-a-pin")).await.expect_err("bad pin");
    assert!(matches!(e, OciError::InvalidReference { .. }), "{e}");
}

#[tokio::test]
async fn unknown_tag_repo_or_digest_is_not_found() {
    let registry = Registry::start();
    let client = client();
    client.push(&registry.reference("auth:v1"), &component(100, 5), BTreeMap::new()).await.expect("push");
    let unknown = format!("auth@{}", sha256_digest(b"nothing"));
    for r in ["auth:nope", "other/repo:v1", unknown.as_str()] {
        let reference = registry.reference(r);
        let e = client.pull(&reference).await.expect_err("not found");
        let text = e.to_string();
        assert!(matches!(e, OciError::NotFound { .. }), "{text}");
        assert!(text.starts_with(&format!("{reference}: not found (manifest ")), "{text}");
    }
}

#[tokio::test]
async fn manifests_without_exactly_one_wasm_layer_are_refused() {
    let registry = Registry::start();
    let client = client();
    let config = registry.put_blob("auth", b"{}");
    let tar_bytes = b"not a tarball, but the registry does not look";
    let tar = registry.put_blob("auth", tar_bytes);
    let wasm = component(64, 6);
    let layer = registry.put_blob("auth", &wasm);
    let not_wasm = registry.put_blob("auth", b"plain text");
    let manifest = |layers: Vec<serde_json::Value>| {
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": layers})
    };
    let d = |mt: &str, digest: &str, size: usize| json!({"mediaType": mt, "digest": digest, "size": size});
    let tar_layer = d("application/vnd.oci.image.layer.v1.tar+gzip", &tar, tar_bytes.len());
    registry.put_manifest("auth", "tar", OCI_MANIFEST, &manifest(vec![tar_layer]));
    let e = client.pull(&registry.reference("auth:tar")).await.expect_err("no wasm layer");
    let text = e.to_string();
    assert!(matches!(e, OciError::NoWasmLayer { .. }), "{text}");
    assert!(
        text.contains("application/vnd.oci.image.layer.v1.tar+gzip") && text.contains("application/wasm"),
        "{text}"
    );

    let wasm_layer = d(WASM_LAYER, &layer, wasm.len());
    registry.put_manifest("auth", "two", OCI_MANIFEST, &manifest(vec![wasm_layer.clone(), wasm_layer]));
    let e = client.pull(&registry.reference("auth:two")).await.expect_err("two wasm layers");
    assert!(matches!(e, OciError::SeveralWasmLayers { count: 2, .. }), "{e}");

    registry.put_manifest("auth", "text", OCI_MANIFEST, &manifest(vec![d(WASM_LAYER, &not_wasm, 10)]));
    let e = client.pull(&registry.reference("auth:text")).await.expect_err("not wasm");
    assert!(matches!(e, OciError::NotWasm { .. }), "{e}");
}

#[tokio::test]
async fn layer_or_manifest_over_the_limit_is_refused() {
    let registry = Registry::start();
    let wasm = component(3 << 20, 7);
    let reference = registry.reference("big:v1");
    client().push(&reference, &wasm, BTreeMap::new()).await.expect("push");

    let small = client_with(ClientOptions { max_blob_size: 1 << 20, ..ClientOptions::default() });
    let started = Instant::now();
    let e = small.pull(&reference).await.expect_err("too large");
    let text = e.to_string();
    assert!(matches!(e, OciError::TooLarge { limit: 1_048_576, size: Some(3_145_728), .. }), "{text}");
    assert!(text.contains("larger than the 1048576-byte limit"), "{text}");
    // Refused from the declared size: nothing near 3 MiB was read.
    assert!(started.elapsed() < Duration::from_secs(2));

    let tiny = client_with(ClientOptions { max_manifest_size: 100, ..ClientOptions::default() });
    let e = tiny.pull(&reference).await.expect_err("manifest too large");
    assert!(matches!(e, OciError::TooLarge { limit: 100, .. }) && e.to_string().contains("manifest"), "{e}");
}

#[tokio::test]
async fn artifacts_pushed_by_other_tools_are_pulled() {
    let registry = Registry::start();
    let client = client();
    let wasm = component(1_000, 8);
    // As `wkg`/`oras` push a component: the CNCF config, an
    // `application/wasm` layer with a title, manifest annotations; plus a
    // README layer this crate ignores.
    let config = serde_json::to_vec(&json!({
        "created": "2024-06-01T00:00:00Z", "author": "someone", "architecture": "wasm", "os": "wasip2",
        "layerDigests": [sha256_digest(&wasm)],
        "component": {"exports": ["weir:plugin/handler@0.3.0"], "imports": [], "target": null}
    }))
    .expect("json");
    let config_digest = registry.put_blob("wkg/auth", &config);
    let layer_digest = registry.put_blob("wkg/auth", &wasm);
    let readme = registry.put_blob("wkg/auth", b"# auth\n");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [
            {"mediaType": "text/markdown", "digest": readme, "size": 7},
            {"mediaType": WASM_LAYER, "digest": layer_digest, "size": wasm.len(),
             "annotations": {"org.opencontainers.image.title": "auth.wasm"}},
        ],
        "annotations": {"org.opencontainers.image.version": "1.0.0", "org.opencontainers.image.source": "x"}
    });
    let digest = registry.put_manifest("wkg/auth", "1.0.0", OCI_MANIFEST, &manifest);
    let pulled = client.pull(&registry.reference("wkg/auth:1.0.0")).await.expect("pull wkg-style");
    assert_eq!(pulled.bytes, wasm);
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(pulled.annotations.get("org.opencontainers.image.version").map(String::as_str), Some("1.0.0"));

    // The older `wasm-to-oci` layout in a Docker schema 2 manifest.
    let legacy_config = registry.put_blob("legacy/auth", b"{}");
    let legacy_layer = registry.put_blob("legacy/auth", &wasm);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.wasm.config.v1+json", "digest": legacy_config, "size": 2},
        "layers": [{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": legacy_layer,
            "size": wasm.len()}],
    });
    registry.put_manifest("legacy/auth", "v1", DOCKER_MANIFEST, &manifest);
    let pulled = client.pull(&registry.reference("legacy/auth:v1")).await.expect("pull docker-style");
    assert_eq!(pulled.bytes, wasm);
}

#[tokio::test]
async fn basic_auth_without_and_with_credentials() {
    let registry = Registry::start_with_user("alice", "s3cret");
    let wasm = component(2_000, 9);
    let reference = registry.reference("private/auth:v1");

    let anonymous = client();
    let e = anonymous.push(&reference, &wasm, BTreeMap::new()).await.expect_err("anonymous push");
    let text = e.to_string();
    assert!(matches!(e, OciError::Unauthorized { status: 401, .. }), "{text}");
    assert!(
        text.starts_with(&format!("{reference}: unauthorized (401)")) && text.contains("none are configured"),
        "{text}"
    );

    let alice = client_with(ClientOptions { credentials: credentials("alice", "s3cret"), ..ClientOptions::default() });
    let digest = alice.push(&reference, &wasm, BTreeMap::new()).await.expect("push with credentials");
    let pulled = alice.pull(&reference).await.expect("pull with credentials");
    assert_eq!((pulled.bytes, pulled.manifest_digest), (wasm, digest));

    let e = anonymous.pull(&reference).await.expect_err("anonymous pull");
    assert!(matches!(e, OciError::Unauthorized { .. }), "{e}");
    let wrong = client_with(ClientOptions { credentials: credentials("alice", "wrong"), ..ClientOptions::default() });
    let e = wrong.pull(&reference).await.expect_err("wrong password");
    assert!(matches!(e, OciError::Unauthorized { status: 401, .. }), "{e}");
}
