//! The access log: one line per request, written when the response has been
//! sent (or the client went away), so durations and byte counts are final.
//!
//! The request path only fills a [`Record`] and hands it to a bounded queue
//! (never blocking: when the queue is full the line is dropped and counted).
//! A dedicated thread formats the lines (JSON or logfmt) and writes them,
//! buffered, to stdout, stderr or a file, so a slow log destination never
//! slows a request.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::observe::metrics::Metrics;
use weir_config::{AccessLogConfig, AccessLogFormat};

/// Lines waiting to be written.
const QUEUE: usize = 16 * 1024;

/// Pause between batches of lines (the most a line waits to be written).
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// A queued line: how to format it, and what.
type Line = (AccessLogFormat, Record);

/// One request, as logged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record {
    /// When the request arrived, ms since the Unix epoch.
    pub(crate) time_ms: u64,
    /// The gateway's request id.
    pub(crate) request_id: String,
    /// The W3C trace id sent upstream (`traceparent`).
    pub(crate) trace_id: String,
    /// Client socket address.
    pub(crate) client: String,
    /// Request method.
    pub(crate) method: String,
    /// Request path (the query is left out unless configured).
    pub(crate) path: String,
    /// HTTP version, e.g. `HTTP/1.1`.
    pub(crate) version: &'static str,
    /// Matched route, empty when none matched.
    pub(crate) route: Arc<str>,
    /// Upstream name, empty when the request did not go upstream.
    pub(crate) upstream: Arc<str>,
    /// The target that answered (`host:port`), empty when none did.
    pub(crate) target: String,
    /// Status sent to the client.
    pub(crate) status: u16,
    /// Time to the response head, ms.
    pub(crate) head_ms: f64,
    /// Time until the whole response was sent, ms.
    pub(crate) total_ms: f64,
    /// Time the upstream took to answer with a head, ms (absent if not asked).
    pub(crate) upstream_ms: Option<f64>,
    /// Request body bytes received.
    pub(crate) bytes_in: u64,
    /// Response body bytes sent.
    pub(crate) bytes_out: u64,
    /// Each plugin's outcome, e.g. `auth:ok limit:respond`.
    pub(crate) plugins: String,
    /// Whether the response was sent completely (false: the client left).
    pub(crate) completed: bool,
}

/// What a snapshot logs, and where its lines go.
pub(crate) struct AccessLog {
    cfg: AccessLogConfig,
    sink: Option<SyncSender<Line>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Whether `status` should be logged (sampling; 5xx always are).
    pub(crate) fn wants(&self, status: u16) -> bool {
        self.sink.is_some() && (status >= 500 || self.cfg.sample >= 1.0 || fastrand::f64() < self.cfg.sample)
    }

    /// Whether the query string is logged with the path.
    pub(crate) fn with_query(&self) -> bool {
        self.cfg.query
    }

    /// Queue one line; dropped (and counted) if the writer is behind.
    pub(crate) fn write(&self, record: Record) {
        let Some(sink) = &self.sink else { return };
        match sink.try_send((self.cfg.format, record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.metrics.access_log_dropped(),
        }
    }
}

/// Why an `[access_log]` could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessLogError {
    /// An empty `target`.
    #[error("`target` must be \"stdout\", \"stderr\" or a file path")]
    NoTarget,
    /// A sampling rate outside 0..=1.
    #[error("`sample` must be between 0 and 1, got {0}")]
    Sample(f64),
    /// The file cannot be opened for appending.
    #[error("cannot open access log {}: {source}", .file.display())]
    Open {
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access log writer: {0}")]
    Thread(std::io::Error),
}

/// The gateway's access-log writer thread, shared by every snapshot; it
/// follows `[access_log] target` across reloads.
pub(crate) struct AccessLogWriter {
    current: Mutex<Option<(Target, SyncSender<Line>)>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl AccessLogWriter {
    /// A writer; nothing is started until a snapshot asks for a log.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { current: Mutex::new(None), metrics }
    }

    /// The access log for a snapshot with `cfg` (paths relative to
    /// `base`). Starts or moves the writer thread when the target changed.
    pub(crate) fn for_snapshot(&self, cfg: &AccessLogConfig, base: &Path) -> Result<Arc<AccessLog>, AccessLogError> {
        let target = match cfg.target.as_str() {
            _ if !cfg.enabled => None,
            "stdout" => Some(Target::Stdout),
            "stderr" => Some(Target::Stderr),
            "" => return Err(AccessLogError::NoTarget),
            path => Some(Target::File(base.join(path))),
        };
        if !(0.0..=1.0).contains(&cfg.sample) {
            return Err(AccessLogError::Sample(cfg.sample));
        }
        let sink = match target {
            None => None,
            Some(t) => Some(self.sink_for(t)?),
        };
        Ok(Arc::new(AccessLog { cfg: cfg.clone(), sink, metrics: self.metrics.clone() }))
    }

    fn sink_for(&self, target: Target) -> Result<SyncSender<Line>, AccessLogError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, tx)) = current.as_ref()
            && *t == target
        {
            return Ok(tx.clone());
        }
        let out: Box<dyn std::io::Write + Send> = match &target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| AccessLogError::Open { file: p.clone(), source: e })?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(rx, out))
            .map_err(AccessLogError::Thread)?;
        // The previous thread ends once the last snapshot using it is gone.
        *current = Some((target, tx.clone()));
        Ok(tx)
    }
}

