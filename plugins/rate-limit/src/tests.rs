use std::cell::Cell;
use std::time::Duration;

use serde_json::{Value, json};
use weir_plugin_sdk::http;
use weir_plugin_sdk::testing::{self, Harness, Outcome};

use super::*;
use crate::cache::{CAPACITY, PreviousCounts};
use crate::config::{KeyPart, Missing, short_window};

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

// ---- helpers --------------------------------------------------------------

/// 2026-01-01T00:00:00Z: the start of a day, so of every window length.
const T0: u64 = 1_767_225_600_000;

thread_local! {
    /// The wall clock the plugin sees, in ms (pinned: it moves only when a
    /// test moves it, so every decision below is exact).
    static NOW: Cell<u64> = const { Cell::new(T0) };
}

/// A clean test host (state, metrics, logs) for this test's thread, its
/// clock pinned at [`T0`].
fn fresh() {
    testing::reset();
    testing::set_wall_clock(T0);
    NOW.with(|n| n.set(T0));
}

fn wall_ms() -> u64 {
    NOW.with(Cell::get)
}

fn advance_ms(ms: u64) {
    testing::advance(Duration::from_millis(ms));
    NOW.with(|n| n.set(n.get() + ms));
}

/// Move the clock forward to exactly `elapsed` ms into the next window of
/// `len` ms.
fn next_window(len: u64, elapsed: u64) {
    advance_ms(len - wall_ms() % len + elapsed);
}

fn plugin(config: Value) -> Harness<RateLimit> {
    Harness::<RateLimit>::new(config).expect("config accepted")
}

fn get() -> http::Request<()> {
    http::Request::get("/items").body(()).expect("request")
}

fn get_with(name: &str, value: &str) -> http::Request<()> {
    http::Request::get("/items").header(name, value).body(()).expect("request")
}

/// Run `on_request` and, if it continued, `on_response`; return the status
/// and the response headers the client would get.
fn call(h: &Harness<RateLimit>, req: http::Request<()>) -> (u16, http::HeaderMap, Vec<u8>) {
    match h.on_request(req) {
        Outcome::Continue(req) => {
            // The harness adds the headers `on_request` added for the
            // response, as the gateway does.
            let resp = h.on_response(&req, http::Response::new(())).unwrap_continue();
            (resp.status().as_u16(), resp.headers().clone(), Vec::new())
        }
        Outcome::Respond(r) => (r.status().as_u16(), r.headers().clone(), r.body().clone()),
    }
}

fn status(h: &Harness<RateLimit>, req: http::Request<()>) -> u16 {
    call(h, req).0
}

/// How many of `n` requests are let through.
fn allowed(h: &Harness<RateLimit>, n: usize, req: impl Fn() -> http::Request<()>) -> usize {
    (0..n).filter(|_| status(h, req()) == 200).count()
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("header {name} missing: {headers:?}"))
}

fn rejects(config: Value) -> String {
    Harness::<RateLimit>::new(config).err().expect("config must be rejected")
}

// ---- limits, headers and refusals ----------------------------------------

#[test]
fn allows_the_quota_then_refuses_with_429_and_headers() {
    fresh();
    next_window(HOUR, 15 * MIN);
    let h = plugin(json!({ "limits": [{ "name": "hourly", "requests": 3, "window": "1h" }] }));
    // The headers go on the response from `on_request` (contract 0.2.6).
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS);

    // r > 0: t is the time to the end of the window (45 minutes). r = 0: t
    // is when the next request fits: these 3 weigh on the next window until
    // 1 + 3 × (1 − e) ≤ 3, a third into it (45 + 20 minutes).
    for (left, t) in [(2, 2700), (1, 2700), (0, 3900)] {
        let (st, headers, _) = call(&h, get());
        assert_eq!(st, 200);
        assert_eq!(header(&headers, "ratelimit-policy"), "\"hourly\";q=3;w=3600");
        assert_eq!(header(&headers, "ratelimit"), format!("\"hourly\";r={left};t={t}"));
    }

    let (st, headers, body) = call(&h, get());
    assert_eq!(st, 429);
    assert_eq!(header(&headers, "retry-after"), "3900");
    assert_eq!(header(&headers, "ratelimit-policy"), "\"hourly\";q=3;w=3600");
    assert_eq!(header(&headers, "ratelimit"), "\"hourly\";r=0;t=3900");
    assert_eq!(header(&headers, "content-type"), "application/json");
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body, json!({ "error": "rate limit exceeded", "policy": "hourly", "retry_after": 3900 }));

    assert_eq!(testing::counter("allowed"), 3);
    assert_eq!(testing::counter("limited"), 1);
    assert_eq!(testing::counter("state_errors"), 0);
}

#[test]
fn headers_are_appended_to_the_upstream_response() {
    fresh();
    next_window(MIN, 1_000);
    let h = plugin(json!({ "limits": [{ "requests": 5, "window": "1m" }] }));
    let req = h.on_request(get()).unwrap_continue();
    let upstream =
        http::Response::builder().header("ratelimit-policy", "\"upstream\";q=100;w=60").body(()).expect("response");
    let resp = h.on_response(&req, upstream).unwrap_continue();
    let policies: Vec<_> = resp.headers().get_all("ratelimit-policy").iter().collect();
    assert_eq!(policies, ["\"upstream\";q=100;w=60", "\"1m\";q=5;w=60"]);
    assert_eq!(header(resp.headers(), "ratelimit"), "\"1m\";r=4;t=59");
}

