//! Against a tiny local server that plays registry and token service, for
//! what the real registry cannot be made to do: Bearer tokens, redirects,
//! streamed bodies without a length, wrong digests, silence.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use weir_oci::{Client, ClientOptions, OCI_MANIFEST, OciError, WASM_CONFIG, WASM_LAYER, sha256_digest};

use crate::support::{component, credentials};

type Body = BoxBody<Bytes, Infallible>;

/// A request the mock saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query.
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn auth(&self) -> Option<&str> {
        self.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Body> + Send + Sync>;

/// A server on a loopback address, stopped on drop.
struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn listen(ip: [u8; 4]) -> TcpListener {
    TcpListener::bind(SocketAddr::from((ip, 0))).await.expect("bind")
}

fn serve(listener: TcpListener, handler: Handler) -> Mock {
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (handler, log) = (handler.clone(), log.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (handler, log) = (handler.clone(), log.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let seen = Seen {
                            method: parts.method,
                            path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                            headers: parts.headers,
                            body,
                        };
                        log.lock().expect("lock").push(seen.clone());
                        Ok::<_, Infallible>(handler(&seen))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Mock { addr, seen, task }
}

fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        r.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
    }
    r
}

/// A module and the manifest for it, served at `/v2/mod/...`.
struct Artifact {
    wasm: Vec<u8>,
    manifest: Vec<u8>,
    manifest_digest: String,
    layer_digest: String,
}

fn artifact(len: usize) -> Artifact {
    let wasm = component(len, 42);
    artifact_declaring(wasm.clone(), wasm.len())
}

fn artifact_declaring(wasm: Vec<u8>, declared: usize) -> Artifact {
    let layer_digest = sha256_digest(&wasm);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": WASM_CONFIG, "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [{"mediaType": WASM_LAYER, "digest": layer_digest, "size": declared}],
    }))
    .expect("json");
    let manifest_digest = sha256_digest(&manifest);
    Artifact { wasm, manifest, manifest_digest, layer_digest }
}

/// The registry side for `a`: the manifest (any tag or digest) and the
/// blob; `None` for other paths.
fn registry_answer(a: &Artifact, seen: &Seen) -> Option<Response<Body>> {
    if seen.path.starts_with("/v2/mod/manifests/") {
        let digest = a.manifest_digest.clone();
        return Some(respond(
            200,
            &[("content-type", OCI_MANIFEST), ("docker-content-digest", &digest)],
            a.manifest.clone(),
        ));
    }
    if seen.path == format!("/v2/mod/blobs/{}", a.layer_digest) {
        return Some(respond(200, &[("content-type", "application/octet-stream")], a.wasm.clone()));
    }
    None
}

fn client(options: ClientOptions) -> Client {
    Client::new(ClientOptions { insecure: true, timeout: Duration::from_secs(5), ..options })
}

fn reference(addr: SocketAddr, rest: &str) -> weir_oci::Reference {
    weir_oci::Reference::parse(&format!("oci://{addr}/{rest}")).expect("reference")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn bearer_token_with_credentials() {
    let a = Arc::new(artifact(3_000));
    let listener = listen([127, 0, 0, 1]).await;
    let addr = listener.local_addr().expect("addr");
    let challenge = format!(r#"Bearer realm="http://{addr}/token",service="mock",scope="repository:mod:pull""#);
    let expected_basic = basic("alice", "pw");
    let art = a.clone();
    let mock = serve(
        listener,
        Arc::new(move |seen: &Seen| {
            if seen.path.starts_with("/token") {
                return if seen.auth() == Some(expected_basic.as_str()) {
                    respond(200, &[], r#"{"access_token":"T1","expires_in":300}"#)
                } else {
                    respond(401, &[], "")
                };
            }
            if seen.auth() != Some("Bearer T1") {
                return respond(401, &[("www-authenticate", challenge.as_str())], "");
            }
            registry_answer(&art, seen).unwrap_or_else(|| respond(404, &[], ""))
        }),
    );
    let alice = client(ClientOptions { credentials: credentials("alice", "pw"), ..ClientOptions::default() });
    let r = reference(mock.addr, "mod:v1");
    let pulled = alice.pull(&r).await.expect("pull with a token");
    assert_eq!(pulled.bytes, a.wasm);
    assert_eq!(pulled.manifest_digest, a.manifest_digest);
    // The token is reused: one token request for two pulls.
    alice.pull(&r).await.expect("second pull");
    let tokens: Vec<Seen> = mock.seen().into_iter().filter(|s| s.path.starts_with("/token")).collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].path, "/token?service=mock&scope=repository%3Amod%3Apull");

    // Wrong credentials: the token service refuses them.
    let mallory = client(ClientOptions { credentials: credentials("alice", "nope"), ..ClientOptions::default() });
    let e = mallory.pull(&r).await.expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, OciError::Unauthorized { status: 401, .. }), "{text}");
    assert!(text.contains("the token service refused the credentials"), "{text}");
    let anonymous = client(ClientOptions::default());
    let e = anonymous.pull(&r).await.expect_err("refused");
    assert!(e.to_string().contains("wants credentials and none are configured"), "{e}");
}

