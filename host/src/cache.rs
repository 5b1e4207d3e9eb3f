//! A route's response cache: GET responses kept in memory (size-bounded,
//! TinyLFU admission and LRU eviction by `moka`), served fresh while
//! `Cache-Control`/`Expires` allow, and served stale — marked — when the
//! upstream fails, up to `stale_if_error` past freshness.
//!
//! It stands where the upstream call stands: the request chain (auth,
//! rate limits) runs before every lookup, and the response chain runs on
//! cached answers as on fresh ones. Concurrent misses on one key wait for
//! the first to finish instead of all going upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::sync::watch;

use crate::body::{self, BoxError, ProxyBody};
use crate::error::ProxyError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::observe::metrics::{RouteLabel, RouteStatus};
use weir_config::CacheConfig;

/// Header telling the client where the answer came from: `hit`, `miss`,
/// `stale`.
pub(crate) const CACHE_HEADER: &str = "x-weir-cache";
/// Set to `true` on a stale answer.
pub(crate) const STALE_HEADER: &str = "x-weir-stale";

/// One stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    /// `Age` the upstream gave, seconds.
    initial_age: u64,
    fresh: Duration,
    stale: Duration,
}

impl Entry {
    fn age(&self) -> Duration {
        self.stored.elapsed() + Duration::from_secs(self.initial_age)
    }

    fn is_fresh(&self) -> bool {
        self.age() < self.fresh
    }

    fn may_serve_stale(&self) -> bool {
        self.age() < self.fresh + self.stale
    }

    fn response(&self, head_only: bool, how: &'static str) -> Response<ProxyBody> {
        let body = if head_only { body::empty() } else { body::full(self.body.clone()) };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        let h = resp.headers_mut();
        h.insert(header::AGE, HeaderValue::from(self.age().as_secs()));
        h.insert(CACHE_HEADER, HeaderValue::from_static(how));
        if how == "stale" {
            h.insert(STALE_HEADER, HeaderValue::from_static("true"));
            h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
        }
        resp
    }
}

struct Expiry;

impl moka::Expiry<String, Arc<Entry>> for Expiry {
    fn expire_after_create(&self, _: &String, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some((e.fresh + e.stale).saturating_sub(Duration::from_secs(e.initial_age)))
    }
}

/// A route's cache; kept across reloads while its settings stay the same.
pub(crate) struct RouteCache {
    /// The settings it was built from.
    pub(crate) config: CacheConfig,
    entries: moka::sync::Cache<String, Arc<Entry>>,
    /// Per URL, the request headers its responses vary on.
    varies: moka::sync::Cache<String, Arc<[HeaderName]>>,
    /// Keys being fetched: later misses wait for the sender to drop.
    flights: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    metrics: CacheMetrics,
}

/// A cacheable request, ready to look up.
pub(crate) struct Plan {
    primary: String,
    key: String,
    head_only: bool,
    request: HeaderMap,
    revalidate: bool,
}