#[test]
fn headers_false_skips_the_response_phase_but_429_keeps_them() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "headers": false, "limits": [{ "requests": 1, "window": "1h" }] }));
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS);
    let req = h.on_request(get()).unwrap_continue();
    // Nothing was added for the response.
    let resp = h.on_response(&req, http::Response::new(())).unwrap_continue();
    assert!(resp.headers().get("ratelimit").is_none());
    let (st, headers, _) = call(&h, get());
    assert_eq!(st, 429);
    // Quota 1, sliding: the next request fits once this one has aged out
    // completely, at the end of the next window (59 + 60 minutes).
    assert_eq!(header(&headers, "ratelimit"), "\"1h\";r=0;t=7140");
    assert_eq!(header(&headers, "ratelimit-policy"), "\"1h\";q=1;w=3600");
}

#[test]
fn several_limits_all_apply_and_refusals_are_given_back() {
    fresh();
    next_window(HOUR, 1_000);
    let h = plugin(json!({
        "algorithm": "fixed",
        "limits": [
            { "name": "burst", "requests": 2, "window": "1m" },
            { "name": "hourly", "requests": 5, "window": "1h" },
        ]
    }));
    let (_, headers, _) = call(&h, get());
    assert_eq!(header(&headers, "ratelimit-policy"), "\"burst\";q=2;w=60, \"hourly\";q=5;w=3600");
    assert_eq!(header(&headers, "ratelimit"), "\"burst\";r=1;t=59");
    assert_eq!(status(&h, get()), 200);
    // Refused by the burst limit; these must not eat the hourly budget.
    for _ in 0..4 {
        let (st, headers, _) = call(&h, get());
        assert_eq!(st, 429);
        assert_eq!(header(&headers, "ratelimit"), "\"burst\";r=0;t=59");
        assert_eq!(header(&headers, "retry-after"), "59");
    }
    advance_ms(MIN);
    assert_eq!(allowed(&h, 5, get), 2, "second minute: the burst limit again");
    advance_ms(MIN);
    // Hourly: 4 used, 1 left, whatever the burst limit says.
    let (st, headers, _) = call(&h, get());
    assert_eq!(st, 200);
    assert_eq!(header(&headers, "ratelimit"), "\"hourly\";r=0;t=3479");
    let (st, headers, body) = call(&h, get());
    assert_eq!(st, 429);
    assert_eq!(header(&headers, "ratelimit"), "\"hourly\";r=0;t=3479");
    assert_eq!(header(&headers, "retry-after"), "3479");
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body["policy"], "hourly");
}

#[test]
fn fixed_windows_restart_at_the_boundary() {
    fresh();
    next_window(MIN, 30_000);
    let h = plugin(json!({ "algorithm": "fixed", "limits": [{ "requests": 3, "window": "1m" }] }));
    assert_eq!(allowed(&h, 10, get), 3);
    let (_, headers, _) = call(&h, get());
    assert_eq!(header(&headers, "retry-after"), "30");
    // The last millisecond of the window is still full...
    advance_ms(29_999);
    let (st, headers, _) = call(&h, get());
    assert_eq!((st, header(&headers, "retry-after")), (429, "1"));
    // ...and the first of the next one starts afresh.
    advance_ms(1);
    assert_eq!(wall_ms() % MIN, 0);
    assert_eq!(allowed(&h, 10, get), 3);
}

#[test]
fn sliding_window_weights_the_previous_window() {
    fresh();
    next_window(HOUR, 30 * MIN);
    let a = plugin(json!({ "limits": [{ "requests": 10, "window": "1h" }] }));
    assert_eq!(allowed(&a, 15, get), 10);

    // A quarter into the next window, 3/4 of the previous 10 still count:
    // 7.5 + current ≤ 10 leaves room for 2. Another instance sees the same.
    next_window(HOUR, 15 * MIN);
    let b = plugin(json!({ "limits": [{ "requests": 10, "window": "1h" }] }));
    let (st, headers, _) = call(&b, get());
    assert_eq!(st, 200);
    assert_eq!(header(&headers, "ratelimit"), "\"1h\";r=1;t=2700");
    let (st, headers, _) = call(&b, get());
    assert_eq!(st, 200);
    // r = 0: t is when the next request fits: 7 × 3600 / 10 → at 18 min.
    assert_eq!(header(&headers, "ratelimit"), "\"1h\";r=0;t=180");
    let (st, headers, _) = call(&b, get());
    assert_eq!(st, 429);
    assert_eq!(header(&headers, "retry-after"), "180");

    // One millisecond before 18 minutes it still does not fit; at 18
    // minutes exactly one more does.
    advance_ms(3 * MIN - 1);
    assert_eq!(status(&b, get()), 429);
    advance_ms(1);
    assert_eq!(allowed(&b, 5, get), 1);

    // Next window at its very start: the 3 of the last window weigh 3.
    next_window(HOUR, 0);
    assert_eq!(allowed(&a, 20, get), 7);
}

#[test]
fn fixed_windows_ignore_the_previous_window() {
    fresh();
    next_window(HOUR, 30 * MIN);
    let h = plugin(json!({ "algorithm": "fixed", "limits": [{ "requests": 10, "window": "1h" }] }));
    assert_eq!(allowed(&h, 15, get), 10);
    next_window(HOUR, 15 * MIN);
    assert_eq!(allowed(&h, 15, get), 10);
}

