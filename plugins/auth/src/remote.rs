//! Keys from an identity provider's JWKS URL (`jwt.jwks_upstream`).
//!
//! The key set is fetched through the gateway's `outbound` capability on
//! first need and kept in host state, so every instance of the plugin (and,
//! with the Redis backend, every gateway node) shares one copy:
//!
//! * an instance whose copy is fresh uses it without a host call;
//! * a stale copy is first compared with the shared one (another instance
//!   may have fetched); if that is stale too, one caller takes the *fetch
//!   slot* (a compare-and-swap on a key that expires after
//!   `jwks_min_refresh`) and fetches. Callers that find a fetch under way
//!   join it: the host sends identical reads in flight once, so the
//!   identity provider sees one request;
//! * a token naming an unknown `kid` (the provider rotated its key) asks
//!   for a fetch the same way, so at most one per `jwks_min_refresh`;
//! * a failed fetch keeps the old keys (served stale, with an event and a
//!   metric) and is retried after `jwks_min_refresh`; a document without
//!   any usable key counts as a failure, never as "no keys".
//!
//! Freshness is `jwks_refresh`, or the answer's `Cache-Control: max-age`
//! (at least `jwks_min_refresh`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;
use weir_plugin_sdk::prelude::*;

use crate::keys::{Key, jwks};

/// Host state: the shared document, `v1 FETCHED_MS FRESH_UNTIL_MS\n` + JWKS.
const DOC_KEY: &str = "jwks";
/// Host state: the fetch slot, `pending` while a fetch is under way, then
/// `done` (after a fetch for an unknown `kid`) or `failed`, expiring
/// `jwks_min_refresh` after it was taken; freed after a scheduled fetch.
const SLOT_KEY: &str = "jwks:fetch";
/// How long an instance that found nothing better waits before it looks at
/// the shared state again (a stale copy, or an unknown `kid`).
const RECHECK_MS: i64 = 1000;
/// The longest freshness a `max-age` may give.
const MAX_FRESH_MS: i64 = 24 * 3600 * 1000;

/// Where the key set is.
pub(crate) enum Location {
    /// A fixed path on the upstream.
    Path(String),
    /// The path of `jwks_uri` in the upstream's
    /// `/.well-known/openid-configuration`.
    Discovery,
}

/// The settings, validated.
pub(crate) struct RemoteSettings {
    pub(crate) upstream: String,
    pub(crate) location: Location,
    pub(crate) refresh_ms: i64,
    pub(crate) min_refresh_ms: i64,
    pub(crate) timeout: Option<Duration>,
}

/// One instance's copy of the key set.
#[derive(Default)]
struct View {
    keys: Rc<[Key]>,
    /// When the copy was fetched (its version); 0 before the first.
    fetched_ms: i64,
    fresh_until_ms: i64,
    /// Do not look at the shared state again before this.
    recheck_ms: i64,
}

/// The remote key set of one instance.
pub(crate) struct Remote {
    settings: RemoteSettings,
    view: RefCell<View>,
    /// Bumped whenever a key disappears from the set: verdicts cached for
    /// tokens it signed must go.
    removals: Cell<u64>,
}

/// Why a fetch is wanted.
#[derive(Clone, Copy)]
enum Why {
    /// The copy is stale, or there is none yet.
    Stale,
    /// A token named a `kid` the copy lacks.
    UnknownKid,
}

/// What the fetch slot allows.
enum Slot {
    /// It was free: this caller fetches.
    Taken,
    /// A fetch is under way and this caller needs its answer: it sends the
    /// same read, which the host joins to the one in flight.
    Join,
    /// Someone fetched lately or is fetching: use what there is.
    Busy,
}

/// The provider's keys cannot be had: none were ever fetched.
#[derive(Debug)]
pub(crate) struct Unavailable;

impl Remote {
    pub(crate) fn new(settings: RemoteSettings) -> Remote {
        Remote { settings, view: RefCell::default(), removals: Cell::new(0) }
    }

    /// How many times a key went away (see `removals`).
    pub(crate) fn removals(&self) -> u64 {
        self.removals.get()
    }

    /// The keys to verify with at `now`, refreshed if stale.
    pub(crate) fn keys(&self, cx: &Context, now: i64) -> Result<Rc<[Key]>, Unavailable> {
        {
            let v = self.view.borrow();
            let usable = v.fetched_ms > 0;
            if usable && now < v.fresh_until_ms {
                return Ok(Rc::clone(&v.keys));
            }
            if now < v.recheck_ms {
                return if usable { Ok(Rc::clone(&v.keys)) } else { Err(Unavailable) };
            }
        }
        self.refresh(cx, now, Why::Stale);
        let v = self.view.borrow();
        if v.fetched_ms > 0 { Ok(Rc::clone(&v.keys)) } else { Err(Unavailable) }
    }