impl RouteCache {
    /// A cache with `config`'s bounds.
    pub(crate) fn new(config: CacheConfig, metrics: CacheMetrics) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_size)
            .weigher(|k: &String, e: &Arc<Entry>| {
                let headers: usize = e.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
                u32::try_from(k.len() + e.body.len() + headers + 128).unwrap_or(u32::MAX)
            })
            .expire_after(Expiry)
            .build();
        let varies = moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(3600)).build();
        Self { config, entries, varies, flights: Arc::default(), metrics }
    }

    /// The lookup for a request, or `None` when it bypasses the cache (not
    /// GET/HEAD, or `Cache-Control: no-store` from the client).
    pub(crate) fn plan(&self, parts: &Parts, host: &str) -> Option<Plan> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            self.metrics.bypass.inc();
            return None;
        }
        let cc = Directives::of(&parts.headers);
        if cc.no_store {
            self.metrics.bypass.inc();
            return None;
        }
        // Evictions and expiry happen inside moka: refresh the gauges here.
        self.metrics.entries.set(i64::try_from(self.entries.entry_count()).unwrap_or(i64::MAX));
        self.metrics.bytes.set(i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX));
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let primary = format!("{}\n{pq}", host.to_ascii_lowercase());
        let key = match self.varies.get(&primary) {
            Some(names) => vary_key(&primary, &names, &parts.headers),
            None => primary.clone(),
        };
        Some(Plan {
            primary,
            key,
            head_only: parts.method == Method::HEAD,
            request: parts.headers.clone(),
            revalidate: cc.no_cache || cc.max_age == Some(0),
        })
    }

    /// Answer from the cache, or run `fetch` (the upstream call) and keep
    /// what it returns; when `fetch` fails, answer stale if allowed.
    /// `wait` bounds how long a miss waits for another request's fetch of
    /// the same key.
    pub(crate) async fn serve<F>(&self, plan: Plan, wait: Duration, fetch: F) -> Result<Response<ProxyBody>, ProxyError>
    where
        F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
    {
        let cached = self.entries.get(&plan.key);
        if let Some(e) = &cached
            && e.is_fresh()
            && !plan.revalidate
        {
            self.metrics.hit.inc();
            return Ok(e.response(plan.head_only, "hit"));
        }
        // Coalesce: one fetch per key at a time; the others wait for it.
        let leader = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&plan.key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(());
                    flights.insert(plan.key.clone(), rx);
                    Ok(Flight { key: plan.key.clone(), flights: self.flights.clone(), _tx: tx })
                }
            }
        };
        let flight = match leader {
            Ok(flight) => Some(flight),
            Err(mut rx) => {
                let _ = tokio::time::timeout(wait, rx.changed()).await;
                if let Some(e) = self.entries.get(&plan.key)
                    && e.is_fresh()
                    && !plan.revalidate
                {
                    self.metrics.hit.inc();
                    return Ok(e.response(plan.head_only, "hit"));
                }
                None
            }
        };
        let stale = || {
            let e = self.entries.get(&plan.key).or(cached.clone())?;
            e.may_serve_stale().then(|| {
                self.metrics.stale.inc();
                e.response(plan.head_only, "stale")
            })
        };
        let resp = match fetch.await {
            Ok(resp) => resp,
            Err(e) if e.upstream_failed() => {
                if let Some(r) = stale() {
                    tracing::warn!(error = %e, "upstream failed; answered from cache, stale");
                    return Ok(r);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if matches!(resp.status().as_u16(), 500 | 502 | 503 | 504)
            && let Some(r) = stale()
        {
            tracing::warn!(status = resp.status().as_u16(), "upstream failed; answered from cache, stale");
            return Ok(r);
        }
        self.metrics.miss.inc();
        let (mut parts, body) = resp.into_parts();
        parts.headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        let store = if plan.head_only { None } else { self.storable(&plan, &parts) };
        let Some((key, meta)) = store else {
            return Ok(Response::from_parts(parts, body));
        };
        let mut headers = parts.headers.clone();
        headers.remove(CACHE_HEADER);
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(header::AGE);
        let tee = Tee {
            inner: body,
            buf: BytesMut::new(),
            max: self.config.max_entry as usize,
            pending: Some(Pending { key, status: parts.status, headers, meta, _flight: flight }),
            entries: self.entries.clone(),
            metrics: self.metrics.clone(),
        };
        Ok(Response::from_parts(parts, body::boxed(tee)))
    }

    /// Whether and for how long a response may be kept, and under which key.
    fn storable(&self, plan: &Plan, parts: &http::response::Parts) -> Option<(String, Meta)> {
        if !matches!(parts.status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 410) {
            return None;
        }
        let h = &parts.headers;
        if h.contains_key(header::SET_COOKIE) {
            return None;
        }
        let cc = Directives::of(h);
        if cc.no_store || cc.private {
            return None;
        }
        if plan.request.contains_key(header::AUTHORIZATION) && !cc.public && cc.s_maxage.is_none() {
            return None;
        }
        if let Some(len) = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len > self.config.max_entry
        {
            return None;
        }
        let fresh = if cc.no_cache {
            Duration::ZERO
        } else if let Some(s) = cc.s_maxage.or(cc.max_age) {
            Duration::from_secs(s)
        } else if let Some(exp) = h.get(header::EXPIRES) {
            let date = h.get(header::DATE).and_then(http_date).unwrap_or_else(SystemTime::now);
            http_date(exp).and_then(|e| e.duration_since(date).ok()).unwrap_or_default()
        } else {
            self.config.default_ttl
        };
        let stale = if cc.must_revalidate {
            Duration::ZERO
        } else {
            cc.stale_if_error.map_or(self.config.stale_if_error, Duration::from_secs)
        };
        if (fresh + stale).is_zero() {
            return None;
        }
        let initial_age = h.get(header::AGE).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        let key = match vary_names(h) {
            Vary::None => plan.primary.clone(),
            Vary::Any => return None,
            Vary::Names(names) => {
                let key = vary_key(&plan.primary, &names, &plan.request);
                self.varies.insert(plan.primary.clone(), names.into());
                key
            }
        };
        Some((key, Meta { initial_age, fresh, stale }))
    }
}

/// A fetch in progress for a key; waiters wake when it drops.
struct Flight {
    key: String,
    flights: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _tx: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

struct Meta {
    initial_age: u64,
    fresh: Duration,
    stale: Duration,
}

struct Pending {
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    meta: Meta,
    _flight: Option<Flight>,
}

/// A response body on its way to the client, copied into the cache once
/// it has ended whole and within `max_entry`.
struct Tee {
    inner: ProxyBody,
    buf: BytesMut,
    max: usize,
    pending: Option<Pending>,
    entries: moka::sync::Cache<String, Arc<Entry>>,
    metrics: CacheMetrics,
}

impl Tee {
    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            let entry = Entry {
                status: p.status,
                headers: p.headers,
                body: std::mem::take(&mut self.buf).freeze(),
                stored: Instant::now(),
                initial_age: p.meta.initial_age,
                fresh: p.meta.fresh,
                stale: p.meta.stale,
            };
            self.entries.insert(p.key, Arc::new(entry));
            self.metrics.entries.set(i64::try_from(self.entries.entry_count()).unwrap_or(i64::MAX));
            self.metrics.bytes.set(i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX));
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) if this.pending.is_some() => {
                    if this.buf.len() + data.len() > this.max {
                        this.pending = None;
                        this.buf = BytesMut::new();
                    } else {
                        this.buf.extend_from_slice(data);
                        if this.inner.is_end_stream() {
                            this.finish();
                        }
                    }
                }
                Some(_) => {}
                // Trailers are not stored: such a response is not kept.
                None => this.pending = None,
            },
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.pending = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `Cache-Control` directives the cache acts on.
#[derive(Default)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_if_error: Option<u64>,
}

