//! The gateway's upstream connections, on hyper's connection API
//! (`hyper::client::conn`), in the manner of pingora's pool.
//!
//! A [`Pool`] serves the upstreams that share connection settings (connect
//! timeout, connection cap, protocol, TLS, pool limits) and keeps an
//! [`Endpoint`] per target address. A target resolves its endpoint once and
//! keeps it, so a request does no lookup at all:
//!
//! - HTTP/1: the endpoint keeps a LIFO of idle connections, each ready for
//!   a request. A request pops the most recently used one (warm, and the
//!   ones at the bottom age out), sends on it directly, and gives it back
//!   when its response body has been read to the end; a body dropped early
//!   closes its connection.
//! - HTTP/2 (`protocol = "h2"`, or ALPN `h2` with TLS): one connection per
//!   endpoint carries every request as a stream; it is replaced when it
//!   closes or passes `max_age`.
//! - New connections wait for a slot under `breaker.max_connections` up to
//!   the connect timeout; a connection that comes free meanwhile serves the
//!   waiter instead.
//! - An idle connection is closed after `idle_timeout`, beyond `max_idle`,
//!   or past `max_age`; a sweeper closes those nobody pops.
//! - A reused connection that closed before it took the request (the
//!   target timed it out as it was sent) costs nothing: the request goes
//!   again on another connection, as nothing of it was sent.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connector::{self, ConnectError, TlsClient};
use crate::body::ProxyBody;
use weir_config::{PoolConfig, UpstreamProtocol};

/// HTTP/2 to upstreams: flow control is hyper's and h2's, with these
/// limits. Windows large enough for a fast stream on a low-latency link.
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The connection's receive window, shared by its streams.
const H2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest frame the gateway accepts from an upstream.
const H2_MAX_FRAME: u32 = 16 * 1024;
/// A ping this often on an idle HTTP/2 connection, which is closed when
/// it goes unanswered for [`H2_KEEP_ALIVE_TIMEOUT`].
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries on reused connections that closed before taking the request,
/// before the error is returned.
const STALE_TRIES: usize = 3;

/// Idle lists per endpoint: one per worker of `--reuseport` (workers past
/// this share), so a worker's requests go out on connections its own event
/// loop drives, as in nginx's per-worker keep-alive caches.
const SHARDS: usize = 16;

thread_local! {
    /// This thread's idle list; 0 for every thread of a shared runtime.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Make the calling thread use idle list `worker` (modulo [`SHARDS`]).
pub(crate) fn set_worker(worker: usize) {
    SHARD.with(|s| s.set(worker % SHARDS));
}

fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// What upstreams must agree on to share a pool.
pub(crate) struct Settings {
    /// TCP and TLS handshakes together; also the longest wait for a slot.
    pub(crate) connect_timeout: Duration,
    /// Connections open to each target, in use or idle.
    pub(crate) max_connections: usize,
    /// HTTP version.
    pub(crate) protocol: UpstreamProtocol,
    /// TLS, if the upstream has it.
    pub(crate) tls: Option<TlsClient>,
    /// `[upstreams.NAME.pool]`.
    pub(crate) limits: PoolConfig,
}

impl Settings {
    /// Whether connections may speak HTTP/2: by prior knowledge, or by ALPN
    /// over TLS.
    fn may_h2(&self) -> bool {
        match self.protocol {
            UpstreamProtocol::H2 => true,
            UpstreamProtocol::Auto => self.tls.is_some(),
            UpstreamProtocol::H1 => false,
        }
    }

    fn scheme(&self) -> Scheme {
        if self.tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP }
    }
}

