use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Value, json};
use weir_plugin_sdk::http;
use weir_plugin_sdk::testing::{self, Harness, Outcome};

use super::*;

const WINDOW_MS: u64 = 10_000;
/// 2026-01-01T00:00:00Z: the start of a window of any length.
const T0: u64 = 1_767_225_600_000;

/// A fresh host, its clock pinned 50 ms into a 10 s window, so that no test
/// crosses a window boundary except on purpose (with [`windows`]).
fn start(config: Value) -> Harness<Anomaly> {
    testing::reset();
    testing::set_wall_clock(T0 + 50);
    Harness::new(config).expect("config accepted")
}

/// Move the clock by `n` whole windows (staying 50 ms into the window).
fn windows(n: u64) {
    testing::advance(Duration::from_millis(n * WINDOW_MS));
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path).body(()).expect("request")
}

fn get_as(path: &str, api_key: &str) -> http::Request<()> {
    http::Request::get(path).header("x-api-key", api_key).body(()).expect("request")
}

fn status(code: u16) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(code).expect("status");
    r
}

/// One whole exchange: `on_request`, then (if it continued and the plugin
/// asked for responses) `on_response` with `code`. Returns the plugin's own
/// response if it answered, or the request as forwarded upstream.
fn exchange(h: &Harness<Anomaly>, req: http::Request<()>, code: u16) -> Outcome<http::Request<()>> {
    match h.on_request(req) {
        Outcome::Continue(fwd) => {
            if h.phases().contains(Phases::RESPONSE_HEADERS) {
                h.on_response(&fwd, status(code)).unwrap_continue();
            }
            Outcome::Continue(fwd)
        }
        answered => answered,
    }
}

/// Whether the plugin answered the request itself.
fn answered(h: &Harness<Anomaly>, req: http::Request<()>, code: u16) -> bool {
    matches!(exchange(h, req, code), Outcome::Respond(_))
}

fn attr<'a>(e: &'a Event, key: &str) -> &'a str {
    e.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {key} in {e:?}"))
}

/// Only the distinct-path ratio counts; acts at `min` requests of new paths.
fn paths_only(min: u32, action: &str) -> Value {
    json!({
        "weights": { "rate": 0.0, "errors": 0.0, "paths": 1.0 },
        "threshold": 0.9, "min_requests": min, "action": action, "cooldown": "30s",
    })
}

// ---- configuration --------------------------------------------------------

#[test]
fn phases_follow_the_error_weight() {
    let h = start(json!({}));
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS);
    let h = start(json!({ "weights": { "errors": 0.0 } }));
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS, "no response phase when errors do not count");
}

#[test]
fn rejects_bad_configs() {
    let cases = [
        (json!({ "colour": 1 }), "unknown field `colour`"),
        (json!({ "key": "data:auth" }), "config key `key` must be"),
        (
            json!({ "key": "cookie:sid" }),
            "config key `key` must be \"ip\", \"header:<name>\" or \"data:<plugin>.<key>\"",
        ),
        (json!({ "key": "header:bad name" }), "config key `key` names an invalid header"),
        (json!({ "window": "10 parsecs" }), "invalid duration \"10 parsecs\""),
        (json!({ "window": "500ms" }), "config key `window` must be between 1s and 1h"),
        (json!({ "cooldown": "0s" }), "config key `cooldown` must be between"),
        (json!({ "window": "1m", "baseline_ttl": "90s" }), "config key `baseline_ttl` must be at least two windows"),
        (json!({ "threshold": 0 }), "config key `threshold` must be greater than 0"),
        (json!({ "threshold": "high" }), "invalid type: string \"high\", expected f64"),
        (json!({ "weights": { "rate": -1 } }), "config key `weights.rate` must not be negative"),
        (json!({ "weights": { "rate": 0, "errors": 0, "paths": 0 } }), "config key `weights` must give at least one"),
        (json!({ "weights": { "speed": 1 } }), "unknown field `speed`"),
        (json!({ "min_requests": 0 }), "config key `min_requests` must be at least 1"),
        (json!({ "min_rate": -2 }), "config key `min_rate` must not be negative"),
        (json!({ "alpha": 0 }), "config key `alpha` must be in (0, 1]"),
        (json!({ "alpha": 1.5 }), "config key `alpha` must be in (0, 1]"),
        (json!({ "warmup_windows": -1 }), "invalid value: integer `-1`"),
        (json!({ "error_statuses": ["6xx"] }), "\"6xx\" is not a status class"),
        (json!({ "error_statuses": [700] }), "\"700\" is not a status"),
        (json!({ "error_statuses": ["503-500"] }), "\"503-500\" is an empty range"),
        (json!({ "error_statuses": [] }), "config key `error_statuses` is empty"),
        (json!({ "flag_header": "x flag" }), "config key `flag_header` is not a valid header name"),
        (json!({ "action": "ban" }), "unknown variant `ban`"),
        (json!({ "action": "throttle", "challenge": {} }), "config key `challenge` is only used with action"),
        (json!({ "action": "challenge", "challenge": { "status": 302 } }), "config key `challenge.status` must be"),
        (
            json!({ "action": "challenge", "challenge": { "headers": { "bad header": "x" } } }),
            "config key `challenge.headers` has an invalid header name",
        ),
        (json!({ "action": "challenge", "challenge": { "stauts": 401 } }), "unknown field `stauts`"),
        (json!({ "event_client": "plain" }), "unknown variant `plain`"),
        (json!({ "ipv6_prefix": 0 }), "config key `ipv6_prefix` must be between 1 and 128, got 0"),
        (json!({ "ipv6_prefix": 129 }), "config key `ipv6_prefix` must be between 1 and 128, got 129"),
        (json!({ "ipv6_prefix": "64" }), "invalid type: string \"64\", expected u32"),
    ];
    for (config, expected) in cases {
        let err = Harness::<Anomaly>::new(config.clone()).err().unwrap_or_else(|| panic!("{config} must be refused"));
        assert!(err.contains(expected), "{config}: {err:?} should contain {expected:?}");
    }
}

