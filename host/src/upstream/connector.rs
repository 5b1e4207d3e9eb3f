//! A connector that caps the connections open to each target (in use or
//! idle in the pool): `breaker.max_connections`.
//!
//! A new connection waits for a free slot up to the connect timeout; a
//! slot frees when a connection closes. Meanwhile a request can still be
//! served by a pooled connection that comes free.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;

/// [`HttpConnector`] with a cap per target.
#[derive(Clone)]
pub struct Capped {
    inner: HttpConnector,
    max: usize,
    wait: Duration,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Capped {
    /// At most `max` connections per `host:port`, waiting up to `wait` for one.
    pub fn new(inner: HttpConnector, max: usize, wait: Duration) -> Self {
        Self { inner, max: max.max(1), wait, slots: Arc::default() }
    }

    fn slots_for(&self, uri: &Uri) -> Arc<Semaphore> {
        let key = uri.authority().map_or("", |a| a.as_str()).to_owned();
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_insert_with(|| Arc::new(Semaphore::new(self.max))).clone()
    }
}

impl tower_service::Service<Uri> for Capped {
    type Response = CappedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CappedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let slots = self.slots_for(&uri);
        let (max, wait) = (self.max, self.wait);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout(wait, slots.acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(CapReached(max).into()),
                },
            };
            let io = inner.call(uri).await?;
            Ok(CappedIo { io, _permit: permit })
        })
    }
}

/// No slot came free within the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("{0} connections already open to this target (max_connections)")]
pub struct CapReached(usize);

/// Whether a client error is [`CapReached`].
pub fn cap_reached(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(err) = src {
        if err.is::<CapReached>() {
            return true;
        }
        src = err.source();
    }
    false
}

/// A connection holding its slot until it closes.
pub struct CappedIo {
    io: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connection for CappedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CappedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CappedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
