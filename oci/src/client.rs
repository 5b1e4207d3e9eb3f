//! The registry client: pull a module by tag or digest, push one under a
//! tag, with token and basic auth, redirect rules and size limits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::auth::{self, Challenge};
use crate::manifest::{self, Descriptor, Manifest, OCI_MANIFEST, WASM_CONFIG, WASM_LAYER};
use crate::transport::{self, ReadError, SendError, Tls};
use crate::{OciError, Reference, sha256_digest};

/// The `Docker-Content-Digest` header.
const CONTENT_DIGEST: &str = "docker-content-digest";
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Largest token-service answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;
/// Largest error body read for a message.
const MAX_ERROR_BODY: u64 = 16 << 10;

/// Query-value escaping: everything but unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A username and password, sent as HTTP Basic credentials to the
/// registry (on a `Basic` challenge) or to its token service (on a
/// `Bearer` challenge). `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"…").finish()
    }
}

impl Credentials {
    fn basic(&self) -> Option<HeaderValue> {
        let raw = format!("{}:{}", self.username, self.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// How a [`Client`] talks to registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on connecting and waiting for a response head, and on each
    /// wait for the next piece of a body (not on a whole download).
    pub timeout: Duration,
    /// Largest manifest read.
    pub max_manifest_size: u64,
    /// Largest Wasm layer read; checked against the manifest's declared
    /// size, the `Content-Length` and while the body streams.
    pub max_blob_size: u64,
    /// Credentials for the registry or its token service; none by default
    /// (anonymous pulls).
    pub credentials: Option<Credentials>,
    /// Speak plain HTTP to the registry instead of HTTPS. Refused for a
    /// host that is not loopback unless `allow_insecure_remote` is set.
    pub insecure: bool,
    /// Allow `insecure` for hosts that are not loopback.
    pub allow_insecure_remote: bool,
    /// Follow redirects (and upload locations) to other hosts than the
    /// registry's, e.g. a blob store or CDN. Credentials are never sent
    /// there. Off by default: such a redirect is an error naming the host.
    pub allow_cross_host_redirects: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            max_manifest_size: 4 << 20,
            max_blob_size: 64 << 20,
            credentials: None,
            insecure: false,
            allow_insecure_remote: false,
            allow_cross_host_redirects: false,
        }
    }
}

/// A module pulled from a registry, verified against its digests.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The tag that was resolved, when the reference had no digest
    /// (`latest` when it had neither).
    pub tag: Option<String>,
    /// The manifest's digest (`sha256:HEX`): what the tag resolved to,
    /// or the reference's own digest.
    pub manifest_digest: String,
    /// The Wasm layer's digest (`sha256:HEX`): the module's digest.
    pub layer_digest: String,
    /// The manifest as served (its sha256 is `manifest_digest`).
    pub manifest: Vec<u8>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The module (its sha256 is `layer_digest`).
    pub bytes: Vec<u8>,
}

/// A client for OCI registries (distribution spec v1.1). Cheap to clone;
/// clones share the TLS setup and the tokens already obtained.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    tls: Tls,
    /// `Authorization` values that worked, by registry, repository and
    /// whether push was asked; used first, dropped on a 401.
    auth: Mutex<HashMap<String, HeaderValue>>,
    user_agent: HeaderValue,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

/// One pull or push: the reference, its registry's base URL and the
/// `Authorization` value in use.
struct Session<'a> {
    reference: &'a Reference,
    shown: String,
    base: Uri,
    push: bool,
    auth: Option<HeaderValue>,
}

impl Session<'_> {
    fn key(&self) -> String {
        format!("{}|{}|{}", self.reference.registry(), self.reference.repository(), self.push)
    }

    fn url(&self, path: &str) -> Result<Uri, OciError> {
        let text = format!("{}{}", self.base.to_string().trim_end_matches('/'), path);
        text.parse().map_err(|e| self.protocol(format!("cannot form URL {text}: {e}")))
    }

    fn protocol(&self, reason: String) -> OciError {
        OciError::Protocol { reference: self.shown.clone(), reason }
    }
}

