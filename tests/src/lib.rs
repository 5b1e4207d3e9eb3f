//! Test harness for weir: everything real, on loopback.
//!
//! * [`fixtures`] builds every plugin (built-in and test-only) for
//!   `wasm32-wasip2` once per test run, with cargo, into the usual
//!   `target/wasm32-wasip2/release/`.
//! * [`Upstream`] is a real HTTP server that echoes what it received as JSON.
//! * [`TestGateway`] starts the real gateway (the `weir` library) on
//!   ephemeral ports from a config written to a temporary folder.
//! * [`Client`] is a plain HTTP/1.1 client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Where cargo puts the wasm plugins.
pub fn wasm_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    target.join("wasm32-wasip2").join("release")
}

/// Build all plugins for wasm32-wasip2 (once per process) and return the
/// folder holding the `.wasm` files.
pub fn fixtures() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let mut packages = Vec::new();
        for dir in ["plugins", "tests/plugins"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
            for e in entries.flatten() {
                let manifest = e.path().join("Cargo.toml");
                if let Ok(text) = std::fs::read_to_string(&manifest)
                    && let Some(name) = text.lines().find_map(|l| l.strip_prefix("name = \""))
                {
                    packages.push(name.trim_end_matches('"').to_owned());
                }
            }
        }
        packages.sort();
        let mut cmd = cargo();
        cmd.current_dir(&root).args(["build", "--release", "--target", "wasm32-wasip2"]);
        for p in &packages {
            cmd.args(["-p", p]);
        }
        let status = cmd.status().expect("run cargo to build the wasm fixtures");
        assert!(status.success(), "building wasm fixtures failed (is `rustup target add wasm32-wasip2` done?)");
        wasm_dir()
    })
}

/// A `cargo` command that builds as `cargo test` was run from the shell.
///
/// The test process carries the variables cargo sets for a crate
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Build scripts such as ring's
/// ask to rerun when those change, so passing them on would rebuild ring
/// (and all that depends on it) in the nested build, and again in the next
/// outer one. The outer build's flags are not passed on either.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (var, _) in std::env::vars_os() {
        let Some(name) = var.to_str() else { continue };
        let crate_var = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_BIN_")
            || matches!(name, "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR");
        let flags =
            matches!(name, "RUSTFLAGS" | "CARGO_ENCODED_RUSTFLAGS" | "RUSTC_WORKSPACE_WRAPPER" | "CARGO_BUILD_TARGET");
        if crate_var || flags {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Path of one built module, e.g. `fixture("add_header.wasm")`.
pub fn fixture(file: &str) -> PathBuf {
    let p = fixtures().join(file);
    assert!(p.exists(), "fixture {} missing", p.display());
    p
}

/// This process's resident set, KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number")
}

/// A free loopback port (bound, then released for a process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The `weir` binary, built on first use.
pub fn weir_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = cargo()
            .current_dir(workspace_root())
            // `--workspace` so features unify exactly as in `cargo test --workspace`
            // and wasmtime is not compiled a second time.
            .args(["build", "--release", "--workspace", "--bins"])
            .status()
            .expect("run cargo to build weir");
        assert!(status.success(), "building weir failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
        target.join("release").join("weir")
    })
}

pub mod tls;

// ---- upstream ----------------------------------------------------------

