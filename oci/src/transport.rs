//! One HTTP/1.1 exchange at a time: TCP (then TLS with the system's
//! roots for `https`), the request, the response head within the
//! timeout; and reading a body within a size limit while it streams.
//!
//! Each request opens its own connection: a pull is a handful of
//! requests, and keeping no pool keeps the redirect and credential rules
//! simple (a connection is only ever to the host the request names).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why an exchange failed before a response head arrived.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Resolve, connect, or the connection failed.
    Unreachable(String),
    /// TLS setup or handshake.
    Tls(String),
    /// No response head within the timeout.
    Timeout,
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Longer than the limit; `Some` when `Content-Length` said so before
    /// anything was read.
    TooLarge(Option<u64>),
    /// The connection failed mid-body.
    Broken(String),
    /// No next piece within the timeout.
    Timeout,
}

/// The TLS client configuration, made on first use (a loopback-only
/// setup never needs the system's roots).
#[derive(Default)]
pub(crate) struct Tls {
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl Tls {
    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.config
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                    return Err(format!("no trusted root certificates found on this system{why}"));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS versions: {e}"))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(config))
            })
            .clone()
    }
}

/// The port `uri` is spoken to on.
pub(crate) fn effective_port(uri: &Uri) -> u16 {
    uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 })
}

/// Whether two URIs name the same host and port (host case-insensitive).
pub(crate) fn same_authority(a: &Uri, b: &Uri) -> bool {
    let host = |u: &Uri| u.host().unwrap_or_default().to_ascii_lowercase();
    host(a) == host(b) && effective_port(a) == effective_port(b)
}

/// `HOST:PORT` of `uri`, for messages.
pub(crate) fn host_port(uri: &Uri) -> String {
    format!("{}:{}", uri.host().unwrap_or_default(), effective_port(uri))
}

/// `location` resolved against `base`: absolute, absolute-path or
/// relative-path references.
pub(crate) fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    let loc: Uri = location.trim().parse().ok()?;
    if loc.scheme().is_some() && loc.authority().is_some() {
        return Some(loc);
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority()?.as_str();
    let path = location.trim();
    if let Some(rest) = path.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
        format!("{dir}/{path}")
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

/// Send one request and wait for the response head, all within `timeout`.
/// The body is read with [`read_limited`].
pub(crate) async fn send(
    tls: &Tls,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    match tokio::time::timeout(timeout, send_within(tls, method, uri, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Timeout),
    }
}

async fn send_within(
    tls: &Tls,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, SendError> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => return Err(SendError::Unreachable(format!("unsupported URL scheme {other:?} in {uri}"))),
    };
    let host = uri.host().ok_or_else(|| SendError::Unreachable(format!("no host in {uri}")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = effective_port(uri);
    let tcp = connect_tcp(bare, port).await?;
    let _ = tcp.set_nodelay(true);
    let stream = if https {
        let config = tls.config().map_err(SendError::Tls)?;
        let name = match bare.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(bare.to_owned())
                .map_err(|e| SendError::Tls(format!("server name `{bare}`: {e}")))?,
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| SendError::Tls(format!("handshake with {host}:{port}: {e}")))?;
        Stream::Tls(Box::new(tls))
    } else {
        Stream::Plain(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Unreachable(format!("{host}:{port}: {e}")))?;
    // The connection lives until the response body is read or dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let default_port = if https { 443 } else { 80 };
    let host_header = if port == default_port { host.to_owned() } else { format!("{host}:{port}") };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host_header)
        .body(Full::new(body))
        .map_err(|e| SendError::Unreachable(format!("cannot build request for {uri}: {e}")))?;
    request.headers_mut().extend(headers);
    sender.send_request(request).await.map_err(|e| SendError::Unreachable(format!("{host}:{port}: {e}")))
}

async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, SendError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return TcpStream::connect((ip, port))
            .await
            .map_err(|e| SendError::Unreachable(format!("connect to {host}:{port}: {e}")));
    }
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| SendError::Unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("connect to {host}:{port} ({addr}): {e}")),
        }
    }
    Err(SendError::Unreachable(last.unwrap_or_else(|| format!("cannot resolve {host}: no addresses"))))
}

/// Read `response`'s body, failing as soon as it passes `limit` bytes
/// (before reading anything when `Content-Length` already says so), and
/// when no piece arrives within `timeout`.
pub(crate) async fn read_limited(
    response: Response<Incoming>,
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    let length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length
        && length > limit
    {
        return Err(ReadError::TooLarge(Some(length)));
    }
    let mut body = response.into_body();
    let mut out = Vec::with_capacity(length.unwrap_or(0).min(limit) as usize);
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(ReadError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(ReadError::TooLarge(None));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// A connection in cleartext or TLS.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn resolves_locations() {
        let base = uri("http://127.0.0.1:5000/v2/r/blobs/uploads/");
        let r = |l: &str| resolve(&base, l).map(|u| u.to_string());
        assert_eq!(
            r("/v2/r/blobs/uploads/abc?_state=x").as_deref(),
            Some("http://127.0.0.1:5000/v2/r/blobs/uploads/abc?_state=x")
        );
        assert_eq!(r("abc").as_deref(), Some("http://127.0.0.1:5000/v2/r/blobs/uploads/abc"));
        assert_eq!(r("https://cdn.example.com/x?sig=1").as_deref(), Some("https://cdn.example.com/x?sig=1"));
        assert_eq!(r("//other:81/x").as_deref(), Some("http://other:81/x"));
    }

    #[test]
    fn authorities() {
        assert!(same_authority(&uri("https://Reg.io/a"), &uri("https://reg.io:443/b")));
        assert!(!same_authority(&uri("https://reg.io/a"), &uri("https://reg.io:444/b")));
        assert!(!same_authority(&uri("https://reg.io/a"), &uri("https://cdn.reg.io/b")));
        assert!(!same_authority(&uri("http://reg.io/a"), &uri("https://reg.io/a")));
        assert_eq!(host_port(&uri("https://reg.io/a")), "reg.io:443");
        assert_eq!(host_port(&uri("http://[::1]:5000/a")), "[::1]:5000");
    }
}
