//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the
//! proxy listener, the same over TLS (HTTP/2 by ALPN) on the TLS listener,
//! HTTP/1.1 on the admin listener, graceful drain.

pub(crate) mod admission;
pub(crate) mod metrics;
pub(crate) mod sniff;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::Shared;
use weir_plugin_host::ConnectionTls;

use self::admission::{Admission, Ticket};
use self::metrics::ListenerMetrics;

/// Most concurrent HTTP/2 streams per connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams opened and reset by the client before being served, at once.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway may reset for protocol errors before closing the
/// connection.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// Largest HTTP/2 header list accepted.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// HTTP/2 flow control is h2's; these are its limits. A stream may have
/// this much unread data in flight from the client…
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// …and a connection this much over all its streams.
const H2_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest frame accepted.
const H2_MAX_FRAME: u32 = 16 * 1024;
/// Response data buffered per stream before the body is polled again.
const H2_MAX_SEND_BUFFER: usize = 1024 * 1024;

/// How the proxy's listeners are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One listener per address, accepted on the runtime `serve` runs on
    /// (one thread, or tokio's work-stealing threads).
    Shared,
    /// This many threads, each with its own single-threaded event loop and
    /// its own listener per address (`SO_REUSEPORT`: the kernel spreads new
    /// connections over them), as nginx's worker processes. A connection
    /// stays on its worker, and so do the upstream connections it uses.
    ReusePort(usize),
}

/// Bind a proxy listener on `addr`; with `SO_REUSEPORT` when `reuse_port`,
/// so that workers can bind the same address.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Pending connections the kernel keeps per listener.
const LISTEN_BACKLOG: u32 = 1024;

/// Serve the proxy (and admin) listener until `shutdown`, then drain.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    proxy: TcpListener,
    tls: Option<TcpListener>,
    admin: Option<TcpListener>,
    workers: Workers,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let server_cfg = shared.snapshot.load().server.clone();
    let limits = shared.snapshot.load().limits;
    let sweeper = {
        let state = shared.loader.plugins.state().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(weir_plugin_host::state::StateStore::SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                state.sweep();
            }
        })
    };

    // Close one second of the dashboard's series a second, and forget
    // routes and upstreams a reload removed.
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snap = shared.snapshot.load();
                let routes: Vec<&str> = snap.routes.iter().map(|r| &*r.name).collect();
                let upstreams: Vec<&str> = snap.upstreams.keys().map(|k| k.as_str()).collect();
                let canaries: Vec<String> = snap.canaries.keys().map(|k| format!("{k}@canary")).collect();
                let plugins: Vec<&str> =
                    snap.plugins.keys().map(|k| k.as_str()).chain(canaries.iter().map(String::as_str)).collect();
                shared.metrics.live().retain(&routes, &upstreams, &plugins);
                shared.metrics.live().tick();
            }
        })
    };

    let builder = http_builder(&server_cfg, &limits);
    tracing::info!(addr = %proxy.local_addr()?, ?workers, "proxy listening");
    if let Some(t) = &tls {
        tracing::info!(addr = %t.local_addr()?, "TLS listening");
    }
    if let Some(a) = &admin {
        tracing::info!(addr = %a.local_addr()?, "admin listening");
    }
    // At most `max_connections` at once (and `max_connections_per_ip` per
    // client): at a cap the oldest connections that have not sent a request
    // head make room; when every slot holds a connection that has, the
    // listener stops accepting (new connections wait in the kernel's
    // backlog) until one closes, instead of taking on work it cannot serve.
    // Shared by all workers.
    let admission = Arc::new(Admission::new(
        server_cfg.max_connections,
        server_cfg.max_connections_per_ip,
        shared.listener_metrics.clone(),
    ));
    check_fd_limit(&shared);
    let graceful = GracefulShutdown::new();
    let loops = Loops { shared: shared.clone(), builder, admission };

    let threads = match workers {
        Workers::Shared => {
            loops.run(0, Some(&proxy), tls.as_ref(), admin.as_ref(), &graceful, shutdown).await;
            // Refuse new connections while draining.
            drop((proxy, tls));
            Vec::new()
        }
        Workers::ReusePort(n) => {
            // Every worker's listeners are bound here, so a failure is
            // this call's error; the first worker takes the listeners
            // `bind` made (bound with SO_REUSEPORT too).
            let addr = proxy.local_addr()?;
            let tls_addr = tls.as_ref().map(TcpListener::local_addr).transpose()?;
            let mut sets = vec![(proxy.into_std()?, tls.map(|t| t.into_std()).transpose()?)];
            for _ in 1..n.max(1) {
                let tls = tls_addr.map(|a| bind(a, true).and_then(|l| l.into_std())).transpose()?;
                sets.push((bind(addr, true)?.into_std()?, tls));
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut threads = Vec::new();
            for (i, (proxy, tls)) in sets.into_iter().enumerate() {
                let loops = loops.clone();
                let mut stopped = stopped.clone();
                let drain = server_cfg.drain_timeout;
                let thread = std::thread::Builder::new().name(format!("weir-worker-{i}")).spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => return tracing::error!("worker {i}: cannot start its event loop: {e}"),
                    };
                    rt.block_on(async move {
                        crate::upstream::pool::set_worker(i);
                        let (proxy, tls) =
                            match (TcpListener::from_std(proxy), tls.map(TcpListener::from_std).transpose()) {
                                (Ok(p), Ok(t)) => (p, t),
                                (Err(e), _) | (_, Err(e)) => return tracing::error!("worker {i}: listener: {e}"),
                            };
                        let graceful = GracefulShutdown::new();
                        let stop = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        loops.run(i, Some(&proxy), tls.as_ref(), None, &graceful, stop).await;
                        drop((proxy, tls));
                        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
                            tracing::warn!(worker = i, "drain timeout reached; closing remaining connections");
                        }
                    });
                })?;
                threads.push(thread);
            }
            // This runtime keeps the admin listener and the control plane.
            loops.run(0, None, None, admin.as_ref(), &graceful, shutdown).await;
            let _ = stop.send(true);
            threads
        }
    };

    sweeper.abort();
    ticker.abort();
    drop(admin);
    tracing::info!(timeout = ?server_cfg.drain_timeout, "draining connections");
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(server_cfg.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    let _ = joined.await;
    Ok(())
}

