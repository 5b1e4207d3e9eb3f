//! The admin listener: liveness, readiness, metrics, status and reload.
//!
//! | method | path | answer |
//! |--------|------|--------|
//! | GET | `/healthz` | `ok` while the process serves |
//! | GET | `/readyz` | `ready` once a snapshot is loaded |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/admin/status` | JSON: generation, reload status, routes, plugins |
//! | GET | `/admin/events` | JSON: the latest plugin events, newest first |
//! | POST | `/admin/reload` | reload now; JSON with the new generation or the errors |

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use crate::Shared;
use crate::body::{self, ProxyBody};

/// Answer one admin request.
pub async fn handle<B>(shared: &Shared, req: Request<B>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
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
        (&Method::GET, "/admin/events") => {
            let recent = shared.loader.events.recent();
            let events: Vec<&crate::events::EventRecord> = recent.iter().map(|e| &**e).collect();
            json_response(StatusCode::OK, json!({ "events": events }))
        }
        (&Method::POST, "/admin/reload") => match crate::reload::reload(shared).await {
            Ok(generation) => json_response(StatusCode::OK, json!({ "generation": generation })),
            Err(errors) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>() }),
            ),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/admin/status" | "/admin/events" | "/admin/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The `/admin/status` document.
pub fn status(shared: &Shared) -> serde_json::Value {
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
                "sha256": s.sha256,
                "phases": p.phase_names(),
                "failure": s.failure,
                "isolation": s.isolation,
                "memory_limit_bytes": s.limits.memory,
                "deadline_ms": s.limits.deadline.as_millis() as u64,
                "idle_instances": p.idle_instances(),
            })
        })
        .collect();
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "upstream": &*r.upstream.name,
                "chain": r.chain.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let upstreams: Vec<_> = snap
        .upstreams
        .values()
        .map(|u| json!({ "name": &*u.name, "targets": u.targets().iter().map(|t| t.as_str()).collect::<Vec<_>>() }))
        .collect();
    json!({
        "generation": snap.generation,
        "loaded_at_ms": unix_ms(snap.loaded_at),
        "config": shared.config_path.display().to_string(),
        "plugins_dir": snap.plugins_dir.display().to_string(),
        "last_reload_error": reload.last_error,
        "last_reload_attempt_ms": reload.last_attempt.map(unix_ms),
        "reloads": { "succeeded": reload.successes, "failed": reload.failures },
        "plugins": plugins,
        "routes": routes,
        "upstreams": upstreams,
        "state": shared.loader.state.describe(),
        "events_webhook": snap.webhook.as_ref().map(|w| w.redacted()),
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
