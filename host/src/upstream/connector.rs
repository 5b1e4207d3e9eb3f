//! Connecting to targets: TCP (the target's address, resolved if it is a
//! name), then TLS when the upstream has `tls`, within the connect
//! timeout. The pool ([`super::pool`]) decides when to connect and speaks
//! HTTP over what this returns.
//!
//! With TLS the target's certificate is verified against the configured CA
//! or the system's roots, for `server_name` (or the target's host); ALPN
//! offers what the upstream's `protocol` allows, and a connection that
//! agreed on `h2` is spoken to in HTTP/2.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsSetupError;
use weir_config::{UpstreamProtocol, UpstreamTlsConfig};

/// Why a connection to a target could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// TCP connect failed.
    #[error("tcp connect to {0}: {1}")]
    Tcp(SocketAddr, #[source] io::Error),
    /// TCP and TLS together took longer than the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Open a connection to `addr` within `timeout`: TCP with `TCP_NODELAY`,
/// then TLS with `tls`. Also says whether ALPN agreed on HTTP/2.
pub(crate) async fn connect(
    addr: &Authority,
    timeout: Duration,
    tls: Option<&TlsClient>,
) -> Result<(Stream, bool), ConnectError> {
    match tokio::time::timeout(timeout, connect_within(addr, tls)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

async fn connect_within(addr: &Authority, tls: Option<&TlsClient>) -> Result<(Stream, bool), ConnectError> {
    let host = addr.host().trim_start_matches('[').trim_end_matches(']');
    let port = addr.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = match host.parse::<IpAddr>() {
        Ok(ip) => {
            let sa = SocketAddr::new(ip, port);
            TcpStream::connect(sa).await.map_err(|e| ConnectError::Tcp(sa, e))?
        }
        Err(_) => {
            // A name (discovery normally resolves them first): each address
            // in turn, the last error reported.
            let found = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ConnectError::Resolve(addr.to_string(), e.to_string()))?;
            let mut last = None;
            let mut tcp = None;
            for sa in found {
                match TcpStream::connect(sa).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = Some(ConnectError::Tcp(sa, e)),
                }
            }
            match (tcp, last) {
                (Some(s), _) => s,
                (None, Some(e)) => return Err(e),
                (None, None) => return Err(ConnectError::Resolve(addr.to_string(), "no addresses".into())),
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok((Stream::Plain(tcp), false)) };
    let name = match &tls.server_name {
        Some(n) => n.clone(),
        None => ServerName::try_from(host.to_owned()).map_err(|e| TlsError(format!("server name: {e}")))?,
    };
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError(format!("TLS handshake: {e}")))?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((Stream::Tls(Box::new(stream)), h2))
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
pub(crate) enum Stream {
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