#[test]
fn error_status_specs() {
    let conf = |statuses: Value| {
        config::load(&Config::from_json(json!({ "error_statuses": statuses }))).expect("valid config")
    };
    let is_err = |c: &Conf, s: u16| c.is_error(StatusCode::from_u16(s).expect("status"));
    let default = config::load(&Config::from_json(json!({}))).expect("defaults");
    assert!(is_err(&default, 400) && is_err(&default, 404) && is_err(&default, 599));
    assert!(!is_err(&default, 200) && !is_err(&default, 399));
    let c = conf(json!([404, "5xx", "401-403"]));
    for s in [401, 402, 403, 404, 500, 503, 599] {
        assert!(is_err(&c, s), "{s}");
    }
    for s in [400, 405, 429, 200] {
        assert!(!is_err(&c, s), "{s}");
    }
}

// ---- the arithmetic ---------------------------------------------------------

#[test]
fn packed_counts_round_trip_without_carrying() {
    let max = (1 << 21) - 1;
    for c in [
        Counts::default(),
        Counts { requests: 1, errors: 0, paths: 1 },
        Counts { requests: max, errors: max, paths: max },
        Counts { requests: 7, errors: 3, paths: 5 },
    ] {
        assert_eq!(Counts::unpack(c.pack()), c);
    }
    let v = ONE_REQUEST * 5 + ONE_ERROR * 4 + ONE_PATH * 3;
    assert_eq!(Counts::unpack(v), Counts { requests: 5, errors: 4, paths: 3 });
    assert_eq!(Counts::from_state(v.to_string().as_bytes()), Counts { requests: 5, errors: 4, paths: 3 });
    assert_eq!(Counts::from_state(b"junk"), Counts::default());
    assert_eq!(Counts::unpack(-5), Counts::default());
}

#[test]
fn baseline_is_an_ewma_of_mean_and_variance() {
    let mut b = Baseline::default();
    b.fold(10.0, 0.5);
    assert_eq!((b.windows, b.mean, b.var), (1, 10.0, 0.0), "the first window sets the mean");
    b.fold(20.0, 0.5);
    assert_eq!((b.windows, b.mean, b.var), (2, 15.0, 25.0));
    b.fold(30.0, 0.5);
    assert_eq!((b.windows, b.mean, b.var), (3, 22.5, 68.75));

    let r = Record { baseline: b, window: 12345, prev: Counts { requests: 9, errors: 2, paths: 4 } };
    assert_eq!(Record::decode(r.encode().as_bytes()), Some(r));
    assert_eq!(Record::decode(b"2 1 1 1 1 1"), None, "unknown version");
    assert_eq!(Record::decode(b"1 1 NaN 0 1 0"), None);
    assert_eq!(Record::decode(b"1 1 1"), None);
}

fn conf(config: Value) -> Conf {
    config::load(&Config::from_json(config)).expect("valid config")
}

fn local_for(client: &Client) -> Local {
    Local {
        client: client.clone(),
        window: 42,
        known: Known {
            baseline: Baseline { windows: 3, mean: 1.5, var: 0.25 },
            prev: Counts { requests: 4, errors: 1, paths: 2 },
            requests: 9,
            recorded: true,
        },
    }
}

#[test]
fn request_local_value_round_trips() {
    let req = || http::Request::get("/").header("x-api-key", "key with spaces").body(()).expect("request");
    let raw = conf(json!({ "key": "header:x-api-key", "event_client": "raw" }));
    let client = identify(&raw, req());
    assert_eq!((client.source, client.raw.as_deref(), client.hex.len()), ("header", Some("key with spaces"), 32));
    let local = local_for(&client);
    let back = Local::decode(&local.encode()).expect("decodes");
    assert_eq!(
        (back.client, back.window, back.known.baseline, back.known.prev),
        (client.clone(), 42, local.known.baseline, local.known.prev)
    );

    // Hashed events (the default) need no raw value: none is kept or carried.
    let hashed = identify(&conf(json!({ "key": "header:x-api-key" })), req());
    assert_eq!((hashed.id, hashed.raw.as_deref()), (client.id, None), "same client, no raw value");
    let encoded = local_for(&hashed).encode();
    assert!(!String::from_utf8_lossy(&encoded).contains("key with spaces"), "{encoded:?}");
    assert_eq!(Local::decode(&encoded).expect("decodes").client, hashed);
    assert!(Local::decode(b"too short").is_none());
    // A client keyed by a published value round-trips too (its errors were
    // not counted when the value was text that only knew `ip` and `header`).
    let data = Client::from_id([7; 16], "data", None);
    assert_eq!(Local::decode(&local_for(&data).encode()).expect("decodes").client, data);
    let mut unknown_source = encoded.clone();
    unknown_source[52] = 9;
    assert!(Local::decode(&unknown_source).is_none());
}

#[test]
fn ip_clients_keep_a_raw_value_only_for_raw_events() {
    let req = || http::Request::get("/").body(()).expect("request");
    let hashed = identify(&conf(json!({})), req());
    let raw = identify(&conf(json!({ "event_client": "raw" })), req());
    assert_eq!(hashed.raw, None);
    assert_eq!(raw.raw.as_deref(), Some("127.0.0.1"));
    assert_eq!(hashed.id, raw.id, "the same client either way");
}