impl Directives {
    fn of(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let secs = arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // `no-cache="field"` restricts fields; treat it as no-cache.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "max-age" => d.max_age = secs.or(Some(0)),
                    "s-maxage" => d.s_maxage = secs.or(Some(0)),
                    "stale-if-error" => d.stale_if_error = secs,
                    _ => {}
                }
            }
        }
        d
    }
}

enum Vary {
    None,
    Any,
    Names(Vec<HeaderName>),
}

fn vary_names(h: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for v in h.get_all(header::VARY) {
        let Ok(v) = v.to_str() else { return Vary::Any };
        for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if n == "*" {
                return Vary::Any;
            }
            match HeaderName::try_from(n) {
                Ok(n) if !names.contains(&n) => names.push(n),
                Ok(_) => {}
                Err(_) => return Vary::Any,
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    if names.is_empty() { Vary::None } else { Vary::Names(names) }
}

fn vary_key(primary: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let mut key = primary.to_owned();
    for n in names {
        key.push('\n');
        key.push_str(n.as_str());
        key.push(':');
        for v in request.get_all(n) {
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            key.push(',');
        }
    }
    key
}

fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

// ---- metrics ---------------------------------------------------------------

/// The route caches' families, registered by this area.
#[derive(Clone)]
pub(crate) struct CacheFamilies {
    cache_requests: Family<RouteStatus, Counter>,
    cache_bytes: Family<RouteLabel, Gauge>,
    cache_entries: Family<RouteLabel, Gauge>,
}

impl CacheFamilies {
    /// Register the families into `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let cache_requests = Family::default();
        registry.register(
            "cache_requests",
            "Cache lookups by status: hit, miss, stale, bypass",
            cache_requests.clone(),
        );
        let cache_bytes = Family::default();
        registry.register("cache_bytes", "Memory held by the route's cache", cache_bytes.clone());
        let cache_entries = Family::default();
        registry.register("cache_entries", "Responses in the route's cache", cache_entries.clone());
        Self { cache_requests, cache_bytes, cache_entries }
    }

    /// Handles for a route's cache.
    pub(crate) fn cache(&self, route: &str) -> CacheMetrics {
        let by = |status| self.cache_requests.get_or_create(&RouteStatus { route: route.to_owned(), status }).clone();
        let label = RouteLabel { route: route.to_owned() };
        CacheMetrics {
            hit: by("hit"),
            miss: by("miss"),
            stale: by("stale"),
            bypass: by("bypass"),
            bytes: self.cache_bytes.get_or_create(&label).clone(),
            entries: self.cache_entries.get_or_create(&label).clone(),
        }
    }
}

/// A route cache's handles.
#[derive(Clone, Debug)]
pub(crate) struct CacheMetrics {
    /// Served fresh from the cache.
    pub(crate) hit: Counter,
    /// Not in the cache (or not fresh): asked upstream.
    pub(crate) miss: Counter,
    /// Served stale because the upstream failed.
    pub(crate) stale: Counter,
    /// Not cacheable (method, request directives).
    pub(crate) bypass: Counter,
    /// Memory held.
    pub(crate) bytes: Gauge,
    /// Entries held.
    pub(crate) entries: Gauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn directives_parse() {
        let d = Directives::of(&headers(&[
            ("cache-control", "public, max-age=60"),
            ("cache-control", "stale-if-error=\"30\""),
        ]));
        assert!(d.public && !d.no_store);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.stale_if_error, Some(30));
        let d = Directives::of(&headers(&[("cache-control", "No-Store")]));
        assert!(d.no_store);
    }

    #[test]
    fn vary_keys_differ_by_the_named_headers_only() {
        let h = headers(&[("vary", "Accept-Encoding, accept")]);
        let Vary::Names(names) = vary_names(&h) else { panic!("names expected") };
        let a = vary_key("p", &names, &headers(&[("accept", "text/html"), ("x-other", "1")]));
        let b = vary_key("p", &names, &headers(&[("accept", "text/html"), ("x-other", "2")]));
        let c = vary_key("p", &names, &headers(&[("accept", "application/json")]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(matches!(vary_names(&headers(&[("vary", "*")])), Vary::Any));
    }
}