#[test]
fn refused_requests_do_not_weigh_on_the_next_window() {
    fresh();
    next_window(HOUR, 1_000);
    let h = plugin(json!({ "limits": [{ "requests": 4, "window": "1h" }] }));
    // 4 allowed and 20 refused retries: only the 4 are counted.
    assert_eq!(allowed(&h, 24, get), 4);
    // Halfway into the next window the previous 4 weigh 2: 2 more fit (had
    // the refused 20 counted, 12 would weigh and nothing would fit).
    next_window(HOUR, 30 * MIN);
    assert_eq!(allowed(&h, 10, get), 2);
}

#[test]
fn retry_after_when_the_current_window_alone_is_full() {
    fresh();
    next_window(MIN, 30_000);
    let h = plugin(json!({ "limits": [{ "requests": 2, "window": "1m" }] }));
    assert_eq!(allowed(&h, 2, get), 2);
    let (st, headers, _) = call(&h, get());
    assert_eq!(st, 429);
    // These 2 become the previous window; one more fits once they weigh ≤ 1,
    // half-way into the next window: 30 s + 30 s.
    assert_eq!(header(&headers, "retry-after"), "60");
    advance_ms(60_000 - 1);
    assert_eq!(status(&h, get()), 429);
    advance_ms(1);
    assert_eq!(status(&h, get()), 200);
}

// ---- keys ------------------------------------------------------------------

#[test]
fn clients_are_keyed_by_ip_by_default() {
    fresh();
    next_window(HOUR, MIN);
    let cfg = json!({ "limits": [{ "requests": 2, "window": "1h" }] });
    let a = plugin(cfg.clone()).client_addr("10.0.0.1:5000");
    let a_other_port = plugin(cfg.clone()).client_addr("10.0.0.1:6000");
    let b = plugin(cfg).client_addr("10.0.0.2:5000");
    assert_eq!(allowed(&a, 1, get), 1);
    assert_eq!(allowed(&a_other_port, 5, get), 1, "same IP, same budget");
    assert_eq!(allowed(&b, 5, get), 2);
}

#[test]
fn ipv6_clients_are_keyed_by_prefix() {
    fresh();
    next_window(HOUR, MIN);
    let cfg = json!({ "limits": [{ "requests": 2, "window": "1h" }] });
    let a = plugin(cfg.clone()).client_addr("[2001:db8:0:1::1]:5000");
    let same_64 = plugin(cfg.clone()).client_addr("[2001:db8:0:1:ffff::2]:5000");
    let other_64 = plugin(cfg).client_addr("[2001:db8:0:2::1]:5000");
    assert_eq!(allowed(&a, 1, get), 1);
    assert_eq!(allowed(&same_64, 5, get), 1);
    assert_eq!(allowed(&other_64, 5, get), 2);

    let cfg = json!({ "ipv6_prefix": 128, "limits": [{ "requests": 2, "window": "1h" }] });
    let c = plugin(cfg.clone()).client_addr("[2001:db8:0:3::1]:5000");
    let d = plugin(cfg).client_addr("[2001:db8:0:3::2]:5000");
    assert_eq!(allowed(&c, 5, get), 2);
    assert_eq!(allowed(&d, 5, get), 2);
}

#[test]
fn ipv4_mapped_addresses_count_as_ipv4() {
    fresh();
    next_window(HOUR, MIN);
    let cfg = json!({ "limits": [{ "requests": 2, "window": "1h" }] });
    let v4 = plugin(cfg.clone()).client_addr("192.0.2.7:5000");
    let mapped = plugin(cfg).client_addr("[::ffff:192.0.2.7]:5000");
    assert_eq!(allowed(&v4, 1, get), 1);
    assert_eq!(allowed(&mapped, 5, get), 1);
}

#[test]
fn header_key_gives_each_api_key_its_own_budget() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "key": "header:X-Api-Key", "limits": [{ "requests": 2, "window": "1h" }] }));
    assert_eq!(allowed(&h, 5, || get_with("x-api-key", "alice")), 2);
    assert_eq!(allowed(&h, 5, || get_with("x-api-key", "bob")), 2);
    // Without the header the client IP is used instead (its own budget).
    assert_eq!(allowed(&h, 5, get), 2);
    // An empty value counts as missing: the same IP budget, now spent.
    assert_eq!(allowed(&h, 5, || get_with("x-api-key", "")), 0);
}

#[test]
fn header_key_uses_the_first_value() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "key": "header:x-auth-sub", "limits": [{ "requests": 1, "window": "1h" }] }));
    assert_eq!(status(&h, get_with("x-auth-sub", "user-1")), 200);
    let twice = http::Request::get("/").header("x-auth-sub", "user-1").header("x-auth-sub", "user-2").body(());
    assert_eq!(status(&h, twice.expect("request")), 429);
}

#[test]
fn missing_header_policies() {
    fresh();
    next_window(HOUR, MIN);
    let allow = plugin(json!({ "key": "header:x-api-key", "missing": "allow",
                                "limits": [{ "requests": 1, "window": "1h" }] }));
    for _ in 0..5 {
        let (st, headers, _) = call(&allow, get());
        assert_eq!(st, 200);
        assert!(headers.get("ratelimit").is_none(), "no limit applied, no headers");
    }
    assert_eq!(allowed(&allow, 5, || get_with("x-api-key", "k")), 1);

    let deny = plugin(json!({ "key": "header:x-api-key", "missing": "deny",
                               "limits": [{ "requests": 1, "window": "1h" }] }));
    let (st, _, body) = call(&deny, get());
    assert_eq!(st, 400);
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body["error"], "header `x-api-key` is required");
    assert_eq!(testing::counter("missing_key"), 1);
    assert_eq!(status(&deny, get_with("x-api-key", "k2")), 200);
}