/// What identifies the client of a plain `http` request
/// ([`client::Identity::of_request`] on the SDK's `Request`), run inside a
/// phase (where a `Request` exists) through the harness.
fn identity(conf: &Conf, req: http::Request<()>) -> client::Identity {
    use std::cell::RefCell as Slot;
    thread_local!(static SEEN: Slot<Option<client::Identity>> = const { Slot::new(None) });
    thread_local!(static CONF: Slot<Option<Conf>> = const { Slot::new(None) });
    struct Grab;
    impl Plugin for Grab {
        fn new(_: &Config) -> Result<Self> {
            Ok(Grab)
        }
        fn on_request(&self, req: &mut Request, _: &Context) -> Result<Action> {
            let identity = CONF.with(|c| c.borrow().as_ref().map(|conf| client::Identity::of_request(conf, req)));
            SEEN.with(|s| *s.borrow_mut() = identity);
            Ok(Action::Continue)
        }
    }
    CONF.with(|c| *c.borrow_mut() = Some(conf.clone()));
    Harness::<Grab>::new(json!({})).expect("init").on_request(req).unwrap_continue();
    SEEN.with(|s| s.borrow_mut().take()).expect("seen")
}

/// The client of a plain `http` request, its id hashed now.
fn identify(conf: &Conf, req: http::Request<()>) -> Client {
    identity(conf, req).client()
}

#[test]
fn paths_are_cut_to_their_leading_segments() {
    assert_eq!(path_hash("/users/1", 1), path_hash("/users/2", 1));
    assert_eq!(path_hash("/users/1/orders", 2), path_hash("/users/1", 2));
    assert_ne!(path_hash("/users/1", 2), path_hash("/users/2", 2));
    assert_ne!(path_hash("/users/1", 0), path_hash("/users/2", 0));
    assert_eq!(path_hash("/a", 3), path_hash("/a", 0), "shorter paths are kept whole");
}

#[test]
fn the_memo_gives_the_hashes_it_saves() {
    let mut memo = client::Memo::default();
    for (path, segments) in [("/users/1", 1), ("/users/2", 1), ("/users/1/orders", 2), ("/a", 0), ("/a", 0)] {
        assert_eq!(memo.path(path, segments), path_hash(path, segments), "{path} {segments}");
    }
    // More distinct paths than it keeps: emptied, still right.
    for i in 0..5000 {
        let path = format!("/p/{i}");
        assert_eq!(memo.path(&path, 0), path_hash(&path, 0));
    }
    // Clients: the same id, source and raw value as hashing each time,
    // for every source, seen once and again.
    for cfg in [json!({}), json!({ "key": "header:x-api-key", "event_client": "raw" })] {
        let c = conf(cfg);
        for key in ["k1", "k2", "k1"] {
            let direct = identify(&c, get_as("/", key));
            let memoized = memo.client(identity(&c, get_as("/", key)));
            assert_eq!(memoized, direct);
        }
    }
}

// ---- signals ----------------------------------------------------------------

#[test]
fn distinct_path_ratio_acts_at_min_requests() {
    let h = start(paths_only(10, "throttle"));
    for i in 1..10 {
        assert!(!answered(&h, get(&format!("/p/{i}")), 200), "request {i} is below min_requests");
    }
    assert!(answered(&h, get("/p/10"), 200), "10 distinct paths in 10 requests");

    // Repeating a few paths never does, however many requests.
    let h = start(paths_only(10, "throttle"));
    for i in 0..200 {
        assert!(!answered(&h, get(&format!("/p/{}", i % 3)), 200), "request {i}");
    }
    assert!(testing::events().is_empty());
}

#[test]
fn error_ratio_counts_error_responses() {
    let cfg = json!({
        "weights": { "rate": 0.0, "errors": 1.0, "paths": 0.0 },
        "threshold": 0.7, "min_requests": 4, "action": "throttle",
    });
    let h = start(cfg.clone());
    for i in 1..4 {
        assert!(!answered(&h, get("/missing"), 404), "request {i}");
    }
    // Request 4: 3 errors out of 4 requests = 0.75.
    assert!(answered(&h, get("/missing"), 404));

    let h = start(cfg);
    for i in 0..100 {
        assert!(!answered(&h, get("/ok"), 200), "successes never count: {i}");
    }
}

#[test]
fn error_crossing_on_the_response_acts_from_the_next_request() {
    let h = start(json!({
        "weights": { "rate": 0.0, "errors": 1.0, "paths": 0.0 },
        "threshold": 0.9, "min_requests": 4, "action": "throttle",
    }));
    for _ in 0..3 {
        assert!(!answered(&h, get("/missing"), 404));
    }
    // Request 4 scores 3/4 = 0.75 and goes through; its 404 makes it 4/4.
    let fwd = h.on_request(get("/missing")).unwrap_continue();
    assert!(testing::events().is_empty());
    let resp = h.on_response(&fwd, status(404)).unwrap_continue();
    assert_eq!(resp.status(), 404, "the response itself is left alone");
    assert_eq!(testing::events().len(), 1, "the crossing was detected on the response");
    assert!(answered(&h, get("/missing"), 404));
}

#[test]
fn only_configured_statuses_are_errors() {
    let h = start(json!({
        "weights": { "rate": 0.0, "errors": 1.0, "paths": 0.0 },
        "threshold": 0.7, "min_requests": 4, "action": "throttle", "error_statuses": ["5xx"],
    }));
    for i in 0..50 {
        assert!(!answered(&h, get("/missing"), 404), "404 is not in the set: {i}");
    }
    windows(2); // past the sliding carry-over of those 50 successes
    let acted = (1..=10).find(|_| answered(&h, get("/broken"), 503)).expect("503s count");
    assert!(acted <= 5, "acted at {acted}");
}

#[test]
fn path_segments_limit_what_makes_a_path_distinct() {
    let mut cfg = paths_only(10, "throttle");
    cfg["path_segments"] = json!(1);
    let h = start(cfg);
    for i in 0..100 {
        assert!(!answered(&h, get(&format!("/users/{i}")), 200), "all count as /users");
    }
    let h = start(paths_only(10, "throttle"));
    assert!((0..100).any(|i| answered(&h, get(&format!("/users/{i}")), 200)), "whole paths differ");
}

