//! The canary's draw, comparison and verdicts, without a gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_config::{CanaryConfig, RollbackConfig, Sticky};
use weir_plugin_host::{ChainData, EventRecord, EventSink, Heads, LentRequest, RequestInfo};

use super::*;

#[derive(Default)]
struct Sink(Mutex<Vec<EventRecord>>);

impl EventSink for Sink {
    fn emit(&self, event: EventRecord) {
        self.0.lock().expect("lock").push(event);
    }
}

fn state(percent: f64, sticky: Sticky, rollback: RollbackConfig) -> CanaryState {
    let config = CanaryConfig { module: "v2.wasm".into(), sha256: None, percent, sticky, rollback };
    CanaryState::new("auth", &config, "fp".into(), Arc::new(Metrics::new()))
}

fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

#[test]
fn the_share_follows_percent_and_a_client_keeps_its_version() {
    let s = state(10.0, Sticky::Client, RollbackConfig::default());
    let on_canary = (0..20_000).filter(|n| s.arm(None, client(*n)) == Arm::Canary).count();
    assert!((1_700..=2_300).contains(&on_canary), "{on_canary} of 20000 clients");
    for n in 0..100 {
        let first = s.arm(None, client(n));
        assert!((0..5).all(|_| s.arm(None, client(n)) == first), "client {n} moved");
    }
    let every = state(100.0, Sticky::Request, RollbackConfig::default());
    assert!((0..100).all(|_| every.arm(None, client(1)) == Arm::Canary));
    let none = state(0.0, Sticky::Request, RollbackConfig::default());
    assert!((0..100).all(|_| none.arm(None, client(1)) == Arm::Stable));
    let drawn = state(30.0, Sticky::Request, RollbackConfig::default());
    let on_canary = (0..10_000).filter(|_| drawn.arm(None, client(1)) == Arm::Canary).count();
    assert!((2_700..=3_300).contains(&on_canary), "{on_canary} of 10000 requests");
}

#[test]
fn a_failing_canary_is_rolled_back_once_it_has_enough_calls() {
    let rollback = RollbackConfig { max_error_rate: 0.05, min_requests: 20, ..RollbackConfig::default() };
    let s = state(50.0, Sticky::Request, rollback);
    let sink = Sink::default();
    for _ in 0..100 {
        s.record(Arm::Stable, false, 0.001, &sink);
    }
    // One failure in five, but not judged before 20 calls.
    for i in 0..19u32 {
        s.record(Arm::Canary, i.is_multiple_of(5), 0.001, &sink);
    }
    assert_eq!(s.status(), Status::Comparing);
    s.record(Arm::Canary, false, 0.001, &sink);
    assert_eq!(s.status(), Status::RolledBack);
    let events = sink.0.lock().expect("lock");
    assert_eq!(events.len(), 1, "one event");
    assert_eq!(events[0].kind, "canary.rolled_back");
    assert!(events[0].message.contains("error rate 20.0% (4 of 20 calls)"), "{}", events[0].message);
    drop(events);
    // Everyone is on the stable version now, and nothing more is decided.
    assert!((0..100).all(|_| s.arm(None, client(1)) == Arm::Stable));
    s.record(Arm::Canary, true, 0.001, &sink);
    assert_eq!(sink.0.lock().expect("lock").len(), 1);
    let json = s.to_json("v2.wasm", "abc");
    assert_eq!(json["state"], "rolled_back");
    assert!(json["reason"].as_str().expect("reason").contains("error rate"), "{json}");
}

#[test]
fn a_canary_as_bad_as_the_stable_version_stays() {
    let rollback = RollbackConfig { max_error_rate: 0.02, min_requests: 10, ..RollbackConfig::default() };
    let s = state(50.0, Sticky::Request, rollback);
    let sink = Sink::default();
    for i in 0..200u32 {
        s.record(Arm::Stable, i.is_multiple_of(10), 0.001, &sink);
        s.record(Arm::Canary, i.is_multiple_of(10), 0.001, &sink);
    }
    assert_eq!(s.status(), Status::Comparing);
    // 5xx answers count as failures too.
    for _ in 0..20 {
        s.failed(Arm::Canary, true, &sink);
    }
    assert_eq!(s.status(), Status::RolledBack);
}