/// hyper's server settings from `[server]` and `[limits]`.
fn http_builder(
    server_cfg: &weir_config::ServerConfig,
    limits: &weir_config::LimitsConfig,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server_cfg.header_read_timeout)
        .keep_alive(true)
        .max_headers(limits.max_header_count)
        // hyper's read buffer bounds the request head; it is at least 8 KiB.
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        // Rapid reset (CVE-2023-44487): streams the client opens and resets
        // before they are served; past this many, GOAWAY ENHANCE_YOUR_CALM.
        // CONTINUATION and empty-DATA floods are cut by h2 itself
        // (tests/it/http2.rs checks all three).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        // RFC 8441: WebSocket over HTTP/2 (extended CONNECT).
        .enable_connect_protocol();
    builder
}

/// What an accept loop needs, shared by the workers.
#[derive(Clone)]
struct Loops {
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    admission: Arc<Admission>,
}

impl Loops {
    /// Accept on the listeners given until `shutdown`, serving each
    /// connection on this runtime (worker `worker`).
    async fn run(
        &self,
        worker: usize,
        proxy: Option<&TcpListener>,
        tls: Option<&TcpListener>,
        admin: Option<&TcpListener>,
        graceful: &GracefulShutdown,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let Loops { shared, builder, admission } = self;
        // A connection accepted but not yet admitted, per listener: kept here
        // so that another branch of the select below winning does not drop it.
        let (mut held_plain, mut held_tls) = (None, None);
        // The admin listener has a small cap of its own, so it can neither eat
        // the proxy's descriptors nor be locked out by them.
        let admin_slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
        let accepted = shared.listener_metrics.accepted(worker);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                admitted = admit(proxy, &mut held_plain, admission, &shared.listener_metrics) => {
                    let Some((stream, peer, ticket)) = admitted else { continue };
                    accepted.inc();
                    let conn = Conn { shared: shared.clone(), builder: builder.clone(), watcher: graceful.watcher(), peer };
                    tokio::spawn(conn.serve_plain(stream, ticket));
                }
                admitted = admit(tls, &mut held_tls, admission, &shared.listener_metrics) => {
                    let Some((stream, peer, ticket)) = admitted else { continue };
                    accepted.inc();
                    let conn = Conn { shared: shared.clone(), builder: builder.clone(), watcher: graceful.watcher(), peer };
                    tokio::spawn(conn.serve_tls(stream, ticket));
                }
                opened = accept(admin, &admin_slots, &shared.listener_metrics) => {
                    let Some((stream, peer, slot)) = opened else { continue };
                    serve_admin(shared.clone(), stream, peer, slot, graceful);
                }
                () = &mut shutdown => break,
            }
        }
    }
}