/// A real upstream server: answers every request with a JSON echo of it.
///
/// The reply has header `x-upstream: NAME` and body `{"upstream", "method",
/// "uri", "version", "headers": {name: [values]}, "body"}`, plus `"tls":
/// {"sni", "alpn", "client"}` when it serves TLS. It speaks HTTP/1.1 and
/// HTTP/2 (prior knowledge in cleartext, ALPN over TLS).
/// A request header `x-delay-ms: N` delays the answer; `x-status: N` sets
/// the status; `x-response-cache-control: V` becomes the answer's
/// `Cache-Control`. Requests to `/healthz` are answered 200 and counted
/// apart, in [`Upstream::health_checks`].
///
/// [`Upstream::kill`] closes the listener and every open connection, as a
/// crashed process would; [`Upstream::revive`] listens on the same port again.
pub struct Upstream {
    /// Listening address.
    pub addr: SocketAddr,
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    /// Added to every answer's delay, in ms (a slow target).
    pub delay_ms: Arc<AtomicUsize>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Upstream {
    /// Start on an ephemeral loopback port.
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), name).await
    }

    /// Start on a given address.
    pub async fn start_on(addr: SocketAddr, name: &str) -> Self {
        Self::start_with(addr, name, None).await
    }

    /// Start serving TLS with `config` (see [`Pki::server_config`]).
    pub async fn start_tls(name: &str, config: rustls::ServerConfig) -> Self {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), name, Some(Arc::new(config))).await
    }

    async fn start_with(addr: SocketAddr, name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let mut up = Self {
            addr,
            name: name.into(),
            hits: Arc::default(),
            checks: Arc::default(),
            conns: Arc::default(),
            delay_ms: Arc::default(),
            tls,
            stop: None,
        };
        up.listen().await;
        up
    }

    async fn listen(&mut self) {
        let listener = bind_retrying(self.addr).await;
        self.addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let name = self.name.clone();
        let (hits, checks, delay) = (self.hits.clone(), self.checks.clone(), self.delay_ms.clone());
        let conns = self.conns.clone();
        let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let mut on_stop = stopped.clone();
        tokio::spawn(async move {
            loop {
                // `biased`, stop first: after `kill` nothing more is accepted.
                let (stream, _) = tokio::select! {
                    biased;
                    _ = on_stop.changed() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (name, hits, checks, delay) = (name.clone(), hits.clone(), checks.clone(), delay.clone());
                let mut on_stop = stopped.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let counters = EchoCounters { name, hits, checks, delay };
                    let conn: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match acceptor {
                        None => Box::pin(serve_echo(TokioIo::new(stream), counters, None)),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let (_, c) = tls.get_ref();
                                let info = serde_json::json!({
                                    "sni": c.server_name(),
                                    "alpn": c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                                    "client": c.peer_certificates().and_then(|certs| certs.first()).map(|der| subject(der)),
                                });
                                Box::pin(serve_echo(TokioIo::new(tls), counters, Some(info)))
                            }
                            Err(_) => return,
                        },
                    };
                    // `biased`, stop first: a request that reaches a kept-alive
                    // connection after `kill` finds it closed, never answered
                    // (an unbiased select picked either at random).
                    tokio::select! {
                        biased;
                        _ = on_stop.changed() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        self.stop = Some(stop);
    }

    /// Requests received so far (health checks apart).
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Health checks (`GET /healthz`) received so far.
    pub fn health_checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    /// Stop listening and drop every connection, in flight or idle.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }

    /// Listen on the same address again.
    pub async fn revive(&mut self) {
        self.kill();
        self.listen().await;
    }
}

/// What an [`Upstream`] connection counts and how slow it is.
struct EchoCounters {
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    delay: Arc<AtomicUsize>,
}

/// Serve the echo on one connection (HTTP/1.1 or HTTP/2).
async fn serve_echo<I>(io: I, c: EchoCounters, tls: Option<serde_json::Value>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let (name, delay, tls) = (c.name.clone(), c.delay.load(Ordering::SeqCst), tls.clone());
        if req.uri().path() == "/healthz" {
            c.checks.fetch_add(1, Ordering::SeqCst);
        } else {
            c.hits.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay as u64)).await;
            }
            echo(name, req, tls).await
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
}

/// A certificate's subject, e.g. `CN=client-1`.
pub fn subject(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der).map(|(_, c)| c.subject().to_string()).unwrap_or_default()
}

/// Bind `addr`, retrying for a moment: a port just given up by a killed
/// upstream can take a little while to be free again.
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    TcpListener::bind(addr).await.expect("bind upstream")
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn echo(
    name: Arc<str>,
    req: Request<Incoming>,
    tls: Option<serde_json::Value>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Some(ms) = parts.headers.get("x-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let entry = headers.entry(k.as_str()).or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(a) = entry {
            a.push(String::from_utf8_lossy(v.as_bytes()).into_owned().into());
        }
    }
    let mut doc = serde_json::json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    if let Some(tls) = tls {
        doc["tls"] = tls;
    }
    let status = parts
        .headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", "application/json".parse().expect("static"));
    resp.headers_mut().insert("x-upstream", name.parse().expect("upstream name is a header value"));
    if let Some(cc) = parts.headers.get("x-response-cache-control") {
        resp.headers_mut().insert("cache-control", cc.clone());
    }
    Ok(resp)
}

// ---- load ----------------------------------------------------------------

/// Clients sending GETs in a loop until [`Load::stop`]; counts answers by
/// upstream name, and failures (any answer but 200, or no answer).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    by_upstream: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` clients sending `GET url` in a loop.
    pub fn start(url: String, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let by_upstream = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, by, url) =
                    (stop.clone(), ok.clone(), failed.clone(), by_upstream.clone(), url.clone());
                tokio::spawn(async move {
                    let client = Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let name = r.header("x-upstream").unwrap_or("?").to_owned();
                                *by.lock().expect("lock").entry(name).or_insert(0) += 1;
                            }
                            Ok(r) => {
                                eprintln!("failed: {} {}", r.status, r.text());
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, by_upstream, tasks }
    }

    /// Answers by upstream name (`x-upstream`) since the last call.
    pub fn share(&self) -> std::collections::HashMap<String, usize> {
        std::mem::take(&mut *self.by_upstream.lock().expect("lock"))
    }

    /// Stop; requests answered 200, and the others.
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

