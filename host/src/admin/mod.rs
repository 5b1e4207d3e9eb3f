//! The admin listener: liveness, readiness, metrics, the admin API and the
//! dashboard. Bound to loopback by default; with `[server] admin_token`
//! set, everything but `/healthz`, `/readyz` and the dashboard's page
//! itself needs `Authorization: Bearer TOKEN`.
//!
//! | method | path | answer |
//! |--------|------|--------|
//! | GET | `/healthz` | `ok` while the process serves |
//! | GET | `/readyz` | `ready` once a snapshot is loaded |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/admin/status` | JSON: generation, reload status and history, routes, plugins, upstreams |
//! | GET | `/admin/routes` | JSON: each route's match rule, chain, upstream and last-minute figures |
//! | GET | `/admin/upstreams` | JSON: each upstream's targets, error counts and last-minute figures |
//! | GET | `/admin/plugins` | JSON: each plugin's module, sha256, config (secrets redacted), pool and call figures |
//! | GET | `/admin/series?since=MS` | JSON: per-second points of every route, upstream and plugin |
//! | POST | `/admin/plugins/NAME/promote` | a canary becomes the version every request runs |
//! | POST | `/admin/plugins/NAME/abort` | a canary is taken back: no request runs it |
//! | GET | `/admin/events` | JSON: the latest plugin events, newest first |
//! | GET | `/admin/fleet` | JSON: in fleet mode, every node in etcd's member list and what it serves |
//! | POST | `/admin/reload` | reload now; JSON with the new generation or the errors |
//! | GET | `/dashboard` | the live dashboard (one page, assets embedded) |

use http::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use crate::Shared;
use crate::body::{self, ProxyBody};
use crate::canary::{Canary, Status};
use crate::observe::live::Point;

/// The dashboard page: HTML, CSS and script in one file, no external asset.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Paths the admin listener answers, for 405 versus 404.
const PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/status",
    "/admin/routes",
    "/admin/upstreams",
    "/admin/plugins",
    "/admin/series",
    "/admin/events",
    "/admin/reload",
    "/admin/recordings",
    "/admin/fleet",
    "/dashboard",
];

/// Answer one admin request.
pub(crate) async fn handle<B>(shared: &Shared, req: Request<B>) -> Response<ProxyBody> {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz" | "/dashboard" | "/dashboard/" | "/");
    if !open && !authorized(shared, &req) {
        let mut resp = json_response(StatusCode::UNAUTHORIZED, json!({ "error": "admin token required" }));
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"weir-admin\""));
        return resp;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, shared.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/admin/status") => json_response(StatusCode::OK, status(shared)),
        (&Method::GET, "/admin/routes") => json_response(StatusCode::OK, routes(shared)),
        (&Method::GET, "/admin/upstreams") => json_response(StatusCode::OK, upstreams(shared)),
        (&Method::GET, "/admin/plugins") => json_response(StatusCode::OK, plugins(shared)),
        (&Method::GET, "/admin/series") => {
            let since = query_param(req.uri().query(), "since").and_then(|v| v.parse().ok()).unwrap_or(0);
            json_response(StatusCode::OK, serde_json::to_value(shared.metrics.live().since(since)).unwrap_or_default())
        }
        (&Method::GET, "/admin/events") => {
            let recent = shared.loader.events.recent();
            let events: Vec<&crate::observe::events::EventRecord> = recent.iter().map(|e| &**e).collect();
            json_response(StatusCode::OK, json!({ "events": events }))
        }
        (&Method::POST, "/admin/reload") => match crate::snapshot::reload::reload(shared).await {
            Ok(generation) => json_response(StatusCode::OK, json!({ "generation": generation })),
            Err(errors) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>() }),
            ),
        },
        (&Method::POST, p) if p.starts_with("/admin/plugins/") => canary_action(shared, p),
        (&Method::GET, "/admin/fleet") => match &shared.origin {
            crate::Origin::Etcd(source) => match crate::snapshot::members::list(source).await {
                Ok(doc) => json_response(StatusCode::OK, doc),
                Err(e) => json_response(StatusCode::BAD_GATEWAY, json!({ "error": e })),
            },
            crate::Origin::File => json_response(
                StatusCode::NOT_FOUND,
                json!({ "error": "not in fleet mode: the configuration is a file" }),
            ),
        },
        (&Method::GET, "/admin/recordings") => json_response(StatusCode::OK, recordings(shared).await),
        (&Method::GET, p) if p.starts_with("/admin/recordings/") => {
            let id = p["/admin/recordings/".len()..].to_owned();
            match recording(shared, id).await {
                Some(r) => json_response(StatusCode::OK, r),
                None => json_response(StatusCode::NOT_FOUND, json!({ "error": "no such recording" })),
            }
        }
        (&Method::GET, "/dashboard" | "/dashboard/") => {
            let mut resp = text(StatusCode::OK, DASHBOARD);
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
            // Nothing outside this page may load or run.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                ),
            );
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            resp
        }
        (&Method::GET, "/") => {
            let mut resp = text(StatusCode::FOUND, "see /dashboard\n");
            resp.headers_mut().insert(header::LOCATION, header::HeaderValue::from_static("/dashboard"));
            resp
        }
        (_, p) if PATHS.contains(&p) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether the request carries the admin token (or none is configured).