impl Client {
    /// A client with these options. No I/O happens until a request: the
    /// system's trusted roots are read on the first HTTPS connection.
    pub fn new(options: ClientOptions) -> Self {
        let user_agent = HeaderValue::from_static(concat!("weir-oci/", env!("CARGO_PKG_VERSION")));
        Client { inner: Arc::new(Inner { options, tls: Tls::default(), auth: Mutex::default(), user_agent }) }
    }

    /// The options it was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Whether this client may speak to `reference`'s registry at all:
    /// with `insecure`, the host must be loopback unless
    /// `allow_insecure_remote` is set. No network; what a config check
    /// calls.
    pub fn check(&self, reference: &Reference) -> Result<(), OciError> {
        let o = &self.inner.options;
        if o.insecure && !reference.is_loopback() && !o.allow_insecure_remote {
            return Err(OciError::InsecureRefused {
                reference: reference.to_string(),
                reason: format!(
                    "plain HTTP (`insecure`) is only allowed for loopback registries, and `{}` is not one; \
                     set `allow_insecure_remote` to allow it",
                    reference.host()
                ),
            });
        }
        Ok(())
    }

    /// Whether plain HTTP may be spoken to `host`.
    fn plain_http_allowed(&self, host: &str) -> bool {
        let o = &self.inner.options;
        o.insecure && (o.allow_insecure_remote || crate::reference::is_loopback_host(host))
    }