    /// A token named a `kid` this copy lacks: look for a newer set (shared,
    /// or fetched if the slot allows). The keys afterwards.
    pub(crate) fn keys_after_unknown_kid(&self, cx: &Context, now: i64) -> Rc<[Key]> {
        if now >= self.view.borrow().recheck_ms {
            self.refresh(cx, now, Why::UnknownKid);
        }
        Rc::clone(&self.view.borrow().keys)
    }

    /// Adopt a newer, fresh shared copy; else fetch if the slot is ours.
    fn refresh(&self, cx: &Context, now: i64, why: Why) {
        let state = cx.state();
        if self.adopt_shared(cx).is_some_and(|fresh_until| now < fresh_until) {
            return;
        }
        match self.take_slot(cx, why) {
            Slot::Taken => {}
            // The fetch under way may have ended meanwhile: its copy then
            // is in the state, and another fetch would be one too many.
            Slot::Join if self.adopt_shared(cx).is_some() => return,
            Slot::Join => {}
            Slot::Busy => {
                self.view.borrow_mut().recheck_ms = now + RECHECK_MS.min(self.settings.min_refresh_ms);
                return;
            }
        }
        match self.fetch(cx, now) {
            Ok((doc, fresh_until)) => {
                let stored = format!("v1 {now} {fresh_until}\n{doc}");
                // Shared for the other instances; kept without expiry, so a
                // stale copy outlives an identity provider's outage.
                let _ = state.set(DOC_KEY, stored.as_bytes(), 0);
                match why {
                    // The next unknown `kid` may fetch at once: a rotation
                    // right after a scheduled refresh is followed.
                    Why::Stale => {
                        let _ = state.delete(SLOT_KEY);
                    }
                    // Tokens naming keys the provider does not have must
                    // not make it fetch more than once per minimum.
                    Why::UnknownKid => {
                        let _ = state.set(SLOT_KEY, b"done", self.min_refresh());
                    }
                }
                if self.adopt(cx, &doc, now, fresh_until) {
                    cx.counter_add("auth_jwks_fetched", 1);
                    cx.gauge_set("auth_jwks_stale", 0);
                    return;
                }
                self.failed(cx, now, "the key set has no usable key".into());
            }
            Err(reason) => self.failed(cx, now, reason),
        }
    }

    /// Whether to fetch: the slot is free (and taken now), or a fetch is
    /// under way and this caller cannot do without its answer (no keys
    /// yet, or an unknown `kid`): it joins, and the host sends identical
    /// reads in flight once. A caller with a stale copy serves it and looks
    /// again shortly. With the state unavailable, each instance fetches for
    /// itself, at most once per `jwks_min_refresh`.
    fn take_slot(&self, cx: &Context, why: Why) -> Slot {
        let state = cx.state();
        match state.compare_and_swap(SLOT_KEY, None, b"pending", self.min_refresh()) {
            Ok(true) | Err(_) => Slot::Taken,
            Ok(false) => {
                let needs_answer = matches!(why, Why::UnknownKid) || self.view.borrow().fetched_ms == 0;
                if needs_answer && matches!(state.get(SLOT_KEY), Ok(Some(v)) if v == b"pending") {
                    Slot::Join
                } else {
                    Slot::Busy
                }
            }
        }
    }

    /// Adopt the shared copy if it is newer than this instance's; until
    /// when it is fresh if so.
    fn adopt_shared(&self, cx: &Context) -> Option<i64> {
        let stored = cx.state().get(DOC_KEY).ok()??;
        let (fetched, fresh_until, doc) = parse_stored(&stored)?;
        (fetched > self.view.borrow().fetched_ms && self.adopt(cx, doc, fetched, fresh_until)).then_some(fresh_until)
    }

    fn min_refresh(&self) -> u64 {
        u64::try_from(self.settings.min_refresh_ms).unwrap_or(1)
    }

    /// A fetch failed: keep what we have, say so, retry after the minimum.
    fn failed(&self, cx: &Context, now: i64, reason: String) {
        let _ = cx.state().set(SLOT_KEY, b"failed", self.min_refresh());
        let mut v = self.view.borrow_mut();
        v.recheck_ms = now + self.settings.min_refresh_ms;
        let (severity, message) = if v.fetched_ms > 0 {
            let age = (now - v.fetched_ms) / 1000;
            (Severity::Warning, format!("serving the key set fetched {age} s ago: {reason}"))
        } else {
            (Severity::Critical, format!("no key set yet, tokens cannot be verified: {reason}"))
        };
        cx.counter_add("auth_jwks_fetch_failed", 1);
        cx.gauge_set("auth_jwks_stale", 1);
        cx.log(Level::Warn, &format!("jwks from `{}`: {message}", self.settings.upstream));
        cx.emit(
            Event::new("auth.jwks_stale", severity, message)
                .attr("upstream", self.settings.upstream.clone())
                .attr("reason", reason),
        );
    }