#[test]
fn a_scanner_is_caught_and_a_normal_client_is_not() {
    // Defaults (threshold 6; weights 1/4/4; min_requests 20), keyed by API key.
    let h = start(json!({ "key": "header:x-api-key", "action": "throttle" }));
    let mut caught = None;
    for i in 1..=40 {
        // Normal: 4 paths, one error in 20, interleaved with the scanner.
        let normal =
            exchange(&h, get_as(&format!("/api/items/{}", i % 4), "normal"), if i % 20 == 0 { 500 } else { 200 });
        assert!(matches!(normal, Outcome::Continue(_)), "normal client acted on at {i}");
        // Scanner: a new path each time, 9 in 10 answered 404.
        let code = if i % 10 == 0 { 200 } else { 404 };
        if caught.is_none() && answered(&h, get_as(&format!("/scan/{i}.php"), "scanner"), code) {
            caught = Some(i);
        }
    }
    assert_eq!(caught, Some(20), "caught at min_requests");
    let events = testing::events();
    assert_eq!(events.len(), 1);
    assert_eq!(attr(&events[0], "action"), "throttle");
    assert_eq!(attr(&events[0], "distinct_paths"), "20");
}

#[test]
fn baseline_folds_each_closed_window_and_judges_the_rate() {
    let h = start(json!({
        "weights": { "rate": 1.0, "errors": 0.0, "paths": 0.0 },
        "threshold": 3.0, "min_rate": 0.0, "warmup_windows": 3, "alpha": 0.5, "min_requests": 10,
    }));
    // Three active windows of 10, 20, 30 requests, each followed by an idle
    // window (idle windows are not folded; no sliding carry-over either).
    // The first reaches min_requests, so the client is recorded from then on.
    for n in [10, 20, 30] {
        for _ in 0..n {
            exchange(&h, get("/a"), 200).unwrap_continue();
        }
        windows(2);
    }
    // Baseline: mean 22.5, variance 68.75 → sd 8.29; z ≥ 3 from 47.4 requests.
    for i in 1..=47 {
        let fwd = exchange(&h, get("/a"), 200).unwrap_continue();
        assert!(fwd.headers().get("x-weir-anomaly").is_none(), "request {i} is within 3 sd");
    }
    let fwd = exchange(&h, get("/a"), 200).unwrap_continue();
    assert_eq!(fwd.headers()["x-weir-anomaly"], "score=3.1");
    let events = testing::events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        [attr(&events[0], "baseline_mean"), attr(&events[0], "baseline_windows"), attr(&events[0], "rate_z")],
        ["22.5", "3", "3.08"]
    );
}

#[test]
fn warm_up_keeps_the_rate_from_acting_alone() {
    // Two windows of history, then a burst of 200.
    let run = |warmup: u32| {
        let h = start(json!({
            "weights": { "rate": 1.0, "errors": 0.0, "paths": 0.0 },
            "threshold": 3.0, "min_rate": 0.0, "warmup_windows": warmup, "action": "throttle",
            "min_requests": 10,
        }));
        for _ in 0..2 {
            for _ in 0..10 {
                assert!(!answered(&h, get("/a"), 200));
            }
            windows(2);
        }
        (1..=200).find(|_| answered(&h, get("/a"), 200))
    };
    assert_eq!(run(3), None, "only two windows of history: rate alone does not act");
    let acted = run(2).expect("warm: acts");
    assert!((15..=25).contains(&acted), "mean 10, sd √10: acts near 20, got {acted}");
}

#[test]
fn without_warm_up_a_new_client_is_judged_against_min_rate() {
    // min_rate 1/s over 10 s windows: mean 10, sd √10 → z ≥ 3 from 19.5.
    let h = start(json!({
        "weights": { "rate": 1.0, "errors": 0.0, "paths": 0.0 },
        "threshold": 3.0, "min_rate": 1.0, "warmup_windows": 0, "action": "throttle",
    }));
    assert_eq!((1..=100).find(|_| answered(&h, get("/a"), 200)), Some(20));
}

#[test]
fn the_previous_window_carries_into_the_next() {
    let h = start(paths_only(10, "throttle"));
    for i in 0..8 {
        assert!(!answered(&h, get(&format!("/a/{i}")), 200));
    }
    windows(1);
    // 50 ms into the new window, the 8 earlier requests count 99.5 %:
    // 2 + 7.96 < 10, 3 + 7.96 ≥ 10.
    assert!(!answered(&h, get("/b/0"), 200));
    assert!(!answered(&h, get("/b/1"), 200));
    assert!(answered(&h, get("/b/2"), 200));

    // Two windows later nothing carries.
    let h = start(paths_only(10, "throttle"));
    for i in 0..8 {
        assert!(!answered(&h, get(&format!("/a/{i}")), 200));
    }
    windows(2);
    for i in 0..9 {
        assert!(!answered(&h, get(&format!("/b/{i}")), 200), "request {i}");
    }
    assert!(answered(&h, get("/b/9"), 200));
}

// ---- actions ----------------------------------------------------------------

#[test]
fn throttle_answers_429_until_the_cooldown_expires() {
    let h = start(paths_only(5, "throttle"));
    for i in 0..4 {
        exchange(&h, get(&format!("/p/{i}")), 200).unwrap_continue();
    }
    let r = exchange(&h, get("/p/4"), 200).unwrap_respond();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(r.body()).expect("JSON body");
    assert_eq!(body["retry_after"], 30);
    assert!(body["error"].as_str().expect("error").contains("too many requests"));

    // Any request of the client, even a repeated path, is throttled.
    testing::advance(Duration::from_secs(15));
    let r = exchange(&h, get("/p/0"), 200).unwrap_respond();
    assert_eq!(r.headers()["retry-after"], "15");
    assert_eq!(testing::counter("throttled"), 2);

    // Past the cooldown the client is served again (and starts afresh).
    testing::advance(Duration::from_secs(16));
    for i in 0..4 {
        exchange(&h, get(&format!("/q/{i}")), 200).unwrap_continue();
    }
    assert_eq!(testing::counter("throttled"), 2);
    assert_eq!(testing::events().len(), 1);
}