    fn session<'a>(&self, reference: &'a Reference, push: bool) -> Result<Session<'a>, OciError> {
        self.check(reference)?;
        let scheme = if self.inner.options.insecure { "http" } else { "https" };
        let shown = reference.to_string();
        let base: Uri = format!("{scheme}://{}/", reference.registry())
            .parse()
            .map_err(|e| OciError::InvalidReference { input: shown.clone(), reason: format!("{e}") })?;
        let mut session = Session { reference, shown, base, push, auth: None };
        session.auth = self.lock_auth().get(&session.key()).cloned();
        Ok(session)
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeaderValue>> {
        self.inner.auth.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pull the module `reference` names: its manifest (verified against
    /// the reference's digest, when it has one), then its one Wasm layer
    /// (verified against the manifest's digest for it). See the crate
    /// documentation for what is accepted.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        let mut s = self.session(reference, false)?;
        let target = reference.target().to_owned();
        let url = s.url(&format!("/v2/{}/manifests/{target}", reference.repository()))?;
        let mut headers = HeaderMap::new();
        let accept = [OCI_MANIFEST, manifest::DOCKER_MANIFEST, manifest::OCI_INDEX, manifest::DOCKER_LIST].join(", ");
        headers.insert(ACCEPT, HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("*/*")));
        let what = format!("manifest {target}");
        let response = self.call(&mut s, Method::GET, url, headers, Bytes::new(), true, &what).await?;
        let response = self.expect(&s, response, &[StatusCode::OK], &what).await?;
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let announced = header_str(&response, CONTENT_DIGEST);
        let bytes =
            self.read(&s, response, self.inner.options.max_manifest_size, "manifest (max_manifest_size)").await?;
        let manifest_digest = sha256_digest(&bytes);
        if let Some(expected) = reference.digest() {
            if expected != manifest_digest {
                return Err(mismatch(&s, "manifest", expected, &manifest_digest));
            }
        } else if let Some(announced) = announced.filter(|a| a.starts_with("sha256:"))
            && announced != manifest_digest
        {
            return Err(mismatch(
                &s,
                "manifest (as the registry's Docker-Content-Digest announced)",
                &announced,
                &manifest_digest,
            ));
        }
        let parsed = Manifest::parse(&s.shown, &bytes, &content_type)?;
        let layer = parsed.wasm_layer(&s.shown)?.clone();
        let wasm = self.blob(&mut s, &layer).await?;
        if !manifest::is_wasm(&wasm) {
            return Err(OciError::NotWasm { reference: s.shown.clone(), what: format!("layer {}", layer.digest) });
        }
        Ok(Pulled {
            tag: if reference.digest().is_none() { Some(target) } else { None },
            manifest_digest,
            layer_digest: layer.digest,
            manifest: bytes,
            annotations: parsed.annotations.unwrap_or_default(),
            bytes: wasm,
        })
    }

    /// Download a blob within the size limits and check its digest.
    async fn blob(&self, s: &mut Session<'_>, layer: &Descriptor) -> Result<Vec<u8>, OciError> {
        let max = self.inner.options.max_blob_size;
        let what = format!("layer {}", layer.digest);
        if layer.size > max {
            return Err(OciError::TooLarge {
                reference: s.shown.clone(),
                what: format!("{what} (max_blob_size)"),
                limit: max,
                size: Some(layer.size),
            });
        }
        let url = s.url(&format!("/v2/{}/blobs/{}", s.reference.repository(), layer.digest))?;
        let response = self.call(s, Method::GET, url, HeaderMap::new(), Bytes::new(), true, &what).await?;
        let response = self.expect(s, response, &[StatusCode::OK], &what).await?;
        // Never more than the manifest says: a body longer than declared
        // stops being read there.
        let bytes = self.read(s, response, layer.size, &format!("{what} (its declared size)")).await?;
        if bytes.len() as u64 != layer.size {
            return Err(OciError::Protocol {
                reference: s.shown.clone(),
                reason: format!("{what} has {} bytes; its manifest declares {}", bytes.len(), layer.size),
            });
        }
        let got = sha256_digest(&bytes);
        if got != layer.digest {
            return Err(mismatch(s, "layer", &layer.digest, &got));
        }
        Ok(bytes)
    }

    /// Push `wasm` as `reference` (which must have a tag and no digest):
    /// the config blob (`application/vnd.wasm.config.v0+json`) and the
    /// layer (`application/wasm`), each skipped when the registry has it,
    /// then the manifest (OCI image manifest, with `annotations`) under
    /// the tag. Returns the manifest's digest (`sha256:HEX`), the one to
    /// pin.
    ///
    /// The config's `created` time is the
    /// `org.opencontainers.image.created` annotation when given (so a
    /// repeated push gives the same digest), else now.
    pub async fn push(
        &self,
        reference: &Reference,
        wasm: &[u8],
        annotations: BTreeMap<String, String>,
    ) -> Result<String, OciError> {
        let (Some(tag), None) = (reference.tag(), reference.digest()) else {
            return Err(OciError::InvalidReference {
                input: reference.to_string(),
                reason: "a push needs a tag and no digest (`oci://HOST/REPO:TAG`)".into(),
            });
        };
        if !manifest::is_wasm(wasm) {
            return Err(OciError::NotWasm { reference: reference.to_string(), what: "module to push".into() });
        }
        let mut s = self.session(reference, true)?;
        let layer_digest = sha256_digest(wasm);
        let config = manifest::wasm_config(wasm, &layer_digest, &annotations);
        let config_digest = sha256_digest(&config);
        let config_size = config.len() as u64;
        self.upload(&mut s, Bytes::from(config), &config_digest).await?;
        self.upload(&mut s, Bytes::copy_from_slice(wasm), &layer_digest).await?;

        let descriptor = |media_type: &str, digest: &str, size: u64| Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            annotations: None,
        };
        let body = manifest::wasm_manifest(
            descriptor(WASM_CONFIG, &config_digest, config_size),
            descriptor(WASM_LAYER, &layer_digest, wasm.len() as u64),
            annotations,
        );
        let digest = sha256_digest(&body);
        let url = s.url(&format!("/v2/{}/manifests/{tag}", reference.repository()))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(OCI_MANIFEST));
        let what = format!("manifest upload for tag {tag}");
        let response = self.call(&mut s, Method::PUT, url, headers, Bytes::from(body), false, &what).await?;
        let response = self.expect(&s, response, &[StatusCode::CREATED], &what).await?;
        if let Some(announced) = header_str(&response, CONTENT_DIGEST)
            && announced != digest
        {
            return Err(mismatch(&s, "pushed manifest (the registry's Docker-Content-Digest)", &digest, &announced));
        }
        Ok(digest)
    }

    /// Upload one blob unless the registry has it: POST for a session,
    /// then one monolithic PUT with the digest.
    async fn upload(&self, s: &mut Session<'_>, bytes: Bytes, digest: &str) -> Result<(), OciError> {
        let repo = s.reference.repository().to_owned();
        let what = format!("blob {digest}");
        let url = s.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let head = self.call(s, Method::HEAD, url, HeaderMap::new(), Bytes::new(), false, &what).await?;
        let status = head.status();
        if status == StatusCode::OK || status.is_redirection() {
            return Ok(());
        }
        if status != StatusCode::NOT_FOUND {
            self.expect(s, head, &[StatusCode::OK], &what).await?;
        }

        let what = format!("upload of blob {digest}");
        let url = s.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let started = self.call(s, Method::POST, url.clone(), headers, Bytes::new(), false, &what).await?;
        let started = self.expect(s, started, &[StatusCode::ACCEPTED, StatusCode::CREATED], &what).await?;
        if started.status() == StatusCode::CREATED {
            return Ok(());
        }
        let location = header_str(&started, LOCATION.as_str())
            .ok_or_else(|| s.protocol(format!("the registry started the {what} without a Location")))?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={}", utf8_percent_encode(digest, QUERY));
        let target = transport::resolve(&url, &put)
            .ok_or_else(|| s.protocol(format!("unusable upload Location `{location}`")))?;
        self.check_target(s, &target)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let done = self.call(s, Method::PUT, target, headers, bytes, false, &what).await?;
        let done = self.expect(s, done, &[StatusCode::CREATED], &what).await?;
        if let Some(announced) = header_str(&done, CONTENT_DIGEST)
            && announced != digest
        {
            return Err(mismatch(s, "uploaded blob (the registry's Docker-Content-Digest)", digest, &announced));
        }
        Ok(())
    }

    /// Whether a redirect or upload location may be followed.
    fn check_target(&self, s: &Session<'_>, target: &Uri) -> Result<(), OciError> {
        if !transport::same_authority(target, &s.base) && !self.inner.options.allow_cross_host_redirects {
            return Err(OciError::RedirectToOtherHost {
                reference: s.shown.clone(),
                target: transport::host_port(target),
            });
        }
        match target.scheme_str() {
            Some("https") => Ok(()),
            Some("http") if self.plain_http_allowed(target.host().unwrap_or_default()) => Ok(()),
            _ => Err(OciError::InsecureRefused {
                reference: s.shown.clone(),
                reason: format!(
                    "the registry redirected to `{target}`, which is not HTTPS (or plain HTTP allowed by `insecure`)"
                ),
            }),
        }
    }

    /// One request, with the session's `Authorization` when it goes to
    /// the registry; on a 401 from the registry, answer its challenge
    /// once and retry; with `follow`, follow redirects within the rules.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        s: &mut Session<'_>,
        mut method: Method,
        mut url: Uri,
        headers: HeaderMap,
        body: Bytes,
        follow: bool,
        what: &str,
    ) -> Result<Response<Incoming>, OciError> {
        let mut answered_challenge = false;
        let mut redirects = 0;
        loop {
            let to_registry = transport::same_authority(&url, &s.base);
            let mut h = headers.clone();
            h.insert(USER_AGENT, self.inner.user_agent.clone());
            if to_registry && let Some(auth) = &s.auth {
                h.insert(AUTHORIZATION, auth.clone());
            }
            let response = self.send(s, method.clone(), &url, h, body.clone(), what).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && to_registry && !answered_challenge {
                answered_challenge = true;
                let challenges = auth::challenges(response.headers());
                drop(response);
                let value = self.answer(s, &challenges, what).await?;
                self.lock_auth().insert(s.key(), value.clone());
                s.auth = Some(value);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && to_registry {
                self.lock_auth().remove(&s.key());
            }
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            if !(follow && redirect) {
                return Ok(response);
            }
            let location = header_str(&response, LOCATION.as_str())
                .ok_or_else(|| s.protocol(format!("redirect {status} without a Location for the {what}")))?;
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(s.protocol(format!("more than {MAX_REDIRECTS} redirects for the {what}")));
            }
            let target = transport::resolve(&url, &location)
                .ok_or_else(|| s.protocol(format!("unusable redirect Location `{location}` for the {what}")))?;
            self.check_target(s, &target)?;
            if status == StatusCode::SEE_OTHER {
                method = Method::GET;
            }
            url = target;
        }
    }

    /// The `Authorization` value answering a 401's challenges.
    async fn answer(&self, s: &Session<'_>, challenges: &[Challenge], what: &str) -> Result<HeaderValue, OciError> {
        let credentials = self.inner.options.credentials.as_ref();
        let unauthorized = |detail: String| OciError::Unauthorized {
            reference: s.shown.clone(),
            status: 401,
            what: what.to_owned(),
            detail: format!(": {detail}"),
        };
        match challenges.first() {
            None => Err(unauthorized("the registry sent no usable WWW-Authenticate challenge".into())),
            Some(Challenge::Basic) => match credentials.and_then(Credentials::basic) {
                Some(value) => Ok(value),
                None => Err(unauthorized("the registry asks for credentials (Basic) and none are configured".into())),
            },
            Some(Challenge::Bearer { realm, service, scope }) => {
                self.token(s, realm, service.as_deref(), scope.as_deref(), what).await
            }
        }
    }

    /// Get a token from a Bearer challenge's realm.
    async fn token(
        &self,
        s: &Session<'_>,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        what: &str,
    ) -> Result<HeaderValue, OciError> {
        let realm_uri: Uri = realm
            .parse()
            .ok()
            .filter(|u: &Uri| u.host().is_some() && matches!(u.scheme_str(), Some("http" | "https")))
            .ok_or_else(|| s.protocol(format!("the registry's token realm `{realm}` is not an http(s) URL")))?;
        let realm_host = realm_uri.host().unwrap_or_default();
        let plain = realm_uri.scheme_str() == Some("http");
        if plain && !self.plain_http_allowed(realm_host) {
            return Err(OciError::InsecureRefused {
                reference: s.shown.clone(),
                reason: format!("the registry's token realm `{realm}` is plain HTTP, and `insecure` does not allow it"),
            });
        }
        let mut query: Vec<String> = Vec::new();
        if let Some(service) = service {
            query.push(format!("service={}", utf8_percent_encode(service, QUERY)));
        }
        let actions = if s.push { "pull,push" } else { "pull" };
        let own = format!("repository:{}:{actions}", s.reference.repository());
        if let Some(scope) = scope.filter(|sc| *sc != own) {
            query.push(format!("scope={}", utf8_percent_encode(scope, QUERY)));
        }
        query.push(format!("scope={}", utf8_percent_encode(&own, QUERY)));
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url_text = format!("{realm}{separator}{}", query.join("&"));
        let url: Uri = url_text.parse().map_err(|e| s.protocol(format!("token URL `{url_text}`: {e}")))?;

        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, self.inner.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(credentials) = &self.inner.options.credentials {
            let same_host = realm_host.eq_ignore_ascii_case(s.base.host().unwrap_or_default());
            if plain && !same_host {
                return Err(OciError::InsecureRefused {
                    reference: s.shown.clone(),
                    reason: format!(
                        "refusing to send credentials over plain HTTP to the token realm on another host `{}`",
                        transport::host_port(&realm_uri)
                    ),
                });
            }
            if let Some(value) = credentials.basic() {
                headers.insert(AUTHORIZATION, value);
            }
        }
        let token_what = format!("a token for the {what} from {realm}");
        let response = self.send(s, Method::GET, &url, headers, Bytes::new(), &token_what).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = error_detail(response, self.inner.options.timeout).await;
            let why = if self.inner.options.credentials.is_some() {
                "the token service refused the credentials"
            } else {
                "the token service wants credentials and none are configured"
            };
            return Err(OciError::Unauthorized {
                reference: s.shown.clone(),
                status: status.as_u16(),
                what: token_what,
                detail: format!(": {why}{detail}"),
            });
        }
        let response = self.expect(s, response, &[StatusCode::OK], &token_what).await?;
        let body = self.read(s, response, MAX_TOKEN_ANSWER, "token service's answer").await?;
        let token = auth::token(&body).map_err(|reason| s.protocol(reason))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| s.protocol("the token service's token is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Send, mapping transport failures to errors naming the reference.
    async fn send(
        &self,
        s: &Session<'_>,
        method: Method,
        url: &Uri,
        headers: HeaderMap,
        body: Bytes,
        what: &str,
    ) -> Result<Response<Incoming>, OciError> {
        let timeout = self.inner.options.timeout;
        transport::send(&self.inner.tls, method, url, headers, body, timeout).await.map_err(|e| match e {
            SendError::Unreachable(reason) => OciError::Unreachable { reference: s.shown.clone(), reason },
            SendError::Tls(reason) => OciError::Tls { reference: s.shown.clone(), reason },
            SendError::Timeout => OciError::Timeout { reference: s.shown.clone(), what: what.to_owned(), timeout },
        })
    }

    /// The response if its status is one of `ok`, else the error for it.
    async fn expect(
        &self,
        s: &Session<'_>,
        response: Response<Incoming>,
        ok: &[StatusCode],
        what: &str,
    ) -> Result<Response<Incoming>, OciError> {
        let status = response.status();
        if ok.contains(&status) {
            return Ok(response);
        }
        let detail = error_detail(response, self.inner.options.timeout).await;
        let (reference, what) = (s.shown.clone(), what.to_owned());
        Err(match status {
            StatusCode::NOT_FOUND => OciError::NotFound { reference, what, detail },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                OciError::Unauthorized { reference, status: status.as_u16(), what, detail }
            }
            _ => OciError::Status { reference, status: status.as_u16(), what, detail },
        })
    }

    /// Read a body within `limit` bytes.
    async fn read(
        &self,
        s: &Session<'_>,
        response: Response<Incoming>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, OciError> {
        let timeout = self.inner.options.timeout;
        transport::read_limited(response, limit, timeout).await.map_err(|e| match e {
            ReadError::TooLarge(size) => {
                OciError::TooLarge { reference: s.shown.clone(), what: what.to_owned(), limit, size }
            }
            ReadError::Broken(reason) => {
                OciError::Unreachable { reference: s.shown.clone(), reason: format!("reading the {what}: {reason}") }
            }
            ReadError::Timeout => {
                OciError::Timeout { reference: s.shown.clone(), what: format!("reading the {what}"), timeout }
            }
        })
    }
}

fn mismatch(s: &Session<'_>, what: &str, expected: &str, got: &str) -> OciError {
    OciError::DigestMismatch {
        reference: s.shown.clone(),
        what: what.to_owned(),
        expected: expected.to_owned(),
        got: got.to_owned(),
    }
}

fn header_str(response: &Response<Incoming>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The registry's error text (`CODE: message` from the distribution error
/// JSON, or the start of the body), `: `-prefixed, or empty.
async fn error_detail(response: Response<Incoming>, timeout: Duration) -> String {
    let Ok(body) = transport::read_limited(response, MAX_ERROR_BODY, timeout.min(Duration::from_secs(5))).await else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body)
        && !e.errors.is_empty()
    {
        let parts: Vec<String> =
            e.errors.iter().map(|e| format!("{} {}", e.code, e.message).trim().to_owned()).collect();
        return format!(": {}", parts.join("; "));
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        return String::new();
    }
    let short: String = text.chars().take(200).collect();
    format!(": {short}")
}