/// Connections to the targets of the upstreams with the same settings.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    endpoints: Mutex<HashMap<Authority, Arc<Endpoint>>>,
}

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No slot under `max_connections` came free within the connect
    /// timeout: the target is busy, not broken.
    #[error("{0} connections already open to this target (max_connections)")]
    Capped(usize),
    /// No connection could be made; nothing was sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed once the request was handed to it.
    #[error(transparent)]
    Request(#[from] hyper::Error),
    /// A pooled connection closed before taking the request, and no other
    /// could be made.
    #[error("pooled connection closed, then {0}")]
    Stale(#[source] ConnectError),
    /// The request was spent by an earlier try.
    #[error("the request was already sent")]
    Spent,
}

impl Pool {
    /// A pool for `settings`, with a sweeper for idle connections when
    /// called within the runtime.
    pub(crate) fn new(settings: Settings) -> Self {
        let inner = Arc::new(Inner { settings: Arc::new(settings), endpoints: Mutex::default() });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let every =
                (inner.settings.limits.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
            rt.spawn(sweep(Arc::downgrade(&inner), every));
        }
        Self { inner }
    }

    /// The endpoint for `addr`: shared by every upstream of this pool, and
    /// kept while a target holds it or it has open connections.
    pub(crate) fn endpoint(&self, addr: &Authority) -> Arc<Endpoint> {
        let mut map = self.inner.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(addr.clone())
            .or_insert_with(|| {
                let s = &self.inner.settings;
                Arc::new(Endpoint {
                    addr: addr.clone(),
                    settings: s.clone(),
                    idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
                    h2: Mutex::new(None),
                    h2_connecting: tokio::sync::Mutex::new(()),
                    slots: Arc::new(Semaphore::new(s.max_connections.max(1))),
                    waiting: AtomicUsize::new(0),
                    freed: Notify::new(),
                })
            })
            .clone()
    }

    /// A connection to `ep` for one request: an idle one, the shared
    /// HTTP/2 one, or a new one. Nothing of the request is spent yet, so
    /// a failure here leaves it free to go to another target.
    pub(crate) async fn checkout(&self, ep: &Arc<Endpoint>) -> Result<Ready, SendError> {
        let (conn, reused) = ep.checkout().await?;
        Ok(Ready { conn, reused })
    }

    /// Send `req` on `ready`, a connection to `ep`. The request is in
    /// origin form (`/path?query`) with its `Host` set (HTTP/1); for
    /// HTTP/2 the pool adds the scheme and authority. Returns the response
    /// head and the connection's [`Checkout`], which gives an HTTP/1
    /// connection back to the pool when [`Checkout::finish`] is called
    /// after the body's end.
    pub(crate) async fn send(
        &self,
        ep: &Arc<Endpoint>,
        ready: Ready,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Checkout), SendError> {
        let Ready { mut conn, mut reused } = ready;
        let mut stale = 0;
        loop {
            let result = match conn {
                Conn::H1(mut tx, born) => match tx.try_send_request(req).await {
                    Ok(resp) => {
                        return Ok((resp, Checkout { ep: ep.clone(), h1: Some((tx, born)), reused }));
                    }
                    Err(e) => e,
                },
                Conn::H2(mut tx) => {
                    if req.uri().scheme().is_none() {
                        let pq = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                        let uri =
                            Uri::builder().scheme(ep.settings.scheme()).authority(ep.addr.clone()).path_and_query(pq);
                        if let Ok(uri) = uri.build() {
                            *req.uri_mut() = uri;
                        }
                    }
                    match tx.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, Checkout { ep: ep.clone(), h1: None, reused })),
                        Err(e) => e,
                    }
                }
            };
            let mut e = result;
            match e.take_message() {
                // Not sent: the connection had closed under it.
                Some(back) if reused && stale < STALE_TRIES => {
                    stale += 1;
                    req = back;
                    // The request is spent from the caller's view now: a
                    // failure to connect is a failure of the request.
                    (conn, reused) = ep.checkout().await.map_err(|e| match e {
                        SendError::Connect(c) => SendError::Stale(c),
                        other => other,
                    })?;
                }
                _ => return Err(SendError::Request(e.into_error())),
            }
        }
    }
}

/// A connection checked out for one request, not yet used.
pub(crate) struct Ready {
    conn: Conn,
    reused: bool,
}