/// The writer thread: format and write until every sender is gone.
fn write_lines(rx: Receiver<Line>, out: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let mut line = String::with_capacity(512);
    loop {
        // Block for the next line, then write whatever else is queued
        // before flushing once.
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(item) => item,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some((format, record)) = next {
            line.clear();
            format_line(&mut line, format, &record);
            let _ = out.write_all(line.as_bytes());
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        // Let lines gather: while this thread sleeps, requests queue their
        // lines without waking it, so a busy gateway pays one wake-up and
        // one write per batch rather than per request.
        std::thread::sleep(BATCH_PAUSE);
    }
    let _ = out.flush();
}

/// One line, newline-terminated.
pub(crate) fn format_line(out: &mut String, format: AccessLogFormat, r: &Record) {
    let time = rfc3339_ms(r.time_ms);
    match format {
        AccessLogFormat::Json => {
            // Written directly (no intermediate `serde_json::Value`): this
            // runs once per request.
            let _ = write!(out, "{{\"time\":\"{time}\",\"request_id\":");
            json_str(out, &r.request_id);
            out.push_str(",\"trace_id\":");
            json_str(out, &r.trace_id);
            out.push_str(",\"client\":");
            json_str(out, &r.client);
            out.push_str(",\"method\":");
            json_str(out, &r.method);
            out.push_str(",\"path\":");
            json_str(out, &r.path);
            out.push_str(",\"version\":");
            json_str(out, r.version);
            out.push_str(",\"route\":");
            json_str(out, &r.route);
            out.push_str(",\"upstream\":");
            json_str(out, &r.upstream);
            out.push_str(",\"target\":");
            json_str(out, &r.target);
            let _ = write!(
                out,
                ",\"status\":{},\"head_ms\":{},\"total_ms\":{},\"upstream_ms\":",
                r.status,
                round3(r.head_ms),
                round3(r.total_ms)
            );
            match r.upstream_ms {
                Some(u) => {
                    let _ = write!(out, "{}", round3(u));
                }
                None => out.push_str("null"),
            }
            let _ = write!(out, ",\"bytes_in\":{},\"bytes_out\":{},\"plugins\":", r.bytes_in, r.bytes_out);
            json_str(out, &r.plugins);
            let _ = write!(out, ",\"completed\":{}}}", r.completed);
        }
        AccessLogFormat::Logfmt => {
            let _ = write!(
                out,
                "time={time} request_id={} trace_id={} client={} method={} path={} version={} route={} upstream={} \
                 target={} status={} head_ms={:.3} total_ms={:.3}",
                r.request_id,
                r.trace_id,
                r.client,
                r.method,
                logfmt_value(&r.path),
                r.version,
                logfmt_value(&r.route),
                logfmt_value(&r.upstream),
                logfmt_value(&r.target),
                r.status,
                r.head_ms,
                r.total_ms,
            );
            if let Some(u) = r.upstream_ms {
                let _ = write!(out, " upstream_ms={u:.3}");
            }
            let _ = write!(
                out,
                " bytes_in={} bytes_out={} plugins={} completed={}",
                r.bytes_in,
                r.bytes_out,
                logfmt_value(&r.plugins),
                r.completed
            );
        }
    }
    out.push('\n');
}

/// A JSON string literal (RFC 8259 escaping).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A logfmt value: bare when it is a plain token, quoted otherwise.
fn logfmt_value(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\') {
        v.to_owned()
    } else {
        format!("{v:?}")
    }
}

/// `2026-11-23T17:40:51.123Z`.
fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time_ms: 1_795_454_383_954,
            request_id: "abc".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            client: "127.0.0.1:5000".into(),
            method: "GET".into(),
            path: "/a b".into(),
            version: "HTTP/1.1",
            route: "r".into(),
            upstream: "up".into(),
            target: "127.0.0.1:9001".into(),
            status: 200,
            head_ms: 1.23456,
            total_ms: 2.5,
            upstream_ms: Some(0.9),
            bytes_in: 3,
            bytes_out: 42,
            plugins: "auth:ok".into(),
            completed: true,
        }
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_795_454_383_954), "2026-11-23T17:19:43.954Z");
    }

    #[test]
    fn json_and_logfmt_lines() {
        let mut line = String::new();
        format_line(&mut line, AccessLogFormat::Json, &record());
        let doc: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(doc["status"], 200);
        assert_eq!(doc["head_ms"], 1.235);
        assert_eq!(doc["path"], "/a b");
        assert_eq!(doc["bytes_out"], 42);
        assert_eq!(doc["upstream_ms"], 0.9);
        assert_eq!(doc["completed"], true);
        assert!(line.ends_with('\n'));
        // Hostile bytes stay inside their string.
        let mut odd = record();
        odd.path = "/\"a\\b\n\u{1}\u{7f}é".into();
        odd.upstream_ms = None;
        line.clear();
        format_line(&mut line, AccessLogFormat::Json, &odd);
        let doc: serde_json::Value = serde_json::from_str(line.trim_end()).expect("still json");
        assert_eq!(doc["path"], "/\"a\\b\n\u{1}\u{7f}é");
        assert_eq!(doc["upstream_ms"], serde_json::Value::Null);
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        line.clear();
        format_line(&mut line, AccessLogFormat::Logfmt, &record());
        assert!(line.contains(" path=\"/a b\" "), "{line}");
        assert!(line.contains(" status=200 "), "{line}");
        assert!(line.contains(" upstream_ms=0.900 "), "{line}");
        assert!(line.trim_end().ends_with("completed=true"), "{line}");
    }
}