#[test]
fn challenge_answers_with_the_default_or_configured_response() {
    let h = start(paths_only(3, "challenge"));
    let r = (0..3).find_map(|i| match exchange(&h, get(&format!("/p/{i}")), 200) {
        Outcome::Respond(r) => Some(r),
        Outcome::Continue(_) => None,
    });
    let r = r.expect("challenged");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer error="invalid_token", error_description="re-authentication required""#
    );
    assert_eq!(r.body(), br#"{"error":"re-authentication required"}"#);
    assert_eq!(testing::counter("challenged"), 1);

    let mut cfg = paths_only(3, "challenge");
    cfg["challenge"] = json!({
        "status": 403,
        "headers": { "x-reauth": "https://login.example.com", "content-type": "text/plain" },
        "body": "sign in again",
    });
    let h = start(cfg);
    for i in 0..2 {
        exchange(&h, get(&format!("/p/{i}")), 200).unwrap_continue();
    }
    let r = exchange(&h, get("/p/2"), 200).unwrap_respond();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-reauth"], "https://login.example.com");
    assert!(r.headers().get("www-authenticate").is_none(), "configured headers replace the default");
    assert_eq!(r.body(), b"sign in again");
}

#[test]
fn flag_marks_requests_and_strips_client_copies() {
    let h = start(paths_only(3, "flag"));
    // A client cannot flag (or unflag) itself.
    let fwd = exchange(&h, http::Request::get("/p/0").header("x-weir-anomaly", "score=0").body(()).expect("req"), 200)
        .unwrap_continue();
    assert!(fwd.headers().get("x-weir-anomaly").is_none());
    exchange(&h, get("/p/1"), 200).unwrap_continue();
    let fwd = exchange(&h, get("/p/2"), 200).unwrap_continue();
    assert_eq!(fwd.headers()["x-weir-anomaly"], "score=1.0");
    // During the cooldown every request is flagged, with the triggering score.
    let fwd = exchange(&h, get("/p/0"), 200).unwrap_continue();
    assert_eq!(fwd.headers()["x-weir-anomaly"], "score=1.0");
    assert_eq!(testing::counter("flagged"), 2);
    assert_eq!(testing::events().len(), 1);

    let mut cfg = paths_only(3, "flag");
    cfg["flag_header"] = json!("x-suspect");
    let h = start(cfg);
    let fwd = (0..3).map(|i| exchange(&h, get(&format!("/p/{i}")), 200).unwrap_continue()).last().expect("3");
    assert_eq!(fwd.headers()["x-suspect"], "score=1.0");
}

#[test]
fn client_sent_flag_headers_are_stripped_in_every_mode() {
    let flagged = |name: &str| http::Request::get("/p/0").header(name, "score=0.0").body(()).expect("request");
    for action in ["flag", "throttle", "challenge"] {
        let h = start(paths_only(3, action));
        let fwd = exchange(&h, flagged("x-weir-anomaly"), 200).unwrap_continue();
        assert!(fwd.headers().get("x-weir-anomaly").is_none(), "{action}: {:?}", fwd.headers());
        // Also when the request goes unscored because state is down.
        testing::set_state_unavailable(true);
        let fwd = exchange(&h, flagged("x-weir-anomaly"), 200).unwrap_continue();
        assert!(fwd.headers().get("x-weir-anomaly").is_none(), "{action}, state down: {:?}", fwd.headers());
    }
    // The configured name is the one stripped.
    let mut cfg = paths_only(3, "throttle");
    cfg["flag_header"] = json!("x-suspect");
    let h = start(cfg);
    let fwd = exchange(&h, flagged("x-suspect"), 200).unwrap_continue();
    assert!(fwd.headers().get("x-suspect").is_none(), "{:?}", fwd.headers());
    let fwd = exchange(&h, flagged("x-weir-anomaly"), 200).unwrap_continue();
    assert_eq!(fwd.headers()["x-weir-anomaly"], "score=0.0", "not this instance's header");
}

#[test]
fn one_event_per_client_per_cooldown_across_instances() {
    let a = start(paths_only(5, "throttle"));
    let b = Harness::<Anomaly>::new(paths_only(5, "throttle")).expect("second instance");
    // Two pooled instances share host state: counts add up, one event.
    for i in 0..4 {
        let h = if i % 2 == 0 { &a } else { &b };
        exchange(h, get(&format!("/p/{i}")), 200).unwrap_continue();
    }
    assert!(answered(&b, get("/p/4"), 200));
    assert!(answered(&a, get("/p/5"), 200), "the other instance sees the cooldown");
    assert!(answered(&b, get("/p/6"), 200));
    let events = testing::events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!((e.kind.as_str(), e.severity), ("anomaly.detected", Severity::Warning));
    assert_eq!(attr(e, "route"), "test");
    assert_eq!(attr(e, "cooldown"), "30s");
    assert_eq!(attr(e, "window"), "10s");
    assert_eq!(attr(e, "score"), "1.0");
    assert!(e.message.contains("scored 1.0") && e.message.contains("throttle for 30s"), "{}", e.message);
    assert_eq!(testing::counter("events"), 1);

    // A new crossing after the cooldown is a new event.
    testing::advance(Duration::from_secs(31));
    let again = (0..5).filter(|i| answered(&a, get(&format!("/r/{i}")), 200)).count();
    assert_eq!(again, 1);
    assert_eq!(testing::events().len(), 2);
}

// ---- client identity ----------------------------------------------------------