    /// Fetch the key set: its JSON text and until when it is fresh.
    fn fetch(&self, cx: &Context, now: i64) -> Result<(String, i64), String> {
        let path = match &self.settings.location {
            Location::Path(path) => path.clone(),
            Location::Discovery => self.discover(cx)?,
        };
        let answer = self.get(cx, &path)?;
        let max_age = answer.headers().get_all("cache-control").iter().find_map(|v| max_age(v.to_str().ok()?));
        let doc = String::from_utf8(answer.into_body()).map_err(|_| format!("{path}: the key set is not UTF-8"))?;
        let fresh_ms = match max_age {
            Some(secs) => i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000),
            None => self.settings.refresh_ms,
        };
        Ok((doc, now + fresh_ms.clamp(self.settings.min_refresh_ms, MAX_FRESH_MS.max(self.settings.min_refresh_ms))))
    }

    /// The path of `jwks_uri` from the discovery document.
    fn discover(&self, cx: &Context) -> Result<String, String> {
        const DISCOVERY: &str = "/.well-known/openid-configuration";
        let answer = self.get(cx, DISCOVERY)?;
        let doc: Value =
            serde_json::from_slice(answer.body()).map_err(|e| format!("{DISCOVERY}: not a JSON document: {e}"))?;
        let uri =
            doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{DISCOVERY}: no `jwks_uri` string"))?;
        uri_path(uri).ok_or_else(|| format!("{DISCOVERY}: `jwks_uri` {uri:?} is not an http(s) URL with a path"))
    }

    /// `GET path` on the upstream; a 200 answer, else why not.
    fn get(&self, cx: &Context, path: &str) -> Result<weir_plugin_sdk::http::Response<Vec<u8>>, String> {
        let mut call = cx.http(&self.settings.upstream).get(path).header("accept", "application/json");
        if let Some(timeout) = self.settings.timeout {
            call = call.timeout(timeout);
        }
        let answer = call.send().map_err(|e| format!("{path}: {e}"))?;
        if answer.status() != StatusCode::OK {
            return Err(format!("{path}: answered {}", answer.status().as_u16()));
        }
        Ok(answer)
    }

    /// Make `doc` this instance's copy if it has a usable key; whether it did.
    fn adopt(&self, cx: &Context, doc: &str, fetched_ms: i64, fresh_until_ms: i64) -> bool {
        let keys = match jwks(Value::String(doc.to_owned()), true) {
            Ok((keys, skipped)) => {
                for s in skipped {
                    cx.log(Level::Warn, &format!("jwks from `{}`: skipped {s}", self.settings.upstream));
                }
                keys
            }
            Err(e) => {
                cx.log(Level::Warn, &format!("jwks from `{}`: {e}", self.settings.upstream));
                return false;
            }
        };
        if keys.is_empty() {
            return false;
        }
        let mut v = self.view.borrow_mut();
        let gone = v.keys.iter().any(|old| !keys.iter().any(|new| new.kid == old.kid));
        if gone {
            self.removals.set(self.removals.get() + 1);
        }
        *v = View { keys: keys.into(), fetched_ms, fresh_until_ms, recheck_ms: 0 };
        true
    }
}

/// `v1 FETCHED FRESH_UNTIL\nDOC`.
fn parse_stored(stored: &[u8]) -> Option<(i64, i64, &str)> {
    let text = std::str::from_utf8(stored).ok()?;
    let (head, doc) = text.split_once('\n')?;
    let mut parts = head.split(' ');
    if parts.next()? != "v1" {
        return None;
    }
    let fetched = parts.next()?.parse().ok()?;
    let fresh_until = parts.next()?.parse().ok()?;
    Some((fetched, fresh_until, doc))
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` read as 0).
fn max_age(value: &str) -> Option<u64> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        lower.strip_prefix("max-age=")?.trim_matches('"').parse().ok()
    })
}

/// The path and query of an absolute http(s) URL.
pub(crate) fn uri_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("https://").or_else(|| uri.strip_prefix("http://"))?;
    let slash = rest.find('/')?;
    let path = &rest[slash..];
    let path = path.split('#').next().unwrap_or(path);
    (!rest[..slash].is_empty()).then(|| path.to_owned())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn cache_control_and_uri_paths() {
        assert_eq!(max_age("public, max-age=300"), Some(300));
        assert_eq!(max_age("Max-Age=\"60\""), Some(60));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
        assert_eq!(uri_path("https://id.example.com/realms/a/certs?x=1").as_deref(), Some("/realms/a/certs?x=1"));
        assert_eq!(uri_path("http://127.0.0.1:8080/keys#frag").as_deref(), Some("/keys"));
        assert_eq!(uri_path("https://id.example.com"), None);
        assert_eq!(uri_path("ftp://x/keys"), None);
        assert_eq!(parse_stored(b"v1 10 20\n{}"), Some((10, 20, "{}")));
        assert_eq!(parse_stored(b"v2 10 20\n{}"), None);
    }
}