#[test]
fn per_limit_key_and_missing_override_the_instance_defaults() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({
        "key": "header:x-api-key",
        "missing": "deny",
        "limits": [
            { "name": "per-key", "requests": 3, "window": "1h" },
            { "name": "per-ip", "requests": 4, "window": "1h", "key": "ip" },
            { "name": "per-user", "requests": 1, "window": "1h", "key": "header:x-user", "missing": "allow" },
        ]
    }));
    // x-user absent: that limit is skipped (not listed in the headers).
    let (st, headers, _) = call(&h, get_with("x-api-key", "a"));
    assert_eq!(st, 200);
    assert_eq!(header(&headers, "ratelimit-policy"), "\"per-key\";q=3;w=3600, \"per-ip\";q=4;w=3600");
    assert_eq!(allowed(&h, 5, || get_with("x-api-key", "a")), 2, "per-key: 3 in all");
    // Another key from the same IP: per-ip has 1 left.
    assert_eq!(allowed(&h, 5, || get_with("x-api-key", "b")), 1);
    assert_eq!(status(&h, get()), 400, "the instance default missing = deny still applies");
}

#[test]
fn route_key_is_shared_by_clients_and_separate_per_route() {
    fresh();
    next_window(HOUR, MIN);
    let cfg = json!({ "key": "route", "limits": [{ "requests": 3, "window": "1h" }] });
    let a = plugin(cfg.clone()).route("orders").client_addr("10.0.0.1:1");
    let b = plugin(cfg.clone()).route("orders").client_addr("10.0.0.2:1");
    let other = plugin(cfg).route("users").client_addr("10.0.0.1:1");
    assert_eq!(allowed(&a, 2, get), 2);
    assert_eq!(allowed(&b, 5, get), 1);
    assert_eq!(allowed(&other, 5, get), 3);
}

#[test]
fn composite_key_counts_each_client_per_route() {
    fresh();
    next_window(HOUR, MIN);
    let cfg = json!({ "key": ["route", "ip"], "limits": [{ "requests": 2, "window": "1h" }] });
    let a_orders = plugin(cfg.clone()).route("orders").client_addr("10.0.0.1:1");
    let a_users = plugin(cfg.clone()).route("users").client_addr("10.0.0.1:1");
    let b_orders = plugin(cfg).route("orders").client_addr("10.0.0.2:1");
    assert_eq!(allowed(&a_orders, 5, get), 2);
    assert_eq!(allowed(&a_users, 5, get), 2);
    assert_eq!(allowed(&b_orders, 5, get), 2);
}

#[test]
fn header_values_are_hashed_and_long_subjects_shortened() {
    let hash = key::short_hash(b"sk_live_0123456789abcdef");
    assert_eq!(hash.len(), 32);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(hash, key::short_hash(b"sk_live_0123456789abcdeg"));
    assert_eq!(key::state_key(&key::key_prefix("burst", 1), 42, "i:10.0.0.1"), "burst:1:42:i:10.0.0.1");

    // A route name longer than a state key may be: hashed, still counted.
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "key": "route", "limits": [{ "requests": 1, "window": "1h" }] })).route(&"r".repeat(600));
    assert_eq!(allowed(&h, 3, get), 1);
    assert_eq!(testing::counter("state_errors"), 0);
}

// ---- the state backend failing --------------------------------------------

#[test]
fn state_unavailable_fails_open_by_default_with_a_throttled_warning() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "limits": [{ "requests": 1, "window": "1h" }] }));
    testing::set_state_unavailable(true);
    for _ in 0..3 {
        let (st, headers, _) = call(&h, get());
        assert_eq!(st, 200);
        assert!(headers.get("ratelimit").is_none(), "no counts, no headers");
    }
    assert_eq!(testing::counter("state_errors"), 3);
    assert_eq!(testing::counter("allowed"), 3);
    let warnings: Vec<_> = testing::logs().into_iter().filter(|(l, _)| *l == Level::Warn).collect();
    assert_eq!(warnings.len(), 1, "one warning per 10 s: {warnings:?}");
    assert!(warnings[0].1.contains("on_state_error = \"allow\""), "{warnings:?}");
    assert!(warnings[0].1.contains("unavailable"), "{warnings:?}");

    advance_ms(11_000);
    assert_eq!(status(&h, get()), 200);
    let warnings: Vec<_> = testing::logs().into_iter().filter(|(l, _)| *l == Level::Warn).collect();
    assert_eq!(warnings.len(), 2);
    assert!(warnings[1].1.contains("(2 similar warnings suppressed)"), "{warnings:?}");

    // Back up: limiting resumes.
    testing::set_state_unavailable(false);
    assert_eq!(allowed(&h, 3, get), 1);
}

#[test]
fn state_unavailable_with_deny_answers_503() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "on_state_error": "deny", "limits": [{ "requests": 5, "window": "1h" }] }));
    testing::set_state_unavailable(true);
    let (st, headers, body) = call(&h, get());
    assert_eq!(st, 503);
    assert_eq!(header(&headers, "content-type"), "application/json");
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body, json!({ "error": "rate limit state unavailable" }));
    assert_eq!(testing::counter("state_errors"), 1);
    assert_eq!(testing::counter("allowed"), 0);
    assert!(testing::logs().iter().any(|(l, m)| *l == Level::Warn && m.contains("on_state_error = \"deny\"")));
    testing::set_state_unavailable(false);
    assert_eq!(allowed(&h, 10, get), 5, "nothing was counted while down");
}

// ---- configuration ---------------------------------------------------------