#[test]
fn clients_are_keyed_by_header_with_ip_fallback() {
    let mut cfg = paths_only(5, "throttle");
    cfg["key"] = json!("header:x-api-key");
    let h = start(cfg.clone());
    let acted = (0..5).filter(|i| answered(&h, get_as(&format!("/p/{i}"), "scanner-key"), 200)).count();
    assert_eq!(acted, 1);
    // Same IP, other key: a different client.
    assert!(!answered(&h, get_as("/p/0", "other-key"), 200));
    // Same IP, no key: the IP is the client, not the throttled key.
    assert!(!answered(&h, get("/p/0"), 200));
    for i in 1..4 {
        assert!(!answered(&h, get(&format!("/p/{i}")), 200));
    }
    assert!(answered(&h, get("/p/4"), 200), "the IP client scanned too");

    let events = testing::events();
    assert_eq!(events.len(), 2);
    assert_eq!(attr(&events[0], "key"), "header:x-api-key");
    assert_eq!(attr(&events[1], "key"), "ip");
    for e in &events {
        let client = attr(e, "client");
        assert!(client.len() == 32 && client.chars().all(|c| c.is_ascii_hexdigit()), "hashed: {client}");
        assert!(!e.message.contains("scanner-key"), "the key never leaks into events: {}", e.message);
    }
    assert_ne!(attr(&events[0], "client"), attr(&events[1], "client"));

    cfg["event_client"] = json!("raw");
    let h = start(cfg);
    let _ = (0..5).filter(|i| answered(&h, get_as(&format!("/p/{i}"), "scanner-key"), 200)).count();
    assert_eq!(attr(&testing::events()[0], "client"), "scanner-key");
}

#[test]
fn ip_clients_and_their_mapped_ipv6_form_are_one() {
    let mut cfg = paths_only(4, "throttle");
    cfg["event_client"] = json!("raw");
    let v4 = start(cfg.clone()).client_addr("10.0.0.7:5000");
    let mapped = Harness::<Anomaly>::new(cfg.clone()).expect("init").client_addr("[::ffff:10.0.0.7]:6000");
    let other = Harness::<Anomaly>::new(cfg).expect("init").client_addr("10.0.0.8:5000");
    for i in 0..3 {
        let h = if i % 2 == 0 { &v4 } else { &mapped };
        assert!(!answered(h, get(&format!("/p/{i}")), 200));
    }
    assert!(answered(&mapped, get("/p/3"), 200));
    assert!(!answered(&other, get("/p/0"), 200), "another address is another client");
    assert_eq!(attr(&testing::events()[0], "client"), "10.0.0.7");
}

#[test]
fn ipv6_clients_are_keyed_by_their_network() {
    let mut cfg = paths_only(4, "throttle");
    cfg["event_client"] = json!("raw");
    // Default /64: a scanner rotating addresses inside its /64 is one client.
    let a = start(cfg.clone()).client_addr("[2001:db8:0:1::1]:5000");
    let same_64 = Harness::<Anomaly>::new(cfg.clone()).expect("init").client_addr("[2001:db8:0:1:ffff::2]:5000");
    let other_64 = Harness::<Anomaly>::new(cfg.clone()).expect("init").client_addr("[2001:db8:0:2::1]:5000");
    for i in 0..3 {
        let h = if i % 2 == 0 { &a } else { &same_64 };
        assert!(!answered(h, get(&format!("/p/{i}")), 200), "request {i}");
    }
    assert!(answered(&same_64, get("/p/3"), 200), "4 distinct paths from one /64");
    assert!(!answered(&other_64, get("/p/0"), 200), "another /64 is another client");
    assert_eq!(attr(&testing::events()[0], "client"), "2001:db8:0:1::/64");

    // A shorter prefix groups more: the whole /48.
    cfg["ipv6_prefix"] = json!(48);
    let a = start(cfg.clone()).client_addr("[2001:db8:0:1::1]:5000");
    let b = Harness::<Anomaly>::new(cfg.clone()).expect("init").client_addr("[2001:db8:0:2::1]:5000");
    for i in 0..3 {
        let h = if i % 2 == 0 { &a } else { &b };
        assert!(!answered(h, get(&format!("/p/{i}")), 200), "request {i}");
    }
    assert!(answered(&b, get("/p/3"), 200), "4 distinct paths from one /48");
    assert_eq!(attr(&testing::events()[0], "client"), "2001:db8::/48");

    // 128: every address is its own client.
    cfg["ipv6_prefix"] = json!(128);
    let a = start(cfg.clone()).client_addr("[2001:db8:0:1::1]:5000");
    let b = Harness::<Anomaly>::new(cfg).expect("init").client_addr("[2001:db8:0:1::2]:5000");
    for i in 0..3 {
        assert!(!answered(&a, get(&format!("/p/{i}")), 200), "request {i} of a");
        assert!(!answered(&b, get(&format!("/q/{i}")), 200), "request {i} of b");
    }
    assert!(answered(&a, get("/p/3"), 200), "a's own 4th path");
    assert_eq!(attr(&testing::events()[0], "client"), "2001:db8:0:1::1");
}

// ---- state per client -----------------------------------------------------------

/// Run `f` on the test host's state, as a plugin phase sees it.
fn with_state<R: 'static>(f: impl FnOnce(&weir_plugin_sdk::State) -> R + 'static) -> R {
    type Op = Box<dyn FnOnce(&Context)>;
    thread_local!(static OP: RefCell<Option<Op>> = const { RefCell::new(None) });
    struct Run;
    impl Plugin for Run {
        fn new(_: &Config) -> Result<Self> {
            Ok(Run)
        }
        fn on_request(&self, _: &mut Request, cx: &Context) -> Result<Action> {
            if let Some(op) = OP.with(|o| o.borrow_mut().take()) {
                op(cx);
            }
            Ok(Action::Continue)
        }
    }
    let out = Rc::new(RefCell::new(None));
    let slot = out.clone();
    let op: Op = Box::new(move |cx: &Context| *slot.borrow_mut() = Some(f(&cx.state())));
    OP.with(|o| *o.borrow_mut() = Some(op));
    Harness::<Run>::new(json!({})).expect("init").on_request(get("/")).unwrap_continue();
    out.borrow_mut().take().expect("the op ran")
}

fn peek(key: String) -> Option<Vec<u8>> {
    with_state(move |s| s.get(&key).expect("state up"))
}