/// Closes idle connections nobody popped, and forgets endpoints no target
/// holds once their connections are gone, until the pool is dropped.
async fn sweep(pool: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut map = inner.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, ep| {
            ep.prune(now);
            let unused = ep.slots.available_permits() >= inner.settings.max_connections.max(1);
            Arc::strong_count(ep) > 1 || !unused
        });
    }
}

/// The connections to one target address.
pub(crate) struct Endpoint {
    addr: Authority,
    settings: Arc<Settings>,
    /// Ready HTTP/1 connections by worker, the most recently used last.
    idle: [Mutex<Vec<Idle>>; SHARDS],
    /// The shared HTTP/2 connection.
    h2: Mutex<Option<Shared>>,
    /// Held while an HTTP/2 connection is being made, so concurrent
    /// requests wait for it instead of each opening one.
    h2_connecting: tokio::sync::Mutex<()>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot or a connection coming free.
    waiting: AtomicUsize,
    freed: Notify,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("addr", &self.addr).finish_non_exhaustive()
    }
}

struct Idle {
    tx: http1::SendRequest<ProxyBody>,
    born: Instant,
    since: Instant,
}

struct Shared {
    tx: http2::SendRequest<ProxyBody>,
    born: Instant,
}

enum Conn {
    H1(http1::SendRequest<ProxyBody>, Instant),
    H2(http2::SendRequest<ProxyBody>),
}