/// The comparison does not stop at the first differing byte.
fn authorized<B>(shared: &Shared, req: &Request<B>) -> bool {
    let snap = shared.snapshot.load();
    let Some(token) = snap.server.admin_token.as_deref() else { return true };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Totals over the last points (one a second).
fn recent(last: &[Point]) -> serde_json::Value {
    let requests: u64 = last.iter().map(|p| p.requests).sum();
    let errors: u64 = last.iter().map(|p| p.errors).sum();
    let worst_p99 = last.iter().map(|p| p.p99_ms).fold(0.0, f64::max);
    let span = last.len().max(1) as f64;
    json!({
        "seconds": last.len(),
        "requests": requests,
        "errors": errors,
        "rate_per_s": (requests as f64 / span * 100.0).round() / 100.0,
        "error_ratio": if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        "max_p99_ms": worst_p99,
    })
}

/// `/admin/routes`.
pub(crate) fn routes(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let live = shared.metrics.live();
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "match": r.matches,
                "upstream": &*r.upstream_name,
                "chain": r.chain.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
                "buffers_request_body": r.buffer_request,
                "buffers_response_body": r.buffer_response,
                "in_flight": r.metrics.in_flight(),
                "last_minute": recent(&live.route(&r.name).last(60)),
            })
        })
        .collect();
    json!({ "generation": snap.generation, "routes": routes })
}

/// `/admin/upstreams`.
pub(crate) fn upstreams(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let live = shared.metrics.live();
    let upstreams: Vec<_> = snap
        .upstreams
        .values()
        .map(|u| {
            let mut v = u.status_json();
            v["timeout_ms"] = json!(u.timeout.as_millis() as u64);
            v["last_minute"] = recent(&live.upstream(&u.name).last(60));
            v
        })
        .collect();
    json!({ "generation": snap.generation, "upstreams": upstreams })
}

/// `GET /admin/recordings`: the flight recorder's newest recordings,
/// newest first (read on a blocking thread: it lists a folder).
async fn recordings(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let Some(recorder) = snap.recorder.clone() else {
        return json!({ "enabled": false, "recordings": [] });
    };
    let dir = recorder.dir().to_owned();
    let (list, total) =
        tokio::task::spawn_blocking(move || crate::observe::recorder::list(&dir)).await.unwrap_or_default();
    json!({
        "enabled": true,
        "dir": recorder.dir().display().to_string(),
        "dropped": recorder.dropped(),
        "total": total,
        "recordings": list,
    })
}

/// `GET /admin/recordings/ID`: one recording, whole.
async fn recording(shared: &Shared, id: String) -> Option<serde_json::Value> {
    let recorder = shared.snapshot.load().recorder.clone()?;
    let dir = recorder.dir().to_owned();
    let r = tokio::task::spawn_blocking(move || crate::observe::recorder::read(&dir, &id)).await.ok()??;
    serde_json::to_value(r).ok()
}

/// `/admin/plugins`.
pub(crate) fn plugins(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let live = shared.metrics.live();
    let plugins: Vec<_> = snap
        .plugins
        .values()
        .map(|p| {
            let s = p.spec();
            let m = p.metrics();
            let config = serde_json::from_str(&s.config_json).map(redact).unwrap_or(serde_json::Value::Null);
            json!({
                "name": &*s.name,
                "module": s.module,
                "resolved": snap.resolved.get(&s.module),
                "sha256": s.sha256,
                "config": config,
                "phases": p.phase_names(),
                "failure": s.failure,
                "isolation": s.isolation,
                "memory_limit_bytes": s.limits.memory,
                "deadline_ms": s.limits.deadline.as_millis() as u64,
                "pool": { "idle": p.idle_instances(), "max_idle": s.max_idle, "created": m.instances_created() },
                "memory_peak_bytes": m.memory_peak_bytes(),
                "crash_loop": p.crash_loop(),
                "calls": m.calls(),
                "outbound": { "allowed": s.outbound, "calls": m.outbound_calls() },
                "last_minute": recent(&live.plugin(&s.name).last(60)),
                "canary": snap.canaries.get(&*s.name).map(|c| canary(c, &snap, &live.plugin(&c.canary.spec().label()).last(60))),
            })
        })
        .collect();
    json!({ "generation": snap.generation, "plugins": plugins })
}

/// A plugin's canary in `/admin/plugins`: its module, share, state (and
/// why), the comparison's window, and its own calls.
fn canary(c: &Canary, snap: &crate::snapshot::Snapshot, last: &[Point]) -> serde_json::Value {
    let s = c.canary.spec();
    let mut doc = c.state.to_json(&s.module, &s.sha256);
    doc["resolved"] = json!(snap.resolved.get(&s.module));
    doc["calls"] = json!(c.canary.metrics().calls());
    doc["crash_loop"] = json!(c.canary.crash_loop());
    doc["last_minute"] = recent(last);
    doc
}