#[test]
fn a_client_gets_a_baseline_record_only_after_min_requests_in_a_window() {
    let cfg = json!({ "key": "header:x-api-key", "min_requests": 5, "action": "throttle" });
    let h = start(cfg.clone());
    let c = conf(cfg);
    let id = |key: &str| identify(&c, get_as("/", key)).hex;
    let window = (T0 + 50) / WINDOW_MS;
    let path = path_hash("/a", 0);

    // A scanner rotating identities: 100 clients of one request each (an
    // error, so the response phase runs too).
    for i in 0..100 {
        exchange(&h, get_as("/a", &format!("one-shot-{i}")), 404).unwrap_continue();
    }
    for i in 0..100 {
        let client = id(&format!("one-shot-{i}"));
        assert_eq!(peek(format!("b:{client}")), None, "no baseline record for one-shot client {i}");
        assert_eq!(
            peek(format!("c:{client}:{window}")).map(|v| Counts::from_state(&v)),
            Some(Counts { requests: 1, errors: 1, paths: 1 })
        );
        assert!(peek(format!("p:{client}:{window}:{path:016x}")).is_some());
    }
    // Path marks last one window, counters seven: then nothing is left.
    windows(1);
    assert!(peek(format!("p:{}:{window}:{path:016x}", id("one-shot-0"))).is_none());
    assert!(peek(format!("c:{}:{window}", id("one-shot-0"))).is_some());
    windows(COUNTER_WINDOWS - 1);
    for i in 0..100 {
        assert_eq!(peek(format!("c:{}:{window}", id(&format!("one-shot-{i}")))), None, "client {i}");
    }

    // A client making min_requests requests in one window is recorded at
    // the one that reaches it...
    let window = window + COUNTER_WINDOWS;
    let regular = id("regular");
    for _ in 0..4 {
        exchange(&h, get_as("/a", "regular"), 200).unwrap_continue();
    }
    assert_eq!(peek(format!("b:{regular}")), None, "4 requests: not yet");
    exchange(&h, get_as("/a", "regular"), 200).unwrap_continue();
    let record = Record::decode(&peek(format!("b:{regular}")).expect("recorded")).expect("a record");
    assert_eq!((record.window, record.baseline.windows), (window, 0));

    // ...and from then on each of its active windows is folded in, however
    // few its requests.
    windows(1);
    exchange(&h, get_as("/a", "regular"), 200).unwrap_continue();
    windows(1);
    exchange(&h, get_as("/a", "regular"), 200).unwrap_continue();
    let record = Record::decode(&peek(format!("b:{regular}")).expect("recorded")).expect("a record");
    assert_eq!((record.window, record.baseline.windows, record.baseline.mean), (window + 2, 2, 4.2));
    assert_eq!(record.prev, Counts { requests: 1, errors: 0, paths: 1 }, "the previous window's counts");

    // The record lives baseline_ttl (1h) after its last update.
    testing::advance(Duration::from_millis(3_600_000 - 1));
    assert!(peek(format!("b:{regular}")).is_some());
    testing::advance(Duration::from_millis(1));
    assert_eq!(peek(format!("b:{regular}")), None);
}

#[test]
fn an_unreadable_baseline_value_is_replaced() {
    let cfg = json!({ "key": "header:x-api-key", "min_requests": 3 });
    let h = start(cfg.clone());
    let client = identify(&conf(cfg), get_as("/", "k")).hex;
    with_state({
        let key = format!("b:{client}");
        move |s| s.set(&key, b"9 not a record", 0).expect("set")
    });
    for _ in 0..3 {
        exchange(&h, get_as("/a", "k"), 200).unwrap_continue();
    }
    let record = Record::decode(&peek(format!("b:{client}")).expect("recorded")).expect("a record again");
    assert_eq!(record.baseline.windows, 0);
}

// ---- failure ------------------------------------------------------------------

#[test]
fn state_unavailable_fails_open() {
    let h = start(json!({ "action": "throttle", "min_requests": 5 }));
    testing::set_state_unavailable(true);
    for i in 0..50 {
        let fwd = exchange(&h, get(&format!("/scan/{i}")), 404).unwrap_continue();
        assert_eq!(fwd.uri().path(), format!("/scan/{i}"));
    }
    assert_eq!(testing::counter("state_errors"), 50, "one per request; unscored requests skip on_response");
    let warnings: Vec<_> = testing::logs().into_iter().filter(|(l, _)| *l == Level::Warn).collect();
    assert_eq!(warnings.len(), 1, "logged once, not per request: {warnings:?}");
    assert!(warnings[0].1.contains("fail open"), "{warnings:?}");
    assert!(testing::events().is_empty());

    // The response phase fails open too.
    testing::set_state_unavailable(false);
    let fwd = h.on_request(get("/x")).unwrap_continue();
    testing::set_state_unavailable(true);
    assert_eq!(h.on_response(&fwd, status(404)).unwrap_continue().status(), 404);
    assert_eq!(testing::counter("state_errors"), 51);

    // Back up: scoring resumes.
    testing::set_state_unavailable(false);
    assert!((0..30).any(|i| answered(&h, get(&format!("/again/{i}")), 404)));
}

// ---- the declared config schema (contract 0.2.5) ------------------------------

/// The schema, checked as the gateway checks a `config` table before `new`.
mod schema {
    use super::*;