#[test]
fn default_names_come_from_the_window() {
    fresh();
    next_window(HOUR, MIN);
    let h = plugin(json!({ "limits": [
        { "requests": 10, "window": "1s" },
        { "requests": 100, "window": "90s" },
        { "requests": 1000, "window": "60m" },
        { "requests": 5000, "window": "24h" },
    ] }));
    let (_, headers, _) = call(&h, get());
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        "\"1s\";q=10;w=1, \"90s\";q=100;w=90, \"1h\";q=1000;w=3600, \"1d\";q=5000;w=86400"
    );
    assert_eq!(short_window(120), "2m");
}

#[test]
fn config_defaults() {
    let spec =
        Spec::from_config(&Config::from_json(json!({ "limits": [{ "requests": 1, "window": "1s" }] }))).expect("valid");
    assert_eq!(spec.algorithm, Algorithm::Sliding);
    assert_eq!(spec.on_state_error, OnStateError::Allow);
    assert!(spec.headers);
    assert_eq!(spec.ipv6_prefix, 64);
    assert_eq!(spec.limits[0].key, vec![KeyPart::Ip]);
    assert_eq!(spec.limits[0].missing, Missing::Ip);
    assert_eq!(spec.limits[0].name, "1s");
}

#[test]
fn rejects_bad_configs_naming_the_key() {
    let one = |limit: Value| json!({ "limits": [limit] });
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "missing field `limits`"),
        (json!({ "limits": [] }), "limits: give 1 to 16 limits, got 0"),
        (one(json!({ "requests": 0, "window": "1s" })), "limits[0].requests: must be between 1 and 1000000000, got 0"),
        (one(json!({ "requests": -1, "window": "1s" })), "limits[0].requests: invalid value: integer `-1`"),
        (one(json!({ "requests": "ten", "window": "1s" })), "limits[0].requests: invalid type: string \"ten\""),
        (one(json!({ "window": "1s" })), "limits[0]: missing field `requests`"),
        (one(json!({ "requests": 1 })), "limits[0]: missing field `window`"),
        (one(json!({ "requests": 1, "window": "soon" })), "limits[0].window: invalid duration \"soon\""),
        (one(json!({ "requests": 1, "window": "1500ms" })), "limits[0].window: \"1500ms\" is not a whole number"),
        (one(json!({ "requests": 1, "window": "0s" })), "limits[0].window: \"0s\" must be between 1s and 24h"),
        (one(json!({ "requests": 1, "window": "2d" })), "limits[0].window: \"2d\" must be between 1s and 24h"),
        (one(json!({ "requests": 1, "window": 60 })), "limits[0].window: invalid type: integer `60`"),
        (one(json!({ "requests": 1, "window": "1s", "per": "ip" })), "limits[0].per: unknown field `per`, expected"),
        (one(json!({ "requests": 1, "window": "1s", "name": "a b" })), "limits[0].name: \"a b\" must be 1 to 32"),
        (one(json!({ "requests": 1, "window": "1s", "key": "user" })), "limits[0].key: unknown key kind \"user\""),
        (one(json!({ "requests": 1, "window": "1s", "missing": "skip" })), "limits[0].missing: unknown variant `skip`"),
        (
            json!({ "limits": [{ "requests": 1, "window": "1s" }, { "requests": 2, "window": "1s" }] }),
            "limits[1].name: duplicate limit name \"1s\"",
        ),
        (
            json!({ "limits": [{ "name": "a", "requests": 1, "window": "1s" },
                               { "name": "a", "requests": 2, "window": "1m" }] }),
            "limits[1].name: duplicate limit name \"a\"",
        ),
        (json!({ "key": "cookie:session", "limits": [] }), "key: unknown key kind \"cookie:session\""),
        (json!({ "key": "header:bad header", "limits": [] }), "key: invalid header name \"bad header\""),
        (json!({ "key": [], "limits": [] }), "key: a key list needs 1 to 4 parts"),
        (json!({ "key": ["ip", "ip"], "limits": [] }), "key: key part \"ip\" is listed twice"),
        (json!({ "key": 7, "limits": [] }), "key: invalid type: integer `7`, expected \"ip\", \"route\""),
        (json!({ "algorithm": "token-bucket", "limits": [] }), "algorithm: unknown variant `token-bucket`"),
        (json!({ "on_state_error": "open", "limits": [] }), "on_state_error: unknown variant `open`"),
        (json!({ "headers": "yes", "limits": [] }), "headers: invalid type: string \"yes\", expected a boolean"),
        (json!({ "ipv6_prefix": 0, "limits": [] }), "ipv6_prefix: must be between 1 and 128, got 0"),
        (json!({ "ipv6_prefix": 129, "limits": [] }), "ipv6_prefix: must be between 1 and 128, got 129"),
        (json!({ "limit": [] }), "unknown field `limit`"),
    ];
    for (config, expected) in cases {
        let err = rejects(config.clone());
        assert!(err.starts_with("invalid config: "), "{config}: {err}");
        assert!(err.contains(expected), "{config}:\n  got      {err}\n  expected {expected}");
    }
    let many: Vec<Value> = (0..17).map(|i| json!({ "name": format!("l{i}"), "requests": 1, "window": "1s" })).collect();
    assert!(rejects(json!({ "limits": many })).contains("give 1 to 16 limits, got 17"));
}

// ---- window arithmetic and the cache ----------------------------------------

