//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on the
//! proxy listener, HTTP/1.1 on the admin listener, graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Shared;

/// Most concurrent HTTP/2 streams per connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams opened and reset by the client before being served, at once.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway may reset for protocol errors before closing the
/// connection.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// Largest HTTP/2 header list accepted.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serve the proxy (and admin) listener until `shutdown`, then drain.
pub async fn serve(
    shared: Arc<Shared>,
    proxy: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let server_cfg = shared.snapshot.load().server.clone();
    let limits = shared.snapshot.load().limits;
    let sweeper = {
        let state = shared.loader.state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::state::StateStore::SWEEP_INTERVAL);
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
                let plugins: Vec<&str> = snap.plugins.keys().map(|k| k.as_str()).collect();
                shared.metrics.live().retain(&routes, &upstreams, &plugins);
                shared.metrics.live().tick();
            }
        })
    };

    let graceful = GracefulShutdown::new();
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
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);

    tracing::info!(addr = %proxy.local_addr()?, "proxy listening");
    if let Some(a) = &admin {
        tracing::info!(addr = %a.local_addr()?, "admin listening");
    }
    // At most `max_connections` at once: at the cap the listener stops
    // accepting (new connections wait in the kernel's backlog) until one
    // closes, instead of taking on work it cannot serve.
    let slots = Arc::new(tokio::sync::Semaphore::new(server_cfg.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (proxy.accept().await, slot)
            } => {
                let (accepted, slot) = accepted;
                let (Ok((stream, peer)), Ok(slot)) = (accepted, slot) else { continue };
                let _ = stream.set_nodelay(true);
                let open = OpenConnection::new(shared.metrics.clone(), slot);
                let shared = shared.clone();
                // What the sniffer saw of each HTTP/1 head, taken one per
                // request, in order.
                let verdicts = crate::sniff::Verdicts::default();
                let seen = verdicts.clone();
                let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
                    let snap = shared.snapshot.load_full();
                    if req.version() <= hyper::Version::HTTP_11
                        && let Some(v) = seen.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                    {
                        req.extensions_mut().insert(v);
                    }
                    async move { Ok::<_, Infallible>(crate::proxy::handle(snap, req, peer).await) }
                });
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let within = server_cfg.header_read_timeout;
                tokio::spawn(async move {
                    let _open = open;
                    if !first_bytes(&stream, within).await {
                        tracing::debug!(%peer, "connection closed: no request within the header read timeout");
                        return;
                    }
                    let io = TokioIo::new(crate::sniff::Sniffed::new(stream, verdicts));
                    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            accepted = accept_admin(admin.as_ref()) => {
                let Ok((stream, peer)) = accepted else { continue };
                serve_admin(shared.clone(), stream, peer, &graceful);
            }
            () = &mut shutdown => break,
        }
    }

    sweeper.abort();
    ticker.abort();
    drop(proxy);
    drop(admin);
    tracing::info!(timeout = ?server_cfg.drain_timeout, "draining connections");
    if tokio::time::timeout(server_cfg.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    Ok(())
}

/// Wait until the client has sent enough to tell HTTP/1 from the HTTP/2
/// preface, within `within`. hyper-util's protocol detection reads those
/// bytes with no timeout of its own, and hyper's header read timeout starts
/// only after it: without this, a connection that sends nothing would hold
/// its slot (and a `max_connections` slot) forever.
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        // Part of the HTTP/2 preface: `peek` returns at once with the same
        // bytes, so wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts a downstream connection as open, and holds its slot under
/// `max_connections`, for as long as it lives.
struct OpenConnection {
    metrics: Arc<crate::metrics::Metrics>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(metrics: Arc<crate::metrics::Metrics>, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics.connection(true);
        Self { metrics, _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection(false);
    }
}

async fn accept_admin(admin: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match admin {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn serve_admin(shared: Arc<Shared>, stream: tokio::net::TcpStream, peer: SocketAddr, graceful: &GracefulShutdown) {
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
        if let Err(e) = conn.await {
            tracing::debug!(%peer, "admin connection ended: {e}");
        }
    });
}