impl Endpoint {
    /// Idle HTTP/1 connections right now, and whether an HTTP/2 one is
    /// open, for the admin API.
    pub(crate) fn open_idle(&self) -> (usize, bool) {
        let idle = self.idle.iter().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).len()).sum();
        (idle, self.h2.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    fn too_old(&self, born: Instant, now: Instant) -> bool {
        self.settings.limits.max_age.is_some_and(|age| now.duration_since(born) >= age)
    }

    /// A connection for one request, and whether it was used before.
    async fn checkout(&self) -> Result<(Conn, bool), SendError> {
        if let Some(c) = self.ready() {
            return Ok((c, true));
        }
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) and waiting
        // for a slot make a future of kilobytes, which would otherwise
        // inflate every request's future, and hyper moves that future.
        Box::pin(self.checkout_slow()).await
    }

    /// No ready connection: wait for a slot or a connection coming free,
    /// and connect.
    async fn checkout_slow(&self) -> Result<(Conn, bool), SendError> {
        // HTTP/2: one connection for all; the first request makes it, the
        // others wait for it.
        let _one = if self.settings.protocol == UpstreamProtocol::H2 {
            let wait = self.settings.connect_timeout;
            let Ok(one) = tokio::time::timeout(wait, self.h2_connecting.lock()).await else {
                return Err(ConnectError::Timeout(wait).into());
            };
            if let Some(c) = self.ready() {
                return Ok((c, true));
            }
            Some(one)
        } else {
            None
        };
        match self.slot().await? {
            Ok(permit) => Ok((self.connect(permit).await?, false)),
            Err(conn) => Ok((conn, true)),
        }
    }

    /// A ready connection: the HTTP/2 one, or the most recent idle HTTP/1
    /// one (closing the stale ones met on the way).
    fn ready(&self) -> Option<Conn> {
        if self.settings.may_h2() {
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = h2.as_ref() {
                if !s.tx.is_closed() && !self.too_old(s.born, Instant::now()) {
                    return Some(Conn::H2(s.tx.clone()));
                }
                *h2 = None;
            }
        }
        self.pop(shard())
    }

    /// The most recent ready connection of worker `shard`'s idle list.
    fn pop(&self, shard: usize) -> Option<Conn> {
        let mut idle = self.idle[shard].lock().unwrap_or_else(|p| p.into_inner());
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(i) = idle.pop() {
            if i.tx.is_ready()
                && now.duration_since(i.since) < self.settings.limits.idle_timeout
                && !self.too_old(i.born, now)
            {
                return Some(Conn::H1(i.tx, i.born));
            }
        }
        None
    }

    /// A slot for a new connection, or (HTTP/1) a connection that came
    /// free while waiting for one.
    async fn slot(&self) -> Result<Result<OwnedSemaphorePermit, Conn>, SendError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Ok(p));
        }
        let wait = self.settings.connect_timeout;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Any worker's connection will do rather than a 503.
            if self.settings.protocol != UpstreamProtocol::H2
                && let Some(c) = self.ready().or_else(|| (0..SHARDS).find_map(|i| self.pop(i)))
            {
                return Ok(Err(c));
            }
            tokio::select! {
                p = self.slots.clone().acquire_owned() => {
                    return p.map(Ok).map_err(|_| SendError::Capped(self.settings.max_connections));
                }
                _ = &mut freed => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SendError::Capped(self.settings.max_connections));
                }
            }
        }
    }

    /// Open a connection holding `permit` until it closes.
    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<Conn, SendError> {
        let s = &self.settings;
        let (stream, alpn_h2) = connector::connect(&self.addr, s.connect_timeout, s.tls.as_ref()).await?;
        let io = TokioIo::new(stream);
        let born = Instant::now();
        if alpn_h2 || s.protocol == UpstreamProtocol::H2 {
            let handshake = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_frame_size(H2_MAX_FRAME)
                .keep_alive_interval(H2_KEEP_ALIVE)
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                .handshake(io);
            let (tx, conn) = match tokio::time::timeout(s.connect_timeout, handshake).await {
                Ok(r) => r.map_err(ConnectError::Handshake)?,
                Err(_) => return Err(ConnectError::Timeout(s.connect_timeout).into()),
            };
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(Shared { tx: tx.clone(), born });
            return Ok(Conn::H2(tx));
        }
        let (tx, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream HTTP/1 connection ended: {e}");
            }
        });
        Ok(Conn::H1(tx, born))
    }

    /// Give back a connection that is ready for another request.
    fn put(&self, tx: http1::SendRequest<ProxyBody>, born: Instant) {
        let now = Instant::now();
        if self.too_old(born, now) {
            return;
        }
        {
            let mut idle = self.idle[shard()].lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= self.settings.limits.max_idle {
                return;
            }
            idle.push(Idle { tx, born, since: now });
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_one();
        }
    }

    /// Close expired and closed idle connections, and an HTTP/2 connection
    /// past its age.
    fn prune(&self, now: Instant) {
        for list in &self.idle {
            let stale: Vec<Idle> = {
                let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
                if idle.is_empty() {
                    continue;
                }
                let (keep, stale) = std::mem::take(&mut *idle).into_iter().partition(|i| {
                    !i.tx.is_closed()
                        && now.duration_since(i.since) < self.settings.limits.idle_timeout
                        && !self.too_old(i.born, now)
                });
                *idle = keep;
                stale
            };
            drop(stale);
        }
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if h2.as_ref().is_some_and(|s| s.tx.is_closed() || self.too_old(s.born, now)) {
            *h2 = None;
        }
    }
}

/// Counts a waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's hold on its connection.
pub(crate) struct Checkout {
    ep: Arc<Endpoint>,
    h1: Option<(http1::SendRequest<ProxyBody>, Instant)>,
    /// The connection had served a request before this one.
    pub(crate) reused: bool,
}

impl Checkout {
    /// The response body was read to its end: an HTTP/1 connection goes
    /// back to the pool, at once if it is ready for the next request (the
    /// usual case), else once it is (the request body still being sent).
    /// Dropping a checkout without this closes the connection.
    pub(crate) fn finish(mut self) {
        let Some((mut tx, born)) = self.h1.take() else { return };
        if tx.is_ready() {
            self.ep.put(tx, born);
        } else if !tx.is_closed() {
            let ep = self.ep.clone();
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    ep.put(tx, born);
                }
            });
        }
    }

    /// Keep the connection out of the pool (it was upgraded).
    pub(crate) fn detach(mut self) {
        self.h1 = None;
    }
}