// ---- python peers --------------------------------------------------------

/// A real protocol peer in Python (`tests/grpc/peer.py`, `tests/ws/peer.py`):
/// a server on a port of its choosing, killed when dropped (its stdin is a
/// pipe, so it also ends when the test process does).
///
/// `scripts/test.sh` installs what they need (`grpcio`, `websockets`).
pub struct PyPeer {
    _child: tokio::process::Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl PyPeer {
    /// Start `python3 tests/{script} server` and wait for its `PORT n` line.
    pub async fn server(script: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .arg(workspace_root().join("tests").join(script))
            .arg("server")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{script} printed no port in 20 s"))
            .expect("read")
            .unwrap_or_else(|| panic!("{script} ended without a port (run scripts/test.sh to install its packages)"));
        let port = line.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()).expect("PORT line");
        Self { _child: child, port }
    }
}

/// Run `python3 tests/{script} client ARGS...` and parse the JSON line it prints.
pub async fn py_client(script: &str, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .arg(workspace_root().join("tests").join(script))
        .arg("client")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("python3 {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!("{script} client {args:?}: no JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

// ---- webhook -------------------------------------------------------------

/// A webhook receiver: records the JSON body of every POST to `/hook`.
pub struct WebhookServer {
    /// Where to POST, e.g. `http://127.0.0.1:40123/hook`.
    pub url: String,
    received: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _stop: oneshot::Sender<()>,
}

impl WebhookServer {
    /// Start on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let received: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let store = received.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => break,
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let post = req.method() == Method::POST && req.uri().path() == "/hook";
                            let body = req.into_body().collect().await?.to_bytes();
                            if post {
                                let doc = serde_json::from_slice(&body).unwrap_or_else(|_| {
                                    serde_json::Value::String(String::from_utf8_lossy(&body).into())
                                });
                                store.lock().expect("webhook store").push(doc);
                            }
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { url, received, _stop: stop }
    }

    /// The JSON bodies received so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("webhook store").clone()
    }
}

// ---- client ------------------------------------------------------------

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first value the upstream saw for a request header (echo body).
    pub fn seen(&self, header: &str) -> Option<String> {
        self.json()["headers"][header][0].as_str().map(str::to_owned)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A small HTTP/1.1 client with connection reuse.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A new client.
    pub fn new() -> Self {
        Self { inner: HyperClient::builder(TokioExecutor::new()).build_http() }
    }

    /// Send a request.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let resp = self.inner.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, url, &[], "").await
    }

    /// Any request.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?).await
    }
}

// ---- gateway -------------------------------------------------------------

/// A running gateway on ephemeral ports, with its own folder.
pub struct TestGateway {
    /// The proxy's base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// The admin base URL.
    pub admin: String,
    /// The TLS listener's address, with `[server.tls]`.
    pub tls: Option<SocketAddr>,
    /// The folder holding `gateway.toml` and `plugins/`.
    pub dir: tempfile::TempDir,
    /// A client.
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The `[server]` and `[runtime]` sections tests use: ephemeral ports, a
/// small instance pool (many gateways share one test process).
pub fn server_section() -> String {
    "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nplugins_dir = \"plugins\"\n\n\
     [runtime]\nmax_instances = 64\n\n"
        .to_owned()
}

/// [`server_section`] with `keys` added to `[server]`.
pub fn server_with(keys: &str) -> String {
    if keys.is_empty() {
        return server_section();
    }
    server_section().replacen("\n\n", &format!("\n{keys}\n\n"), 1)
}

impl TestGateway {
    /// Write `body` (everything but `[server]`/`[runtime]`) as the config,
    /// copy the named modules into `plugins/`, and start the gateway.
    pub async fn start(body: &str, modules: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::prepare(dir.path(), "", body, modules);
        Self::start_in(dir).await
    }

    /// Like [`TestGateway::start`] with no modules, with `server_keys`
    /// (e.g. `header_read_timeout = "1s"`) added to the `[server]` section.
    pub async fn start_with_server(server_keys: &str, body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::prepare(dir.path(), server_keys, body, &[]);
        Self::start_in(dir).await
    }