#[test]
fn window_arithmetic() {
    let w = Window { quota: 10, len: 1000, sliding: true };
    let c = |current, previous| Counts { current, previous };
    assert_eq!(w.position(12_345), Position { index: 12, elapsed: 345 });
    // 10 × 0.75 + 2 = 9.5 ≤ 10; + 3 = 10.5 > 10.
    assert!(w.fits(c(2, 10), 250));
    assert!(!w.fits(c(3, 10), 250));
    assert_eq!(w.remaining(c(2, 10), 250), 0);
    assert_eq!(w.remaining(c(1, 10), 250), 1);
    assert_eq!(w.remaining(c(0, 0), 0), 10);
    assert_eq!(w.remaining(c(0, 50), 0), 0, "previous over quota");
    // Exactly on the boundary: 10 × 0.5 + 5 = 10 fits.
    assert!(w.fits(c(5, 10), 500));
    assert_eq!(w.wait_ms(c(4, 10), 500), 0);
    // 2 now, previous 10: the 3rd fits once 10 × (1000 − e) ≤ 7000, e ≥ 300.
    assert_eq!(w.wait_ms(c(2, 10), 250), 50);
    // Current window full: next window, 10 × (1000 − e) ≤ 9000, e ≥ 100.
    assert_eq!(w.wait_ms(c(10, 3), 250), 750 + 100);
    assert_eq!(w.wait_ms(c(12, 0), 999), 1 + 250);

    let f = Window { sliding: false, ..w };
    assert!(f.fits(c(10, 1_000), 0));
    assert!(!f.fits(c(11, 0), 0));
    assert_eq!(f.wait_ms(c(10, 0), 250), 750);
    assert_eq!(f.remaining(c(4, 99), 250), 6);

    // TTL: the rest of this window (+ the next one when sliding) + slack.
    assert_eq!(w.ttl_ms(250, 1_000), 750 + 1_000 + 1_000);
    assert_eq!(f.ttl_ms(250, 1_000), 750 + 1_000);
    assert_eq!(w.until_end(0), 1000);
    assert_eq!(ceil_secs(0), 1);
    assert_eq!(ceil_secs(1), 1);
    assert_eq!(ceil_secs(1000), 1);
    assert_eq!(ceil_secs(1001), 2);

    // No overflow at the extremes.
    let big = Window { quota: config::MAX_REQUESTS, len: config::MAX_WINDOW_SECS * 1000, sliding: true };
    assert!(big.fits(c(config::MAX_REQUESTS, 0), 0));
    assert!(!big.fits(c(0, u64::MAX), 0));
    assert_eq!(big.remaining(c(u64::MAX, u64::MAX), 1), 0);
    assert!(big.wait_ms(c(u64::MAX - 1, u64::MAX), 1) > 0);
}

#[test]
fn previous_counts_cache_is_bounded() {
    let mut cache = PreviousCounts::default();
    cache.insert("a:1:9:x".into(), 0, 9, 7, |_, _| false);
    assert_eq!(cache.get("a:1:9:x"), Some(7));
    assert_eq!(cache.get("a:1:8:x"), None);
    for i in 1..CAPACITY {
        cache.insert(format!("k{i}"), 0, if i % 2 == 0 { 9 } else { 8 }, 1, |_, _| false);
    }
    assert_eq!(cache.len(), CAPACITY);
    // Full: stale entries (window 8) go first.
    cache.insert("new".into(), 0, 9, 3, |_, w| w < 9);
    assert_eq!(cache.len(), CAPACITY / 2 + 1);
    assert_eq!(cache.get("a:1:9:x"), Some(7));
    assert_eq!(cache.get("new"), Some(3));
    // Full of live entries: everything goes.
    for i in 0..CAPACITY {
        cache.insert(format!("m{i}"), 0, 9, 1, |_, _| false);
    }
    assert!(cache.len() <= CAPACITY);
}

// ---- GCRA -----------------------------------------------------------------

/// The burst that straddles a window boundary, which the sliding window
/// lets through at ~1.7× its quota: with `gcra`, no interval of one window
/// ever holds more than `requests + burst`, on the pinned clock.
#[test]
fn gcra_never_lets_more_than_requests_plus_burst_into_one_window() {
    for burst in [0u64, 5] {
        fresh();
        next_window(1000, 900);
        let h = plugin(json!({ "algorithm": "gcra", "limits": [{ "requests": 10, "window": "1s", "burst": burst }] }));
        // A request every 10 ms for 3 s, starting 100 ms before a second
        // boundary: the times let through.
        let mut through = Vec::new();
        for _ in 0..300 {
            if status(&h, get()) == 200 {
                through.push(wall_ms());
            }
            advance_ms(10);
        }
        for (i, &start) in through.iter().enumerate() {
            let within = through[i..].iter().take_while(|&&t| t < start + 1000).count() as u64;
            assert!(within <= 10 + burst, "burst {burst}: {within} in the second from {start}");
        }
        // The steady rate is the quota: 30 s of 10/s, give or take the burst.
        assert!((30..=31 + burst as usize).contains(&through.len()), "burst {burst}: {}", through.len());
    }
    // The sliding window, same traffic, for contrast: over its quota.
    fresh();
    next_window(1000, 900);
    let h = plugin(json!({ "limits": [{ "requests": 10, "window": "1s" }] }));
    let mut through = Vec::new();
    for _ in 0..300 {
        if status(&h, get()) == 200 {
            through.push(wall_ms());
        }
        advance_ms(10);
    }
    let worst = (0..through.len()).map(|i| through[i..].iter().take_while(|&&t| t < through[i] + 1000).count());
    assert!(worst.max().unwrap_or(0) > 10, "the sliding window stays within its quota here");
}