#[test]
fn a_slow_canary_is_rolled_back_by_the_latency_rule() {
    let rollback = RollbackConfig { max_p99_ratio: Some(1.5), min_requests: 50, ..RollbackConfig::default() };
    let s = state(50.0, Sticky::Request, rollback);
    let sink = Sink::default();
    for _ in 0..100 {
        s.record(Arm::Stable, false, 0.001, &sink);
        s.record(Arm::Canary, false, 0.0012, &sink);
    }
    assert_eq!(s.status(), Status::Comparing, "1.2x is within 1.5x");
    for _ in 0..100 {
        s.record(Arm::Canary, false, 0.004, &sink);
    }
    assert_eq!(s.status(), Status::RolledBack);
    let reason = s.to_json("v2.wasm", "abc")["reason"].as_str().expect("reason").to_owned();
    assert!(reason.starts_with("p99 4.0"), "{reason}");
}

#[test]
fn operators_promote_and_abort() {
    let s = state(10.0, Sticky::Client, RollbackConfig::default());
    let sink = Sink::default();
    assert_eq!(s.operator(Status::Promoted, &sink), Ok(Status::Promoted));
    assert!((0..50).all(|n| s.arm(None, client(n)) == Arm::Canary));
    assert!(s.operator(Status::Promoted, &sink).is_err(), "promoted once");
    assert_eq!(s.operator(Status::Aborted, &sink), Ok(Status::Aborted));
    assert!((0..50).all(|n| s.arm(None, client(n)) == Arm::Stable));
    let err = s.operator(Status::Promoted, &sink).expect_err("refused");
    assert!(err.contains("aborted"), "{err}");
    let kinds: Vec<String> = sink.0.lock().expect("lock").iter().map(|e| e.kind.clone()).collect();
    assert_eq!(kinds, ["canary.promoted", "canary.aborted"]);
}

#[test]
fn the_window_forgets_old_failures() {
    let rollback = RollbackConfig {
        max_error_rate: 0.05,
        min_requests: 5,
        window: Duration::from_secs(1),
        ..RollbackConfig::default()
    };
    let s = state(50.0, Sticky::Request, rollback);
    let sink = Sink::default();
    // Failures a window ago do not count against the canary now.
    {
        let mut c = s.comparison.lock().expect("lock");
        let long_ago = Instant::now() - Duration::from_secs(5);
        c.canary = Window::new(Duration::from_secs(1), long_ago);
        for _ in 0..4 {
            c.canary.record(long_ago, true, 0.001);
        }
    }
    for _ in 0..10 {
        s.record(Arm::Canary, false, 0.001, &sink);
    }
    assert_eq!(s.status(), Status::Comparing);
}

/// Heads with `headers`, and chain data `(plugin, key, value)`.
fn heads(headers: &[(&str, &str)], data: &[(&str, &str, &str)]) -> Heads {
    let mut b = http::Request::get("/");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let parts = b.body(()).expect("request").into_parts().0;
    let info = Arc::new(RequestInfo {
        client: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        authority: "example.com".into(),
        route: "r".into(),
        request_id: "id".into(),
        params: Vec::new(),
        tls: None,
    });
    let mut chain = ChainData::default();
    for (plugin, key, value) in data {
        chain.restore(plugin, (*key).to_owned(), value.as_bytes().to_vec());
    }
    Heads { request: LentRequest::new(parts, info), response: None, chain, outbound: Default::default() }
}

#[test]
fn a_header_or_a_chain_value_keys_the_draw_and_the_address_stands_in_for_it() {
    for sticky in [Sticky::Header("x-user".into()), Sticky::Chain("auth".into(), "sub".into())] {
        let s = state(50.0, sticky.clone(), RollbackConfig::default());
        let keyed = |user: &str| match &sticky {
            Sticky::Header(_) => heads(&[("x-user", user)], &[]),
            _ => heads(&[], &[("auth", "sub", user)]),
        };
        let mut on_canary = 0;
        for u in 0..200 {
            let user = format!("user-{u}");
            // The same user from any address: one version.
            let first = s.arm(Some(&keyed(&user)), client(1));
            assert!((2..20).all(|n| s.arm(Some(&keyed(&user)), client(n)) == first), "{sticky}: {user} moved");
            on_canary += usize::from(first == Arm::Canary);
        }
        assert!((70..=130).contains(&on_canary), "{sticky}: {on_canary} of 200 users");
        // Without the key, the client address decides, as with "client".
        let by_client = state(50.0, Sticky::Client, RollbackConfig::default());
        for n in 0..50 {
            assert_eq!(s.arm(Some(&heads(&[], &[])), client(n)), by_client.arm(None, client(n)), "{sticky}");
        }
    }
}