    /// Write the config into `dir` (with `server_keys` added to `[server]`;
    /// they may end with a `[server.tls]` table) and copy the named modules
    /// into `plugins/`, for [`TestGateway::start_in`].
    pub fn prepare(dir: &Path, server_keys: &str, body: &str, modules: &[&str]) {
        std::fs::create_dir_all(dir.join("plugins")).expect("plugins dir");
        for m in modules {
            std::fs::copy(fixture(m), dir.join("plugins").join(m)).expect("copy module");
        }
        std::fs::write(dir.join("gateway.toml"), format!("{}{body}", server_with(server_keys))).expect("write config");
    }

    /// Start a gateway on an already prepared folder.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        init_logging();
        let gateway = match weir::Gateway::load(dir.path().join("gateway.toml")).await {
            Ok(g) => g,
            Err(e) => panic!("gateway failed to load:\n{e}"),
        };
        let bound = gateway.bind().await.expect("bind");
        let url = format!("http://{}", bound.proxy_addr());
        let admin = format!("http://{}", bound.admin_addr().expect("admin listener"));
        let tls = bound.tls_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Self { url, admin, tls, dir, client: Client::new(), stop: Some(stop), task: Some(task) }
    }

    /// `GET {url}{path}`.
    pub async fn get(&self, path: &str) -> Reply {
        self.client.get(&format!("{}{path}", self.url)).await.expect("request to gateway")
    }

    /// A request to the proxy.
    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.client.request(method, &format!("{}{path}", self.url), headers, body).await.expect("request to gateway")
    }

    /// `GET /admin/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        self.client.get(&format!("{}/admin/status", self.admin)).await.expect("admin status").json()
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.client.get(&format!("{}/metrics", self.admin)).await.expect("metrics").text()
    }

    /// The plugins folder.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Replace the config body (the server section is kept), atomically.
    pub fn write_config(&self, body: &str) {
        write_atomic(&self.dir.path().join("gateway.toml"), format!("{}{body}", server_section()).as_bytes());
    }

    /// Replace the whole config, `[server]` keys included, atomically.
    pub fn write_config_with_server(&self, server_keys: &str, body: &str) {
        write_atomic(&self.dir.path().join("gateway.toml"), format!("{}{body}", server_with(server_keys)).as_bytes());
    }

    /// Wait until the serving generation is at least `generation`.
    pub async fn wait_generation(&self, generation: u64) -> serde_json::Value {
        wait_for(Duration::from_secs(10), || async {
            let s = self.status().await;
            (s["generation"].as_u64() >= Some(generation)).then_some(s)
        })
        .await
        .unwrap_or_else(|| panic!("generation {generation} not reached"))
    }

    /// Wait until `/admin/status` reports a reload error, and return it.
    pub async fn wait_reload_error(&self) -> String {
        wait_for(Duration::from_secs(10), || async {
            self.status().await["last_reload_error"].as_str().map(str::to_owned)
        })
        .await
        .expect("a reload error")
    }

    /// Stop the gateway and wait for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Gateway logs go to the test's output; `WEIR_LOG` filters (default `warn`).
pub fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Write a file by writing a sibling and renaming it over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- redis ---------------------------------------------------------------