    fn schema() -> Value {
        let text = Anomaly::config_schema().expect("anomaly declares a schema");
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
        let documented = [
            "key",
            "ipv6_prefix",
            "window",
            "threshold",
            "action",
            "cooldown",
            "weights",
            "min_requests",
            "min_rate",
            "warmup_windows",
            "alpha",
            "baseline_ttl",
            "error_statuses",
            "path_segments",
            "flag_header",
            "challenge",
            "event_client",
        ];
        assert_eq!(props.keys().collect::<Vec<_>>(), documented);
        for (key, prop) in props {
            assert!(prop["description"].as_str().is_some_and(|d| !d.is_empty()), "`{key}` is described");
        }
        assert_eq!(schema["additionalProperties"], false);
        assert!(schema.get("required").is_none(), "every key is optional");
        // Defaults as the README gives them, durations written as in gateway.toml.
        for (key, default) in [
            ("key", json!("ip")),
            ("ipv6_prefix", json!(64)),
            ("window", json!("10s")),
            ("threshold", json!(6.0)),
            ("action", json!("flag")),
            ("cooldown", json!("1m")),
            ("weights", json!({ "rate": 1.0, "errors": 4.0, "paths": 4.0 })),
            ("min_requests", json!(20)),
            ("min_rate", json!(5.0)),
            ("warmup_windows", json!(3)),
            ("alpha", json!(0.2)),
            ("baseline_ttl", json!("1h")),
            ("error_statuses", json!(["4xx", "5xx"])),
            ("path_segments", json!(0)),
            ("flag_header", json!("x-weir-anomaly")),
            ("event_client", json!("hash")),
        ] {
            assert_eq!(props[key]["default"], default, "default of `{key}`");
        }
        for key in ["window", "cooldown", "baseline_ttl"] {
            assert_eq!(props[key]["type"], "string", "`{key}` is a duration string");
            assert!(props[key]["description"].as_str().is_some_and(|d| d.contains("duration")), "{key}");
        }
        let defs = &schema["$defs"];
        assert_eq!(defs["ActionKind"]["enum"], json!(["flag", "throttle", "challenge"]));
        assert_eq!(defs["EventClient"]["enum"], json!(["hash", "raw"]));
        let weights = defs["Weights"]["properties"].as_object().expect("weights");
        assert_eq!(weights.keys().collect::<Vec<_>>(), ["rate", "errors", "paths"]);
        assert_eq!(defs["Weights"]["additionalProperties"], false);
        let challenge = defs["ChallengeSettings"]["properties"].as_object().expect("challenge");
        assert_eq!(challenge.keys().collect::<Vec<_>>(), ["status", "headers", "body"]);
        assert_eq!(defs["ChallengeSettings"]["additionalProperties"], false);
        // A status is a number or a string (class, range); the challenge,
        // when given, is a table (an absent key, never `null`).
        assert_eq!(props["error_statuses"]["items"]["type"], json!(["integer", "string"]));
        assert_eq!(props["challenge"]["$ref"], "#/$defs/ChallengeSettings");
    }

    #[test]
    fn accepts_every_form_the_plugin_accepts() {
        let v = validator();
        for config in [
            json!({}),
            json!({ "key": "header:x-api-key", "action": "throttle", "window": "10s", "threshold": 6.0, "cooldown": "1m" }),
            json!({ "key": "data:auth.x-auth-sub", "threshold": 6, "alpha": 1, "min_rate": 0, "warmup_windows": 0 }),
            json!({ "window": "1h", "cooldown": "1h 30m", "baseline_ttl": "30days", "ipv6_prefix": 128 }),
            json!({ "error_statuses": [404, "404", "5xx", "4XX", "500-503", " 401 - 403 "] }),
            json!({ "weights": { "errors": 0 }, "error_statuses": [] }),
            json!({ "weights": { "rate": 0.5 }, "path_segments": 2, "flag_header": "x-suspect", "event_client": "raw" }),
            json!({ "action": "challenge" }),
            json!({ "action": "challenge", "challenge": { "status": 403, "headers": { "x-why": "because" }, "body": "no" } }),
            paths_only(4, "flag"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.is_empty(), "{config}: {errors:?}");
            Harness::<Anomaly>::new(config).expect("the plugin accepts it too");
        }
    }

    #[test]
    fn refuses_what_a_schema_can_say() {
        let v = validator();
        for (config, at) in [
            (json!({ "colour": 1 }), ""),
            (json!({ "weights": { "speed": 1 } }), "/weights"),
            (json!({ "action": "challenge", "challenge": { "stauts": 401 } }), "/challenge"),
            (json!({ "action": "ban" }), "/action"),
            (json!({ "event_client": "plain" }), "/event_client"),
            (json!({ "threshold": 0 }), "/threshold"),
            (json!({ "threshold": "high" }), "/threshold"),
            (json!({ "weights": { "rate": -1 } }), "/weights/rate"),
            (json!({ "min_requests": 0 }), "/min_requests"),
            (json!({ "min_rate": -2 }), "/min_rate"),
            (json!({ "alpha": 0 }), "/alpha"),
            (json!({ "alpha": 1.5 }), "/alpha"),
            (json!({ "warmup_windows": -1 }), "/warmup_windows"),
            (json!({ "error_statuses": [700] }), "/error_statuses/0"),
            (json!({ "error_statuses": "5xx" }), "/error_statuses"),
            (json!({ "action": "challenge", "challenge": { "status": 302 } }), "/challenge/status"),
            (json!({ "ipv6_prefix": 0 }), "/ipv6_prefix"),
            (json!({ "ipv6_prefix": 129 }), "/ipv6_prefix"),
            (json!({ "ipv6_prefix": "64" }), "/ipv6_prefix"),
            (json!({ "window": 10 }), "/window"),
        ] {
            let errors = errors(&v, &config);
            assert!(errors.iter().any(|e| e.starts_with(&format!("{at}: "))), "{config}: {errors:?}");
            assert!(Harness::<Anomaly>::new(config).is_err(), "the plugin refuses it too");
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
                if p.get("module").and_then(|m| m.as_str()) != Some("anomaly.wasm") {
                    continue;
                }
                let config = p.get("config").cloned().unwrap_or_else(|| toml::Value::Table(Default::default()));
                let config = serde_json::to_value(&config).expect("TOML as JSON");
                let errors = errors(&v, &config);
                assert!(errors.is_empty(), "README example `{name}`: {errors:?}");
                Harness::<Anomaly>::new(config).unwrap_or_else(|e| panic!("README example `{name}`: {e}"));
                checked += 1;
            }
        }
        assert_eq!(checked, 4, "every example was checked");
    }
}