/// `POST /admin/plugins/NAME/promote` or `/abort`: the canary's new state,
/// 404 without one, 409 when it is past that.
fn canary_action(shared: &Shared, path: &str) -> Response<ProxyBody> {
    let rest = &path["/admin/plugins/".len()..];
    let Some((name, action)) = rest.split_once('/') else {
        return json_response(StatusCode::NOT_FOUND, json!({ "error": "not found" }));
    };
    let to = match action {
        "promote" => Status::Promoted,
        "abort" => Status::Aborted,
        _ => return json_response(StatusCode::NOT_FOUND, json!({ "error": "not found" })),
    };
    let snap = shared.snapshot.load();
    let Some(c) = snap.canaries.get(name) else {
        let why = if snap.plugins.contains_key(name) { "has no canary" } else { "is not configured" };
        return json_response(StatusCode::NOT_FOUND, json!({ "error": format!("plugin `{name}` {why}") }));
    };
    match c.state.operator(to, &*c.events) {
        Ok(state) => json_response(StatusCode::OK, json!({ "plugin": name, "state": state.as_str() })),
        Err(why) => json_response(StatusCode::CONFLICT, json!({ "plugin": name, "error": why })),
    }
}

/// A plugin's config with secret-looking values replaced, so the admin API
/// never shows keys or passwords.
fn redact(value: serde_json::Value) -> serde_json::Value {
    const SECRET: &[&str] = &["secret", "password", "passwd", "token", "credential", "private", "keys", "hash"];
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                if SECRET.iter().any(|s| lower.contains(s)) {
                    (k, serde_json::Value::String("[redacted]".into()))
                } else {
                    (k, redact(v))
                }
            })
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(redact).collect(),
        other => other,
    }
}

/// Where the configuration comes from: a file, or etcd with its watch's
/// state.
fn config_source(shared: &Shared) -> serde_json::Value {
    match &shared.origin {
        crate::Origin::File => json!({ "kind": "file" }),
        crate::Origin::Etcd(etcd) => {
            let mut doc = serde_json::to_value(etcd.status()).unwrap_or_default();
            doc["kind"] = "etcd".into();
            doc["endpoints"] = json!(etcd.location.endpoints());
            doc["key"] = etcd.location.config_key().into();
            doc
        }
    }
}

/// The `/admin/status` document.
pub(crate) fn status(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let reload = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    let plugins: Vec<_> = snap
        .plugins
        .values()
        .map(|p| {
            let s = p.spec();
            json!({
                "name": &*s.name,
                "module": s.module,
                "resolved": snap.resolved.get(&s.module),
                "sha256": s.sha256,
                "phases": p.phase_names(),
                "failure": s.failure,
                "isolation": s.isolation,
                "memory_limit_bytes": s.limits.memory,
                "deadline_ms": s.limits.deadline.as_millis() as u64,
                "idle_instances": p.idle_instances(),
                "crash_loop": p.crash_loop().state,
            })
        })
        .collect();
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "upstream": &*r.upstream_name,
                "chain": r.chain.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let upstreams: Vec<_> = snap
        .upstreams
        .values()
        .map(|u| {
            let set = u.targets();
            let now = weir_plugin_host::clock::monotonic_ms();
            json!({
                "name": &*u.name,
                "scheme": u.scheme.as_str(),
                "protocol": u.protocol,
                "targets": set.primary.targets.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>(),
                "backup": set.backup.targets.iter().map(|t| t.addr.as_str()).collect::<Vec<_>>(),
                "healthy": set.all().filter(|t| t.state.usable(now)).map(|t| t.addr.as_str()).collect::<Vec<_>>(),
                "breaker": u.breaker.state(),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "loaded_at_ms": weir_plugin_host::clock::unix_ms_of(snap.loaded_at),
        "config": shared.config_path.display().to_string(),
        "config_source": config_source(shared),
        "plugins_dir": snap.plugins_dir.display().to_string(),
        "last_reload_error": reload.last_error,
        "serving_last_good": reload.serving_last_good,
        "last_good": shared.last_good.as_ref().map(|store| json!({
            "state_dir": store.dir().display().to_string(),
            "saved_generation": reload.last_good_saved.map(|(g, _)| g),
            "saved_at_ms": reload.last_good_saved.map(|(_, at)| weir_plugin_host::clock::unix_ms_of(at)),
            "error": reload.last_good_error,
        })),
        "last_reload_attempt_ms": reload.last_attempt.map(weir_plugin_host::clock::unix_ms_of),
        "reloads": { "succeeded": reload.successes, "failed": reload.failures },
        "reload_history": reload.history,
        "plugins": plugins,
        "routes": routes,
        "upstreams": upstreams,
        "state": shared.loader.plugins.state().describe(),
        "events_webhook": snap.webhook.as_ref().map(|w| w.redacted()),
        "tls": snap.tls.as_ref().map(|t| json!({
            "listen": t.listen.to_string(),
            "certificates": t.certificates,
        })),
    })
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}