/// A real `redis-server` on a Unix socket in its own folder (no TCP port
/// to race other tests for), stopped when dropped.
///
/// `scripts/test.sh` installs Redis on a fresh machine (`apt-get install
/// redis-server`); tests that need it fail with that hint when it is missing.
pub struct RedisServer {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start a fresh server.
    pub fn start() -> Self {
        let mut server = Self { child: None, dir: tempfile::tempdir().expect("tempdir") };
        server.restart();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Stop the server (connections drop, the socket refuses).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Start (again) on the same socket, empty, and wait until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it with `apt-get install redis-server` (scripts/test.sh does)")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(std::time::Instant::now() < deadline, "redis-server did not answer PING at {}", self.url());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send one command; its first reply line (e.g. `+OK`, `-ERR ...`), or
    /// `None` when the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- gateway as a process -------------------------------------------------

/// The `weir` binary running as its own process (`weir run`), on ports the
/// kernel picks (read back from its log), with its log captured; killed when
/// dropped. For tests of several gateway nodes.
pub struct GatewayProcess {
    /// The proxy's base URL.
    pub url: String,
    /// The admin base URL.
    pub admin: String,
    /// The folder holding `gateway.toml`, `plugins/` and `weir.log`.
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl GatewayProcess {
    /// Write `body` (everything but `[server]`) as the config, copy the named
    /// modules, run `weir run` and wait until it is ready.
    pub async fn start(body: &str, modules: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        for m in modules {
            std::fs::copy(fixture(m), dir.path().join("plugins").join(m)).expect("copy module");
        }
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nplugins_dir = \"plugins\"\n\n\
             [runtime]\nmax_instances = 128\n\n{body}"
        );
        std::fs::write(dir.path().join("gateway.toml"), config).expect("write config");
        let log = std::fs::File::create(dir.path().join("weir.log")).expect("log file");
        let mut child = Command::new(weir_binary())
            .args(["run", "--workers", "2", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weir");
        let read_log = || std::fs::read_to_string(dir.path().join("weir.log")).unwrap_or_default();
        let addrs = wait_for(Duration::from_secs(30), || async {
            let log = read_log();
            Some((listening(&log, "proxy listening")?, listening(&log, "admin listening")?))
        })
        .await;
        let Some((proxy, admin)) = addrs else {
            let _ = child.kill();
            panic!("weir did not start listening:\n{}", read_log());
        };
        let gw = Self { url: format!("http://{proxy}"), admin: format!("http://{admin}"), dir, child };
        let client = Client::new();
        let ready = wait_for(Duration::from_secs(30), || async {
            client.get(&format!("{}/readyz", gw.admin)).await.ok().filter(|r| r.status == 200)
        })
        .await;
        assert!(ready.is_some(), "weir did not become ready:\n{}", gw.log());
        gw
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        let kill = format!("kill -TERM {}", self.child.id());
        assert!(Command::new("sh").args(["-c", &kill]).status().expect("sh").success());
    }

    /// Wait up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }
}

/// The address on the log line containing `what` (`... what addr=IP:PORT`).
fn listening(log: &str, what: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains(what))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    addr.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':').parse().ok()
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- OCI registry ---------------------------------------------------------

/// A real OCI registry (the CNCF distribution registry, Debian's
/// `docker-registry`) on a free loopback port, its storage in its own
/// folder, anonymous read and write; stopped when dropped.
///
/// `scripts/test.sh` installs it on a fresh machine; tests that need it
/// fail with that hint when it is missing.
pub struct Registry {
    child: Option<std::process::Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start one and wait until `/v2/` answers.
    pub fn start() -> Self {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(
            binary.is_file(),
            "the OCI tests need Debian's docker-registry package (`apt-get install docker-registry`; scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = dir.path().join("config.yml");
            let yaml = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            );
            std::fs::write(&config, yaml).expect("registry config");
            let mut child = Command::new(binary)
                .arg("serve")
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start docker-registry");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if registry_answers(addr) {
                    return Self { child: Some(child), addr, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }

    /// `oci://127.0.0.1:PORT/{rest}`.
    pub fn reference(&self, rest: &str) -> String {
        format!("oci://{}/{rest}", self.addr)
    }

    /// Stop it (its port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `GET /v2/` gets an HTTP answer.
fn registry_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

// ---- etcd ----------------------------------------------------------------

/// A real etcd server (Debian's `etcd-server` package) on loopback, with
/// its own data folder, for the fleet tests. `scripts/test.sh` installs it
/// on a fresh machine. It can be stopped and started again on the same
/// ports and data (an outage).
pub struct Etcd {
    child: Option<std::process::Child>,
    /// The client address.
    pub addr: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
    /// The server certificate and key (PEM) when clients speak TLS to it.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Etcd {
    /// Start one and wait until it answers.
    pub fn start() -> Self {
        assert!(
            Path::new("/usr/bin/etcd").is_file(),
            "the fleet tests need Debian's etcd-server package (`apt-get install etcd-server`; scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let peer = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut etcd = Self { child: None, addr, peer, dir, tls: None };
        etcd.resume();
        etcd
    }

    /// Start one whose clients must speak TLS to it, with this server
    /// certificate and key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let peer = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut etcd = Self { child: None, addr, peer, dir, tls: Some((cert.to_owned(), key.to_owned())) };
        etcd.resume();
        etcd
    }

    /// `etcd://127.0.0.1:PORT/{prefix}`.
    pub fn location(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.addr)
    }

    /// Start it again after [`Etcd::stop`], on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (client, peer) = (format!("{scheme}://{}", self.addr), format!("http://{}", self.peer));
        let mut cmd = Command::new("/usr/bin/etcd");
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        let child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--log-level", "error"])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let up = match self.tls {
                None => etcd_answers(self.addr),
                // TLS: listening is enough here; the tests' first call
                // retries.
                Some(_) => std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok(),
            };
            if up {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                panic!("etcd exited at start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("etcd did not answer on {}", self.addr);
    }

    /// Stop it (kill: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether etcd's `/health` answers `"health":"true"`.
fn etcd_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}
