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
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::observe::metrics::Metrics;
use weir_config::{EventsConfig, Severity};
pub(crate) use weir_plugin_host::EventRecord;
use weir_plugin_host::EventSink;

/// Events kept for `/admin/events`.
pub(crate) const HISTORY: usize = 256;

/// Where and what to POST, from one snapshot's `[events]`.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    uri: Uri,
    min_severity: Severity,
    timeout: Duration,
}

impl Webhook {
    /// The webhook `[events]` asks for, if any; `Err` says what is wrong
    /// with the URL.
    pub(crate) fn from_config(cfg: &EventsConfig) -> Result<Option<Arc<Self>>, SettingError> {
        if cfg.timeout.is_zero() {
            return Err(SettingError::Zero("`timeout` must be above zero"));
        }
        if cfg.queue == 0 {
            return Err(SettingError::Zero("`queue` must be at least 1"));
        }
        let Some(url) = &cfg.webhook else { return Ok(None) };
        let uri = http_url("webhook", url.get_ref())?;
        Ok(Some(Arc::new(Self { uri, min_severity: cfg.min_severity, timeout: cfg.timeout })))
    }

    /// The URL for logs and `/admin/status`: scheme and authority only,
    /// since webhook paths often carry a secret token (Slack-style URLs).
    pub(crate) fn redacted(&self) -> String {
        let authority = self.uri.authority().map_or("", |a| a.as_str());
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        format!("{}://{authority}/…", self.uri.scheme_str().unwrap_or("http"))
    }
}

/// The gateway's event sink, shared by all snapshots.
pub(crate) struct Events {
    history: Mutex<VecDeque<Arc<EventRecord>>>,
    queue: Option<mpsc::Sender<(Arc<Webhook>, Arc<EventRecord>)>>,
    metrics: Arc<Metrics>,
}

