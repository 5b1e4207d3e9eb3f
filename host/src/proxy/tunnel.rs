//! WebSocket: the handshake is a request like any other (routed, run
//! through the request chain, sent to the upstream); when the upstream
//! answers `101 Switching Protocols`, the client's connection and the
//! upstream's are spliced and frames pass through untouched, until either
//! side closes or the route's idle timeout passes with no byte either way.
//!
//! Clients open one with an HTTP/1.1 `Upgrade`, or over HTTP/2 with an
//! extended `CONNECT` (RFC 8441: `:protocol websocket`), which the gateway
//! turns into an HTTP/1.1 upgrade to the upstream and answers `200` once
//! the upstream has switched. Either way the chain sees a `GET`.
//!
//! Only the `websocket` protocol is tunnelled. Any other `Upgrade` (`h2c`
//! among them, a known way to smuggle requests past a proxy) is dropped
//! like the hop-by-hop header it is, and the request is served as a plain
//! one.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{self, ProxyBody};
use crate::observe::metrics::WebSocketMetrics;

/// Read size of each direction.
const CHUNK: usize = 16 * 1024;

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// HTTP/1.1 `Upgrade`, with the value to send on.
    Http1(HeaderValue),
    /// HTTP/2 extended `CONNECT` (RFC 8441).
    Http2,
}

/// The client asks for a WebSocket: HTTP/1.1 with `Upgrade: websocket` and
/// `Connection: upgrade`, or HTTP/2 `CONNECT` with `:protocol websocket`.
/// The latter is turned into the `GET` it stands for.
pub(crate) fn requested(parts: &mut Parts) -> Option<Handshake> {
    if parts.version == Version::HTTP_2 && parts.method == http::Method::CONNECT {
        let websocket = parts.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str() == "websocket");
        if websocket {
            parts.extensions.remove::<hyper::ext::Protocol>();
            parts.method = http::Method::GET;
            return Some(Handshake::Http2);
        }
        return None;
    }
    if parts.version != Version::HTTP_11 {
        return None;
    }
    // Most requests have no `Upgrade`: one lookup, then nothing else.
    let upgrade = parts.headers.get(header::UPGRADE)?;
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (connection_upgrade && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .then(|| Handshake::Http1(upgrade.clone()))
}

/// Make the request to the upstream an HTTP/1.1 upgrade (the hop-by-hop
/// rules removed the client's; an HTTP/2 client sent none, and no
/// `Sec-WebSocket-Key` either, so the gateway makes one).
pub(crate) fn prepare_request(headers: &mut HeaderMap, handshake: &Handshake) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    match handshake {
        Handshake::Http1(upgrade) => {
            headers.insert(header::UPGRADE, upgrade.clone());
        }
        Handshake::Http2 => {
            use base64::Engine;
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
            if let Ok(v) = HeaderValue::try_from(key) {
                headers.insert(header::SEC_WEBSOCKET_KEY, v);
            }
        }
    }
}

/// Answer the client's handshake with the upstream's `101` and splice the
/// two connections once both are upgraded.
pub(crate) fn splice(
    mut resp: Response<ProxyBody>,
    client: OnUpgrade,
    handshake: &Handshake,
    idle: Duration,
    metrics: WebSocketMetrics,
) -> Result<Response<ProxyBody>, &'static str> {
    let upstream =
        resp.extensions_mut().remove::<OnUpgrade>().ok_or("the upstream's 101 has no upgraded connection")?;
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        metrics.upgrades.inc();
        metrics.open.inc();
        pump(TokioIo::new(client), TokioIo::new(upstream), idle, &metrics).await;
        metrics.open.dec();
    });
    debug_assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    match handshake {
        Handshake::Http1(_) => {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Handshake::Http2 => {
            // RFC 8441 §5: a 2xx, and no Sec-WebSocket-Accept (the key was
            // the gateway's).
            h.remove(header::SEC_WEBSOCKET_ACCEPT);
            *resp.status_mut() = StatusCode::OK;
        }
    }
    Ok(resp.map(|_| body::empty()))
}

/// Copy both ways until both sides have closed, one side fails, or
/// nothing has moved for `idle`. A side's close is passed on as a
/// half-close of the other.
async fn pump<C, U>(client: C, upstream: U, idle: Duration, metrics: &WebSocketMetrics)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let (mut from_client, mut from_upstream) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut client_open, mut upstream_open) = (true, true);
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    while client_open || upstream_open {
        tokio::select! {
            n = client_read.read(&mut from_client), if client_open => match n {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = upstream_write.shutdown().await;
                }
                Ok(n) => {
                    if upstream_write.write_all(&from_client[..n]).await.is_err() {
                        break;
                    }
                    metrics.to_upstream.inc_by(n as u64);
                }
            },
            n = upstream_read.read(&mut from_upstream), if upstream_open => match n {
                Ok(0) | Err(_) => {
                    upstream_open = false;
                    let _ = client_write.shutdown().await;
                }
                Ok(n) => {
                    if client_write.write_all(&from_upstream[..n]).await.is_err() {
                        break;
                    }
                    metrics.to_client.inc_by(n as u64);
                }
            },
            () = &mut quiet => {
                tracing::debug!(?idle, "WebSocket closed: idle timeout");
                break;
            }
        }
        quiet.as_mut().reset(tokio::time::Instant::now() + idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut b = http::Request::get("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn only_websocket_upgrades() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert_eq!(
            requested(&mut parts(Version::HTTP_11, &ws)),
            Some(Handshake::Http1(HeaderValue::from_static("WebSocket")))
        );
        assert!(requested(&mut parts(Version::HTTP_10, &ws)).is_none());
        assert!(requested(&mut parts(Version::HTTP_11, &[("connection", "upgrade"), ("upgrade", "h2c")])).is_none());
        assert!(
            requested(&mut parts(Version::HTTP_11, &[("upgrade", "websocket")])).is_none(),
            "no Connection: upgrade"
        );
        assert!(requested(&mut parts(Version::HTTP_2, &ws)).is_none(), "no Upgrade in HTTP/2");
    }

    #[test]
    fn extended_connect_becomes_a_get() {
        let mut p = parts(Version::HTTP_2, &[]);
        p.method = http::Method::CONNECT;
        assert!(requested(&mut p).is_none(), "CONNECT without :protocol");
        p.extensions.insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(requested(&mut p), Some(Handshake::Http2));
        assert_eq!(p.method, http::Method::GET);
        assert!(p.extensions.get::<hyper::ext::Protocol>().is_none());
        let mut headers = HeaderMap::new();
        prepare_request(&mut headers, &Handshake::Http2);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["sec-websocket-key"].len(), 24, "16 random bytes in base64");
    }

    #[tokio::test]
    async fn pump_carries_both_ways_and_stops_when_idle() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let metrics = crate::observe::metrics::Metrics::new().route("r").websocket;
        let m = metrics.clone();
        let task = tokio::spawn(async move { pump(client, upstream, Duration::from_millis(100), &m).await });
        client_far.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        upstream_far.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        upstream_far.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        client_far.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
        // Then nothing: the idle timeout ends it, and both sides see EOF.
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("idle timeout").expect("task");
        assert_eq!(client_far.read(&mut buf).await.expect("eof"), 0);
        assert_eq!((metrics.to_upstream.get(), metrics.to_client.get()), (5, 2));
    }
}