/// Accept on `listener` (never, without one), then wait for `admission`
/// to let the connection in. Cancel-safe: a connection accepted but not yet
/// admitted waits in `held` for the next call. A connection refused at the
/// per-address cap is closed at once.
async fn admit(
    listener: Option<&TcpListener>,
    held: &mut Option<(TcpStream, SocketAddr)>,
    admission: &Arc<Admission>,
    metrics: &ListenerMetrics,
) -> Option<(TcpStream, SocketAddr, Ticket)> {
    let Some(listener) = listener else { return std::future::pending().await };
    if held.is_none() {
        match listener.accept().await {
            Ok(accepted) => *held = Some(accepted),
            Err(e) => {
                accept_failed(&e, metrics).await;
                return None;
            }
        }
    }
    let ip = held.as_ref()?.1.ip();
    let admitted = admission.admit(ip).await;
    let (stream, peer) = held.take()?;
    let ticket = admitted.ok()?;
    let _ = stream.set_nodelay(true);
    Some((stream, peer, ticket))
}

/// Accept on `listener` (never, without one) once one of its `slots` is
/// free (the admin listener's small cap).
async fn accept(
    listener: Option<&TcpListener>,
    slots: &Arc<tokio::sync::Semaphore>,
    metrics: &ListenerMetrics,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let Some(listener) = listener else { return std::future::pending().await };
    let slot = slots.clone().acquire_owned().await.ok()?;
    let (stream, peer) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(e) => {
            accept_failed(&e, metrics).await;
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    Some((stream, peer, slot))
}

/// Admin connections open at once.
const ADMIN_MAX_CONNECTIONS: usize = 32;
/// How long the accept loop waits after the process ran out of
/// descriptors (or memory): long enough not to spin, short enough that a
/// freed descriptor is used at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this interval about failing accepts.
const ACCEPT_LOG_EVERY_MS: u64 = 5_000;

/// An accept() that failed: counted, said at most once per interval, and,
/// when the process is out of descriptors or memory, followed by a pause.
/// Retrying at once would spin a core while the connections that hold the
/// descriptors stay open (and starve every other task on this worker).
async fn accept_failed(e: &std::io::Error, metrics: &ListenerMetrics) {
    let kind = match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => "fd_exhausted",
        Some(libc::ENOBUFS | libc::ENOMEM) => "no_memory",
        _ => "other",
    };
    metrics.accept_error(kind);
    static LAST_LOG: AtomicU64 = AtomicU64::new(0);
    let now = weir_plugin_host::clock::monotonic_ms();
    let last = LAST_LOG.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= ACCEPT_LOG_EVERY_MS)
        && LAST_LOG.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(kind, "accept failed: {e}; backing off {ACCEPT_BACKOFF:?} (said at most every 5 s)");
    }
    if kind != "other" {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// Raise the soft open-files limit to the hard one, and warn when the
/// configured connection caps cannot fit in it.
fn check_fd_limit(shared: &Shared) {
    let Some(limit) = raise_fd_limit() else { return };
    let snap = shared.snapshot.load();
    let upstreams: usize = snap.upstreams.values().map(|u| u.breaker.config.max_connections).sum();
    // Listeners, the runtime, log and module files, the watcher: a margin.
    let needed = snap.server.max_connections + upstreams + ADMIN_MAX_CONNECTIONS + 64;
    if needed as u64 > limit {
        tracing::warn!(
            limit,
            max_connections = snap.server.max_connections,
            upstream_connections = upstreams,
            "the open-files limit is below what the connection caps allow; at the limit new connections wait \
             (raise it with `ulimit -n` or LimitNOFILE=, or lower max_connections)"
        );
    }
}

/// The soft `RLIMIT_NOFILE`, raised to the hard limit first.
#[allow(unsafe_code)]
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we
    // pass, which lives for the whole call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// One accepted downstream connection, before its protocol is known.
struct Conn {
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
}

impl Conn {
    /// Cleartext: HTTP/1.1, or HTTP/2 with prior knowledge.
    async fn serve_plain(self, stream: TcpStream, ticket: Ticket) {
        let within = self.shared.snapshot.load().server.header_read_timeout;
        let io = UntilDetected::new(ticket.guard(stream), within);
        self.serve_http(io, None, ticket).await;
    }

    /// TLS: the handshake with the snapshot's certificates, then HTTP/1.1
    /// or HTTP/2 (by ALPN, or prior knowledge).
    async fn serve_tls(self, stream: TcpStream, ticket: Ticket) {
        // Guarded under TLS, so a shed connection ends mid-handshake too.
        let stream = ticket.guard(stream);
        let snap = self.shared.snapshot.load_full();
        let Some(settings) = snap.tls.clone() else {
            tracing::warn!(peer = %self.peer, "TLS connection refused: [server.tls] is gone from the config");
            return;
        };
        let within = snap.server.header_read_timeout;
        drop(snap);
        let metrics = &self.shared.listener_metrics;
        let acceptor = tokio_rustls::TlsAcceptor::from(settings.config.clone());
        let stream = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                metrics.tls_handshake("failed", "", "");
                tracing::debug!(peer = %self.peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                metrics.tls_handshake("timeout", "", "");
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                return;
            }
        };
        let info = crate::tls::connection_tls(stream.get_ref().1);
        metrics.tls_handshake("ok", info.version, info.alpn.unwrap_or("none"));
        self.serve_http(UntilDetected::new(stream, within), Some(Arc::new(info)), ticket).await;
    }

    async fn serve_http<I>(self, io: I, tls: Option<Arc<ConnectionTls>>, ticket: Ticket)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { shared, builder, watcher, peer } = self;
        // Held by the service, so for as long as hyper serves the connection.
        let ticket = Arc::new(ticket);
        // What the sniffer saw of each HTTP/1 head, taken one per request,
        // in order.
        let verdicts = crate::listen::sniff::Verdicts::default();
        let seen = verdicts.clone();
        let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
            // A complete head: this connection is never shed from now on.
            ticket.served();
            let snap = shared.snapshot.load_full();
            // Only a verdict that refuses is kept (no verdict is a clear
            // one): the first extension allocates the request's map.
            if req.version() <= hyper::Version::HTTP_11
                && let Some(v) = seen.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                && v != crate::proxy::checks::Verdict::Clear
            {
                req.extensions_mut().insert(v);
            }
            if let Some(tls) = &tls {
                req.extensions_mut().insert(tls.clone());
            }
            // Boxed: the request's future is ~10 KB, and hyper moves the
            // service future several times per request (a profile showed
            // 12% of the gateway's instructions in those copies).
            let fut = Box::pin(crate::proxy::handle(snap, req, peer));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let io = TokioIo::new(crate::listen::sniff::Sniffed::new(io, verdicts));
        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }
}