#[tokio::test]
async fn token_realm_on_another_host_over_plain_http_gets_no_credentials() {
    let a = Arc::new(artifact(500));
    let tokens = serve(
        listen([127, 0, 0, 2]).await,
        Arc::new(|seen: &Seen| {
            if seen.auth().is_some() {
                respond(400, &[], "credentials sent")
            } else {
                respond(200, &[], r#"{"token":"anon"}"#)
            }
        }),
    );
    let challenge = format!(r#"Bearer realm="http://{}/token",service="mock""#, tokens.addr);
    let art = a.clone();
    let registry = serve(
        listen([127, 0, 0, 1]).await,
        Arc::new(move |seen: &Seen| {
            if seen.auth() != Some("Bearer anon") {
                return respond(401, &[("www-authenticate", challenge.as_str())], "");
            }
            registry_answer(&art, seen).unwrap_or_else(|| respond(404, &[], ""))
        }),
    );
    let r = reference(registry.addr, "mod:v1");
    // Anonymous: a token from the other host, fine.
    let pulled = client(ClientOptions::default()).pull(&r).await.expect("anonymous token");
    assert_eq!(pulled.bytes, a.wasm);
    let seen = tokens.seen();
    assert_eq!(seen.len(), 1);
    // The scope the challenge left out is asked for.
    assert_eq!(seen[0].path, "/token?service=mock&scope=repository%3Amod%3Apull");

    // With credentials: refused before anything is sent.
    let alice = client(ClientOptions { credentials: credentials("alice", "pw"), ..ClientOptions::default() });
    let e = alice.pull(&r).await.expect_err("refused");
    let text = e.to_string();
    assert!(matches!(e, OciError::InsecureRefused { .. }), "{text}");
    assert!(text.contains(&format!("token realm on another host `{}`", tokens.addr)), "{text}");
    assert_eq!(tokens.seen().len(), 1);
}

#[tokio::test]
async fn redirects_only_to_the_same_host_unless_allowed() {
    let a = Arc::new(artifact(2_000));
    let wasm = a.wasm.clone();
    let cdn = serve(listen([127, 0, 0, 2]).await, Arc::new(move |_: &Seen| respond(200, &[], wasm.clone())));
    let cdn_addr = cdn.addr;
    let art = a.clone();
    let expected = basic("alice", "pw");
    let registry = serve(
        listen([127, 0, 0, 1]).await,
        Arc::new(move |seen: &Seen| {
            if seen.auth() != Some(expected.as_str()) {
                return respond(401, &[("www-authenticate", r#"Basic realm="mock""#)], "");
            }
            match seen.path.as_str() {
                // Tag `same`: the manifest moved on this host (relative).
                "/v2/mod/manifests/same" => respond(302, &[("location", "/v2/mod/manifests/v1")], ""),
                p if p == format!("/v2/mod/blobs/{}", art.layer_digest) => {
                    // Blobs live on another host.
                    let to = format!("http://{cdn_addr}/storage/blob?sig=1");
                    respond(307, &[("location", to.as_str())], "")
                }
                _ => registry_answer(&art, seen).unwrap_or_else(|| respond(404, &[], "")),
            }
        }),
    );
    let creds = credentials("alice", "pw");
    let strict = client(ClientOptions { credentials: creds.clone(), ..ClientOptions::default() });
    let e = strict.pull(&reference(registry.addr, "mod:same")).await.expect_err("cross-host redirect");
    let text = e.to_string();
    assert!(matches!(e, OciError::RedirectToOtherHost { .. }), "{text}");
    assert!(text.contains(&format!("another host `{cdn_addr}`")), "{text}");
    assert!(cdn.seen().is_empty());

    let lenient =
        client(ClientOptions { credentials: creds, allow_cross_host_redirects: true, ..ClientOptions::default() });
    let pulled = lenient.pull(&reference(registry.addr, "mod:same")).await.expect("followed");
    assert_eq!(pulled.bytes, a.wasm);
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1);
    assert_eq!(at_cdn[0].path, "/storage/blob?sig=1");
    assert_eq!(at_cdn[0].auth(), None, "credentials must not follow a redirect to another host");
    // The same-host redirect was followed with credentials.
    let paths: Vec<String> = registry.seen().iter().filter(|s| s.auth().is_some()).map(|s| s.path.clone()).collect();
    assert!(paths.contains(&"/v2/mod/manifests/v1".to_owned()), "{paths:?}");
}

#[tokio::test]
async fn a_streamed_layer_is_cut_off_at_its_limit() {
    // The manifest declares 100 KiB; the server streams 64 MiB without a
    // Content-Length.
    let wasm = component(100 << 10, 1);
    let a = Arc::new(artifact_declaring(wasm, 100 << 10));
    let sent = Arc::new(AtomicU64::new(0));
    let (art, counter) = (a.clone(), sent.clone());
    let mock = serve(
        listen([127, 0, 0, 1]).await,
        Arc::new(move |seen: &Seen| {
            if seen.path.starts_with("/v2/mod/blobs/") {
                let counter = counter.clone();
                let chunks = futures::stream::unfold(0u32, move |n| {
                    let counter = counter.clone();
                    async move {
                        if n >= 1024 {
                            return None;
                        }
                        counter.fetch_add(64 << 10, Ordering::Relaxed);
                        let mut chunk = vec![7u8; 64 << 10];
                        chunk[..4].copy_from_slice(b"\0asm");
                        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), n + 1))
                    }
                });
                return Response::new(BoxBody::new(StreamBody::new(chunks)));
            }
            registry_answer(&art, seen).unwrap_or_else(|| respond(404, &[], ""))
        }),
    );
    let started = Instant::now();
    let e = client(ClientOptions::default()).pull(&reference(mock.addr, "mod:v1")).await.expect_err("cut off");
    let text = e.to_string();
    assert!(matches!(e, OciError::TooLarge { limit: 102_400, size: None, .. }), "{text}");
    assert!(text.contains("its declared size"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let total = sent.load(Ordering::Relaxed);
    assert!(total < 16 << 20, "the server sent {total} bytes: the client read on");
}

#[tokio::test]
async fn digests_are_verified() {
    let a = Arc::new(artifact(1_000));
    let other = artifact(1_001);
    let lying_digest = other.manifest_digest.clone();
    let art = a.clone();
    let mock = serve(
        listen([127, 0, 0, 1]).await,
        Arc::new(move |seen: &Seen| match seen.path.as_str() {
            // A tag whose announced digest is not its content's.
            "/v2/mod/manifests/lying" => respond(
                200,
                &[("content-type", OCI_MANIFEST), ("docker-content-digest", lying_digest.as_str())],
                art.manifest.clone(),
            ),
            "/v2/bad/manifests/v1" => respond(200, &[("content-type", OCI_MANIFEST)], art.manifest.clone()),
            "/v2/short/manifests/v1" => respond(200, &[("content-type", OCI_MANIFEST)], art.manifest.clone()),
            p if p.starts_with("/v2/bad/blobs/") => {
                // Same size, other content.
                let mut wrong = art.wasm.clone();
                let last = wrong.len() - 1;
                wrong[last] ^= 1;
                respond(200, &[], wrong)
            }
            p if p.starts_with("/v2/short/blobs/") => respond(200, &[], art.wasm[..500].to_vec()),
            _ => registry_answer(&art, seen).unwrap_or_else(|| respond(404, &[], "")),
        }),
    );
    let c = client(ClientOptions::default());
    // Asked by a digest, served something else.
    let wanted = sha256_digest(b"another manifest");
    let e = c.pull(&reference(mock.addr, &format!("mod@{wanted}"))).await.expect_err("manifest digest");
    let text = e.to_string();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{text}");
    assert!(text.contains(&format!("expected {wanted}, got {}", a.manifest_digest)), "{text}");

    let e = c.pull(&reference(mock.addr, "mod:lying")).await.expect_err("announced digest");
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");

    let e = c.pull(&reference(mock.addr, "bad:v1")).await.expect_err("layer digest");
    let text = e.to_string();
    assert!(text.contains("digest mismatch for the layer") && text.contains(&a.layer_digest), "{text}");

    let e = c.pull(&reference(mock.addr, "short:v1")).await.expect_err("short layer");
    assert!(e.to_string().contains("has 500 bytes; its manifest declares 1000"), "{e}");

    // And the right one, for contrast.
    let ok = c.pull(&reference(mock.addr, &format!("mod@{}", a.manifest_digest))).await.expect("pull");
    assert_eq!(ok.bytes, a.wasm);
}

#[tokio::test]
async fn a_silent_registry_times_out() {
    let listener = listen([127, 0, 0, 1]).await;
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let c =
        Client::new(ClientOptions { insecure: true, timeout: Duration::from_millis(300), ..ClientOptions::default() });
    let started = Instant::now();
    let e = c.pull(&reference(addr, "mod:v1")).await.expect_err("timeout");
    assert!(matches!(e, OciError::Timeout { .. }) && e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("did not answer within 300ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    hold.abort();
}

#[tokio::test]
async fn push_protocol_details() {
    // A registry with Bearer auth, relative upload Locations, and a
    // manifest digest header; records everything.
    let listener = listen([127, 0, 0, 1]).await;
    let addr = listener.local_addr().expect("addr");
    let challenge = format!(r#"Bearer realm="http://{addr}/token",service="mock",scope="repository:mod:pull""#);
    // A layer the registry already has.
    let known = component(3_000, 9);
    let known_head = format!("/v2/mod/blobs/{}", sha256_digest(&known));
    let mock = serve(
        listener,
        Arc::new(move |seen: &Seen| {
            if seen.path.starts_with("/token") {
                return respond(200, &[], r#"{"token":"T"}"#);
            }
            if seen.auth() != Some("Bearer T") {
                return respond(401, &[("www-authenticate", challenge.as_str())], "");
            }
            match (seen.method.as_str(), seen.path.as_str()) {
                ("HEAD", p) if p == known_head => respond(200, &[], ""),
                ("HEAD", _) => respond(404, &[], ""),
                ("POST", "/v2/mod/blobs/uploads/") => respond(202, &[("location", "/v2/mod/blobs/uploads/u1")], ""),
                ("POST", "/v2/other/blobs/uploads/") => {
                    respond(202, &[("location", "http://127.0.0.2:1/v2/other/blobs/uploads/u2")], "")
                }
                ("PUT", p) if p.starts_with("/v2/mod/blobs/uploads/u1?digest=") => {
                    let digest = p.rsplit_once("digest=").map(|(_, d)| d.replace("%3A", ":")).unwrap_or_default();
                    if sha256_digest(&seen.body) == digest {
                        respond(201, &[("docker-content-digest", digest.as_str())], "")
                    } else {
                        respond(400, &[], r#"{"errors":[{"code":"DIGEST_INVALID","message":"bad digest"}]}"#)
                    }
                }
                ("PUT", "/v2/mod/manifests/v1" | "/v2/mod/manifests/known") => {
                    let digest = sha256_digest(&seen.body);
                    respond(201, &[("docker-content-digest", digest.as_str())], "")
                }
                ("PUT", "/v2/mod/manifests/lying") => {
                    respond(201, &[("docker-content-digest", sha256_digest(b"x").as_str())], "")
                }
                _ => respond(404, &[], ""),
            }
        }),
    );
    let c = client(ClientOptions::default());
    let wasm = component(4_000, 3);
    let digest = c.push(&reference(addr, "mod:v1"), &wasm, BTreeMap::new()).await.expect("push");
    let seen = mock.seen();
    let manifest_put = seen.iter().find(|s| s.path == "/v2/mod/manifests/v1").expect("manifest put");
    assert_eq!(sha256_digest(&manifest_put.body), digest);
    assert_eq!(manifest_put.headers.get("content-type").expect("content type"), OCI_MANIFEST);
    let layer_put = seen
        .iter()
        .find(|s| s.path == format!("/v2/mod/blobs/uploads/u1?digest={}", sha256_digest(&wasm).replace(':', "%3A")))
        .expect("layer put");
    assert_eq!(layer_put.body.as_ref(), wasm.as_slice());
    let token = seen.iter().find(|s| s.path.starts_with("/token")).expect("token");
    assert!(
        token.path.ends_with("scope=repository%3Amod%3Apull&scope=repository%3Amod%3Apull%2Cpush"),
        "{}",
        token.path
    );

    // A blob the registry has is not uploaded again.
    c.push(&reference(addr, "mod:known"), &known, BTreeMap::new()).await.expect("push known");
    let known_digest = sha256_digest(&known).replace(':', "%3A");
    let uploads: Vec<String> = mock.seen().iter().filter(|s| s.method == Method::PUT).map(|s| s.path.clone()).collect();
    assert!(!uploads.iter().any(|p| p.contains(&known_digest)), "{uploads:?}");

    let e = c.push(&reference(addr, "mod:lying"), &wasm, BTreeMap::new()).await.expect_err("lying digest");
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
    let e = c.push(&reference(addr, "other:v1"), &wasm, BTreeMap::new()).await.expect_err("upload elsewhere");
    assert!(matches!(e, OciError::RedirectToOtherHost { .. }) && e.to_string().contains("127.0.0.2:1"), "{e}");
}
