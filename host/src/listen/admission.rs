//! Which downstream connections may be open: `[server] max_connections`
//! over all, `max_connections_per_ip` per client address, and, when a cap
//! is reached, overload shedding as nginx and Envoy do it: the oldest
//! connections that have not yet sent a complete request head are closed
//! to make room, before a newcomer is refused (per address) or kept
//! waiting (over all). A connection that has sent a head is never shed, so
//! silent and dribbling connections cannot hold the slots real clients
//! need for the whole header timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::Notify;

use super::metrics::ListenerMetrics;

/// The connections open on the proxy and TLS listeners.
pub(crate) struct Admission {
    max: usize,
    per_ip: Option<usize>,
    inner: Mutex<Inner>,
    /// Signalled whenever a connection closes.
    freed: Notify,
    metrics: ListenerMetrics,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Open connections that have not sent a complete request head yet,
    /// oldest first.
    fresh: BTreeMap<u64, Arc<Shared>>,
}

/// What a connection and the admission share.
struct Shared {
    ip: IpAddr,
    /// Set when it is shed: its reads end.
    shed: AtomicBool,
    /// Set when its first complete request head arrived.
    served: AtomicBool,
    /// Wakes its read once it is shed.
    waker: AtomicWaker,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its address has `max_connections_per_ip` connections that have all
    /// sent a request.
    PerIp,
}

impl Admission {
    pub(crate) fn new(max: usize, per_ip: Option<usize>, metrics: ListenerMetrics) -> Self {
        Self {
            max: max.max(1),
            per_ip: per_ip.map(|n| n.max(1)),
            inner: Mutex::default(),
            freed: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a connection from `ip`, shedding what the caps need; waits
    /// while every slot is held by a connection that has sent a request.
    pub(crate) async fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let ip = client_key(ip);
        loop {
            let freed = self.freed.notified();
            {
                let mut inner = self.lock();
                if let Some(cap) = self.per_ip
                    && inner.by_ip.get(&ip).copied().unwrap_or(0) >= cap
                {
                    let oldest = inner.fresh.iter().find(|(_, c)| c.ip == ip).map(|(id, _)| *id);
                    match oldest {
                        Some(id) => self.shed(&mut inner, id, "per_ip"),
                        None => {
                            self.metrics.connection_refused("per_ip");
                            return Err(Refused::PerIp);
                        }
                    }
                }
                if inner.open >= self.max
                    && let Some(id) = inner.fresh.keys().next().copied()
                {
                    self.shed(&mut inner, id, "max_connections");
                }
                if inner.open < self.max {
                    return Ok(self.open(&mut inner, ip));
                }
            }
            // Every slot holds a connection that sent a request: wait for
            // one to close (the listener accepts nothing meanwhile).
            freed.await;
        }
    }

    fn open(self: &Arc<Self>, inner: &mut Inner, ip: IpAddr) -> Ticket {
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open += 1;
        if self.per_ip.is_some() {
            *inner.by_ip.entry(ip).or_default() += 1;
        }
        let shared = Arc::new(Shared {
            ip,
            shed: AtomicBool::new(false),
            served: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        inner.fresh.insert(id, shared.clone());
        self.metrics.connection(true);
        Ticket { admission: self.clone(), id, shared }
    }

    /// Close connection `id`: its slot is free from now on, and its reads
    /// end at once.
    fn shed(&self, inner: &mut Inner, id: u64, reason: &'static str) {
        let Some(conn) = inner.fresh.remove(&id) else { return };
        conn.shed.store(true, Ordering::Release);
        conn.waker.wake();
        Self::release(self.per_ip.is_some(), inner, conn.ip);
        self.metrics.connection_shed(reason);
    }

    fn release(per_ip: bool, inner: &mut Inner, ip: IpAddr) {
        inner.open -= 1;
        if per_ip && let Some(n) = inner.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                inner.by_ip.remove(&ip);
            }
        }
    }
}

/// The address a client is counted by: IPv4 as it is (IPv4-mapped IPv6
/// too), IPv6 by its /64, the smallest block a host is usually given.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// A connection's place under the caps, held for as long as it lives.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    shared: Arc<Shared>,
}

impl Ticket {
    /// A complete request head arrived: never shed from now on.
    pub(crate) fn served(&self) {
        // One load per request; the lock once per connection.
        if !self.shared.served.load(Ordering::Relaxed) && !self.shared.served.swap(true, Ordering::Relaxed) {
            self.admission.lock().fresh.remove(&self.id);
        }
    }

    /// `io`, whose reads end (as if the client closed) once this
    /// connection is shed.
    pub(crate) fn guard<S>(&self, io: S) -> Sheddable<S> {
        Sheddable { inner: io, shared: self.shared.clone() }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            // Under the lock: a shed connection gave its slot back when it
            // was shed, and shedding happens under the lock too.
            let mut inner = self.admission.lock();
            if !self.shared.shed.load(Ordering::Acquire) {
                inner.fresh.remove(&self.id);
                Admission::release(self.admission.per_ip.is_some(), &mut inner, self.shared.ip);
            }
        }
        self.admission.metrics.connection(false);
        self.admission.freed.notify_waiters();
    }
}

/// A connection's stream, whose reads end once it is shed: hyper then
/// closes it as it would a client that went away. Only connections that
/// have not sent a complete request head are shed, so no request is cut.
pub(crate) struct Sheddable<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Sheddable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.shared.shed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        self.shared.waker.register(cx.waker());
        if self.shared.shed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Sheddable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn admission(max: usize, per_ip: Option<usize>) -> Arc<Admission> {
        let mut registry = prometheus_client::registry::Registry::default();
        Arc::new(Admission::new(max, per_ip, ListenerMetrics::register(&mut registry)))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        futures::FutureExt::now_or_never(f)
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_makes_room() {
        let a = admission(2, None);
        let first = now(a.admit(ip(1))).expect("room").expect("admitted");
        let second = now(a.admit(ip(2))).expect("room").expect("admitted");
        second.served();
        // Full: the oldest connection without a request head is shed.
        let third = now(a.admit(ip(3))).expect("room made").expect("admitted");
        assert!(first.shared.shed.load(Ordering::Acquire));
        assert!(!second.shared.shed.load(Ordering::Acquire));
        third.served();
        // Full of connections that sent requests: the newcomer waits...
        let mut waiting = Box::pin(a.admit(ip(4)));
        assert!(now(waiting.as_mut()).is_none());
        drop(first); // a shed ticket's slot was already free
        assert!(now(waiting.as_mut()).is_none());
        // ...until one of them closes.
        drop(second);
        assert!(now(waiting.as_mut()).is_some());
    }

    #[tokio::test]
    async fn per_address_the_own_oldest_silent_connection_goes_then_newcomers_are_refused() {
        let a = admission(100, Some(2));
        let a1 = now(a.admit(ip(1))).expect("room").expect("admitted");
        let a2 = now(a.admit(ip(1))).expect("room").expect("admitted");
        let other = now(a.admit(ip(2))).expect("room").expect("admitted");
        a2.served();
        let a3 = now(a.admit(ip(1))).expect("room").expect("admitted");
        assert!(a1.shared.shed.load(Ordering::Acquire), "its own oldest silent connection");
        assert!(!other.shared.shed.load(Ordering::Acquire), "another address is left alone");
        a3.served();
        assert_eq!(now(a.admit(ip(1))).expect("no wait").err(), Some(Refused::PerIp));
        drop(a3);
        assert!(now(a.admit(ip(1))).expect("no wait").is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_key(mapped), ip(1));
    }
}
