//! WebSocket over HTTP/1.1 `Upgrade`: the handshake is a request like any
//! other (routed, run through the request chain, sent to the upstream);
//! when the upstream answers `101 Switching Protocols`, the client's
//! connection and the upstream's are spliced and frames pass through
//! untouched, until either side closes or the route's idle timeout passes
//! with no byte either way.
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
use crate::metrics::WebSocketMetrics;

/// Read size of each direction.
const CHUNK: usize = 16 * 1024;

/// The client asks for a WebSocket: HTTP/1.1, `Upgrade: websocket` and
/// `Connection: upgrade`. Returns the `Upgrade` value to send on.
pub fn requested(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = parts.headers.get(header::UPGRADE)?;
    (connection_upgrade && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")).then(|| upgrade.clone())
}

/// Put the upgrade back on the request to the upstream (the hop-by-hop
/// rules removed it).
pub fn prepare_request(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.clone());
}

/// Answer the client's handshake with the upstream's `101` and splice the
/// two connections once both are upgraded.
pub fn splice(
    mut resp: Response<ProxyBody>,
    client: OnUpgrade,
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
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.remove(header::CONTENT_LENGTH);
    debug_assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
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
    fn only_websocket_upgrades_on_http11() {
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert_eq!(requested(&parts(Version::HTTP_11, &ws)).as_ref().map(|v| v.as_bytes()), Some(&b"WebSocket"[..]));
        assert!(requested(&parts(Version::HTTP_10, &ws)).is_none());
        assert!(requested(&parts(Version::HTTP_11, &[("connection", "upgrade"), ("upgrade", "h2c")])).is_none());
        assert!(requested(&parts(Version::HTTP_11, &[("upgrade", "websocket")])).is_none(), "no Connection: upgrade");
    }

    #[tokio::test]
    async fn pump_carries_both_ways_and_stops_when_idle() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let metrics = crate::metrics::Metrics::new().route("r").websocket;
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
