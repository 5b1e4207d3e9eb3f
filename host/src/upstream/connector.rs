//! Connecting to targets: the connection cap per target
//! (`breaker.max_connections`), then TLS when the upstream has `tls`.
//!
//! A new connection waits for a free slot up to the connect timeout; a
//! slot frees when a connection closes. Meanwhile a request can still be
//! served by a pooled connection that comes free.
//!
//! With TLS the target's certificate is verified against the configured CA
//! or the system's roots, for `server_name` (or the target's host); ALPN
//! offers what the upstream's `protocol` allows, and a connection that
//! agreed on `h2` is spoken to in HTTP/2.

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
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::BoxError;
use crate::tls::TlsSetupError;
use weir_config::{UpstreamProtocol, UpstreamTlsConfig};

/// [`HttpConnector`] with a cap per target, and TLS when configured.
#[derive(Clone)]
pub(crate) struct Capped {
    inner: HttpConnector,
    max: usize,
    wait: Duration,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    tls: Option<TlsClient>,
}

impl Capped {
    /// At most `max` connections per `host:port`, waiting up to `wait` for
    /// one; TLS over each connection with `tls`.
    pub(crate) fn new(mut inner: HttpConnector, max: usize, wait: Duration, tls: Option<TlsClient>) -> Self {
        // TLS targets are addressed as `https://`.
        inner.enforce_http(tls.is_none());
        Self { inner, max: max.max(1), wait, slots: Arc::default(), tls }
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
        let tls = self.tls.clone();
        Box::pin(async move {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match tokio::time::timeout(wait, slots.acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(CapReached(max).into()),
                },
            };
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let tcp = inner.call(uri).await?.into_inner();
            let (stream, h2) = match tls {
                None => (Stream::Plain(tcp), false),
                Some(tls) => {
                    let name = match &tls.server_name {
                        Some(n) => n.clone(),
                        None => ServerName::try_from(host).map_err(|e| TlsError(format!("server name: {e}")))?,
                    };
                    // The handshake counts against the connect timeout.
                    let handshake = tokio_rustls::TlsConnector::from(tls.config).connect(name, tcp);
                    let tls = match tokio::time::timeout(wait, handshake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return Err(TlsError(format!("TLS handshake: {e}")).into()),
                        Err(_) => return Err(TlsError("TLS handshake timed out".into()).into()),
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    (Stream::Tls(Box::new(tls)), h2)
                }
            };
            Ok(CappedIo { io: TokioIo::new(stream), h2, _permit: permit })
        })
    }
}

/// No slot came free within the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("{0} connections already open to this target (max_connections)")]
pub(crate) struct CapReached(usize);

/// Whether a client error is [`CapReached`].
pub(crate) fn cap_reached(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(err) = src {
        if err.is::<CapReached>() {
            return true;
        }
        src = err.source();
    }
    false
}

/// The TLS handshake with a target failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TlsError(String);

/// How the upstream's connections speak TLS.
#[derive(Clone)]
pub(crate) struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Build from an upstream's `tls` settings (paths relative to `base`)
    /// for `protocol`; `default_name` is the host name of its first
    /// target, when it is a name. Also returns a fingerprint of everything
    /// that went in, so upstreams with the same settings share a pool.
    pub(crate) fn build(
        cfg: &UpstreamTlsConfig,
        protocol: UpstreamProtocol,
        base: &std::path::Path,
        default_name: Option<&str>,
    ) -> Result<(Self, [u8; 32]), TlsSetupError> {
        use sha2::{Digest, Sha256};
        let mut fingerprint = Sha256::new();
        let provider = crate::tls::provider();
        let roots = match &cfg.ca {
            Some(ca) => {
                let path = base.join(ca);
                let certs = crate::tls::load_certs(&path)?;
                certs.iter().for_each(|c| fingerprint.update(c));
                crate::tls::roots(certs, &path)?
            }
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(crate::tls::versions(weir_config::TlsVersion::Tls12))
            .map_err(|e| TlsSetupError::Versions(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (base.join(cert), base.join(key));
                let chain = crate::tls::load_certs(&cert)?;
                let key_der = crate::tls::load_key(&key)?;
                chain.iter().for_each(|c| fingerprint.update(c));
                fingerprint.update(key_der.secret_der());
                builder.with_client_auth_cert(chain, key_der).map_err(|e| TlsSetupError::ClientCertificate {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsSetupError::CertWithoutKey),
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            UpstreamProtocol::H1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        };
        let name = cfg.server_name.as_deref().or(default_name);
        let server_name = match name {
            Some(n) => Some(
                ServerName::try_from(n.to_owned())
                    .map_err(|e| TlsSetupError::ServerName { name: n.to_owned(), reason: e.to_string() })?,
            ),
            None => None,
        };
        fingerprint.update(format!("{protocol:?}|{name:?}"));
        Ok((Self { config: Arc::new(config), server_name }, fingerprint.finalize().into()))
    }
}

/// The system's trusted roots (read once).
fn system_roots() -> Result<rustls::RootCertStore, TlsSetupError> {
    static ROOTS: std::sync::OnceLock<Result<rustls::RootCertStore, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!("no trusted root certificates found on this system{why}; set `tls.ca`"));
            }
            Ok(roots)
        })
        .clone()
        .map_err(TlsSetupError::SystemRoots)
}

/// A TCP connection to a target, in cleartext or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection holding its slot until it closes.
pub(crate) struct CappedIo {
    io: TokioIo<Stream>,
    h2: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection for CappedIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
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