/// The HTTP/2 connection preface, which tells HTTP/2 from HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose reads fail once `within` has passed before the client
/// sent enough to tell HTTP/1 from the HTTP/2 preface. hyper-util's
/// protocol detection reads those bytes with no timeout of its own, and
/// hyper's header read timeout starts only after it: without this, a
/// connection that sends nothing (or part of the preface) would hold its
/// slot, and a `max_connections` slot, forever. Once the protocol is known,
/// hyper's own timers apply. Used on both listeners (after the handshake on
/// the TLS one).
struct UntilDetected<S> {
    inner: S,
    /// Preface bytes matched so far.
    matched: usize,
    /// Cleared once the protocol is known.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> UntilDetected<S> {
    fn new(inner: S, within: Duration) -> Self {
        Self { inner, matched: 0, deadline: Some(Box::pin(tokio::time::sleep(within))) }
    }

    /// Follow the preface through `new` bytes; clear the deadline once they
    /// leave it or complete it.
    fn saw(&mut self, new: &[u8]) {
        for &b in new {
            if self.matched < H2_PREFACE.len() && b == H2_PREFACE[self.matched] {
                self.matched += 1;
            } else {
                self.matched = H2_PREFACE.len();
            }
            if self.matched == H2_PREFACE.len() {
                self.deadline = None;
                return;
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UntilDetected<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if self.deadline.is_some() {
                    self.saw(&buf.filled()[before..]);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for UntilDetected<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn serve_admin(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
    graceful: &GracefulShutdown,
) {
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(crate::admin::handle(&shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(%peer, "admin connection ended: {e}");
        }
    });
}
