//! Operator events emitted by plugins (anomaly alerts and the like).
//!
//! Every event is logged as a structured line (target `weir::event`),
//! counted in `weir_plugin_events_total`, and kept in a short in-memory
//! history for `GET /admin/events`. When `[events] webhook` is set, events of
//! at least `min_severity` are also POSTed there as JSON by a background
//! task: the plugin's call only enqueues, so a slow or dead webhook never
//! delays a request. A full queue drops the event (counted), it never blocks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{EventsConfig, Severity};
use crate::metrics::Metrics;

/// Events kept for `/admin/events`.
pub const HISTORY: usize = 256;

/// One event, as logged, kept and POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The plugin instance that emitted it.
    pub plugin: String,
    /// Machine-readable kind, e.g. `anomaly.detected`.
    pub kind: String,
    /// Urgency.
    pub severity: Severity,
    /// A sentence for humans.
    pub message: String,
    /// Structured fields (at most 32).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Where and what to POST, from one snapshot's `[events]`.
#[derive(Debug, Clone)]
pub struct Webhook {
    uri: Uri,
    min_severity: Severity,
    timeout: Duration,
}

impl Webhook {
    /// The webhook `[events]` asks for, if any; `Err` says what is wrong
    /// with the URL.
    pub fn from_config(cfg: &EventsConfig) -> Result<Option<Arc<Self>>, String> {
        let Some(url) = &cfg.webhook else { return Ok(None) };
        let url = url.get_ref();
        let uri: Uri = url.parse().map_err(|e| format!("invalid webhook URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(format!("webhook {url:?}: https is not supported yet, use http")),
            _ => return Err(format!("webhook {url:?} must be an absolute http:// URL")),
        }
        if uri.authority().is_none() {
            return Err(format!("webhook {url:?} has no host"));
        }
        Ok(Some(Arc::new(Self { uri, min_severity: cfg.min_severity, timeout: cfg.timeout })))
    }

    /// The URL.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

/// The gateway's event sink, shared by all snapshots.
pub struct Events {
    history: Mutex<VecDeque<Arc<EventRecord>>>,
    queue: Option<mpsc::Sender<(Arc<Webhook>, Arc<EventRecord>)>>,
    metrics: Arc<Metrics>,
}

impl Events {
    /// A sink whose webhook queue holds `queue` events. Must be called
    /// inside the tokio runtime, which runs the webhook sender.
    pub fn new(queue: usize, metrics: Arc<Metrics>) -> Self {
        let queue = match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (tx, rx) = mpsc::channel(queue.max(1));
                rt.spawn(send_webhooks(rx, metrics.clone()));
                Some(tx)
            }
            Err(_) => None,
        };
        Self { history: Mutex::new(VecDeque::with_capacity(HISTORY)), queue, metrics }
    }

    /// Log, count, keep, and (if `webhook` wants it) enqueue an event.
    pub fn emit(&self, event: EventRecord, webhook: Option<&Arc<Webhook>>) {
        let attributes: Vec<String> = event.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::warn!(
            target: "weir::event",
            plugin = %event.plugin,
            kind = %event.kind,
            severity = event.severity.as_str(),
            attributes = %attributes.join(" "),
            "{}",
            event.message
        );
        let event = Arc::new(event);
        {
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(event.clone());
        }
        let Some(hook) = webhook.filter(|h| event.severity >= h.min_severity) else { return };
        let queued = self.queue.as_ref().is_some_and(|q| q.try_send((hook.clone(), event)).is_ok());
        if !queued {
            self.metrics.webhook("dropped");
        }
    }

    /// The latest events, newest first.
    pub fn recent(&self) -> Vec<Arc<EventRecord>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

/// POST queued events one by one until the sink is dropped.
async fn send_webhooks(mut rx: mpsc::Receiver<(Arc<Webhook>, Arc<EventRecord>)>, metrics: Arc<Metrics>) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Some((hook, event)) = rx.recv().await {
        let body = match serde_json::to_vec(&*event) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        let req = Request::post(hook.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("weir/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body));
        let Ok(req) = req else { continue };
        let outcome = match tokio::time::timeout(hook.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", hook.timeout)),
        };
        match outcome {
            Ok(()) => metrics.webhook("sent"),
            Err(e) => {
                metrics.webhook("failed");
                tracing::warn!(webhook = %hook.uri, kind = %event.kind, "event webhook failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(severity: Severity) -> EventRecord {
        EventRecord {
            time_ms: 1,
            plugin: "p".into(),
            kind: "k".into(),
            severity,
            message: "m".into(),
            attributes: serde_json::Map::new(),
        }
    }

    #[test]
    fn webhook_urls_are_checked() {
        let cfg =
            |url: &str| EventsConfig { webhook: Some(toml::Spanned::new(0..0, url.into())), ..Default::default() };
        assert!(Webhook::from_config(&EventsConfig::default()).expect("none is fine").is_none());
        assert!(Webhook::from_config(&cfg("http://127.0.0.1:9/hook")).expect("valid").is_some());
        assert!(Webhook::from_config(&cfg("https://example.com/")).expect_err("https").contains("not supported"));
        assert!(Webhook::from_config(&cfg("/relative")).expect_err("relative").contains("absolute"));
    }

    #[tokio::test]
    async fn history_is_bounded_and_newest_first() {
        let events = Events::new(4, Arc::new(Metrics::new()));
        for i in 0..HISTORY + 10 {
            let mut e = event(Severity::Info);
            e.time_ms = i as u64;
            events.emit(e, None);
        }
        let recent = events.recent();
        assert_eq!(recent.len(), HISTORY);
        assert_eq!(recent[0].time_ms, (HISTORY + 9) as u64);
    }
}
