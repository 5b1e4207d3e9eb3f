//! Health: active checks (a GET of `health.path` on every target each
//! `interval`) and passive outlier ejection (failures in a row take a
//! target out for a time that grows each time it happens again).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::BodyExt;

use super::Upstream;
use super::target::Target;
use crate::body;
use weir_plugin_host::clock::monotonic_ms;

/// Note a try's outcome for passive checks.
pub(super) fn observe(up: &Upstream, target: &Target, failed: bool, now: u64) {
    let o = &up.outlier;
    if !o.enabled {
        return;
    }
    let s = &target.state;
    if !failed {
        s.consecutive.store(0, Ordering::Relaxed);
        // Healthy for a whole max_ejection since the last ejection ended:
        // the next ejection starts from the base time again.
        let until = s.ejected_until.load(Ordering::Relaxed);
        if s.ejections.load(Ordering::Relaxed) > 0 && until > 0 && now > until + o.max_ejection.as_millis() as u64 {
            s.ejections.store(0, Ordering::Relaxed);
        }
        return;
    }
    if s.consecutive.fetch_add(1, Ordering::Relaxed) + 1 < o.consecutive_failures || s.ejected(now) {
        return;
    }
    // Never eject more than max_ejected_percent of the group (primaries
    // or backups), and never its last usable target.
    let set = up.targets.load();
    let group = if target.backup { &set.backup } else { &set.primary };
    let n = group.targets.len();
    let ejected = group.targets.iter().filter(|t| t.state.ejected(now)).count();
    let usable = group.targets.iter().filter(|t| t.state.usable(now)).count();
    if (ejected + 1) * 100 > o.max_ejected_percent as usize * n || usable <= 1 {
        return;
    }
    let times = s.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let dur = o.base_ejection.saturating_mul(times).min(o.max_ejection);
    s.ejected_until.store(now + dur.as_millis() as u64, Ordering::Relaxed);
    s.consecutive.store(0, Ordering::Relaxed);
    target.metrics.ejections.inc();
    target.metrics.healthy.set(0);
    tracing::warn!(
        upstream = %up.name,
        target = %target.addr,
        "target ejected for {dur:?} after {} failures in a row (ejection {times})",
        o.consecutive_failures
    );
}

/// Check every target whose last check is an `interval` old, all at once.
pub(super) async fn check_due(up: &Arc<Upstream>) {
    let Some(h) = &up.health else { return };
    let now = monotonic_ms();
    let interval = h.interval.as_millis() as u64;
    let set = up.targets.load_full();
    let due: Vec<&Arc<Target>> = set
        .all()
        .filter(|t| {
            let last = t.state.last_check_ms.load(Ordering::Relaxed);
            // Several snapshots may watch one target for a moment after a
            // reload: the first to get there checks it.
            (last == 0 || now + interval / 10 >= last + interval)
                && t.state.last_check_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        })
        .collect();
    futures::future::join_all(due.into_iter().map(|t| check(up, t))).await;
}

async fn check(up: &Upstream, t: &Target) {
    let Some(h) = &up.health else { return };
    let passed = probe(up, t, &h.path, h.host.as_deref(), h.timeout).await;
    let s = &t.state;
    s.checked.store(true, Ordering::Relaxed);
    if passed {
        t.metrics.checks_passed.inc();
        s.check_fails.store(0, Ordering::Relaxed);
        let passes = s.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if passes >= h.healthy_threshold && s.check_down.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %up.name, target = %t.addr, "target healthy again after {passes} passing checks");
        }
    } else {
        t.metrics.checks_failed.inc();
        s.check_passes.store(0, Ordering::Relaxed);
        let fails = s.check_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= h.unhealthy_threshold && !s.check_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %up.name, target = %t.addr, "target unhealthy after {fails} failed checks");
        }
    }
    t.metrics.healthy.set(i64::from(s.usable(monotonic_ms())));
}

/// One check: a 2xx or 3xx within `timeout` passes.
async fn probe(up: &Upstream, t: &Target, path: &str, host: Option<&str>, timeout: Duration) -> bool {
    let Ok(uri) = path.parse::<Uri>() else {
        return false;
    };
    let mut req = Request::new(body::empty());
    *req.uri_mut() = uri;
    let host = host.unwrap_or(t.addr.as_str());
    if let Ok(v) = HeaderValue::try_from(host) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("weir-health-check"));
    let call = async {
        let endpoint = t.endpoint.get_or_init(|| up.pool.endpoint(&t.addr));
        let ready = up.pool.checkout(endpoint).await.ok()?;
        let (resp, conn) = up.pool.send(endpoint, ready, req).await.ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the (small) body so the connection can be reused.
        if http_body_util::Limited::new(resp.into_body(), 64 << 10).collect().await.is_ok() {
            conn.finish();
        }
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
}