#[test]
fn gcra_bursts_then_paces_with_exact_headers() {
    fresh();
    let h = plugin(
        json!({ "algorithm": "gcra", "limits": [{ "name": "api", "requests": 10, "window": "1s", "burst": 4 }] }),
    );
    // A fresh client: the burst plus one at once (T = 100 ms, τ = 400 ms).
    for left in [4, 3, 2, 1, 0] {
        let (st, headers, _) = call(&h, get());
        assert_eq!(st, 200);
        assert_eq!(header(&headers, "ratelimit-policy"), "\"api\";q=10;w=1");
        assert_eq!(header(&headers, "ratelimit"), format!("\"api\";r={left};t=1"));
    }
    let (st, headers, body) = call(&h, get());
    assert_eq!(st, 429);
    assert_eq!(header(&headers, "retry-after"), "1");
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body["policy"], "api");
    // One interval later exactly one more fits; refusals did not count.
    advance_ms(100);
    assert_eq!(allowed(&h, 5, get), 1);
    // Idle for the whole burst's time: the burst is back.
    advance_ms(600);
    assert_eq!(allowed(&h, 10, get), 5);
    assert_eq!(testing::counter("state_errors"), 0);
}

#[test]
fn gcra_gives_back_a_request_another_limit_refused() {
    fresh();
    // wide: 3 per minute (T = 20 s), 2 more at once; narrow: 1 per second.
    let h = plugin(json!({ "algorithm": "gcra", "limits": [
        { "name": "wide", "requests": 3, "window": "1m", "burst": 2 },
        { "name": "narrow", "requests": 1, "window": "1s" },
    ] }));
    // narrow refuses the 2nd and 3rd: wide gets them back...
    assert_eq!([status(&h, get()), status(&h, get()), status(&h, get())], [200, 429, 429]);
    // ...so it still has room for two more, a second apart (charged for
    // the refused ones, it would refuse the first of these).
    advance_ms(1000);
    assert_eq!(status(&h, get()), 200);
    advance_ms(1000);
    assert_eq!(status(&h, get()), 200);
    advance_ms(1000);
    let (st, _, body) = call(&h, get());
    assert_eq!(st, 429);
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(body["policy"], "wide");
}

#[test]
fn burst_needs_gcra() {
    let err = rejects(json!({ "limits": [{ "requests": 10, "window": "1s", "burst": 5 }] }));
    assert!(err.contains("limits[0].burst: only algorithm = \"gcra\""), "{err}");
    let err = rejects(
        json!({ "algorithm": "gcra", "limits": [{ "requests": 10, "window": "1s", "burst": 2_000_000_000u64 }] }),
    );
    assert!(err.contains("limits[0].burst: must be at most"), "{err}");
}

/// `data:PLUGIN.KEY`: the identity an earlier plugin (auth) published keys
/// the limit; nothing published follows `missing`.
#[test]
fn a_value_published_earlier_in_the_chain_keys_the_limit() {
    fresh();
    let config =
        json!({ "key": "data:auth.x-auth-sub", "missing": "deny", "limits": [{ "requests": 2, "window": "1h" }] });
    let h = plugin(config);
    testing::set_published("auth", "x-auth-sub", b"ann");
    assert_eq!(allowed(&h, 5, get), 2);
    testing::set_published("auth", "x-auth-sub", b"bob");
    assert_eq!(allowed(&h, 5, get), 2, "another consumer, another budget");
    // Another plugin's value under the same key is not auth's.
    fresh();
    testing::set_published("probe", "x-auth-sub", b"ann");
    let (st, _, body) = call(&h, get());
    assert_eq!(st, 400);
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"], "`auth.x-auth-sub` from the chain is required");
}

// ---- the declared config schema (contract 0.2.5) ----------------------------

/// The schema, checked as the gateway checks a `config` table before `new`.
mod schema {
    use super::*;

    fn schema() -> Value {
        let text = RateLimit::config_schema().expect("rate-limit declares a schema");
        serde_json::from_str(&text).expect("the schema is JSON")
    }

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(false).build(&schema()).expect("a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, config: &Value) -> Vec<String> {
        v.iter_errors(config).map(|e| format!("{}: {e}", e.instance_path())).collect()
    }

    #[test]
    fn describes_every_documented_key() {
        let schema = schema();
        let props = schema["properties"].as_object().expect("properties");
        let documented = ["limits", "key", "missing", "algorithm", "on_state_error", "headers", "ipv6_prefix"];
        assert_eq!(props.keys().collect::<Vec<_>>(), documented);
        for (key, prop) in props {
            assert!(prop["description"].as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
        }
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], json!(["limits"]));
        assert_eq!((&props["limits"]["minItems"], &props["limits"]["maxItems"]), (&json!(1), &json!(16)));
        for (key, default) in [
            ("key", json!("ip")),
            ("missing", json!("ip")),
            ("algorithm", json!("sliding")),
            ("on_state_error", json!("allow")),
            ("headers", json!(true)),
            ("ipv6_prefix", json!(64)),
        ] {
            assert_eq!(props[key]["default"], default, "default of `{key}`");
        }
        // `key`: a string or a list of 1 to 4 distinct strings.
        assert_eq!(props["key"]["type"], json!(["string", "array"]));
        assert_eq!((&props["key"]["minItems"], &props["key"]["maxItems"]), (&json!(1), &json!(4)));
        let defs = &schema["$defs"];
        assert_eq!(defs["Missing"]["enum"], json!(["ip", "deny", "allow"]));
        assert_eq!(defs["Algorithm"]["enum"], json!(["sliding", "fixed", "gcra"]));
        assert_eq!(defs["OnStateError"]["enum"], json!(["allow", "deny"]));