impl Events {
    /// A sink whose webhook queue holds `queue` events. Must be called
    /// inside the tokio runtime, which runs the webhook sender.
    pub(crate) fn new(queue: usize, metrics: Arc<Metrics>) -> Self {
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
    pub(crate) fn emit(&self, event: EventRecord, webhook: Option<&Arc<Webhook>>) {
        let attributes: Vec<String> = event.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let attributes = attributes.join(" ");
        macro_rules! log {
            ($level:ident) => {
                tracing::$level!(
                    target: "weir::event",
                    plugin = %event.plugin,
                    kind = %event.kind,
                    severity = event.severity.as_str(),
                    attributes = %attributes,
                    "{}",
                    event.message
                )
            };
        }
        match event.severity {
            Severity::Info => log!(info),
            Severity::Warning => log!(warn),
            Severity::Critical => log!(error),
        }
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
    pub(crate) fn recent(&self) -> Vec<Arc<EventRecord>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

/// The sink one snapshot's plugins emit into: the gateway's [`Events`]
/// with that snapshot's webhook.
pub(crate) struct SnapshotEvents {
    events: Arc<Events>,
    webhook: Option<Arc<Webhook>>,
}

impl SnapshotEvents {
    pub(crate) fn new(events: Arc<Events>, webhook: Option<Arc<Webhook>>) -> Self {
        Self { events, webhook }
    }
}

impl EventSink for SnapshotEvents {
    fn emit(&self, event: EventRecord) {
        self.events.emit(event, self.webhook.as_ref());
    }
}

/// Why an `[events]` or `[tracing]` setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum SettingError {
    /// A count or duration that must be above zero.
    #[error("{0}")]
    Zero(&'static str),
    /// A sampling rate outside 0..=1.
    #[error("`sample` must be between 0 and 1, got {0}")]
    Sample(f64),
    /// A URL that does not parse.
    #[error("invalid {what} URL {url:?}: {reason}")]
    Url {
        /// `webhook` or `otlp_endpoint`.
        what: &'static str,
        /// As written.
        url: String,
        /// Why.
        reason: String,
    },
    /// An https URL: the gateway's own POSTs speak http only, for now.
    #[error("{what} {url:?}: https is not supported yet, use http")]
    Https {
        /// `webhook` or `otlp_endpoint`.
        what: &'static str,
        /// As written.
        url: String,
    },
    /// Not an absolute http:// URL with a host.
    #[error("{what} {url:?} must be an absolute http:// URL")]
    NotHttp {
        /// `webhook` or `otlp_endpoint`.
        what: &'static str,
        /// As written.
        url: String,
    },
}

/// `url` if it is an absolute `http://` URL with a host; `what` names the
/// setting in the error.
pub(crate) fn http_url(what: &'static str, url: &str) -> Result<Uri, SettingError> {
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| SettingError::Url {
        what,
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        Some("https") => Err(SettingError::Https { what, url: url.to_owned() }),
        _ => Err(SettingError::NotHttp { what, url: url.to_owned() }),
    }
}

/// The client the gateway's own outbound POSTs use (webhooks, spans).
pub(crate) type PostClient = Client<HttpConnector, Full<Bytes>>;

/// A client for [`post_json`].
pub(crate) fn post_client() -> PostClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POST `body` as JSON to `uri` and read the answer whole (so the
/// connection can be reused); `Err` says why it did not succeed in `timeout`.
pub(crate) async fn post_json(client: &PostClient, uri: &Uri, body: Bytes, timeout: Duration) -> Result<(), PostError> {
    let req = Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, concat!("weir/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(PostError::Request)?;
    let exchange = async {
        let resp = client.request(req).await.map_err(PostError::Send)?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(PostError::Body)?;
        if status.is_success() { Ok(()) } else { Err(PostError::Status(status)) }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PostError::Timeout(timeout)),
    }
}

/// Why an outbound POST (a webhook, a span batch) did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The request could not be built.
    #[error("{0}")]
    Request(#[source] http::Error),
    /// No answer: connection refused or reset, DNS, ...
    #[error("{0}")]
    Send(#[source] hyper_util::client::legacy::Error),
    /// The answer's body broke off.
    #[error("{0}")]
    Body(#[source] hyper::Error),
    /// The receiver answered, with another status than 2xx.
    #[error("answered {0}")]
    Status(http::StatusCode),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// POST queued events one by one until the sink is dropped.
async fn send_webhooks(mut rx: mpsc::Receiver<(Arc<Webhook>, Arc<EventRecord>)>, metrics: Arc<Metrics>) {
    let client = post_client();
    while let Some((hook, event)) = rx.recv().await {
        let body = match serde_json::to_vec(&*event) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        match post_json(&client, &hook.uri, body, hook.timeout).await {
            Ok(()) => metrics.webhook("sent"),
            Err(e) => {
                metrics.webhook("failed");
                tracing::warn!(webhook = %hook.redacted(), kind = %event.kind, "event webhook failed: {e}");
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
        assert!(
            Webhook::from_config(&cfg("https://example.com/"))
                .expect_err("https")
                .to_string()
                .contains("not supported")
        );
        assert!(Webhook::from_config(&cfg("/relative")).expect_err("relative").to_string().contains("absolute"));
    }

    #[tokio::test]
    async fn webhook_takes_only_its_severities_and_drops_when_full() {
        // Accepts connections, never answers: the sender stays busy with its
        // first event, so the queue (of one) fills.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cfg = EventsConfig {
            webhook: Some(toml::Spanned::new(0..0, format!("http://{}/hook", silent.local_addr().expect("addr")))),
            timeout: Duration::from_secs(30),
            queue: 1,
            min_severity: Severity::Warning,
        };
        let hook = Webhook::from_config(&cfg).expect("valid").expect("configured");
        let metrics = Arc::new(Metrics::new());
        let events = Events::new(cfg.queue, metrics.clone());
        let dropped = || {
            metrics
                .encode()
                .lines()
                .find(|l| l.starts_with("weir_event_webhooks_total{result=\"dropped\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        events.emit(event(Severity::Info), Some(&hook));
        events.emit(event(Severity::Info), Some(&hook));
        assert_eq!(dropped(), 0, "below min_severity: neither queued nor dropped");
        events.emit(event(Severity::Warning), Some(&hook));
        tokio::time::sleep(Duration::from_millis(200)).await; // the sender takes it and hangs
        events.emit(event(Severity::Critical), Some(&hook)); // queued
        events.emit(event(Severity::Warning), Some(&hook)); // no room
        assert_eq!(dropped(), 1);
        assert_eq!(events.recent().len(), 5, "every event is kept in the history");
    }

    #[test]
    fn webhook_urls_are_redacted_for_display() {
        let cfg = EventsConfig {
            webhook: Some(toml::Spanned::new(0..0, "http://user:pw@hooks.local:8080/T000/B000/secret?x=1".into())),
            ..Default::default()
        };
        let hook = Webhook::from_config(&cfg).expect("valid").expect("configured");
        assert_eq!(hook.redacted(), "http://hooks.local:8080/…");
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
