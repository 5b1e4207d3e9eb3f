//! The request path, room by room:
//!
//! ```text
//! checks → route → request chain → (request body chain) → upstream | cache | aggregate
//!        → response chain → (response body chain) → reply
//! ```
//!
//! [`handle`] reads as that pipeline. What a request carries from its head
//! to its answer (id, trace, access-log record, accounting) is a
//! `context::Pending`, and every answer, refusal or error leaves through
//! its `finish`. The trip through a route is an `exchange::Exchange`; its
//! four plugin phases share one runner (`chain`).
//!
//! A route with `grpc_transcode` or `grpc_web` translates JSON and gRPC-Web
//! requests to gRPC after the request phases (`transcode`).
//!
//! Bodies stream straight through unless a plugin on the route asked for a
//! body phase; then that body alone is buffered, up to
//! `server.max_buffered_body`.

pub(crate) mod chain;
pub(crate) mod checks;
mod context;
mod exchange;
mod grpc;
mod reply;
mod request_body;
mod stream;
mod transcode;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use weir_plugin_host::{ConnectionTls, RequestInfo};

use self::chain::Chain;
use self::context::Pending;
use self::exchange::Exchange;
use self::reply::{BodyVerdict, Counted};
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::headers::{self, names};
use crate::router::Match;
use crate::snapshot::{Route, Snapshot};

/// Serve one downstream request on `snap`.
pub(crate) async fn handle<B>(snap: Arc<Snapshot>, req: Request<B>, client: SocketAddr) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<body::BoxError>,
{
    let (mut parts, body) = req.into_parts();
    // A WebSocket handshake: the client's connection, to splice on a 101.
    let upgrade = tunnel::requested(&mut parts);
    let client_upgrade = if upgrade.is_some() { parts.extensions.remove::<OnUpgrade>() } else { None };
    let mut cx = Pending::begin(&snap, &parts, client);

    // Framing, target and Host rules, and [limits]: a refusal closes the
    // connection, and what the client is still sending is drained so the
    // answer reaches it.
    if let Err(e) = checks::check(&parts, &snap.limits) {
        body::linger(body);
        let mut resp = cx.error(&snap.unrouted, e);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return cx.finish(resp);
    }
    let host = authority_of(&parts).to_owned();
    let (route, params) = match snap.router.find(&host, parts.uri.path(), &parts.method) {
        Match::Found(i, params) => (&snap.routes[i], params),
        Match::NotFound => {
            let resp = cx.error(&snap.unrouted, ProxyError::NoRoute);
            return cx.finish(resp);
        }
        Match::MethodNotAllowed(allowed) => {
            let resp = cx.error(&snap.unrouted, ProxyError::MethodNotAllowed(allowed));
            return cx.finish(resp);
        }
    };
    cx.routed(route, &parts.method);
    // CORS goes on every answer of a route that has it, errors included.
    let origin = route.translation.as_ref().and(parts.headers.get(header::ORIGIN)).cloned();

    let tls = forwarded(&snap, &mut parts, &cx.request_id);
    let bytes_in = Arc::new(AtomicU64::new(0));
    cx.count_in(bytes_in.clone());
    let verdict = Arc::new(BodyVerdict::default());
    let body = Counted::new(body, bytes_in, snap.limits.max_request_body, verdict.clone());
    let request_id = cx.request_id.clone();
    let info = Arc::new(RequestInfo { client, authority: host, route: route.name.clone(), request_id, params, tls });
    let logs = cx.logs_outcomes();
    // A `5xx` recording is of the request as the chain received it: kept
    // only when the recorder wants those, on a route with plugins.
    let recorder = snap.recorder.as_deref();
    let received = recorder
        .filter(|r| r.wants(weir_config::Trigger::Status5xx) && !route.chain.is_empty())
        .map(|r| (r, r.request_head(&parts, &info), std::time::Instant::now()));
    let mut exchange = Exchange {
        snap: &snap,
        route,
        info,
        chain: Chain::new(
            &route.chain,
            route.canaries.as_deref(),
            &mut cx.trace,
            logs,
            cx.grpc,
            snap.server.max_buffered_body,
            recorder,
        ),
        grpc: cx.grpc,
        upgrade,
    };
    let result = exchange.run(parts, body).await;
    let (outcomes, upgrade) = (exchange.chain.outcomes.take(), exchange.upgrade.take());
    let recorded = exchange.chain.recorded;
    let info = received.as_ref().map(|_| exchange.info.clone());
    cx.exchanged(route, outcomes);
    let result = match (result, client_upgrade, &upgrade, route.websocket) {
        (Ok(resp), Some(client), Some(handshake), Some(idle)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tunnel::splice(resp, client, handshake, idle, route.metrics.websocket.clone())
                .map_err(|e| ProxyError::Upstream { upstream: route.upstream_name.clone(), detail: e.into() })
        }
        (result, ..) => result,
    };
    let mut resp = answer(&cx, route, result, &verdict, &snap);
    if let Some(t) = &route.translation {
        t.add_cors(origin.as_ref(), resp.headers_mut());
    }
    if let (Some((recorder, (request, redacted), started)), Some(info)) = (received, info)
        && resp.status().is_server_error()
        && !recorded
    {
        recorder.ended(resp.status().as_u16(), &info, request, redacted, started.elapsed());
    }
    cx.finish(resp)
}

/// The request as the upstream will see it, before the plugins: no
/// hop-by-hop headers, the request id, origin-form, and
/// `x-forwarded-client-cert` only as the gateway verified it. Returns what
/// the TLS handshake established, for the plugins.
fn forwarded(snap: &Snapshot, parts: &mut Parts, request_id: &str) -> Option<Arc<ConnectionTls>> {
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::try_from(request_id) {
        parts.headers.insert(names::X_REQUEST_ID, v);
    }
    // From here on the URI is origin-form; the authority is kept apart.
    let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);
    let tls = parts.extensions.remove::<Arc<ConnectionTls>>();
    // `x-forwarded-client-cert`: only the gateway says which client
    // certificate it verified (`[server.tls] forward_client_cert`).
    parts.headers.remove(names::X_FORWARDED_CLIENT_CERT);
    if let Some(t) = &tls
        && snap.tls.as_ref().is_some_and(|l| l.forward_client_cert)
        && let Some(v) = headers::client_cert(t).and_then(|v| HeaderValue::try_from(v).ok())
    {
        parts.headers.insert(names::X_FORWARDED_CLIENT_CERT, v);
    }
    tls
}

/// The response for the route's result: its own, or the gateway's error.
fn answer(
    cx: &Pending,
    route: &Route,
    result: Result<Response<ProxyBody>, ProxyError>,
    verdict: &BodyVerdict,
    snap: &Snapshot,
) -> Response<ProxyBody> {
    match result {
        Ok(resp) => {
            cx.answered(&route.metrics, &resp);
            resp
        }
        Err(e) => {
            // Whatever failed downstream of it, a body the client broke or
            // overran is the client's error, and ends the connection.
            let client = verdict.error(snap.limits.max_request_body);
            let closes = client.is_some();
            let mut resp = cx.error(&route.metrics, client.unwrap_or(e));
            if closes {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    }
}

/// The authority the client addressed: `:authority`/absolute URI, else `Host`.
fn authority_of(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}