        let limit = &defs["LimitSettings"];
        let limit_props = limit["properties"].as_object().expect("limit");
        let documented = ["name", "requests", "window", "key", "missing", "burst"];
        assert_eq!(limit_props.keys().collect::<Vec<_>>(), documented);
        for (key, prop) in limit_props {
            assert!(prop["description"].as_str().is_some_and(|d| !d.is_empty()), "`limits[].{key}` is described");
        }
        assert_eq!(limit["additionalProperties"], false);
        assert_eq!(limit["required"], json!(["requests", "window"]));
        assert_eq!(limit_props["window"]["type"], "string", "a duration, written as a string");
        assert!(limit_props["window"]["description"].as_str().is_some_and(|d| d.contains("duration")));
        assert_eq!(limit_props["requests"]["minimum"], 1);
        assert_eq!(limit_props["requests"]["maximum"], 1_000_000_000);
        assert_eq!(limit_props["missing"]["$ref"], "#/$defs/Missing", "an absent key, never null");
    }

    #[test]
    fn accepts_every_form_the_plugin_accepts() {
        let v = validator();
        for config in [
            json!({ "limits": [{ "requests": 100, "window": "1m" }] }),
            json!({ "key": "route", "missing": "deny", "algorithm": "fixed", "on_state_error": "deny", "headers": false,
                    "ipv6_prefix": 128, "limits": [{ "requests": 1, "window": "24h", "name": "a.b-c_d" }] }),
            json!({ "key": ["route", "header:x-api-key", "data:auth.x-auth-sub", "ip"], "limits": [
                { "requests": 1_000_000_000, "window": "1s", "key": "ip", "missing": "allow" },
                { "requests": 5, "window": "1h 30m", "key": ["header:x-a"] },
            ] }),
            json!({ "algorithm": "gcra", "limits": [{ "requests": 10, "window": "1s", "burst": 0 }] }),
            json!({ "algorithm": "gcra", "limits": [{ "requests": 10, "window": "90s", "burst": 1_000_000_000 }] }),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.is_empty(), "{config}: {errors:?}");
            plugin(config);
        }
    }

    #[test]
    fn refuses_what_a_schema_can_say() {
        let v = validator();
        let one = |limit: Value| json!({ "limits": [limit] });
        let many: Vec<Value> =
            (0..17).map(|i| json!({ "name": format!("l{i}"), "requests": 1, "window": "1s" })).collect();
        for (config, at) in [
            (json!({}), ""),
            (json!({ "limit": [] }), ""),
            (json!({ "limits": [] }), "/limits"),
            (json!({ "limits": many }), "/limits"),
            (one(json!({ "requests": 0, "window": "1s" })), "/limits/0/requests"),
            (one(json!({ "requests": -1, "window": "1s" })), "/limits/0/requests"),
            (one(json!({ "requests": "ten", "window": "1s" })), "/limits/0/requests"),
            (one(json!({ "window": "1s" })), "/limits/0"),
            (one(json!({ "requests": 1 })), "/limits/0"),
            (one(json!({ "requests": 1, "window": 60 })), "/limits/0/window"),
            (one(json!({ "requests": 1, "window": "1s", "per": "ip" })), "/limits/0"),
            (one(json!({ "requests": 1, "window": "1s", "name": "" })), "/limits/0/name"),
            (one(json!({ "requests": 1, "window": "1s", "name": "x".repeat(33) })), "/limits/0/name"),
            (one(json!({ "requests": 1, "window": "1s", "missing": "skip" })), "/limits/0/missing"),
            (one(json!({ "requests": 1, "window": "1s", "burst": -1 })), "/limits/0/burst"),
            (json!({ "key": [], "limits": [] }), "/key"),
            (json!({ "key": ["ip", "ip"], "limits": [] }), "/key"),
            (json!({ "key": ["ip", "route", "header:a", "header:b", "header:c"], "limits": [] }), "/key"),
            (json!({ "key": 7, "limits": [] }), "/key"),
            (json!({ "key": [7], "limits": [] }), "/key/0"),
            (json!({ "algorithm": "token-bucket", "limits": [] }), "/algorithm"),
            (json!({ "on_state_error": "open", "limits": [] }), "/on_state_error"),
            (json!({ "headers": "yes", "limits": [] }), "/headers"),
            (json!({ "ipv6_prefix": 0, "limits": [] }), "/ipv6_prefix"),
            (json!({ "ipv6_prefix": 129, "limits": [] }), "/ipv6_prefix"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.iter().any(|e| e.starts_with(&format!("{at}: "))), "{config}: {errors:?}");
            rejects(config);
        }
    }

    #[test]
    fn readme_examples_match_the_schema() {
        let v = validator();
        let mut checked = 0;
        for block in include_str!("../README.md").split("```toml").skip(1) {
            let block = block.split("```").next().expect("closed block");
            let doc: toml::Table = toml::from_str(block).expect("README example is TOML");
            for (name, p) in doc.get("plugins").and_then(|p| p.as_table()).into_iter().flatten() {
                assert_eq!(p.get("module").and_then(|m| m.as_str()), Some("rate_limit.wasm"), "{name}");
                let config = serde_json::to_value(p.get("config").expect("a config")).expect("TOML as JSON");
                let errors = errors(&v, &config);
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                plugin(config);
                checked += 1;
            }
        }
        assert_eq!(checked, 3, "every example was checked");
    }
}
